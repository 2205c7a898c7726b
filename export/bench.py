"""``mmer-bench models [MODEL_OR_EXPORT ...]``: latency of your models on every backend of this machine.

Positional artefacts are checkpoint folders, embedded default names (``default-text``,
``default-voice``, ``default-face``) or export folders written by ``mmer-export``; without any,
the zoo defaults are timed (``--models teacher,audio,visual,asf``; a default that is not
installed is replaced by its architecture with random weights). Every model is timed on every
backend that runs here, the ultralytics ``benchmark`` habit:

* a checkpoint or zoo model: torch eager FP32, and each ONNX Runtime format of ``--formats``
  (exported into a temporary folder with :func:`mmer.export.export`, parity off), on the CPU;
  on CUDA also torch with ``torch.compile`` and CUDA graphs, and the TensorRT / TensorRT-RTX
  engines of ``--engines`` when their libraries import and a GPU is present (else a skip note);
* an export folder: the runtime its card names (model.json ``runtime``) and, when it holds
  model.onnx and that runtime is not ONNX Runtime, ONNX Runtime on that graph as well.

Every backend is opened with :func:`mmer.runtime.load_runtime` and called through the one
runtime interface (numpy in, numpy out, so conversion costs count for every backend alike).
Inputs come from the model's own contract (:mod:`mmer.contract`): ``model.example_inputs``
(teacher: MELD dev prompts in their dialogue context; audio: 1-8 s speech; visual: 8 frames;
ASF: student-like features). For an export folder they come from its source checkpoint
(model.json ``provenance.source``) when that loads, else from the card's model class rebuilt
from its dims, else they are random tensors shaped by the card's contract (batch 1, other
symbolic axes :data:`RANDOM_AXIS_LENGTH`), which the row's notes say.

Timing: ``time.perf_counter`` around each call after a warm-up; p50/p95/p99 over all timed
batch-1 calls, throughput at batch :data:`THROUGHPUT_BATCH` from the median batch time. In the
same run the TelME deployment (RoBERTa-large, data2vec-audio-base, TimeSformer-base from
transformers configs with random weights, PyTorch eager FP32) reads the prompt lengths and
clips of the benchmarked text and audio models (contract modality ``text`` / ``audio``), so
every row of those modalities is also a ratio against the paper's stack. Writes OUT.json,
OUT.md (one table per device) and OUT.png (one latency histogram per model, log-scale x).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from mmer.cli import add_version
from mmer.contract import Contract, collate
from mmer.errors import UsageError
from mmer.extras import MissingExtra
from mmer.runtime import (MODEL_FILE, ENGINE_FILE, RTX, TRT, Runtime, RuntimeUnavailable, TorchRuntime,
                          is_export_folder, load_runtime, read_card)
from mmer.samples import AUDIO_MAX_S, AUDIO_MIN_S, _synthetic_voice

THROUGHPUT_BATCH = 8
PERCENTILES = (50, 95, 99)
ONNX_FORMATS = ("onnx", "onnx-fp16", "onnx-int8", "onnx-int8-static")
ENGINE_FORMATS = ("trt-fp16", "trtrtx-fp16")
ENGINE_LIBRARIES = {"tensorrt": TRT, "tensorrt-rtx": RTX}   # runtime name -> Python module it needs
SAMPLE_POOL = 64                 # distinct inputs cycled through while timing
RANDOM_AXIS_LENGTH = 64          # symbolic non-batch axes of random contract inputs
REFERENCE_TOKENS_CAP = 512       # TelME's RoBERTa reads up to 512 tokens
REFERENCE_SAMPLES = 8            # inputs each TelME reference model cycles through
REFERENCE_FALLBACK_TOKENS = (32, 256)
TELME_FOR = {"text": "RoBERTa-large", "audio": "data2vec-audio-base", "visual": "TimeSformer-base"}
CPU_PROVIDERS = ["CPUExecutionProvider"]
MS = 1000.0
MB = float(1 << 20)


class BenchError(UsageError):
    """An artefact that cannot be benchmarked; the message names it and the fix (a ValueError too)."""


# -- what is benchmarked --------------------------------------------------------------------------
@dataclass
class Artefact:
    """One benchmarked model: a torch model (checkpoint, default, zoo) or an export folder."""

    label: str                          # the "model" column
    source: str                         # what the user gave (or the zoo kind)
    weights: str                        # where the weights come from
    contract: Contract
    inputs: list[dict[str, np.ndarray]]
    model: Any = None                   # the torch model; None for an export folder
    export: Path | None = None
    card: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def modality(self) -> str:
        return self.contract.modality

    def describe(self) -> dict:
        return {"model": self.label, "source": self.source, "weights": self.weights, "modality": self.modality,
                "contract_model": self.contract.model, "export": str(self.export) if self.export else None,
                "notes": self.notes}


def _teacher_fallback() -> Any:
    from mmer.models.teacher import Teacher, TeacherDims
    return Teacher.from_pretrained(TeacherDims()).eval()


def _audio_fallback() -> Any:
    from mmer.models.audio_student import AudioStudent, AudioStudentDims
    return AudioStudent(AudioStudentDims.for_edge()).eval()


def _visual_fallback() -> Any:
    from mmer.models.visual_student import VisualStudent, VisualStudentDims
    return VisualStudent(VisualStudentDims()).eval()


def _asf_fallback() -> Any:
    from mmer.models.asf import ASF, ASFDims
    return ASF(ASFDims()).eval()


# --models KIND -> (embedded default or "", the architecture at its default size with random
# weights when that default is not installed, where those weights come from)
ZOO: dict[str, tuple[str, Callable[[], Any], str]] = {
    "teacher": ("default-text", _teacher_fallback, "packaged MiniLM-L6 encoder, random head"),
    "audio": ("default-voice", _audio_fallback, "edge architecture, random weights"),
    "visual": ("default-face", _visual_fallback, "edge architecture, random weights"),
    "asf": ("", _asf_fallback, "default dims, random weights"),
}
MODEL_KINDS = tuple(ZOO)


def _model_artefact(model: Any, label: str, source: str, weights: str, data_root: Any) -> Artefact:
    inputs = model.example_inputs(SAMPLE_POOL, 0, data_root)
    return Artefact(label, source, weights, model.contract(), inputs, model=model,
                    notes=[f"inputs: {type(model).__name__}.example_inputs ({SAMPLE_POOL} batch-1 inputs)"])


def zoo_artefact(kind: str, data_root: Any = None) -> Artefact:
    """Zoo model ``kind`` (:data:`MODEL_KINDS`): its embedded default when installed, else the fallback."""
    import mmer
    from mmer.checkpoint import ASSETS_DIR, META

    name, fallback, weights = ZOO[kind]
    if name and (ASSETS_DIR / name / META).is_file():
        model, weights = mmer.load(name), f"embedded {name}"
    else:
        model = fallback()
    return _model_artefact(model, f"{kind} ({model.registry_name})", kind, weights, data_root)


def _checkpoint_folder(spec: str) -> Path | None:
    """The checkpoint folder of ``spec`` (a folder or an embedded default name), or None."""
    from mmer.checkpoint import CheckpointError, read_meta, resolve

    try:
        folder = resolve(spec)
        read_meta(folder)
    except CheckpointError:
        return None
    return folder


def _embedded_names() -> list[str]:
    from mmer.checkpoint import ASSETS_DIR, META

    return sorted(d.name for d in ASSETS_DIR.iterdir() if (d / META).is_file()) if ASSETS_DIR.is_dir() else []


def resolve_artefact(spec: str, data_root: Any = None) -> Artefact:
    """A positional of ``mmer-bench models``: export folder, checkpoint folder or embedded default name."""
    import mmer

    path = Path(spec)
    if is_export_folder(path):
        return export_artefact(path, data_root)
    folder = _checkpoint_folder(spec)
    if folder is None:
        why = "no such file or folder" if not path.exists() else \
            "neither its model.json says format 'mmer-export' nor does it hold a readable mmer.json"
        raise BenchError(f"{spec}: not a checkpoint folder, an embedded default name or an export folder ({why}). "
                         f"Give a folder written by mmer.checkpoint.save_checkpoint or by mmer-export, or one of "
                         f"the embedded defaults {_embedded_names() or '(none installed)'}")
    model = mmer.load(folder)
    label = f"{path.name if path.exists() else spec} ({model.registry_name})"
    weights = f"checkpoint {folder}" if path.exists() else f"embedded {spec}"
    return _model_artefact(model, label, spec, weights, data_root)


def random_inputs(contract: Contract, n: int, seed: int = 0, length: int = RANDOM_AXIS_LENGTH
                  ) -> list[dict[str, np.ndarray]]:
    """``n`` batch-1 inputs shaped by ``contract``: batch 1, other symbolic axes ``length``;
    floats standard normal, integers 1 (valid ids and all-on masks), booleans True."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        x = {}
        for s in contract.inputs:
            shape = tuple(1 if i == 0 else (length if isinstance(a, str) else int(a)) for i, a in enumerate(s.shape))
            dtype = np.dtype(s.dtype)
            x[s.name] = rng.standard_normal(shape).astype(dtype) if dtype.kind == "f" else np.ones(shape, dtype)
        out.append(x)
    return out


