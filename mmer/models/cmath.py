"""CMATH: cross-modality augmented Transformer with hierarchical variational distillation.

Paper: "CMATH: Cross-Modality Augmented Transformer with Hierarchical Variational Distillation
for Multimodal Emotion Recognition in Conversation" (arXiv 2411.10060, 2024); seeds/001.
Only the abstract is available (the authors' repository holds a README saying "Code will be
released"), so the equations below are mmer's, numbered (C1)-(C10) here and nowhere else:

    H_m  = Enc_m(X_m)                                  (C1) unimodal encoder, m in {t, a, v}
    R_m  = Rec_m(P_m, [H_n]_{n != m})                  (C2) m rebuilt from the OTHER modalities
    g_m  = sigmoid(W_g [H_m ; R_m]);  A_m = g_m H_m + (1 - g_m) R_m          (C3) recovered stream
    L_rec = mean_m [ SL1(Dec_m(H_m), X_m) + SL1(Dec_m(R_m), X_m) ] / 2      (C4) reconstruction
    S^l  = CMA_l(S^{l-1}; A_aux1, A_aux2),  S^0 = A_c                       (C5) asymmetric fusion
    h    = MLP([mean(S^N) ; mean(A_aux1) ; mean(A_aux2)]);  mu, log s^2 = W h  (C6) variational fusion
    z    = mu + s * eps (training),  z = mu (eval)                           (C7) reparameterisation
    KL   = mean_B 1/2 sum_j (mu_j^2 + s_j^2 - log s_j^2 - 1)                 (C8) KL(q(z|x) || N(0, I))
    y    = Head(z)                                                           (C9) coarse prediction
    L_hd = 1/2 [ D(sg(y), fine tokens) + D(sg(y), modality heads) ]          (C10) hierarchical KD

Total objective: task loss(y) + recon_weight L_rec + kl_weight KL + distill_weight L_hd.
c is ``dims.central_modality``; the two others are auxiliaries. SL1 is a masked smooth-L1.

Design choices (where the abstract is silent):

1. Reconstruction is cross-modal (C2): each modality's sequence is rebuilt on its own timeline
   from the other two only, with positional queries that never read the modality itself, so a
   missing or noisy modality still gets a representation R_m. Its encoding H_m is also decoded
   (C4) through the SAME decoder Dec_m: one decoder for both makes R_m and H_m live in one space,
   so the learned gate (C3) can swap one for the other per time step.
2. Targets of (C4) are the input features themselves (detached) under smooth-L1 (as TFR-Net and
   EMT-DLFR reconstruct low-level features): it is zero for a perfect reconstruction, needs no
   extra network, and its linear tails keep MOSEI's large COVAREP values from dominating.
3. Asymmetry (C5): only the central stream is a query. Each CMA layer is self-attention on the
   central stream, one cross-attention per auxiliary (central queries, auxiliary keys/values),
   summed into one residual, then a feed-forward block. Auxiliaries are never updated by the
   central one: 2 cross-attentions per layer instead of MulT's 6 symmetric ones.
4. Variational fusion (C6-C8) pools the fine-grained sequences by masked mean (order-free and
   padding-proof) and outputs a diagonal Gaussian; training samples z, eval uses mu, so eval is
   deterministic. The KL weight is small (1e-3) because a supervised bottleneck with weight 1
   collapses the posterior onto the prior (the VIB convention).
5. Hierarchical distillation (C10) runs top-down over three granularities: the utterance-level
   coarse prediction y (teacher, stop-gradient) teaches (a) every token of the central CMA
   output (token level) and (b) one head per modality on its pooled recovered stream (modality
   level). The coarse head is the teacher because it sees every modality and token and is the
   one the task loss trains; stopping its gradient keeps noisy single-token or single-modality
   students from dragging it, while their gradients push the fine-grained representations to
   agree with the utterance-level emotion. D is tau^2 KL(p_teacher || p_student) at temperature
   tau for classes and squared error for a regression score.
6. Sizes: the abstract gives none; hidden 128, 4 heads, 1 encoder and 2 CMA layers, latent 64
   are mmer's choices (MulT-scale on MOSI/MELD features, cheap on a CPU).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mmer.models.blocks import LAYER_NORM_EPS, sinusoidal_positions
from mmer.models.msa import MsaDims, MsaModel, TextBackbone, check_outputs, lengths_to_mask, masked_mean
from mmer.outputs import MsaOutput
from mmer.registry import MODELS

MODALITIES = ("text", "audio", "vision")
LOGVAR_MIN, LOGVAR_MAX = -10.0, 10.0  # clamp on log s^2: exp() stays finite in fp16/fp32


@dataclass(frozen=True)
class CMATHDims(MsaDims):
    """Every size of CMATH; saved inside its checkpoint. The abstract gives no numbers: every
    default after ``vision_dim`` is mmer's choice (module docstring, design choice 6)."""

    hidden_dim: int = 128             # width d of every stream (even: sinusoidal positions)
    num_heads: int = 4
    encoder_layers: int = 1           # self-attention layers of each unimodal encoder (C1)
    cma_layers: int = 2               # CMA-Transformer depth N (C5)
    latent_dim: int = 64              # width of z (C6)
    central_modality: str = "text"    # the query stream of (C5): "text", "audio" or "vision"
    dropout: float = 0.1
    recon_weight: float = 0.1         # weight of L_rec (C4)
    kl_weight: float = 1e-3           # weight of KL (C8), VIB-style small beta
    distill_weight: float = 0.5       # weight of L_hd (C10)
    distill_temperature: float = 2.0  # tau of (C10) for classification (unused for regression)


