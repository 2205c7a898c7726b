"""FP16 and INT8 (dynamic, static QDQ on MELD dev utterances) exports of the tiny teacher, and the parity gates."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import onnx  # noqa: E402

from mmer.export import export  # noqa: E402
from mmer.export.config import FP16_KEEP_FP32_OPS, ParityConfig  # noqa: E402
from mmer.export.onnx_export import MODEL_FILE  # noqa: E402
from mmer.export.parity import gates  # noqa: E402
from tests.export.test_onnx_zoo import tiny_teacher  # noqa: E402

PARITY = ("parity.num_samples=2", "parity.f1_utterances=16")
CALIBRATION = ("calibration.num_samples=6",)
FP32 = onnx.TensorProto.FLOAT
FP16 = onnx.TensorProto.FLOAT16


@pytest.fixture(scope="module")
def teacher(tiny_text_encoder_dir):
    return tiny_teacher(tiny_text_encoder_dir)


@pytest.fixture(scope="module")
def meld_root(shared_dir):
    return shared_dir / "data"


def _types(path) -> tuple[onnx.ModelProto, dict[str, int]]:
    """The graph and the element type of every tensor ONNX shape inference can type."""
    proto = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    types = {v.name: v.type.tensor_type.elem_type for v in list(proto.graph.value_info) + list(proto.graph.input)
             + list(proto.graph.output)}
    types.update({t.name: t.data_type for t in proto.graph.initializer})
    return proto, types


def test_fp16_keeps_softmax_layernorm_and_reductions_fp32(teacher, meld_root, tmp_path):
    result = export(teacher, "onnx-fp16", tmp_path, PARITY, data_root=meld_root)
    proto, types = _types(tmp_path / MODEL_FILE)
    weights = [t for t in proto.graph.initializer if len(t.dims) == 2]
    assert weights and all(t.data_type == FP16 for t in weights)  # the matmul weights really are half
    guarded = [n for n in proto.graph.node if n.op_type in FP16_KEEP_FP32_OPS]
    assert {n.op_type for n in guarded} >= {"Softmax", "LayerNormalization"}
    for node in guarded:
        typed = [types[i] for i in node.input if i in types and types[i] in (FP32, FP16)]
        assert typed and all(t == FP32 for t in typed), (node.op_type, node.name, typed)
    # inputs and outputs stay as the FP32 graph's, so every runtime is fed the same arrays
    assert [types[o.name] for o in proto.graph.output] == [FP32] * 3
    report = result.parity
    assert [g["gate"] for g in report["gates"]] == ["fp16 top1_agreement"]
    assert report["gates"][0]["passed"] == (report["top1_agreement"] >= ParityConfig().fp16_min_top1)
    assert 0 < report["outputs"]["logits"]["max_abs"] < 0.05  # half precision, not garbage
    assert result.card["fp16"]["kept_fp32"] == list(FP16_KEEP_FP32_OPS)


def test_int8_dynamic_and_static_qdq_on_meld_dev(teacher, meld_root, tmp_path):
    dyn = export(teacher, "onnx-int8", tmp_path / "dyn", PARITY, data_root=meld_root)
    ops = {n.op_type for n in onnx.load(str(tmp_path / "dyn" / MODEL_FILE)).graph.node}
    assert "DynamicQuantizeLinear" in ops and "MatMulInteger" in ops
    assert dyn.card["int8"]["method"] == "dynamic"

    static = export(teacher, "onnx-int8-static", tmp_path / "static", PARITY + CALIBRATION, calib_data="meld-dev",
                    data_root=meld_root)
    proto = onnx.load(str(tmp_path / "static" / MODEL_FILE))
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("QuantizeLinear") >= 4 and ops.count("DequantizeLinear") >= 4
    calibration = static.card["int8"]["calibration"]
    assert calibration["data"] == "meld-dev" and calibration["samples"] == 6
    for result in (dyn, static):
        f1 = result.parity["f1"]
        assert f1["utterances"] > 0 and 0 <= f1["weighted_f1_torch"] <= 1
        assert f1["drop_points"] == pytest.approx((f1["weighted_f1_torch"] - f1["weighted_f1_candidate"]) * 100)
        gate = result.parity["gates"][0]
        assert gate["gate"].startswith("int8 weighted_f1 drop")
        assert gate["passed"] == (f1["drop_points"] <= 1.0) == result.parity["passed"]
        on_disk = json.loads((result.folder / "parity.json").read_text())
        assert on_disk["passed"] == result.parity["passed"]


def test_gates_by_precision():
    cfg = ParityConfig()
    outputs = {k: {"max_abs": 5e-5, "max_rel": 0.0} for k in ("logits", "probs", "feature")}
    assert all(g["passed"] for g in gates("fp32", {"outputs": outputs}, cfg))
    outputs["feature"]["max_abs"] = 2e-4
    assert [g["passed"] for g in gates("fp32", {"outputs": outputs}, cfg)] == [True, True, False]
    assert gates("fp16", {"top1_agreement": 0.996}, cfg)[0]["passed"] is True
    assert gates("fp16", {"top1_agreement": 0.99}, cfg)[0]["passed"] is False
    assert gates("int8", {"f1": {"drop_points": 0.9}}, cfg)[0]["passed"] is True
    assert gates("int8", {"f1": {"drop_points": 1.2}}, cfg)[0]["passed"] is False
    # students have no labelled data here: the INT8 gate is reported, not silently passed
    assert gates("int8", {}, cfg)[0]["passed"] is None


def test_cli_exit_code_reports_a_failed_gate(teacher, meld_root, tmp_path, capsys):
    from mmer.checkpoint import save_checkpoint
    from mmer.export.cli import export_main
    from mmer.export.parity import GATE_FAILED_EXIT

    ckpt = save_checkpoint(teacher, tmp_path / "ckpt")
    # a threshold no export can meet: the gate must fail loudly, in parity.json and the exit status
    code = export_main([str(ckpt), "--format", "onnx-int8", "--out", str(tmp_path / "out"), "--data-root",
                        str(meld_root), "parity.num_samples=2", "parity.f1_utterances=8",
                        "parity.int8_max_f1_drop_points=-1000"])
    assert code == GATE_FAILED_EXIT
    assert "PARITY GATE FAILED" in capsys.readouterr().err
    report = json.loads((tmp_path / "out" / "parity.json").read_text())
    assert report["passed"] is False and report["gates"][0]["passed"] is False


def _matmul_feeds(folder) -> dict[str, str]:
    """MatMul node name -> the op type that produces its first input."""
    graph = onnx.load(str(folder / MODEL_FILE)).graph
    producer = {o: n for n in graph.node for o in n.output}
    return {n.name: producer[n.input[0]].op_type for n in graph.node if n.op_type == "MatMul" and n.input[0] in producer}


def test_static_int8_keeps_the_ffn_output_projection_float(teacher, meld_root, tmp_path):
    quick = ("parity.num_samples=2", "parity.f1_utterances=0") + CALIBRATION
    kept = export(teacher, "onnx-int8-static", tmp_path / "kept", quick, data_root=meld_root)
    quantized = export(teacher, "onnx-int8-static", tmp_path / "quantized", quick + ("calibration.keep_float=[attention]",),
                       data_root=meld_root)
    kept_feeds, quantized_feeds = _matmul_feeds(tmp_path / "kept"), _matmul_feeds(tmp_path / "quantized")
    ffn_out = [n for n in kept_feeds if "/output/dense/" in n and "/attention/" not in n]
    projections = [n for n in kept_feeds if n.split("/")[-2] in ("query", "key", "value")]
    assert ffn_out and projections
    assert all(kept_feeds[n] != "DequantizeLinear" for n in ffn_out)      # reads the GELU in float
    assert all(quantized_feeds[n] == "DequantizeLinear" for n in ffn_out)
    assert all(kept_feeds[n] == quantized_feeds[n] == "DequantizeLinear" for n in projections)
    assert kept.card["int8"]["kept_float"] == ["attention", "gelu_output"]
    assert quantized.card["int8"]["kept_float"] == ["attention"]


def test_static_int8_refuses_an_unknown_float_group(teacher, meld_root, tmp_path):
    from mmer.export.quantize import QuantizeError

    with pytest.raises(QuantizeError, match="calibration.keep_float.*softmax"):
        export(teacher, "onnx-int8-static", tmp_path, ("parity.f1_utterances=0", "calibration.keep_float=[softmax]")
               + CALIBRATION, data_root=meld_root)
