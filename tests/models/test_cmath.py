"""CMATH: shapes, masks, batch independence, checkpoints, the closed-form pieces (KL, smooth-L1
reconstruction, distillation), the asymmetric central stream, and short training runs for both
sentiment regression and 7-class emotion classification on synthetic MMSA data."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mmer.checkpoint import load_checkpoint, save_checkpoint
from mmer.models.cmath import (CMATH, MODALITIES, CMATHDims, distillation_divergence, kl_to_standard_normal,
                               masked_smooth_l1)
from mmer.registry import MODELS
from mmer.training.mmsa import MmsaDataset, load_mmsa, make_synthetic_mmsa, mmsa_collate

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FEATURE_DIMS = (32, 5, 20)             # text / audio / vision widths of the tiny test data
LENGTHS = {"text": 6, "audio": 9, "vision": 11}   # distinct, so a sequence length names its stream
ATOL = 1e-5
NUM_CLASSES = 7                        # meld7
TINY_VOCAB = 500                       # token ids of the tiny random BERT
TRAIN_LENGTHS = (8, 10, 10)            # text / audio / vision steps of the training runs (short: CPU time)


def _dims(**kw) -> CMATHDims:
    base = {"text_dim": FEATURE_DIMS[0], "audio_dim": FEATURE_DIMS[1], "vision_dim": FEATURE_DIMS[2],
            "hidden_dim": 32, "num_heads": 2, "cma_layers": 2, "latent_dim": 16}
    base.update(kw)
    return CMATHDims(**base)


def _model(seed: int = 0, **kw) -> CMATH:
    torch.manual_seed(seed)
    return CMATH(_dims(**kw)).eval()


def _batch(batch: int, seed: int, lengths: dict[str, int] = LENGTHS) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lt, la, lv = lengths["text"], lengths["audio"], lengths["vision"]
    text_len = torch.randint(1, lt + 1, (batch,), generator=g)
    return {"text": torch.randn(batch, lt, FEATURE_DIMS[0], generator=g),
            "text_mask": torch.arange(lt).unsqueeze(0) < text_len.unsqueeze(1),
            "audio": torch.randn(batch, la, FEATURE_DIMS[1], generator=g),
            "audio_lengths": torch.randint(1, la + 1, (batch,), generator=g),
            "vision": torch.randn(batch, lv, FEATURE_DIMS[2], generator=g),
            "vision_lengths": torch.randint(1, lv + 1, (batch,), generator=g)}


def _run(model: CMATH, b: dict):
    return model(b["text"], b["text_mask"], b["audio"], b["audio_lengths"], b["vision"], b["vision_lengths"])


@pytest.mark.parametrize("label_set,num_outputs", [("regression", 1), ("meld7", NUM_CLASSES)])
def test_registered_and_every_output_shape(label_set, num_outputs):
    assert MODELS.get("cmath") is CMATH
    model = _model(label_set=label_set, num_outputs=num_outputs)
    b = _batch(3, seed=1)
    with torch.no_grad():
        out = _run(model, b)
    d, k = model.dims.hidden_dim, model.dims.latent_dim
    assert out.prediction.shape == (3, num_outputs)
    assert out.features["fused"].shape == out.features["mu"].shape == out.features["logvar"].shape == (3, k)
    assert out.features["fine"].shape == (3, LENGTHS["text"], d)
    for m, width in zip(MODALITIES, FEATURE_DIMS):
        assert out.features[m].shape == (3, d)
        assert out.features[f"recovered_{m}"].shape == (3, LENGTHS[m], width)
    assert set(out.aux) == {"fine", *MODALITIES}
    assert all(v.shape == (3, num_outputs) for v in out.aux.values())
    assert set(out.losses) == {"reconstruction", "kl", "distill"}
    assert all(v.ndim == 0 and torch.isfinite(v) and v >= 0 for v in out.losses.values())


def test_dims_are_checked():
    with pytest.raises(ValueError, match="central_modality"):
        CMATH(_dims(central_modality="face"))
    with pytest.raises(ValueError, match="num_outputs"):
        CMATH(_dims(label_set="meld7", num_outputs=6))
    with pytest.raises(ValueError, match="divisible"):
        CMATH(_dims(hidden_dim=30, num_heads=4))


@pytest.mark.parametrize("central", MODALITIES)
def test_padding_never_changes_the_outputs(central):
    model = _model(central_modality=central)
    b = _batch(4, seed=2)
    g = torch.Generator().manual_seed(3)
    padded = dict(b)
    for key, extra in (("text", 5), ("audio", 7), ("vision", 4)):
        x = b[key]
        # Garbage, even non-finite values, beyond each sequence's end must be ignored.
        junk = torch.randn(x.shape[0], extra, x.shape[2], generator=g) * 100
        junk[:, 0, 0] = float("nan")
        padded[key] = torch.cat([x, junk], dim=1)
    padded["text_mask"] = torch.cat([b["text_mask"], torch.zeros(4, 5, dtype=torch.bool)], dim=1)
    # Garbage inside the original padding too.
    padded["audio"][~(torch.arange(padded["audio"].shape[1]) < b["audio_lengths"].unsqueeze(1))] = -float("inf")
    with torch.no_grad():
        ref, got = _run(model, b), _run(model, padded)
    assert torch.allclose(ref.prediction, got.prediction, atol=ATOL)
    assert torch.allclose(ref.features["fused"], got.features["fused"], atol=ATOL)
    for name in ref.losses:
        assert torch.allclose(ref.losses[name], got.losses[name], atol=ATOL), name


def test_eval_predictions_are_batch_independent():
    model = _model(label_set="meld7", num_outputs=NUM_CLASSES)
    b = _batch(5, seed=4)
    with torch.no_grad():
        whole = _run(model, b).prediction
        single = torch.cat([_run(model, {k: v[i:i + 1] for k, v in b.items()}).prediction for i in range(5)])
    assert torch.allclose(whole, single, atol=ATOL)


def test_checkpoint_round_trip_keeps_predictions_and_central(tmp_path):
    model = _model(central_modality="vision", label_set="meld7", num_outputs=NUM_CLASSES)
    b = _batch(3, seed=5)
    with torch.no_grad():
        before = _run(model, b).prediction
    save_checkpoint(model, tmp_path / "cmath")
    loaded = load_checkpoint(tmp_path / "cmath")
    assert isinstance(loaded, CMATH) and not loaded.training
    assert loaded.dims == model.dims and loaded.central == "vision"
    with torch.no_grad():
        assert torch.equal(_run(loaded, b).prediction, before)


def test_kl_matches_the_closed_form_by_hand():
    # Row 1: mu = (1, 0), var = (1, 4): 1/2 [(1 + 1 - 0 - 1) + (0 + 4 - ln 4 - 1)] = 2 - ln(4)/2.
    # Row 2: the prior itself: 0. The batch mean is (2 - ln 2) / 2.
    mu = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    logvar = torch.tensor([[0.0, math.log(4.0)], [0.0, 0.0]])
    assert kl_to_standard_normal(mu, logvar).item() == pytest.approx((2.0 - math.log(2.0)) / 2.0, abs=1e-6)
    assert kl_to_standard_normal(torch.zeros(3, 5), torch.zeros(3, 5)).item() == 0.0


def test_kl_loss_in_the_model_is_weighted_closed_form():
    model = _model(kl_weight=0.25)
    with torch.no_grad():
        out = _run(model, _batch(4, seed=6))
    mu, logvar = out.features["mu"].double(), out.features["logvar"].double()
    by_hand = 0.5 * (mu ** 2 + logvar.exp() - logvar - 1).sum(-1).mean()
    assert out.losses["kl"].item() == pytest.approx(0.25 * by_hand.item(), rel=1e-5)


def test_eval_is_deterministic_and_training_samples_z():
    model = _model(dropout=0.0)            # no dropout: sampling is the only randomness left
    b = _batch(4, seed=7)
    with torch.no_grad():
        first, second = _run(model, b), _run(model, b)
        assert torch.equal(first.prediction, second.prediction)
        assert torch.equal(first.features["fused"], first.features["mu"])     # z = mu in eval
        model.train()
        torch.manual_seed(11)
        a = _run(model, b)
        torch.manual_seed(11)
        a_again = _run(model, b)
        c = _run(model, b)
    assert torch.equal(a.prediction, a_again.prediction)                      # the RNG is the only source
    assert not torch.allclose(a.prediction, c.prediction)                     # z ~ N(mu, s^2) is sampled
    assert not torch.allclose(a.features["fused"], a.features["mu"])
    assert torch.allclose(a.features["mu"], first.features["mu"], atol=ATOL)  # mu itself is deterministic


@pytest.mark.parametrize("central", MODALITIES)
def test_central_modality_is_the_only_query_stream(central):
    model = _model(central_modality=central)
    seen: list[tuple[int, int]] = []

    def record(module, args, output):
        query, key = args[0], args[1]
        seen.append((query.shape[1], key.shape[1]))

    hooks = [attn.register_forward_hook(record) for layer in model.cma for attn in layer.cross_attn]
    with torch.no_grad():
        out = _run(model, _batch(2, seed=8))
    for h in hooks:
        h.remove()
    auxiliaries = {LENGTHS[m] for m in MODALITIES if m != central}
    assert len(seen) == 2 * model.dims.cma_layers
    assert all(q == LENGTHS[central] for q, _ in seen)          # the central stream always queries
    assert {k for _, k in seen} == auxiliaries                  # each auxiliary is read, never the central
    assert out.features["fine"].shape[1] == LENGTHS[central]


def test_reconstruction_loss_is_zero_when_perfect_and_smooth_l1_by_hand():
    target = torch.randn(2, 4, 3)
    mask = torch.tensor([[True, True, False, False], [True, True, True, False]])
    recon = target.clone()
    recon[~mask] = 1e6                                           # padded steps may hold anything
    assert masked_smooth_l1(recon, target, mask).item() == 0.0
    # Two valid steps x one feature: errors 0.5 (quadratic: 0.125) and 3 (linear: 2.5) -> mean 1.3125.
    t = torch.zeros(1, 3, 1)
    r = torch.tensor([[[0.5], [3.0], [99.0]]])
    assert masked_smooth_l1(r, t, torch.tensor([[True, True, False]])).item() == pytest.approx(1.3125)


def test_recovered_modality_is_rebuilt_from_the_others_only():
    model = _model()
    b = _batch(2, seed=10)
    changed = dict(b, audio=torch.randn_like(b["audio"]))
    with torch.no_grad():
        ref, got = _run(model, b), _run(model, changed)
    # R_audio never reads audio, so its decoded reconstruction is unchanged; text's reads audio.
    assert torch.allclose(ref.features["recovered_audio"], got.features["recovered_audio"], atol=ATOL)
    assert not torch.allclose(ref.features["recovered_text"], got.features["recovered_text"])


def test_distillation_divergence_by_hand():
    # Teacher (0, 0) -> p = (1/2, 1/2); student (ln 3, 0) -> q = (3/4, 1/4).
    # KL(p || q) = 1/2 ln(2/3) + 1/2 ln 2 = 1/2 ln(4/3); at tau = 1 no tau^2 factor.
    teacher = torch.tensor([[0.0, 0.0]])
    student = torch.tensor([[math.log(3.0), 0.0]])
    got = distillation_divergence(student, teacher, "classification", temperature=1.0)
    assert got.item() == pytest.approx(0.5 * math.log(4.0 / 3.0), abs=1e-6)
    assert distillation_divergence(teacher, teacher, "classification", 2.0).item() == pytest.approx(0.0, abs=1e-7)
    reg = distillation_divergence(torch.tensor([[1.5], [-1.0]]), torch.tensor([[0.5], [1.0]]), "regression", 2.0)
    assert torch.allclose(reg, torch.tensor([1.0, 4.0]))


def test_distillation_teaches_the_fine_heads_and_leaves_the_coarse_teacher_alone():
    model = _model(label_set="meld7", num_outputs=NUM_CLASSES).train()
    out = _run(model, _batch(3, seed=12))
    out.losses["distill"].backward()
    coarse = [p.grad for p in model.coarse_head.parameters()]
    assert all(g is None or torch.count_nonzero(g) == 0 for g in coarse)     # stop-gradient on the teacher
    assert torch.count_nonzero(model.fine_head.weight.grad) > 0
    assert all(torch.count_nonzero(model.modality_heads[m].weight.grad) > 0 for m in MODALITIES)


def _train_and_test(tmp_path, label_set: str, num_outputs: int, epochs: int):
    classes = num_outputs if label_set != "regression" else 0
    lt, la, lv = TRAIN_LENGTHS
    make_synthetic_mmsa(tmp_path / "syn.pkl", sizes=(128, 8, 80), dims=FEATURE_DIMS, num_classes=classes, seed=0,
                        text_len=lt, audio_len=la, vision_len=lv)
    splits = load_mmsa(tmp_path / "syn.pkl", task="regression" if not classes else "classification")
    torch.manual_seed(0)
    model = CMATH(_dims(label_set=label_set, num_outputs=num_outputs, cma_layers=1, dropout=0.0))
    collate = mmsa_collate(model.text_input)
    loader = torch.utils.data.DataLoader(MmsaDataset(splits["train"]), batch_size=32, shuffle=True,
                                         collate_fn=collate, generator=torch.Generator().manual_seed(0))
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3)
    epoch_losses = []
    for _ in range(epochs):
        total = 0.0
        for b in loader:
            loss, parts = model.loss(_run(model, b), b["labels"], b["index"])
            assert set(parts) == {"task", "reconstruction", "kl", "distill"}
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += loss.item()
        epoch_losses.append(total / len(loader))
    model.eval()
    test = collate([MmsaDataset(splits["test"])[i] for i in range(len(splits["test"]))])
    with torch.no_grad():
        prediction = _run(model, test).prediction
    return epoch_losses, prediction, test["labels"], splits["train"].labels


def test_training_regression_beats_the_mean_predictor(tmp_path):
    losses, prediction, labels, train_labels = _train_and_test(tmp_path, "regression", 1, epochs=6)
    assert losses[-1] < 0.8 * losses[0]
    mae = (prediction.view(-1) - labels).abs().mean().item()
    mean_mae = (labels - float(train_labels.mean())).abs().mean().item()
    assert mae < 0.75 * mean_mae, (mae, mean_mae)


def test_training_emotion_classes_beats_the_majority_class(tmp_path):
    losses, prediction, labels, train_labels = _train_and_test(tmp_path, "meld7", NUM_CLASSES, epochs=6)
    assert labels.dtype == torch.int64
    assert losses[-1] < 0.8 * losses[0]
    accuracy = (prediction.argmax(-1) == labels).float().mean().item()
    majority = (labels == int(np.bincount(train_labels).argmax())).float().mean().item()
    assert accuracy > majority + 0.1, (accuracy, majority)


def test_language_model_text_reads_ids_trains_and_round_trips(tmp_path):
    from transformers import BertConfig

    # A tiny random BERT built from its config (no download, no tokenizer needed for ids).
    config = BertConfig(vocab_size=TINY_VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    model = CMATH(_dims(text_encoder="tiny-bert", cma_layers=1), encoder_config=config)
    assert model.text_input == "ids" and model.text.width == 32
    b = _batch(2, seed=13)
    b["text"] = torch.randint(5, TINY_VOCAB, b["text_mask"].shape)
    out = _run(model, b)
    assert out.prediction.shape == (2, 1) and out.features["recovered_text"].shape == (2, LENGTHS["text"], 32)
    loss, _ = model.loss(out, torch.tensor([0.5, -1.0]))
    loss.backward()
    # The reconstruction target is detached, the encoder's input is not: the language model trains.
    grads = [p.grad for p in model.text.encoder.parameters() if p.grad is not None]
    assert grads and any(torch.count_nonzero(g) > 0 for g in grads)
    model.eval()
    save_checkpoint(model, tmp_path / "cmath_lm")
    loaded = load_checkpoint(tmp_path / "cmath_lm")
    with torch.no_grad():
        assert torch.equal(_run(loaded, b).prediction, _run(model, b).prediction)
