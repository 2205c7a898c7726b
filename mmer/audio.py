"""Audio in: decode any file to mono float32 at the model rate, batch with masks, log-mel front end.

TelME's public code decoded MELD at 22.05 kHz and fed it to a 16 kHz model (REFERENCE.md
section 2, defect 2); here every file is resampled to ``sample_rate_hz`` on load, and the
duration cap is explicit (defect 3) rather than a silent cut of the last 400,000 samples.

Decoding and resampling live in :mod:`mmer.media` (PyAV, then a down-mix and soxr), the code
the file replay and the microphone use too, so training and serving hear the same numbers;
the helpers here keep their names and delegate.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mmer import media
from mmer.media import SAMPLE_RATE_HZ  # noqa: F401  (re-exported: the rate every mmer audio model takes)

LOG_FLOOR = 1e-6                 # added to mel power before the log: about -60 dB re full scale
MS_PER_S = 1000.0

AudioDecodeError = media.MediaError  # a file that cannot be decoded; the message names the file


# -- decoding ---------------------------------------------------------------------------
def resample(waveform: np.ndarray, from_hz: int, to_hz: int, use_scipy: bool = True) -> np.ndarray:
    """Resample 1-D ``waveform`` (N,) from ``from_hz`` to ``to_hz``; returns round(N * to / from) samples.

    :func:`mmer.media.resample` (soxr), whatever ``use_scipy`` says: the argument is kept so
    callers that passed it still run, but there is one resampler now (a second one was a
    train/serve skew of up to 4.6 % of peak).
    """
    return media.resample(np.asarray(waveform).reshape(-1), from_hz, to_hz)


def load_waveform(path: str | Path, sample_rate_hz: int = SAMPLE_RATE_HZ,
                  max_audio_s: float | None = None) -> np.ndarray:
    """Decode ``path`` (wav, any audio, or the audio track of a video) to mono float32.

    Returns (N,) samples at ``sample_rate_hz`` in [-1, 1); channels are averaged; when
    ``max_audio_s`` is given only the first ``max_audio_s`` seconds are kept. Raises
    ``FileNotFoundError`` (:class:`mmer.media.MediaNotFoundError`) or :class:`AudioDecodeError`
    (= :class:`mmer.media.MediaError`), both naming ``path``.
    """
    path = Path(path)
    mono = media.decode_audio(path, sample_rate_hz, duration_s=max_audio_s)
    if mono.size == 0:
        raise AudioDecodeError(f"{path}: decoded to zero audio samples. fix: check the file has sound")
    if not np.isfinite(mono).all():
        raise AudioDecodeError(f"{path}: decoded audio holds NaN or infinite samples. {media.FIX_CORRUPT}")
    return np.ascontiguousarray(mono, dtype=np.float32)


def batch_waveforms(waveforms: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad 1-D waveforms into (waveform (B, T) float32, attention_mask (B, T) int64, 1 = sample)."""
    if not waveforms:
        raise ValueError("batch_waveforms needs at least one waveform")
    lengths = [int(np.asarray(w).shape[-1]) for w in waveforms]
    batch = torch.zeros(len(waveforms), max(lengths), dtype=torch.float32)
    mask = torch.zeros(len(waveforms), max(lengths), dtype=torch.long)
    for i, (w, n) in enumerate(zip(waveforms, lengths)):
        batch[i, :n] = torch.as_tensor(np.asarray(w, dtype=np.float32).reshape(-1))
        mask[i, :n] = 1
    return batch, mask


# -- log-mel front end --------------------------------------------------------------------
def hz_to_mel(f_hz: np.ndarray | float) -> np.ndarray:
    """HTK mel scale: 2595 * log10(1 + f / 700)."""
    return 2595.0 * np.log10(1.0 + np.asarray(f_hz, dtype=np.float64) / 700.0)


