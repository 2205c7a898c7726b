"""The whisper-family voice student: frozen Whisper features, speaker-normalised, a linear head.

``mmer-train student`` with ``model.variant: whisper`` comes here (configs/mmer_voice_*.yaml).
The encoder is frozen, so its pooled features are computed once per clip (and once per
augmented copy of a training clip) and cached; the head trains on them in seconds.

Protocol (docs/voice.md):
- Corpora: ``data`` names the primary corpus (EmoDB), whose held-out speakers give dev and test;
  ``voice.extra`` adds whole corpora to train (TESS, both speakers). Labels are MELD's seven
  (EmoDB boredom -> neutral through mmer.labels).
- Training features are z-normalised per speaker (and per augmented copy set, so a speaker in a
  noisy room is normalised by that room); dev and test are normalised causally, exactly as live:
  each speaker's utterances in a seeded random order, each one by the running statistics of
  that speaker so far (mmer.speaker_norm).
- Selection (best epoch by dev UA), temperature (dev NLL), reliability (dev skill) and the
  abstention threshold all come from the primary corpus's dev speakers, never from an
  evaluation set.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from mmer.calibration import Calibration
from mmer.checkpoint import save_checkpoint
from mmer.config import ConfigError, from_dict
from mmer.labels import get_label_map, get_label_set
from mmer.metrics import classification_metrics, format_report, save_confusion_png, unweighted_accuracy
from mmer.models.audio_student import AudioStudent, AudioStudentDims
from mmer.progress import progress as progress_bar
from mmer.speaker_norm import SpeakerNormalizer
from mmer.training.augment import AugmentConfig, augment
from mmer.training.cache import default_cache_dir
from mmer.training.datasets import EmotionDataset, Sample, build_dataset
from mmer.training.distributed import is_distributed

log = logging.getLogger(__name__)

LABEL_SET = "meld7"
ORDER_SEED = 0                  # speaker-causal evaluation: the order of each speaker's utterances
CONFIDENCE_GRID = np.round(np.arange(0.0, 0.61, 0.05), 2)


# -- features -------------------------------------------------------------------------------
@torch.no_grad()
def pooled_feature(model: AudioStudent, waveform: np.ndarray) -> np.ndarray:
    """(T,) float32 16 kHz -> (H,) pooled Whisper feature of one utterance."""
    wav = torch.from_numpy(np.ascontiguousarray(waveform, dtype=np.float32))[None].to(model.device)
    max_samples = int(model.dims.max_audio_s * model.dims.sample_rate_hz)
    wav = wav[:, :max_samples]
    return model.encode_whisper(wav, torch.ones_like(wav))[0].float().cpu().numpy()


def _fingerprint(model: AudioStudent, dataset: EmotionDataset, copies: int, aug: AugmentConfig | None) -> str:
    key = {"layers": model.dims.whisper_layers, "peak": model.dims.peak_level, "max_s": model.dims.max_audio_s,
           "encoder": model.dims.encoder, "data": type(dataset).__name__, "split": dataset.split,
           "uids": hashlib.sha256("\n".join(s.uid for s in dataset.samples).encode()).hexdigest(),
           "copies": copies, "augment": asdict(aug) if aug else None, "version": 1}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def dataset_features(model: AudioStudent, dataset: EmotionDataset, copies: int = 0,
                     aug: AugmentConfig | None = None, cache_dir: Path | None = None,
                     seed: int = 0, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Pooled features of every sample (copy 0 = the clean clip, then ``copies`` augmented ones).

    Returns (features (copies + 1, N, H) float32, usable (N,) bool). A clip that cannot be
    decoded is unusable (logged by the dataset) and gets zeros. ``progress``: a bar on stderr
    over the clips when it is a terminal.
    """
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"voice-{_fingerprint(model, dataset, copies, aug)}.npz"
        if path.is_file():
            cached = np.load(path)
            return cached["features"], cached["usable"]
    n, width = len(dataset), model.encoder.dims.width
    feats = np.zeros((copies + 1, n, width), np.float32)
    usable = np.zeros(n, bool)
    t0 = time.perf_counter()
    bar = progress_bar(dataset.samples, f"voice features {dataset.name} {dataset.split}", enabled=progress,
                       unit="clip")
    for i, sample in enumerate(bar):
        clip = dataset.load_audio(sample)
        if not clip.valid or clip.data.size == 0:
            continue
        usable[i] = True
        rng = np.random.default_rng([seed, i])
        feats[0, i] = pooled_feature(model, clip.data)
        for c in range(copies):
            feats[c + 1, i] = pooled_feature(model, augment(clip.data, rng, aug or AugmentConfig()))
        if (i + 1) % 200 == 0 or i + 1 == n:
            log.info("voice features %s %s: %d/%d clips (%.0f s)", dataset.name, dataset.split, i + 1, n,
                     time.perf_counter() - t0)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, features=feats, usable=usable)
    return feats, usable


