"""Running per-speaker statistics (mmer.speaker_norm) and per-modality calibration (mmer.calibration)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmer.calibration import Calibration
from mmer.speaker_norm import SpeakerNormalizer
from mmer.training.voice import abstain_threshold, causal_order, fit_temperature


def test_running_statistics_equal_the_batch_statistics_without_prior():
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, size=(20, 4))
    norm = SpeakerNormalizer(np.zeros(4), np.ones(4), prior_count=0)
    for row in x:
        mean, std = norm.update("ann", row)
    np.testing.assert_allclose(mean, x.mean(0), rtol=1e-5)
    np.testing.assert_allclose(std, x.std(0), rtol=1e-4)
    assert norm.utterances("ann") == 20 and norm.utterances("bob") == 0


def test_the_prior_counts_as_pseudo_utterances_and_speakers_stay_apart():
    norm = SpeakerNormalizer(np.zeros(2), np.ones(2), prior_count=2)
    mean, std = norm.update("ann", np.array([3.0, 3.0]))
    # (2 * 0 + 3) / 3 = 1; E[x^2] = (2 * 1 + 9) / 3 = 11 / 3; var = 11/3 - 1
    np.testing.assert_allclose(mean, [1.0, 1.0], rtol=1e-6)
    np.testing.assert_allclose(std, np.sqrt([8 / 3, 8 / 3]), rtol=1e-6)
    mean_bob, _ = norm.update("bob", np.array([-3.0, 0.0]))
    np.testing.assert_allclose(mean_bob, [-1.0, 0.0], rtol=1e-6)
    norm.reset("ann")
    assert norm.utterances("ann") == 0 and norm.utterances("bob") == 1


def test_causal_order_groups_speakers_and_is_seeded():
    speakers = ["b", "a", "b", "a", "b"]
    order = causal_order(speakers, seed=3)
    assert sorted(order) == list(range(5)) and order == causal_order(speakers, seed=3)
    assert [speakers[i] for i in order] == ["a", "a", "b", "b", "b"]


def test_temperature_lowers_dev_nll_on_a_miscalibrated_model():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, 400)
    logits = rng.normal(0, 1, (400, 4))
    right = rng.random(400) < 0.6             # 60 % right, but the logits claim near-certainty
    logits[np.arange(400), np.where(right, labels, (labels + 1) % 4)] += 8.0
    t = fit_temperature(logits, labels)
    before = float(F.cross_entropy(torch.tensor(logits), torch.tensor(labels)))
    after = float(F.cross_entropy(torch.tensor(logits / t), torch.tensor(labels)))
    assert t > 2.0 and after < 0.5 * before
    probs = Calibration(temperature=t).probs(logits)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
    assert abs(float(probs.max(-1).mean()) - right.mean()) < 0.1   # confidence now matches accuracy


def test_abstain_threshold_finds_where_predictions_are_noise():
    rng = np.random.default_rng(2)
    n = 600
    labels = rng.integers(0, 4, n)
    conf = rng.uniform(0.25, 0.9, n)
    pred = np.where(conf > 0.5, labels, rng.integers(0, 4, n))   # below 0.5: a random guess
    probs = np.full((n, 4), 0.0)
    probs[np.arange(n), pred] = conf
    others = (1 - conf) / 3
    probs += (probs == 0) * others[:, None]
    t = abstain_threshold(probs, labels, chance=0.25)
    assert 0.4 <= t <= 0.55


def test_calibration_is_read_from_the_checkpoint_and_validated():
    class Loaded:
        checkpoint_meta = {"calibration": {"temperature": 2.0, "reliability": 0.5, "min_confidence": 0.3,
                                           "fitted_on": "dev"}}

    assert Calibration.of(Loaded()).temperature == 2.0 and Calibration.of(object()) == Calibration()
    with pytest.raises(ValueError, match="temperature"):
        Calibration(temperature=0.0)
