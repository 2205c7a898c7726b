"""DERL: shapes, masks, batch independence, checkpoints, eq. (24) and the gates by hand, training."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch.utils.data import DataLoader

from mmer.checkpoint import load_checkpoint, save_checkpoint
from mmer.models.derl import (DERL, DERLDims, EnhancementUnit, FilterUnit, MaskedBatchNorm1d, l2_distance_loss,
                              sinusoidal_positions)
from mmer.registry import MODELS
from mmer.training.mmsa import MmsaDataset, load_mmsa, make_synthetic_mmsa, mmsa_collate

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TEXT_DIM, AUDIO_DIM, VISION_DIM = 32, 5, 20          # synthetic MOSI-shaped widths
TEXT_LEN, AUDIO_LEN, VISION_LEN = 12, 20, 16
SMALL = DERLDims(text_dim=TEXT_DIM, hidden_dim=16, num_heads=2, num_layers=2, ffn_dim=32)
ATOL = 1e-5


def _model(dims: DERLDims = SMALL, seed: int = 0) -> DERL:
    torch.manual_seed(seed)
    model = DERL(dims)
    _warm_batch_norm(model)
    return model.eval()


def _warm_batch_norm(model: DERL) -> None:
    """A few training-mode passes so BatchNorm's running statistics are not the identity."""
    model.train()
    with torch.no_grad():
        for seed in range(3):
            model(**_inputs(6, seed=100 + seed))


def _inputs(batch: int, seed: int, text_len: int = TEXT_LEN, audio_len: int = AUDIO_LEN,
            vision_len: int = VISION_LEN) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    text_steps = torch.randint(1, text_len + 1, (batch,), generator=g)
    return {"text": torch.randn(batch, text_len, TEXT_DIM, generator=g),
            "text_mask": torch.arange(text_len) < text_steps.unsqueeze(1),
            "audio": torch.randn(batch, audio_len, AUDIO_DIM, generator=g),
            "audio_lengths": torch.randint(1, audio_len + 1, (batch,), generator=g),
            "vision": torch.randn(batch, vision_len, VISION_DIM, generator=g),
            "vision_lengths": torch.randint(1, vision_len + 1, (batch,), generator=g)}


def test_registered_and_shapes_at_mosi_size():
    assert MODELS.get("derl") is DERL
    dims = DERLDims()                       # Table 1, CMU-MOSI: d 50, 10 heads, 2 layers, beta 0.005
    assert (dims.hidden_dim, dims.num_heads, dims.num_layers, dims.distance_weight) == (50, 10, 2, 0.005)
    model = DERL(dims).eval()
    g = torch.Generator().manual_seed(0)
    batch = 3
    out = model(torch.randn(batch, 10, 768, generator=g), torch.ones(batch, 10, dtype=torch.bool),
                torch.randn(batch, 14, 5, generator=g), torch.tensor([14, 3, 0]),
                torch.randn(batch, 9, 20, generator=g), torch.tensor([9, 9, 1]))
    assert out.prediction.shape == (batch, 1)
    for m in ("text", "audio", "vision"):
        for name in (m, f"invariant_{m}", f"specific_{m}"):
            assert out.features[name].shape == (batch, 50)
    assert out.features["concat"].shape == out.features["fused"].shape == (batch, 150)
    assert set(out.losses) == {"distance"} and out.losses["distance"].ndim == 0
    assert torch.isfinite(out.prediction).all() and out.aux == {}


def test_dims_are_checked():
    with pytest.raises(ValueError, match="one score"):
        DERL(DERLDims(num_outputs=2))
    with pytest.raises(ValueError, match="divisible"):
        DERL(dataclasses.replace(SMALL, num_heads=3))
    with pytest.raises(ValueError, match="odd"):
        DERL(dataclasses.replace(SMALL, audio_kernel=2))
    with pytest.raises(ValueError, match="regression_loss"):
        DERL(dataclasses.replace(SMALL, regression_loss="huber"))


