"""mmer.export: torch -> ONNX / FP16 / INT8 / TensorRT / TensorRT-RTX, one runtime interface, parity, benchmarks.

    from mmer.export import export, load_runtime
    result = export(model, "onnx", "exports/teacher")          # writes model.onnx, model.json, parity.json
    rt = load_runtime("onnxruntime", result.folder)
    rt(input_ids=ids, attention_mask=mask)["probs"]

See docs/export.md.
"""

from mmer.export.exporter import ExportResult, export
from mmer.export.formats import UnsupportedOption
from mmer.runtime import RUNTIMES, Runtime, RuntimeUnavailable, load_runtime

__all__ = ["export", "ExportResult", "UnsupportedOption", "load_runtime", "Runtime", "RUNTIMES", "RuntimeUnavailable"]
