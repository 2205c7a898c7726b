"""CMU-MOSI / MOSEI in the pickle layout MMSA distributes, and a synthetic file in that layout.

The file (REFERENCE.md section 3) is a pickled dict ``{"train", "valid", "test"}``; each split
holds, for N utterances::

    raw_text           (N,) str
    text               (N, Lt, 768) float   BERT features
    text_bert          (N, 3, Lt) int       token ids / attention mask / segment ids
    audio              (N, La, Da) float    COVAREP (MOSI Da = 5, MOSEI 74); may hold -inf
    vision             (N, Lv, Dv) float    Facet (MOSI Dv = 20, MOSEI 35)
    audio_lengths      (N,) int             unaligned files only
    vision_lengths     (N,) int             unaligned files only
    id                 (N,) str
    regression_labels  (N,) float in [-3, 3]
    classification_labels (N,) int          optional: class ids (used for emotion labels)

Aligned files have La = Lv = Lt and no length keys: the valid steps are the text mask's.
:func:`load_mmsa` checks every key, shape and length and names the split, key and expected
shape when one is wrong; ``-inf``/NaN features become 0 (MOSEI's COVAREP holds -inf where a
log of zero was taken). The real files cannot be downloaded here; :func:`make_synthetic_mmsa`
writes a small file in exactly this layout whose labels are a learnable function of all
three modalities (for tests, and for ``mmer-train msa --data tiny.pkl`` on a fresh clone)::

    python -m mmer.training.mmsa tiny.pkl            # writes a synthetic MOSI-shaped file

Security: a pickle can run code when it is loaded. Load only files from a source you trust
(MMSA's release); mmer's own checkpoints never use pickle.
"""

from __future__ import annotations

import argparse
import logging
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from mmer.training.datasets import DatasetError

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
FEATURE_DIMS = {"mosi": {"text": 768, "audio": 5, "vision": 20},    # REFERENCE.md section 3
                "mosei": {"text": 768, "audio": 74, "vision": 35}}
REQUIRED_KEYS = ("text", "text_bert", "audio", "vision")
LABEL_KEYS = ("regression_labels", "classification_labels")
BERT_ROWS = 3                     # text_bert rows: input ids, attention mask, segment ids
SENTIMENT_RANGE = 3.0


@dataclass
class MmsaSplit:
    """One split's arrays after validation (numpy; features float32 with -inf/NaN set to 0)."""

    name: str
    text: np.ndarray            # (N, Lt, Dt) float32
    text_ids: np.ndarray        # (N, Lt) int64
    text_mask: np.ndarray       # (N, Lt) bool
    audio: np.ndarray           # (N, La, Da) float32
    audio_lengths: np.ndarray   # (N,) int64
    vision: np.ndarray          # (N, Lv, Dv) float32
    vision_lengths: np.ndarray  # (N,) int64
    labels: np.ndarray          # (N,) float32 scores, or int64 class ids
    ids: list[str]
    non_finite: int = 0         # how many feature values were -inf/NaN and set to 0

    def __len__(self) -> int:
        return len(self.labels)

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays under the pickle's key names (for ``MsaModel.prepare``)."""
        return {"text": self.text, "text_bert": self.text_ids, "text_mask": self.text_mask, "audio": self.audio,
                "audio_lengths": self.audio_lengths, "vision": self.vision, "vision_lengths": self.vision_lengths,
                "labels": self.labels}

    def dims(self) -> dict[str, int]:
        return {"text_dim": int(self.text.shape[2]), "audio_dim": int(self.audio.shape[2]),
                "vision_dim": int(self.vision.shape[2])}


def _fail(path: Path, split: str, key: str, message: str) -> DatasetError:
    return DatasetError(f"{path}: split '{split}', key '{key}': {message}")


def _finite(x: np.ndarray) -> tuple[np.ndarray, int]:
    x = np.asarray(x, dtype=np.float32)
    bad = ~np.isfinite(x)
    n = int(bad.sum())
    if n:
        x = np.where(bad, np.float32(0.0), x)
    return x, n


