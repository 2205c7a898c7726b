"""Typed model outputs shared by every model of the zoo."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch


@dataclass
class EmotionOutput:
    """What every mmer model's ``forward`` returns.

    logits:   (B, C) class scores in the order of the model's label set.
    probs:    (B, C) softmax of ``logits``.
    features: named (B, D) tensors the model computed on the way, for distillation and fusion:
              ``"text"``, ``"audio"``, ``"visual"`` (the KD-width features of each modality),
              plus model-specific extras.
    loss:     scalar training loss when labels were given, else ``None``.
    """

    logits: torch.Tensor
    probs: torch.Tensor
    features: dict[str, torch.Tensor] = field(default_factory=dict)
    loss: torch.Tensor | None = None

    @classmethod
    def from_logits(cls, logits: torch.Tensor, features: dict[str, torch.Tensor] | None = None,
                    loss: torch.Tensor | None = None) -> "EmotionOutput":
        """Build an output from (B, C) ``logits``; ``probs`` is their softmax in float32."""
        return cls(logits=logits, probs=torch.softmax(logits.float(), dim=-1), features=features or {}, loss=loss)


@dataclass
class MsaOutput:
    """What the sentiment models (DERL, MMILN, CENet, CMATH; mmer.models.msa) return.

    prediction: (B, 1) sentiment score, or (B, C) class logits for a classification label set.
    features:   named intermediate tensors ((B, D) or (B, L, D)): fused and per-modality
                representations, for distillation and analysis.
    aux:        auxiliary predictions, e.g. unimodal heads {"text": (B, 1), ...}.
    losses:     model-internal regularisers computed in ``forward`` (scalars, already weighted
                by the model's dims), added to the task loss by ``model.loss``.
    """

    prediction: torch.Tensor
    features: dict[str, torch.Tensor] = field(default_factory=dict)
    aux: dict[str, torch.Tensor] = field(default_factory=dict)
    losses: dict[str, torch.Tensor] = field(default_factory=dict)


def labelled(probs: torch.Tensor, labels: Sequence[str]) -> list[dict]:
    """(B, C) probabilities -> one ``{"label", "score", "scores"}`` dict per row, as
    transformers' pipelines answer: the top label, its probability, every label's probability."""
    rows = []
    for row in probs.float().cpu().tolist():
        best = max(range(len(row)), key=row.__getitem__)
        rows.append({"label": labels[best], "score": row[best], "scores": dict(zip(labels, row))})
    return rows
