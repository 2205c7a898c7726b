"""DERL: dual-encoder representation learning for multimodal sentiment analysis.

Paper: "基于双编码器表示学习的多模态情感分析" ("Multimodal sentiment analysis based on dual
encoder representation learning", DERL), 计算机系统应用 (Computer Systems & Applications) 33(4),
2024; seeds/002, REFERENCE.md section 1. Equation and table numbers below are the paper's.

Each modality m in {t, a, v} is encoded twice, by a cross-modal interaction encoder (CIE,
modality-invariant M_m) and an intra-modal encoder (IE, modality-specific H_m); two gates
between the layers mix the branches::

    Z_m   = BatchNorm(Conv1D(X_m, K_m)) + PE(L_m, d)              (2)-(4)
    N layers, for every modality in parallel:
      M_m   = CIE: m attends to its 1st source, the result to      (5)-(11)
              its 2nd source (hierarchical attention), then FFN
      H_m   = IE: a self-attention encoder layer                    (12)-(15)
      M''_m = dropout(softmax(H'_m F^T / ||F||)) H'_m + M_m         (16)-(20) EU -> next CIE
      H''_m = G * H_m + (1 - G) * M_m,  G = sigmoid(..)             (21)-(22) FU -> next IE
    F_m   = M_m + H_m (pooled over valid steps)                     (23)
    L_dis = (d(F_t,F_a) + d(F_t,F_v) + d(F_a,F_v)) / 3              (24)
    y_hat = outlayer(FC(ReLU(FC([F_t; F_a; F_v]))))                 (25)-(27)
    L     = MSE(y, y_hat) + beta * L_dis                            (28)-(29)

Table 1 (both datasets; the MOSI column is the default of :class:`DERLDims`):

    setting              CMU-MOSI   CMU-MOSEI
    optimizer            Adam       Adam
    batch size           48         48
    learning rate        5e-5       2e-5
    BERT learning rate   1e-5       1e-5       (text encoder fine-tuned on token ids)
    feature size d       50         50         hidden_dim
    attention heads      10         10         num_heads
    Transformer layer N  2          5          num_layers
    kernel size t/v/a    3/3/3      3/3/3      text_kernel / vision_kernel / audio_kernel
    beta (eq. 29)        0.005      0.5        distance_weight

Not reported by the paper (mmer's choices, Transformer conventions): epochs, dropout rates,
the FFN width (4d), early stopping. Reported results (Tables 2-3): MOSI MAE 0.693, Corr 0.798,
Acc-2 86.6, F1 86.5, Acc-7 48.3; MOSEI MAE 0.530, Corr 0.770, Acc-2 86.5, F1 86.5, Acc-7 54.1.

Where the paper is vague (each choice is named where it is made):

* Layer wiring: the EU output M''_m is the next layer's CIE input for every modality (the
  paper introduces EU as the better replacement of "a weighted sum fed to the next layer's
  cross-modal interaction encoder"), the FU output H''_m the next IE's input. Both gates run
  in every layer, the last included (with N = 1, Fig. 5's first point, they would otherwise
  never run), so Table 5's "w/o EU / FU" are ``use_enhancement`` / ``use_filter`` = False.
* CIE source order is t, a, v without the target (Table 4's "tav", "atv", "vta").
* ||F||_2 in eq. (19) is taken per key step j (||F_j||): the score is then the component of
  H'_i along the aggregated vector F_j, the paper's "contribution of the unimodal feature to
  the aggregated vector", and it does not depend on padding.
* Eqs. (23)-(25) concatenate sequences along the feature axis, which only type-checks for
  aligned data; MOSI/MOSEI are unaligned and eq. (27) outputs one score, so each F_m is the
  masked mean over its valid steps (B, d) before (24) and (25). d(.) is the Euclidean distance.
* BatchNorm of eq. (3) takes its training statistics over valid steps only (MMSA pads with
  zeros, MOSEI with -inf), so padding changes neither the statistics nor any prediction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mmer.models.blocks import sinusoidal_positions
from mmer.models.msa import (MsaDims, MsaModel, REGRESSION,
                             TextBackbone, check_outputs, lengths_to_mask, masked_mean)
from mmer.outputs import MsaOutput
from mmer.registry import MODELS

MODALITIES = ("text", "audio", "vision")
# The CIE's hierarchical order: each target reads the other two in t, a, v order (Table 4).
SOURCES = {"text": ("audio", "vision"), "audio": ("text", "vision"), "vision": ("text", "audio")}
REGRESSION_LOSSES = ("mse", "l1")   # eq. (28) is MSE; L1 is what MMSA trains MOSI/MOSEI with
NORM_EPS = 1e-6                     # floor on ||F_j|| in eq. (19), so a zero row never divides by zero


@dataclass(frozen=True)
class DERLDims(MsaDims):
    """Every size of DERL; saved inside its checkpoint. Defaults: Table 1's CMU-MOSI column."""

    hidden_dim: int = 50            # d, Table 1 "feature size" (MOSI and MOSEI)
    num_heads: int = 10             # Table 1 (MOSI and MOSEI)
    num_layers: int = 2             # N, Table 1 (MOSI 2, MOSEI 5)
    text_kernel: int = 3            # K_m of eq. (2), Table 1 (3/3/3 on both)
    audio_kernel: int = 3
    vision_kernel: int = 3
    ffn_dim: int = 200              # Feedforward of eqs. (11)/(15): not in the paper; 4d as in Transformers
    attn_dropout: float = 0.1       # on attention weights; not in the paper
    dropout: float = 0.1            # on residual branches; not in the paper
    enhance_dropout: float = 0.1    # dropout(W_F) of eq. (20); rate not in the paper
    fusion_dropout: float = 0.1     # inside the fusion MLP of eq. (26); not in the paper
    distance_weight: float = 0.005  # beta of eq. (29), Table 1 (MOSI 0.005, MOSEI 0.5)
    regression_loss: str = "mse"    # eq. (28); "l1" for MMSA's usual objective
    use_enhancement: bool = True    # False = Table 5 "w/o EU"
    use_filter: bool = True         # False = Table 5 "w/o FU"