def test_padding_never_changes_the_prediction():
    model = _model()
    x = _inputs(5, seed=1)
    with torch.no_grad():
        ref = model(**x)
    # Longer sequences whose extra steps (and the steps already past each length) hold garbage,
    # -inf included (MOSEI's COVAREP padding).
    pad = {"text": 4, "audio": 7, "vision": 3}
    g = torch.Generator().manual_seed(9)
    padded = {}
    for m, key_len in (("text", "text_mask"), ("audio", "audio_lengths"), ("vision", "vision_lengths")):
        seq = torch.cat([x[m], torch.randn(5, pad[m], x[m].shape[-1], generator=g)], dim=1)
        valid = x["text_mask"] if m == "text" else torch.arange(x[m].shape[1]) < x[key_len].unsqueeze(1)
        valid = torch.cat([valid, torch.zeros(5, pad[m], dtype=torch.bool)], dim=1)
        noise = torch.randn(seq.shape, generator=g) * 100
        noise[..., 0] = -math.inf
        padded[m] = torch.where(valid.unsqueeze(-1), seq, noise)
        padded[key_len] = valid if m == "text" else x[key_len]
    with torch.no_grad():
        out = model(**padded)
    assert torch.isfinite(out.prediction).all()
    assert torch.allclose(out.prediction, ref.prediction, atol=ATOL)
    assert torch.allclose(out.features["fused"], ref.features["fused"], atol=ATOL)


def test_eval_predictions_are_batch_independent():
    model = _model()
    x = _inputs(7, seed=2)
    with torch.no_grad():
        together = model(**x).prediction
        alone = torch.cat([model(**{k: v[i:i + 1] for k, v in x.items()}).prediction for i in range(7)])
        reordered = model(**{k: v.flip(0) for k, v in x.items()}).prediction.flip(0)
    assert torch.allclose(together, alone, atol=ATOL)
    assert torch.allclose(together, reordered, atol=ATOL)


def test_checkpoint_round_trip(tmp_path):
    model = _model(dataclasses.replace(SMALL, use_filter=False, distance_weight=0.5))
    x = _inputs(4, seed=3)
    with torch.no_grad():
        ref = model(**x).prediction
    save_checkpoint(model, tmp_path / "derl")
    loaded = load_checkpoint(tmp_path / "derl")
    assert isinstance(loaded, DERL) and loaded.dims == model.dims and not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(**x).prediction, ref)


def test_l2_distance_loss_matches_eq24_by_hand():
    text = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    audio = torch.tensor([[3.0, 4.0], [1.0, 1.0]])
    vision = torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    # Utterance 0: |t-a| = 5, |t-v| = 1, |a-v| = sqrt(9 + 9); utterance 1: all three coincide.
    per_utterance = [(5.0 + 1.0 + math.sqrt(18.0)) / 3, 0.0]
    expected = sum(per_utterance) / 2
    assert l2_distance_loss(text, audio, vision).item() == pytest.approx(expected, rel=1e-6)
    # Zero distance must not produce NaN gradients (a norm's derivative at 0).
    x = text.clone().requires_grad_(True)
    l2_distance_loss(x, audio, vision).backward()
    assert torch.isfinite(x.grad).all()


