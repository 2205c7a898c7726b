"""TelME's ASF fusion: shapes, eq. (19), batch independence, missing modalities, checkpoints."""

from __future__ import annotations

import math

import pytest
import torch

import mmer
from mmer.checkpoint import save_checkpoint
from mmer.models.asf import ASF, ASFDims, shift_scale
from mmer.registry import MODELS

SMALL_DIM = 24   # feature width of the test models (divisible by 3 heads, 2x by 3 too)
ATOL = 1e-5
BATCH_SIZES = (2, 5, 8)


def _model(paper_faithful: bool = False, seed: int = 0, **kw) -> ASF:
    torch.manual_seed(seed)
    return ASF(ASFDims(kd_dim=SMALL_DIM, paper_faithful=paper_faithful, **kw)).eval()


def _features(batch: int, seed: int, dim: int = SMALL_DIM) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(batch, dim, generator=g) for _ in range(3))


def _masks(batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed + 1000)
    return torch.rand(batch, generator=g) > 0.3, torch.rand(batch, generator=g) > 0.3


def test_registered_and_shapes_at_telme_size():
    assert MODELS.get("asf") is ASF
    model = ASF(ASFDims()).eval()  # 768-d, 3 heads, MELD's 7 classes
    text, audio, visual = _features(4, seed=1, dim=768)
    with torch.no_grad():
        out = model(text, audio, visual, labels=torch.tensor([0, 1, 2, 3]))
    assert out.logits.shape == out.probs.shape == (4, 7)
    assert out.features["fused"].shape == (4, 768)
    assert out.features["shift"].shape == (4, 768)
    assert out.features["lambda"].shape == (4, 1)
    assert out.features["attended"].shape == (4, 1536)
    assert out.loss is not None and out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert torch.allclose(out.probs.sum(-1), torch.ones(4))


def test_paper_faithful_shapes_and_iemocap_heads():
    model = ASF(ASFDims(label_set="iemocap4", num_labels=4, kd_dim=32, num_heads=4, theta=0.2,
                       paper_faithful=True)).eval()
    text, audio, visual = _features(3, seed=2, dim=32)
    out = model(text, audio, visual)
    assert out.logits.shape == (3, 4) and out.features["attended"].shape == (3, 64)


def test_dims_are_checked():
    with pytest.raises(ValueError, match="num_labels"):
        ASF(ASFDims(num_labels=6))
    with pytest.raises(ValueError, match="divisible"):
        ASF(ASFDims(kd_dim=25, num_heads=3))
    model = _model()
    with pytest.raises(ValueError, match="text features"):
        model(torch.randn(2, SMALL_DIM + 1))


def test_shift_scale_matches_eq19_by_hand():
    text = torch.tensor([[3.0, 4.0], [3.0, 4.0], [1.0, 0.0]])      # ||F_text|| = 5, 5, 1
    shift = torch.tensor([[0.0, 10.0], [0.0, 0.1], [0.0, 0.0]])    # ||H|| = 10, 0.1, 0
    lam = shift_scale(text, shift, theta=0.1)
    # 5/10*0.1 = 0.05; 5/0.1*0.1 = 5 -> capped at 1; zero shift -> guarded, capped at 1, finite.
    assert lam.shape == (3, 1)
    assert torch.allclose(lam.squeeze(1), torch.tensor([0.05, 1.0, 1.0]))


def test_lambda_feature_follows_eq19_inside_the_model():
    # A large theta would make every lambda 1; a tiny one keeps it below the cap.
    model = _model(theta=1e-3)
    text, audio, visual = _features(6, seed=3)
    out = model(text, audio, visual)
    lam, shift = out.features["lambda"], out.features["shift"]
    expected = (text.norm(dim=-1) / shift.norm(dim=-1) * 1e-3).clamp(max=1.0)
    assert torch.all(lam <= 1.0)
    assert torch.allclose(lam.squeeze(1), expected, atol=1e-7)
    assert torch.all(lam < 1.0)  # the cap is not what produced these values
    fused = model.fused_norm(text + lam * shift)
    assert torch.allclose(out.features["fused"], fused, atol=1e-6)


def _row_outputs(model: ASF, text, audio, visual, a_mask, v_mask) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        out = model(text, audio, visual, a_mask, v_mask)
    return {"logits": out.logits, **out.features}


@pytest.mark.parametrize("batch", BATCH_SIZES)
def test_each_utterance_is_batch_independent(batch):
    model = _model()
    text, audio, visual = _features(batch, seed=10 + batch)
    a_mask, v_mask = _masks(batch, seed=batch)
    together = _row_outputs(model, text, audio, visual, a_mask, v_mask)
    for i in range(batch):
        alone = _row_outputs(model, text[i:i + 1], audio[i:i + 1], visual[i:i + 1], a_mask[i:i + 1], v_mask[i:i + 1])
        for name, value in alone.items():
            assert torch.allclose(value[0], together[name][i], atol=ATOL), (name, i)


