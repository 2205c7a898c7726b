"""MMILN: shapes, masks, batch independence, checkpoints, the pure losses (eqs 24-26) and ULGM
(eqs 29-34 + momentum) by hand, the prepare() contract, and a short training run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mmer.checkpoint import load_checkpoint, save_checkpoint
from mmer.models.mmiln import (FUSED, MMILN, MMILNDims, UnimodalLabelGenerator, cmd, difference_loss,
                               momentum_update, relative_distance, reverse_valid, shifted_label)
from mmer.registry import MODELS
from mmer.training.mmsa import MmsaDataset, load_mmsa, make_synthetic_mmsa, mmsa_collate

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DIMS = (32, 5, 20)                    # synthetic text / audio / vision widths
LENS = (10, 14, 12)                   # text / audio / vision padded lengths
ATOL = 1e-5


def _dims(**kw) -> MMILNDims:
    small = {"text_dim": DIMS[0], "audio_dim": DIMS[1], "vision_dim": DIMS[2], "audio_lstm_dim": 8,
             "vision_lstm_dim": 8, "hidden_dim": 16, "num_heads": 2, "ffn_dim": 32, "num_layers": 2,
             "post_fusion_dim": 16, "post_audio_dim": 8, "post_vision_dim": 8}
    return MMILNDims(**{**small, **kw})


def _model(seed: int = 0, **kw) -> MMILN:
    torch.manual_seed(seed)
    return MMILN(_dims(**kw)).eval()


def _batch(batch: int, seed: int, lens: tuple[int, int, int] = LENS) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lt, la, lv = lens
    text_len = torch.randint(2, lt + 1, (batch,), generator=g)
    return {"text": torch.randn(batch, lt, DIMS[0], generator=g),
            "text_mask": torch.arange(lt).unsqueeze(0) < text_len.unsqueeze(1),
            "audio": torch.randn(batch, la, DIMS[1], generator=g),
            "audio_lengths": torch.randint(0, la + 1, (batch,), generator=g),
            "vision": torch.randn(batch, lv, DIMS[2], generator=g),
            "vision_lengths": torch.randint(1, lv + 1, (batch,), generator=g)}


def _run(model: MMILN, b: dict[str, torch.Tensor]):
    return model(b["text"], b["text_mask"], b["audio"], b["audio_lengths"], b["vision"], b["vision_lengths"])


# -- the model ------------------------------------------------------------------------------
def test_registered_and_every_output_shape():
    assert MODELS.get("mmiln") is MMILN
    model = _model()
    with torch.no_grad():
        out = _run(model, _batch(3, seed=1))
    lt, d = LENS[0], 16
    assert out.prediction.shape == (3, 1)
    assert {k: v.shape for k, v in out.aux.items()} == {"audio": (3, 1), "vision": (3, 1)}
    assert out.features["fused"].shape == (3, 16)
    assert out.features["audio"].shape == out.features["vision"].shape == (3, 8)
    assert out.features["text"].shape == (3, d)
    assert out.features["text_audio"].shape == out.features["text_vision"].shape == (3, lt, d)
    for name in ("h_text_audio", "h_text_vision", "h_audio", "h_vision"):
        assert out.features[name].shape == (3, d)
    assert set(out.losses) == {"similarity", "difference"}
    assert all(v.ndim == 0 and torch.isfinite(v) and v >= 0 for v in out.losses.values())


def test_dims_are_checked():
    with pytest.raises(ValueError, match="regression"):
        MMILN(_dims(label_set="meld7", num_outputs=7))
    with pytest.raises(ValueError, match="heads"):
        MMILN(_dims(hidden_dim=18, num_heads=4))
    with pytest.raises(ValueError, match="num_layers"):
        MMILN(_dims(num_layers=0))


def test_reverse_valid_flips_only_the_valid_prefix():
    x = torch.arange(5.0).view(1, 5, 1).repeat(2, 1, 1)
    mask = torch.tensor([[True, True, True, False, False], [True] * 5])
    out = reverse_valid(x, mask).squeeze(-1)
    assert out.tolist() == [[2.0, 1.0, 0.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0, 0.0]]
    assert torch.equal(reverse_valid(reverse_valid(x, mask), mask), x)


def test_padding_never_changes_the_prediction():
    model = _model()
    b = _batch(4, seed=2)
    g = torch.Generator().manual_seed(3)
    extra = 6
    valid_steps = {"text": b["text_mask"].sum(1), "audio": b["audio_lengths"].clamp(min=1),
                   "vision": b["vision_lengths"]}
    padded = dict(b, text_mask=torch.cat([b["text_mask"], torch.zeros(4, extra, dtype=torch.bool)], dim=1))
    for key, steps in valid_steps.items():   # 6 more steps, and junk (not zeros) in every padded step
        x = torch.cat([b[key], torch.zeros(4, extra, b[key].shape[2])], dim=1)
        valid = torch.arange(x.shape[1]).view(1, -1, 1) < steps.view(-1, 1, 1)
        padded[key] = torch.where(valid, x, torch.randn(x.shape, generator=g))
    with torch.no_grad():
        ref, got = _run(model, b), _run(model, padded)
    assert torch.allclose(ref.prediction, got.prediction, atol=ATOL)
    for name in ("audio", "vision"):
        assert torch.allclose(ref.aux[name], got.aux[name], atol=ATOL)
    assert torch.allclose(ref.features["fused"], got.features["fused"], atol=ATOL)


def test_eval_predictions_are_batch_independent():
    model = _model()
    b = _batch(5, seed=4)
    with torch.no_grad():
        together = _run(model, b).prediction
        alone = torch.cat([_run(model, {k: v[i:i + 1] for k, v in b.items()}).prediction for i in range(5)])
        shuffled = _run(model, {k: v.flip(0) for k, v in b.items()}).prediction.flip(0)
    assert torch.allclose(together, alone, atol=ATOL)
    assert torch.allclose(together, shuffled, atol=ATOL)


def test_checkpoint_round_trip(tmp_path):
    model = _model(seed=5)
    model.prepare({"labels": np.array([1.0, -1.0, 0.5], dtype=np.float32)})
    folder = save_checkpoint(model, tmp_path / "mmiln")
    loaded = load_checkpoint(folder)
    assert isinstance(loaded, MMILN) and loaded.dims == model.dims
    assert not any(k.startswith("ulgm.") for k in model.state_dict())   # the label memory is not a weight
    b = _batch(3, seed=6)
    with torch.no_grad():
        assert torch.equal(_run(model, b).prediction, _run(loaded, b).prediction)


def test_training_loss_is_finite_with_gradients_for_a_single_sample_batch():
    # One sample: CMD's central moments and the centred rows of the difference loss are all
    # zero, where a plain sqrt or norm would give NaN gradients.
    model = _model().train()
    model.prepare({"labels": np.array([0.5], dtype=np.float32)})
    for _ in range(2):   # the second visit also runs the label update
        model.zero_grad()
        loss, parts = model.loss(_run(model, _batch(1, seed=7)), torch.tensor([0.5]), torch.tensor([0]))
        loss.backward()
    assert torch.isfinite(loss) and set(parts) == {"fusion", "audio", "vision", "similarity", "difference"}
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


# -- the pure losses, by hand ---------------------------------------------------------------
def test_cmd_matches_eq24_by_hand():
    x = torch.tensor([[0.0, 1.0], [2.0, 3.0]])    # E = [1, 2]; central moments k=2: [1, 1], k=3: 0, k=4: [1, 1]
    y = torch.tensor([[1.0, 0.0], [1.0, 0.0]])    # E = [1, 0]; every central moment 0
    root2 = math.sqrt(2.0)
    assert cmd(x, y, moments=1).item() == pytest.approx(2.0)
    assert cmd(x, y, moments=4).item() == pytest.approx(2.0 + root2 + 0.0 + root2)
    assert cmd(x, y, moments=4, span=2.0).item() == pytest.approx(2.0 / 2 + root2 / 4 + root2 / 16)
    assert cmd(x, x, moments=5).item() == pytest.approx(0.0)
    with pytest.raises(ValueError):
        cmd(x, y, moments=0)


def test_difference_loss_matches_eq26_by_hand():
    h1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    h2 = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert difference_loss(h1, h2, normalise=False).item() == pytest.approx(1 + 4 + 9 + 16)   # h1^T h2 = h2
    # Centred rows: h1 -> [[.5, -.5], [-.5, .5]], h2 -> [[-1, -1], [1, 1]]; unit rows make every
    # entry of h1^T h2 equal to +-1, so the mean of the squares is 1.
    assert difference_loss(h1, h2).item() == pytest.approx(1.0, abs=1e-5)
    a = torch.tensor([[1.0], [-1.0], [1.0], [-1.0]])
    b = torch.tensor([[1.0], [1.0], [-1.0], [-1.0]])
    assert difference_loss(a, b, normalise=False).item() == pytest.approx(0.0)   # orthogonal over the batch
    assert difference_loss(a, b).item() == pytest.approx(0.0, abs=1e-10)


# -- ULGM -----------------------------------------------------------------------------------
def test_ulgm_equations_by_hand():
    # D_p = 1/sqrt(2), D_n = 3/sqrt(2) -> alpha = (3 - 1) / 1 = 2
    alpha = relative_distance(torch.tensor([[1.0, 0.0]]), torch.tensor([0.0, 0.0]), torch.tensor([4.0, 0.0]))
    assert alpha.item() == pytest.approx(2.0)
    # y_m = 1, alpha_s = 2, alpha_m = 1: 0.5 * 1 * 2 / 1 + 0.5 * (1 + 2 - 1) = 2 (= 1 + (2-1)/2 * (1+1)/1)
    y = shifted_label(torch.tensor([1.0]), torch.tensor([2.0]), torch.tensor([1.0]), bound=3.0)
    assert y.item() == pytest.approx(2.0)
    assert shifted_label(torch.tensor([1.0]), torch.tensor([50.0]), torch.tensor([1.0]), bound=3.0).item() == 3.0
    # epoch 2: 1/3 old + 2/3 new; epoch 3: 2/4 old + 2/4 new
    assert momentum_update(torch.tensor([0.0]), torch.tensor([3.0]), torch.tensor([2])).item() == pytest.approx(2.0)
    assert momentum_update(torch.tensor([1.0]), torch.tensor([3.0]), torch.tensor([3])).item() == pytest.approx(2.0)


def _feats(rows: list[list[float]]) -> dict[str, torch.Tensor]:
    t = torch.tensor(rows)
    return {FUSED: t, "audio": t.clone(), "vision": t.clone()}


def test_ulgm_pushes_labels_towards_the_nearer_centre_with_momentum():
    ulgm = UnimodalLabelGenerator({FUSED: 2, "audio": 2, "vision": 2}, label_bound=3.0, exclude_zero=True)
    y = torch.tensor([2.0, 1.0, -1.0, -2.0, 0.0])
    ulgm.reset(y)
    # Epoch 1: positives at (1, 0), negatives at (-1, 0), the neutral sample far away: no label
    # moves yet (first visits), the centres are the class means and ignore the neutral sample.
    ulgm.update(_feats([[1, 0], [1, 0], [-1, 0], [-1, 0], [0, 9]]), y, torch.arange(5))
    for name in ("audio", "vision"):
        assert torch.equal(ulgm.labels(name), y)
    assert torch.equal(ulgm.centres("audio"), torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
    # Epoch 2, sample 1 (y_m = 1): its fused feature at (0.5, 0) gives alpha_m = (1.5 - 0.5) / 0.5 = 2;
    # its audio feature sits ON the positive centre (alpha_a huge -> clipped to H = 3);
    # its vision feature sits on the negative centre: alpha_v = (0 - 2) / 2 = -1, new label
    # 0.5 * 1 * (-1) / 2 + 0.5 * (1 - 1 - 2) = -1.25.
    feats = {FUSED: torch.tensor([[0.5, 0.0]]), "audio": torch.tensor([[1.0, 0.0]]),
             "vision": torch.tensor([[-1.0, 0.0]])}
    ulgm.update(feats, y[1:2], torch.tensor([1]))
    audio, vision = ulgm.labels("audio")[1].item(), ulgm.labels("vision")[1].item()
    assert audio > 1.0 > vision
    assert audio == pytest.approx(1 / 3 * 1.0 + 2 / 3 * 3.0)      # momentum at n = 2
    assert vision == pytest.approx(1 / 3 * 1.0 + 2 / 3 * -1.25)
    assert int(ulgm.visits[1]) == 2 and torch.equal(ulgm.labels(FUSED), y)
    assert torch.equal(ulgm.labels("audio")[[0, 2, 3, 4]], y[[0, 2, 3, 4]])   # other samples untouched


def test_ulgm_centres_skip_samples_never_seen():
    ulgm = UnimodalLabelGenerator({FUSED: 1, "audio": 1, "vision": 1}, label_bound=3.0, exclude_zero=False)
    ulgm.reset(torch.tensor([1.0, 2.0, -1.0, 0.0]))
    ulgm.update(_feats([[4.0], [-2.0]]), torch.tensor([1.0, -1.0]), torch.tensor([0, 2]))
    # Sample 1 (positive, unseen) would drag the positive centre to 2 with its zero feature.
    assert torch.equal(ulgm.centres(FUSED), torch.tensor([[4.0], [-2.0]]))


def test_training_loss_needs_prepare_and_eval_loss_leaves_the_memory_alone():
    model = _model().train()
    b = _batch(2, seed=8)
    labels, index = torch.tensor([1.0, -1.0]), torch.tensor([0, 1])
    with pytest.raises(RuntimeError, match=r"prepare\(train_arrays\)"):
        model.loss(_run(model, b), labels, index)
    model.prepare({"regression_labels": np.array([1.0, -1.0, 2.0], dtype=np.float32)})
    with pytest.raises(ValueError, match="index"):
        model.loss(_run(model, b), labels, None)
    with pytest.raises(IndexError, match="3 training samples"):
        model.loss(_run(model, b), labels, torch.tensor([0, 5]))
    for _ in range(3):   # three epochs over samples 0 and 1
        model.loss(_run(model, b), labels, index)
    assert model.ulgm.visits.tolist() == [3, 3, 0]
    assert not torch.equal(model.ulgm.labels("audio")[:2], labels)   # generated labels moved off y_m
    model.eval()
    before = {k: v.clone() for k, v in model.ulgm.named_buffers()}
    with torch.no_grad():
        _, parts = model.loss(_run(model, b), labels, torch.tensor([7, 9]))   # valid indices: never read
    assert set(parts) == {"fusion", "similarity", "difference"}
    assert all(torch.equal(before[k], v) for k, v in model.ulgm.named_buffers())


# -- training on synthetic MOSI-shaped data -------------------------------------------------
def test_short_training_beats_the_mean_predictor(tmp_path):
    make_synthetic_mmsa(tmp_path / "tiny.pkl", sizes=(64, 8, 48), text_len=LENS[0], audio_len=LENS[1],
                        vision_len=LENS[2], dims=DIMS, seed=0)
    splits = load_mmsa(tmp_path / "tiny.pkl")
    collate = mmsa_collate("features")
    train = torch.utils.data.DataLoader(MmsaDataset(splits["train"]), batch_size=16, shuffle=True,
                                        collate_fn=collate, generator=torch.Generator().manual_seed(0))
    model = _model(seed=0, num_layers=1, dropout=0.0, post_audio_dropout=0.0)
    model.prepare(splits["train"].arrays())
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    epochs = 8
    totals, fusion = np.zeros(epochs), np.zeros(epochs)
    for epoch in range(epochs):
        for batch in train:
            loss, parts = model.loss(_run(model, batch), batch["labels"], batch["index"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            totals[epoch] += float(loss.detach()) / len(train)
            fusion[epoch] += parts["fusion"] / len(train)
    # The unimodal terms start at zero (every generated label equals y_m in epoch 1, so its
    # weight tanh(0) is 0) and grow as ULGM moves the labels; the multimodal task loss falls fast.
    assert fusion[-1] < 0.25 * fusion[0]
    assert totals[-1] < totals[0]
    assert int(model.ulgm.visits.min()) == epochs
    model.eval()
    test = next(iter(torch.utils.data.DataLoader(MmsaDataset(splits["test"]), batch_size=48, collate_fn=collate)))
    with torch.no_grad():
        pred = _run(model, test).prediction.view(-1)
    truth = test["labels"]
    mae = (pred - truth).abs().mean().item()
    mean_mae = (float(splits["train"].labels.mean()) - truth).abs().mean().item()
    assert mae < mean_mae
