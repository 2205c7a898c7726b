"""Layers shared by several models of the zoo.

``sinusoidal_positions``: the fixed position code of the Transformer (DERL eq. 4, CMATH).

``ModalityTokenAttention``: self-attention over the modality tokens of ONE utterance, with
absent modalities masked out. It is the batch-independent replacement for the attention step
of TelME's fusion (REFERENCE.md section 2, defect 1) and fits any fusion that treats each
modality's pooled feature as a token.
"""

from __future__ import annotations

import torch
from torch import nn

LAYER_NORM_EPS = 1e-5  # PyTorch's default; named so every fusion layer uses the same one
POSITION_BASE = 10000.0  # wavelength base of sinusoidal positions (Vaswani et al.)


def sinusoidal_positions(length: int, dim: int, like: torch.Tensor) -> torch.Tensor:
    """PE[t, 2i] = sin(t / 10000^(2i/d)), PE[t, 2i+1] = cos(t / 10000^(2i/d)); (length, dim) in
    ``like``'s dtype and device (odd ``dim`` keeps the first ``dim`` channels)."""
    pos = torch.arange(length, device=like.device, dtype=like.dtype).unsqueeze(1)
    freq = POSITION_BASE ** (-torch.arange(0, dim, 2, device=like.device, dtype=like.dtype) / dim)
    angle = pos * freq                                                 # (length, ceil(dim / 2))
    return torch.stack([angle.sin(), angle.cos()], dim=-1).flatten(1)[:, :dim]


class ModalityTokenAttention(nn.Module):
    """Multi-head self-attention over M modality tokens + residual -> LayerNorm -> dropout.

    Each utterance attends only over its own tokens, so its output never depends on the other
    utterances in the batch. Absent tokens are excluded as keys and their outputs are zeroed;
    whatever the caller put in an absent slot (zeros, noise, NaN) has no effect.
    """

    def __init__(self, dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"token width {dim} is not divisible by {num_heads} heads")
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.dropout = nn.Dropout(dropout)

    def forward(self, tokens: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """Attend over the present tokens of each utterance.

        tokens:  (B, M, D) one token per modality.
        present: (B, M) bool, False where that modality is missing for that utterance.
        Returns (B, M, D); rows of absent tokens are exactly zero.
        """
        keep = present.unsqueeze(-1)
        # torch.where, not multiplication: NaN * 0 is NaN, and garbage must not leak in.
        tokens = torch.where(keep, tokens, torch.zeros((), dtype=tokens.dtype, device=tokens.device))
        # An utterance with every token masked would make softmax over no keys -> NaN. Such rows
        # are zeroed below anyway, so they attend over their (zero) tokens unmasked instead.
        any_present = present.any(dim=-1, keepdim=True)
        key_padding_mask = ~present & any_present
        attended, _ = self.attn(tokens, tokens, tokens, key_padding_mask=key_padding_mask, need_weights=False)
        out = self.dropout(self.norm(attended + tokens))
        return torch.where(keep, out, torch.zeros((), dtype=out.dtype, device=out.device))
