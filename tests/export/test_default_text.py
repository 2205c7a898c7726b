"""Parity gates of the embedded default text model (MiniLM-L6 teacher), when it is installed.

About two minutes on a 2-core CPU (MiniLM exports plus two backends scoring 300 MELD dev
utterances); they run in CI because the export issue's gates are defined on this model.
"""

from __future__ import annotations

import pytest

from mmer.checkpoint import ASSETS_DIR

DEFAULT_TEXT = ASSETS_DIR / "default-text"
F1_UTTERANCES = "parity.f1_utterances=300"

pytestmark = [pytest.mark.skipif(not (DEFAULT_TEXT / "mmer.json").is_file(),
                                                   reason="mmer/assets/default-text is not installed yet")]


@pytest.fixture(scope="module")
def teacher():
    import mmer

    return mmer.load("default-text")


@pytest.mark.parametrize("fmt", ["onnx", "onnx-fp16", "onnx-int8", "onnx-int8-static"])
def test_default_text_passes_its_parity_gates(teacher, fmt, shared_dir, tmp_path):
    from mmer.export import export

    result = export(teacher, fmt, tmp_path, (F1_UTTERANCES,), data_root=shared_dir / "data")
    assert result.failed_gates() == [], result.parity["gates"]
    assert result.parity["passed"] is True
    if fmt.startswith("onnx-int8"):
        assert result.parity["f1"]["utterances"] >= 250 and result.parity["f1"]["drop_points"] <= 1.0


def test_default_text_builds_a_tensorrt_rtx_engine(teacher, shared_dir, tmp_path):
    """The engine builds without a GPU; its FP16 source graph passes the FP16 gate in ONNX Runtime."""
    pytest.importorskip("tensorrt_rtx", reason="pip install 'mmer[trtrtx]'")
    from mmer.export import export

    result = export(teacher, "trtrtx-fp16", tmp_path, (F1_UTTERANCES,), data_root=shared_dir / "data")
    assert (tmp_path / "model.engine").stat().st_size > 1_000_000
    if result.parity["status"] == "not run":  # no RTX-class GPU here
        onnx = result.parity["engine_input_onnx"]
        assert onnx["passed"] is True and onnx["top1_agreement"] >= 0.995
    else:
        assert result.parity["passed"] is True