def speaker_normalise(features: np.ndarray, speakers: Sequence[str]) -> np.ndarray:
    """(N, H) features z-normalised by each speaker's own statistics (training only)."""
    out = np.empty_like(features)
    speakers = np.asarray(speakers)
    for spk in np.unique(speakers):
        rows = speakers == spk
        mean, std = features[rows].mean(0), features[rows].std(0)
        out[rows] = (features[rows] - mean) / np.maximum(std, 1e-3)
    return out


def causal_order(speakers: Sequence[str], seed: int = ORDER_SEED) -> list[int]:
    """Sample indices in the order a live system would meet them: speaker by speaker, each
    speaker's utterances shuffled with ``seed`` (corpus files are sorted by emotion)."""
    rng = np.random.default_rng(seed)
    speakers = np.asarray(speakers)
    order: list[int] = []
    for spk in sorted(set(speakers.tolist())):
        idx = np.flatnonzero(speakers == spk)
        order.extend(rng.permutation(idx).tolist())
    return order


def causal_statistics(normalizer: SpeakerNormalizer, features: np.ndarray, speakers: Sequence[str],
                      usable: np.ndarray, seed: int = ORDER_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Running (mean, std) (N, H) for each usable sample, in :func:`causal_order`."""
    mean = np.tile(normalizer.prior_mean.astype(np.float32), (len(features), 1))
    std = np.tile(np.sqrt(normalizer.prior_var).astype(np.float32), (len(features), 1))
    normalizer.reset()
    for i in causal_order(speakers, seed):
        if usable[i]:
            mean[i], std[i] = normalizer.update(str(speakers[i]), features[i])
    return mean, std


@torch.no_grad()
def speaker_causal_outputs(model: AudioStudent, dataset: EmotionDataset, samples: Sequence[Sample],
                           seed: int = ORDER_SEED, progress: bool = False) -> dict[str, np.ndarray]:
    """What :func:`mmer.training.stages.run_frozen` returns, for a whisper-family voice model:
    every sample normalised by its speaker's running statistics, speakers met as live."""
    sub = _Subset(dataset, samples)
    feats, usable = dataset_features(model, sub, progress=progress)
    speakers = [s.speaker or s.dialogue_id for s in samples]
    mean, std = causal_statistics(SpeakerNormalizer.for_model(model), feats[0], speakers, usable, seed)
    out = model.classify(torch.from_numpy(feats[0]).to(model.device), torch.from_numpy(mean).to(model.device),
                         torch.from_numpy(std).to(model.device))
    keep = torch.from_numpy(usable).to(model.device)[:, None]
    return {"logits": torch.where(keep, out.logits.float(), 0.0).cpu().numpy(),
            "feature": torch.where(keep, out.features["audio"].float(), 0.0).cpu().numpy(),
            "present": usable.astype(np.float32)}


class _Subset:
    """A dataset's decoder over a chosen list of its samples."""

    def __init__(self, dataset: EmotionDataset, samples: Sequence[Sample]) -> None:
        self.samples, self.name, self.split = list(samples), dataset.name, dataset.split
        self.load_audio = dataset.load_audio

    def __len__(self) -> int:
        return len(self.samples)


# -- calibration ----------------------------------------------------------------------------
def fit_temperature(logits: np.ndarray, labels: np.ndarray, grid: np.ndarray | None = None) -> float:
    """The temperature T minimising dev NLL of softmax(logits / T) (a log-spaced grid search,
    then a local refinement: exact enough and free of optimiser settings)."""
    z = torch.from_numpy(np.asarray(logits, np.float64))
    y = torch.from_numpy(np.asarray(labels, np.int64))

    def nll(t: float) -> float:
        return float(F.cross_entropy(z / t, y))

    grid = np.exp(np.linspace(np.log(0.05), np.log(20.0), 121)) if grid is None else grid
    best = min(grid, key=nll)
    fine = best * np.exp(np.linspace(-0.06, 0.06, 25))
    return float(min(fine, key=nll))


def abstain_threshold(probs: np.ndarray, labels: np.ndarray, chance: float) -> float:
    """The largest max-probability threshold t on the grid such that the dev predictions below t
    are right no more often than chance + 0.05: below it the modality's vote is noise."""
    conf, right = probs.max(-1), probs.argmax(-1) == labels
    best = 0.0
    for t in CONFIDENCE_GRID[1:]:
        below = conf < t
        if below.sum() >= 5 and right[below].mean() <= chance + 0.05:
            best = float(t)
    return best


def skill(ua: float, num_classes: int) -> float:
    """Unweighted accuracy rescaled so chance is 0 and perfect is 1 (clamped at 0)."""
    chance = 1.0 / num_classes
    return float(max(0.0, (ua - chance) / (1.0 - chance)))


# -- the recipe -----------------------------------------------------------------------------
def _meld_labels(dataset: EmotionDataset) -> np.ndarray:
    label_map = get_label_map(dataset.labels.name, LABEL_SET)
    target = get_label_set(LABEL_SET)
    return np.array([target.index(label_map.map_label(s.label_name)) for s in dataset.samples], np.int64)


def run_whisper_student(recipe, resume: bool = False) -> dict:
    """Train, select, calibrate and save a whisper-family voice student (see the module doc).

    ``resume`` is accepted for the student stage's signature; nothing to resume: the cached
    features make a rerun take seconds."""
    from mmer.training.stages import build_splits

    if is_distributed():   # every process would write the same files at once
        raise ConfigError("the whisper voice recipe trains a linear head on cached features in seconds, in "
                          "one process: run mmer-train without torchrun")
    voice = recipe.voice
    out_dir = Path(recipe.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(recipe.optim.seed)
    labels = get_label_set(LABEL_SET).labels
    dims = AudioStudentDims.for_whisper(label_set=LABEL_SET, num_labels=len(labels), encoder=recipe.model.encoder or "")
    dims = from_dict(AudioStudentDims, recipe.model.overrides, "model.overrides", base=dims)
    model = AudioStudent.from_pretrained(dims)
    cache_dir = Path(recipe.cache_dir) if recipe.cache_dir else default_cache_dir() / "voice"
    aug = AugmentConfig(**voice.augment) if voice.augment else AugmentConfig()

    primary = build_splits(recipe.data, ("audio",), recipe.optim.progress)
    train_sets = [primary["train"]] + [build_dataset(name, root=root, split="train", modalities=("audio",))
                                       for name, root in voice.extra.items()]
    xs, ys, clean_parts = [], [], []
    copies = [aug.copies] + [voice.extra_copies] * len(voice.extra)
    for ds, n_copies in zip(train_sets, copies):
        feats, usable = dataset_features(model, ds, n_copies, aug, cache_dir, recipe.optim.seed,
                                         progress=recipe.optim.progress)
        y = _meld_labels(ds)
        speakers = np.array([f"{ds.name}/{s.speaker}" for s in ds.samples])
        clean_parts.append(feats[0][usable])
        for c in range(feats.shape[0]):  # each copy set is normalised by its own per-speaker statistics
            xs.append(speaker_normalise(feats[c][usable], speakers[usable]))
            ys.append(y[usable])
    x_train, y_train = np.concatenate(xs), np.concatenate(ys)
    clean = np.concatenate(clean_parts)  # the prior: statistics of the clean, usable training clips
    model.prior_mean.copy_(torch.from_numpy(clean.mean(0)))
    model.prior_var.copy_(torch.from_numpy(clean.var(0)))

    normalizer = SpeakerNormalizer.for_model(model)
    evals = {}
    for split in ("dev", "test"):
        ds = primary.get(split)
        if ds is None or not len(ds):
            continue
        feats, usable = dataset_features(model, ds, 0, None, cache_dir, progress=recipe.optim.progress)
        speakers = [s.speaker for s in ds.samples]
        mean, std = causal_statistics(normalizer, feats[0], speakers, usable)
        normed = (feats[0] - mean) / np.maximum(std, 1e-3)
        evals[split] = (normed[usable], _meld_labels(ds)[usable])
    if "dev" not in evals:
        raise ValueError("the whisper voice recipe selects and calibrates on dev speakers: "
                         "the primary corpus's dev split is empty")

    counts = np.bincount(y_train, minlength=len(labels)).astype(np.float64)
    class_weights = torch.tensor(np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / (counts > 0).sum(), 0.0),
                                 dtype=torch.float32)
    # The head only: the frozen encoder's weights are buffers, not parameters.
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.optim.lr, weight_decay=recipe.optim.weight_decay)
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)
    x_dev, y_dev = evals["dev"]
    best = (-1.0, None, -1)
    history = []
    for epoch in range(recipe.optim.epochs):
        model.train()
        perm = torch.randperm(len(xt))
        for start in range(0, len(xt), recipe.optim.batch_size):
            rows = perm[start:start + recipe.optim.batch_size]
            logits = model.classify(xt[rows], torch.zeros(1), torch.ones(1)).logits
            loss = F.cross_entropy(logits, yt[rows], weight=class_weights, label_smoothing=recipe.loss.label_smoothing)
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            dev_logits = model.classify(torch.from_numpy(x_dev), torch.zeros(1), torch.ones(1)).logits.numpy()
        dev_ua = unweighted_accuracy(y_dev, dev_logits.argmax(-1))
        history.append({"epoch": epoch + 1, "loss": float(loss.detach()), "dev_ua": dev_ua})
        log.info("voice epoch %d/%d: loss %.3f, dev UA %.4f", epoch + 1, recipe.optim.epochs, float(loss.detach()), dev_ua)
        if dev_ua > best[0]:
            best = (dev_ua, {k: v.clone() for k, v in model.state_dict().items()}, epoch + 1)
    model.load_state_dict(best[1])
    model.eval()

    with torch.no_grad():
        dev_logits = model.classify(torch.from_numpy(x_dev), torch.zeros(1), torch.ones(1)).logits.numpy()
    temperature = fit_temperature(dev_logits, y_dev)
    dev_probs = torch.softmax(torch.from_numpy(dev_logits) / temperature, -1).numpy()
    nll_before = float(F.cross_entropy(torch.from_numpy(dev_logits), torch.from_numpy(y_dev)))
    nll_after = float(F.cross_entropy(torch.from_numpy(dev_logits) / temperature, torch.from_numpy(y_dev)))
    present_classes = len(np.unique(y_dev))
    calibrated = Calibration(temperature=temperature, reliability=skill(best[0], present_classes),
                             min_confidence=abstain_threshold(dev_probs, y_dev, 1.0 / present_classes),
                             fitted_on=f"{recipe.data.name} dev speakers {list(primary['dev'].speakers)}, "
                                       "speaker-causal normalisation")

    metrics: dict = {"task": "classification", "selection": "dev UA (max), speaker-causal normalisation",
                     "best_epoch": best[2], "history": history,
                     "calibration": {"temperature": temperature, "dev_nll_before": nll_before,
                                     "dev_nll_after": nll_after, "reliability": calibrated.reliability,
                                     "min_confidence": calibrated.min_confidence}}
    report = []
    for split, (x, y) in evals.items():
        with torch.no_grad():
            pred = model.classify(torch.from_numpy(x), torch.zeros(1), torch.ones(1)).logits.argmax(-1).numpy()
        m = classification_metrics(y, pred, labels)
        m["ua"], m["wa"] = unweighted_accuracy(y, pred), m["accuracy"]
        metrics[split] = m
        report.append(f"{split} ({recipe.data.name} held-out speakers, speaker-causal): UA {m['ua']:.4f} "
                      f"WA {m['wa']:.4f}\n{format_report(m)}")
        save_confusion_png(m["confusion"], labels, out_dir / f"confusion_{split}.png",
                           title=f"voice {split} ({recipe.data.name})")
    provenance = {"stage": "student", "modality": "audio", "family": "whisper",
                  "train": {ds.name: len(ds) for ds in train_sets}, "primary": recipe.data.name,
                  "fold": recipe.data.fold, "augment_copies": aug.copies, "best_epoch": best[2],
                  "dev_ua": best[0], "licence_note": voice.licence_note}
    save_checkpoint(model, out_dir / "checkpoint", provenance=provenance, calibration=calibrated.to_dict())
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    (out_dir / "report.txt").write_text("\n".join(report), encoding="utf-8")
    print("\n".join(report))
    print(f"mmer-train: whisper voice, best epoch {best[2]} (dev UA {best[0]:.4f}), temperature {temperature:.3f}, "
          f"reliability {calibrated.reliability:.3f}, abstain below {calibrated.min_confidence:.2f} -> "
          f"{out_dir / 'checkpoint'}")
    return metrics