def _export_inputs(folder: Path, card: dict, contract: Contract, data_root: Any) -> tuple[list[dict], str]:
    """Inputs for an export folder and how they were made (see the module docstring)."""
    import mmer
    import mmer.models  # noqa: F401  (fills the registry)
    from mmer.registry import MODELS

    tried = []
    source = str((card.get("provenance") or {}).get("source") or "")
    if source and _checkpoint_folder(source) is not None:
        try:
            model = mmer.load(source)
            if model.contract().input_names == contract.input_names:
                return model.example_inputs(SAMPLE_POOL, 0, data_root), \
                    f"inputs: example_inputs of the export's source {source}"
            tried.append(f"source {source} takes {list(model.contract().input_names)}")
        except Exception as e:  # noqa: BLE001  (any failure falls through to the next way)
            tried.append(f"source {source}: {type(e).__name__}: {e}")
    elif source:
        tried.append(f"source {source!r} is not a loadable checkpoint")
    try:
        cls = MODELS.get(card["model"])
        dims = cls.dims_from_dict(card["dims"], source=str(folder / "model.json"))
        model = cls.from_checkpoint(dims, folder).eval()
        return model.example_inputs(SAMPLE_POOL, 0, data_root), \
            f"inputs: {cls.__name__}.example_inputs, the class rebuilt from the card's dims"
    except Exception as e:  # noqa: BLE001
        tried.append(f"rebuilding {card.get('model')!r} from the card: {type(e).__name__}: {e}")
    return random_inputs(contract, SAMPLE_POOL), (
        f"inputs: RANDOM tensors from the card's contract (batch 1, symbolic axes {RANDOM_AXIS_LENGTH}), "
        f"not real data ({'; '.join(tried)}); give the checkpoint it was exported from for real inputs")


