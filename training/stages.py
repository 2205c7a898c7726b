"""The training stages of the TelME recipe, each a model + a step function + data for the Trainer.

- ``teacher``: the text teacher (mmer.models.teacher) on MELD or IEMOCAP, cross-entropy
  (optionally class-weighted / label-smoothed for the rare classes).
- ``student``: an audio or visual student distilled from a frozen teacher checkpoint,
  L = CE + alpha * DIST + beta * feature KD (TelME eq. 6). The teacher's logits and features
  are cached (training/cache.py), so it runs once per sample, not once per epoch. With
  ``loss.alpha = loss.beta = 0`` and no teacher it is plain supervised training: that is how
  the EmoDB default voice model is trained (``data.name=emodb``, label set emodb7,
  speaker-independent split), so there is no separate voice stage.
- ``fusion``: ASF on the cached features of the frozen teacher and students; only ASF trains.
- ``msa``: DERL, MMILN, CENet or CMATH on an MMSA pickle (training/sentiment.py).

Each ``run_<stage>(recipe, resume)`` returns the run's metrics (metrics.json content).
"""

from __future__ import annotations

import logging
from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

import mmer
from mmer.checkpoint import read_meta
from mmer.config import ConfigError, from_dict
from mmer.labels import get_label_set
from mmer.progress import progress as progress_bar
from mmer.training.cache import FeatureCache, default_cache_dir, encoder_fingerprint
from mmer.training.datasets import (DatasetError, EmotionDataset, MediaOptions, Sample, build_dataset, pad_waveforms,
                                    stack_frames)
from mmer.training.distributed import main_process_first
from mmer.training.losses import class_weights_from_counts, cross_entropy, soft_target_kl, student_loss
from mmer.training.recipes import DataConfig, FusionRecipe, StudentRecipe, TeacherRecipe
from mmer.training.sentiment import run_msa
from mmer.training.trainer import Splits, StepOutput, Trainer, resolve_device

log = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "dev", "test")


# -- data ---------------------------------------------------------------------------------
def label_set_of(data: DataConfig) -> str:
    """The label set a corpus config trains on (or is scored in)."""
    if data.name == "emodb":
        return "emodb7"
    if data.name == "iemocap":
        return f"iemocap{data.classes}"
    if data.name in ("tess", "ravdess", "dailydialog"):  # their loaders read MELD's names only
        return "meld7"
    return data.label_set


def media_options(data: DataConfig) -> MediaOptions:
    """Clip decoding settings of a data config."""
    return MediaOptions(max_audio_s=data.max_audio_s, n_frames=data.n_frames, frame_size_px=data.frame_size_px,
                        face_crop=data.face_crop)


def build_split(data: DataConfig, split: str, modalities: Sequence[str], progress: bool = True) -> EmotionDataset:
    """One split of the configured corpus (first ``data.limit`` samples when limit > 0)."""
    kwargs: dict = {"root": data.root, "split": split, "modalities": tuple(modalities),
                    "media_options": media_options(data), "progress": progress}
    if data.name == "meld":
        kwargs.update(clips_root=data.clips_root, label_set=data.label_set, probe_cache_dir=data.probe_cache_dir)
    elif data.name == "iemocap":
        kwargs.update(classes=data.classes)
    elif data.name in ("emodb", "tess"):
        kwargs.update(fold=data.fold)
    if data.fold is not None and "fold" not in kwargs:
        raise ConfigError(f"data.fold={data.fold}: only emodb and tess have folds, not {data.name}")
    ds = build_dataset(data.name, **kwargs)
    if data.limit > 0:
        ds.samples = ds.samples[:data.limit]
    return ds


def build_splits(data: DataConfig, modalities: Sequence[str], progress: bool = True,
                 device: str = "auto") -> dict[str, EmotionDataset]:
    """train / dev / test datasets; an empty split (EmoDB LOSO without dev speaker) is left out.

    device: ``optim.device``; under torchrun with ``data.probe_cache_dir`` set, rank 0 probes the
    clips and writes the probe cache first, then the other ranks read it.
    """
    out = {}
    with main_process_first(device) if data.probe_cache_dir else nullcontext():
        for split in SPLIT_NAMES:
            ds = build_split(data, split, modalities, progress)
            if len(ds):
                out[split] = ds
    for needed in ("train", "dev"):
        if needed not in out:
            raise DatasetError(f"{data.name}: the {needed} split is empty (limit={data.limit}); model selection "
                             f"needs a dev split")
    return out


