"""The torch Whisper tiny.en encoder read from the packaged CTranslate2 model (mmer.whisper)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmer.whisper import (WhisperEncoder, WhisperLogMel, WhisperWeightsError, frozen, packaged_model_dir,
                          read_ctranslate2)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
RATE_HZ = 16_000


def _voice_like(seconds: float, seed: int = 0) -> np.ndarray:
    """A harmonic tone with a moving pitch and a little noise: speech-shaped, not silence."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE_HZ)) / RATE_HZ
    f0 = 140 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / RATE_HZ
    x = sum(np.sin(k * phase) / k for k in range(1, 8)) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t) ** 2)
    x = x * np.clip((t[-1] - t) / 0.1, 0.0, 1.0)  # fades out over 100 ms, as a VAD-cut utterance does
    return (0.2 * x + 0.003 * rng.standard_normal(len(t))).astype(np.float32)


def test_log_mel_matches_faster_whisper():
    fw = pytest.importorskip("faster_whisper.feature_extractor")
    wav = _voice_like(2.3)
    ours = WhisperLogMel()(torch.from_numpy(wav)[None])[0].numpy()
    theirs = fw.FeatureExtractor()(wav, padding=0)
    n = min(ours.shape[1], theirs.shape[1])
    np.testing.assert_allclose(ours[:, :n], theirs[:, :n], atol=1e-4)


def test_encoder_matches_ctranslate2_on_the_packaged_weights():
    ct2 = pytest.importorskip("ctranslate2")
    wav = _voice_like(3.0)
    enc = WhisperEncoder().load_ctranslate2().eval()
    with torch.no_grad():
        hidden, valid = enc(torch.from_numpy(wav)[None])
        mel = enc.mel(torch.from_numpy(wav)[None]).numpy()
    model = ct2.models.Whisper(str(packaged_model_dir()), compute_type="float32", intra_threads=1)
    theirs = np.array(model.encode(ct2.StorageView.from_array(np.ascontiguousarray(mel)), to_cpu=True))
    assert theirs.shape == tuple(hidden[-1].shape) == (1, 150, 384) and bool(valid.all())
    assert np.abs(theirs - hidden[-1].numpy()).max() < 1e-2 * np.abs(theirs).max()


def test_padding_changes_no_valid_frame():
    # Exact up to the STFT's reflect padding at the clip's end (the last 200 samples): an
    # utterance that ends in silence, as the VAD cuts them, is unaffected.
    enc = WhisperEncoder(keep_layers=2).load_ctranslate2().eval()
    wav = torch.from_numpy(_voice_like(1.5))[None]
    padded = torch.cat([wav, torch.zeros(1, RATE_HZ)], dim=1)
    with torch.no_grad():
        alone, _ = enc(wav)
        both, valid = enc(padded, torch.tensor([wav.shape[1]]))
    length = alone[-1].shape[1]
    assert int(valid.sum()) == length
    torch.testing.assert_close(both[-1][0, :length], alone[-1][0], atol=2e-3, rtol=1e-3)


def test_frozen_encoder_is_left_out_of_the_state_dict():
    enc = frozen(WhisperEncoder(keep_layers=1))
    assert not list(enc.parameters()) and enc.state_dict() == {}
    assert "conv1.weight" in dict(enc.named_buffers())


def test_reader_refuses_what_is_not_a_whisper_model(tmp_path):
    with pytest.raises(WhisperWeightsError, match="no CTranslate2 model"):
        read_ctranslate2(tmp_path)
    bad = tmp_path / "model.bin"
    bad.write_bytes((5).to_bytes(4, "little") + b"\0" * 8)
    with pytest.raises(WhisperWeightsError, match="binary version 5"):
        read_ctranslate2(bad)
