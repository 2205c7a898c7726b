"""RAVDESS speech (Livingstone & Russo 2018), balanced subset: 336 clips, 24 actors, 7 MELD labels x 48.

Evaluation only (shared/eval/README.md): the single split is "test"; never train, tune or
select on it. Layout (shared/eval/ravdess_speech; see its SOURCE.md)::

    root/labels.csv                    file,actor,gender,emotion_ravdess,emotion_meld,intensity,statement,...
    root/wav/Actor_<NN>/<name>.flac    16 kHz mono

Each sample is one turn: speaker = the actor ("01".."24"), text = the spoken statement ("Kids
are talking by the door"). The words are lexically neutral, so the label lives in the voice:
modalities default to ("audio",); "text" is accepted so a text model can be scored on the whole
stack's input. Labels are the ``emotion_meld`` column, label set meld7.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from mmer.registry import DATASETS
from mmer.training.datasets import (EmotionDataset, MediaOptions, read_labels_csv, require_eval_split,
                                    require_paths)

log = logging.getLogger(__name__)

COLUMNS = ("file", "actor", "emotion_meld", "statement")
LAYOUT = ("  labels.csv                  (columns file,actor,gender,emotion_ravdess,emotion_meld,intensity,"
          "statement,...)\n  wav/Actor_<NN>/<name>.flac")
N_CLIPS = 336
LABEL_SET = "meld7"
ACTOR_DIGITS = 2   # actors are written 01..24, as in the folder names


@DATASETS.register("ravdess")
class RavdessDataset(EmotionDataset):
    """The 336 RAVDESS speech clips (evaluation only).

    Args:
        root: the ravdess_speech folder (labels.csv + wav/).
        split: "test" only; anything else raises :class:`DatasetError`.
        modalities: ("audio",) by default; "text" gives the statement; "visual" is refused.
    """

    name = "ravdess"
    title = "RAVDESS"
    labelled_modalities = ("audio", "text")

    def __init__(self, root: str | Path, split: str = "test", modalities: Sequence[str] = ("audio",),
                 media_options: MediaOptions | None = None, progress: bool = True) -> None:
        require_eval_split(split, "RAVDESS")
        if "visual" in modalities:
            raise ValueError("this RAVDESS subset is audio-only; use modalities=('audio',) or ('audio', 'text')")
        super().__init__(split, modalities, LABEL_SET, media_options, progress)
        self.root = Path(root)
        require_paths(self.root, ["labels.csv", "wav"], LAYOUT, "RAVDESS")
        rows = read_labels_csv(self.root / "labels.csv", COLUMNS, "RAVDESS")
        if len(rows) != N_CLIPS:
            log.warning("RAVDESS: labels.csv lists %d clips, this subset has %d", len(rows), N_CLIPS)
        for row in rows:
            path = self.root / row["file"]
            uid = f"ravdess/{path.stem}"
            if not row["actor"].isdigit():
                self._skip(uid, f"actor: '{row['actor']}' is not an actor number")
                continue
            speaker = row["actor"].zfill(ACTOR_DIGITS)
            self._add_clip(uid, path, row["emotion_meld"].lower(), row["emotion_meld"], speaker, row["statement"],
                           {"visual": "RAVDESS speech has no video"})
        self._finish_scan()