def train_class_weights(train: EmotionDataset, scheme: str) -> torch.Tensor | None:
    counts = Counter(s.label for s in train.samples)
    weights = class_weights_from_counts([counts.get(i, 0) for i in range(len(train.labels))], scheme)
    if weights is not None:
        log.info("class weights (%s): %s", scheme, dict(zip(train.labels.labels, weights.tolist())))
    return weights


def dataset_provenance(data: DataConfig, datasets: dict[str, EmotionDataset]) -> dict:
    return {"dataset": data.name, "data_root": str(Path(data.root).resolve()), "label_set": label_set_of(data),
            "limit": data.limit,
            "skipped": {name: len(ds.skipped) for name, ds in datasets.items()},
            "train_label_counts": datasets["train"].label_counts()}


# -- teacher --------------------------------------------------------------------------------
@dataclass
class TextItem:
    """One teacher input: prompt ids (dialogue so far + ``Now <s_k> feels <mask>``) and the label."""

    input_ids: list[int]
    label: int
    uid: str
    soft: np.ndarray | None = None   # (C,) an ensemble's probabilities, when distilling one


def encode_text_items(teacher, dataset: EmotionDataset, soft: dict[str, np.ndarray] | None = None) -> list[TextItem]:
    """Encode every sample of ``dataset`` with the teacher's prompt builder (once, before training);
    ``soft``: uid -> soft target, attached where given."""
    soft = soft or {}
    return [TextItem(teacher.prompt.encode(s.turns, s.target_index)["input_ids"], s.label, s.uid, soft.get(s.uid))
            for s in dataset.samples]


def text_collate(prompt) -> callable:
    """Dynamic padding: each batch is padded to its own longest prompt."""
    def collate(items: list[TextItem]) -> dict:
        batch = prompt.collate([{"input_ids": it.input_ids} for it in items])
        batch["labels"] = torch.tensor([it.label for it in items], dtype=torch.long)
        if all(it.soft is not None for it in items):   # training batches of an ensemble distillation
            batch["soft"] = torch.from_numpy(np.stack([it.soft for it in items]))
        return batch
    return collate


def ce_step(forward, class_weights: torch.Tensor | None, label_smoothing: float, alpha: float = 0.0,
            tau: float = 1.0):
    """A step function: ``forward(model, batch) -> EmotionOutput``, then (weighted) CE on its logits,
    plus ``alpha`` * the soft-target KL at ``tau`` on batches that carry ``soft`` targets."""
    def step(model, batch: dict) -> StepOutput:
        out = forward(model, batch)
        loss = cross_entropy(out.logits, batch["labels"], class_weights, label_smoothing)
        parts = {"cls": float(loss.detach())}
        if alpha and "soft" in batch:
            kd = soft_target_kl(out.logits, batch["soft"].to(out.logits.device), tau)
            parts["kd"] = float(kd.detach())
            loss = loss + alpha * kd
        return StepOutput(loss, out.logits, batch["labels"], parts)
    return step


def teacher_forward(model, batch: dict):
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])


def build_teacher(recipe: TeacherRecipe, label_set: str):
    from mmer.models.teacher import Teacher, TeacherDims

    m = recipe.model
    dims = TeacherDims(encoder=m.encoder, label_set=label_set, num_labels=len(get_label_set(label_set)),
                       kd_dim=m.kd_dim, num_speaker_tokens=m.num_speaker_tokens, max_tokens=m.max_tokens,
                       dropout=m.dropout, prompt_template=m.prompt_template)
    return Teacher.from_pretrained(dims)


