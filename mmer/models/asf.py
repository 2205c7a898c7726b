"""TelME's attention-based modality-shifting fusion (ASF).

Paper: "TelME: Teacher-leading Multimodal Fusion Network for Emotion Recognition in
Conversation" (Yun et al., NAACL 2024); equations (16)-(19) as numbered in the reproduction
report seeds/000 (REFERENCE.md section 2).

The teacher's text feature F_text is *shifted* by a vector H built from the audio and visual
students' features, with the shift scaled so it never outweighs the text feature:

    F_av = LayerNorm(MHA(tokens) + tokens)              attention over the non-verbal features
    g    = relu(W1 [F_text ; F_av] + b1)                (16) gate
    H    = g * (W2 F_av + b2)                           (17) shift vector
    lam  = min(||F_text|| / ||H|| * theta, 1)           (19) shift scale
    Z    = LayerNorm(F_text + lam * H)                  (18) + the authors' LayerNorm

Two ways of computing F_av (``ASFDims.paper_faithful``):

* default (mmer): the audio and visual features are two tokens of one utterance, (B, 2, D);
  attention runs over those tokens only, so every prediction is batch-independent, and a
  missing modality is masked out explicitly.
* ``paper_faithful=True``: a REPRODUCTION SWITCH, not a recommendation. The authors' code
  concatenates the two features into a (B, 2D) tensor and hands it to
  ``nn.MultiheadAttention(2D, heads)``; PyTorch reads a 2-D input as ONE unbatched sequence
  of length B, so the utterances of a mini-batch attend to each other and a prediction
  depends on its batch companions (at batch 1 the attention is a no-op up to projections).
  This is defect 1 of REFERENCE.md; use it only to compare against the published numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmer.contract import BATCH, Contract, Processor, TensorSpec
from mmer.labels import get_label_set
from mmer.models.base import MmerModel
from mmer.models.blocks import LAYER_NORM_EPS, ModalityTokenAttention
from mmer.outputs import EmotionOutput
from mmer.registry import MODELS

NONVERBAL_MODALITIES = ("audio", "visual")  # token order inside F_av: audio slot, then visual
NORM_EPS = 1e-6  # floor on ||H|| in eq. (19), so a zero shift never divides by zero


@dataclass(frozen=True)
class ASFDims:
    """Every size of the fusion head; saved inside its checkpoint.

    label_set / num_labels: target classes. kd_dim: width D of the teacher and student
    features. num_heads: attention heads (MELD 3, IEMOCAP 4). theta: shift scale of eq. (19)
    (MELD 0.1, IEMOCAP 0.2). dropout: after the attention block and before the classifier.
    paper_faithful: reproduce the authors' cross-batch attention (see the module docstring).
    """

    label_set: str = "meld7"
    num_labels: int = 7
    kd_dim: int = 768
    num_heads: int = 3
    theta: float = 0.1
    dropout: float = 0.2
    paper_faithful: bool = False


def shift_scale(text: torch.Tensor, shift: torch.Tensor, theta: float) -> torch.Tensor:
    """Eq. (19): lambda = min(||F_text||_2 / ||H||_2 * theta, 1), per utterance.

    text:  (B, D) teacher features F_text.
    shift: (B, D) shift vectors H; a zero row is guarded by ``NORM_EPS`` (its lambda is then 1,
           which is harmless because lambda * H is still zero).
    Returns (B, 1), every value in (0, 1].
    """
    text_norm = text.norm(p=2, dim=-1, keepdim=True)
    shift_norm = shift.norm(p=2, dim=-1, keepdim=True).clamp_min(NORM_EPS)
    return (text_norm / shift_norm * theta).clamp(max=1.0)


@MODELS.register("asf")
class ASF(MmerModel):
    """TelME's fusion head over precomputed teacher/student features (only it trains at this
    stage of the recipe; teacher and students are frozen feature extractors)."""

    registry_name = "asf"
    modality = "fusion"
    fuses = "features"          # fuses the modalities' features (the predictor feeds it the feature of each)
    Dims = ASFDims

    def __init__(self, dims: ASFDims) -> None:
        super().__init__(dims)
        if len(get_label_set(dims.label_set)) != dims.num_labels:
            raise ValueError(f"label set '{dims.label_set}' has {len(get_label_set(dims.label_set))} classes, "
                             f"dims say num_labels={dims.num_labels}")
        d, av = dims.kd_dim, dims.kd_dim * len(NONVERBAL_MODALITIES)
        if dims.paper_faithful:
            if av % dims.num_heads:
                raise ValueError(f"concatenated width {av} is not divisible by {dims.num_heads} heads")
            # The authors' layer: one attention over the concatenated (2D) vector, batch_first
            # left at False because a 2-D input is unbatched either way.
            self.batch_attn = nn.MultiheadAttention(av, dims.num_heads)
            self.av_norm = nn.LayerNorm(av, eps=LAYER_NORM_EPS)
            self.av_dropout = nn.Dropout(dims.dropout)
        else:
            self.token_attn = ModalityTokenAttention(d, dims.num_heads, dims.dropout)
        self.gate = nn.Linear(d + av, d)     # W1, b1 of eq. (16)
        self.shift = nn.Linear(av, d)        # W2, b2 of eq. (17)
        self.fused_norm = nn.LayerNorm(d, eps=LAYER_NORM_EPS)
        self.dropout = nn.Dropout(dims.dropout)
        self.classifier = nn.Linear(d, dims.num_labels)

    # -- helpers --------------------------------------------------------------------------
    @staticmethod
    def _presence(feature: torch.Tensor | None, mask: torch.Tensor | None, text: torch.Tensor) -> torch.Tensor:
        """(B,) bool presence of one modality: no tensor -> absent; tensor without mask -> present."""
        batch = text.shape[0]
        if feature is None:
            return torch.zeros(batch, dtype=torch.bool, device=text.device)
        if mask is None:
            return torch.ones(batch, dtype=torch.bool, device=text.device)
        if mask.shape != (batch,):
            raise ValueError(f"presence mask must be ({batch},), got {tuple(mask.shape)}")
        return mask.to(device=text.device, dtype=torch.bool)

    def _attend_across_batch(self, tokens: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """The authors' attention (defect 1): (B, 2, D) -> (B, 2D), mixing utterances.

        Absent inputs are zeroed first (the original code had no notion of a missing modality).
        """
        zero = tokens.new_zeros(())
        x = torch.where(present.unsqueeze(-1), tokens, zero).flatten(1)  # (B, 2D)
        # A 2-D input to nn.MultiheadAttention is one unbatched sequence of length B.
        attended, _ = self.batch_attn(x, x, x, need_weights=False)
        return self.av_dropout(self.av_norm(attended + x))

    # -- forward --------------------------------------------------------------------------
    def forward(self, text: torch.Tensor, audio: torch.Tensor | None = None, visual: torch.Tensor | None = None,
                audio_present: torch.Tensor | None = None, visual_present: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> EmotionOutput:
        """Fuse one batch of utterance features.

        text:   (B, D) teacher features F_text (always present).
        audio:  (B, D) audio-student features, or None when no utterance has audio.
        visual: (B, D) visual-student features, or None when no utterance has video.
        audio_present / visual_present: (B,) bool; False rows are treated as missing, whatever
                the tensor holds there. Default: present wherever the tensor is given.
        labels: (B,) class ids; when given, ``loss`` is the cross-entropy.
        Returns EmotionOutput with logits (B, C) and features ``fused`` Z (B, D), ``shift`` H
        (B, D), ``lambda`` (B, 1) and ``attended`` F_av (B, 2D). With both modalities absent,
        H = 0 and Z = LayerNorm(F_text): a text-only prediction.
        """
        d = self.dims.kd_dim
        if text.dim() != 2 or text.shape[-1] != d:
            raise ValueError(f"text features must be (B, {d}), got {tuple(text.shape)}")
        present = torch.stack([self._presence(audio, audio_present, text),
                               self._presence(visual, visual_present, text)], dim=1)  # (B, 2)
        tokens = torch.stack([text.new_zeros(text.shape) if f is None else f for f in (audio, visual)], dim=1)
        if tokens.shape != (text.shape[0], len(NONVERBAL_MODALITIES), d):
            raise ValueError(f"audio/visual features must be (B, {d}) like the text, got {tuple(tokens.shape)}")

        if self.dims.paper_faithful:
            f_av = self._attend_across_batch(tokens, present)
        else:
            f_av = self.token_attn(tokens, present).flatten(1)  # (B, 2D), absent slots zero

        gate = F.relu(self.gate(torch.cat([text, f_av], dim=-1)))  # eq. (16)
        shift = gate * self.shift(f_av)                              # eq. (17)
        # With no non-verbal input, b2 alone would still shift the text; the prediction must
        # be the text-only one instead.
        shift = torch.where(present.any(dim=-1, keepdim=True), shift, shift.new_zeros(()))
        lam = shift_scale(text, shift, self.dims.theta)              # eq. (19)
        fused = self.fused_norm(text + lam * shift)                  # eq. (18) + LayerNorm
        logits = self.classifier(self.dropout(fused))
        loss = F.cross_entropy(logits.float(), labels) if labels is not None else None
        features = {"fused": fused, "shift": shift, "lambda": lam, "attended": f_av}
        return EmotionOutput.from_logits(logits, features, loss)

    # -- contract (mmer.contract) -----------------------------------------------------------
    def build_contract(self) -> Contract:
        d = self.dims.kd_dim
        return Contract("asf", "fusion", tuple(TensorSpec(m, "float32", (BATCH, d)) for m in ("text", "audio", "visual"))
                        + tuple(TensorSpec(f"{m}_present", "bool", (BATCH,)) for m in ("audio", "visual")),
                        feature="fused")

    def example_inputs(self, n: int = 2, seed: int = 0, data_root: Any = None, data: str = "meld-dev",
                       audio_range_s: Any = None) -> list:
        """Teacher/student-like features (unit-scale Gaussian vectors), some modalities absent."""
        from mmer.samples import asf_samples

        return asf_samples(n, self.dims.kd_dim, seed)

    @classmethod
    def processor_for(cls, dims: ASFDims, folder: Any = None, card: dict | None = None) -> Processor:
        return FeaturesProcessor(dims.kd_dim)


class FeaturesProcessor(Processor):
    """{"text": (D,), "audio": (D,) or None, "visual": (D,) or None} -> the ASF's inputs; an
    absent (None or missing) student feature is zeros with its ``*_present`` flag off."""

    def __init__(self, dim: int) -> None:
        self.dim = dim

    def inputs(self, raw: Any, **context: Any) -> dict:
        out = {}
        for m in ("text", "audio", "visual"):
            v = raw.get(m)
            out[m] = np.zeros((1, self.dim), np.float32) if v is None else np.asarray(v, np.float32).reshape(1, -1)
        for m in ("audio", "visual"):
            out[f"{m}_present"] = np.array([raw.get(m) is not None])
        return out
