"""ONNX -> TensorRT / TensorRT-RTX engines, with tight optimization profiles and a record of the target.

Two libraries, one code path (their Python APIs mirror each other):

* ``tensorrt_rtx`` (TensorRT for RTX, ``pip install 'mmer[trtrtx]'``): builds WITHOUT a GPU, for
  the compute capabilities named in ``engine.compute_capabilities``; its engines run only on
  compute capability 8.0, 8.6, 8.9 and 12.x (A100 and RTX 30xx/40xx/50xx; an H100, 9.0, refuses
  them). Networks are strongly typed: precision comes from the ONNX tensor types, so FP16
  engines are built from the FP16 ONNX and INT8 engines from a Q/DQ ONNX. TensorRT-RTX >= 1.2
  makes timing-cache calls no-ops (its kernels are compiled just in time and cached at run
  time); the build records that instead of pretending to reuse a cache.
* ``tensorrt`` (full TensorRT, NVIDIA's index only): builds on the GPU it targets. Strongly
  typed from the FP16 / Q/DQ ONNX like RTX; ``engine.int8_calibrator=implicit`` falls back to
  the deprecated entropy calibrator on the FP32 ONNX. A timing cache file is reused between
  builds.

Next to ``model.engine`` goes ``engine.json``: library and version, precision, target GPU or
compute capabilities, optimization profiles, build time.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from mmer.contract import BATCH, Contract
from mmer.errors import EnvironmentProblem
from mmer.export.config import EngineConfig, ProfilesConfig
from mmer.extras import require
from mmer.progress import progress
from mmer.runtime import ENGINE_CARD, ENGINE_FILE, RTX, RTX_RUNS_ON, TRT  # noqa: F401  (re-exported)
from mmer.runtime import trt_logger as _logger

MIB = 1 << 20
DEFAULT_TIMING_CACHE = Path.home() / ".cache" / "mmer" / "tensorrt.timing.cache"


class EngineBuildError(EnvironmentProblem):
    """An engine that could not be built; the message carries the parser/builder errors (a RuntimeError too)."""


Shape = tuple[int, ...]


def profile_shapes(contract: Contract, profiles: ProfilesConfig) -> list[dict[str, tuple[Shape, Shape, Shape]]]:
    """Optimization profiles of the contract's inputs: one dict name -> (min, opt, max) per bucket.

    The contract's sequence axis names its buckets (``profiles.text_tokens``: token counts;
    ``profiles.audio``: seconds, turned into samples); an axis without buckets in the config
    (the edge face student's frame count) gets one bucket (1, cap, cap). Maxima are clamped to
    what the model reads (its ``cap``), so no engine is sized for inputs the model would cut anyway.
    """
    b = profiles.batch
    if not 1 <= b.min <= b.opt <= b.max:
        raise EngineBuildError(f"profiles.batch must satisfy 1 <= min <= opt <= max, got {b}")
    seq = contract.sequence
    if seq is None:
        buckets, cap = [(0, 0, 0)], 0  # no sequence axis
    else:
        cap = seq.cap
        ranges = getattr(profiles, seq.profile, None)
        if ranges is None:
            buckets = [(1, cap, cap)]
        elif seq.per_second:
            rate = seq.per_second
            buckets = [(int(r.min_s * rate), int(r.opt_s * rate), int(r.max_s * rate)) for r in ranges]
        else:
            buckets = [(r.min, r.opt, r.max) for r in ranges]
    out = []
    for lo, opt, hi in buckets:
        if cap:
            hi = min(hi, cap)
            lo, opt = min(lo, hi), min(max(opt, lo), hi)
            if not 1 <= lo <= opt <= hi:
                raise EngineBuildError(f"profile bucket ({lo}, {opt}, {hi}) of {contract.model} is not 1 <= min <= opt <= max")
        shapes = {}
        for s in contract.inputs:
            def dim(a: Any, k: int) -> int:
                if a == BATCH:
                    return (b.min, b.opt, b.max)[k]
                if isinstance(a, str):
                    return (lo, opt, hi)[k]
                return int(a)
            shapes[s.name] = tuple(tuple(dim(a, k) for a in s.shape) for k in range(3))
        out.append(shapes)
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(MIB), b""):
            h.update(chunk)
    return h.hexdigest()


def _cuda_device() -> dict | None:
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability(0)
    return {"name": torch.cuda.get_device_name(0), "compute_capability": f"{major}.{minor}"}


def _parse(lib: Any, builder: Any, onnx_path: Path, strongly_typed: bool) -> tuple[Any, Any]:
    flags = 0
    if strongly_typed and hasattr(lib.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags = 1 << int(lib.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = lib.OnnxParser(network, _logger(lib))
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i).desc()) for i in range(parser.num_errors))
        raise EngineBuildError(f"{lib.__name__} could not parse {onnx_path}: {errors}")
    return network, parser


def _pad_to(sample: dict[str, np.ndarray], shapes: dict[str, Shape]) -> dict[str, np.ndarray] | None:
    """Zero-pad every input of a batch-1 sample to ``shapes`` (None if one is larger)."""
    out = {}
    for name, arr in sample.items():
        target = (1,) + tuple(shapes[name][1:])
        if any(a > t for a, t in zip(arr.shape, target)):
            return None
        out[name] = np.pad(arr, [(0, t - a) for a, t in zip(arr.shape, target)])
    return out


def _implicit_calibrator(lib: Any, samples: list[dict[str, np.ndarray]], cache: Path,
                         opt_shapes: dict[str, Shape]) -> Any:
    """Full TensorRT's deprecated entropy calibrator over ``samples`` (needs a CUDA GPU and torch).

    Implicit calibration runs at the calibration profile's opt shapes: samples are zero-padded
    to them (masks mark the padding); longer ones are skipped.
    """
    import torch

    samples = [p for p in (_pad_to(s, opt_shapes) for s in samples) if p is not None]

    base = getattr(lib, "IInt8EntropyCalibrator2", None)
    if base is None:
        raise EngineBuildError(f"{lib.__name__} {lib.__version__} has no implicit INT8 calibrator; "
                               "use engine.int8_calibrator=explicit (Q/DQ)")

    class Calibrator(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            super().__init__()
            self.it = iter(progress(samples, "int8 calibration (TensorRT)", unit="sample"))
            self.keep: list[Any] = []

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names: list[str]) -> list[int] | None:
            sample = next(self.it, None)
            if sample is None:
                return None
            self.keep = [torch.from_numpy(np.ascontiguousarray(sample[n])).cuda() for n in names]
            return [t.data_ptr() for t in self.keep]

        def read_calibration_cache(self) -> bytes | None:
            return cache.read_bytes() if cache.is_file() else None

        def write_calibration_cache(self, data: Any) -> None:
            cache.write_bytes(bytes(data))

    return Calibrator()


def onnx2engine(onnx_path: str | Path, folder: str | Path, contract: Contract, profiles: ProfilesConfig,
                cfg: EngineConfig, library: str, precision: str,
                implicit_int8_samples: list[dict[str, np.ndarray]] | None = None) -> dict:
    """Build ``folder/model.engine`` from ``onnx_path`` with ``library`` (``tensorrt_rtx`` or
    ``tensorrt``) and write ``folder/engine.json``; returns that record.

    precision: ``fp16`` or ``int8`` (recorded; the ONNX types decide, except with the implicit
    calibrator, which needs ``implicit_int8_samples`` and the FP32 ONNX).
    """
    lib = require(library)
    onnx_path, folder = Path(onnx_path), Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    gpu = _cuda_device()
    if library == TRT and gpu is None:
        raise EngineBuildError("full TensorRT builds engines on the GPU they will run on, and no CUDA GPU is visible "
                               "here. Build on the target machine, or use --format trtrtx-fp16 (TensorRT-RTX "
                               "builds without a GPU)")
    implicit = implicit_int8_samples is not None
    if implicit and library != TRT:
        raise EngineBuildError("the implicit INT8 calibrator exists only in full TensorRT; TensorRT-RTX takes Q/DQ graphs")
    builder = lib.Builder(_logger(lib))
    network, _parser = _parse(lib, builder, onnx_path, strongly_typed=not implicit)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(lib.MemoryPoolType.WORKSPACE, cfg.workspace_mb * MIB)
    config.builder_optimization_level = cfg.builder_optimization_level
    shapes = profile_shapes(contract, profiles)
    trt_profiles = []
    for bucket in shapes:
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in bucket.items():
            profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(profile)
        trt_profiles.append(profile)
    record: dict[str, Any] = {"library": library, "version": lib.__version__, "precision": precision,
                              "engine": ENGINE_FILE, "onnx": onnx_path.name, "onnx_sha256": _sha256(onnx_path),
                              "profiles": [{k: [list(s) for s in v] for k, v in b.items()} for b in shapes]}
    timing_path = None
    if library == RTX:
        targets = list(cfg.compute_capabilities)
        unknown = [t for t in targets if t not in lib.ComputeCapability.__members__]
        if unknown or not targets:
            raise EngineBuildError(f"engine.compute_capabilities {unknown or targets} not among "
                                   f"{list(lib.ComputeCapability.__members__)}")
        config.num_compute_capabilities = len(targets)
        for i, t in enumerate(targets):
            config.set_compute_capability(lib.ComputeCapability.__members__[t], i)
        record["target"] = {"compute_capabilities": [f"{t[2:-1]}.{t[-1]}" for t in targets],
                            "runs_on": "NVIDIA GPUs of compute capability 8.0, 8.6, 8.9 or 12.x (A100, RTX 30xx/40xx/50xx); "
                                       "not 9.0 (H100/H200)", "built_on_gpu": gpu}
        record["timing_cache"] = "not used: TensorRT-RTX >= 1.2 makes timing-cache calls no-ops (kernels are JIT-compiled " \
                                 "and kept in the runtime cache beside the engine)"
    else:
        record["target"] = {"gpu": gpu, "runs_on": f"the GPU it was built on ({gpu['name']}, compute capability "
                                                   f"{gpu['compute_capability']}) and the same TensorRT version"}
        timing_path = Path(cfg.timing_cache).expanduser() if cfg.timing_cache else DEFAULT_TIMING_CACHE
        cache = config.create_timing_cache(timing_path.read_bytes() if timing_path.is_file() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
        record["timing_cache"] = str(timing_path)
        if implicit:
            config.set_flag(lib.BuilderFlag.INT8)
            config.set_flag(lib.BuilderFlag.FP16)
            config.set_calibration_profile(trt_profiles[0])
            config.int8_calibrator = _implicit_calibrator(lib, implicit_int8_samples, folder / "calibration.cache",
                                                          {k: v[1] for k, v in shapes[0].items()})
            record["int8_calibrator"] = "implicit (IInt8EntropyCalibrator2, deprecated)"
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    build_s = time.perf_counter() - start
    if serialized is None:
        raise EngineBuildError(f"{library} failed to build an engine from {onnx_path} (see the TensorRT log above)")
    engine_path = folder / ENGINE_FILE
    engine_path.write_bytes(memoryview(serialized))
    if timing_path is not None:
        timing_path.parent.mkdir(parents=True, exist_ok=True)
        timing_path.write_bytes(memoryview(config.get_timing_cache().serialize()))
    record.update(build_s=round(build_s, 3), size_mb=round(engine_path.stat().st_size / MIB, 3),
                  built_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    (folder / ENGINE_CARD).write_text(json.dumps(record, indent=2), encoding="utf-8")
    return record