def run_teacher(recipe: TeacherRecipe, resume: bool = False) -> dict:
    """Fine-tune the text teacher on ``recipe.data`` (text only)."""
    datasets = build_splits(recipe.data, ("text",), recipe.optim.progress, recipe.optim.device)
    label_set = label_set_of(recipe.data)
    init_seed = recipe.optim.seed if recipe.model.init_seed is None else recipe.model.init_seed
    torch.manual_seed(init_seed)  # the random head weights
    teacher = build_teacher(recipe, label_set)
    soft = ensemble_targets(recipe, datasets["train"], label_set) if recipe.ensemble else None
    items = {name: encode_text_items(teacher, ds, soft if name == "train" else None) for name, ds in datasets.items()}
    lengths = {name: [len(it.input_ids) for it in its] for name, its in items.items()}
    for name, ls in lengths.items():
        log.info("teacher %s: %d prompts, tokens mean %.0f, max %d", name, len(ls), np.mean(ls), max(ls))
    splits = Splits(items["train"], items["dev"], items.get("test"), text_collate(teacher.prompt), lengths)
    weights = train_class_weights(datasets["train"], recipe.loss.class_weighting)
    step = ce_step(teacher_forward, weights, recipe.loss.label_smoothing, recipe.loss.alpha if soft else 0.0,
                   recipe.loss.tau)
    provenance = {"stage": "teacher", **dataset_provenance(recipe.data, datasets),
                  "class_weights": None if weights is None else weights.tolist()}
    if soft:
        provenance["ensemble"] = {"members": [str(Path(m).resolve()) for m in recipe.ensemble],
                                  "alpha": recipe.loss.alpha, "tau": recipe.loss.tau, "targets": "train split"}
    trainer = Trainer(teacher, step, splits, recipe.optim, recipe.out, get_label_set(label_set).labels,
                      run_config=recipe, provenance=provenance)
    return trainer.fit(resume=resume)


def ensemble_targets(recipe: TeacherRecipe, train: EmotionDataset, label_set: str) -> dict[str, np.ndarray]:
    """uid -> the mean probability at ``loss.tau`` of the frozen ``recipe.ensemble`` teachers on
    each training utterance (their outputs cached, so a resumed run reads them from disk)."""
    if recipe.loss.alpha <= 0:
        raise ConfigError("ensemble=[...] distils those teachers: set loss.alpha > 0 (the weight of the "
                          "soft-target term, 1.0 for example)")
    device = resolve_device(recipe.optim.device)
    cache_dir = recipe.cache_dir or default_cache_dir()
    uids = [s.uid for s in train.samples]
    total = np.zeros(1)
    for member in recipe.ensemble:
        model, out = cached_outputs(member, {"train": train}, cache_dir, recipe.optim.eval_batch_size, device,
                                    media_options(recipe.data))
        if model.registry_name != "teacher" or model.modality != "text":
            raise ConfigError(f"ensemble member {member}: a {model.registry_name}; an ensemble of text teachers "
                              f"is distilled into one")
        _check_label_set(model, label_set, "ensemble member")
        del model
        logits = torch.from_numpy(np.stack([out[u]["logits"] for u in uids]).astype(np.float64))
        total = total + torch.softmax(logits / recipe.loss.tau, dim=1).numpy()
    log.info("ensemble of %d teachers: soft targets on %d training utterances (tau %.2f)",
             len(recipe.ensemble), len(uids), recipe.loss.tau)
    mean = (total / len(recipe.ensemble)).astype(np.float32)
    return dict(zip(uids, mean))


# -- frozen models on samples (shared by the student and fusion stages and by mmer-eval) -------
MAX_PIXEL = 255.0


def media_batch(dataset: EmotionDataset, samples: Sequence[Sample], modality: str,
                memo: dict | None = None) -> dict[str, torch.Tensor]:
    """Decode one modality of ``samples`` into model inputs; ``present`` (B,) bool marks usable clips.

    audio: ``waveform`` (B, T) float32 16 kHz, ``attention_mask`` (B, T).
    visual: ``frames`` (B, N, 3, S, S) float in [0, 1] RGB, ``frame_mask`` (B, N) bool.
    memo: uid -> decoded clip, filled and reused when given (``data.keep_decoded``), so a small
    corpus is decoded by ffmpeg once instead of once per epoch.
    """
    load = dataset.load_audio if modality == "audio" else dataset.load_frames

    def decoded(s: Sample):
        if memo is None:
            return load(s)
        if s.uid not in memo:
            memo[s.uid] = load(s)
        return memo[s.uid]

    if modality == "audio":
        wav, mask, present = pad_waveforms([decoded(s) for s in samples])
        return {"waveform": torch.as_tensor(wav, dtype=torch.float32), "attention_mask": torch.as_tensor(mask),
                "present": torch.as_tensor(present, dtype=torch.bool)}
    frames, present = stack_frames([decoded(s) for s in samples])
    x = torch.as_tensor(frames).permute(0, 1, 4, 2, 3).float() / MAX_PIXEL
    present_t = torch.as_tensor(present, dtype=torch.bool)
    return {"frames": x, "frame_mask": present_t[:, None].expand(-1, x.shape[1]).contiguous(), "present": present_t}


