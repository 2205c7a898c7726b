"""What every mmer training dataset shares: samples, up-front validation, skips, clip loading.

A dataset is a list of :class:`Sample` (metadata only: uid, dialogue context, label, media
paths). Media are decoded on demand by :meth:`EmotionDataset.load_audio` and
:meth:`EmotionDataset.load_frames`, which never raise for a bad clip: they return a
:class:`ModalityArray` whose ``valid`` flag lets the trainer's collate build modality masks.

Rules every dataset follows (REFERENCE.md section 2, defects 2-5 and 8):
- the root folder is validated before anything is read; a missing file or folder raises
  :class:`DatasetError` naming it and the expected layout;
- a row or clip that cannot be used is skipped (or kept text-only, configurable) with one
  logged warning naming it and the reason, and one summary line per dataset: never a crash;
- audio is decoded to 16 kHz mono, cut to a stated cap and later padded with a mask (never
  left-padded with zeros and fed without a mask); frames are RGB, sampled uniformly.

Datasets register in :data:`mmer.registry.DATASETS` ("meld", "iemocap", "emodb", "tess" for
training; "ravdess", "dailydialog" for evaluation only, shared/eval/README.md); :func:`build_dataset`
imports them so the registry is filled.
"""

from __future__ import annotations

import csv
import importlib
import logging
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np

from mmer.dialogue import Turn
from mmer.errors import UsageError
from mmer.labels import LabelSet, get_label_set
from mmer.media import SAMPLE_RATE_HZ  # every audio encoder mmer uses (data2vec, wav2vec2, HuBERT) reads 16 kHz
from mmer.registry import DATASETS
from mmer.training import media

log = logging.getLogger(__name__)

MODALITIES = ("text", "audio", "visual")
DEFAULT_MAX_AUDIO_S = 20.0        # s; TelME kept 400,000 samples at 22.05 kHz (18.1 s), MELD p99.9 is 17.8 s
DEFAULT_N_FRAMES = 8              # TimeSformer-base reads 8 frames
DEFAULT_FRAME_SIZE_PX = 224       # TimeSformer-base input side
SILENCE_PEAK = 1e-4               # |sample| below this everywhere = a silent clip (MELD test has some)
DATASET_MODULES = ("mmer.training.meld", "mmer.training.iemocap", "mmer.training.emodb", "mmer.training.tess",
                   "mmer.training.ravdess", "mmer.training.dailydialog")
EVAL_SPLIT = "test"               # the only split of an evaluation-only set


class DatasetError(UsageError):
    """A dataset root is missing a file or folder, or holds something unreadable (a ValueError too)."""


@dataclass(frozen=True)
class MediaOptions:
    """How clips are decoded; part of every encoder-cache fingerprint (preprocessing changes features).

    Attributes:
        sample_rate_hz: audio is resampled to this rate, mono.
        max_audio_s: audio longer than this keeps its first ``max_audio_s`` seconds; the
            onset of an utterance is what a live system hears first.
        n_frames: frames sampled uniformly over the clip (or the utterance's span).
        frame_size_px: frames are resized (shorter side) and centre-cropped to a square of
            this side; None keeps the decoded size (face crops then use 224).
        face_crop: crop each frame around the largest detected face before resizing
            (defect 4; needs OpenCV, see mmer.face).
        silence_peak: a waveform whose peak magnitude stays below this is reported silent.
    """

    sample_rate_hz: int = SAMPLE_RATE_HZ
    max_audio_s: float = DEFAULT_MAX_AUDIO_S
    n_frames: int = DEFAULT_N_FRAMES
    frame_size_px: int | None = DEFAULT_FRAME_SIZE_PX
    face_crop: bool = False
    silence_peak: float = SILENCE_PEAK

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Sample:
    """One target utterance with its dialogue context; media are paths, decoded on demand.

    Attributes:
        uid: unique over all datasets, e.g. ``meld/train/dia0_utt3`` (cache key).
        dialogue_id: dialogue the utterance belongs to.
        turns: the dialogue up to and including the target, oldest first.
        target_index: index of the target in ``turns`` (always ``len(turns) - 1``).
        label: class index in the dataset's label set; ``label_name`` its name.
        speaker: the target's speaker, as named in ``turns``.
        audio_path / video_path: media files, None when the modality is absent.
        audio_span_s / video_span_s: (start, end) seconds inside the file, None = whole file.
        absent: modality -> why it is absent (shown in logs and reports).
    """

    uid: str
    dialogue_id: str
    turns: tuple[Turn, ...]
    target_index: int
    label: int
    label_name: str
    speaker: str
    audio_path: Path | None = None
    video_path: Path | None = None
    audio_span_s: tuple[float, float] | None = None
    video_span_s: tuple[float, float] | None = None
    absent: dict[str, str] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return self.turns[self.target_index].text


