"""Audio student of TelME (seed 000, section 3.2.2, eq. (4): F_a = AudioEncoder(a_k); distilled in
section 3.2.3 with eqs (6)-(15) by the trainer): one interface, three families.

``family="hf"``: a data2vec-audio / wav2vec2 / HuBERT encoder (TelME uses data2vec-audio-base).
The utterance feature F_a is the MASKED MEAN over valid frames, not the first frame the
authors' code took (REFERENCE.md section 2, defect 3), projected to the KD width.

``family="whisper"``: the frozen Whisper tiny.en encoder that ships offline (mmer.whisper),
cut after ``whisper_layers`` blocks, mean-pooled over the utterance's frames; only a linear head
trains. Its pooled feature is z-normalised with the speaker's own running statistics
(:class:`mmer.speaker_norm.SpeakerNormalizer`): recording and speaker differences dominate raw
Whisper statistics, so without them a model trained on one corpus collapses on another
(REFERENCE.md section 8; docs/voice.md). Without a speaker history the checkpoint's prior
(training statistics) is used.

``family="edge"``: a compact log-mel network for robots and kiosks (0.45 M parameters; a 5 s
clip costs ~7 ms of one core in eager torch, ~4-5 ms in ONNX Runtime, measured on a shared
2-vCPU AMD EPYC VM under load): log-mel -> per-utterance normalisation -> depthwise-separable
1-D conv stack -> attentive statistics pooling over valid frames -> projection -> classifier.
Operator count, not arithmetic, bounds its CPU latency, hence few, wide stages.

Both return ``EmotionOutput`` with ``features["audio"]`` (B, kd_dim) for distillation and fusion.
Padding never changes a prediction: every layer masks padded frames (tested).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmer.audio import SAMPLE_RATE_HZ, LogMel
from mmer.contract import BATCH, Contract, Processor, SequenceAxis, TensorSpec
from mmer.errors import UsageError
from mmer.labels import get_label_set
from mmer.models.base import DEFAULT_BATCH_SIZE, MmerModel, as_array, batch_starts
from mmer.outputs import EmotionOutput, labelled
from mmer.registry import MODELS

ENCODER_DIR = "encoder"            # checkpoint subfolder with the hf encoder's config files
HF_MAX_AUDIO_S = 30.0              # duration caps: data2vec attention cost grows with T^2
EDGE_MAX_AUDIO_S = 10.0
NORM_EPS = 1e-7                    # as Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm
VAR_FLOOR = 1e-5                   # keeps sqrt differentiable in statistics pooling
TRANSITION_KERNEL = 3              # frames seen by a width- or stride-changing edge stage
MAX_MASK_FRACTION = 0.2            # one SpecAugment stripe covers at most this share of an utterance
# Encoders whose HF forward is exact under right padding + attention mask: a layer-norm conv
# stack and ONE positional conv over zeroed padded frames. data2vec-audio stacks 5 positional
# convs without re-masking between them (padding leaks into the last ~36 valid frames) and
# group-norm conv stacks (wav2vec2-base, hubert-base) normalise over time, padding included:
# those run one utterance at a time, trimmed to its valid length.
PADDING_EXACT_MODEL_TYPES = ("wav2vec2", "hubert")
SILENT_PEAK = 1e-4                 # whisper family: a clip's peak is floored here before scaling
STD_FLOOR = 1e-3                   # whisper family: smallest per-feature std used to z-normalise
SPEAKER_HEAD_FILE = "speaker_head.onnx"   # whisper exports: the head alone, to re-read a result for another speaker
MAX_CHANNELS = 8                   # recognize(): a 2-D array this narrow is (samples, channels), not a batch


@dataclass(frozen=True)
class AudioStudentDims:
    """Every size of the audio student; saved inside checkpoints.

    Shared: ``family``, label set, KD width, input rate, duration cap (longer input keeps its
    first ``max_audio_s`` seconds), dropout before the classifier. ``encoder`` (hf): local
    folder or hub name. The rest sizes the edge network (10 ms hop -> 100 frames per second).
    """

    family: Literal["hf", "edge", "whisper"] = "edge"
    label_set: str = "meld7"
    num_labels: int = 7
    kd_dim: int = 768
    sample_rate_hz: int = SAMPLE_RATE_HZ
    max_audio_s: float = EDGE_MAX_AUDIO_S
    dropout: float = 0.2
    encoder: str = ""
    n_mels: int = 64
    win_ms: float = 25.0
    hop_ms: float = 10.0
    fmin_hz: float = 20.0
    fmax_hz: float = 8000.0
    stem_channels: int = 96
    stem_kernel: int = 5
    stem_stride: int = 2
    block_channels: tuple[int, ...] = (96, 128, 128, 160, 160)
    block_strides: tuple[int, ...] = (1, 2, 1, 2, 1)
    kernel_size: int = 9
    attention_dim: int = 64
    spec_freq_masks: int = 2           # SpecAugment, training only: masks per utterance and max width
    spec_freq_mask_bins: int = 8
    spec_time_masks: int = 2
    spec_time_mask_frames: int = 20
    whisper_layers: int = 2            # whisper family: encoder blocks kept (tiny.en has 4)
    peak_level: float = 0.5            # whisper family: each clip is scaled to this peak first
    prior_count: float = 2.0           # whisper family: pseudo-utterances of the prior in speaker statistics

    def __post_init__(self) -> None:
        if self.family not in ("hf", "edge", "whisper"):
            raise ValueError(f"AudioStudentDims.family must be 'hf', 'edge' or 'whisper', got {self.family!r}")
        n = len(get_label_set(self.label_set))
        if n != self.num_labels:
            raise ValueError(f"num_labels={self.num_labels} but label set '{self.label_set}' has {n} labels")
        if len(self.block_channels) != len(self.block_strides):
            raise ValueError("block_channels and block_strides must have the same length")
        if self.kernel_size % 2 == 0 or self.stem_kernel % 2 == 0:
            raise ValueError("edge kernels must be odd so 'same' padding is symmetric")
        if self.fmax_hz > self.sample_rate_hz / 2:
            raise ValueError(f"fmax_hz={self.fmax_hz} is above Nyquist ({self.sample_rate_hz / 2} Hz)")

    @classmethod
    def for_hf(cls, encoder: str, **changes: Any) -> AudioStudentDims:
        """Dims for an hf encoder (folder or hub name) with the hf duration cap (30 s)."""
        return replace(cls(family="hf", encoder=encoder, max_audio_s=HF_MAX_AUDIO_S, dropout=0.1), **changes)

    @classmethod
    def for_whisper(cls, **changes: Any) -> AudioStudentDims:
        """Dims for the frozen Whisper tiny.en encoder (``encoder``: a CTranslate2 Whisper folder,
        empty = the packaged one) with a 10 s cap."""
        return replace(cls(family="whisper", kd_dim=384, dropout=0.1), **changes)

    @classmethod
    def for_edge(cls, **changes: Any) -> AudioStudentDims:
        """Dims for the edge network (10 s cap)."""
        return replace(cls(family="edge"), **changes)


# -- edge network -----------------------------------------------------------------------
def _frame_mask(lengths: torch.Tensor, num_frames: int) -> torch.Tensor:
    """(B,) lengths -> (B, 1, F) float mask, 1 on valid frames."""
    idx = torch.arange(num_frames, device=lengths.device)
    return (idx[None, :] < lengths[:, None]).unsqueeze(1).float()


def _strided(mask: torch.Tensor, stride: int) -> torch.Tensor:
    """Frame mask after an odd-kernel 'same'-padded conv with ``stride``.

    Output frame j is valid iff j * stride < L, i.e. j < ceil(L / stride): exactly every
    stride-th input mask value, and there are ceil(F / stride) of them, the conv's output length.
    """
    return mask if stride == 1 else mask[..., ::stride]


class MaskedBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm over (B, C, F) whose training statistics count valid frames only.

    In eval it is the plain per-channel affine map (folded into the conv by ONNX Runtime).
    """

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, C, F), mask (B, 1, F) float."""
        if not self.training or mask is None:
            return super().forward(x)
        x = x.float()  # statistics in float32 under autocast too
        n = mask.sum().clamp(min=2.0)
        mean = (x * mask).sum((0, 2)) / n
        var = ((x - mean[:, None]).square() * mask).sum((0, 2)) / n
        with torch.no_grad():
            self.running_mean.lerp_(mean, self.momentum)
            self.running_var.lerp_(var * n / (n - 1), self.momentum)
            self.num_batches_tracked += 1
        x = (x - mean[:, None]) * torch.rsqrt(var[:, None] + self.eps)
        return x * self.weight[:, None] + self.bias[:, None]


class SeparableBlock(nn.Module):
    """One stage of the edge stack, re-masked at its output so padding never leaks into the next.

    Same width and stride 1: residual depthwise-separable block, depthwise conv (k) -> BN -> ReLU
    -> pointwise conv -> BN, + identity, ReLU. A change of width or stride: a dense conv
    (k=3, stride) -> BN -> ReLU, without residual; a strided 1x1 shortcut conv measured slower on
    CPU than this whole transition.
    """

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.residual = stride == 1 and c_in == c_out
        if self.residual:
            self.depthwise = nn.Conv1d(c_in, c_in, kernel, padding=kernel // 2, groups=c_in, bias=False)
            self.bn1 = MaskedBatchNorm1d(c_in)
            self.pointwise = nn.Conv1d(c_in, c_out, 1, bias=False)
        else:
            self.transition = nn.Conv1d(c_in, c_out, TRANSITION_KERNEL, stride, padding=TRANSITION_KERNEL // 2,
                                        bias=False)
        self.bn2 = MaskedBatchNorm1d(c_out)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, C_in, F) with padded frames zero, mask (B, 1, F) float -> (B, C_out, F'), mask (B, 1, F')."""
        if not self.residual:
            mask = _strided(mask, self.stride)
            return F.relu(self.bn2(self.transition(x), mask)) * mask, mask
        h = F.relu(self.bn1(self.depthwise(x), mask))
        h = self.bn2(self.pointwise(h), mask)
        # Zeroing padded frames makes them look like the conv's own zero padding to the next block.
        return F.relu(h + x) * mask, mask