# -- pure functions (tested against hand-computed values) ------------------------------------
def masked_smooth_l1(recon: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(C4) term: smooth-L1 (beta 1: 0.5 e^2 if |e| < 1 else |e| - 0.5) averaged over the valid
    steps and features. recon, target: (B, L, D); mask: (B, L) bool. Zero iff recon == target
    on every valid step, whatever the padded steps hold."""
    keep = mask.unsqueeze(-1)
    err = F.smooth_l1_loss(recon, target, reduction="none", beta=1.0)
    err = torch.where(keep, err, err.new_zeros(()))
    count = mask.to(err.dtype).sum() * err.shape[-1]
    return err.sum() / count.clamp(min=1.0)


def kl_to_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """(C8): KL(N(mu, diag e^logvar) || N(0, I)) = 1/2 sum_j (mu^2 + e^logvar - logvar - 1),
    averaged over the batch. mu, logvar: (B, K). Returns a scalar."""
    return 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1.0).sum(dim=-1).mean()


def distillation_divergence(student: torch.Tensor, teacher: torch.Tensor, task: str,
                            temperature: float) -> torch.Tensor:
    """D of (C10), elementwise over the leading axes. student, teacher: (..., C) broadcastable.

    Classification: tau^2 KL(softmax(teacher/tau) || softmax(student/tau)); regression: squared
    error summed over outputs. Returns (...). The caller detaches the teacher."""
    if task == "regression":
        return (student - teacher).pow(2).sum(dim=-1)
    log_p_teacher = F.log_softmax(teacher / temperature, dim=-1)
    log_p_student = F.log_softmax(student / temperature, dim=-1)
    return (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(dim=-1) * temperature ** 2


# -- layers ------------------------------------------------------------------------------------
class AttentionBlock(nn.Module):
    """Post-norm residual attention: LN(q + Dropout(MHA(q, kv, kv))), padded keys ignored."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.dropout = nn.Dropout(dropout)

    def forward(self, query: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor) -> torch.Tensor:
        """query: (B, Lq, d); memory: (B, Lk, d); memory_mask: (B, Lk) bool valid. Returns (B, Lq, d)."""
        out, _ = self.attn(query, memory, memory, key_padding_mask=~memory_mask, need_weights=False)
        return self.norm(query + self.dropout(out))


class FeedForward(nn.Module):
    """Post-norm residual position-wise MLP: LN(x + Dropout(W2 GELU(W1 x))), width 4d."""

    def __init__(self, dim: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * dim, dim))
        self.norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.dropout(self.net(x)))