def test_distance_term_and_loss_follow_eqs_23_to_29():
    model = _model(dataclasses.replace(SMALL, distance_weight=0.5))
    x, labels = _inputs(4, seed=4), torch.tensor([0.5, -1.0, 2.0, 0.0])
    with torch.no_grad():
        out = model(**x)
    f = out.features
    for m in ("text", "audio", "vision"):          # eq. (23) on the pooled representations
        assert torch.allclose(f[m], f[f"invariant_{m}"] + f[f"specific_{m}"], atol=ATOL)
    assert torch.equal(f["concat"], torch.cat([f["text"], f["audio"], f["vision"]], dim=-1))   # eq. (25)
    l_dis = l2_distance_loss(f["text"], f["audio"], f["vision"])
    assert out.losses["distance"].item() == pytest.approx(0.5 * l_dis.item(), rel=1e-5)
    total, parts = model.loss(out, labels)
    mse = ((out.prediction.view(-1) - labels) ** 2).mean()                                   # eq. (28)
    assert parts["task"] == pytest.approx(mse.item(), rel=1e-5)
    assert total.item() == pytest.approx(mse.item() + 0.5 * l_dis.item(), rel=1e-5)        # eq. (29)
    l1 = DERL(dataclasses.replace(SMALL, regression_loss="l1"))
    assert l1.task_loss(out.prediction, labels).item() == pytest.approx(
        (out.prediction.view(-1) - labels).abs().mean().item(), rel=1e-5)


def test_filter_unit_follows_eqs_21_22():
    torch.manual_seed(0)
    fu = FilterUnit(4)
    invariant = torch.tensor([[[1.0, 2.0, 3.0, 4.0]]])      # M_m (1, 1, 4)
    specific = torch.tensor([[[-1.0, 0.0, 5.0, 2.0]]])      # H_m
    with torch.no_grad():
        fu.gate_invariant.weight.zero_()
        fu.gate_specific.weight.zero_()
        for bias, expected in ((50.0, specific), (-50.0, invariant), (0.0, (invariant + specific) / 2)):
            fu.gate_specific.bias.fill_(bias)               # G = sigmoid(b): 1, 0, 1/2 everywhere
            filtered, gate = fu(invariant, specific)
            assert torch.allclose(filtered, expected, atol=1e-6)
            assert torch.allclose(gate, torch.sigmoid(torch.tensor(bias)).expand(1, 1, 4))
        # A gate that opens only channel 0 keeps H there and falls back to M elsewhere.
        fu.gate_specific.bias.copy_(torch.tensor([50.0, -50.0, -50.0, -50.0]))
        filtered, _ = fu(invariant, specific)
        assert torch.allclose(filtered, torch.tensor([[[-1.0, 2.0, 3.0, 4.0]]]), atol=1e-6)
    # Random weights: G = sigmoid(M W'_M^T + H W'_H^T + b), H'' = G H + (1 - G) M elementwise.
    fu = FilterUnit(4)
    m, h = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    filtered, gate = fu(m, h)
    g = torch.sigmoid(m @ fu.gate_invariant.weight.T + h @ fu.gate_specific.weight.T + fu.gate_specific.bias)
    assert torch.allclose(gate, g, atol=1e-6)
    assert torch.allclose(filtered, g * h + (1 - g) * m, atol=1e-6)


def test_enhancement_unit_follows_eqs_16_20_and_ignores_padding():
    torch.manual_seed(0)
    eu = EnhancementUnit(4, dropout=0.0).eval()
    m, h = torch.randn(1, 5, 4), torch.randn(1, 5, 4)
    mask = torch.tensor([[True, True, True, False, False]])
    enhanced, weights = eu(m, h, mask)
    mp, hp = m @ eu.proj_invariant.weight.T, h @ eu.proj_specific.weight.T       # (16), (17)
    agg = mp * hp                                                                # (18)
    scores = (hp @ agg.transpose(1, 2)) / agg.norm(dim=-1).unsqueeze(1)          # (19)
    w = scores[..., :3].softmax(-1)
    assert torch.allclose(weights[..., :3], w, atol=1e-5)
    assert torch.equal(weights[..., 3:], torch.zeros(1, 5, 2))                   # padded keys get nothing
    assert torch.allclose(enhanced, w @ hp[:, :3] + m, atol=1e-5)                # (20)
    # W_H = 0: nothing specific to add, M''_m = M_m.
    with torch.no_grad():
        eu.proj_specific.weight.zero_()
    assert torch.allclose(eu(m, h, mask)[0], m)


