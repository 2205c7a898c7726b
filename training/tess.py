"""TESS (Dupuis & Pichora-Fuller 2010): English "Say the word ___" clips, 2 speakers, 7 emotions.

Layout (shared/data/TESS; see its SOURCE_AND_LICENSE.md)::

    root/labels.csv          file,speaker,emotion,emotion_meld,...   (audio/OAF_bar_fear.flac,OAF,fear,fear)
    root/audio/<name>.flac   16 kHz mono

The 1,708 clips are 122 words x 7 emotions x 2 speakers (OAF, YAF), so the words carry no
label: like EmoDB each sample is one turn with empty text and ``modalities=("audio",)``.
Labels are the ``emotion_meld`` column (pleasant surprise -> surprise), label set meld7.

Splits are by speaker, never by clip (within-speaker TESS accuracy is near perfect and means
nothing):
- ``fold=k`` (0 or 1): test = ``SPEAKERS[k]``, train = the other speaker, dev empty;
- ``fold=None``: train = every clip of both speakers, dev and test empty; for mixing TESS into
  another corpus whose held-out speakers give dev and test.

Licence CC BY-NC-ND 4.0: train and evaluate on it, never ship a model trained on it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from mmer.registry import DATASETS
from mmer.training.datasets import EmotionDataset, MediaOptions, read_labels_csv, require_paths

log = logging.getLogger(__name__)

SPEAKERS = ("OAF", "YAF")   # fold k tests on SPEAKERS[k]
COLUMNS = ("file", "speaker", "emotion_meld")
LAYOUT = "  labels.csv        (columns file,speaker,emotion,emotion_meld,...)\n  audio/<name>.flac"
N_CLIPS = 1708
LABEL_SET = "meld7"


def fold_speakers(fold: int | None) -> dict[str, tuple[str, ...]]:
    """Split name -> speakers: hold out ``SPEAKERS[fold]`` as test, or train on both (None)."""
    if fold is None:
        return {"train": SPEAKERS, "dev": (), "test": ()}
    if fold not in range(len(SPEAKERS)):
        raise ValueError(f"TESS fold must be 0 (test {SPEAKERS[0]}) or 1 (test {SPEAKERS[1]}) or None, got {fold}")
    test = SPEAKERS[fold]
    return {"train": tuple(s for s in SPEAKERS if s != test), "dev": (), "test": (test,)}


@DATASETS.register("tess")
class TessDataset(EmotionDataset):
    """TESS clips of one speaker-disjoint split.

    Args:
        root: the TESS folder (labels.csv + audio/).
        split: "train", "dev" or "test".
        fold: 0 or 1 (test = that speaker, train = the other, dev empty), or None (all in train).
        modalities: ("audio",); "text" is accepted (empty text), "visual" is not (no video).
    """

    name = "tess"
    title = "TESS"
    labelled_modalities = ("audio",)

    def __init__(self, root: str | Path, split: str = "train", fold: int | None = None,
                 modalities: Sequence[str] = ("audio",), media_options: MediaOptions | None = None,
                 progress: bool = True) -> None:
        if split not in ("train", "dev", "test"):
            raise ValueError(f"TESS split must be 'train', 'dev' or 'test', got '{split}'")
        if "visual" in modalities:
            raise ValueError("TESS has no video; use modalities=('audio',)")
        super().__init__(split, modalities, LABEL_SET, media_options, progress)
        self.root = Path(root)
        self.fold = fold
        self.speakers = fold_speakers(fold)[split]
        require_paths(self.root, ["labels.csv", "audio"], LAYOUT, "TESS")
        rows = read_labels_csv(self.root / "labels.csv", COLUMNS, "TESS")
        if len(rows) != N_CLIPS:
            log.warning("TESS: labels.csv lists %d clips, this copy has %d", len(rows), N_CLIPS)
        for row in rows:
            path = self.root / row["file"]
            uid = f"tess/{path.stem}"
            speaker = row["speaker"].upper()
            if speaker not in SPEAKERS:
                self._skip(uid, f"speaker: '{row['speaker']}' is not one of {list(SPEAKERS)}")
                continue
            if speaker not in self.speakers:
                continue
            self._add_clip(uid, path, row["emotion_meld"].lower(), row["emotion_meld"], speaker, "",
                           {"visual": "TESS has no video", "text": "TESS words carry no label"})
        self._finish_scan()