def _zero_padding(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x: (B, L, D); mask: (B, L). torch.where, not a product: NaN/-inf padding must not leak."""
    return torch.where(mask.unsqueeze(-1), x, x.new_zeros(()))


class UnimodalEncoder(nn.Module):
    """(C1): linear compression to d + sinusoidal positions + self-attention layers.
    x: (B, L, D_m), mask: (B, L) -> H_m (B, L, d), zero on padded steps."""

    def __init__(self, in_dim: int, dim: int, heads: int, layers: int, dropout: float) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, dim)
        self.norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.layers = nn.ModuleList(nn.ModuleList([AttentionBlock(dim, heads, dropout), FeedForward(dim, dropout)])
                                    for _ in range(layers))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.proj(x))
        h = h + sinusoidal_positions(h.shape[1], h.shape[2], h)
        for attend, ffn in self.layers:
            h = ffn(attend(h, h, mask))
        return _zero_padding(h, mask)


class CrossModalReconstructor(nn.Module):
    """(C2)-(C3) for one target modality m. Queries are m's positions plus a learned modality
    query (never m's content), keys/values are the other modalities' encodings."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.modality_query = nn.Parameter(torch.zeros(dim))
        self.attend = AttentionBlock(dim, heads, dropout)
        self.ffn = FeedForward(dim, dropout)
        self.gate = nn.Linear(2 * dim, dim)  # W_g of (C3)

    def forward(self, own: torch.Tensor, own_mask: torch.Tensor, others: torch.Tensor,
                others_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """own: H_m (B, L, d); others: [H_n] concatenated in time (B, L', d) with mask (B, L').
        Returns R_m (B, L, d) and the recovered stream A_m (B, L, d), both zero on padding."""
        query = sinusoidal_positions(own.shape[1], own.shape[2], own) + self.modality_query
        query = query.unsqueeze(0).expand(own.shape[0], -1, -1)
        rebuilt = _zero_padding(self.ffn(self.attend(query, others, others_mask)), own_mask)
        g = torch.sigmoid(self.gate(torch.cat([own, rebuilt], dim=-1)))
        return rebuilt, _zero_padding(g * own + (1.0 - g) * rebuilt, own_mask)


class CMALayer(nn.Module):
    """(C5), one layer: the central stream attends to itself, then to each auxiliary stream
    (central = query, auxiliary = keys/values; the sum of both reads is one residual), then a
    feed-forward block. The auxiliary streams pass through unchanged."""

    def __init__(self, dim: int, heads: int, dropout: float, num_aux: int) -> None:
        super().__init__()
        self.self_attend = AttentionBlock(dim, heads, dropout)
        self.cross_attn = nn.ModuleList(nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
                                        for _ in range(num_aux))
        self.cross_norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.dropout = nn.Dropout(dropout)
        self.ffn = FeedForward(dim, dropout)

    def forward(self, central: torch.Tensor, central_mask: torch.Tensor,
                aux: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """central: (B, Lc, d), mask (B, Lc); aux: [(A (B, La, d), mask (B, La))]. Returns (B, Lc, d)."""
        s = self.self_attend(central, central, central_mask)
        read = torch.zeros_like(s)
        for attn, (stream, mask) in zip(self.cross_attn, aux):
            # Positional arguments (query, key, value): tests hook them to see which stream queries.
            out, _ = attn(s, stream, stream, key_padding_mask=~mask, need_weights=False)
            read = read + out
        s = self.cross_norm(s + self.dropout(read))
        return _zero_padding(self.ffn(s), central_mask)


# -- the model -------------------------------------------------------------------------------
@MODELS.register("cmath")
class CMATH(MsaModel):
    """CMATH over text / audio / vision sequences; regression (MOSI/MOSEI) or emotion classes."""

    registry_name = "cmath"
    Dims = CMATHDims

    def __init__(self, dims: CMATHDims, encoder_config=None) -> None:
        super().__init__(dims)
        check_outputs(dims.label_set, dims.num_outputs)
        if dims.central_modality not in MODALITIES:
            raise ValueError(f"central_modality must be one of {list(MODALITIES)}, got {dims.central_modality!r}")
        d = dims.hidden_dim
        if d % dims.num_heads or d % 2:
            raise ValueError(f"hidden_dim {d} must be even and divisible by num_heads {dims.num_heads}")
        self.text = TextBackbone(dims.text_encoder, dims.text_dim, encoder_config)
        in_dims = {"text": self.text.width, "audio": dims.audio_dim, "vision": dims.vision_dim}
        self.central = dims.central_modality
        self.auxiliaries = tuple(m for m in MODALITIES if m != self.central)
        self.encoders = nn.ModuleDict({m: UnimodalEncoder(in_dims[m], d, dims.num_heads, dims.encoder_layers,
                                                          dims.dropout) for m in MODALITIES})
        self.reconstructors = nn.ModuleDict({m: CrossModalReconstructor(d, dims.num_heads, dims.dropout)
                                             for m in MODALITIES})
        self.decoders = nn.ModuleDict({m: nn.Linear(d, in_dims[m]) for m in MODALITIES})   # Dec_m of (C4)
        self.cma = nn.ModuleList(CMALayer(d, dims.num_heads, dims.dropout, len(self.auxiliaries))
                                 for _ in range(dims.cma_layers))
        self.fusion = nn.Sequential(nn.Linear(len(MODALITIES) * d, d), nn.GELU(), nn.Dropout(dims.dropout))
        self.to_mu = nn.Linear(d, dims.latent_dim)
        self.to_logvar = nn.Linear(d, dims.latent_dim)
        self.coarse_head = nn.Sequential(nn.Linear(dims.latent_dim, dims.latent_dim), nn.GELU(),
                                         nn.Dropout(dims.dropout), nn.Linear(dims.latent_dim, dims.num_outputs))
        self.fine_head = nn.Linear(d, dims.num_outputs)                                    # token level
        self.modality_heads = nn.ModuleDict({m: nn.Linear(d, dims.num_outputs) for m in MODALITIES})

    def forward(self, text: torch.Tensor, text_mask: torch.Tensor, audio: torch.Tensor, audio_lengths: torch.Tensor,
                vision: torch.Tensor, vision_lengths: torch.Tensor) -> MsaOutput:
        """text: (B, Lt, Dt) features or (B, Lt) ids; text_mask: (B, Lt) bool; audio: (B, La, Da);
        audio_lengths: (B,); vision: (B, Lv, Dv); vision_lengths: (B,).

        Returns MsaOutput: prediction (B, C) from z; features "fused" z (B, K) (= mu in eval),
        "mu"/"logvar" (B, K), "fine" the central CMA tokens (B, Lc, d), "text"/"audio"/"vision"
        pooled recovered streams (B, d), "recovered_<m>" Dec_m(R_m) (B, L_m, D_m); aux "fine"
        (B, C) pooled token predictions and one (B, C) head per modality; losses
        "reconstruction", "kl", "distill", already weighted.
        """
        dims = self.dims
        masks = {"text": text_mask.bool(), "audio": lengths_to_mask(audio_lengths, audio.shape[1]),
                 "vision": lengths_to_mask(vision_lengths, vision.shape[1])}
        inputs = {"text": self.text(text, masks["text"]), "audio": audio, "vision": vision}
        inputs = {m: _zero_padding(x, masks[m]) for m, x in inputs.items()}
        encoded = {m: self.encoders[m](inputs[m], masks[m]) for m in MODALITIES}             # (C1)

        rebuilt, streams, recon_terms, recovered = {}, {}, [], {}
        for m in MODALITIES:
            others = [n for n in MODALITIES if n != m]
            memory = torch.cat([encoded[n] for n in others], dim=1)
            memory_mask = torch.cat([masks[n] for n in others], dim=1)
            rebuilt[m], streams[m] = self.reconstructors[m](encoded[m], masks[m], memory, memory_mask)  # (C2-3)
            # Detached: a fine-tuned language model must not shrink its features to ease (C4).
            target = inputs[m].detach()
            recovered[m] = self.decoders[m](rebuilt[m])
            recon_terms.append(masked_smooth_l1(self.decoders[m](encoded[m]), target, masks[m])
                               + masked_smooth_l1(recovered[m], target, masks[m]))
        recon = torch.stack(recon_terms).mean() / 2.0                                          # (C4)

        aux_streams = [(streams[a], masks[a]) for a in self.auxiliaries]
        fine = streams[self.central]
        for layer in self.cma:                                                                 # (C5)
            fine = layer(fine, masks[self.central], aux_streams)

        pooled = {m: masked_mean(streams[m], masks[m]) for m in MODALITIES}
        fine_pooled = masked_mean(fine, masks[self.central])
        h = self.fusion(torch.cat([fine_pooled] + [pooled[a] for a in self.auxiliaries], dim=-1))  # (C6)
        mu, logvar = self.to_mu(h), self.to_logvar(h).clamp(LOGVAR_MIN, LOGVAR_MAX)
        if self.training:                                                                      # (C7)
            z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        else:
            z = mu
        prediction = self.coarse_head(z)                                                       # (C9)

        fine_tokens = self.fine_head(fine)                                                     # (B, Lc, C)
        heads = {m: self.modality_heads[m](pooled[m]) for m in MODALITIES}
        teacher = prediction.detach()
        tau = dims.distill_temperature
        token_kd = distillation_divergence(fine_tokens, teacher.unsqueeze(1), self.task, tau)  # (B, Lc)
        token_kd = masked_mean(token_kd.unsqueeze(-1), masks[self.central]).mean()
        modality_kd = torch.stack([distillation_divergence(heads[m], teacher, self.task, tau).mean()
                                   for m in MODALITIES]).mean()
        distill = 0.5 * (token_kd + modality_kd)                                               # (C10)

        features = {"fused": z, "mu": mu, "logvar": logvar, "fine": fine, **pooled}
        features.update({f"recovered_{m}": recovered[m] for m in MODALITIES})
        aux = {"fine": masked_mean(fine_tokens, masks[self.central]), **heads}
        losses = {"reconstruction": dims.recon_weight * recon,
                  "kl": dims.kl_weight * kl_to_standard_normal(mu, logvar),                    # (C8)
                  "distill": dims.distill_weight * distill}
        return MsaOutput(prediction=prediction, features=features, aux=aux, losses=losses)