def student_forward(model, batch: dict):
    """Call an audio or visual student on a :func:`media_batch`."""
    if "waveform" in batch:
        return model(waveform=batch["waveform"], attention_mask=batch["attention_mask"])
    return model(frames=batch["frames"], frame_mask=batch["frame_mask"])


@torch.no_grad()
def run_frozen(model, dataset: EmotionDataset, samples: Sequence[Sample], batch_size: int,
               device: torch.device, progress: bool = False) -> dict[str, np.ndarray]:
    """Outputs of a teacher / audio / visual model on ``samples``.

    Returns {"logits": (n, C), "feature": (n, D), "present": (n,) float 1/0}. Rows whose clip
    is unusable get zero logits and features (no evidence) and present 0. ``progress``: a bar
    on stderr over the batches when it is a terminal (mmer-eval; the training cache has its own).
    """
    modality = getattr(model, "modality", "")
    if modality not in ("text", "audio", "visual"):
        raise ValueError(f"no input pipeline for a '{model.registry_name}' model (it reads {modality or 'nothing'}; "
                         f"frozen outputs come from text, audio or visual models)")
    if model.contract().speaker_state:  # speaker-normalised: speakers met in order
        from mmer.training.voice import speaker_causal_outputs

        return speaker_causal_outputs(model, dataset, samples, progress=progress)
    model.eval()
    out: dict[str, list] = {"logits": [], "feature": [], "present": []}
    starts = range(0, len(samples), batch_size)
    for start in progress_bar(starts, f"{modality} {dataset.name} {dataset.split}", enabled=progress, unit="batch"):
        chunk = samples[start:start + batch_size]
        if modality == "text":
            batch = model.prompt.collate([model.prompt.encode(s.turns, s.target_index) for s in chunk])
            batch = {k: v.to(device) for k, v in batch.items()}
            res = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            present = torch.ones(len(chunk), dtype=torch.bool, device=device)
        else:
            batch = {k: v.to(device) for k, v in media_batch(dataset, chunk, modality).items()}
            res = student_forward(model, batch)
            present = batch["present"]
        keep = present.unsqueeze(-1)
        out["logits"].append(torch.where(keep, res.logits.float(), 0.0).cpu())
        out["feature"].append(torch.where(keep, res.features[modality].float(), 0.0).cpu())
        out["present"].append(present.float().cpu())
    return {k: torch.cat(v).numpy() for k, v in out.items()}


def run_served(served: Any, dataset: EmotionDataset, samples: Sequence[Sample],
               progress: bool = False) -> dict[str, np.ndarray]:
    """What :func:`run_frozen` returns, from any served artefact (:mod:`mmer.serving`: an export
    folder on ONNX Runtime or TensorRT, or a checkpoint on torch), one sample at a time through
    the model's own processor. Speaker-stateful models meet the speakers in the live order.
    ``progress``: a bar on stderr over the samples when it is a terminal."""
    from mmer.models.visual_student import LUMA_RGB   # RGB -> gray, for graphs that read gray crops
    from mmer.training.voice import causal_order

    modality = served.modality
    if modality not in ("text", "audio", "visual"):
        raise ValueError(f"no input pipeline for a '{served.name}' model (it reads {modality})")
    order = causal_order([s.speaker or s.dialogue_id for s in samples]) if served.contract.speaker_state \
        else range(len(samples))
    served.reset()
    logits: list = [None] * len(samples)
    feats: list = [None] * len(samples)
    present = np.zeros(len(samples), np.float32)
    gray = served.contract.input("frames").shape[2] == 1 if modality == "visual" else False
    bar = progress_bar(order, f"{served.name} {dataset.name} {dataset.split}", total=len(samples),
                       enabled=progress, unit="sample")
    for done, i in enumerate(bar, 1):
        s = samples[i]
        if modality == "text":
            out = served.predict(list(s.turns), target=s.target_index)
        elif modality == "audio":
            clip = dataset.load_audio(s)
            if not clip.valid or clip.data.size == 0:
                continue
            out = served.predict(clip.data, speaker=s.speaker or s.dialogue_id)
        else:
            batch = media_batch(dataset, [s], "visual")
            if not bool(batch["present"][0]):
                continue
            frames = batch["frames"][0].numpy()                       # (N, 3, S, S) RGB in [0, 1]
            if gray:
                frames = np.tensordot(np.asarray(LUMA_RGB, np.float32), frames, axes=([0], [1]))  # (N, S, S)
            out = served.predict(frames)
        logits[i], feats[i], present[i] = out["logits"][0], out["feature"][0], 1.0
        if done % 200 == 0:
            log.info("%s outputs %s %s: %d/%d", served.name, dataset.name, dataset.split, done, len(samples))
    width = next((f.shape[-1] for f in feats if f is not None), 0)
    classes = len(served.labels)
    return {"logits": np.stack([l if l is not None else np.zeros(classes, np.float32) for l in logits]),
            "feature": np.stack([f if f is not None else np.zeros(width, np.float32) for f in feats]),
            "present": present}