class AttentiveStatsPool(nn.Module):
    """Attention-weighted mean and standard deviation over valid frames: (B, C, F) -> (B, 2C)."""

    def __init__(self, channels: int, attention_dim: int) -> None:
        super().__init__()
        self.score = nn.Sequential(nn.Conv1d(channels, attention_dim, 1), nn.Tanh(), nn.Conv1d(attention_dim, 1, 1))

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """h (B, C, F), mask (B, 1, F) float with at least one valid frame per row."""
        weights = torch.softmax(self.score(h).masked_fill(mask == 0, float("-inf")), dim=-1)
        mean = (weights * h).sum(-1)
        var = (weights * h.square()).sum(-1) - mean.square()
        return torch.cat([mean, torch.sqrt(var.clamp(min=VAR_FLOOR))], dim=-1)


class EdgeEncoder(nn.Module):
    """Waveform (B, T) + sample mask -> pooled (B, 2 * block_channels[-1]) statistics."""

    def __init__(self, dims: AudioStudentDims) -> None:
        super().__init__()
        self.dims = dims
        self.logmel = LogMel(dims.sample_rate_hz, dims.n_mels, dims.win_ms, dims.hop_ms, dims.fmin_hz, dims.fmax_hz)
        self.stem = nn.Conv1d(dims.n_mels, dims.stem_channels, dims.stem_kernel, dims.stem_stride,
                              padding=dims.stem_kernel // 2, bias=False)
        self.stem_bn = MaskedBatchNorm1d(dims.stem_channels)
        chans = (dims.stem_channels,) + tuple(dims.block_channels)
        self.blocks = nn.ModuleList(SeparableBlock(chans[i], chans[i + 1], dims.kernel_size, s)
                                    for i, s in enumerate(dims.block_strides))
        self.pool = AttentiveStatsPool(chans[-1], dims.attention_dim)
        self.out_dim = 2 * chans[-1]

    def normalise(self, logmel: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Per utterance: subtract each band's mean, divide by one std over valid frames (B, M, F)."""
        n = mask.sum(-1, keepdim=True)
        centred = (logmel - (logmel * mask).sum(-1, keepdim=True) / n) * mask
        var = centred.square().sum((1, 2), keepdim=True) / (n * logmel.shape[1])
        return centred * torch.rsqrt(var + NORM_EPS)

    def spec_augment(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Zero random band and frame stripes of (B, M, F) (Park et al. 2019); training only."""
        d = self.dims
        keep = torch.ones_like(x, dtype=torch.bool)
        for size, count, width, dim in ((x.shape[1], d.spec_freq_masks, d.spec_freq_mask_bins, 1),
                                        (x.shape[2], d.spec_time_masks, d.spec_time_mask_frames, 2)):
            span = torch.full_like(lengths, size) if dim == 1 else lengths
            idx = torch.arange(size, device=x.device)
            for _ in range(count):
                w = torch.randint(0, width + 1, lengths.shape, device=x.device)
                w = torch.minimum(w, (span * MAX_MASK_FRACTION).long())  # a short clip keeps most of itself
                start = (torch.rand(lengths.shape, device=x.device) * (span - w).clamp(min=0)).long()
                hit = (idx[None] >= start[:, None]) & (idx[None] < (start + w)[:, None])
                keep &= ~hit.unsqueeze(3 - dim)
        return x * keep

    def forward(self, waveform: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """waveform (B, T) float, attention_mask (B, T) 0/1 right-padded -> (B, out_dim)."""
        # Pad by one window so even a clip shorter than a window yields one frame; the frame
        # mask below counts only frames inside max(valid length, window).
        waveform = F.pad(waveform * attention_mask, (0, self.logmel.win - 1))
        lengths = self.logmel.num_frames(attention_mask.sum(-1).long())
        x = self.logmel(waveform)
        mask = _frame_mask(lengths, x.shape[-1])
        x = self.normalise(x, mask)
        if self.training:
            x = self.spec_augment(x, lengths)
        mask = _strided(mask, self.dims.stem_stride)
        x = F.relu(self.stem_bn(self.stem(x), mask)) * mask
        for block in self.blocks:
            x, mask = block(x, mask)
        return self.pool(x, mask)


# -- hf encoder helpers -----------------------------------------------------------------
def _local_only(name: str) -> bool:
    return Path(name).is_dir() or os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0")


def _require_encoder_name(dims: AudioStudentDims) -> None:
    if not dims.encoder:
        raise ValueError("an hf audio student needs dims.encoder (a local folder or hub name, e.g. "
                         "facebook/data2vec-audio-base-960h) or an encoder_config")


def _default_feature_extractor(sample_rate_hz: int) -> Any:
    # data2vec-audio and wav2vec2 checkpoints normalise; used when a folder ships no preprocessor config.
    from transformers import Wav2Vec2FeatureExtractor

    return Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=sample_rate_hz, padding_value=0.0,
                                    do_normalize=True, return_attention_mask=True)


def zero_mean_unit_var(waveform: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Normalise each row of (B, T) over its valid samples (mask (B, T) float); padding stays 0."""
    n = mask.sum(-1, keepdim=True).clamp(min=1.0)
    mean = (waveform * mask).sum(-1, keepdim=True) / n
    var = ((waveform - mean).square() * mask).sum(-1, keepdim=True) / n
    return (waveform - mean) * torch.rsqrt(var + NORM_EPS) * mask


def masked_mean(hidden: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
    """Mean of (B, F, H) over frames where (B, F) ``frame_mask`` is 1 -> (B, H)."""
    m = frame_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


def waveform_clips(raw: Any, from_hz: Any, to_hz: int) -> tuple[bool, list[np.ndarray]]:
    """Raw voice input -> (one clip given?, mono float32 clips at ``to_hz``), for ``recognize``.

    raw: one clip (T,), a batch of equal-length clips (B, T), or a list of (T_i,) clips; numpy
    or torch; float in [-1, 1] or int16 PCM. ``from_hz``: their rate; clips at another rate are
    resampled once with :func:`mmer.media.resample`. Anything else is a :class:`UsageError`
    naming the expected shape.
    """
    from mmer.media import resample

    if isinstance(from_hz, bool) or not isinstance(from_hz, (int, np.integer)) or from_hz <= 0:
        raise UsageError(f"sample_rate_hz must be a positive int (the clips' rate in Hz), got {from_hz!r}")
    expected = "voice input is one mono clip (T,), a batch (B, T) or a list of (T,) clips"

    def array(x: Any) -> np.ndarray:
        x = as_array(x, expected)
        if not (np.issubdtype(x.dtype, np.floating) or x.dtype == np.int16):
            raise UsageError(f"voice samples are float in [-1, 1] or int16 PCM, got dtype {x.dtype}; "
                             f"scale them to float first (e.g. int32: x / 2**31)")
        if not np.isfinite(x).all():
            raise UsageError("voice samples contain NaN or infinity")
        return x

    rate = int(from_hz)
    if isinstance(raw, (list, tuple)):
        clips = [array(c) for c in raw]
        if any(c.ndim != 1 for c in clips):
            raise UsageError(f"{expected}; this list holds shapes {[c.shape for c in clips][:4]}")
        single = False
    else:
        x = array(raw)
        if x.ndim == 2 and x.shape[1] <= MAX_CHANNELS < x.shape[0]:
            raise UsageError(f"{expected}; got {x.shape}, which looks like (samples, channels): mix it to mono "
                             f"first (x.mean(axis=1), or mmer.media.downmix)")
        if x.ndim not in (1, 2):
            raise UsageError(f"{expected}; got {x.ndim}-D shape {x.shape}")
        single = x.ndim == 1
        if x.ndim == 2 and x.shape[1] and rate != to_hz:   # one resampler call for the whole batch
            x, rate = resample(x.T, rate, to_hz).T, to_hz
        clips = [x] if single else list(x)
    if any(len(c) == 0 for c in clips):
        raise UsageError("a voice clip is empty (0 samples)")
    return single, [np.ascontiguousarray(resample(c, rate, to_hz)) for c in clips]   # equal rates: a float32 copy


@MODELS.register("audio_student")
class AudioStudent(MmerModel):
    """TelME audio student: encoder -> pooled (B, H) -> projection (B, kd_dim) -> classifier (B, C)."""

    registry_name = "audio_student"
    Dims = AudioStudentDims
    modality = "audio"

    def __init__(self, dims: AudioStudentDims, encoder_config: Any = None, encoder: nn.Module | None = None,
                 feature_extractor: Any = None) -> None:
        """Random weights for ``edge``; for ``hf`` pass a transformers ``encoder`` or ``encoder_config``
        (else the config is read from ``dims.encoder``) and optionally its feature extractor."""
        super().__init__(dims)
        self.feature_extractor = None
        self.normalize_waveform = False
        if dims.family == "edge":
            self.encoder = EdgeEncoder(dims)
            pooled_dim = self.encoder.out_dim
        elif dims.family == "whisper":
            from mmer.whisper import WhisperEncoder, frozen

            self.encoder = frozen(WhisperEncoder(keep_layers=dims.whisper_layers).load_ctranslate2(dims.encoder or None))
            pooled_dim = self.encoder.dims.width
            # Speaker statistics prior: mean and variance of the pooled feature over the training set.
            self.register_buffer("prior_mean", torch.zeros(pooled_dim))
            self.register_buffer("prior_var", torch.ones(pooled_dim))
        else:
            from transformers import AutoConfig, AutoModel

            if encoder is None:
                if encoder_config is None:
                    _require_encoder_name(dims)
                    encoder_config = AutoConfig.from_pretrained(dims.encoder, local_files_only=_local_only(dims.encoder))
                encoder = AutoModel.from_config(encoder_config)
            self.encoder = encoder
            self.feature_extractor = feature_extractor or _default_feature_extractor(dims.sample_rate_hz)
            self.normalize_waveform = bool(getattr(self.feature_extractor, "do_normalize", True))
            fe_rate = getattr(self.feature_extractor, "sampling_rate", dims.sample_rate_hz)
            if fe_rate != dims.sample_rate_hz:  # REFERENCE.md section 2, defect 2
                raise ValueError(f"encoder '{dims.encoder}' expects {fe_rate} Hz audio but dims.sample_rate_hz "
                                 f"is {dims.sample_rate_hz}")
            cfg = encoder.config
            self.padding_exact = (cfg.model_type in PADDING_EXACT_MODEL_TYPES
                                  and getattr(cfg, "feat_extract_norm", "layer") == "layer")
            field = 1  # samples one output frame sees, so shorter clips can be padded up to it
            for k, s in zip(reversed(cfg.conv_kernel), reversed(cfg.conv_stride)):
                field = (field - 1) * s + k
            self.receptive_field = field
            pooled_dim = cfg.hidden_size
        self.projection = nn.Linear(pooled_dim, dims.kd_dim)
        self.dropout = nn.Dropout(dims.dropout)
        self.classifier = nn.Linear(dims.kd_dim, dims.num_labels)

    # -- building and checkpoints -----------------------------------------------------
    @classmethod
    def from_pretrained(cls, dims: AudioStudentDims) -> AudioStudent:
        """hf: load the pretrained encoder from ``dims.encoder`` (folder, or hub name / cache);
        whisper: the packaged Whisper weights; edge: random weights. The head starts random."""
        if dims.family in ("edge", "whisper"):
            return cls(dims)
        from transformers import AutoFeatureExtractor, AutoModel

        _require_encoder_name(dims)
        local = _local_only(dims.encoder)
        encoder = AutoModel.from_pretrained(dims.encoder, local_files_only=local)
        try:
            fe = AutoFeatureExtractor.from_pretrained(dims.encoder, local_files_only=local)
        except (OSError, ValueError):
            fe = None  # no preprocessor config: normalise, as data2vec-audio and wav2vec2 do
        return cls(dims, encoder=encoder, feature_extractor=fe)

    def save_assets(self, folder: Path) -> None:
        """hf: write the encoder config and feature-extractor config under ``folder/encoder``."""
        if self.dims.family == "hf":
            target = Path(folder) / ENCODER_DIR
            self.encoder.config.save_pretrained(str(target))
            self.feature_extractor.save_pretrained(str(target))

    @classmethod
    def from_checkpoint(cls, dims: AudioStudentDims, folder: Path) -> AudioStudent:
        """Rebuild the architecture offline from ``folder/encoder`` (hf), from ``dims`` (edge), or
        with the packaged Whisper weights (whisper; they are not stored in the checkpoint)."""
        if dims.family in ("edge", "whisper"):
            return cls(dims)
        from transformers import AutoConfig, AutoFeatureExtractor

        source = Path(folder) / ENCODER_DIR
        config = AutoConfig.from_pretrained(str(source), local_files_only=True)
        fe = AutoFeatureExtractor.from_pretrained(str(source), local_files_only=True)
        return cls(dims, encoder_config=config, feature_extractor=fe)

    def freeze_feature_encoder(self) -> None:
        """hf: stop gradients into the conv feature encoder (usual when fine-tuning on small data)."""
        if self.dims.family == "hf":
            self.encoder.freeze_feature_encoder()

    # -- forward ------------------------------------------------------------------------
    def encode_hf(self, waveform: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T) waveform, (B, T) right-padded 0/1 mask -> (B, hidden) mean over valid frames."""
        mask = attention_mask.to(waveform.dtype)
        if self.normalize_waveform:
            waveform = zero_mean_unit_var(waveform, mask)
        lengths = attention_mask.sum(-1).long().clamp(min=self.receptive_field)
        waveform = F.pad(waveform, (0, max(0, self.receptive_field - waveform.shape[-1])))
        if self.padding_exact or bool((lengths == waveform.shape[-1]).all()):
            sample_mask = (torch.arange(waveform.shape[-1], device=waveform.device)[None] < lengths[:, None]).long()
            hidden = self.encoder(waveform, attention_mask=sample_mask).last_hidden_state
            frames = self.encoder._get_feat_extract_output_lengths(lengths)
            frame_mask = torch.arange(hidden.shape[1], device=hidden.device)[None] < frames[:, None]
            return masked_mean(hidden, frame_mask)
        return torch.cat([self.encoder(waveform[i:i + 1, :n]).last_hidden_state.mean(1)
                          for i, n in enumerate(lengths.tolist())])

    def encode_whisper(self, waveform: torch.Tensor, attention_mask: torch.Tensor,
                       hidden: list[torch.Tensor] | None = None) -> torch.Tensor:
        """(B, T) waveform, (B, T) 0/1 mask -> (B, 384) mean of the kept block's valid frames.

        hidden: the encoder's per-block states of this very utterance (B = 1), computed already
        by speech-to-text's shared encoder pass; then the encoder does not run again.
        """
        if hidden is not None:
            states = hidden[self.dims.whisper_layers - 1]
            return states.float().mean(1)
        lengths = attention_mask.sum(-1).long()
        mask = attention_mask.to(waveform.dtype)
        peak = (waveform.abs() * mask).amax(-1, keepdim=True).clamp(min=SILENT_PEAK)
        states, valid = self.encoder(waveform * mask * (self.dims.peak_level / peak), lengths)
        return masked_mean(states[-1], valid)

    def classify(self, pooled: torch.Tensor, feature_mean: torch.Tensor | None = None,
                 feature_std: torch.Tensor | None = None, labels: torch.Tensor | None = None) -> EmotionOutput:
        """The head on pooled features (B, H). whisper family: z-normalised by the speaker's
        statistics ``feature_mean`` / ``feature_std`` ((B, H) or (H,); default the prior)."""
        if self.dims.family == "whisper":
            mean = self.prior_mean if feature_mean is None else feature_mean
            std = self.prior_var.sqrt() if feature_std is None else feature_std
            normed = (pooled - mean) / std.clamp(min=STD_FLOOR)
        else:
            normed = pooled
        feature = self.projection(normed)
        logits = self.classifier(self.dropout(feature))
        loss = F.cross_entropy(logits.float(), labels) if labels is not None else None
        return EmotionOutput.from_logits(logits, features={"audio": feature, "audio_pooled": pooled}, loss=loss)

    def forward(self, waveform: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, feature_mean: torch.Tensor | None = None,
                feature_std: torch.Tensor | None = None) -> EmotionOutput:
        """waveform (B, T) float32 mono at ``dims.sample_rate_hz``; attention_mask (B, T) 0/1,
        right-padded (None: all valid); labels (B,) class ids -> EmotionOutput with logits (B, C),
        features {"audio": (B, kd_dim), "audio_pooled": (B, H)}, cross-entropy loss if labels.
        feature_mean / feature_std: the speaker's statistics (whisper family; see ``classify``)."""
        if waveform.dim() != 2:
            raise UsageError(f"waveform must be (B, T) at {self.dims.sample_rate_hz} Hz, got shape "
                             f"{tuple(waveform.shape)}; for raw clips (any shape, rate, numpy or torch) call "
                             f"model(clip, sample_rate_hz=...) or model.recognize(clip)")
        max_samples = int(self.dims.max_audio_s * self.dims.sample_rate_hz)
        waveform = waveform[:, :max_samples].float()
        if attention_mask is None:
            attention_mask = torch.ones_like(waveform)
        attention_mask = attention_mask[:, :max_samples].to(waveform.dtype)
        if self.dims.family == "edge":
            pooled = self.encoder(waveform, attention_mask)
        elif self.dims.family == "whisper":
            pooled = self.encode_whisper(waveform, attention_mask)
        else:
            pooled = self.encode_hf(waveform, attention_mask)
        return self.classify(pooled, feature_mean, feature_std, labels)

    recognize_options = MmerModel.recognize_options | {"sample_rate_hz"}

    @torch.inference_mode()
    def recognize(self, waveforms: Any, sample_rate_hz: int | None = None,
                  batch_size: int = DEFAULT_BATCH_SIZE) -> dict | list[dict]:
        """Labelled emotions of voice clips: ``voice(clip, sample_rate_hz=44_100)`` ->
        ``{"label": ..., "score": p, "scores": {label: p, ...}}``.

        waveforms: one mono clip (T,) -> one dict; a batch of equal-length clips (B, T) or a
            list of clips of any lengths -> one dict per clip. numpy or torch, float in [-1, 1]
            or int16 PCM; clips longer than ``dims.max_audio_s`` keep their start.
        sample_rate_hz: the clips' rate; None means the model's (``dims.sample_rate_hz``,
            16 kHz). Other rates are resampled once (:func:`mmer.media.resample`).
        batch_size: clips per padded forward pass; results equal one-by-one calls.

        Each clip is read on its own; the whisper family reads it against the checkpoint's
        speaker prior (the live pipeline also adapts to each speaker's voice over time).
        """
        rate = self.dims.sample_rate_hz
        single, clips = waveform_clips(waveforms, rate if sample_rate_hz is None else sample_rate_hz, rate)
        clips = [c[:self.max_samples] for c in clips]
        labels = get_label_set(self.dims.label_set).labels
        results: list[dict] = []
        for start in batch_starts(len(clips), batch_size):
            chunk = clips[start:start + batch_size]
            wave = torch.zeros(len(chunk), max(len(c) for c in chunk))
            mask = torch.zeros(wave.shape, dtype=torch.long)
            for row, clip in enumerate(chunk):
                wave[row, :len(clip)] = torch.from_numpy(clip)
                mask[row, :len(clip)] = 1
            results += labelled(self(wave.to(self.device), mask.to(self.device)).probs, labels)
        return results[0] if single else results

    # -- contract (mmer.contract) ---------------------------------------------------------
    @property
    def max_samples(self) -> int:
        return int(self.dims.max_audio_s * self.dims.sample_rate_hz)

    def build_contract(self) -> Contract:
        """waveform / attention_mask (B, samples); the whisper family also takes the speaker's
        running statistics so far (count (B, 1), mean and M2 (B, H): Welford's sums, the prior
        included) and gives back the pooled feature that extends them."""
        wave = (BATCH, "samples")
        inputs = (TensorSpec("waveform", "float32", wave), TensorSpec("attention_mask", "int64", wave))
        extra: tuple[str, ...] = ()
        if self.dims.family == "whisper":
            width = self.encoder.dims.width
            inputs += (TensorSpec("speaker_count", "float32", (BATCH, 1)),
                       TensorSpec("speaker_mean", "float32", (BATCH, width)),
                       TensorSpec("speaker_m2", "float32", (BATCH, width)))
            extra = ("audio_pooled",)
        exact = not (self.dims.family == "hf" and not getattr(self, "padding_exact", True))
        return Contract("audio_student", "audio", inputs, feature="audio", extra_outputs=extra, padding_exact=exact,
                        sequence=SequenceAxis("audio", self.max_samples, self.dims.sample_rate_hz),
                        speaker_state=self.dims.family == "whisper")

    def head_with_speaker(self, pooled: torch.Tensor, count: torch.Tensor, mean: torch.Tensor,
                          m2: torch.Tensor) -> EmotionOutput:
        """whisper family: add this utterance to the speaker's statistics (Welford) and classify it
        normalised by them, as :meth:`mmer.speaker_norm.SpeakerNormalizer.update` does."""
        from mmer.speaker_norm import VAR_FLOOR as SPEAKER_VAR_FLOOR

        n = count + 1.0
        delta = pooled - mean
        new_mean = mean + delta / n
        var = ((m2 + delta * (pooled - new_mean)) / n).clamp(min=SPEAKER_VAR_FLOOR)
        return self.classify(pooled, new_mean, var.sqrt())

    def graph_outputs(self, **inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.dims.family != "whisper":
            return super().graph_outputs(**inputs)
        wav = inputs["waveform"][:, :self.max_samples].float()
        mask = inputs["attention_mask"][:, :self.max_samples].to(wav.dtype)
        pooled = self.encode_whisper(wav, mask)
        out = self.head_with_speaker(pooled, inputs["speaker_count"], inputs["speaker_mean"], inputs["speaker_m2"])
        return out.logits, out.probs, out.features["audio"], pooled

    @torch.inference_mode()
    def predict(self, raw: Any, speaker: str = "", hidden: Any = None, **context: Any) -> dict[str, np.ndarray]:
        """A waveform (n,) float32 at ``dims.sample_rate_hz`` -> outputs; ``hidden``: the whisper
        encoder's per-block states of this very waveform (speech-to-text's shared pass), reused
        instead of a second encoder pass when the waveform is within ``max_audio_s``."""
        if hidden is None or self.dims.family != "whisper" or len(raw) > self.max_samples:
            return super().predict(raw, speaker=speaker, **context)
        dev = self.device
        pooled = self.encode_whisper(torch.zeros(1, 1, device=dev), torch.ones(1, 1, device=dev), hidden=hidden)
        return self.processor().outputs(self.outputs_from_pooled(pooled, speaker), speaker=speaker)

    @torch.inference_mode()
    def outputs_from_pooled(self, pooled: torch.Tensor | np.ndarray, speaker: str = "") -> dict[str, np.ndarray]:
        """whisper family: the outputs of a pooled feature (1, H) read with ``speaker``'s statistics
        as they stand (the head only; nothing is committed to the statistics)."""
        dev = self.device
        pooled = torch.as_tensor(pooled, dtype=torch.float32).to(dev)
        state = self.processor().speaker_state(speaker)
        out = self.head_with_speaker(pooled, *(torch.from_numpy(state[k]).to(dev)
                                               for k in ("speaker_count", "speaker_mean", "speaker_m2")))
        feature = out.features["audio"].float().cpu().numpy()
        return {"logits": out.logits.float().cpu().numpy(), "probs": out.probs.float().cpu().numpy(),
                "audio": feature, "feature": feature, "audio_pooled": pooled.float().cpu().numpy()}

    def example_inputs(self, n: int = 2, seed: int = 0, data_root: Any = None, data: str = "meld-dev",
                       audio_range_s: tuple[float, float] | None = None) -> list[dict[str, np.ndarray]]:
        """espeak-ng reading MELD dev transcripts (synthetic voice without them), 1-8 s."""
        from mmer.samples import AUDIO_MAX_S, AUDIO_MIN_S, audio_samples

        lo, hi = audio_range_s or (AUDIO_MIN_S, AUDIO_MAX_S)
        clips = audio_samples(n, seed, data_root, lo, hi, speech=data == "meld-dev")
        return [self.processor().inputs(c["waveform"][0]) for c in clips]

    def example_batch(self, samples: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """Equal-length clips, so tracing follows the batched path every audio family has."""
        pair = samples[:2]
        n = min(s["waveform"].shape[1] for s in pair)
        cut = ("waveform", "attention_mask")
        return super().example_batch([{k: v[:, :n] if k in cut else v for k, v in s.items()} for s in pair])

    def save_export_assets(self, folder: Path) -> dict[str, str]:
        """whisper family: also the speaker head alone (pooled feature + a speaker's statistics ->
        outputs) as ``speaker_head.onnx``, so a result computed for one speaker can be re-read
        for another without a second encoder pass (a host that names the speaker late)."""
        if self.dims.family != "whisper":
            return {}
        width = self.encoder.dims.width
        head = _SpeakerHead(self).eval()
        args = (torch.zeros(1, width), torch.ones(1, 1), torch.zeros(1, width), torch.ones(1, width))
        names = ["audio_pooled", "speaker_count", "speaker_mean", "speaker_m2"]
        outs = ["logits", "probs", "audio"]
        with torch.no_grad():
            torch.onnx.export(head, args, str(Path(folder) / SPEAKER_HEAD_FILE), dynamo=False, opset_version=17,
                              input_names=names, output_names=outs,
                              dynamic_axes={n: {0: "batch"} for n in names + outs})
        return {"speaker_head": SPEAKER_HEAD_FILE}

    def export_info(self) -> dict:
        info = {"audio": {"sample_rate_hz": self.dims.sample_rate_hz, "max_samples": self.max_samples}}
        if self.dims.family == "whisper":
            info["speaker_prior"] = {"mean": self.prior_mean.float().cpu().tolist(),
                                     "var": self.prior_var.float().cpu().tolist(), "count": self.dims.prior_count}
        return info

    @classmethod
    def processor_for(cls, dims: AudioStudentDims, folder: Path | None = None, card: dict | None = None) -> Processor:
        prior = (card or {}).get("speaker_prior")
        if dims.family == "whisper" and prior is None:
            raise ValueError(f"{folder}: a whisper-family voice export must carry its speaker prior "
                             f"(model.json 'speaker_prior'); re-export it with this mmer")
        head = Path(folder) / SPEAKER_HEAD_FILE if folder is not None else None
        return WaveformProcessor(int(dims.max_audio_s * dims.sample_rate_hz), prior,
                                 head if head is not None and head.is_file() else None)


class _SpeakerHead(nn.Module):
    """The whisper student's head alone: (pooled, speaker statistics) -> (logits, probs, feature)."""

    def __init__(self, student: AudioStudent) -> None:
        super().__init__()
        self.student = student

    def forward(self, pooled: torch.Tensor, count: torch.Tensor, mean: torch.Tensor,
                m2: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.student.head_with_speaker(pooled, count, mean, m2)
        return out.logits, out.probs, out.features["audio"]


class WaveformProcessor(Processor):
    """A mono waveform (n,) float32 at the model's rate -> ``waveform`` / ``attention_mask`` (1, n),
    cut to the model's ``max_audio_s``; with a speaker prior (whisper family) also the speaker's
    running statistics, extended with each utterance's pooled feature in :meth:`outputs`
    (context ``speaker``: whose utterance it is)."""

    def __init__(self, max_samples: int, speaker_prior: dict | None = None, speaker_head: Path | None = None) -> None:
        from mmer.speaker_norm import SpeakerNormalizer

        self.max_samples = max_samples
        self.speaker_head = speaker_head
        self._head_session = None
        self.speakers = None if speaker_prior is None else SpeakerNormalizer(
            np.asarray(speaker_prior["mean"]), np.asarray(speaker_prior["var"]), float(speaker_prior["count"]))

    def inputs(self, raw: Any, speaker: str = "", **context: Any) -> dict[str, np.ndarray]:
        wav = np.ascontiguousarray(np.asarray(raw, dtype=np.float32).reshape(-1)[:self.max_samples])[None]
        out = {"waveform": wav, "attention_mask": np.ones(wav.shape, dtype=np.int64)}
        if self.speakers is not None:
            out.update(self.speaker_state(speaker))
        return out

    def outputs(self, result: dict[str, np.ndarray], speaker: str = "", **context: Any) -> dict[str, np.ndarray]:
        if self.speakers is not None:
            self.speakers.update(speaker, result["audio_pooled"][0])
        return result

    def speaker_state(self, speaker: str) -> dict[str, np.ndarray]:
        """The speaker-statistics inputs of ``speaker`` as they stand (nothing is added)."""
        count, mean, m2 = self.speakers.welford(speaker)
        return {"speaker_count": np.array([[count]], np.float32), "speaker_mean": mean[None].astype(np.float32),
                "speaker_m2": m2[None].astype(np.float32)}

    def rehead(self, result: dict[str, np.ndarray], speaker: str = "") -> dict[str, np.ndarray] | None:
        """``result`` (with its ``audio_pooled``) re-read for ``speaker`` through the export's
        speaker head (ONNX Runtime, CPU); None when this processor has no head graph."""
        if self.speakers is None or self.speaker_head is None:
            return None
        if self._head_session is None:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            self._head_session = ort.InferenceSession(str(self.speaker_head), options,
                                                      providers=["CPUExecutionProvider"])
        logits, probs, feature = self._head_session.run(
            None, {"audio_pooled": result["audio_pooled"].astype(np.float32), **self.speaker_state(speaker)})
        return {**result, "logits": logits, "probs": probs, "audio": feature, "feature": feature}

    def reset(self) -> None:
        if self.speakers is not None:
            self.speakers.reset()
