"""``export()``: the one entry point, driven by the format table of :mod:`mmer.export.formats`.

    from mmer.export import export
    result = export(model, "onnx-int8-static", "exports/teacher-int8")
    result.folder, result.card, result.parity["passed"]

Each step of a format is a thin adapter over a pure conversion function (``torch2onnx``,
``onnx2fp16``, ``onnx2int8_dynamic``, ``onnx2int8_static``, ``onnx2qdq_tensorrt``,
``onnx2engine``); intermediate graphs live in a temporary folder and only the final graph,
the engine, the model card, the tokenizer and parity.json land in the output folder.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from torch import nn

from mmer.export import formats
from mmer.export.config import CONFIG_FILE, ExportConfig, load_export_config
from mmer.export.engines import onnx2engine
from mmer.export.onnx_export import ExportError, contract_of, model_card, torch2onnx, write_card
from mmer.export.parity import failed_gates, measure_parity, not_run, write_parity
from mmer.export.quantize import FP16_SAFE_MAX, onnx2fp16, onnx2int8_dynamic, onnx2int8_static, onnx2qdq_tensorrt
from mmer.extras import MissingExtra
from mmer.runtime import ENGINE_CARD, ENGINE_FILE, MODEL_FILE, RTX, TRT, RuntimeUnavailable, TorchRuntime, load_runtime

PARITY_SEED_OFFSET = 1000   # parity inputs are drawn apart from the calibration inputs
INT8_CALIBRATORS = ("explicit", "implicit")
FP16_PROBES = 2             # inputs run through the FP32 graph to find values too large for FP16


@dataclass
class StepContext:
    """What the steps of one export share."""

    model: nn.Module
    fmt: formats.ExportFormat
    cfg: ExportConfig
    work: Path
    notes: dict = field(default_factory=dict)
    _calibration: list | None = None

    def calibration_samples(self) -> list:
        if self._calibration is None:
            c = self.cfg.calibration
            self._calibration = self.model.example_inputs(c.num_samples, c.seed, self.cfg.data_root or None,
                                                          c.data, c.audio_range_s)
        return self._calibration


# -- steps: (context, previous graph) -> next graph ------------------------------------------
def _step_onnx(ctx: StepContext, _: Path | None) -> Path:
    example = ctx.model.example_batch(ctx.model.example_inputs(2, ctx.cfg.parity.seed, ctx.cfg.data_root or None,
                                                               audio_range_s=ctx.cfg.parity.audio_range_s))
    return torch2onnx(ctx.model, ctx.work / "fp32", example, ctx.cfg.opset)


def _step_fp16(ctx: StepContext, src: Path) -> Path:
    # The longest inputs the model is exported for show which values outgrow FP16 (sample counts).
    longest = (ctx.cfg.parity.audio_range_s[1],) * 2
    probes = ctx.model.example_inputs(FP16_PROBES, ctx.cfg.parity.seed, ctx.cfg.data_root or None, audio_range_s=longest)
    ctx.notes["fp16"] = {"converter": "onnxruntime.transformers.float16", "kept_fp32": list(ctx.cfg.fp16.keep_fp32_ops),
                         "kept_fp32_for_range": f"nodes around values > {FP16_SAFE_MAX:g} on {FP16_PROBES} longest inputs"}
    return onnx2fp16(src, ctx.work / "fp16.onnx", ctx.cfg.fp16.keep_fp32_ops, probes)


def _step_int8_dynamic(ctx: StepContext, src: Path) -> Path:
    ctx.notes["int8"] = {"method": "dynamic", "ops": ["MatMul", "Gemm"], "tool": "onnxruntime.quantization"}
    return onnx2int8_dynamic(src, ctx.work / "int8-dynamic.onnx")


def _step_int8_static(ctx: StepContext, src: Path) -> Path:
    c = ctx.cfg.calibration
    ctx.notes["int8"] = {"method": "static QDQ", "calibration": {"data": c.data, "samples": c.num_samples,
                                                                 "method": c.method, "per_channel": c.per_channel},
                         "kept_float": list(c.keep_float), "tool": "onnxruntime.quantization"}
    return onnx2int8_static(src, ctx.work / "int8-static.onnx", ctx.calibration_samples(), "ort", c.method,
                            c.per_channel, c.keep_float)


def _step_qdq(ctx: StepContext, src: Path) -> Path:
    calibrator = ctx.cfg.engine.int8_calibrator
    if calibrator not in INT8_CALIBRATORS:
        raise ExportError(f"engine.int8_calibrator {calibrator!r} is not one of {list(INT8_CALIBRATORS)}")
    c = ctx.cfg.calibration
    if calibrator == "implicit":
        if ctx.fmt.steps[-1] != "trt-engine":
            raise ExportError("engine.int8_calibrator=implicit exists only for full TensorRT (trt-int8)")
        ctx.notes["int8"] = {"method": "implicit calibrator (deprecated)",
                             "calibration": {"data": c.data, "samples": c.num_samples}}
        return src
    path, tool = onnx2qdq_tensorrt(src, ctx.work / "qdq.onnx", ctx.calibration_samples(), c.method, c.keep_float)
    ctx.notes["int8"] = {"method": "explicit Q/DQ", "tool": tool, "calibration": {"data": c.data, "samples": c.num_samples,
                                                                                  "method": c.method},
                         "kept_float": list(c.keep_float)}
    return path


def _engine_step(library: str) -> Callable[[StepContext, Path], Path]:
    def step(ctx: StepContext, src: Path) -> Path:
        implicit = ctx.notes.get("int8", {}).get("method", "").startswith("implicit")
        ctx.notes["engine"] = onnx2engine(src, ctx.work / "engine", contract_of(ctx.model),
                                          ctx.cfg.profiles, ctx.cfg.engine, library, ctx.fmt.precision,
                                          ctx.calibration_samples() if implicit else None)
        return src
    return step


STEPS: dict[str, Callable[[StepContext, Any], Path]] = {
    "onnx": _step_onnx, "fp16": _step_fp16, "int8-dynamic": _step_int8_dynamic, "int8-static": _step_int8_static,
    "qdq": _step_qdq, "trt-engine": _engine_step(TRT), "rtx-engine": _engine_step(RTX),
}


@dataclass
class ExportResult:
    """Where an export went, its model card and its parity report."""

    folder: Path
    card: dict
    parity: dict

    @property
    def passed(self) -> bool | None:
        return self.parity.get("passed")

    def failed_gates(self) -> list[dict]:
        return failed_gates(self.parity)


def export(model: nn.Module, fmt: str, out: str | Path, overrides: list[str] | tuple[str, ...] = (),
           config_path: str | Path | None = CONFIG_FILE, calib_data: str | None = None, data_root: str | Path | None = None,
           source: str = "", parity: bool = True) -> ExportResult:
    """Export ``model`` (a zoo model) as format ``fmt`` into folder ``out``.

    overrides: ``key=value`` settings over configs/export.yaml; options the format does not
    read are refused (:class:`mmer.export.formats.UnsupportedOption`). calib_data / data_root:
    the ``--calib-data`` / ``--data-root`` flags. parity: measure and write parity.json.
    """
    spec = formats.get(fmt)
    spec.check_options(overrides, calib_data)
    cfg = load_export_config(config_path, overrides)
    if calib_data is not None:
        cfg = dataclasses.replace(cfg, calibration=dataclasses.replace(cfg.calibration, data=calib_data))
    if data_root is not None:
        cfg = dataclasses.replace(cfg, data_root=str(data_root))
    model.eval()
    contract = contract_of(model)
    if contract.engine_note and spec.builds_engine:
        raise ExportError(f"{fmt}: {contract.engine_note}")
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mmer-export-") as tmp:
        ctx = StepContext(model, spec, cfg, Path(tmp))
        graph = None
        for step in spec.steps:
            graph = STEPS[step](ctx, graph)
        shutil.copyfile(graph, folder / MODEL_FILE)
        extra: dict[str, Any] = {k: v for k, v in ctx.notes.items() if k != "engine"}
        if spec.builds_engine:
            for name in (ENGINE_FILE, ENGINE_CARD):
                shutil.copyfile(Path(tmp) / "engine" / name, folder / name)
            extra["engine"] = {"file": ENGINE_FILE, "record": ENGINE_CARD, "library": ctx.notes["engine"]["library"]}
    extra["runtime"] = spec.runtime
    extra["config"] = dataclasses.asdict(cfg)
    files = model.save_export_assets(folder)
    if spec.builds_engine:
        files.update(engine=ENGINE_FILE, engine_record=ENGINE_CARD)
    card = model_card(model, spec.name, spec.precision, source, extra, files)
    write_card(folder, card, folder / MODEL_FILE)
    report = _parity(model, spec, cfg, folder) if parity else not_run(spec.precision, "parity=False")
    write_parity(folder, report)
    return ExportResult(folder, card, report)


def _parity(model: nn.Module, spec: formats.ExportFormat, cfg: ExportConfig, folder: Path) -> dict:
    try:
        candidate = load_runtime(spec.runtime, folder)
    except (RuntimeUnavailable, MissingExtra) as e:
        report = not_run(spec.precision, str(e))
        if spec.builds_engine:
            # The engine cannot run here, but the graph it was built from can: a strongly typed
            # engine keeps that graph's precisions, so its parity is the closest check available.
            onnx_report = _measure(model, load_runtime("onnxruntime", folder), spec, cfg)
            report["engine_input_onnx"] = {
                "note": f"parity of {MODEL_FILE}, the graph the engine was built from, run in ONNX Runtime "
                        "on the CPU; the engine itself was not run", **onnx_report}
        return report
    return _measure(model, candidate, spec, cfg)


def _measure(model: nn.Module, candidate: Any, spec: formats.ExportFormat, cfg: ExportConfig) -> dict:
    samples = model.example_inputs(cfg.parity.num_samples, cfg.parity.seed + PARITY_SEED_OFFSET,
                                   cfg.data_root or None, audio_range_s=cfg.parity.audio_range_s)
    return measure_parity(model, TorchRuntime(model), candidate, samples, spec.precision, cfg.parity,
                          cfg.data_root or None)