def cached_outputs(checkpoint: str, datasets: dict[str, EmotionDataset], cache_dir: str | Path,
                   batch_size: int, device: torch.device, media: MediaOptions) -> tuple[Any, dict[str, dict]]:
    """Load a frozen checkpoint and its outputs on every sample (computed once, then from disk).

    Returns (model, uid -> {"logits", "feature", "present"}). Under torchrun, rank 0 computes and
    writes the cache while the other ranks wait, then they read it (training/distributed.py).
    """
    with main_process_first(device.type):
        return _cached_outputs(checkpoint, datasets, cache_dir, batch_size, device, media)


def _cached_outputs(checkpoint: str, datasets: dict[str, EmotionDataset], cache_dir: str | Path,
                    batch_size: int, device: torch.device, media: MediaOptions) -> tuple[Any, dict[str, dict]]:
    model = mmer.load(checkpoint, device=str(device))
    for p in model.parameters():
        p.requires_grad_(False)
    settings: dict = {"role": model.registry_name}
    media_keys = {"audio": ("sample_rate_hz", "max_audio_s", "silence_peak"),
                  "visual": ("n_frames", "frame_size_px", "face_crop")}.get(model.modality, ())
    if model.modality == "text":
        settings["max_tokens"] = model.dims.max_tokens
    settings.update({k: v for k, v in media.to_dict().items() if k in media_keys})
    cache = FeatureCache(cache_dir, encoder_fingerprint(checkpoint, **settings), meta={"checkpoint": str(checkpoint),
                         **settings}, progress=True)
    owner = {s.uid: (ds, s) for ds in datasets.values() for s in ds.samples}

    def compute(uids: list[str]) -> dict[str, np.ndarray]:
        ds = owner[uids[0]][0]
        if any(owner[u][0] is not ds for u in uids):  # chunks may straddle splits: decode per split
            parts = [compute([u]) for u in uids]
            return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        return run_frozen(model, ds, [owner[u][1] for u in uids], batch_size, device)

    uids = list(owner)
    arrays = cache.get_or_compute(uids, compute, desc=f"{model.registry_name} outputs")
    return model, {u: {k: v[i] for k, v in arrays.items()} for i, u in enumerate(uids)}


def _check_label_set(model, label_set: str, role: str) -> None:
    if model.label_set != label_set:
        raise ConfigError(f"the {role} predicts '{model.label_set}' but the data is labelled '{label_set}'; "
                         f"distillation and fusion need the same classes")


# -- student ----------------------------------------------------------------------------
@dataclass
class MediaItem:
    """One student sample: where to decode it from, plus the cached teacher outputs (or None)."""

    dataset: EmotionDataset
    sample: Sample
    teacher: dict | None


def media_collate(modality: str, keep_decoded: bool = False):
    """Collate student items; ``keep_decoded`` memoises decoded clips (effective with num_workers=0,
    where the memo lives in the training process across epochs)."""
    memo: dict | None = {} if keep_decoded else None

    def collate(items: list[MediaItem]) -> dict:
        by_ds: dict[int, list[int]] = {}
        for i, it in enumerate(items):
            by_ds.setdefault(id(it.dataset), []).append(i)
        if len(by_ds) > 1:
            raise ValueError("a batch mixes splits")
        batch = media_batch(items[0].dataset, [it.sample for it in items], modality, memo)
        batch["labels"] = torch.tensor([it.sample.label for it in items], dtype=torch.long)
        if items[0].teacher is not None:
            batch["teacher_logits"] = torch.from_numpy(np.stack([it.teacher["logits"] for it in items]))
            batch["teacher_feature"] = torch.from_numpy(np.stack([it.teacher["feature"] for it in items]))
        return batch
    return collate


