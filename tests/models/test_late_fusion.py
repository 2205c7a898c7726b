"""Confidence-weighted late fusion: hand-computed pooling, absence, coverage, dev tuning, checkpoints."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

import mmer
from mmer.checkpoint import WEIGHTS, save_checkpoint
from mmer.labels import get_label_set
from mmer.models.late_fusion import LateFusion, LateFusionDims, sample_confidence, weighted_f1
from mmer.registry import MODELS

MELD = get_label_set("meld7")
P_TEXT = [0.7, 0.2, 0.1]
P_AUDIO = [0.2, 0.6, 0.2]


def _two_modality(**kw) -> LateFusion:
    """Text + audio over MELD sentiments (3 classes), both already in the target label set."""
    dims = LateFusionDims(label_set="meld_sentiment3", num_labels=3, modalities=("text", "audio"),
                          source_label_sets=("meld_sentiment3", "meld_sentiment3"), base_weights=(1.0, 0.5), **kw)
    return LateFusion(dims)


def _confidence_by_hand(p: list[float]) -> float:
    entropy = -sum(x * math.log(x) for x in p)
    return 1.0 - entropy / math.log(len(p))


def _inputs() -> dict[str, torch.Tensor]:
    return {"text": torch.tensor([P_TEXT]), "audio": torch.tensor([P_AUDIO])}


def test_registered_and_defaults_are_the_embedded_stack():
    assert MODELS.get("late_fusion") is LateFusion
    fusion = LateFusion(LateFusionDims())
    assert fusion.dims.modalities == ("text", "audio", "visual")
    assert fusion.dims.source_label_sets == ("meld7", "emodb7", "fer2013")
    assert list(fusion.parameters()) == []


def test_log_linear_two_modalities_by_hand():
    c_t, c_a = _confidence_by_hand(P_TEXT), _confidence_by_hand(P_AUDIO)
    w_t, w_a = 1.0 * c_t, 0.5 * c_a
    w_t, w_a = w_t / (w_t + w_a), w_a / (w_t + w_a)
    unnorm = [pt ** w_t * pa ** w_a for pt, pa in zip(P_TEXT, P_AUDIO)]
    expected = [u / sum(unnorm) for u in unnorm]
    out = _two_modality()(_inputs())
    assert torch.allclose(out.features["weights"], torch.tensor([[w_t, w_a]]), atol=1e-6)
    assert torch.allclose(out.probs, torch.tensor([expected]), atol=1e-6)
    assert torch.allclose(out.logits.exp(), out.probs, atol=1e-6)  # logits are log q


def test_linear_pooling_and_max_prob_confidence_by_hand():
    # max-prob confidence rescaled so a uniform guess is 0: (max - 1/K) / (1 - 1/K)
    c_t, c_a = (0.7 - 1 / 3) / (2 / 3), (0.6 - 1 / 3) / (2 / 3)
    w_t, w_a = 1.0 * c_t, 0.5 * c_a
    w_t, w_a = w_t / (w_t + w_a), w_a / (w_t + w_a)
    expected = [w_t * pt + w_a * pa for pt, pa in zip(P_TEXT, P_AUDIO)]
    out = _two_modality(pooling="linear", confidence="max_prob")(_inputs())
    assert torch.allclose(out.probs, torch.tensor([expected]), atol=1e-6)
    out_none = _two_modality(pooling="linear", confidence="none")(_inputs())
    base = [(1.0 * pt + 0.5 * pa) / 1.5 for pt, pa in zip(P_TEXT, P_AUDIO)]
    assert torch.allclose(out_none.probs, torch.tensor([base]), atol=1e-6)


def test_sample_confidence_bounds():
    covered = torch.ones(4, dtype=torch.bool)
    p = torch.tensor([[0.25, 0.25, 0.25, 0.25], [1.0, 0.0, 0.0, 0.0]])
    for kind in ("entropy", "max_prob"):
        assert torch.allclose(sample_confidence(p, covered, kind), torch.tensor([0.0, 1.0]), atol=1e-6)
    with pytest.raises(ValueError, match="unknown confidence"):
        sample_confidence(p, covered, "vibes")


@pytest.mark.parametrize("pooling", ["log_linear", "linear"])
def test_absent_modality_drops_out(pooling):
    fusion = _two_modality(pooling=pooling)
    text = torch.tensor([P_TEXT, P_TEXT])
    audio = torch.tensor([P_AUDIO, [math.nan, 5.0, -3.0]])  # row 1's audio is garbage and absent
    out = fusion({"text": text, "audio": audio}, present={"audio": torch.tensor([True, False])})
    assert torch.isfinite(out.logits).all()
    assert out.features["weights"][1].tolist() == [1.0, 0.0]
    # Alone, a modality's distribution comes back unchanged; a missing key means the same.
    assert torch.allclose(out.probs[1], torch.tensor(P_TEXT), atol=1e-6)
    text_only = fusion({"text": text[1:]})
    assert torch.allclose(text_only.probs[0], out.probs[1], atol=1e-6)
    assert not torch.allclose(out.probs[0], out.probs[1], atol=1e-3)  # row 0 did use its audio


def test_nothing_present_is_uniform_without_nan():
    fusion = _two_modality()
    out = fusion(_inputs(), present={"text": torch.tensor([False]), "audio": torch.tensor([False])})
    assert torch.allclose(out.probs, torch.full((1, 3), 1 / 3), atol=1e-6)
    assert torch.all(out.features["weights"] == 0)


def test_uncovered_class_is_not_vetoed_by_a_voice_model_without_it():
    fusion = LateFusion(LateFusionDims())  # text meld7, audio emodb7, visual fer2013
    emodb = get_label_set("emodb7")
    voice = torch.full((1, len(emodb)), 0.02)
    voice[0, emodb.index("anger")] = 0.88                 # a confident angry voice
    text = torch.full((1, len(MELD)), 0.05)
    text[0, MELD.index("surprise")] = 0.70                # the words say surprise
    mapped = fusion.map_to_target({"text": text, "audio": voice})
    surprise = MELD.index("surprise")
    assert mapped["audio"][0, surprise] == 0              # EmoDB cannot say surprise at all
    assert torch.allclose(mapped["audio"].sum(-1), torch.ones(1))
    out = fusion(mapped)
    # Naive pooling (every class "covered") lets the missing class veto surprise.
    everything = {m: torch.ones(len(MELD), dtype=torch.bool) for m in ("text", "audio")}
    naive = fusion(mapped, covered=everything)
    assert naive.probs[0, surprise] < 1e-3
    assert out.probs[0, surprise] > 0.1
    # The voice still speaks on the classes it knows: anger is raised over text alone.
    alone = fusion({"text": text})
    assert out.probs[0, MELD.index("anger")] > alone.probs[0, MELD.index("anger")]


def test_weighted_f1_matches_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    labels, preds = rng.integers(0, 5, 200), rng.integers(0, 5, 200)
    preds[:80] = labels[:80]
    ours = weighted_f1(labels, preds, num_labels=5)
    assert ours == pytest.approx(metrics.f1_score(labels, preds, average="weighted"), abs=1e-12)


def _dev_set(n: int = 300, seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Text and audio carry the label (each ~60% alone); the face is confident noise."""
    rng = np.random.default_rng(seed)
    num_classes = len(MELD)
    labels = rng.integers(0, num_classes, n)

    def softmax(z):
        z = z - z.max(-1, keepdims=True)
        return np.exp(z) / np.exp(z).sum(-1, keepdims=True)

    onehot = np.eye(num_classes)[labels]
    text = softmax(2.0 * onehot + rng.normal(0, 1.0, (n, num_classes)))
    audio = softmax(2.0 * onehot + rng.normal(0, 1.0, (n, num_classes)))
    noise = softmax(6.0 * np.eye(num_classes)[rng.integers(0, num_classes, n)])
    return {"text": text, "audio": audio, "visual": noise}, labels


