"""The export-format table: one row per ``--format``, registered in ``mmer.registry.EXPORT_FORMATS``.

A format is a chain of conversion steps (pure functions in :mod:`mmer.export.exporter`), the
precision its parity gate checks, the runtime that loads its output, and the config sections
it accepts. Any option outside those sections is refused by name instead of being ignored.

| format            | steps                              | runtime       |
|-------------------|------------------------------------|---------------|
| onnx              | onnx                               | onnxruntime   |
| onnx-fp16         | onnx, fp16                         | onnxruntime   |
| onnx-int8         | onnx, int8-dynamic                 | onnxruntime   |
| onnx-int8-static  | onnx, int8-static (calibrated)     | onnxruntime   |
| trt-fp16          | onnx, fp16, trt-engine             | tensorrt      |
| trt-int8          | onnx, qdq (calibrated), trt-engine | tensorrt      |
| trtrtx-fp16       | onnx, fp16, rtx-engine             | tensorrt-rtx  |
| trtrtx-int8       | onnx, qdq (calibrated), rtx-engine | tensorrt-rtx  |
"""

from __future__ import annotations

from dataclasses import dataclass

from mmer.errors import UsageError
from mmer.registry import EXPORT_FORMATS

COMMON_SECTIONS = ("opset", "data_root", "parity")


class UnsupportedOption(UsageError):
    """An option the chosen format does not read (a ValueError too)."""


@dataclass(frozen=True)
class ExportFormat:
    """One row of the table.

    steps: conversion steps, in order (names of :data:`mmer.export.exporter.STEPS`).
    precision: fp32 | fp16 | int8 (selects the parity gate).
    runtime: name for :func:`mmer.runtime.load_runtime`.
    sections: config sections read besides ``opset``, ``data_root`` and ``parity``.
    """

    name: str
    steps: tuple[str, ...]
    precision: str
    runtime: str
    description: str
    sections: tuple[str, ...] = ()

    @property
    def calibrated(self) -> bool:
        return "calibration" in self.sections

    @property
    def builds_engine(self) -> bool:
        return self.steps[-1].endswith("engine")

    def accepted(self) -> tuple[str, ...]:
        return COMMON_SECTIONS + self.sections

    def check_options(self, overrides: list[str] | tuple[str, ...], calib_data: str | None = None) -> None:
        """Refuse ``key=value`` overrides (and ``--calib-data``) this format would not read."""
        for text in overrides:
            key = text.split("=", 1)[0].strip()
            if key.split(".", 1)[0] not in self.accepted():
                reads = ", ".join(s if s in ("opset", "data_root") else f"{s}.*" for s in self.accepted())
                raise UnsupportedOption(f"option '{key}' is not supported by format '{self.name}' (it reads: {reads})")
        if calib_data is not None and not self.calibrated:
            raise UnsupportedOption(f"option '--calib-data' is not supported by format '{self.name}': it is not "
                                    f"calibrated (calibrated formats: {', '.join(n for n in names() if get(n).calibrated)})")


ENGINE_SECTIONS = ("profiles", "engine")
TABLE = (
    ExportFormat("onnx", ("onnx",), "fp32", "onnxruntime", "ONNX FP32, opset >= 17, dynamic batch/sequence axes"),
    ExportFormat("onnx-fp16", ("onnx", "fp16"), "fp16", "onnxruntime",
                 "ONNX FP16; softmax, LayerNorm, reductions kept FP32; FP32 inputs/outputs", ("fp16",)),
    ExportFormat("onnx-int8", ("onnx", "int8-dynamic"), "int8", "onnxruntime",
                 "ONNX INT8 dynamic quantization (MatMul/Gemm weights), ONNX Runtime CPU"),
    ExportFormat("onnx-int8-static", ("onnx", "int8-static"), "int8", "onnxruntime",
                 "ONNX INT8 static QDQ, calibrated on MELD dev / generated media, ONNX Runtime CPU", ("calibration",)),
    ExportFormat("trt-fp16", ("onnx", "fp16", "trt-engine"), "fp16", "tensorrt",
                 "full TensorRT engine, strongly typed from the FP16 ONNX (build on the target GPU)",
                 ("fp16",) + ENGINE_SECTIONS),
    ExportFormat("trt-int8", ("onnx", "qdq", "trt-engine"), "int8", "tensorrt",
                 "full TensorRT INT8 engine from explicit Q/DQ (ModelOpt when installed); "
                 "engine.int8_calibrator=implicit for the legacy calibrator", ("calibration",) + ENGINE_SECTIONS),
    ExportFormat("trtrtx-fp16", ("onnx", "fp16", "rtx-engine"), "fp16", "tensorrt-rtx",
                 "TensorRT-RTX engine from the FP16 ONNX (builds without a GPU; runs on CC 8.0/8.6/8.9/12.x)",
                 ("fp16",) + ENGINE_SECTIONS),
    ExportFormat("trtrtx-int8", ("onnx", "qdq", "rtx-engine"), "int8", "tensorrt-rtx",
                 "TensorRT-RTX engine from an explicit Q/DQ ONNX (builds without a GPU)",
                 ("calibration",) + ENGINE_SECTIONS),
)
for _fmt in TABLE:
    if _fmt.name not in EXPORT_FORMATS:
        EXPORT_FORMATS.register(_fmt.name)(_fmt)


def get(name: str) -> ExportFormat:
    """The format called ``name``; the error names the closest one."""
    return EXPORT_FORMATS.get(name)


def names() -> list[str]:
    return [f.name for f in TABLE]
