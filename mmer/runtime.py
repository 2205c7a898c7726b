"""One runtime interface for torch, ONNX Runtime, TensorRT and TensorRT-RTX (STYLE.md habit 9).

    rt = load_runtime("onnxruntime", "exports/teacher-onnx")     # or "torch", "tensorrt", "tensorrt-rtx"
    out = rt(input_ids=ids, attention_mask=mask)                  # numpy in
    out["logits"], out["probs"], out["feature"]                   # numpy out, (B, C), (B, C), (B, D)

Every backend takes the same named numpy inputs (those of the model's contract,
:mod:`mmer.contract`, listed in ``rt.input_names``; dtypes are converted) and returns the
contract's outputs by name (heads, the feature under its own name and as ``"feature"``, extra
outputs). The torch backend calls the very wrapper that is exported
(:class:`mmer.contract.GraphWrapper`), so parity between backends is a like-for-like comparison.
Runtimes are registered in :data:`RUNTIMES`; an unknown name gets the registry's did-you-mean.

TensorRT engines need an NVIDIA GPU with CUDA (and torch built with CUDA, used for device
buffers); TensorRT-RTX engines additionally need compute capability 8.0, 8.6, 8.9 or 12.x.
Loading one anywhere else raises :class:`RuntimeUnavailable` saying exactly that.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from mmer.contract import Contract, GraphWrapper
from mmer.errors import EnvironmentProblem, UsageError
from mmer.extras import require
from mmer.registry import Registry

MODEL_FILE = "model.onnx"              # an export folder: the graph,
CARD_FILE = "model.json"               # its model card (mmer.export.onnx_export writes both),
ENGINE_FILE = "model.engine"           # and, for TensorRT formats, the engine
ENGINE_CARD = "engine.json"            # with its build record
CARD_FORMAT = "mmer-export"
RTX = "tensorrt_rtx"
TRT = "tensorrt"
RTX_RUNS_ON = ("8.0", "8.6", "8.9", "12.0", "12.1")   # compute capabilities TensorRT-RTX engines load on
CARD_REQUIRED = ("model", "dims", "label_set", "inputs", "outputs", "feature")   # what serving a card reads
RUNTIME_CACHE_FILE = "runtime.cache"   # TensorRT-RTX JIT kernels, kept beside the engine
FP16_DISABLED_OPTIMIZERS = ("NchwcTransformer",)
MAX_CUDA_GRAPHS = 16                   # captured input-shape signatures kept per torch runtime
_LOGGERS: dict[str, Any] = {}


class RuntimeUnavailable(EnvironmentProblem):
    """The backend cannot run here (no GPU, unsupported GPU, missing library); the message says why."""


class ExportFolderError(UsageError, FileNotFoundError):
    """A folder that is not an export mmer-export wrote; the message says what is missing
    (a ValueError and a FileNotFoundError too)."""


def trt_logger(lib: Any) -> Any:
    """One logger per TensorRT library: TensorRT ignores (and warns about) a second one per process."""
    name = lib.__name__
    if name not in _LOGGERS:
        _LOGGERS[name] = lib.Logger(lib.Logger.WARNING)
    return _LOGGERS[name]


def read_card(folder: str | Path) -> dict:
    """The model.json of an export folder (or of the folder holding an .onnx/.engine file)."""
    folder = Path(folder)
    if folder.is_file():
        folder = folder.parent
    path = folder / CARD_FILE
    if not path.is_file():
        raise ExportFolderError(f"{folder}: no {CARD_FILE}; export folders are written by mmer-export")
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ExportFolderError(f"{path}: not valid JSON ({e}); export the model again with mmer-export") from None
    missing = [k for k in CARD_REQUIRED if not isinstance(card, dict) or k not in card]
    if missing:
        raise ExportFolderError(f"{path}: {CARD_FILE} has no {' and no '.join(repr(k) for k in missing)}; "
                                f"export the model again with mmer-export")
    return card


def is_export_folder(path: str | Path) -> bool:
    """True for a folder mmer-export wrote (its model.json says format ``mmer-export``)."""
    p = Path(path)
    card = p / CARD_FILE
    if not (p.is_dir() and card.is_file()):
        return False
    try:
        return json.loads(card.read_text(encoding="utf-8")).get("format") == CARD_FORMAT
    except (OSError, json.JSONDecodeError):
        return False


class Runtime:
    """Base class: named numpy inputs -> the contract's outputs by name, as float32 numpy
    ({"logits", "probs", <feature>, "feature", extras...}; "score" for sentiment regression)."""

    name = ""

    def __init__(self, contract: Contract, card: dict | None = None) -> None:
        self.contract = contract
        self.input_names = contract.input_names
        self.feature = contract.feature
        self.heads = contract.heads
        self.outputs = list(contract.outputs)
        self.card = card or {}

    def _named(self, values: Any) -> dict[str, np.ndarray]:
        """Graph outputs in contract order -> {name: float32 numpy}, the feature also as "feature"."""
        arrays = [np.asarray(v, dtype=np.float32) if isinstance(v, np.ndarray) else v.float().cpu().numpy()
                  for v in values]
        out = dict(zip(self.outputs, arrays))
        out["feature"] = out[self.feature]
        return out

    def __call__(self, **inputs: Any) -> dict[str, np.ndarray]:
        """Run one batch; see the module docstring."""
        return self.run(self.contract.check(inputs))

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def describe(self) -> dict:
        """Backend, device and library versions (for benchmark tables)."""
        return {"backend": self.name}


class TorchRuntime(Runtime):
    """Eager PyTorch (optionally ``torch.compile`` and, on CUDA, CUDA graphs).

    model: a zoo model, or a checkpoint folder / embedded default name (loaded with ``mmer.load``).
    """

    name = "torch"

    def __init__(self, model: Any, device: str = "cpu", compile: bool = False, cuda_graphs: bool = False) -> None:
        import torch

        if not isinstance(model, torch.nn.Module):
            import mmer
            model = mmer.load(model, device=device)
        contract = model.contract()
        super().__init__(contract, getattr(model, "checkpoint_meta", None))
        self.torch = torch
        self.device = torch.device(device)
        if cuda_graphs and self.device.type != "cuda":
            raise RuntimeUnavailable("cuda_graphs=True needs device='cuda'")
        self.model = model.to(self.device).eval()
        self.wrapper = GraphWrapper(self.model, contract).eval()
        self.compiled = compile
        # "reduce-overhead" is Inductor's CUDA-graph mode: on CPU there is nothing to replay.
        self.forward = torch.compile(self.wrapper, mode="reduce-overhead" if self.device.type == "cuda" else None) \
            if compile else self.wrapper
        self.cuda_graphs = cuda_graphs
        self._graphs: dict[tuple, tuple] = {}

    def _graph_call(self, args: list) -> tuple:
        torch = self.torch
        key = tuple((tuple(a.shape), str(a.dtype)) for a in args)
        if key not in self._graphs:
            if len(self._graphs) >= MAX_CUDA_GRAPHS:
                self._graphs.pop(next(iter(self._graphs)))
            static_in = [a.clone() for a in args]
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                self.wrapper(*static_in)  # warm-up outside the capture, as CUDA graphs require
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self.wrapper(*static_in)
            self._graphs[key] = (graph, static_in, static_out)
        graph, static_in, static_out = self._graphs[key]
        for s, a in zip(static_in, args):
            s.copy_(a)
        graph.replay()
        return static_out

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self.torch
        args = [torch.from_numpy(inputs[n]).to(self.device) for n in self.input_names]
        with torch.inference_mode():
            out = self._graph_call(args) if self.cuda_graphs else self.forward(*args)
        return self._named(out)

    def describe(self) -> dict:
        torch = self.torch
        device = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"
        return {"backend": self.name, "device": device, "torch": torch.__version__, "compile": self.compiled,
                "cuda_graphs": self.cuda_graphs, "threads": torch.get_num_threads()}


def _onnx_file(path: str | Path) -> Path:
    p = Path(path)
    if p.is_dir():
        p = p / MODEL_FILE
    if not p.is_file():
        raise FileNotFoundError(f"{path}: no ONNX file (an export folder holds {MODEL_FILE})")
    return p


class OnnxRuntime(Runtime):
    """ONNX Runtime: CUDA execution provider when available and asked for, else CPU.

    threads: intra-op threads (None: ONNX Runtime's default). spin: let idle worker threads spin
    (lower latency for one session alone; off by default, see the comment in ``__init__``).
    """

    name = "onnxruntime"

    def __init__(self, path: str | Path, providers: list[str] | None = None, threads: int | None = None,
                 disabled_optimizers: list[str] | None = None, spin: bool = False) -> None:
        ort = require("onnxruntime")
        file = _onnx_file(path)
        card = read_card(file)
        if disabled_optimizers is None:
            # ONNX Runtime 1.32's NCHWc layout pass crashes (segfault) on some FP16 graphs (the
            # FP16 ASF); FP16 on CPU is a parity/reference format, so losing that pass costs little.
            disabled_optimizers = list(FP16_DISABLED_OPTIMIZERS) if card.get("precision") == "fp16" else []
        available = ort.get_available_providers()
        if providers is None:
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        # Spinning worker threads keep a core busy for a while after each run: with the text, voice
        # and face sessions of one live pipeline on a 2-core machine they starve each other
        # (a 14 ms voice pass took 40 ms live). spin=True for a session that runs alone.
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        self.session = ort.InferenceSession(str(file), options, providers=providers,
                                            disabled_optimizers=disabled_optimizers or None)
        super().__init__(Contract.from_card(card), card)
        self.threads = threads
        self.ort = ort

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._named(self.session.run(self.outputs, inputs))

    def describe(self) -> dict:
        return {"backend": self.name, "device": self.session.get_providers()[0], "onnxruntime": self.ort.__version__,
                "precision": self.card.get("precision", ""), "threads": self.threads or "default"}


def fit_profile(profiles: list[dict[str, list[tuple]]], inputs: dict[str, np.ndarray]
                ) -> tuple[int, dict[str, np.ndarray]]:
    """(index of the first optimization profile whose ranges hold ``inputs``, inputs zero-padded
    up to that profile's minimum shapes). Padding only ever lengthens masked sequence axes.

    profiles: per profile, input name -> (min, opt, max) shapes (engine.json "profiles").
    """
    if not profiles:
        return 0, inputs
    for index, profile in enumerate(profiles):
        padded = {}
        for name, arr in inputs.items():
            lo, _, hi = profile[name]
            if any(a > h for a, h in zip(arr.shape, hi)) or arr.shape[0] < lo[0]:
                break
            padded[name] = np.pad(arr, [(0, max(0, low - a)) for a, low in zip(arr.shape, lo)])
        else:
            return index, padded
    ranges = [{k: (tuple(v[0]), tuple(v[2])) for k, v in p.items()} for p in profiles]
    raise ValueError(f"input shapes {({k: v.shape for k, v in inputs.items()})} fit no optimization profile of "
                     f"this engine {ranges}; rebuild with wider profiles (configs/export.yaml) or split the batch")


class _TensorRTBase(Runtime):
    """Shared engine runner: picks the optimization profile that holds the input shapes,
    zero-pads sequence axes up to the profile minimum (masked, so predictions do not change)."""

    library = ""

    def __init__(self, path: str | Path, device: int = 0) -> None:
        folder = Path(path) if Path(path).is_dir() else Path(path).parent
        engine_file = folder / ENGINE_FILE if Path(path).is_dir() else Path(path)
        if not engine_file.is_file():
            raise FileNotFoundError(f"{path}: no engine file ({ENGINE_FILE}); build one with mmer-export --format trt*/trtrtx*")
        self.record = json.loads((folder / ENGINE_CARD).read_text(encoding="utf-8")) if (folder / ENGINE_CARD).is_file() else {}
        card = read_card(folder)
        super().__init__(Contract.from_card(card), card)
        self.lib = require(self.library)
        self.torch = self._cuda_torch()
        self._check_device(device)
        self.folder = folder
        runtime = self.lib.Runtime(trt_logger(self.lib))
        self.engine = runtime.deserialize_cuda_engine(engine_file.read_bytes())
        if self.engine is None:
            raise RuntimeUnavailable(f"{self.library} could not load {engine_file} on this GPU "
                                     f"({self.describe()['device']}); rebuild it for this GPU/library version")
        self.context = self._create_context()
        self.stream = self.torch.cuda.Stream()
        self.profiles = [{k: [tuple(s) for s in v] for k, v in p.items()} for p in self.record.get("profiles", [])]

    def _cuda_torch(self) -> Any:
        try:
            import torch
        except ImportError:
            raise RuntimeUnavailable(f"{self.library} engines are run with CUDA buffers from torch; install torch with CUDA")
        if not torch.cuda.is_available():
            raise RuntimeUnavailable(f"{self.library} engines run only on an NVIDIA GPU with CUDA, and none is visible "
                                     f"here (torch.cuda.is_available() is False). Use the onnxruntime or torch runtime "
                                     f"on this machine.")
        return torch

    def _check_device(self, device: int) -> None:
        self.torch.cuda.set_device(device)

    def _create_context(self) -> Any:
        return self.engine.create_execution_context()

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self.torch
        index, inputs = fit_profile(self.profiles, inputs)
        ctx = self.context
        if ctx.active_optimization_profile != index:
            ctx.set_optimization_profile_async(index, self.stream.cuda_stream)
        keep = []
        for name, arr in inputs.items():
            t = torch.from_numpy(arr).cuda()
            keep.append(t)
            ctx.set_input_shape(name, tuple(arr.shape))
            ctx.set_tensor_address(name, t.data_ptr())
        results = {}
        for name in self.outputs:
            dtype = np.dtype(self.lib.nptype(self.engine.get_tensor_dtype(name)))
            t = torch.empty(tuple(ctx.get_tensor_shape(name)), dtype=getattr(torch, dtype.name), device="cuda")
            ctx.set_tensor_address(name, t.data_ptr())
            results[name] = t
        if not ctx.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError(f"{self.library} execution failed (see the TensorRT log)")
        self.stream.synchronize()
        return self._named([results[n] for n in self.outputs])

    def describe(self) -> dict:
        torch = getattr(self, "torch", None)
        device = torch.cuda.get_device_name(0) if torch is not None and torch.cuda.is_available() else "none"
        return {"backend": self.name, "device": device, self.library: self.lib.__version__,
                "precision": self.record.get("precision", "")}


class TensorRT(_TensorRTBase):
    """Full TensorRT engine (built on, and for, one GPU and TensorRT version)."""

    name = "tensorrt"
    library = TRT


class TensorRTRTX(_TensorRTBase):
    """TensorRT for RTX engine; JIT-compiled kernels are cached in ``runtime.cache`` beside it."""

    name = "tensorrt-rtx"
    library = RTX

    def _check_device(self, device: int) -> None:
        super()._check_device(device)
        major, minor = self.torch.cuda.get_device_capability(device)
        if f"{major}.{minor}" not in RTX_RUNS_ON:
            raise RuntimeUnavailable(
                f"TensorRT-RTX engines run only on compute capability {', '.join(RTX_RUNS_ON)} (A100, RTX 30xx/40xx/50xx); "
                f"this GPU ({self.torch.cuda.get_device_name(device)}) is {major}.{minor}. On it use full TensorRT "
                f"(--format trt-fp16, built on that GPU) or the onnxruntime/torch runtimes.")

    def _create_context(self) -> Any:
        if not hasattr(self.engine, "create_runtime_config"):
            return self.engine.create_execution_context()
        self.runtime_config = self.engine.create_runtime_config()
        self.runtime_cache = self.runtime_config.create_runtime_cache()
        cache_file = self.folder / RUNTIME_CACHE_FILE
        if cache_file.is_file():
            self.runtime_cache.deserialize(cache_file.read_bytes())
        self.runtime_config.set_runtime_cache(self.runtime_cache)
        return self.engine.create_execution_context(self.runtime_config)

    def save_runtime_cache(self) -> Path:
        """Write the JIT kernel cache beside the engine, so the next load skips compilation."""
        path = self.folder / RUNTIME_CACHE_FILE
        path.write_bytes(memoryview(self.runtime_cache.serialize()))
        return path


RUNTIMES: Registry[type] = Registry("runtime")
for _runtime in (TorchRuntime, OnnxRuntime, TensorRT, TensorRTRTX):
    RUNTIMES.register(_runtime.name)(_runtime)


def load_runtime(name: str, path: Any, **options: Any) -> Runtime:
    """Open ``path`` with the runtime called ``name`` (``torch``, ``onnxruntime``, ``tensorrt``, ``tensorrt-rtx``).

    path: torch: a zoo model, checkpoint folder or embedded default name; the others: an export
    folder written by ``mmer-export`` (or the .onnx / .engine file in it). ``options`` go to the
    runtime class (torch: device, compile, cuda_graphs; onnxruntime: providers, threads; TensorRT: device).
    An unknown ``name`` raises ``KeyError`` with the closest registered name.
    """
    return RUNTIMES.get(name)(path, **options)
