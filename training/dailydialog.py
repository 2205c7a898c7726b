"""DailyDialog (Li et al., IJCNLP 2017) official test split: 1,000 dialogues, 7,740 utterances, text only.

Evaluation only (shared/eval/README.md): the single split is "test"; never train, tune or
select on it. Layout (shared/eval/dailydialog_test; see its SOURCE.md)::

    root/dailydialog_test.csv    Dialogue_ID,Utterance_ID,Speaker,Utterance,Emotion  (MELD label names)

Samples are built as MELD's are (training/meld.py): one per utterance, with the dialogue up to
and including it as ``turns`` and ``target_index`` on the last turn; speakers are A and B. Text
goes through MELD's :func:`~mmer.training.meld.clean_text` (the source has ’ and spaces around
punctuation), so a teacher trained on MELD reads it the same way. The set is 82 % neutral: its
convention is micro-F1 over the six non-neutral classes (mmer.metrics.micro_f1_excluding).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path
from typing import Sequence

from mmer.dialogue import Turn
from mmer.registry import DATASETS
from mmer.training.datasets import (EmotionDataset, MediaOptions, Sample, read_labels_csv, require_eval_split,
                                    require_paths)
from mmer.training.meld import clean_text

log = logging.getLogger(__name__)

CSV_NAME = "dailydialog_test.csv"
COLUMNS = ("Dialogue_ID", "Utterance_ID", "Speaker", "Utterance", "Emotion")
LAYOUT = f"  {CSV_NAME}   (columns {','.join(COLUMNS)}; Emotion in MELD's names)"
N_UTTERANCES = 7740
LABEL_SET = "meld7"


@DATASETS.register("dailydialog")
class DailyDialogDataset(EmotionDataset):
    """DailyDialog test utterances with their dialogue context (evaluation only).

    Args:
        root: the dailydialog_test folder.
        split: "test" only; anything else raises :class:`DatasetError`.
        modalities: ("text",) only: DailyDialog is written dialogue.
        ascii_punctuation: write ’ “ … as ' " ... like speech recognisers do (as MELD's loader).
    """

    name = "dailydialog"
    title = "DailyDialog"
    labelled_modalities = ("text",)

    def __init__(self, root: str | Path, split: str = "test", modalities: Sequence[str] = ("text",),
                 media_options: MediaOptions | None = None, ascii_punctuation: bool = True,
                 progress: bool = True) -> None:
        require_eval_split(split, "DailyDialog")
        if tuple(modalities) != ("text",):
            raise ValueError(f"DailyDialog is text only; use modalities=('text',), got {tuple(modalities)}")
        super().__init__(split, modalities, LABEL_SET, media_options, progress)
        self.root = Path(root)
        require_paths(self.root, [CSV_NAME], LAYOUT, "DailyDialog")
        rows = read_labels_csv(self.root / CSV_NAME, COLUMNS, "DailyDialog")
        if len(rows) != N_UTTERANCES:
            log.warning("DailyDialog: %s lists %d utterances, the test split has %d", CSV_NAME, len(rows),
                        N_UTTERANCES)
        dialogues: dict[int, dict[int, dict[str, str]]] = defaultdict(dict)
        for line, row in enumerate(rows, start=2):  # line 1 is the header
            try:
                d, u = int(row["Dialogue_ID"]), int(row["Utterance_ID"])
            except ValueError:
                self._skip(f"dailydialog/{split}/line{line}", f"bad ids: Dialogue_ID={row['Dialogue_ID']!r} "
                                                              f"Utterance_ID={row['Utterance_ID']!r}")
                continue
            if u in dialogues[d]:
                self._skip(f"dailydialog/{split}/dia{d}_utt{u}", "duplicate: (Dialogue_ID, Utterance_ID) repeated")
                continue
            row["Utterance"] = clean_text(row["Utterance"], ascii_punctuation)
            dialogues[d][u] = row
        for d in sorted(dialogues):
            ordered = [dialogues[d][u] for u in sorted(dialogues[d])]
            turns = tuple(Turn(r["Speaker"], r["Utterance"]) for r in ordered)
            for i, row in enumerate(ordered):
                uid = f"dailydialog/{split}/dia{d}_utt{int(row['Utterance_ID'])}"
                name = row["Emotion"].lower()
                if name not in self.labels.labels:
                    self._skip(uid, f"label: '{row['Emotion']}' is not in {LABEL_SET}")
                    continue
                if not row["Utterance"]:
                    self._skip(uid, "empty: no utterance text")
                    continue
                self._add(Sample(uid=uid, dialogue_id=str(d), turns=turns[:i + 1], target_index=i,
                                 label=self.labels.index(name), label_name=name, speaker=row["Speaker"],
                                 absent={"audio": "DailyDialog is text only", "visual": "DailyDialog is text only"}))
        self._finish_scan()