def test_fit_weights_silences_a_noise_modality_and_raises_dev_f1():
    dims = LateFusionDims(source_label_sets=("meld7", "meld7", "meld7"))
    fusion = LateFusion(dims)
    dev_probs, dev_labels = _dev_set()
    present = {"visual": np.ones(len(dev_labels), dtype=bool)}

    def dev_f1(model):
        preds = model({k: torch.as_tensor(v, dtype=torch.float32) for k, v in dev_probs.items()},
                      {k: torch.as_tensor(v) for k, v in present.items()}).probs.argmax(-1).numpy()
        return weighted_f1(dev_labels, preds, len(MELD))

    fitted = fusion.fit_weights(dev_probs, present, dev_labels)
    assert isinstance(fitted, LateFusionDims)
    assert dataclasses.replace(fitted, base_weights=dims.base_weights) == dims  # only weights change
    assert fitted.base_weights[2] == 0.0                      # the face is pure noise
    assert min(fitted.base_weights[:2]) > 0                   # both informative modalities kept
    before, after = dev_f1(fusion), dev_f1(LateFusion(fitted))
    assert after > before + 0.05, (before, after)


@pytest.mark.parametrize("pooling", ["log_linear", "linear"])
def test_checkpoint_round_trip_with_no_weights(tmp_path, pooling):
    dims = LateFusionDims(base_weights=(1.0, 0.25, 0.75), confidence="max_prob", pooling=pooling)
    fusion = LateFusion(dims)
    folder = save_checkpoint(fusion, tmp_path / "late", provenance={"test": True})
    from safetensors.torch import load_file
    assert load_file(str(folder / WEIGHTS)) == {}             # nothing trainable is stored
    loaded = mmer.load(folder)
    assert isinstance(loaded, LateFusion) and loaded.dims == dims
    assert loaded.device == torch.device("cpu")
    g = torch.Generator().manual_seed(3)
    probs = {m: torch.softmax(torch.randn(4, len(MELD), generator=g), -1) for m in dims.modalities}
    present = {"audio": torch.tensor([True, False, True, False])}
    ref, got = fusion(probs, present), loaded(probs, present)
    assert torch.equal(ref.logits, got.logits)
    assert torch.equal(ref.features["weights"], got.features["weights"])


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="one entry each"):
        LateFusion(LateFusionDims(base_weights=(1.0, 0.5)))
    fusion = LateFusion(LateFusionDims())
    with pytest.raises(KeyError, match="unknown modalities"):
        fusion({"smell": torch.ones(1, 7) / 7})
    with pytest.raises(ValueError, match="classes of label set 'emodb7'"):
        fusion.map_to_target({"audio": torch.ones(1, 6) / 6})
