"""Running per-speaker statistics of a pooled voice feature, for speaker normalisation.

Whisper's pooled states say more about who is speaking and how the room sounds than about
emotion: a classifier trained on one corpus and normalised with that corpus's statistics calls
almost every clip of another corpus the same class (RAVDESS UA 0.16, REFERENCE.md section 8 and
docs/voice.md). Normalising each speaker by their own mean and variance removes most of it.
Live, those statistics can only come from what the speaker said so far, so they are a running
estimate that starts from a prior (the training set's statistics, worth ``prior_count``
utterances) and includes the current utterance:

    n_k     = prior_count + k
    mean_k  = (prior_count * mu_0 + sum_{i<=k} x_i) / n_k
    var_k   = (prior_count * (var_0 + mu_0^2) + sum_{i<=k} x_i^2) / n_k - mean_k^2

Causal by construction: utterance k is normalised with utterances 1..k of that speaker only.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

VAR_FLOOR = 1e-6
MAX_SPEAKERS = 64  # least recently heard speakers are forgotten beyond this (bounded memory)


class SpeakerNormalizer:
    """Per-speaker running mean / variance of (D,) features with a prior.

    Args:
        prior_mean, prior_var: (D,) statistics of the training set.
        prior_count: how many utterances the prior is worth (0: the speaker's own statistics only;
            then a speaker's first utterance normalises to zero).
    """

    def __init__(self, prior_mean: np.ndarray, prior_var: np.ndarray, prior_count: float,
                 max_speakers: int = MAX_SPEAKERS) -> None:
        self.prior_mean = np.asarray(prior_mean, dtype=np.float64)
        self.prior_var = np.asarray(prior_var, dtype=np.float64)
        if self.prior_mean.shape != self.prior_var.shape or self.prior_mean.ndim != 1:
            raise ValueError(f"prior mean and variance must be (D,) alike, got {self.prior_mean.shape} "
                             f"and {self.prior_var.shape}")
        if prior_count < 0:
            raise ValueError(f"prior_count must be >= 0, got {prior_count}")
        self.prior_count = float(prior_count)
        self.max_speakers = max_speakers
        self._sums: OrderedDict[str, tuple[float, np.ndarray, np.ndarray]] = OrderedDict()

    @classmethod
    def for_model(cls, model) -> "SpeakerNormalizer":
        """The normaliser of a whisper-family audio student (prior from its checkpoint)."""
        return cls(model.prior_mean.detach().cpu().numpy(), model.prior_var.detach().cpu().numpy(),
                   model.dims.prior_count)

    def _start(self) -> tuple[float, np.ndarray, np.ndarray]:
        c = self.prior_count
        return c, c * self.prior_mean, c * (self.prior_var + self.prior_mean ** 2)

    def update(self, speaker: str, feature: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Add one utterance's (D,) feature to ``speaker``'s statistics; return (mean, std) (D,)
        float32 to normalise that same utterance with."""
        x = np.asarray(feature, dtype=np.float64).reshape(-1)
        n, s, ss = self._sums.pop(speaker, None) or self._start()
        n, s, ss = n + 1.0, s + x, ss + x * x
        self._sums[speaker] = (n, s, ss)
        while len(self._sums) > self.max_speakers:
            self._sums.popitem(last=False)
        mean = s / n
        var = np.maximum(ss / n - mean ** 2, VAR_FLOOR)
        return mean.astype(np.float32), np.sqrt(var).astype(np.float32)

    def welford(self, speaker: str) -> tuple[float, np.ndarray, np.ndarray]:
        """(count, mean, M2) of ``speaker``'s statistics so far, prior included, without adding
        anything: what a graph needs to add the next utterance itself (Welford's update) and
        normalise it exactly as :meth:`update` would."""
        n, s, ss = self._sums.get(speaker) or self._start()
        if n == 0:
            return 0.0, np.zeros_like(self.prior_mean), np.zeros_like(self.prior_mean)
        mean = s / n
        return n, mean, np.maximum(ss - s * mean, 0.0)

    def utterances(self, speaker: str) -> int:
        """How many utterances of ``speaker`` the statistics hold."""
        entry = self._sums.get(speaker)
        return 0 if entry is None else int(round(entry[0] - self.prior_count))

    def reset(self, speaker: str | None = None) -> None:
        """Forget one speaker (or all)."""
        if speaker is None:
            self._sums.clear()
        else:
            self._sums.pop(speaker, None)