def mel_to_hz(mel: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(n_fft: int, n_mels: int, sample_rate_hz: int, fmin_hz: float, fmax_hz: float) -> np.ndarray:
    """(n_fft // 2 + 1, n_mels) triangular HTK mel filters, peak 1, on the DFT bin frequencies."""
    bin_hz = np.arange(n_fft // 2 + 1) * sample_rate_hz / n_fft
    edges_hz = mel_to_hz(np.linspace(hz_to_mel(fmin_hz), hz_to_mel(fmax_hz), n_mels + 2))
    lo, mid, hi = edges_hz[:-2], edges_hz[1:-1], edges_hz[2:]
    rise = (bin_hz[:, None] - lo) / (mid - lo)
    fall = (hi - bin_hz[:, None]) / (hi - mid)
    return np.clip(np.minimum(rise, fall), 0.0, None).astype(np.float32)


class LogMel(nn.Module):
    """Waveform (B, T) -> log-mel (B, n_mels, F) with F = (T - win) // hop + 1 frames (no centring).

    Frames start at sample 0 and never reach past the signal, so a frame's value depends only on
    its own samples: right-padding a clip never changes its valid frames. Eager torch uses the
    FFT (``torch.stft``); during ONNX export the same DFT runs as a strided conv1d with a fixed
    cos/sin basis, because ONNX Runtime's STFT kernel is 15-50x slower than its conv (measured on
    a 5 s clip). Both paths are tested to agree.
    """

    def __init__(self, sample_rate_hz: int, n_mels: int, win_ms: float, hop_ms: float,
                 fmin_hz: float, fmax_hz: float) -> None:
        super().__init__()
        self.win = round(win_ms * sample_rate_hz / MS_PER_S)
        self.hop = round(hop_ms * sample_rate_hz / MS_PER_S)
        n_bins = self.win // 2 + 1
        window = torch.hann_window(self.win, periodic=True, dtype=torch.float64)
        t = torch.arange(self.win, dtype=torch.float64)
        k = torch.arange(n_bins, dtype=torch.float64)
        angle = 2.0 * math.pi * k[:, None] * t[None, :] / self.win
        basis = torch.cat([torch.cos(angle), -torch.sin(angle)]) * window  # (2 * n_bins, win)
        # Derived from dims, so not saved in checkpoints (persistent=False).
        self.register_buffer("window", window.float(), persistent=False)
        self.register_buffer("dft_basis", basis.float()[:, None, :], persistent=False)
        fb = mel_filterbank(self.win, n_mels, sample_rate_hz, fmin_hz, fmax_hz)
        self.register_buffer("mel_fb", torch.from_numpy(fb.T.copy()), persistent=False)  # (n_mels, bins)

    def num_frames(self, num_samples: torch.Tensor) -> torch.Tensor:
        """Valid frames for (B,) valid sample counts (at least one frame: short clips are padded)."""
        return (torch.clamp(num_samples, min=self.win) - self.win) // self.hop + 1

    def power_spectrum(self, waveform: torch.Tensor) -> torch.Tensor:
        """(B, T) -> (B, win // 2 + 1, F) |DFT|^2 of Hann-windowed frames."""
        if torch.onnx.is_in_onnx_export():
            re_im = nn.functional.conv1d(waveform[:, None, :], self.dft_basis, stride=self.hop)
            re, im = re_im.chunk(2, dim=1)
            return re * re + im * im
        spec = torch.stft(waveform, self.win, self.hop, self.win, self.window, center=False, return_complex=True)
        return spec.real.square() + spec.imag.square()

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """(B, T) float waveform, T >= win (pad shorter input first) -> (B, n_mels, F) natural-log mel power."""
        # float32 even under autocast: frame power reaches win^2 = 1.6e5, beyond float16's 65504.
        with torch.autocast(device_type=waveform.device.type, enabled=False):
            power = self.power_spectrum(waveform.float())
            return torch.log(torch.matmul(self.mel_fb, power) + LOG_FLOOR)
