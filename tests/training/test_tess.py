"""TESS loader on the shared copy: 1,708 clips, speaker-disjoint folds, meld7 labels, bad rows skipped."""

from __future__ import annotations

import csv
import logging

import numpy as np
import pytest

from mmer.training.datasets import DatasetError
from mmer.training.tess import SPEAKERS, TessDataset, fold_speakers

N_CLIPS = 1708
PER_SPEAKER = 854
PER_LABEL = 244           # 122 per speaker and label
RATE_HZ = 16_000
DURATION_TOLERANCE_S = 0.01
MELD_NAMES = {"angry": "anger", "disgust": "disgust", "fear": "fear", "happy": "joy", "neutral": "neutral",
              "ps": "surprise", "sad": "sadness"}   # SOURCE_AND_LICENSE.md


def _parts(root, fold):
    return {split: TessDataset(root, split, fold=fold, progress=False) for split in ("train", "dev", "test")}


@pytest.mark.parametrize("fold", [0, 1])
def test_folds_hold_out_one_speaker(tess_dir, fold):
    parts = _parts(tess_dir, fold)
    speakers = {split: {s.speaker for s in ds} for split, ds in parts.items()}
    assert speakers["test"] == {SPEAKERS[fold]} and speakers["train"] == {SPEAKERS[1 - fold]}
    assert not speakers["train"] & speakers["test"] and len(parts["dev"]) == 0
    assert len(parts["train"]) == len(parts["test"]) == PER_SPEAKER
    uids = [s.uid for ds in parts.values() for s in ds]
    assert len(uids) == len(set(uids)) == N_CLIPS   # every clip in exactly one split


def test_no_fold_trains_on_everything(tess_dir):
    parts = _parts(tess_dir, None)
    assert len(parts["train"]) == N_CLIPS and not len(parts["dev"]) and not len(parts["test"])
    assert {s.speaker for s in parts["train"]} == set(SPEAKERS)
    assert parts["train"].label_counts() == {name: PER_LABEL for name in parts["train"].labels.labels}
    assert fold_speakers(None) == {"train": SPEAKERS, "dev": (), "test": ()}


def test_labels_are_meld7_from_emotion_meld(tess_dir):
    with open(tess_dir / "labels.csv", encoding="utf-8", newline="") as f:
        source = {row["file"].split("/")[-1].rsplit(".", 1)[0]: row["emotion"] for row in csv.DictReader(f)}
    ds = TessDataset(tess_dir, "train", progress=False)
    assert ds.labels.name == "meld7"
    for s in ds:
        assert s.label_name == MELD_NAMES[source[s.uid.removeprefix("tess/")]]
        assert ds.labels.labels[s.label] == s.label_name
    surprise = [s for s in ds if "_ps" in s.uid]
    assert len(surprise) == PER_LABEL and {s.label_name for s in surprise} == {"surprise"}
    sample = ds[0]
    assert sample.text == "" and sample.video_path is None and "text" in sample.absent


def test_clip_decodes_at_16k(tess_dir):
    ds = TessDataset(tess_dir, "test", fold=1, progress=False)
    with open(tess_dir / "labels.csv", encoding="utf-8", newline="") as f:
        durations = {row["file"]: float(row["duration_s"]) for row in csv.DictReader(f)}
    audio = ds.load_audio(ds[0])
    assert audio.valid and audio.data.dtype == np.float32
    expected_s = durations[str(ds[0].audio_path.relative_to(tess_dir))]
    assert abs(len(audio.data) / RATE_HZ - expected_s) < DURATION_TOLERANCE_S
    assert not ds.load_frames(ds[0]).valid


def test_bad_root_fold_and_rows(tmp_path, tess_dir, caplog):
    with pytest.raises(DatasetError, match="labels.csv"):
        TessDataset(tmp_path, "train")
    with pytest.raises(ValueError, match="fold"):
        TessDataset(tess_dir, "train", fold=2)
    with pytest.raises(ValueError, match="no video"):
        TessDataset(tess_dir, "train", modalities=("audio", "visual"))
    root = tmp_path / "tess"
    (root / "audio").mkdir(parents=True)
    good = tess_dir / "audio" / "OAF_bar_fear.flac"
    (root / "audio" / good.name).symlink_to(good)
    (root / "labels.csv").write_text(
        "file,speaker,emotion,emotion_meld\n"
        f"audio/{good.name},OAF,fear,fear\n"
        "audio/OAF_bar_calm.flac,OAF,calm,calm\n"        # no meld7 label
        "audio/OAF_gone_fear.flac,OAF,fear,fear\n"       # file missing
        "audio/XYZ_bar_fear.flac,XYZ,fear,fear\n",       # unknown speaker
        encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        ds = TessDataset(root, "train", progress=False)
    assert len(ds) == 1 and ds[0].label_name == "fear"
    reasons = sorted(reason.split(":")[0] for _, reason in ds.skipped)
    assert reasons == ["label", "missing", "speaker"]
    assert "OAF_gone_fear" in caplog.text
