"""DailyDialog test loader (evaluation only): 7,740 samples with their dialogue context, like MELD's."""

from __future__ import annotations

import csv
from collections import Counter

import pytest

from mmer.training.dailydialog import CSV_NAME, DailyDialogDataset
from mmer.training.datasets import DatasetError

N_UTTERANCES = 7740
N_DIALOGUES = 1000
LABEL_COUNTS = {"neutral": 6321, "joy": 1019, "anger": 118, "surprise": 116, "sadness": 102, "disgust": 47,
                "fear": 17}   # SOURCE.md
HEADER = "Dialogue_ID,Utterance_ID,Speaker,Utterance,Emotion\n"


@pytest.fixture(scope="module")
def dailydialog(dailydialog_dir):
    return DailyDialogDataset(dailydialog_dir, progress=False)


def test_counts_and_labels(dailydialog):
    ds = dailydialog
    assert ds.split == "test" and len(ds) == N_UTTERANCES and not ds.skipped
    assert ds.labels.name == "meld7" and Counter(s.label_name for s in ds) == LABEL_COUNTS
    assert len({s.dialogue_id for s in ds}) == N_DIALOGUES
    assert {s.speaker for s in ds} == {"A", "B"}


def test_context_ends_in_the_target(dailydialog, dailydialog_dir):
    with open(dailydialog_dir / CSV_NAME, encoding="utf-8", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["Dialogue_ID"] == "0"]
    by_uid = {s.uid: s for s in dailydialog}
    for i, row in enumerate(rows):
        s = by_uid[f"dailydialog/test/dia0_utt{i}"]
        assert s.target_index == len(s.turns) - 1 == i
        assert [t.speaker for t in s.turns] == [r["Speaker"] for r in rows[:i + 1]]
        assert s.text == s.turns[-1].text and s.label_name == row["Emotion"]
    assert dailydialog[0].text == "Hey man , you wanna buy some weed ?"
    for s in dailydialog:
        assert s.target_index == len(s.turns) - 1 and s.turns[-1].speaker == s.speaker
    # MELD's cleaning: typographic apostrophes become ASCII, as speech recognisers write them
    assert not any("\u2019" in t.text for s in dailydialog for t in s.turns)
    assert dailydialog[0].audio_path is None and "audio" in dailydialog[0].absent


def test_errors(tmp_path, dailydialog_dir):
    with pytest.raises(DatasetError, match=CSV_NAME):
        DailyDialogDataset(tmp_path)
    with pytest.raises(DatasetError, match="evaluation-only"):
        DailyDialogDataset(dailydialog_dir, "train")
    with pytest.raises(ValueError, match="text only"):
        DailyDialogDataset(dailydialog_dir, modalities=("text", "audio"))


def test_bad_rows_are_skipped(tmp_path):
    (tmp_path / CSV_NAME).write_text(
        HEADER + "0,0,A,Hello .,neutral\n0,1,B,Hi !,joy\n0,1,B,Again ?,joy\n"   # duplicate id
        "x,2,A,Bad id .,neutral\n0,2,A,What ?,excited\n0,3,B,,neutral\n1,0,A,Bye .,sadness\n",
        encoding="utf-8")
    ds = DailyDialogDataset(tmp_path, progress=False)
    assert [s.uid for s in ds] == ["dailydialog/test/dia0_utt0", "dailydialog/test/dia0_utt1",
                                   "dailydialog/test/dia1_utt0"]
    assert sorted(reason.split(":")[0] for _, reason in ds.skipped) == ["bad ids", "duplicate", "empty", "label"]
    assert [t.text for t in ds[1].turns] == ["Hello .", "Hi !"]
