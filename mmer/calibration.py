"""Per-modality calibration saved with each checkpoint: temperature, reliability, abstention.

A classifier's softmax is rarely a probability: the default voice model trained on one corpus
is far too sure of itself on another, and a confident wrong modality outvotes a right one in
any fusion. Each checkpoint therefore carries, in ``mmer.json`` under ``"calibration"``:

- ``temperature`` T: probabilities are ``softmax(logits / T)``; T minimises the NLL on the
  training corpus's own dev split (never on an evaluation set);
- ``reliability`` in [0, 1]: the modality's dev skill, (UA - chance) / (1 - chance), which
  late fusion uses as the modality's base weight;
- ``min_confidence``: below this calibrated max-probability the modality abstains (its dev
  predictions there are no better than chance);
- ``fitted_on``: which split, so a reader can judge the numbers.

A checkpoint without the key is uncalibrated (T = 1, reliability 1, never abstains).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Calibration:
    """See the module docstring."""

    temperature: float = 1.0
    reliability: float = 1.0
    min_confidence: float = 0.0
    fitted_on: str = "uncalibrated"

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"calibration temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.reliability <= 1.0:
            raise ValueError(f"calibration reliability must be in [0, 1], got {self.reliability}")

    @classmethod
    def of(cls, model: Any) -> "Calibration":
        """The calibration recorded in a loaded checkpoint's metadata (default: none)."""
        meta = getattr(model, "checkpoint_meta", None) or {}
        return cls(**meta.get("calibration", {}))

    def probs(self, logits: np.ndarray) -> np.ndarray:
        """(..., C) logits -> calibrated probabilities softmax(logits / T)."""
        z = np.asarray(logits, dtype=np.float64) / self.temperature
        z = z - z.max(axis=-1, keepdims=True)
        e = np.exp(z)
        return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)

    def to_dict(self) -> dict:
        return asdict(self)
