"""Waveform augmentation for what a robot or kiosk hears: noise, gain, speed, room, band limit.

Acted corpora are studio recordings close to the microphone; a robot hears the same voice
through a room, over fans and people, from a cheap microphone. Each function is pure: it takes
a (T,) float32 waveform at 16 kHz and a ``numpy.random.Generator`` and returns a new waveform,
so an augmented copy is reproducible from its seed. :func:`augment` chains them with the
probabilities of :class:`AugmentConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.signal import butter, fftconvolve, resample_poly, sosfilt

from mmer.media import SAMPLE_RATE_HZ
EPS = 1e-8


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges of each augmentation (applied in this order).

    speed: resampling by a factor in [speed_min, speed_max] (tempo and pitch together, as Kaldi's
    speed perturbation). reverb: a synthetic room impulse response with RT60 in
    [rt60_min_s, rt60_max_s]. band: a telephone-like band pass (low cut up to
    band_low_max_hz, high cut down to band_high_min_hz). noise: white or pink noise at an SNR in
    [snr_min_db, snr_max_db]. gain: a level change in [gain_min_db, gain_max_db].
    """

    copies: int = 6
    p_speed: float = 0.5
    speed_min: float = 0.9
    speed_max: float = 1.1
    p_reverb: float = 0.4
    rt60_min_s: float = 0.15
    rt60_max_s: float = 0.7
    p_band: float = 0.3
    band_low_max_hz: float = 300.0
    band_high_min_hz: float = 3400.0
    p_noise: float = 0.6
    snr_min_db: float = 5.0
    snr_max_db: float = 30.0
    p_gain: float = 0.5
    gain_min_db: float = -20.0
    gain_max_db: float = 6.0


def speed(waveform: np.ndarray, factor: float) -> np.ndarray:
    """Play ``factor`` times faster (shorter, higher): polyphase resampling by 100 / (100 * factor)."""
    up, down = 100, max(1, round(100 * factor))
    return resample_poly(waveform, up, down).astype(np.float32)


def room_impulse(rng: np.random.Generator, rt60_s: float, sample_rate_hz: int = SAMPLE_RATE_HZ) -> np.ndarray:
    """A synthetic room response: a direct path, then noise decaying by 60 dB over ``rt60_s``."""
    n = int(rt60_s * sample_rate_hz)
    t = np.arange(n) / sample_rate_hz
    tail = rng.standard_normal(n) * np.exp(-6.9078 * t / rt60_s)  # ln(1000) = 6.9078: -60 dB at rt60
    tail[: int(0.002 * sample_rate_hz)] = 0.0                     # 2 ms before the first reflections
    rir = 0.3 * tail / (np.abs(tail).max() + EPS)
    rir[0] = 1.0
    return rir.astype(np.float32)


def reverb(waveform: np.ndarray, rng: np.random.Generator, rt60_s: float) -> np.ndarray:
    """Convolve with :func:`room_impulse`, keeping the length and the peak level."""
    wet = fftconvolve(waveform, room_impulse(rng, rt60_s))[: len(waveform)]
    return (wet * (np.abs(waveform).max() / (np.abs(wet).max() + EPS))).astype(np.float32)


def band_limit(waveform: np.ndarray, low_hz: float, high_hz: float, sample_rate_hz: int = SAMPLE_RATE_HZ) -> np.ndarray:
    """4th-order Butterworth band pass [low_hz, high_hz]."""
    sos = butter(4, [low_hz, high_hz], btype="bandpass", fs=sample_rate_hz, output="sos")
    return sosfilt(sos, waveform).astype(np.float32)


def add_noise(waveform: np.ndarray, rng: np.random.Generator, snr_db: float, pink: bool) -> np.ndarray:
    """Add white or pink (1/f power) noise at ``snr_db`` relative to the waveform's mean power."""
    noise = rng.standard_normal(len(waveform))
    if pink:
        spectrum = np.fft.rfft(noise)
        spectrum /= np.sqrt(np.maximum(np.arange(len(spectrum)), 1.0))
        noise = np.fft.irfft(spectrum, n=len(waveform))
    power = float(np.mean(waveform.astype(np.float64) ** 2)) + EPS
    noise *= np.sqrt(power / (10 ** (snr_db / 10)) / (np.mean(noise ** 2) + EPS))
    return (waveform + noise).astype(np.float32)


def augment(waveform: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig = AugmentConfig()) -> np.ndarray:
    """One augmented copy of (T,) float32 ``waveform`` at 16 kHz; each step fires with its probability."""
    x = np.asarray(waveform, dtype=np.float32)
    if rng.random() < cfg.p_speed:
        x = speed(x, rng.uniform(cfg.speed_min, cfg.speed_max))
    if rng.random() < cfg.p_reverb:
        x = reverb(x, rng, rng.uniform(cfg.rt60_min_s, cfg.rt60_max_s))
    if rng.random() < cfg.p_band:
        x = band_limit(x, rng.uniform(50.0, cfg.band_low_max_hz), rng.uniform(cfg.band_high_min_hz, 7600.0))
    if rng.random() < cfg.p_noise:
        x = add_noise(x, rng, rng.uniform(cfg.snr_min_db, cfg.snr_max_db), pink=bool(rng.random() < 0.5))
    if rng.random() < cfg.p_gain:
        x = x * np.float32(10 ** (rng.uniform(cfg.gain_min_db, cfg.gain_max_db) / 20))
    return np.clip(x, -1.0, 1.0).astype(np.float32)