def export_artefact(folder: Path, data_root: Any = None) -> Artefact:
    """An export folder written by mmer-export, with inputs from its model's contract."""
    card = read_card(folder)
    contract = Contract.from_card(card)
    inputs, how = _export_inputs(folder, card, contract, data_root)
    source = (card.get("provenance") or {}).get("source") or "unknown source"
    label = f"{folder.name} ({card['model']} {card.get('export_format', '?')})"
    return Artefact(label, str(folder), f"export {card.get('export_format', '?')} of {source}", contract, inputs,
                    export=folder, card=card, notes=[how])


# -- timing -------------------------------------------------------------------------------------
def time_calls(fn: Callable[[dict], Any], inputs: list[dict], runs: int, warmup: int) -> np.ndarray:
    """Milliseconds of ``runs`` calls of ``fn`` cycling through ``inputs``, after ``warmup`` calls."""
    for i in range(warmup):
        fn(inputs[i % len(inputs)])
    out = np.empty(runs)
    for i in range(runs):
        x = inputs[i % len(inputs)]
        start = time.perf_counter()
        fn(x)
        out[i] = (time.perf_counter() - start) * MS
    return out


def summarize(ms: np.ndarray) -> dict:
    return {f"p{p}_ms": float(np.percentile(ms, p)) for p in PERCENTILES} | {"mean_ms": float(ms.mean()), "runs": int(ms.size)}


