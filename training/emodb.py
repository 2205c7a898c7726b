"""EmoDB (Burkhardt et al., Interspeech 2005): 535 acted German utterances, 10 speakers, 7 emotions.

Layout (shared/data/EmoDB; see its SOURCE_AND_LICENSE.md)::

    root/labels.csv        file,speaker,text,emotion   (wav/03a01Fa.wav,03,a01,happiness)
    root/wav/<name>.wav    22.05 kHz mono in this mirror: decoded to 16 kHz

Voice only: every speaker reads the same ten sentences in every emotion, so the words carry
no label; each sample is one turn with empty text and ``modalities=("audio",)``.

Splits are speaker-independent (the only honest EmoDB protocol: speaker voice is far easier
to learn than emotion):
- ``fold=k`` (0-9), leave-one-speaker-out: test = ``SPEAKERS[k]``, dev = the next speaker in
  ``SPEAKERS`` (cyclic), train = the other 8. Pass ``dev_speaker=False`` to train on all 9;
  dev is then empty.
- ``fold=None``: a fixed gender-balanced split for quick runs: test 03 (m), 08 (f); dev 09 (f),
  10 (m); train the other six (three of each).
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Sequence

from mmer.registry import DATASETS
from mmer.training.datasets import DatasetError, EmotionDataset, MediaOptions, require_paths

log = logging.getLogger(__name__)

SPEAKERS = ("03", "08", "09", "10", "11", "12", "13", "14", "15", "16")
FIXED_SPLIT = {"test": ("03", "08"), "dev": ("09", "10"), "train": ("11", "12", "13", "14", "15", "16")}
COLUMNS = ("file", "speaker", "text", "emotion")
LAYOUT = "  labels.csv   (columns file,speaker,text,emotion)\n  wav/<name>.wav"
N_CLIPS = 535


def fold_speakers(fold: int | None, dev_speaker: bool = True) -> dict[str, tuple[str, ...]]:
    """Split name -> speakers, for a leave-one-speaker-out ``fold`` (0-9) or the fixed split (None)."""
    if fold is None:
        return dict(FIXED_SPLIT)
    if not 0 <= fold < len(SPEAKERS):
        raise ValueError(f"EmoDB fold must be in 0..{len(SPEAKERS) - 1} (one per speaker) or None, got {fold}")
    test = SPEAKERS[fold]
    dev = SPEAKERS[(fold + 1) % len(SPEAKERS)] if dev_speaker else None
    train = tuple(s for s in SPEAKERS if s not in (test, dev))
    return {"train": train, "dev": (dev,) if dev else (), "test": (test,)}


@DATASETS.register("emodb")
class EmoDbDataset(EmotionDataset):
    """EmoDB clips of one speaker-independent split.

    Args:
        root: the EmoDB folder (labels.csv + wav/).
        split: "train", "dev" or "test".
        fold: leave-one-speaker-out fold 0-9, or None for the fixed quick split.
        dev_speaker: in LOSO folds, hold out one more speaker as dev (else dev is empty).
        modalities: ("audio",); "text" is accepted (empty text), "visual" is not (no video).
    """

    name = "emodb"
    title = "EmoDB"
    labelled_modalities = ("audio",)

    def __init__(self, root: str | Path, split: str = "train", fold: int | None = None, dev_speaker: bool = True,
                 modalities: Sequence[str] = ("audio",), media_options: MediaOptions | None = None,
                 progress: bool = True) -> None:
        if split not in ("train", "dev", "test"):
            raise ValueError(f"EmoDB split must be 'train', 'dev' or 'test', got '{split}'")
        if "visual" in modalities:
            raise ValueError("EmoDB has no video; use modalities=('audio',)")
        super().__init__(split, modalities, "emodb7", media_options, progress)
        self.root = Path(root)
        self.fold = fold
        require_paths(self.root, ["labels.csv", "wav"], LAYOUT, "EmoDB")
        self.speakers = fold_speakers(fold, dev_speaker)[split]
        with open(self.root / "labels.csv", encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise DatasetError(f"{self.root / 'labels.csv'}: columns {missing} missing; expected {list(COLUMNS)}")
            rows = list(reader)
        if len(rows) != N_CLIPS:
            log.warning("EmoDB: labels.csv lists %d clips, the corpus has %d", len(rows), N_CLIPS)
        for row in rows:
            speaker = row["speaker"].strip().zfill(2)
            if speaker not in self.speakers:
                continue
            path = self.root / row["file"].strip()
            uid = f"emodb/{path.stem}"
            self._add_clip(uid, path, row["emotion"].strip().lower(), row["emotion"], speaker, "",
                           {"visual": "EmoDB has no video", "text": "EmoDB text carries no label"})
        self._finish_scan()
