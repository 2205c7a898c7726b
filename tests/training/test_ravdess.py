"""RAVDESS speech loader (evaluation only): 336 clips, 48 per meld7 label, 24 actors, test split only."""

from __future__ import annotations

import numpy as np
import pytest

from mmer.training.datasets import DatasetError
from mmer.training.ravdess import RavdessDataset

N_CLIPS = 336
PER_LABEL = 48
N_ACTORS = 24
STATEMENTS = {"Kids are talking by the door", "Dogs are sitting by the door"}


def test_all_clips_balanced_over_labels_and_actors(ravdess_dir):
    ds = RavdessDataset(ravdess_dir, progress=False)
    assert ds.split == "test" and len(ds) == N_CLIPS and not ds.skipped
    assert ds.labels.name == "meld7"
    assert ds.label_counts() == {name: PER_LABEL for name in ds.labels.labels}
    assert {s.speaker for s in ds} == {f"{a:02d}" for a in range(1, N_ACTORS + 1)}
    assert {s.text for s in ds} == STATEMENTS
    first = ds[0]
    assert first.uid == "ravdess/03-01-01-01-01-01-01" and first.speaker == "01" and first.label_name == "neutral"
    assert first.audio_path.parent.name == "Actor_01" and first.video_path is None


def test_audio_and_text_modalities(ravdess_dir):
    ds = RavdessDataset(ravdess_dir, modalities=("audio", "text"), progress=False)
    audio = ds.load_audio(ds[0])
    assert audio.valid and audio.data.dtype == np.float32 and audio.data.size > 16_000
    with pytest.raises(ValueError, match="audio-only"):
        RavdessDataset(ravdess_dir, modalities=("visual",))


@pytest.mark.parametrize("split", ["train", "dev"])
def test_is_evaluation_only(ravdess_dir, split):
    with pytest.raises(DatasetError, match="evaluation-only"):
        RavdessDataset(ravdess_dir, split)


def test_bad_root(tmp_path):
    with pytest.raises(DatasetError, match="labels.csv"):
        RavdessDataset(tmp_path)
    (tmp_path / "labels.csv").write_text("file,actor\n", encoding="utf-8")
    (tmp_path / "wav").mkdir()
    with pytest.raises(DatasetError, match="emotion_meld"):
        RavdessDataset(tmp_path)
