"""TensorRT-RTX engine builds (no GPU needed), optimization profiles, and the GPU-only runtime guards."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("onnx")

from mmer.export.config import IntRange, ProfilesConfig, SecondsRange, load_export_config  # noqa: E402
from mmer.export.engines import ENGINE_CARD, ENGINE_FILE, EngineBuildError, onnx2engine, profile_shapes  # noqa: E402
from mmer.export.onnx_export import torch2onnx  # noqa: E402
from mmer.runtime import RuntimeUnavailable, fit_profile, load_runtime  # noqa: E402
from tests.export.test_onnx_zoo import tiny_asf, tiny_audio, tiny_teacher, tiny_visual  # noqa: E402

RTX_INSTALL = "pip install 'mmer[trtrtx]'  (tensorrt-rtx==1.7.1.116)"


def _rtx():
    try:
        import tensorrt_rtx
    except ImportError:
        pytest.skip(f"tensorrt_rtx is not installed: {RTX_INSTALL}")
    return tensorrt_rtx


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.fixture(scope="module")
def teacher_onnx(tmp_path_factory, tiny_text_encoder_dir, shared_dir):
    model = tiny_teacher(tiny_text_encoder_dir)
    folder = tmp_path_factory.mktemp("teacher_onnx")
    samples = model.example_inputs(2, data_root=shared_dir / "data")
    return model, torch2onnx(model, folder, model.example_batch(samples))


def test_profiles_are_tight_and_clamped_to_what_the_model_reads(tiny_text_encoder_dir):
    cfg = ProfilesConfig(batch=IntRange(1, 1, 4), text_tokens=(IntRange(8, 64, 96), IntRange(96, 160, 512)),
                         audio=(SecondsRange(1.0, 4.0, 8.0),))
    teacher = tiny_teacher(tiny_text_encoder_dir)  # max_tokens=128
    shapes = profile_shapes(teacher.contract(), cfg)
    assert shapes[0]["input_ids"] == ((1, 8), (1, 64), (4, 96))
    assert shapes[1]["attention_mask"] == ((1, 96), (1, 128), (4, 128))   # clamped to max_tokens
    audio = tiny_audio("edge")
    (only,) = profile_shapes(audio.contract(), cfg)
    assert only["waveform"] == ((1, 16_000), (1, 64_000), (4, 128_000))   # seconds -> 16 kHz samples
    visual = tiny_visual("edge")
    (only,) = profile_shapes(visual.contract(), cfg)
    assert only["frames"] == ((1, 1, 1, 64, 64), (1, 8, 1, 64, 64), (4, 8, 1, 64, 64))  # 1 crop up to 8 frames
    asf = tiny_asf()
    assert profile_shapes(asf.contract(), cfg)[0]["audio_present"] == ((1,), (1,), (4,))
    with pytest.raises(EngineBuildError, match="batch"):
        profile_shapes(asf.contract(), ProfilesConfig(batch=IntRange(2, 1, 4)))


def test_shipped_config_has_the_documented_buckets():
    cfg = load_export_config()
    assert cfg.profiles.text_tokens[0] == IntRange(8, 128, 256)
    assert cfg.profiles.audio[0] == SecondsRange(1.0, 4.0, 8.0) and cfg.profiles.num_frames == 8


def test_fit_profile_picks_a_bucket_and_pads_up_to_its_minimum():
    profiles = [{"x": [(1, 8), (1, 64), (4, 96)]}, {"x": [(1, 96), (1, 160), (4, 256)]}]
    index, padded = fit_profile(profiles, {"x": np.ones((2, 5), np.int64)})
    assert index == 0 and padded["x"].shape == (2, 8) and padded["x"][:, 5:].sum() == 0
    assert fit_profile(profiles, {"x": np.ones((1, 200), np.int64)})[0] == 1
    with pytest.raises(ValueError, match="fit no optimization profile"):
        fit_profile(profiles, {"x": np.ones((1, 300), np.int64)})


def test_tensorrt_rtx_builds_a_teacher_engine_without_a_gpu(teacher_onnx, tmp_path):
    trt = _rtx()
    model, onnx_path = teacher_onnx
    cfg = load_export_config()
    record = onnx2engine(onnx_path, tmp_path, model.contract(), cfg.profiles, cfg.engine,
                         "tensorrt_rtx", "fp32")
    assert (tmp_path / ENGINE_FILE).stat().st_size > 0
    on_disk = json.loads((tmp_path / ENGINE_CARD).read_text())
    assert on_disk == record and record["version"] == trt.__version__ and record["library"] == "tensorrt_rtx"
    assert record["target"]["compute_capabilities"] == ["8.0", "8.6", "8.9", "12.0"]
    assert record["profiles"][0]["input_ids"] == [[1, 8], [1, 128], [8, 128]]  # 256 clamped to max_tokens
    assert record["build_s"] > 0 and "no-ops" in record["timing_cache"]


def test_trtrtx_formats_export_fp16_and_int8_engines(tiny_text_encoder_dir, shared_dir, tmp_path):
    _rtx()
    from mmer.export import export

    model = tiny_teacher(tiny_text_encoder_dir)
    overrides = ("parity.num_samples=2", "parity.f1_utterances=0", "engine.compute_capabilities=[SM89]")
    fp16 = export(model, "trtrtx-fp16", tmp_path / "fp16", overrides, data_root=shared_dir / "data")
    int8 = export(model, "trtrtx-int8", tmp_path / "int8", overrides + ("calibration.num_samples=4",),
                  data_root=shared_dir / "data")
    for result in (fp16, int8):
        assert (result.folder / ENGINE_FILE).is_file() and result.card["files"]["engine"] == ENGINE_FILE
        if not _cuda():  # no GPU here: parity and the runtime say so instead of failing or pretending
            assert result.parity["status"] == "not run" and "GPU" in result.parity["reason"]
            with pytest.raises(RuntimeUnavailable, match="NVIDIA GPU"):
                load_runtime("tensorrt-rtx", result.folder)
    assert int8.card["int8"]["method"] == "explicit Q/DQ"
    import onnx

    assert "QuantizeLinear" in {n.op_type for n in onnx.load(str(int8.folder / "model.onnx")).graph.node}


def test_full_tensorrt_missing_or_gpuless_is_a_clear_error(teacher_onnx, tmp_path):
    from mmer.extras import MissingExtra

    model, onnx_path = teacher_onnx
    cfg = load_export_config()
    with pytest.raises((MissingExtra, EngineBuildError)) as info:
        onnx2engine(onnx_path, tmp_path, model.contract(), cfg.profiles, cfg.engine, "tensorrt", "fp16")
    message = str(info.value)
    assert "pip install tensorrt --extra-index-url https://pypi.nvidia.com" in message or "GPU" in message


@pytest.mark.gpu
def test_tensorrt_rtx_engine_matches_torch_on_a_supported_gpu(tiny_text_encoder_dir, shared_dir, tmp_path):
    _rtx()
    import torch

    from mmer.export import export

    major, minor = torch.cuda.get_device_capability(0)
    if f"{major}.{minor}" not in ("8.0", "8.6", "8.9", "12.0", "12.1"):
        pytest.skip(f"TensorRT-RTX engines do not run on compute capability {major}.{minor}")
    model = tiny_teacher(tiny_text_encoder_dir)
    result = export(model, "trtrtx-fp16", tmp_path, ("parity.f1_utterances=0",), data_root=shared_dir / "data")
    assert result.parity["passed"] is True and result.parity["top1_agreement"] >= 0.995