def l2_distance_loss(text: torch.Tensor, audio: torch.Tensor, vision: torch.Tensor) -> torch.Tensor:
    """Eq. (24): L_dis = (dis(F_t, F_a) + dis(F_t, F_v) + dis(F_a, F_v)) / 3.

    dis is the Euclidean distance ||x - y||_2 of each utterance's pooled representations,
    averaged over the batch. text, audio, vision: (B, d). Returns a scalar.
    """
    pairs = ((text, audio), (text, vision), (audio, vision))
    return torch.stack([(x - y).norm(p=2, dim=-1) for x, y in pairs]).mean()


def _mask_keys(scores: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
    """Exclude padded keys from a softmax. scores: (B, ..., Lk); key_mask: (B, Lk) bool."""
    shape = (key_mask.shape[0],) + (1,) * (scores.dim() - 2) + (key_mask.shape[1],)
    # finfo.min, not -inf: a row never has all keys masked (lengths_to_mask keeps step 0), but
    # a finite floor keeps softmax NaN-free even if one did.
    return scores.masked_fill(~key_mask.view(shape), torch.finfo(scores.dtype).min)


class MaskedBatchNorm1d(nn.BatchNorm1d):
    """Eq. (3): BatchNorm over channels whose training statistics count valid steps only.

    Eval mode uses the running statistics, a per-channel affine map, so predictions stay
    batch-independent. x: (B, C, L); mask: (B, L) bool. Returns (B, C, L).
    """

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if not self.training:
            return super().forward(x)
        w = mask.unsqueeze(1).to(x.dtype)                                 # (B, 1, L)
        count = w.sum().clamp(min=1.0)
        mean = (x * w).sum(dim=(0, 2)) / count                            # (C,)
        var = ((x - mean[None, :, None]) ** 2 * w).sum(dim=(0, 2)) / count
        with torch.no_grad():
            self.num_batches_tracked += 1
            # momentum None means a cumulative average, as in nn.BatchNorm1d
            rate = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            unbiased = var * count / (count - 1.0).clamp(min=1.0)
            self.running_mean.lerp_(mean.detach(), rate)
            self.running_var.lerp_(unbiased.detach(), rate)
        x_hat = (x - mean[None, :, None]) / torch.sqrt(var[None, :, None] + self.eps)
        return x_hat * self.weight[None, :, None] + self.bias[None, :, None]


class ModalityEmbedding(nn.Module):
    """Eqs. (2)-(4): Conv1D to width d, BatchNorm, sinusoidal positions.

    Padded steps are zeroed first, so a valid step's convolution window sees zeros past the
    clip's end whatever the padding held. x: (B, L, D_in); mask: (B, L). Returns (B, L, d).
    """

    def __init__(self, in_dim: int, dim: int, kernel: int) -> None:
        super().__init__()
        # No bias: BatchNorm right after removes any constant offset.
        self.conv = nn.Conv1d(in_dim, dim, kernel, padding=kernel // 2, bias=False)
        self.norm = MaskedBatchNorm1d(dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = torch.where(mask.unsqueeze(-1), x, x.new_zeros(()))
        z = self.norm(self.conv(x.transpose(1, 2)), mask).transpose(1, 2)   # (2), (3)
        return z + sinusoidal_positions(z.shape[1], z.shape[2], z)          # (4)


class MultiHeadAttention(nn.Module):
    """softmax((Q W_Q)(S W_K)^T / sqrt(d_h)) (S W_V) per head, heads concatenated, times W_O.

    Eqs. (5)-(6) and (8)-(9) (S another modality) and (12)-(13) (S = Q). The paper scales by
    sqrt(d); per-head d_h = d / h is the Transformer convention and keeps softmax from saturating
    as heads are added. query: (B, Lq, d); source: (B, Lk, d); key_mask: (B, Lk). Returns (B, Lq, d).
    """

    def __init__(self, dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = num_heads
        self.scale = 1.0 / math.sqrt(dim // num_heads)
        self.q, self.k, self.v = (nn.Linear(dim, dim) for _ in range(3))
        self.out = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)           # (B, L, d) -> (B, h, L, d_h)

    def forward(self, query: torch.Tensor, source: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        q, k, v = (self._split_heads(f(x)) for f, x in ((self.q, query), (self.k, source), (self.v, source)))
        scores = _mask_keys(q @ k.transpose(-2, -1) * self.scale, key_mask)
        attended = self.dropout(scores.softmax(dim=-1)) @ v
        return self.out(attended.transpose(1, 2).flatten(2))


class FeedForward(nn.Sequential):
    """Feedforward of eqs. (11) and (15): two linear layers with a ReLU between. (B, L, d) -> same."""

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, dim))


class CrossModalInteractionEncoder(nn.Module):
    """CIE, eqs. (5)-(11), for one target modality: hierarchical attention over two sources."""

    def __init__(self, dims: DERLDims) -> None:
        super().__init__()
        d = dims.hidden_dim
        self.attn_first = MultiHeadAttention(d, dims.num_heads, dims.attn_dropout)
        self.attn_second = MultiHeadAttention(d, dims.num_heads, dims.attn_dropout)
        self.ffn = FeedForward(d, dims.ffn_dim, dims.dropout)
        self.norm_first, self.norm_second, self.norm_out = (nn.LayerNorm(d) for _ in range(3))
        self.dropout = nn.Dropout(dims.dropout)

    def forward(self, target: torch.Tensor, first: torch.Tensor, first_mask: torch.Tensor,
                second: torch.Tensor, second_mask: torch.Tensor) -> torch.Tensor:
        """target: (B, L, d); first/second: source sequences (B, L1, d), (B, L2, d) with their
        masks. Returns M_m (B, L, d)."""
        m_ta = self.norm_first(target + self.dropout(self.attn_first(target, first, first_mask)))      # (5)-(7)
        m_tav = self.norm_second(m_ta + self.dropout(self.attn_second(m_ta, second, second_mask)))    # (8)-(10)
        return self.norm_out(m_tav + self.dropout(self.ffn(m_tav)))                                    # (11)


class IntraModalEncoder(nn.Module):
    """IE, eqs. (12)-(15): one post-norm self-attention encoder layer. (B, L, d) -> H_m (B, L, d)."""

    def __init__(self, dims: DERLDims) -> None:
        super().__init__()
        d = dims.hidden_dim
        self.attn = MultiHeadAttention(d, dims.num_heads, dims.attn_dropout)
        self.ffn = FeedForward(d, dims.ffn_dim, dims.dropout)
        self.norm_attn, self.norm_out = nn.LayerNorm(d), nn.LayerNorm(d)
        self.dropout = nn.Dropout(dims.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        a = self.norm_attn(x + self.dropout(self.attn(x, x, mask)))     # (12)-(14)
        return self.norm_out(a + self.dropout(self.ffn(a)))             # (15)


class EnhancementUnit(nn.Module):
    """EU, eqs. (16)-(20): add to M_m the part of H_m that contributes to their aggregate."""

    def __init__(self, dim: int, dropout: float) -> None:
        super().__init__()
        self.proj_invariant = nn.Linear(dim, dim, bias=False)   # W_M, eq. (16)
        self.proj_specific = nn.Linear(dim, dim, bias=False)    # W_H, eq. (17)
        self.dropout = nn.Dropout(dropout)

    def forward(self, invariant: torch.Tensor, specific: torch.Tensor,
                mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """invariant M_m, specific H_m: (B, L, d); mask: (B, L). Returns M''_m (B, L, d) and
        the weights W_F (B, L, L), zero on padded keys."""
        m = self.proj_invariant(invariant)                                   # (16)
        h = self.proj_specific(specific)                                     # (17)
        agg = m * h                                                          # (18)
        key_norm = agg.norm(p=2, dim=-1).clamp(min=NORM_EPS).unsqueeze(1)   # ||F_j||, (B, 1, L)
        weights = _mask_keys(h @ agg.transpose(1, 2) / key_norm, mask).softmax(dim=-1)   # (19)
        return self.dropout(weights) @ h + invariant, weights               # (20)


class FilterUnit(nn.Module):
    """FU, eqs. (21)-(22): a gate that keeps H_m where it agrees with the task and falls back
    to the invariant M_m elsewhere."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gate_invariant = nn.Linear(dim, dim, bias=False)   # W'_M
        self.gate_specific = nn.Linear(dim, dim)                # W'_H and b

    def forward(self, invariant: torch.Tensor, specific: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """invariant M_m, specific H_m: (..., d). Returns H''_m and the gate G, both (..., d)."""
        gate = torch.sigmoid(self.gate_invariant(invariant) + self.gate_specific(specific))   # (21)
        return gate * specific + (1.0 - gate) * invariant, gate                              # (22)


class DualEncoderLayer(nn.Module):
    """One of the N feature-encoding layers (Fig. 2): CIE, IE, EU and FU for every modality."""

    def __init__(self, dims: DERLDims) -> None:
        super().__init__()
        d = dims.hidden_dim
        self.cie = nn.ModuleDict({m: CrossModalInteractionEncoder(dims) for m in MODALITIES})
        self.ie = nn.ModuleDict({m: IntraModalEncoder(dims) for m in MODALITIES})
        self.eu = nn.ModuleDict({m: EnhancementUnit(d, dims.enhance_dropout) for m in MODALITIES}) \
            if dims.use_enhancement else None
        self.fu = nn.ModuleDict({m: FilterUnit(d) for m in MODALITIES}) if dims.use_filter else None

    def forward(self, invariant: dict[str, torch.Tensor], specific: dict[str, torch.Tensor],
                masks: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """invariant / specific: per modality (B, L_m, d), the previous layer's M''_m / H''_m
        (Z_m at the first layer); masks: (B, L_m). Returns this layer's M''_m and H''_m."""
        new_invariant, new_specific = {}, {}
        for m in MODALITIES:
            first, second = SOURCES[m]
            # All three CIEs read the previous layer's outputs: the modalities update in parallel.
            inv = self.cie[m](invariant[m], invariant[first], masks[first], invariant[second], masks[second])
            spec = self.ie[m](specific[m], masks[m])
            new_invariant[m] = self.eu[m](inv, spec, masks[m])[0] if self.eu is not None else inv
            new_specific[m] = self.fu[m](inv, spec)[0] if self.fu is not None else spec
        return new_invariant, new_specific


@MODELS.register("derl")
class DERL(MsaModel):
    """DERL over the MMSA inputs (text features or token ids, audio, vision sequences)."""

    registry_name = "derl"
    Dims = DERLDims

    def __init__(self, dims: DERLDims, encoder_config=None) -> None:
        super().__init__(dims)
        check_outputs(dims.label_set, dims.num_outputs)
        if dims.hidden_dim % dims.num_heads:
            raise ValueError(f"hidden_dim {dims.hidden_dim} is not divisible by {dims.num_heads} heads")
        kernels = {"text": dims.text_kernel, "audio": dims.audio_kernel, "vision": dims.vision_kernel}
        if any(k < 1 or k % 2 == 0 for k in kernels.values()):
            raise ValueError(f"kernel sizes must be odd so a sequence keeps its length, got {kernels}")
        if dims.regression_loss not in REGRESSION_LOSSES:
            raise ValueError(f"regression_loss must be one of {REGRESSION_LOSSES}, got {dims.regression_loss!r}")
        if dims.num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {dims.num_layers}")
        self.text = TextBackbone(dims.text_encoder, dims.text_dim, encoder_config)
        widths = {"text": self.text.width, "audio": dims.audio_dim, "vision": dims.vision_dim}
        d = dims.hidden_dim
        self.embed = nn.ModuleDict({m: ModalityEmbedding(widths[m], d, kernels[m]) for m in MODALITIES})
        self.layers = nn.ModuleList(DualEncoderLayer(dims) for _ in range(dims.num_layers))
        fused = d * len(MODALITIES)
        self.fusion = nn.Sequential(nn.Linear(fused, fused), nn.ReLU(), nn.Dropout(dims.fusion_dropout),
                                    nn.Linear(fused, fused))                                  # eq. (26)
        self.outlayer = nn.Linear(fused, dims.num_outputs)                                   # eq. (27)

    def forward(self, text: torch.Tensor, text_mask: torch.Tensor, audio: torch.Tensor,
                audio_lengths: torch.Tensor, vision: torch.Tensor, vision_lengths: torch.Tensor) -> MsaOutput:
        """One batch of utterances.

        text: (B, Lt, text_dim) features or (B, Lt) token ids; text_mask: (B, Lt) bool.
        audio: (B, La, audio_dim), audio_lengths: (B,); vision: (B, Lv, vision_dim),
        vision_lengths: (B,). Steps past a length (or off the text mask) never change the output.
        Returns MsaOutput: prediction (B, num_outputs); features "text"/"audio"/"vision" F_m
        (B, d) of eq. (23), "invariant_*" M_m and "specific_*" H_m (B, d), "concat" F (B, 3d)
        and "fused" F' (B, 3d); losses {"distance": beta * L_dis}.
        """
        first_step = torch.arange(text_mask.shape[1], device=text_mask.device) == 0
        masks = {"text": text_mask.bool() | first_step,   # an empty text row keeps step 0, like lengths_to_mask
                 "audio": lengths_to_mask(audio_lengths, audio.shape[1]),
                 "vision": lengths_to_mask(vision_lengths, vision.shape[1])}
        inputs = {"text": self.text(text, text_mask), "audio": audio, "vision": vision}
        z = {m: self.embed[m](inputs[m], masks[m]) for m in MODALITIES}    # eqs. (2)-(4)
        invariant, specific = z, z
        for layer in self.layers:
            invariant, specific = layer(invariant, specific, masks)

        features: dict[str, torch.Tensor] = {}
        for m in MODALITIES:
            features[f"invariant_{m}"] = masked_mean(invariant[m], masks[m])
            features[f"specific_{m}"] = masked_mean(specific[m], masks[m])
            features[m] = features[f"invariant_{m}"] + features[f"specific_{m}"]   # eq. (23), pooled
        distance = l2_distance_loss(features["text"], features["audio"], features["vision"])   # eq. (24)
        features["concat"] = torch.cat([features[m] for m in MODALITIES], dim=-1)              # eq. (25)
        features["fused"] = self.fusion(features["concat"])                                     # eq. (26)
        prediction = self.outlayer(features["fused"])                                           # eq. (27)
        return MsaOutput(prediction=prediction, features=features,
                         losses={"distance": self.dims.distance_weight * distance})            # beta L_dis, (29)

    def task_loss(self, prediction: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Eq. (28): mean squared error for scores (``regression_loss="l1"``: MMSA's L1);
        cross-entropy for a classification label set. prediction: (B, C); labels: (B,)."""
        if self.dims.label_set == REGRESSION and self.dims.regression_loss == "mse":
            return F.mse_loss(prediction.float().view(-1), labels.float().view(-1))
        return super().task_loss(prediction, labels)