def bench_runtime(rt: Runtime, inputs: list[dict], runs: int, warmup: int, throughput_runs: int) -> dict:
    """Batch-1 latency percentiles and batch-8 throughput (items/s, from the median batch time)."""
    ms = time_calls(lambda x: rt(**x), inputs, runs, warmup)
    batches = [collate(inputs[i:i + THROUGHPUT_BATCH]) for i in range(0, len(inputs) - THROUGHPUT_BATCH + 1,
                                                                       THROUGHPUT_BATCH)] or [collate(inputs)]
    bms = time_calls(lambda x: rt(**x), batches, max(1, throughput_runs), 1)
    size = batches[0][next(iter(batches[0]))].shape[0]
    return summarize(ms) | {"throughput_batch": size, "throughput_per_s": size * MS / float(np.median(bms)),
                            "samples_ms": ms.round(4).tolist()}


# -- backends -------------------------------------------------------------------------------------
@dataclass
class Backend:
    """One row to time: ``open()`` gives (runtime, size MB); ``skip`` says why it cannot run here."""

    label: str
    precision: str
    open: Callable[[], tuple[Runtime, float]] | None = None
    skip: str = ""


def _precision_label(fmt: str, precision: str) -> str:
    if precision == "int8" and fmt.startswith("onnx"):
        return "int8 static" if "static" in fmt else "int8 dynamic"
    return precision


def _file_mb(path: Path) -> float:
    return path.stat().st_size / MB


def _library_missing(runtime: str) -> str:
    """Why the library of engine runtime ``runtime`` cannot be used here ("" when it imports)."""
    try:
        __import__(ENGINE_LIBRARIES[runtime])
    except ImportError as e:
        return f"{runtime}: the Python module '{ENGINE_LIBRARIES[runtime]}' is not installed ({e})"
    return ""


class _Exports:
    """Export folders of torch models, made once per (artefact, format) into a work folder."""

    def __init__(self, work: Path, data_root: Any) -> None:
        self.work, self.data_root, self.done = work, data_root, {}

    def __call__(self, a: Artefact, fmt: str) -> Path:
        from mmer.export.exporter import export

        key = (id(a), fmt)
        if key not in self.done:
            folder = self.work / f"{len(self.done):02d}-{fmt}"
            a.model.to("cpu")
            export(a.model, fmt, folder, data_root=self.data_root, parity=False, source=a.source)
            self.done[key] = folder
        return self.done[key]


def _torch_backends(a: Artefact, device: str) -> list[Backend]:
    size = sum(p.numel() * p.element_size() for p in a.model.parameters()) / MB
    options = [("torch eager", {})]
    if device == "cuda":
        options += [("torch compile", {"compile": True}), ("torch cuda-graphs", {"cuda_graphs": True})]
    return [Backend(label, "fp32", lambda o=o: (TorchRuntime(a.model, device=device, **o), size)) for label, o in options]


def _model_backends(a: Artefact, device: str, formats: list[str], engines: list[str], exports: _Exports,
                    threads: int | None) -> list[Backend]:
    """Backends of a torch model on ``device`` (see the module docstring)."""
    from mmer.export import formats as fmts

    rows = _torch_backends(a, device)
    if device == "cpu":
        for fmt in formats:
            spec = fmts.get(fmt)
            rows.append(Backend("onnxruntime", _precision_label(fmt, spec.precision),
                                lambda fmt=fmt: _open_onnx(exports(a, fmt), threads)))
        return rows
    for fmt in engines:
        spec = fmts.get(fmt)
        label, precision = spec.runtime, _precision_label(fmt, spec.precision)
        why = a.contract.engine_note or _library_missing(spec.runtime)
        if why:
            rows.append(Backend(label, precision, skip=why))
            continue

        def open_engine(fmt: str = fmt, runtime: str = spec.runtime) -> tuple[Runtime, float]:
            folder = exports(a, fmt)
            return load_runtime(runtime, folder), _file_mb(folder / ENGINE_FILE)
        rows.append(Backend(label, precision, open_engine))
    return rows


def _open_onnx(folder: Path, threads: int | None) -> tuple[Runtime, float]:
    return load_runtime("onnxruntime", folder, providers=CPU_PROVIDERS, threads=threads), _file_mb(folder / MODEL_FILE)