def test_building_blocks():
    pe = sinusoidal_positions(6, 8, torch.zeros(()))
    assert pe.shape == (6, 8)
    assert torch.allclose(pe[:, 0], torch.arange(6.0).sin()) and torch.allclose(pe[:, 1], torch.arange(6.0).cos())
    # BatchNorm statistics come from valid steps only: huge padded values leave them unchanged.
    bn = MaskedBatchNorm1d(3).train()
    x, mask = torch.randn(2, 3, 5), torch.tensor([[True] * 5, [True, True, False, False, False]])
    out = bn(torch.where(mask.unsqueeze(1), x, torch.tensor(1e6)), mask)
    valid = x.transpose(1, 2)[mask]                                              # (7, 3)
    expected = (valid - valid.mean(0)) / torch.sqrt(valid.var(0, unbiased=False) + bn.eps)
    assert torch.allclose(out.transpose(1, 2)[mask], expected, atol=1e-5)
    assert torch.allclose(bn.running_mean, 0.1 * valid.mean(0), atol=1e-6)


def test_ablations_build_and_run():
    x = _inputs(2, seed=5)
    for dims in (dataclasses.replace(SMALL, use_enhancement=False), dataclasses.replace(SMALL, use_filter=False),
                 dataclasses.replace(SMALL, use_enhancement=False, use_filter=False, num_layers=1)):
        model = _model(dims)
        assert (model.layers[0].eu is None) != dims.use_enhancement
        assert (model.layers[0].fu is None) != dims.use_filter
        with torch.no_grad():
            assert torch.isfinite(model(**x).prediction).all()


def test_token_id_text_encoder_and_its_checkpoint(tmp_path):
    from transformers import BertConfig

    config = BertConfig(vocab_size=500, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64)
    torch.manual_seed(0)
    model = DERL(dataclasses.replace(SMALL, text_encoder="tiny-bert"), encoder_config=config).eval()
    x = _inputs(3, seed=6)
    x["text"] = torch.randint(5, 500, (3, TEXT_LEN))
    with torch.no_grad():
        ref = model(**x).prediction
    assert model.text_input == "ids" and model.text.width == 16 and ref.shape == (3, 1)
    save_checkpoint(model, tmp_path / "derl_ids")          # writes the encoder config beside the weights
    with torch.no_grad():
        assert torch.equal(load_checkpoint(tmp_path / "derl_ids")(**x).prediction, ref)


def test_short_training_beats_the_mean_predictor(tmp_path):
    make_synthetic_mmsa(tmp_path / "tiny.pkl", sizes=(96, 16, 48), dims=(TEXT_DIM, AUDIO_DIM, VISION_DIM),
                        text_len=TEXT_LEN, audio_len=AUDIO_LEN, vision_len=VISION_LEN, seed=0)
    splits = load_mmsa(tmp_path / "tiny.pkl")
    torch.manual_seed(0)
    model = DERL(dataclasses.replace(SMALL, num_layers=1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    collate = mmsa_collate("features")
    loader = DataLoader(MmsaDataset(splits["train"]), batch_size=16, shuffle=True, collate_fn=collate,
                        generator=torch.Generator().manual_seed(0))
    epoch_losses = []
    for _ in range(5):
        model.train()
        losses = []
        for batch in loader:
            labels = batch.pop("labels")
            batch.pop("index")
            loss, _ = model.loss(model(**batch), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        epoch_losses.append(sum(losses) / len(losses))
    assert epoch_losses[-1] < 0.6 * epoch_losses[0]

    test = collate([MmsaDataset(splits["test"])[i] for i in range(len(splits["test"]))])
    labels = test.pop("labels")
    test.pop("index")
    model.eval()
    with torch.no_grad():
        mae = (model(**test).prediction.view(-1) - labels).abs().mean().item()
    mean_mae = (labels - float(splits["train"].labels.mean())).abs().mean().item()
    assert mae < 0.8 * mean_mae
