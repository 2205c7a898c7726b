"""Frozen-encoder feature cache: computes each uid once, survives restarts, keyed by fingerprint."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
import torch

from mmer.training.cache import FeatureCache, encoder_fingerprint
from mmer.training.datasets import MediaOptions

DIM = 4


class CountingEncoder:
    """A stand-in for a frozen encoder: row = the uid's trailing number, repeated; records the uids it sees."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def __call__(self, uids: list[str]) -> np.ndarray:
        self.seen += uids
        return np.stack([np.full(DIM, float(re.search(r"\d+$", u).group()), dtype=np.float32) for u in uids])


def test_computes_only_missing_uids_and_persists(tmp_path):
    enc = CountingEncoder()
    cache = FeatureCache(tmp_path, "fp-a", chunk_size=2, progress=False)
    uids = [f"meld/train/dia0_utt{i}" for i in range(5)]
    first = cache.get_or_compute(uids[:3], enc)
    assert first.shape == (3, DIM) and first[:, 0].tolist() == [0.0, 1.0, 2.0]
    assert enc.seen == uids[:3]
    second = cache.get_or_compute(uids[::-1], enc)  # order follows the request
    assert second[:, 0].tolist() == [4.0, 3.0, 2.0, 1.0, 0.0]
    assert enc.seen == uids[:3] + [uids[4], uids[3]]
    assert len(list(cache.dir.glob("shard-*.safetensors"))) == 3  # chunks of 2: (0, 1), (2,), (4, 3)
    reopened = FeatureCache(tmp_path, "fp-a", progress=False)
    again = reopened.get_or_compute(uids, enc)
    assert len(enc.seen) == 5 and len(reopened) == 5
    np.testing.assert_array_equal(again, second[::-1])


def test_dict_outputs_and_torch_tensors(tmp_path):
    cache = FeatureCache(tmp_path, "fp-dict", progress=False)

    def teacher(uids: list[str]) -> dict[str, torch.Tensor]:
        n = len(uids)
        return {"features": torch.arange(n * 3, dtype=torch.bfloat16).view(n, 3), "logits": torch.ones(n, 7)}

    out = cache.get_or_compute(["a", "b"], teacher)
    assert set(out) == {"features", "logits"} and out["features"].dtype == np.float32
    assert out["features"].shape == (2, 3) and out["logits"].shape == (2, 7)
    np.testing.assert_array_equal(cache.load(["b"])["features"][0], [3.0, 4.0, 5.0])


def test_fingerprint_tracks_checkpoint_and_settings(tmp_path):
    ckpt = tmp_path / "teacher"
    ckpt.mkdir()
    (ckpt / "model.safetensors").write_bytes(b"weights")
    media = MediaOptions().to_dict()
    fp = encoder_fingerprint(ckpt, media=media)
    assert fp == encoder_fingerprint(ckpt, media=media)
    assert fp != encoder_fingerprint(ckpt, media={**media, "max_audio_s": 10.0})
    stat = (ckpt / "model.safetensors").stat()
    os.utime(ckpt / "model.safetensors", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # retrained
    fp2 = encoder_fingerprint(ckpt, media=media)
    assert fp2 != fp
    enc = CountingEncoder()
    FeatureCache(tmp_path / "c", fp, progress=False).get_or_compute(["x_1"], enc)
    FeatureCache(tmp_path / "c", fp2, progress=False).get_or_compute(["x_1"], enc)
    assert enc.seen == ["x_1", "x_1"]  # a new fingerprint never reads the old features


def test_bad_inputs_are_refused(tmp_path):
    cache = FeatureCache(tmp_path, "fp", progress=False)
    with pytest.raises(ValueError, match="rows"):
        cache.get_or_compute(["a", "b"], lambda uids: np.zeros((1, DIM)))
    with pytest.raises(ValueError, match="must not contain"):
        cache.get_or_compute(["a::b"], CountingEncoder())
    with pytest.raises(KeyError, match="nope"):
        cache.load(["nope"])
    assert len(cache) == 0  # nothing half-written