def build_student(recipe: StudentRecipe, label_set: str, kd_dim: int):
    """A fresh student for ``recipe.model`` (pretrained encoder for the hf family).

    ``model.overrides`` are checked field by field against the student's Dims (strict, typed).
    """
    m = recipe.model
    n = len(get_label_set(label_set))
    sizes = {"kd_dim": kd_dim} if kd_dim else {}
    if m.modality == "audio":
        from mmer.models.audio_student import AudioStudent, AudioStudentDims

        dims = (AudioStudentDims.for_hf(m.encoder or "", label_set=label_set, num_labels=n, **sizes)
                if m.variant == "hf" else AudioStudentDims.for_edge(label_set=label_set, num_labels=n, **sizes))
        dims = from_dict(AudioStudentDims, m.overrides, "model.overrides", base=dims)
        return AudioStudent.from_pretrained(dims)
    from mmer.models.visual_student import VisualStudent, VisualStudentDims

    dims = VisualStudentDims(family=m.variant, label_set=label_set, encoder=m.encoder or "", **sizes)
    return VisualStudent(from_dict(VisualStudentDims, m.overrides, "model.overrides", base=dims))


def student_step(modality: str, recipe: StudentRecipe, class_weights: torch.Tensor | None):
    """Eq. (6) on the rows whose clip is usable (a missing clip carries no evidence to learn from)."""
    loss_cfg = recipe.loss

    def step(model, batch: dict) -> StepOutput:
        out = student_forward(model, batch)
        labels, present = batch["labels"], batch["present"]
        if not bool(present.any()):
            return StepOutput(out.logits.sum() * 0.0, out.logits, labels)
        rows = present.nonzero().squeeze(-1)
        t_logits, t_feat = batch.get("teacher_logits"), batch.get("teacher_feature")
        parts = student_loss(out.logits[rows], out.features[modality][rows], labels[rows],
                             None if t_logits is None else t_logits[rows], None if t_feat is None else t_feat[rows],
                             alpha=loss_cfg.alpha, beta=loss_cfg.beta, tau=loss_cfg.tau,
                             feature_t=loss_cfg.feature_t, class_weights=class_weights,
                             label_smoothing=loss_cfg.label_smoothing)
        return StepOutput(parts.total, out.logits, labels, parts.as_floats())
    return step


def run_student(recipe: StudentRecipe, resume: bool = False) -> dict:
    """Distil an audio or visual student from a frozen teacher (or train it on labels alone)."""
    if recipe.model.variant == "whisper":  # frozen encoder: cached features, a head (training/voice.py)
        from mmer.training.voice import run_whisper_student

        return run_whisper_student(recipe, resume)
    modality = recipe.model.modality
    distil = bool(recipe.loss.alpha or recipe.loss.beta)
    if distil and not recipe.teacher:
        raise ConfigError("loss.alpha or loss.beta > 0 needs teacher=<teacher checkpoint>; "
                         "set both to 0 to train on labels alone")
    label_set = label_set_of(recipe.data)
    device = resolve_device(recipe.optim.device)
    teacher_dims = read_meta(recipe.teacher)["dims"] if distil else None
    kd_dim = teacher_dims["kd_dim"] if teacher_dims else recipe.model.kd_dim
    torch.manual_seed(recipe.optim.seed)
    student = build_student(recipe, label_set, kd_dim)
    data = recipe.data
    if modality == "visual":  # frames must come decoded at the student's input geometry
        data = replace(data, frame_size_px=student.dims.image_size, n_frames=student.dims.num_frames)
    modalities = (("text",) if distil else ()) + (modality,)
    datasets = build_splits(data, modalities, recipe.optim.progress, recipe.optim.device)
    teacher_out: dict[str, dict] = {}
    if distil:
        cache_dir = recipe.cache_dir or default_cache_dir()
        teacher, teacher_out = cached_outputs(recipe.teacher, datasets, cache_dir, recipe.optim.eval_batch_size,
                                              device, media_options(data))
        _check_label_set(teacher, label_set, "teacher")
        del teacher
    items = {name: [MediaItem(ds, s, teacher_out.get(s.uid)) for s in ds.samples] for name, ds in datasets.items()}
    splits = Splits(items["train"], items["dev"], items.get("test"), media_collate(modality, data.keep_decoded))
    weights = train_class_weights(datasets["train"], recipe.loss.class_weighting)
    provenance = {"stage": "student", "modality": modality, **dataset_provenance(data, datasets),
                  "teacher": str(Path(recipe.teacher).resolve()) if distil else None,
                  "media": media_options(data).to_dict()}
    trainer = Trainer(student, student_step(modality, recipe, weights), splits, recipe.optim, recipe.out,
                      get_label_set(label_set).labels, run_config=recipe, provenance=provenance)
    return trainer.fit(resume=resume)