def _validate_split(path: Path, name: str, data: Any, task: str) -> MmsaSplit:
    if not isinstance(data, dict):
        raise _fail(path, name, "-", f"expected a dict of arrays, found {type(data).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in data]
    label_key = "regression_labels" if task == "regression" else "classification_labels"
    if label_key not in data:
        missing.append(label_key)
    if missing:
        raise _fail(path, name, missing[0], f"missing (keys present: {sorted(data)}); an MMSA split holds "
                    f"{list(REQUIRED_KEYS) + [label_key]} and, unaligned, audio_lengths / vision_lengths")
    labels = np.asarray(data[label_key]).reshape(-1)
    n = len(labels)
    if n == 0:
        raise _fail(path, name, label_key, "no samples")
    arrays = {}
    for key in ("text", "audio", "vision"):
        a = np.asarray(data[key])
        if a.ndim != 3 or a.shape[0] != n:
            raise _fail(path, name, key, f"shape {a.shape}, expected ({n}, L, D): one (L, D) sequence per label")
        arrays[key] = a
    bert = np.asarray(data["text_bert"])
    lt = arrays["text"].shape[1]
    if bert.shape != (n, BERT_ROWS, lt):
        raise _fail(path, name, "text_bert", f"shape {bert.shape}, expected ({n}, {BERT_ROWS}, {lt}): "
                    f"ids / mask / segments over the same {lt} steps as 'text'")
    text_mask = bert[:, 1].astype(bool)
    aligned = "audio_lengths" not in data and "vision_lengths" not in data
    lengths = {}
    for key in ("audio", "vision"):
        steps = arrays[key].shape[1]
        if aligned:
            if steps != lt:
                raise _fail(path, name, f"{key}_lengths", f"missing, and {key} has {steps} steps while text has "
                            f"{lt}: an unaligned file must carry {key}_lengths")
            lengths[key] = text_mask.sum(axis=1).astype(np.int64)
            continue
        if f"{key}_lengths" not in data:
            raise _fail(path, name, f"{key}_lengths", "missing while the other length key is present")
        ls = np.asarray(data[f"{key}_lengths"]).reshape(-1).astype(np.int64)
        if len(ls) != n:
            raise _fail(path, name, f"{key}_lengths", f"{len(ls)} lengths for {n} samples")
        if (ls < 0).any() or (ls > steps).any():
            raise _fail(path, name, f"{key}_lengths", f"values must lie in 0..{steps} (the padded length)")
        lengths[key] = ls
    non_finite = 0
    feats = {}
    for key, a in arrays.items():
        feats[key], bad = _finite(a)
        non_finite += bad
    if task == "regression":
        labels = labels.astype(np.float32)
        if not np.isfinite(labels).all():
            raise _fail(path, name, label_key, "holds NaN or infinite labels")
    else:
        labels = labels.astype(np.int64)
        if labels.min() < 0:
            raise _fail(path, name, label_key, "holds negative class ids")
    ids = [str(i) for i in data.get("id", range(n))]
    return MmsaSplit(name, feats["text"], bert[:, 0].astype(np.int64), text_mask, feats["audio"],
                     lengths["audio"], feats["vision"], lengths["vision"], labels, ids, non_finite)


def load_mmsa(path: str | Path, task: str = "regression") -> dict[str, MmsaSplit]:
    """Read and validate an MMSA pickle; returns {"train", "valid", "test"} -> :class:`MmsaSplit`.

    task: "regression" reads ``regression_labels``; "classification" reads ``classification_labels``.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such file; pass the MMSA pickle (e.g. MOSI/Processed/unaligned_50.pkl) "
                           f"or write a synthetic one with: python -m mmer.training.mmsa {path}")
    try:
        with open(path, "rb") as f:
            data = pickle.load(f)
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, ValueError) as e:
        raise DatasetError(f"{path}: not a readable MMSA pickle ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict) or any(s not in data for s in SPLITS):
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise DatasetError(f"{path}: expected top-level keys {list(SPLITS)}, found {found}")
    splits = {s: _validate_split(path, s, data[s], task) for s in SPLITS}
    ref = splits["train"]
    for s in SPLITS[1:]:
        for key in ("text", "audio", "vision"):
            got, want = getattr(splits[s], key).shape[2], getattr(ref, key).shape[2]
            if got != want:
                raise _fail(path, s, key, f"feature width {got}, but train has {want}")
    for s, sp in splits.items():
        if sp.non_finite:
            log.info("%s %s: %d non-finite feature values (-inf/NaN) set to 0", path.name, s, sp.non_finite)
    return splits


class MmsaDataset(Dataset):
    """Items of one split as dicts of tensors, for :func:`mmsa_collate`."""

    def __init__(self, split: MmsaSplit) -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> dict:
        s = self.split
        return {"index": i, "text": s.text[i], "text_ids": s.text_ids[i], "text_mask": s.text_mask[i],
                "audio": s.audio[i], "audio_lengths": s.audio_lengths[i], "vision": s.vision[i],
                "vision_lengths": s.vision_lengths[i], "labels": s.labels[i]}


def mmsa_collate(text_input: str):
    """Collate function: ``text`` is the feature sequence (B, L, D) for ``text_input="features"``
    or the token ids (B, L) for ``"ids"``; every split is padded to a fixed length already."""
    if text_input not in ("features", "ids"):
        raise ValueError(f"text_input must be 'features' or 'ids', got {text_input!r}")

    def collate(items: list[dict]) -> dict:
        def stack(key: str) -> torch.Tensor:
            return torch.from_numpy(np.stack([it[key] for it in items]))

        return {"text": stack("text" if text_input == "features" else "text_ids"),
                "text_mask": stack("text_mask"), "audio": stack("audio"), "audio_lengths": stack("audio_lengths"),
                "vision": stack("vision"), "vision_lengths": stack("vision_lengths"), "labels": stack("labels"),
                "index": torch.tensor([it["index"] for it in items], dtype=torch.int64)}

    return collate


# -- synthetic data in the MMSA layout --------------------------------------------------------
def make_synthetic_mmsa(path: str | Path | None = None, *, sizes: tuple[int, int, int] = (160, 40, 40),
                        text_len: int = 12, audio_len: int = 20, vision_len: int = 16,
                        dims: tuple[int, int, int] = (32, 5, 20), aligned: bool = False,
                        num_classes: int = 0, vocab_size: int = 1000, inf_fraction: float = 0.01,
                        seed: int = 0) -> dict:
    """A small dataset in MMSA's pickle layout whose labels every modality carries.

    Each utterance has a latent sentiment s in [-3, 3] (a fifth of them exactly 0, as in MOSI's
    neutral clips); the text features, the token ids, the audio and the visual sequences each
    encode a noisy share of s, so a model that fuses them beats one that reads a single modality
    and every model beats predicting the mean. ``num_classes > 0`` adds
    ``classification_labels`` (s binned into that many classes). ``aligned`` gives all three
    sequences the text length and no length keys. ``inf_fraction`` of the audio values past
    each clip's end are -inf, as in MOSEI's COVAREP features. Returns the dict; writes it with
    pickle when ``path`` is given.

    dims: (text, audio, vision) feature widths; MOSI's are (768, 5, 20).
    """
    rng = np.random.default_rng(seed)
    dt, da, dv = dims
    la, lv = (text_len, text_len) if aligned else (audio_len, vision_len)
    directions = {k: rng.normal(size=d).astype(np.float32) / np.sqrt(d) for k, d in (("t", dt), ("a", da), ("v", dv))}
    word_lo, word_mid = 100, 100 + (vocab_size - 100) // 2   # ids below word_mid lean negative, above positive
    out: dict = {}
    for split, n in zip(SPLITS, sizes):
        s = rng.uniform(-SENTIMENT_RANGE, SENTIMENT_RANGE, size=n).astype(np.float32)
        s[rng.random(n) < 0.2] = 0.0
        s = np.round(s * 3) / 3          # MOSI scores are means of annotator votes: thirds
        shares = rng.dirichlet([2.0, 2.0, 2.0], size=n).astype(np.float32)   # how much each modality says
        t_len = rng.integers(4, text_len + 1, size=n)
        a_len = t_len if aligned else rng.integers(max(2, la // 3), la + 1, size=n)
        v_len = t_len if aligned else rng.integers(max(2, lv // 3), lv + 1, size=n)
        text = np.zeros((n, text_len, dt), np.float32)
        bert = np.zeros((n, BERT_ROWS, text_len), np.int64)
        audio = np.zeros((n, la, da), np.float32)
        vision = np.zeros((n, lv, dv), np.float32)
        for i in range(n):
            sig = s[i] * shares[i] * 3
            text[i, :t_len[i]] = rng.normal(0, 0.5, (t_len[i], dt)) + sig[0] * directions["t"]
            p_pos = 1 / (1 + np.exp(-sig[0]))
            pos = rng.random(t_len[i]) < p_pos
            bert[i, 0, :t_len[i]] = np.where(pos, rng.integers(word_mid, vocab_size, t_len[i]),
                                             rng.integers(word_lo, word_mid, t_len[i]))
            bert[i, 0, 0] = 101                 # [CLS]
            bert[i, 1, :t_len[i]] = 1
            audio[i, :a_len[i]] = rng.normal(0, 0.5, (a_len[i], da)) + sig[1] * directions["a"]
            vision[i, :v_len[i]] = rng.normal(0, 0.5, (v_len[i], dv)) + sig[2] * directions["v"]
            pad = la - a_len[i]
            if pad and inf_fraction > 0:
                holes = rng.random((pad, da)) < inf_fraction
                audio[i, a_len[i]:][holes] = -np.inf
        data = {"raw_text": np.array([f"synthetic utterance {i}" for i in range(n)], dtype=object),
                "text": text, "text_bert": bert, "audio": audio, "vision": vision,
                "id": np.array([f"{split}_{i}" for i in range(n)], dtype=object),
                "regression_labels": s,
                "annotations": np.array(["Positive" if v > 0 else "Negative" if v < 0 else "Neutral" for v in s],
                                        dtype=object)}
        if not aligned:
            data["audio_lengths"] = a_len.astype(np.int64)
            data["vision_lengths"] = v_len.astype(np.int64)
        if num_classes:
            edges = np.linspace(-SENTIMENT_RANGE, SENTIMENT_RANGE, num_classes + 1)[1:-1]
            data["classification_labels"] = np.digitize(s, edges).astype(np.int64)
        out[split] = data
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            pickle.dump(out, f, protocol=pickle.HIGHEST_PROTOCOL)
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m mmer.training.mmsa OUT.pkl``: write a synthetic MMSA-layout file."""
    parser = argparse.ArgumentParser(prog="python -m mmer.training.mmsa",
                                     description="Write a synthetic CMU-MOSI-shaped pickle in MMSA's layout.")
    parser.add_argument("out", help="pickle to write")
    parser.add_argument("--sizes", type=int, nargs=3, default=(160, 40, 40), metavar=("TRAIN", "VALID", "TEST"))
    parser.add_argument("--dims", type=int, nargs=3, default=(32, 5, 20), metavar=("TEXT", "AUDIO", "VISION"),
                        help="feature widths (MOSI: 768 5 20)")
    parser.add_argument("--aligned", action="store_true", help="word-aligned sequences, no length keys")
    parser.add_argument("--classes", type=int, default=0, help="also write classification_labels with N classes")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    make_synthetic_mmsa(args.out, sizes=tuple(args.sizes), dims=tuple(args.dims), aligned=args.aligned,
                        num_classes=args.classes, seed=args.seed)
    print(f"wrote {args.out}: train/valid/test {args.sizes}, dims text/audio/vision {args.dims}"
          f"{', aligned' if args.aligned else ''}{f', {args.classes} classes' if args.classes else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