def _export_backends(a: Artefact, device: str, devices: list[str], threads: int | None) -> list[Backend]:
    """Backends of an export folder on ``device``: its card's runtime, and ONNX Runtime on its graph."""
    card, folder = a.card, a.export
    runtime = card.get("runtime", "onnxruntime")
    precision = _precision_label(card.get("export_format", ""), card.get("precision", "fp32"))
    has_onnx = (folder / MODEL_FILE).is_file()
    rows = []
    if runtime == "onnxruntime":
        if device == "cpu":
            rows.append(Backend("onnxruntime", precision, lambda: _open_onnx(folder, threads)))
        return rows
    if runtime in ENGINE_LIBRARIES:
        if device == "cuda":
            why = _library_missing(runtime)
            rows.append(Backend(runtime, precision, skip=why) if why else
                        Backend(runtime, precision, lambda: (load_runtime(runtime, folder),
                                                             _file_mb(folder / ENGINE_FILE))))
        elif "cuda" not in devices:
            rows.append(Backend(runtime, precision, skip=f"{runtime} engines run on an NVIDIA GPU with CUDA; "
                                                         f"none is used here (no GPU visible, or --device cpu)"))
    elif device == "cpu":
        rows.append(Backend(runtime, precision, lambda: (load_runtime(runtime, folder), _file_mb(folder / MODEL_FILE))))
    if device == "cpu" and has_onnx:
        # The graph an engine was built from: FP16 or Q/DQ, so it keeps the engine's precision.
        rows.append(Backend("onnxruntime", precision, lambda: _open_onnx(folder, threads)))
    return rows


# -- the TelME-size reference stack ------------------------------------------------------------
def _reference_models() -> dict[str, tuple[Any, Callable[[Any, dict], Any]]]:
    import torch
    from transformers import (AutoModel, Data2VecAudioConfig, RobertaConfig, TimesformerConfig)

    roberta = RobertaConfig(vocab_size=50265, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                            intermediate_size=4096, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1)
    configs = {"RoBERTa-large": roberta, "data2vec-audio-base": Data2VecAudioConfig(),
               "TimeSformer-base": TimesformerConfig(image_size=224, num_frames=8)}
    out = {}
    for name, cfg in configs.items():
        torch.manual_seed(0)
        out[name] = AutoModel.from_config(cfg).eval()
    return out


def _token_lengths(inputs: list[dict]) -> list[int]:
    """Sequence lengths of text inputs: axis 1 of each sample's first input."""
    return [int(next(iter(x.values())).shape[1]) for x in inputs]


def _waveforms(inputs: list[dict]) -> list[np.ndarray]:
    """The (1, T) float waveform of each audio input (its first 2-D float input)."""
    out = []
    for x in inputs:
        wave = next((v for v in x.values() if v.dtype.kind == "f" and v.ndim == 2), None)
        if wave is not None:
            out.append(np.asarray(wave, np.float32))
    return out


def bench_reference(teacher_inputs: list[dict], audio_inputs: list[dict], runs: int, warmup: int, device: str) -> list[dict]:
    """TelME stack, PyTorch eager FP32, batch 1, on ``device``: one row per model.

    teacher_inputs / audio_inputs: inputs of the benchmarked text / audio models (their prompt
    lengths and waveforms are read); empty lists get fixed stand-ins (random lengths in
    :data:`REFERENCE_FALLBACK_TOKENS`, synthetic voice over 1-8 s).
    """
    import torch

    models = _reference_models()
    rng = np.random.default_rng(0)
    lengths = _token_lengths(teacher_inputs) or [int(n) for n in rng.integers(*REFERENCE_FALLBACK_TOKENS,
                                                                              REFERENCE_SAMPLES)]
    waves = _waveforms(audio_inputs) or [_synthetic_voice(float(d), rng)[None].astype(np.float32)
                                         for d in np.linspace(AUDIO_MIN_S, AUDIO_MAX_S, REFERENCE_SAMPLES)]
    text = [{"input_ids": torch.from_numpy(rng.integers(3, 50265, (1, min(n, REFERENCE_TOKENS_CAP))))} for n in lengths]
    audio = [{"input_values": torch.from_numpy(w)} for w in waves]
    video = [{"pixel_values": torch.rand(1, 8, 3, 224, 224, generator=torch.Generator().manual_seed(i))} for i in range(2)]
    rows = []
    for (name, model), inputs in zip(models.items(), (text, audio, video)):
        model = model.to(device)
        inputs = [{k: v.to(device) for k, v in x.items()} for x in inputs]

        def call(x: dict, model: Any = model) -> Any:
            with torch.inference_mode():
                out = model(**x).last_hidden_state
            if device == "cuda":
                torch.cuda.synchronize()
            return out

        ms = time_calls(call, inputs, runs, warmup)
        params = sum(p.numel() for p in model.parameters())
        rows.append({"model": name, "backend": "torch eager", "precision": "fp32", "size_mb": params * 4 / MB}
                    | summarize(ms) | {"samples_ms": ms.round(3).tolist()})
        model.to("cpu")
    return rows