# -- fusion -----------------------------------------------------------------------------
FUSION_KEYS = ("text", "audio", "visual", "audio_present", "visual_present")


def fusion_collate(items: list[dict]) -> dict:
    batch = {k: torch.from_numpy(np.stack([it[k] for it in items])) for k in FUSION_KEYS}
    batch["audio_present"], batch["visual_present"] = batch["audio_present"] > 0, batch["visual_present"] > 0
    batch["labels"] = torch.tensor([it["label"] for it in items], dtype=torch.long)
    return batch


def fusion_forward(model, batch: dict):
    return model(text=batch["text"], audio=batch["audio"], visual=batch["visual"],
                 audio_present=batch["audio_present"], visual_present=batch["visual_present"])


def run_fusion(recipe: FusionRecipe, resume: bool = False) -> dict:
    """Train ASF on the cached features of the frozen teacher and students."""
    from mmer.models.asf import ASF, ASFDims

    if not recipe.teacher:
        raise ConfigError("fusion needs teacher=<teacher checkpoint>")
    students = {"audio": recipe.audio_student, "visual": recipe.visual_student}
    data = recipe.data
    if recipe.visual_student:
        vdims = read_meta(recipe.visual_student)["dims"]
        data = replace(data, frame_size_px=vdims["image_size"], n_frames=vdims["num_frames"])
    modalities = ("text",) + tuple(m for m, path in students.items() if path)
    datasets = build_splits(data, modalities, recipe.optim.progress, recipe.optim.device)
    label_set = label_set_of(data)
    device = resolve_device(recipe.optim.device)
    cache_dir = recipe.cache_dir or default_cache_dir()
    bs = recipe.optim.eval_batch_size
    teacher, outputs = cached_outputs(recipe.teacher, datasets, cache_dir, bs, device, media_options(data))
    _check_label_set(teacher, label_set, "teacher")
    kd_dim = teacher.dims.kd_dim
    per_modality = {}
    for modality, path in students.items():
        if path:
            model, per_modality[modality] = cached_outputs(path, datasets, cache_dir, bs, device, media_options(data))
            _check_label_set(model, label_set, f"{modality} student")
            if model.dims.kd_dim != kd_dim:
                raise ConfigError(f"{modality} student features are {model.dims.kd_dim}-d, the teacher's {kd_dim}-d")
    zeros = np.zeros(kd_dim, dtype=np.float32)

    def item(s: Sample) -> dict:
        it = {"text": outputs[s.uid]["feature"], "label": s.label}
        for m in ("audio", "visual"):
            got = per_modality.get(m, {}).get(s.uid)
            it[m] = got["feature"] if got else zeros
            # the cache may hand a scalar back as shape (1,)
            it[f"{m}_present"] = np.float32(np.asarray(got["present"]).reshape(-1)[0]) if got else np.float32(0.0)
        return it

    items = {name: [item(s) for s in ds.samples] for name, ds in datasets.items()}
    splits = Splits(items["train"], items["dev"], items.get("test"), fusion_collate)
    m = recipe.model
    torch.manual_seed(recipe.optim.seed)
    asf = ASF(ASFDims(label_set=label_set, num_labels=len(get_label_set(label_set)), kd_dim=kd_dim,
                      num_heads=m.num_heads, theta=m.theta, dropout=m.dropout, paper_faithful=m.paper_faithful))
    weights = train_class_weights(datasets["train"], recipe.loss.class_weighting)
    provenance = {"stage": "fusion", **dataset_provenance(data, datasets),
                  "teacher": str(Path(recipe.teacher).resolve()),
                  **{f"{k}_student": str(Path(v).resolve()) if v else None for k, v in students.items()},
                  "media": media_options(data).to_dict()}
    trainer = Trainer(asf, ce_step(fusion_forward, weights, recipe.loss.label_smoothing), splits, recipe.optim,
                      recipe.out, get_label_set(label_set).labels, run_config=recipe, provenance=provenance)
    return trainer.fit(resume=resume)


STAGES = {"teacher": run_teacher, "student": run_student, "fusion": run_fusion, "msa": run_msa}
