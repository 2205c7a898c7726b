"""``mmer-bench models``: latency of every zoo model on every backend, against a TelME-size stack.

For each model (teacher, audio student, visual student, ASF at their default sizes) and backend
(torch eager FP32; ONNX Runtime FP32 / FP16 / INT8 dynamic / INT8 static; on CUDA also torch
with ``torch.compile`` and CUDA graphs) it reports size, p50/p95/p99 latency at batch 1 after a
warm-up, over realistic shapes (teacher prompts built from MELD dev dialogues, so context
lengths are MELD's; 1-8 s audio with MELD's utterance durations; 8 frames), and throughput at
batch 8. In the same run it times the TelME deployment (RoBERTa-large, data2vec-audio-base,
TimeSformer-base, built from transformers configs with random weights, PyTorch eager FP32), so
every row is also a ratio against the paper's stack. Timing: ``time.perf_counter`` around each
call; percentiles over all timed calls. Writes OUT.json, OUT.md (one table per device) and
OUT.png (latency histograms).
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
from pathlib import Path
from typing import Any, Callable

import numpy as np

from mmer.export.runtime import Runtime, TorchRuntime, load_runtime
from mmer.export.samples import (AUDIO_MAX_S, AUDIO_MIN_S, SampleDataError, collate, meld_dev_utterances,
                                 model_samples, teacher_samples)

THROUGHPUT_BATCH = 8
PERCENTILES = (50, 95, 99)
ONNX_FORMATS = ("onnx", "onnx-fp16", "onnx-int8", "onnx-int8-static")
MODEL_KINDS = ("teacher", "audio", "visual", "asf")
SAMPLE_POOL = 64                 # distinct inputs cycled through while timing
REFERENCE_TOKENS_CAP = 512       # TelME's RoBERTa reads up to 512 tokens
HIST_BINS = 40
MS = 1000.0


# -- models -------------------------------------------------------------------------------------
def _zoo_model(kind: str) -> tuple[Any, str]:
    """(model at its default size, where its weights come from)."""
    import mmer
    from mmer.checkpoint import ASSETS_DIR

    defaults = {"teacher": "default-text", "audio": "default-voice", "visual": "default-face"}
    name = defaults.get(kind)
    if name and (ASSETS_DIR / name / "mmer.json").is_file():
        return mmer.load(name), f"embedded {name}"
    if kind == "teacher":
        from mmer.models.teacher import Teacher, TeacherDims
        return Teacher.from_pretrained(TeacherDims()).eval(), "packaged MiniLM-L6 encoder, random head"
    if kind == "audio":
        from mmer.models.audio_student import AudioStudent, AudioStudentDims
        return AudioStudent(AudioStudentDims.for_edge()).eval(), "edge architecture, random weights"
    if kind == "visual":
        from mmer.models.visual_student import VisualStudent, VisualStudentDims
        return VisualStudent(VisualStudentDims()).eval(), "edge architecture, random weights"
    from mmer.models.asf import ASF, ASFDims
    return ASF(ASFDims()).eval(), "default dims, random weights"


def _meld_durations_s(data_root: Any) -> list[float]:
    try:
        found = [d for _, _, d in meld_dev_utterances(data_root) if d > 0]
    except SampleDataError:
        found = []
    return [float(np.clip(d, AUDIO_MIN_S, AUDIO_MAX_S)) for d in found] or list(np.linspace(AUDIO_MIN_S, AUDIO_MAX_S, 8))


def _inputs(model: Any, kind: str, n: int, data_root: Any, seed: int = 0) -> list[dict[str, np.ndarray]]:
    if kind == "teacher":
        return teacher_samples(model, n, seed, data_root)[0]
    if kind == "audio":
        from mmer.export.samples import _synthetic_voice
        rng = np.random.default_rng(seed)
        durations = rng.choice(_meld_durations_s(data_root), n)
        waves = [_synthetic_voice(float(d), rng) for d in durations]
        return [{"waveform": w[None], "attention_mask": np.ones((1, w.size), np.int64)} for w in waves]
    return model_samples(model, n, seed, data_root)


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


def bench_reference(teacher_inputs: list[dict], audio_inputs: list[dict], runs: int, warmup: int, device: str) -> list[dict]:
    """TelME stack, PyTorch eager FP32, batch 1, on ``device``: one row per model."""
    import torch

    models = _reference_models()
    rng = np.random.default_rng(0)
    text = [{"input_ids": torch.from_numpy(rng.integers(3, 50265, (1, min(x["input_ids"].shape[1], REFERENCE_TOKENS_CAP)))),
             } for x in teacher_inputs]
    audio = [{"input_values": torch.from_numpy(x["waveform"])} for x in audio_inputs]
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
        rows.append({"model": name, "backend": "torch eager", "precision": "fp32", "size_mb": params * 4 / (1 << 20)}
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
    """One Markdown table per device, plus the reference stack and the ratios."""
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
        if dev.get("reference"):
            lines += ["", "TelME-size reference (random weights, torch eager FP32, batch 1"
                      + (f", reduced to {dev['reference'][0]['runs']} timed runs" if dev['reference'][0]['runs'] < 10 else "")
                      + "):", "", "| model | size MB | p50 ms | p95 ms |", "|---|---:|---:|---:|"]
            for r in dev["reference"]:
                lines.append(f"| {r['model']} | {r['size_mb']:.0f} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} |")
            lines.append(f"| **stack, one after another** | | **{dev['reference_stack_p50_ms']:.1f}** | |")
        lines.append("")
    lines += [f"- {n}" for n in result.get("notes", [])]
    return "\n".join(lines) + "\n"


def histogram_png(result: dict, path: Path) -> Path | None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = [(d["info"]["device"], r) for d in result["devices"] for r in d["rows"]]
    fig, axes = plt.subplots(len(MODEL_KINDS), 1, figsize=(8, 2.4 * len(MODEL_KINDS)))
    for ax, kind in zip(np.atleast_1d(axes), MODEL_KINDS):
        for dev, r in rows:
            if r["kind"] == kind:
                ax.hist(r["samples_ms"], bins=HIST_BINS, histtype="step", label=f"{r['backend']} {r['precision']} ({dev})")
        ax.set_title(f"{kind}: batch-1 latency")
        ax.set_xlabel("ms")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _backends(device: str, formats: list[str]) -> list[tuple[str, str, dict]]:
    """(backend label, export format or '', torch options) to run on ``device``."""
    if device == "cuda":
        return [("torch eager", "", {"device": "cuda"}), ("torch compile", "", {"device": "cuda", "compile": True}),
                ("torch cuda-graphs", "", {"device": "cuda", "cuda_graphs": True})]
    return [("torch eager", "", {})] + [("onnxruntime", f, {}) for f in formats]


def run_models(kinds: list[str], formats: list[str], runs: int, warmup: int, ref_runs: int, data_root: Any,
               work: Path, reference: bool, devices: list[str]) -> dict:
    """Benchmark every (model, backend) on every device; the structure of OUT.json."""
    from mmer.export.exporter import export

    result: dict[str, Any] = {"devices": [], "notes": []}
    models = {k: _zoo_model(k) for k in kinds}
    inputs = {k: _inputs(m, k, SAMPLE_POOL, data_root) for k, (m, _) in models.items()}
    for device in devices:
        rows = []
        for kind, (model, weights) in models.items():
            for label, fmt, opts in _backends(device, formats):
                if fmt:
                    folder = work / f"{kind}-{fmt}"
                    export(model, fmt, folder, data_root=data_root, parity=False)
                    rt, size = load_runtime("onnxruntime", folder), (folder / "model.onnx").stat().st_size / (1 << 20)
                    precision = {"onnx": "fp32", "onnx-fp16": "fp16"}.get(
                        fmt, "int8 static" if "static" in fmt else "int8 dynamic")
                else:
                    rt, precision = TorchRuntime(model, **opts), "fp32"
                    size = sum(p.numel() * p.element_size() for p in model.parameters()) / (1 << 20)
                print(f"[mmer-bench] {device} {kind} {label} {precision} ...", file=sys.stderr, flush=True)
                stats = bench_runtime(rt, inputs[kind], runs, warmup, max(3, runs // 10))
                rows.append({"model": f"{kind} ({model.registry_name})", "kind": kind, "weights": weights, "backend": label,
                             "precision": precision, "size_mb": size} | stats)
            model.to("cpu")
        dev: dict[str, Any] = {"info": device_info(device), "rows": rows}
        if reference:
            print(f"[mmer-bench] {device} TelME-size reference stack ...", file=sys.stderr, flush=True)
            dev["reference"] = bench_reference(inputs.get("teacher", [])[:8], inputs.get("audio", [])[:8], ref_runs,
                                               1, device)
            stack = sum(r["p50_ms"] for r in dev["reference"])
            dev["reference_stack_p50_ms"] = stack
            telme_for = {"teacher": "RoBERTa-large", "audio": "data2vec-audio-base", "visual": "TimeSformer-base"}
            ref = {r["model"]: r["p50_ms"] for r in dev["reference"]}
            for r in rows:
                if r["kind"] in telme_for:
                    r["speedup_vs_telme"] = ref[telme_for[r["kind"]]] / r["p50_ms"]
        result["devices"].append(dev)
    result["notes"] = [
        f"batch-1 latency over {runs} timed calls after {warmup} warm-up calls, cycling through {SAMPLE_POOL} inputs "
        f"(teacher: MELD dev prompts with their dialogue context; audio: MELD dev utterance durations clipped to "
        f"{AUDIO_MIN_S:.0f}-{AUDIO_MAX_S:.0f} s; visual: 8 frames); throughput at batch {THROUGHPUT_BATCH}.",
        f"TelME reference: {ref_runs} timed runs per model after 1 warm-up (reduced: each call takes seconds on this CPU); "
        "RoBERTa-large reads the same prompt lengths (capped at 512), data2vec the same clips, TimeSformer 8x224x224.",
        "x TelME p50 = the TelME model of the same modality's p50 / this row's p50 (higher is faster).",
    ]
    return result


def bench_models_main(argv: list[str] | None = None) -> int:
    """``mmer-bench models [--json OUT.json] ...``; a leading ``models`` word is accepted."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["models"]:
        argv = argv[1:]
    p = argparse.ArgumentParser(prog="mmer-bench models", description=__doc__.split("\n\n")[0])
    p.add_argument("--json", type=Path, default=Path("bench-models.json"), help="output JSON (.md and .png beside it)")
    p.add_argument("--models", default=",".join(MODEL_KINDS), help=f"subset of {','.join(MODEL_KINDS)}")
    p.add_argument("--formats", default=",".join(ONNX_FORMATS), help="ONNX Runtime formats to time (CPU)")
    p.add_argument("--runs", type=int, default=200, help="timed batch-1 calls per row")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--reference-runs", type=int, default=5, help="timed calls per TelME reference model")
    p.add_argument("--no-reference", action="store_true", help="skip the TelME-size stack")
    p.add_argument("--device", choices=("cpu", "cuda", "all"), default="all", help="'all': cpu, plus cuda when present")
    p.add_argument("--data-root", default=None)
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = p.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    kinds = [k for k in args.models.split(",") if k]
    unknown = [k for k in kinds if k not in MODEL_KINDS]
    if unknown:
        p.error(f"unknown models {unknown}; choose from {list(MODEL_KINDS)}")
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [d for d in devices if d == "cpu" or torch.cuda.is_available()]
    with tempfile.TemporaryDirectory(prefix="mmer-bench-") as tmp:
        result = run_models(kinds, [f for f in args.formats.split(",") if f], args.runs, args.warmup,
                            args.reference_runs, args.data_root, Path(tmp), not args.no_reference, devices)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2), encoding="utf-8")
    md = args.json.with_suffix(".md")
    md.write_text(markdown(result), encoding="utf-8")
    png = histogram_png(result, args.json.with_suffix(".png"))
    print(markdown(result))
    print(f"wrote {args.json}, {md}" + (f", {png}" if png else ""), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(bench_models_main())