class ModalityArray(NamedTuple):
    """A decoded modality of one sample; ``valid`` False means absent (mask it out).

    ``data`` is float32 (T,) audio at the dataset's rate, or uint8 (N, H, W, 3) RGB frames.
    Absent audio is (0,); absent frames are zeros of the configured shape.
    """

    data: np.ndarray
    valid: bool
    reason: str = ""


def require_paths(root: Path, required: Sequence[str], layout: str, what: str) -> None:
    """Raise :class:`DatasetError` naming the first of ``required`` (relative to root) that is missing."""
    if not root.is_dir():
        raise DatasetError(f"{what}: root folder {root} does not exist. Expected layout:\n{layout}")
    for rel in required:
        if not (root / rel).exists():
            raise DatasetError(f"{what}: missing {root / rel}. Expected layout under {root}:\n{layout}")


def read_labels_csv(path: Path, columns: Sequence[str], what: str) -> list[dict[str, str]]:
    """Rows of a corpus' labels CSV (UTF-8, BOM tolerated), values stripped; a missing column raises."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise DatasetError(f"{what}: {path} lacks columns {missing}; expected at least {list(columns)}")
        return [{k: (v or "").strip() for k, v in row.items() if k is not None} for row in reader]


def require_eval_split(split: str, what: str) -> None:
    """Refuse any split but ``"test"`` of an evaluation-only set (shared/eval/README.md)."""
    if split != EVAL_SPLIT:
        raise DatasetError(f"{what} is an evaluation-only set: it has only the '{EVAL_SPLIT}' split, not '{split}'. "
                           f"Never train, tune or select checkpoints on it (shared/eval/README.md)")


class EmotionDataset:
    """Base of the corpus loaders: a sequence of :class:`Sample` plus clip decoding.

    Subclasses fill ``self.samples`` in ``__init__`` via :meth:`_add` / :meth:`_skip` and call
    :meth:`_finish_scan` once. ``__getitem__`` returns a :class:`Sample` (cheap); the trainer
    decodes what it needs with :meth:`load_audio` / :meth:`load_frames`.
    """

    name = "dataset"
    title = "dataset"                 # the corpus as written in messages ("EmoDB")
    # Modalities whose content relates to the label; mmer-eval refuses a model that reads another.
    labelled_modalities: tuple[str, ...] = MODALITIES

    def __init__(self, split: str, modalities: Sequence[str], label_set: str,
                 media_options: MediaOptions | None = None, progress: bool = True) -> None:
        unknown = [m for m in modalities if m not in MODALITIES]
        if unknown or not modalities:
            raise ValueError(f"modalities must be a non-empty subset of {MODALITIES}, got {tuple(modalities)}")
        self.split = split
        self.modalities = tuple(modalities)
        self.labels: LabelSet = get_label_set(label_set)
        self.media = media_options or MediaOptions()
        self.progress = progress
        self.samples: list[Sample] = []
        self.skipped: list[tuple[str, str]] = []      # (uid, reason)
        self.degraded: list[tuple[str, str]] = []     # kept with a modality absent: (uid, reason)
        self._warned: set[tuple[str, str]] = set()

    # -- building -----------------------------------------------------------------------
    def _skip(self, uid: str, reason: str) -> None:
        self.skipped.append((uid, reason))
        log.warning("%s %s: skipped %s: %s", self.name, self.split, uid, reason)

    def _degrade(self, uid: str, reason: str) -> None:
        self.degraded.append((uid, reason))
        log.warning("%s %s: %s kept without audio/visual: %s", self.name, self.split, uid, reason)

    def _add(self, sample: Sample) -> None:
        self.samples.append(sample)

    def _add_clip(self, uid: str, path: Path, label_name: str, raw_label: str, speaker: str, text: str,
                  absent: dict[str, str]) -> None:
        """Add one single-utterance clip (speech corpora), or skip it with the reason: a label
        outside the label set, or a missing file."""
        if label_name not in self.labels.labels:
            self._skip(uid, f"label: '{raw_label}' is not in {self.labels.name}")
        elif not path.is_file():
            self._skip(uid, f"missing: {path}")
        else:
            self._add(Sample(uid=uid, dialogue_id=path.stem, turns=(Turn(speaker, text),), target_index=0,
                             label=self.labels.index(label_name), label_name=label_name, speaker=speaker,
                             audio_path=path, absent=absent))

    def _finish_scan(self) -> None:
        """Log one summary line: kept / skipped / degraded counts and the skip reasons."""
        kinds = Counter(reason.split(":")[0] for _, reason in self.skipped + self.degraded)
        summary = ", ".join(f"{k}: {n}" for k, n in kinds.most_common()) or "none"
        level = logging.WARNING if self.skipped or self.degraded else logging.INFO
        log.log(level, "%s %s: %d samples kept, %d skipped, %d without audio/visual (reasons: %s)",
                self.name, self.split, len(self.samples), len(self.skipped), len(self.degraded), summary)

    # -- sequence protocol --------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        return self.samples[index]

    def __iter__(self):
        return iter(self.samples)

    def label_counts(self) -> dict[str, int]:
        """Label name -> count, in label-set order."""
        c = Counter(s.label_name for s in self.samples)
        return {name: c.get(name, 0) for name in self.labels.labels}

    # -- decoding -----------------------------------------------------------------------
    def _invalid(self, sample: Sample, modality: str, reason: str, data: np.ndarray) -> ModalityArray:
        if (sample.uid, modality) not in self._warned:
            self._warned.add((sample.uid, modality))
            log.warning("%s %s: %s has no usable %s: %s", self.name, self.split, sample.uid, modality, reason)
        return ModalityArray(data, False, reason)

    def load_audio(self, sample: Sample) -> ModalityArray:
        """Decode the sample's audio: float32 (T,) at ``media.sample_rate_hz`` mono, T <= cap.

        Returns ``valid=False`` (and a logged reason, once per sample) when the audio is absent,
        undecodable or silent; never raises for a bad clip.
        """
        empty = np.zeros(0, dtype=np.float32)
        if sample.audio_path is None:
            return self._invalid(sample, "audio", sample.absent.get("audio", "no audio file"), empty)
        try:
            wav = media.decode_audio(sample.audio_path, self.media.sample_rate_hz,
                                     span_s=sample.audio_span_s, max_audio_s=self.media.max_audio_s)
        except media.MediaError as e:
            return self._invalid(sample, "audio", f"undecodable: {e}", empty)
        if wav.size == 0 or float(np.abs(wav).max()) < self.media.silence_peak:
            return self._invalid(sample, "audio", f"silent (peak < {self.media.silence_peak})", empty)
        return ModalityArray(wav, True, "")

    def _blank_frames(self) -> np.ndarray:
        side = self.media.frame_size_px or (DEFAULT_FRAME_SIZE_PX if self.media.face_crop else 0)
        return np.zeros((self.media.n_frames, side, side, 3), dtype=np.uint8)

    def load_frames(self, sample: Sample) -> ModalityArray:
        """Decode ``media.n_frames`` RGB frames sampled uniformly: uint8 (N, S, S, 3).

        Frames are face-cropped first when ``media.face_crop`` is set. Returns ``valid=False``
        with blank frames when the video is absent or undecodable; never raises for a bad clip.
        """
        if sample.video_path is None:
            return self._invalid(sample, "visual", sample.absent.get("visual", "no video file"), self._blank_frames())
        size = None if self.media.face_crop else self.media.frame_size_px
        try:
            frames = media.read_frames(sample.video_path, self.media.n_frames, span_s=sample.video_span_s,
                                       size_px=size)
        except media.MediaError as e:
            return self._invalid(sample, "visual", f"undecodable: {e}", self._blank_frames())
        if self.media.face_crop:
            frames = media.face_crop_frames(frames, self.media.frame_size_px or DEFAULT_FRAME_SIZE_PX)
        return ModalityArray(frames, True, "")


def pad_waveforms(items: Sequence[ModalityArray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Right-pad decoded waveforms into a batch (numpy, like :func:`mmer.audio.batch_waveforms`).

    Returns:
        waveform: float32 (B, T), zeros after each clip's end (T >= 1 even if all are absent);
        attention_mask: int64 (B, T), 1 on real samples, all zero for an absent clip;
        present: bool (B,), the ``valid`` flags.
    """
    present = np.array([bool(it.valid and len(it.data)) for it in items], dtype=bool)
    length = max([1] + [len(it.data) for it, ok in zip(items, present) if ok])
    waveform = np.zeros((len(items), length), dtype=np.float32)
    mask = np.zeros((len(items), length), dtype=np.int64)
    for row, (it, ok) in enumerate(zip(items, present)):
        if ok:
            waveform[row, :len(it.data)] = it.data
            mask[row, :len(it.data)] = 1
    return waveform, mask, present


def stack_frames(items: Sequence[ModalityArray]) -> tuple[np.ndarray, np.ndarray]:
    """Stack decoded frames: uint8 (B, N, S, S, 3) RGB and present bool (B,); items share one shape."""
    shapes = {it.data.shape for it in items}
    if len(shapes) != 1:
        raise ValueError(f"frames of one batch must share a shape (set frame_size_px); got {sorted(shapes)}")
    return np.stack([it.data for it in items]), np.array([bool(it.valid) for it in items], dtype=bool)


def dataset_names() -> list[str]:
    """Every registered dataset name (the modules of :data:`DATASET_MODULES` imported first)."""
    for module in DATASET_MODULES:
        importlib.import_module(module)
    return DATASETS.names()


def dataset_class(name: str) -> type[EmotionDataset]:
    """The class registered as ``name`` (read its ``title`` and ``labelled_modalities``)."""
    dataset_names()
    return DATASETS.get(name)


def build_dataset(name: str, **kwargs: Any) -> EmotionDataset:
    """Construct the dataset registered as ``name`` (``DATASETS.names()``) with ``kwargs``."""
    return dataset_class(name)(**kwargs)
