"""Confidence-weighted late fusion of separately trained per-modality classifiers.

For stacks whose modalities never saw a common training set: the embedded defaults pair a
text model on MELD (7 classes), a voice model on EmoDB and a face model on FER2013. Each
model's probabilities are first mapped onto the target label set with
:func:`mmer.labels.get_label_map` (:meth:`LateFusion.map_to_target`), then pooled per utterance:

    p~_m(c) = p_m(c | covered_m) * K_m / C   for classes modality m can express (K_m of C)
            = 1 / C                          for classes it cannot (chance level: no opinion)
    conf_m  = 1 - H(p_m | covered_m) / log K_m        (default; or max-prob, or none)
    w_m     = base_m * conf_m * present_m, normalised to sum to 1 over the modalities
    log-linear (default):  q(c) ∝ prod_m p~_m(c) ** w_m   (product of experts)
    linear:                q(c) = sum_m w_m p~_m(c)

Why these choices: an EmoDB voice model has no "surprise"; its mapped probability for surprise
is exactly 0, and in a product of experts a single zero vetoes the class for good. Giving
uncovered classes the chance level 1/C makes the voice model neutral about surprise while its
relative opinions over the classes it knows stay intact. Confidence is 1 - normalised entropy
rather than max-prob because it reads the whole distribution: a 0.5/0.5 tie between two classes
has ruled out the other five and entropy credits that, while max-prob rates it the same as 0.5
against six near-equal alternatives ("max_prob" remains an option).
Weights are normalised so that a single present modality returns its own distribution, and two
modalities that say the same thing give that distribution back rather than its square (as an
unnormalised product of experts would). If every present modality is a flat guess (confidence
0), the base weights alone are used.

The module has no trainable parameters; its base weights live in the dims (saved in the
checkpoint) and :meth:`LateFusion.fit_weights` picks them on a dev set.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from mmer.labels import get_label_map, get_label_set
from mmer.models.base import MmerModel
from mmer.outputs import EmotionOutput
from mmer.registry import MODELS

PROB_FLOOR = 1e-8  # probabilities are clamped here before a log, so log(0) never yields -inf
WEIGHT_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)  # candidate base weights per modality in fit_weights


@dataclass(frozen=True)
class LateFusionDims:
    """Settings of the late fusion; saved inside its checkpoint.

    modalities / source_label_sets / base_weights: one entry per modality, in the same order;
    ``source_label_sets[i]`` is the label set modality i's classifier was trained on.
    confidence: per-sample confidence, "entropy" (1 - normalised entropy), "max_prob", or
    "none" (base weights only). pooling: "log_linear" (product of experts) or "linear".
    """

    label_set: str = "meld7"
    num_labels: int = 7
    modalities: tuple[str, ...] = ("text", "audio", "visual")
    source_label_sets: tuple[str, ...] = ("meld7", "emodb7", "fer2013")
    base_weights: tuple[float, ...] = (1.0, 0.5, 0.5)
    confidence: Literal["entropy", "max_prob", "none"] = "entropy"
    pooling: Literal["log_linear", "linear"] = "log_linear"


def weighted_f1(labels: np.ndarray, preds: np.ndarray, num_labels: int) -> float:
    """Support-weighted mean of per-class F1 (sklearn's ``average='weighted'``), in numpy.

    labels, preds: (N,) integer class ids.
    """
    labels, preds = np.asarray(labels).astype(int), np.asarray(preds).astype(int)
    total = 0.0
    for c in range(num_labels):
        tp = np.sum((preds == c) & (labels == c))
        fp = np.sum((preds == c) & (labels != c))
        fn = np.sum((preds != c) & (labels == c))
        denom = 2 * tp + fp + fn
        f1 = 2 * tp / denom if denom else 0.0
        total += f1 * np.sum(labels == c)
    return float(total / max(len(labels), 1))


def sample_confidence(probs: torch.Tensor, covered: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-sample confidence in [0, 1] of one modality.

    probs:   (B, C) distribution over the covered classes (uncovered entries are ignored).
    covered: (C,) bool.
    kind:    "entropy" -> 1 - H(p) / log K (K covered classes); "max_prob" -> rescaled so a
             uniform guess is 0 and a one-hot is 1: (max p - 1/K) / (1 - 1/K); "none" -> 1.
    Returns (B,).
    """
    num_covered = int(covered.sum())
    if kind == "none" or num_covered < 2:  # one class leaves nothing to be unsure about
        return probs.new_ones(probs.shape[0])
    p = probs[:, covered]
    if kind == "entropy":
        entropy = -(p * p.clamp_min(PROB_FLOOR).log()).sum(dim=-1)
        return (1.0 - entropy / np.log(num_covered)).clamp(0.0, 1.0)
    if kind == "max_prob":
        chance = 1.0 / num_covered
        return ((p.max(dim=-1).values - chance) / (1.0 - chance)).clamp(0.0, 1.0)
    raise ValueError(f"unknown confidence '{kind}'; use 'entropy', 'max_prob' or 'none'")


@MODELS.register("late_fusion")
class LateFusion(MmerModel):
    """Confidence-weighted product-of-experts (or linear) pooling of per-modality probabilities."""

    registry_name = "late_fusion"
    modality = "fusion"
    fuses = "probabilities"  # fuses the modalities' calibrated probabilities, mapped onto its label set
    Dims = LateFusionDims

    def __init__(self, dims: LateFusionDims) -> None:
        super().__init__(dims)
        n = len(dims.modalities)
        if not (len(dims.source_label_sets) == len(dims.base_weights) == n) or n == 0:
            raise ValueError("modalities, source_label_sets and base_weights need one entry each, "
                             f"got {dims.modalities}, {dims.source_label_sets}, {dims.base_weights}")
        if len(get_label_set(dims.label_set)) != dims.num_labels:
            raise ValueError(f"label set '{dims.label_set}' does not have num_labels={dims.num_labels} classes")
        if any(w < 0 for w in dims.base_weights):
            raise ValueError(f"base weights must be >= 0, got {dims.base_weights}")
        maps = [get_label_map(src, dims.label_set) for src in dims.source_label_sets]
        # Derived from the dims, so not persistent: the checkpoint's state dict stays empty.
        for i, m in enumerate(maps):
            self.register_buffer(f"map_{i}", torch.from_numpy(m.matrix()), persistent=False)  # (S_i, C)
        self.register_buffer("default_covered", torch.from_numpy(
            np.stack([m.covered() for m in maps])), persistent=False)  # (M, C) bool

    @property
    def device(self) -> torch.device:
        """No parameters to ask; the buffers follow ``.to(device)``."""
        return self.default_covered.device

    # -- label-set mapping ----------------------------------------------------------------
    def map_to_target(self, source_probs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Map each modality's (B, S_m) probabilities in its own label set onto (B, C)."""
        out = {}
        for i, name in enumerate(self.dims.modalities):
            if name not in source_probs:
                continue
            matrix = getattr(self, f"map_{i}")
            p = source_probs[name]
            if p.shape[-1] != matrix.shape[0]:
                raise ValueError(f"{name}: expected {matrix.shape[0]} classes of label set "
                                 f"'{self.dims.source_label_sets[i]}', got {p.shape[-1]}")
            out[name] = p.float() @ matrix
        return out

    # -- fusion ---------------------------------------------------------------------------
    def forward(self, probs: dict[str, torch.Tensor], present: dict[str, torch.Tensor] | None = None,
                covered: dict[str, torch.Tensor] | None = None,
                labels: torch.Tensor | None = None) -> EmotionOutput:
        """Fuse per-modality probabilities that are already in the target label set.

        probs:   {modality: (B, C)} probabilities (rows sum to one); a missing key means absent.
        present: {modality: (B,) bool}; a False row drops that modality for that utterance,
                 whatever ``probs`` holds there. Default: present wherever ``probs`` has it.
        covered: {modality: (C,) bool} classes the modality can express; default: the classes
                 its source label set reaches through the label map (EmoDB: all but surprise).
        labels:  (B,) class ids; when given, ``loss`` is the NLL of the fused distribution.
        Returns EmotionOutput with logits = log q (B, C), probs q, features ``weights`` (B, M)
        (normalised, in ``dims.modalities`` order; all zero and q uniform when nothing is present).
        """
        log_q, weights = self._fuse(probs, present or {}, covered or {}, self.dims.base_weights)
        loss = F.nll_loss(log_q, labels) if labels is not None else None
        return EmotionOutput.from_logits(log_q, {"weights": weights}, loss)

    def _fuse(self, probs: dict[str, torch.Tensor], present: dict[str, torch.Tensor],
              covered: dict[str, torch.Tensor], base_weights: tuple[float, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """The pooling of ``forward`` with explicit base weights: (log q (B, C), weights (B, M))."""
        unknown = [m for m in probs if m not in self.dims.modalities]
        if unknown:
            raise KeyError(f"unknown modalities {unknown}; this fusion has {list(self.dims.modalities)}")
        if not probs:
            raise ValueError("probs is empty: give at least one modality's (B, C) probabilities")
        ref = next(iter(probs.values()))
        batch, num_classes, dev = ref.shape[0], self.dims.num_labels, ref.device
        chance = torch.full((batch, num_classes), 1.0 / num_classes, device=dev)
        filled, raw_weights, here_rows = [], [], []
        for i, name in enumerate(self.dims.modalities):
            if name not in probs:
                filled.append(chance)
                raw_weights.append(torch.zeros(batch, device=dev))
                here_rows.append(torch.zeros(batch, dtype=torch.bool, device=dev))
                continue
            if probs[name].shape != (batch, num_classes):
                raise ValueError(f"{name}: probs must be ({batch}, {num_classes}), got {tuple(probs[name].shape)}")
            here = present.get(name, torch.ones(batch, dtype=torch.bool, device=dev)).to(dev, torch.bool)
            cov = covered.get(name, self.default_covered[i]).to(dev, torch.bool)
            # Absent rows may hold garbage (even NaN): replace them before any arithmetic.
            p = torch.where(here.unsqueeze(-1), probs[name].float(), chance)
            p_cov = torch.where(cov, p, torch.zeros((), device=dev))
            p_cov = p_cov / p_cov.sum(dim=-1, keepdim=True).clamp_min(PROB_FLOOR)  # p(c | covered)
            conf = sample_confidence(p_cov, cov, self.dims.confidence)
            share = cov.sum().float() / num_classes                                 # K / C
            filled.append(torch.where(cov, p_cov * share, chance))
            raw_weights.append(torch.where(here, conf * base_weights[i], torch.zeros((), device=dev)))
            here_rows.append(here)
        stacked = torch.stack(filled, dim=1)                                        # (B, M, C)
        weights = self._normalise(torch.stack(raw_weights, dim=1), torch.stack(here_rows, dim=1),
                                  base_weights)  # (B, M)
        if self.dims.pooling == "log_linear":
            log_q = torch.log_softmax((weights.unsqueeze(-1) * stacked.clamp_min(PROB_FLOOR).log()).sum(dim=1), -1)
        else:
            mixed = (weights.unsqueeze(-1) * stacked).sum(dim=1)
            # Nothing present: the weights are all zero, so fall back to the uniform distribution.
            mixed = torch.where(weights.sum(-1, keepdim=True) > 0, mixed, chance)
            log_q = mixed.clamp_min(PROB_FLOOR).log()
        return log_q, weights

    @staticmethod
    def _normalise(weights: torch.Tensor, present: torch.Tensor, base_weights: tuple[float, ...]) -> torch.Tensor:
        """(B, M) weights -> rows summing to one. A row whose present modalities are all flat
        guesses (zero confidence) falls back to the base weights of the present modalities,
        then to equal weights over them; a row with nothing present stays zero."""
        base = torch.tensor(base_weights, device=weights.device) * present.float()
        base = torch.where(base.sum(-1, keepdim=True) > 0, base, present.float())
        weights = torch.where(weights.sum(-1, keepdim=True) > 0, weights, base)
        return weights / weights.sum(-1, keepdim=True).clamp_min(PROB_FLOOR)

    # -- dev-set tuning -------------------------------------------------------------------
    @torch.no_grad()
    def fit_weights(self, dev_probs: dict[str, torch.Tensor | np.ndarray],
                    dev_present: dict[str, torch.Tensor | np.ndarray] | None,
                    dev_labels: torch.Tensor | np.ndarray,
                    grid: tuple[float, ...] = WEIGHT_GRID) -> LateFusionDims:
        """Grid-search the base weights that maximise dev weighted F1; returns new dims.

        dev_probs:   {modality: (N, C)} probabilities in the target label set.
        dev_present: {modality: (N,) bool} or None (all present).
        dev_labels:  (N,) class ids.
        Every combination of ``grid`` values over the modalities is tried (the all-zero one is
        skipped; scaling all weights changes nothing, as they are normalised). Ties keep the
        current weights, then the earliest combination, so the result is deterministic.
        """
        probs = {k: torch.as_tensor(v, dtype=torch.float32, device=self.device) for k, v in dev_probs.items()}
        present = {k: torch.as_tensor(v, dtype=torch.bool, device=self.device)
                   for k, v in (dev_present or {}).items()}
        labels = np.asarray(dev_labels)

        def score(weights: tuple[float, ...]) -> float:
            log_q, _ = self._fuse(probs, present, {}, weights)
            preds = log_q.argmax(dim=-1).cpu().numpy()
            return weighted_f1(labels, preds, self.dims.num_labels)

        best_weights = tuple(float(w) for w in self.dims.base_weights)
        best = score(best_weights)
        for combo in itertools.product(grid, repeat=len(self.dims.modalities)):
            if not any(combo):
                continue
            candidate = score(tuple(float(w) for w in combo))
            if candidate > best:
                best, best_weights = candidate, tuple(float(w) for w in combo)
        return dataclasses.replace(self.dims, base_weights=best_weights)