def test_paper_faithful_output_depends_on_batch_companions():
    """Defect 1 of the authors' code, reproduced on purpose: a row changes with its batch."""
    faithful, ours = _model(paper_faithful=True), _model(paper_faithful=False)
    text, audio, visual = _features(5, seed=20)
    other_text, other_audio, other_visual = _features(5, seed=21)
    # Same utterance in row 0, different companions in rows 1..4.
    swap = lambda x, y: torch.cat([x[:1], y[1:]])  # noqa: E731
    batch_b = (swap(text, other_text), swap(audio, other_audio), swap(visual, other_visual))
    with torch.no_grad():
        a = faithful(text, audio, visual).logits[0]
        b = faithful(*batch_b).logits[0]
        alone = faithful(text[:1], audio[:1], visual[:1]).logits[0]
        ours_a = ours(text, audio, visual).logits[0]
        ours_b = ours(*batch_b).logits[0]
    assert (a - b).abs().max() > 1e-3
    assert (a - alone).abs().max() > 1e-3
    assert torch.allclose(ours_a, ours_b, atol=ATOL)


@pytest.mark.parametrize("garbage", ["noise", "huge", "nan"])
def test_absent_audio_ignores_whatever_its_tensor_holds(garbage):
    model = _model()
    text, audio, visual = _features(4, seed=30)
    absent = torch.tensor([False, True, False, True])  # rows 0 and 2 have no audio
    junk = {"noise": torch.randn(4, SMALL_DIM), "huge": torch.full((4, SMALL_DIM), 1e30),
            "nan": torch.full((4, SMALL_DIM), math.nan)}[garbage]
    audio_junk = torch.where(absent.unsqueeze(-1), audio, junk)
    ref = _row_outputs(model, text, audio, visual, absent, None)
    got = _row_outputs(model, text, audio_junk, visual, absent, None)
    for name in ref:
        assert torch.isfinite(got[name]).all(), name
        assert torch.allclose(ref[name], got[name], atol=ATOL), name
    # The absent audio slot of F_av is zero; the present rows still use their audio.
    assert torch.all(got["attended"][~absent, :SMALL_DIM] == 0)
    assert got["attended"][absent, :SMALL_DIM].abs().sum() > 0


def test_missing_tensor_equals_masked_tensor():
    model = _model()
    text, audio, visual = _features(3, seed=31)
    no_audio = torch.zeros(3, dtype=torch.bool)
    a = _row_outputs(model, text, None, visual, None, None)
    b = _row_outputs(model, text, audio, visual, no_audio, None)
    for name in a:
        assert torch.allclose(a[name], b[name], atol=ATOL), name


@pytest.mark.parametrize("paper_faithful", [False, True])
def test_both_absent_is_the_text_only_prediction(paper_faithful):
    model = _model(paper_faithful=paper_faithful)
    text, _, _ = _features(4, seed=40)
    nan = torch.full((4, SMALL_DIM), math.nan)
    none = torch.zeros(4, dtype=torch.bool)
    with torch.no_grad():
        out = model(text, nan, nan, none, none)
        also = model(text)  # no tensors at all
        text_only = model.fused_norm(text)
        expected_logits = model.classifier(text_only)
    for o in (out, also):
        assert torch.isfinite(o.logits).all() and torch.isfinite(o.features["fused"]).all()
        assert torch.all(o.features["shift"] == 0)
        assert torch.equal(o.features["fused"], text_only)
        assert torch.allclose(o.logits, expected_logits, atol=1e-6)
        assert torch.all(o.features["lambda"] <= 1.0)


def test_training_step_reaches_every_parameter():
    model = _model()
    model.train()
    text, audio, visual = _features(4, seed=50)
    out = model(text, audio, visual, labels=torch.tensor([0, 3, 6, 1]))
    out.loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing


@pytest.mark.parametrize("paper_faithful", [False, True])
def test_checkpoint_round_trip_gives_identical_outputs(tmp_path, paper_faithful):
    model = _model(paper_faithful=paper_faithful, seed=7, theta=0.2, num_heads=4,
                   label_set="iemocap4", num_labels=4)
    text, audio, visual = _features(5, seed=60)
    a_mask, v_mask = _masks(5, seed=60)
    save_checkpoint(model, tmp_path / "asf", provenance={"test": True})
    loaded = mmer.load(tmp_path / "asf")
    assert isinstance(loaded, ASF) and loaded.dims == model.dims and not loaded.training
    ref = _row_outputs(model, text, audio, visual, a_mask, v_mask)
    got = _row_outputs(loaded, text, audio, visual, a_mask, v_mask)
    for name in ref:
        assert torch.equal(ref[name], got[name]), name
