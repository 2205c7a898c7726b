"""EmoDB loader on the shared copy: 535 clips, speaker-independent folds, 16 kHz decoding."""

from __future__ import annotations

import wave

import numpy as np
import pytest

from mmer.training.datasets import DatasetError
from mmer.training.emodb import SPEAKERS, EmoDbDataset, fold_speakers

RATE_HZ = 16_000
CLIP_S = 2.0   # every clip of this mirror is 2.000 s at 22.05 kHz (SOURCE_AND_LICENSE.md)


def _speakers(ds: EmoDbDataset) -> set[str]:
    return {s.speaker for s in ds}


def test_loso_folds_never_share_a_speaker(emodb_dir):
    tested = []
    for fold in range(len(SPEAKERS)):
        parts = {split: EmoDbDataset(emodb_dir, split, fold=fold, progress=False) for split in ("train", "dev", "test")}
        train, dev, test = (_speakers(parts[s]) for s in ("train", "dev", "test"))
        assert len(test) == 1 and len(dev) == 1 and len(train) == 8
        assert not train & test and not train & dev and not dev & test
        assert sum(len(p) for p in parts.values()) == 535
        tested += test
    assert sorted(tested) == sorted(SPEAKERS)  # each speaker is the test speaker exactly once
    no_dev = fold_speakers(3, dev_speaker=False)
    assert no_dev["dev"] == () and len(no_dev["train"]) == 9 and no_dev["test"] == (SPEAKERS[3],)


def test_fixed_split_and_labels(emodb_dir):
    parts = {split: EmoDbDataset(emodb_dir, split, progress=False) for split in ("train", "dev", "test")}
    assert _speakers(parts["test"]) == {"03", "08"} and _speakers(parts["dev"]) == {"09", "10"}
    assert sum(len(p) for p in parts.values()) == 535
    counts = {k: sum(p.label_counts()[k] for p in parts.values()) for k in parts["train"].labels.labels}
    assert counts == {"anger": 127, "boredom": 81, "disgust": 46, "fear": 69, "happiness": 71,
                      "sadness": 62, "neutral": 79}
    sample = parts["test"][0]
    assert sample.uid == "emodb/03a01Fa" and sample.label_name == "happiness" and sample.video_path is None


def test_audio_is_resampled_to_16k(emodb_dir):
    ds = EmoDbDataset(emodb_dir, "test", progress=False)
    audio = ds.load_audio(ds[0])
    assert audio.valid and audio.data.dtype == np.float32 and len(audio.data) == int(CLIP_S * RATE_HZ)
    with wave.open(str(ds[0].audio_path)) as w:  # the 22.05 kHz original
        assert w.getframerate() == 22_050
        original = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 2**15
    rms = lambda x: float(np.sqrt(np.mean(x**2)))  # noqa: E731
    assert abs(rms(audio.data) - rms(original)) < 0.05 * rms(original)  # same signal, new rate
    frames = ds.load_frames(ds[0])
    assert not frames.valid and "no video" in frames.reason


def test_bad_root_and_arguments(tmp_path, emodb_dir):
    with pytest.raises(DatasetError, match="labels.csv"):
        EmoDbDataset(tmp_path, "train")
    with pytest.raises(ValueError, match="fold"):
        EmoDbDataset(emodb_dir, "train", fold=10)
    with pytest.raises(ValueError, match="no video"):
        EmoDbDataset(emodb_dir, "train", modalities=("audio", "visual"))
