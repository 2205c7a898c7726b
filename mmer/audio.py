"""Audio in: decode any file to mono float32 at the model rate, batch with masks, log-mel front end.

TelME's public code decoded MELD at 22.05 kHz and fed it to a 16 kHz model (REFERENCE.md
section 2, defect 2); here every file is resampled to ``sample_rate_hz`` on load, and the
duration cap is explicit (defect 3) rather than a silent cut of the last 400,000 samples.

Decoders, first that applies: ``soundfile`` when installed; the stdlib ``wave`` module for PCM
wav; an ``ffmpeg`` subprocess for anything else (mp3, flac, mp4 video, float wav). Resampling
uses ``scipy.signal.resample_poly`` when scipy is installed, else an FFT resampler in numpy.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np
import torch
from torch import nn

SAMPLE_RATE_HZ = 16_000          # the rate every mmer audio model takes
PCM24_BYTES = 3                  # 24-bit PCM sample width, bytes
FFMPEG_TIMEOUT_S = 120.0         # a decode taking longer than this is a hung ffmpeg
LOG_FLOOR = 1e-6                 # added to mel power before the log: about -60 dB re full scale
MS_PER_S = 1000.0


class AudioDecodeError(ValueError):
    """A file that cannot be decoded; the message names the file and the reason."""


# -- decoding ---------------------------------------------------------------------------
def _read_wave_pcm(path: Path) -> tuple[np.ndarray, int]:
    """(samples (N, channels) float32 in [-1, 1], rate) from a PCM wav via the stdlib."""
    with wave.open(str(path), "rb") as w:
        channels, width, rate, n = w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()
        raw = w.readframes(n)
    if width == 1:  # 8-bit wav is unsigned
        x = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 2:
        x = np.frombuffer(raw, "<i2").astype(np.float32) / 2.0**15
    elif width == PCM24_BYTES:
        b = np.frombuffer(raw, np.uint8).reshape(-1, PCM24_BYTES).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        x = (np.where(v >= 2**23, v - 2**24, v)).astype(np.float32) / 2.0**23
    elif width == 4:
        x = np.frombuffer(raw, "<i4").astype(np.float32) / 2.0**31
    else:
        raise wave.Error(f"unsupported sample width {width} bytes")
    return x[: len(x) // channels * channels].reshape(-1, channels), rate


def _read_ffmpeg(path: Path, sample_rate_hz: int, max_audio_s: float | None) -> np.ndarray:
    """Mono float32 at ``sample_rate_hz`` from any file ffmpeg can read (audio or video)."""
    exe = shutil.which("ffmpeg")
    if exe is None:
        raise AudioDecodeError(f"{path}: not a PCM wav and ffmpeg is not installed to decode it "
                               f"(Debian: apt-get install ffmpeg)")
    cmd = [exe, "-nostdin", "-v", "error", "-i", str(path), "-vn", "-ac", "1", "-ar", str(sample_rate_hz)]
    if max_audio_s is not None:
        cmd += ["-t", f"{max_audio_s}"]
    cmd += ["-f", "f32le", "-acodec", "pcm_f32le", "-"]
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=FFMPEG_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise AudioDecodeError(f"{path}: ffmpeg did not finish within {FFMPEG_TIMEOUT_S:.0f} s") from None
    if proc.returncode != 0:
        reason = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["unknown error"]
        raise AudioDecodeError(f"{path}: ffmpeg could not decode it: {reason[0]}")
    return np.frombuffer(proc.stdout, "<f4").astype(np.float32)


def resample(waveform: np.ndarray, from_hz: int, to_hz: int, use_scipy: bool = True) -> np.ndarray:
    """Resample 1-D ``waveform`` (N,) from ``from_hz`` to ``to_hz``; returns ceil(N * to / from) samples.

    Polyphase (``scipy.signal.resample_poly``, Kaiser-windowed anti-alias filter) when scipy is
    installed and ``use_scipy``; otherwise band-limited FFT resampling in numpy.
    """
    if from_hz == to_hz:
        return waveform.astype(np.float32, copy=False)
    g = math.gcd(int(from_hz), int(to_hz))
    up, down = int(to_hz) // g, int(from_hz) // g
    n_out = -(-len(waveform) * up // down)
    if use_scipy:
        try:
            from scipy.signal import resample_poly
        except ImportError:
            pass
        else:
            return resample_poly(waveform.astype(np.float64), up, down)[:n_out].astype(np.float32)
    # FFT route: keep the bins both rates can represent (an ideal low-pass), then inverse at the
    # new length; the FFT treats the clip as periodic, so the edges may ring slightly.
    n_in = len(waveform)
    spectrum = np.fft.rfft(waveform.astype(np.float64))
    out = np.zeros(n_out // 2 + 1, dtype=np.complex128)
    keep = min(len(spectrum), len(out))
    out[:keep] = spectrum[:keep]
    return (np.fft.irfft(out, n_out) * (n_out / n_in)).astype(np.float32)


def load_waveform(path: str | Path, sample_rate_hz: int = SAMPLE_RATE_HZ,
                  max_audio_s: float | None = None) -> np.ndarray:
    """Decode ``path`` (wav, any audio, or the audio track of a video) to mono float32.

    Returns (N,) samples at ``sample_rate_hz`` in [-1, 1]; channels are averaged; when
    ``max_audio_s`` is given only the first ``max_audio_s`` seconds are kept. Raises
    ``FileNotFoundError`` or :class:`AudioDecodeError`, both naming ``path``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: audio file not found")
    samples: np.ndarray | None = None
    rate = sample_rate_hz
    try:
        import soundfile  # optional: reads flac/ogg/float wav without a subprocess
    except ImportError:
        soundfile = None
    if soundfile is not None:
        try:
            samples, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
        except Exception:  # noqa: BLE001  (anything soundfile cannot read goes to ffmpeg)
            samples = None
    if samples is None and path.suffix.lower() in (".wav", ".wave"):
        try:
            samples, rate = _read_wave_pcm(path)
        except (wave.Error, EOFError, ValueError, RuntimeError, OSError):
            samples = None  # float, extensible or broken wav (chunk seeks raise RuntimeError): ffmpeg decides
    if samples is None:
        mono = _read_ffmpeg(path, sample_rate_hz, max_audio_s)
    else:
        mono = samples.mean(axis=1) if samples.shape[1] > 1 else samples[:, 0]
        if max_audio_s is not None:  # cut before resampling: no work on samples thrown away
            mono = mono[: math.ceil(max_audio_s * rate)]
        if mono.size:
            mono = resample(mono, rate, sample_rate_hz)
    if max_audio_s is not None:
        mono = mono[: round(max_audio_s * sample_rate_hz)]
    if mono.size == 0:
        raise AudioDecodeError(f"{path}: decoded to zero audio samples")
    if not np.isfinite(mono).all():
        raise AudioDecodeError(f"{path}: decoded audio holds NaN or infinite samples")
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