# -- device info --------------------------------------------------------------------------------
def device_info(device: str) -> dict:
    import torch

    info: dict[str, Any] = {"device": device, "python": platform.python_version(), "torch": torch.__version__,
                            "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count()}
    try:
        info["cpu"] = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                           if line.startswith("model name"))
    except (OSError, StopIteration):
        info["cpu"] = platform.processor()
    for mod in ("onnxruntime", "onnx", "transformers", "tensorrt", "tensorrt_rtx"):
        try:
            info[mod] = __import__(mod).__version__
        except ImportError:
            pass
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
        info["compute_capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
        try:
            info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                            capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            info["driver"] = "unknown"
    return info


# -- report ---------------------------------------------------------------------------------------
def markdown(result: dict) -> str:
    """One Markdown table per device, the skipped backends, the reference stack and the ratios."""
    lines = []
    for dev in result["devices"]:
        info = dev["info"]
        where = info.get("gpu") or info.get("cpu", "cpu")
        lines += [f"### {info['device']}: {where}", "",
                  f"torch {info['torch']} ({info['torch_threads']} threads), onnxruntime {info.get('onnxruntime', '-')}"
                  + (f", driver {info['driver']}" if "driver" in info else ""), "",
                  "| model | backend | precision | size MB | p50 ms | p95 ms | p99 ms | batch-8 items/s | x TelME p50 |",
                  "|---|---|---|---:|---:|---:|---:|---:|---:|"]
        for r in dev["rows"]:
            ratio = f"{r['speedup_vs_telme']:.1f}x" if r.get("speedup_vs_telme") else "-"
            lines.append(f"| {r['model']} | {r['backend']} | {r['precision']} | {r['size_mb']:.1f} | {r['p50_ms']:.2f} | "
                         f"{r['p95_ms']:.2f} | {r['p99_ms']:.2f} | {r['throughput_per_s']:.1f} | {ratio} |")
        if dev.get("skipped"):
            lines += ["", "Not run here:", ""]
            lines += [f"- {s['model']} {s['backend']} {s['precision']}: {s['reason']}" for s in dev["skipped"]]
        if dev.get("reference"):
            lines += ["", "TelME-size reference (random weights, torch eager FP32, batch 1"
                      + (f", reduced to {dev['reference'][0]['runs']} timed runs" if dev['reference'][0]['runs'] < 10 else "")
                      + "):", "", "| model | size MB | p50 ms | p95 ms |", "|---|---:|---:|---:|"]
            for r in dev["reference"]:
                lines.append(f"| {r['model']} | {r['size_mb']:.0f} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} |")
            lines.append(f"| **stack, one after another** | | **{dev['reference_stack_p50_ms']:.1f}** | |")
        lines.append("")
    for a in result.get("artefacts", []):
        lines += [f"- {a['model']}: {a['weights']}; " + "; ".join(a["notes"])]
    lines += [f"- {n}" for n in result.get("notes", [])]
    return "\n".join(lines) + "\n"


def histogram_figure(result: dict) -> Any:
    """The latency histograms as a matplotlib Figure (:func:`mmer.plots.latency_histograms`): one
    panel per benchmarked model (only rows that ran), every backend of that model as one step
    curve, log-spaced bins on a log x axis. None without matplotlib or rows."""
    from mmer.plots import latency_histograms

    panels: dict[str, dict[str, list[float]]] = {}
    for d in result["devices"]:
        for r in d["rows"]:
            curves = panels.setdefault(f"{r['model']}: batch-1 latency", {})
            curves[f"{r['backend']} {r['precision']} ({d['info']['device']})"] = r["samples_ms"]
    return latency_histograms(panels)


def histogram_png(result: dict, path: Path) -> Path | None:
    """Write :func:`histogram_figure` to ``path``; None when there is nothing to draw."""
    from mmer.plots import save_figure

    fig = histogram_figure(result)
    return None if fig is None else save_figure(fig, path)


# -- the run --------------------------------------------------------------------------------------
SKIPPABLE = (RuntimeUnavailable, MissingExtra, ImportError)


def run_models(artefacts: list[Artefact], formats: list[str], runs: int, warmup: int, ref_runs: int, data_root: Any,
               work: Path, reference: bool, devices: list[str], engines: tuple[str, ...] | list[str] = ENGINE_FORMATS,
               threads: int | None = None) -> dict:
    """Benchmark every (artefact, backend) on every device; the structure of OUT.json.

    A backend that cannot run here (missing library, no GPU) or fails to export/run is
    listed under the device's ``skipped`` with the reason, and the others still run.
    """
    result: dict[str, Any] = {"artefacts": [a.describe() for a in artefacts], "devices": [], "notes": []}
    exports = _Exports(work, data_root)
    for device in devices:
        rows, skipped = [], []
        for a in artefacts:
            plan = _model_backends(a, device, formats, engines, exports, threads) if a.model is not None \
                else _export_backends(a, device, devices, threads)
            for b in plan:
                where = f"[mmer-bench] {device} {a.label} {b.label} {b.precision}"
                reason = b.skip
                if not reason:
                    print(f"{where} ...", file=sys.stderr, flush=True)
                    try:
                        rt, size = b.open()
                        stats = bench_runtime(rt, a.inputs, runs, warmup, max(3, runs // 10))
                    except SKIPPABLE as e:
                        reason = f"{type(e).__name__}: {e}"
                    except Exception as e:  # noqa: BLE001  (one broken backend must not end the run)
                        reason = f"failed: {type(e).__name__}: {e}"
                    else:
                        rows.append({"model": a.label, "modality": a.modality, "source": a.source,
                                     "weights": a.weights, "backend": b.label, "precision": b.precision,
                                     "size_mb": size, "notes": "; ".join(a.notes)} | stats)
                if reason:
                    print(f"{where}: not run ({reason})", file=sys.stderr, flush=True)
                    skipped.append({"model": a.label, "backend": b.label, "precision": b.precision, "reason": reason})
            if a.model is not None:
                a.model.to("cpu")
        dev: dict[str, Any] = {"info": device_info(device), "rows": rows, "skipped": skipped}
        if reference:
            print(f"[mmer-bench] {device} TelME-size reference stack ...", file=sys.stderr, flush=True)
            by_modality = {m: next((a.inputs for a in artefacts if a.modality == m), []) for m in ("text", "audio")}
            dev["reference"] = bench_reference(by_modality["text"][:REFERENCE_SAMPLES],
                                               by_modality["audio"][:REFERENCE_SAMPLES], ref_runs, 1, device)
            dev["reference_stack_p50_ms"] = sum(r["p50_ms"] for r in dev["reference"])
            ref = {r["model"]: r["p50_ms"] for r in dev["reference"]}
            for r in rows:
                if r["modality"] in TELME_FOR:
                    r["speedup_vs_telme"] = ref[TELME_FOR[r["modality"]]] / r["p50_ms"]
        result["devices"].append(dev)
    result["notes"] = [
        f"batch-1 latency over {runs} timed calls after {warmup} warm-up calls, cycling through {SAMPLE_POOL} inputs "
        f"from each model's example_inputs (teacher: MELD dev prompts with their dialogue context; audio: "
        f"{AUDIO_MIN_S:.0f}-{AUDIO_MAX_S:.0f} s speech; visual: 8 frames); throughput at batch {THROUGHPUT_BATCH}.",
        "ONNX Runtime rows use the CPU execution provider; GPU rows are torch and TensorRT engines.",
    ]
    if reference:
        result["notes"] += [
            f"TelME reference: {ref_runs} timed runs per model after 1 warm-up (reduced: each call takes seconds on "
            "a CPU); RoBERTa-large reads the prompt lengths of the benchmarked text model (capped at 512), "
            "data2vec the clips of the audio model (stand-ins where none was benchmarked), TimeSformer 8x224x224.",
            "x TelME p50 = the TelME model of the same modality's p50 / this row's p50 (higher is faster).",
        ]
    return result


def _split(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def bench_models_main(argv: list[str] | None = None) -> int:
    """``mmer-bench models [MODEL_OR_EXPORT ...] [--json OUT.json] ...``; a leading ``models`` word is accepted."""
    from mmer.export import formats as fmts

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["models"]:
        argv = argv[1:]
    p = argparse.ArgumentParser(prog="mmer-bench models", description=__doc__.split("\n\n")[0],
                                epilog="Example: mmer-bench models runs/voice/checkpoint exports/voice-int8 --json b.json")
    add_version(p)
    p.add_argument("artefacts", nargs="*", metavar="MODEL_OR_EXPORT",
                   help="checkpoint folders, embedded default names or mmer-export folders (default: the zoo)")
    p.add_argument("--json", type=Path, default=Path("bench-models.json"), help="output JSON (.md and .png beside it)")
    p.add_argument("--models", default=None,
                   help=f"without positionals: zoo defaults to time, a subset of {','.join(MODEL_KINDS)} (default: all)")
    p.add_argument("--formats", default=",".join(ONNX_FORMATS),
                   help="ONNX Runtime formats to export a checkpoint to and time (CPU)")
    p.add_argument("--engines", default=",".join(ENGINE_FORMATS),
                   help="TensorRT formats to build from a checkpoint and time (CUDA, when the library imports)")
    p.add_argument("--runs", type=int, default=200, help="timed batch-1 calls per row")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--reference-runs", type=int, default=5, help="timed calls per TelME reference model")
    p.add_argument("--no-reference", action="store_true", help="skip the TelME-size stack")
    p.add_argument("--device", choices=("cpu", "cuda", "all"), default="all", help="'all': cpu, plus cuda when present")
    p.add_argument("--data-root", default=None)
    p.add_argument("--threads", type=int, default=0,
                   help="torch and ONNX Runtime intra-op threads (0: their defaults)")
    args = p.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    formats, engines = _split(args.formats), _split(args.engines)
    for fmt in formats + engines:
        if fmt not in fmts.names():
            p.error(f"unknown format {fmt!r}; formats: {fmts.names()}")
    wrong = [f for f in formats if fmts.get(f).runtime != "onnxruntime"] + \
        [f for f in engines if fmts.get(f).runtime not in ENGINE_LIBRARIES]
    if wrong:
        p.error(f"{wrong}: --formats takes ONNX Runtime formats ({list(ONNX_FORMATS)}), --engines TensorRT ones "
                f"({[n for n in fmts.names() if fmts.get(n).runtime in ENGINE_LIBRARIES]})")
    if args.artefacts and args.models is not None:
        p.error("--models picks zoo defaults when no MODEL_OR_EXPORT is given; give one or the other "
                "(a zoo default by name: mmer-bench models default-voice)")
    kinds = _split(args.models) if args.models is not None else list(MODEL_KINDS)
    unknown = [k for k in kinds if k not in MODEL_KINDS]
    if unknown:
        p.error(f"unknown models {unknown}; choose from {list(MODEL_KINDS)}")
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [d for d in devices if d == "cpu" or torch.cuda.is_available()]
    if not devices:
        p.error("--device cuda: no CUDA device is visible (torch.cuda.is_available() is False); use --device cpu")
    try:
        artefacts = [resolve_artefact(s, args.data_root) for s in args.artefacts] if args.artefacts \
            else [zoo_artefact(k, args.data_root) for k in kinds]
    except BenchError as e:
        p.error(str(e))
    with tempfile.TemporaryDirectory(prefix="mmer-bench-") as tmp:
        result = run_models(artefacts, formats, args.runs, args.warmup, args.reference_runs, args.data_root,
                            Path(tmp), not args.no_reference, devices, engines, args.threads or None)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2), encoding="utf-8")
    md = args.json.with_suffix(".md")
    md.write_text(markdown(result), encoding="utf-8")
    png = histogram_png(result, args.json.with_suffix(".png"))
    print(markdown(result))
    print(f"wrote {args.json}, {md}" + (f", {png}" if png else ""), file=sys.stderr)
    if not any(d["rows"] for d in result["devices"]):
        print("mmer-bench models: no backend ran (see 'Not run here' above for why)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(bench_models_main())
