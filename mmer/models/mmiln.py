"""MMILN: multi-task multimodal interactive learning for sentiment analysis, built on Self-MM.

Paper: Xue, Li, Wang, Liao, Zheng, Fu, Li, "Sentiment classification method based on
multitasking and multimodal interactive learning" (CCL 2023; seeds/003, equations as numbered
there). Unimodal label generation (ULGM) follows Self-MM (Yu et al., AAAI 2021) and its MMSA
code, which MMILN keeps unchanged (sec. 4.2).

Text is the central modality; audio and vision complement it, layer by layer:

    M_a = LSTM(X_a), M_v = LSTM(X_v), M_t = BERT(X_t)               (1)-(3) sequences
    X_m^0 = Conv(M_m), m in {t, a, v}; X_ta^0 = X_tv^0 = X_t^0      (4)
    layer i = 1..l:
      X_n^i, X_mh,n^i = GateTransformer(X_n^{i-1}), n in {a, v}     (5)-(12)
      X_f^i = SAG-Transformer(X_f^{i-1}, X_mh,n^i), (f, n) in {(ta, a), (tv, v)}   (13)-(23)
    F_m* = FFN([X_ta^l ; X_tv^l]), y_m = FFN(F_m*)                 (27)
    F_n* = FFN(X_n^l), y_n = FFN(F_n*)                              (28)

Objective (36): MSE on y_m + tanh(|y_n - y_m|)-weighted L1 on the audio/vision heads against
labels y_n that ULGM generates (29)-(34) + alpha * CMD (24)-(25) + beta * soft orthogonality (26).
The paper has no text head: text is the centre, its unimodal tasks are audio and vision only.

Sequence padding: every mask is a prefix mask (valid steps first). The bidirectional GRUs run
their backward pass over each sequence's valid steps reversed, so padding never reaches a
valid step; projections are kernel-1 convolutions for the same reason.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmer.models.blocks import LAYER_NORM_EPS
from mmer.models.msa import (MsaDims, MsaModel, REGRESSION,
                             TextBackbone, check_outputs, lengths_to_mask, masked_mean)
from mmer.outputs import MsaOutput
from mmer.registry import MODELS

UNIMODAL = ("audio", "vision")          # the unimodal subtasks of eq. (28)/(35)
FUSED = "fused"
PROJECTION_KERNEL = 1                   # eq. (4) Conv: kernel 1, so padded steps never leak into valid ones
RELATIVE_EPS = 1e-8                     # epsilon of eq. (31) and of eq. (34)'s 1/alpha_m (Self-MM's MIN)


@dataclass(frozen=True)
class MMILNDims(MsaDims):
    """Every size of MMILN; saved inside its checkpoint. Defaults: MOSI."""

    # Self-MM's MOSI settings (MMSA config_regression.json, self_mm), kept by MMILN (sec. 4.2).
    audio_lstm_dim: int = 16            # a_lstm_hidden_size, eq. (1)
    vision_lstm_dim: int = 32           # v_lstm_hidden_size, eq. (2)
    post_fusion_dim: int = 128          # width of F_m*, eq. (27)
    post_audio_dim: int = 16            # width of F_a*, eq. (28)
    post_vision_dim: int = 32           # width of F_v*, eq. (28)
    post_fusion_dropout: float = 0.0    # MOSEI: 0.1
    post_audio_dropout: float = 0.1     # MOSEI: 0.0
    post_vision_dropout: float = 0.0
    label_bound: float = 3.0            # H: generated labels are clipped to [-H, H]
    exclude_zero: bool = True           # neutral samples belong to neither class centre
    # Hierarchical fusion module: the paper reports only its depth.
    num_layers: int = 3                 # modality fusion layers l (Fig. 4: best at 3)
    hidden_dim: int = 64                # d_s of eq. (4): not reported, mmer's choice
    num_heads: int = 4                  # not reported, mmer's choice
    ffn_dim: int = 256                  # FFN of eqs. (12)/(23): 4 d_s, the Transformer convention
    dropout: float = 0.1                # attention and FFN dropout: not reported, mmer's choice
    # Losses of eq. (36): weights not reported; MISA's MOSI weights in MMSA (same two losses).
    cmd_moments: int = 5                # K of eq. (24) (MISA uses 5)
    cmd_span: float = 1.0               # b - a of eq. (24); MISA's code uses 1
    sim_weight: float = 0.3             # alpha
    diff_weight: float = 0.1            # beta


# -- pure losses ----------------------------------------------------------------------------
def cmd(x: torch.Tensor, y: torch.Tensor, moments: int, span: float = 1.0) -> torch.Tensor:
    """Central moment discrepancy, eq. (24), between two batches of representations.

        CMD_K(X, Y) = 1/|b-a| ||E(X) - E(Y)||_2 + sum_{k=2..K} 1/|b-a|^k ||C_k(X) - C_k(Y)||_2
        C_k(X) = E((x - E(X))^k)   (element-wise powers; expectations over the batch)

    x, y: (B, D) samples of the two distributions; moments: K >= 1; span: b - a, the width of
    the interval the features lie in. Returns a scalar.
    """
    if moments < 1:
        raise ValueError(f"CMD needs at least one moment, got {moments}")
    mx, my = x.mean(dim=0), y.mean(dim=0)
    cx, cy = x - mx, y - my
    total = torch.linalg.vector_norm(mx - my) / span
    for k in range(2, moments + 1):
        total = total + torch.linalg.vector_norm(cx.pow(k).mean(dim=0) - cy.pow(k).mean(dim=0)) / span ** k
    return total


def difference_loss(h1: torch.Tensor, h2: torch.Tensor, normalise: bool = True) -> torch.Tensor:
    """Soft orthogonality, eq. (26): ||h1^T h2||_F^2 for one pair of representations.

    h1: (B, D1), h2: (B, D2). ``normalise=False``: eq. (26) as printed, the squared Frobenius
    norm of the (D1, D2) matrix h1^T h2. ``normalise=True`` (MISA's code for the same loss; the
    model's choice): centre each column over the batch, scale each row to unit L2 norm (norm
    detached, +1e-6), and average the squared entries instead of summing them, so the value
    does not grow with batch size or width. Returns a scalar.
    """
    if normalise:
        h1 = h1 - h1.mean(dim=0, keepdim=True)
        h2 = h2 - h2.mean(dim=0, keepdim=True)
        h1 = h1 / (h1.norm(dim=1, keepdim=True).detach() + 1e-6)
        h2 = h2 / (h2.norm(dim=1, keepdim=True).detach() + 1e-6)
        return (h1.t() @ h2).pow(2).mean()
    return (h1.t() @ h2).pow(2).sum()


# -- ULGM, eqs. (29)-(34) -------------------------------------------------------------------
def relative_distance(features: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """Eqs. (29)-(31): alpha = (D^n - D^p) / (D^p + eps), D^c = ||F - C^c||_2 / sqrt(d).

    features: (B, d); positive, negative: (d,) class centres. Returns (B,); > 0 when a sample
    sits nearer the positive centre.
    """
    scale = math.sqrt(features.shape[-1])
    d_pos = torch.linalg.vector_norm(features - positive, dim=-1) / scale
    d_neg = torch.linalg.vector_norm(features - negative, dim=-1) / scale
    return (d_neg - d_pos) / (d_pos + RELATIVE_EPS)


def shifted_label(y_m: torch.Tensor, alpha_s: torch.Tensor, alpha_m: torch.Tensor, bound: float) -> torch.Tensor:
    """Eqs. (32)-(34): y_s = y_m * alpha_s / (2 alpha_m) + (y_m + alpha_s - alpha_m) / 2
    = y_m + (alpha_s - alpha_m) / 2 * (y_m + alpha_m) / alpha_m, clipped to [-bound, bound].

    All (B,). The ratio takes eps in its denominator, as Self-MM's code does.
    """
    new = 0.5 * y_m * alpha_s / (alpha_m + RELATIVE_EPS) + 0.5 * (y_m + alpha_s - alpha_m)
    return new.clamp(-bound, bound)


def momentum_update(old: torch.Tensor, new: torch.Tensor, visit: torch.Tensor) -> torch.Tensor:
    """Self-MM's momentum: y^(n) = (n-1)/(n+1) y^(n-1) + 2/(n+1) y_new, n = the epoch (here: how
    many times the sample has been seen, this visit included). All (B,)."""
    n = visit.to(old.dtype)
    return (n - 1) / (n + 1) * old + 2 / (n + 1) * new


class UnimodalLabelGenerator(nn.Module):
    """Self-MM's ULGM: per-sample unimodal labels, class centres and a feature memory.

    Everything lives in non-persistent buffers (never in checkpoints), sized by :meth:`reset`
    from the number of training samples and indexed by the batch's ``index``. Per training
    batch (:meth:`update`, Self-MM's order): samples seen before get new labels from the
    current centres (momentum-averaged), then their features are stored, then the centres are
    recomputed over every sample seen so far.
    """

    def __init__(self, feature_dims: Mapping[str, int], label_bound: float, exclude_zero: bool) -> None:
        super().__init__()
        self.names = tuple(feature_dims)        # FUSED first, then UNIMODAL
        self.label_bound = label_bound
        self.exclude_zero = exclude_zero
        self.register_buffer("visits", torch.zeros(0, dtype=torch.long), persistent=False)
        for name, dim in feature_dims.items():   # centres: row 0 positive, row 1 negative
            for kind, shape in (("labels", (0,)), ("features", (0, dim)), ("centres", (2, dim))):
                self.register_buffer(f"{kind}_{name}", torch.zeros(shape), persistent=False)

    @property
    def num_samples(self) -> int:
        return int(self.visits.shape[0])

    def labels(self, name: str) -> torch.Tensor:
        """(N,) current labels of one task (``"fused"``: the multimodal labels)."""
        return getattr(self, f"labels_{name}")

    def centres(self, name: str) -> torch.Tensor:
        """(2, d): positive centre, negative centre."""
        return getattr(self, f"centres_{name}")

    def reset(self, labels: torch.Tensor) -> None:
        """Size the memory for ``len(labels)`` training samples; every label starts at y_m."""
        labels = labels.detach().float().view(-1).to(self.visits.device)
        n = labels.shape[0]
        self.visits = torch.zeros(n, dtype=torch.long, device=labels.device)
        for name in self.names:
            dim = self.centres(name).shape[1]
            for kind, value in (("labels", labels.clone()), ("features", labels.new_zeros(n, dim)),
                                ("centres", labels.new_zeros(2, dim))):
                setattr(self, f"{kind}_{name}", value)

    def check_index(self, index: torch.Tensor | None) -> torch.Tensor:
        """The batch's (B,) training positions on the memory's device; refuses an empty memory."""
        if self.num_samples == 0:
            raise RuntimeError("MMILN's unimodal label memory is empty: call model.prepare(train_arrays) with the "
                               "training split before computing a training-mode loss")
        if index is None:
            raise ValueError("MMILN's training loss needs each sample's index in the training split (batch['index'])")
        index = index.view(-1).to(self.visits.device)
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= self.num_samples):
            raise IndexError(f"sample index out of range: the label memory holds {self.num_samples} training samples "
                             f"(prepare() was given another split?), got {int(index.min())}..{int(index.max())}")
        return index

    @torch.no_grad()
    def update(self, features: Mapping[str, torch.Tensor], y_m: torch.Tensor, index: torch.Tensor) -> None:
        """features: name -> (B, d) detached F* of the batch; y_m: (B,) labels; index: (B,)."""
        self.visits[index] += 1
        visit = self.visits[index]
        self.labels(FUSED)[index] = y_m.float()
        seen_before = visit > 1   # a first visit has no stored features for the centres yet
        feats = {name: features[name].detach().float() for name in self.names}
        alpha_m = relative_distance(feats[FUSED], *self.centres(FUSED))
        for name in self.names:
            if name == FUSED:
                continue
            alpha_s = relative_distance(feats[name], *self.centres(name))
            new = shifted_label(y_m.float(), alpha_s, alpha_m, self.label_bound)
            old = self.labels(name)[index]
            self.labels(name)[index] = torch.where(seen_before, momentum_update(old, new, visit), old)
        for name in self.names:
            getattr(self, f"features_{name}")[index] = feats[name]
        self.update_centres()

    @torch.no_grad()
    def update_centres(self) -> None:
        """Mean stored feature of the positive / negative samples of each task, by that task's
        own labels; samples never seen yet (zero features) take no part."""
        seen = self.visits > 0
        for name in self.names:
            labels, features = self.labels(name), getattr(self, f"features_{name}")
            positive = (labels > 0) if self.exclude_zero else (labels >= 0)
            for row, members in enumerate((positive & seen, (labels < 0) & seen)):
                w = members.float().unsqueeze(1)
                self.centres(name)[row] = (features * w).sum(0) / w.sum().clamp(min=1.0)


# -- the two Transformers of a modality fusion layer (Fig. 3) -------------------------------
def reverse_valid(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Reverse each sequence's valid prefix in time, padding left in place (its own inverse).

    x: (B, L, D); mask: (B, L) bool prefix mask. Returns (B, L, D).
    """
    steps = torch.arange(x.shape[1], device=x.device).unsqueeze(0)            # (1, L)
    lengths = mask.long().sum(dim=1, keepdim=True)                            # (B, 1)
    source = torch.where(steps < lengths, lengths - 1 - steps, steps)         # (B, L)
    return x.gather(1, source.unsqueeze(-1).expand(-1, -1, x.shape[2]))


class MaskedBiGRU(nn.Module):
    """BiGRU of eqs. (7)/(16) whose backward direction starts at each sequence's last valid step.
    (B, L, D) -> (B, L, D): D/2 per direction, so W_r, W_c stay d_s x d_s."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.forward_gru = nn.GRU(dim, dim // 2, batch_first=True)
        self.backward_gru = nn.GRU(dim, dim // 2, batch_first=True)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        ahead, _ = self.forward_gru(x)
        behind, _ = self.backward_gru(reverse_valid(x, mask))
        return torch.cat([ahead, reverse_valid(behind, mask)], dim=-1)


class GatedBlock(nn.Module):
    """What both Transformers of Fig. 3 share: one attention whose output and residual are gated
    by a summary of the block's input, then LayerNorm, FFN, LayerNorm."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.summary = MaskedBiGRU(dim)
        self.retain_gate = nn.Linear(dim, dim, bias=False)      # W_r, eqs. (8)/(19)
        self.compound_gate = nn.Linear(dim, dim, bias=False)    # W_c, eqs. (9)/(20)
        self.attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ffn_dim, dim))
        self.ffn_norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.dropout = nn.Dropout(dropout)

    def gated(self, x: torch.Tensor, mask: torch.Tensor, attended: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, L, D) the block input; mask: (B, L); attended: (B, L, D) the attention output.
        Returns the block output (B, L, D) and the summary h (B, D)."""
        h = masked_mean(self.summary(x, mask), mask)                            # (7)/(16)
        g_r = torch.sigmoid(self.retain_gate(h)).unsqueeze(1)                   # (8)/(19)
        g_c = torch.sigmoid(self.compound_gate(h)).unsqueeze(1)                 # (9)/(20)
        # (11) as printed gates X_n^i, the output being defined; the residual is the input (cf. (22)).
        out = self.norm(g_c * self.dropout(attended) + g_r * x)                 # (11)/(22)
        return self.ffn_norm(out + self.dropout(self.ffn(out))), h              # (12)/(23)


class GateTransformer(GatedBlock):
    """Eqs. (7)-(12): gated self-attention over one non-verbal modality."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: (B, L, D) X_n^{i-1}; mask: (B, L) bool. Returns X_n^i (B, L, D), the attention
        output X_mh,n^i (B, L, D) and the summary h_n^i (B, D)."""
        mh, _ = self.attn(x, x, x, key_padding_mask=~mask, need_weights=False)              # (10)
        out, h = self.gated(x, mask, mh)
        return out, mh, h


class SAGTransformer(GatedBlock):
    """Eqs. (15)-(23): the text-centred stream X_f attends to a gated unimodal attention output."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__(dim, num_heads, ffn_dim, dropout)
        self.self_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.source_gate = nn.Linear(dim, dim, bias=False)      # W_s, eq. (17)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, source: torch.Tensor,
                source_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, Lt, D) X_f^{i-1}; mask: (B, Lt); source: (B, Ls, D) X_mh,n^i; source_mask:
        (B, Ls). Returns X_f^i (B, Lt, D) and the summary h_f^i (B, D)."""
        queries, _ = self.self_attn(x, x, x, key_padding_mask=~mask, need_weights=False)          # (15)
        source = torch.sigmoid(self.source_gate(source)) * source                                 # (17)-(18)
        r, _ = self.attn(queries, source, source, key_padding_mask=~source_mask, need_weights=False)  # (21)
        return self.gated(x, mask, r)                                                            # (16), (19)-(23)


def fusion_layer(dim: int, num_heads: int, ffn_dim: int, dropout: float) -> nn.ModuleDict:
    """One modality fusion layer (Fig. 3): a GateTransformer per non-verbal modality and a
    SAG-Transformer per text-centred pair."""
    sizes = (dim, num_heads, ffn_dim, dropout)
    return nn.ModuleDict({"audio": GateTransformer(*sizes), "vision": GateTransformer(*sizes),
                          "text_audio": SAGTransformer(*sizes), "text_vision": SAGTransformer(*sizes)})


class Head(nn.Module):
    """Self-MM's post layers: F* = relu(W1 dropout(x)); y = W3 relu(W2 F*)."""

    def __init__(self, in_dim: int, dim: int, dropout: float) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.feature = nn.Linear(in_dim, dim)
        self.hidden = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, in_dim) -> F* (B, dim), prediction (B, 1)."""
        feature = F.relu(self.feature(self.dropout(x)))
        return feature, self.out(F.relu(self.hidden(feature)))


@MODELS.register("mmiln")
class MMILN(MsaModel):
    """MMILN over precomputed text features or a fine-tuned language model (``text_encoder``)."""

    registry_name = "mmiln"
    Dims = MMILNDims

    def __init__(self, dims: MMILNDims, encoder_config: Any = None) -> None:
        super().__init__(dims)
        check_outputs(dims.label_set, dims.num_outputs)
        if dims.label_set != REGRESSION:
            raise ValueError(f"MMILN regresses sentiment scores (its label generation needs signed scores); "
                             f"label_set must be '{REGRESSION}', got '{dims.label_set}'")
        d = dims.hidden_dim
        if dims.num_layers < 1:
            raise ValueError(f"num_layers must be at least 1 (the paper tries 1-6), got {dims.num_layers}")
        if d % dims.num_heads or d % 2:
            raise ValueError(f"hidden_dim {d} must be even (BiGRU halves) and divisible by {dims.num_heads} heads")
        self.text = TextBackbone(dims.text_encoder, dims.text_dim, encoder_config)
        self.audio_lstm = nn.LSTM(dims.audio_dim, dims.audio_lstm_dim, batch_first=True)      # (1)
        self.vision_lstm = nn.LSTM(dims.vision_dim, dims.vision_lstm_dim, batch_first=True)   # (2)
        self.text_proj = nn.Conv1d(self.text.width, d, PROJECTION_KERNEL)                      # (4)
        self.audio_proj = nn.Conv1d(dims.audio_lstm_dim, d, PROJECTION_KERNEL)
        self.vision_proj = nn.Conv1d(dims.vision_lstm_dim, d, PROJECTION_KERNEL)
        self.layers = nn.ModuleList(fusion_layer(d, dims.num_heads, dims.ffn_dim, dims.dropout)
                                    for _ in range(dims.num_layers))
        self.fusion_head = Head(2 * d, dims.post_fusion_dim, dims.post_fusion_dropout)        # (27)
        self.audio_head = Head(d, dims.post_audio_dim, dims.post_audio_dropout)               # (28)
        self.vision_head = Head(d, dims.post_vision_dim, dims.post_vision_dropout)
        self.ulgm = UnimodalLabelGenerator({FUSED: dims.post_fusion_dim, "audio": dims.post_audio_dim,
                                            "vision": dims.post_vision_dim}, dims.label_bound, dims.exclude_zero)

    @staticmethod
    def _project(conv: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
        """(B, L, Din) -> (B, L, d_s) through a kernel-1 Conv1d."""
        return conv(x.transpose(1, 2)).transpose(1, 2)

    def forward(self, text: torch.Tensor, text_mask: torch.Tensor, audio: torch.Tensor, audio_lengths: torch.Tensor,
                vision: torch.Tensor, vision_lengths: torch.Tensor) -> MsaOutput:
        """text: (B, Lt, text_dim) features or (B, Lt) ids; text_mask: (B, Lt) bool prefix mask;
        audio: (B, La, audio_dim); audio_lengths: (B,); vision: (B, Lv, vision_dim); vision_lengths: (B,).

        Returns MsaOutput: prediction y_m (B, 1); aux {"audio", "vision"}: y_a, y_v (B, 1);
        features "fused" F_m* (B, post_fusion_dim), "audio"/"vision" F_n*, "text" the pooled
        X_t^0 (B, d_s), "text_audio"/"text_vision" X_f^l (B, Lt, d_s), and the last layer's
        summaries "h_text_audio", "h_text_vision", "h_audio", "h_vision" (B, d_s); losses
        {"similarity": alpha * CMD, "difference": beta * soft orthogonality}, eqs. (25), (26), (36).
        """
        # Step 0 always counts, so attention and pooling never see an all-padded row.
        first = torch.arange(text_mask.shape[1], device=text_mask.device).unsqueeze(0) == 0
        t_mask = text_mask.bool() | first
        a_mask = lengths_to_mask(audio_lengths, audio.shape[1])
        v_mask = lengths_to_mask(vision_lengths, vision.shape[1])

        x_t = self._project(self.text_proj, self.text(text, t_mask))                  # (3)-(4)
        x_a = self._project(self.audio_proj, self.audio_lstm(audio)[0])               # (1), (4)
        x_v = self._project(self.vision_proj, self.vision_lstm(vision)[0])            # (2), (4)
        x_ta, x_tv = x_t, x_t
        for layer in self.layers:
            x_a, mh_a, h_a = layer["audio"](x_a, a_mask)                               # (5)
            x_v, mh_v, h_v = layer["vision"](x_v, v_mask)                              # (6)
            x_tv, h_tv = layer["text_vision"](x_tv, t_mask, mh_v, v_mask)              # (13)
            x_ta, h_ta = layer["text_audio"](x_ta, t_mask, mh_a, a_mask)               # (14)

        pooled = torch.cat([masked_mean(x_ta, t_mask), masked_mean(x_tv, t_mask)], dim=-1)
        f_m, y_m = self.fusion_head(pooled)                                             # (27)
        f_a, y_a = self.audio_head(masked_mean(x_a, a_mask))                            # (28)
        f_v, y_v = self.vision_head(masked_mean(x_v, v_mask))

        d = self.dims
        losses = {"similarity": d.sim_weight * cmd(h_ta, h_tv, d.cmd_moments, d.cmd_span),               # (25)
                  "difference": d.diff_weight * (difference_loss(h_ta, h_a) + difference_loss(h_tv, h_v))}  # (26)
        features = {FUSED: f_m, "text": masked_mean(x_t, t_mask), "audio": f_a, "vision": f_v,
                    "text_audio": x_ta, "text_vision": x_tv,
                    "h_text_audio": h_ta, "h_text_vision": h_tv, "h_audio": h_a, "h_vision": h_v}
        return MsaOutput(prediction=y_m, features=features, aux={"audio": y_a, "vision": y_v}, losses=losses)

    # -- training ----------------------------------------------------------------------------
    def prepare(self, train: Mapping[str, Any]) -> None:
        """Size ULGM's memory from the training split; every unimodal label starts at y_m.

        train: the training split's arrays; labels under ``labels`` (mmer's MmsaSplit.arrays())
        or ``regression_labels`` (the raw MMSA pickle), (N,) floats in [-3, 3].
        """
        key = next((k for k in ("labels", "regression_labels") if k in train), None)
        if key is None:
            raise KeyError(f"MMILN.prepare needs the training labels under 'labels' or 'regression_labels'; "
                           f"got keys {sorted(train)}")
        labels = np.asarray(train[key], dtype=np.float32).reshape(-1)
        self.ulgm.reset(torch.from_numpy(labels).to(self.ulgm.visits.device))

    def loss(self, out: MsaOutput, labels: torch.Tensor,
             index: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """Eqs. (35)-(36): MSE(y_m) + sum_n mean(tanh(|y_n - y_m|) |y_n_hat - y_n|) + out.losses.

        labels: (B,) multimodal scores y_m; index: (B,) positions in the training split. In
        training mode the unimodal targets come from ULGM, which is then updated with this
        batch's (detached) features; in eval mode the memory is neither read nor touched
        (valid/test indices are not training positions) and the unimodal terms are skipped:
        with y_n = y_m their weight tanh(0) is zero anyway.
        """
        y_m = labels.float().view(-1)
        total = F.mse_loss(out.prediction.float().view(-1), y_m)
        parts = {"fusion": float(total.detach())}
        if self.training:
            index = self.ulgm.check_index(index)
            for name in UNIMODAL:
                target = self.ulgm.labels(name)[index]            # a copy: the update below cannot alter it
                weight = torch.tanh((target - y_m).abs())
                term = (weight * (out.aux[name].float().view(-1) - target).abs()).mean()
                total = total + term
                parts[name] = float(term.detach())
            self.ulgm.update({name: out.features[name] for name in (FUSED, *UNIMODAL)}, y_m.detach(), index)
        for name, value in out.losses.items():
            total = total + value
            parts[name] = float(value.detach())
        return total, parts
