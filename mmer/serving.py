"""Serve any artefact behind one runtime: a checkpoint, an embedded default, or an export folder.

    from mmer.serving import serve
    text = serve("default-text", runtime="onnxruntime", precision="int8")   # built once, cached
    text = serve("exports/teacher-int8")                                   # what mmer-export wrote
    out = text.predict(turns)                   # {"logits", "probs", "text", "feature"} numpy, batch of one
    voice = serve("default-voice", runtime="torch")
    voice.predict(waveform, speaker="user")

A :class:`Served` model is the model's processor (raw input -> graph inputs, :mod:`mmer.contract`)
in front of a :class:`mmer.runtime.Runtime`, with the label set and calibration that came with
the artefact. Every backend gets the processor's inputs, so they are identical everywhere.

Runtime choice (``runtime=``): ``torch``, ``onnxruntime``, ``tensorrt``, ``tensorrt-rtx``, or
``auto``: an export folder is served by the runtime its format was made for (model.json
``runtime``); a checkpoint by ``onnxruntime`` on the CPU (:data:`AUTO_CPU_RUNTIME`) and by torch on
a GPU. A checkpoint served by onnxruntime is exported once at ``precision`` into the user cache
(``$MMER_CACHE``, default ``~/.cache/mmer``), keyed by the checkpoint's content, with the export's
parity gates; later starts load the cached graph. TensorRT runtimes need an export folder
(engines are built for one GPU: ``mmer-export --format trt-fp16`` on that machine).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmer.calibration import Calibration
from mmer.contract import Contract, Processor
from mmer.errors import UsageError
from mmer.labels import get_label_set
from mmer.runtime import RUNTIMES, Runtime, is_export_folder, load_runtime, read_card

log = logging.getLogger(__name__)

AUTO = "auto"
AUTO_CPU_RUNTIME = "onnxruntime"
PRECISION_FORMATS = {"fp32": "onnx", "fp16": "onnx-fp16", "int8": "onnx-int8", "int8-static": "onnx-int8-static"}
CACHE_ENV = "MMER_CACHE"
HASH_CHUNK = 1 << 20


class ServeError(UsageError):
    """An artefact that cannot be served as asked; the message names it and the fix (a ValueError too)."""


def cache_dir() -> Path:
    """Where built artefacts are kept: ``$MMER_CACHE``, else ``~/.cache/mmer``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "mmer")


@dataclass
class Served:
    """A model behind a runtime; see the module docstring."""

    source: str
    runtime: Runtime
    processor: Processor
    contract: Contract
    dims: Any
    label_set: str
    calibration: Calibration
    model: Any = None                  # the torch model, when the torch runtime serves it
    card: dict = field(default_factory=dict)
    export_folder: Path | None = None

    @property
    def name(self) -> str:
        return self.contract.model

    @property
    def modality(self) -> str:
        return self.contract.modality

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(get_label_set(self.label_set).labels)

    @property
    def runtime_name(self) -> str:
        return self.runtime.name

    @property
    def precision(self) -> str:
        return self.card.get("precision", "fp32") if self.export_folder else "fp32"

    @property
    def provenance(self) -> dict:
        """How the model was made (the checkpoint's record; an export carries it in model.json)."""
        if self.model is not None:
            return (getattr(self.model, "checkpoint_meta", None) or {}).get("provenance") or {}
        return self.card.get("provenance", {}).get("checkpoint") or {}

    def predict(self, raw: Any, **context: Any) -> dict[str, np.ndarray]:
        """Batch-of-one outputs for one raw input (turns, a waveform, face crops, features).

        context: what the processor reads besides the input (``speaker`` for the voice model;
        ``hidden``: the whisper encoder's states of this waveform from speech-to-text, reused
        by the torch runtime instead of a second encoder pass).
        """
        if self.model is not None and context.get("hidden") is not None:
            return self.model.predict(raw, **context)
        context.pop("hidden", None)
        return self.commit(self.infer(raw, **context), **context)

    def infer(self, raw: Any, **context: Any) -> dict[str, np.ndarray]:
        """The outputs for ``raw`` without touching the processor's state (a provisional run:
        :meth:`commit` it once it stands, e.g. the voice model begun at a pause in speech)."""
        return self.runtime(**self.processor.inputs(raw, **context))

    def rehead(self, result: dict[str, np.ndarray], speaker: str = "") -> dict[str, np.ndarray] | None:
        """``result`` of a speaker-stateful model re-read for ``speaker`` (its pooled feature
        through the head only: the export's speaker head, or the torch model's); None when the
        model has no separate head. A model without speaker state gives the same result for anyone."""
        if not self.contract.speaker_state:
            return result
        if self.model is not None:
            return {**result, **self.model.outputs_from_pooled(result["audio_pooled"], speaker)}
        rehead = getattr(self.processor, "rehead", None)
        return rehead(result, speaker=speaker) if rehead is not None else None

    def commit(self, result: dict[str, np.ndarray], **context: Any) -> dict[str, np.ndarray]:
        """Let the processor read ``result`` back (extend the speaker's statistics); returns it."""
        context.pop("hidden", None)
        return self.processor.outputs(result, **context)

    def reset(self) -> None:
        """Forget the processor's state (per-speaker statistics): a new conversation."""
        self.processor.reset()

    def describe(self) -> str:
        """``"onnxruntime int8 (CPU)"``: how this model is served, for start-up lines and tables."""
        info = self.runtime.describe()
        device = info.get("device", "")
        device = {"CPUExecutionProvider": "CPU", "CUDAExecutionProvider": "CUDA"}.get(device, device)
        return f"{self.runtime.name} {self.precision}" + (f" ({device})" if device else "")


def _checkpoint_key(folder: Path) -> str:
    """Content hash of a checkpoint folder's weights and metadata (the cache key of its exports)."""
    import mmer
    from mmer.checkpoint import META, WEIGHTS

    h = hashlib.sha256(mmer.__version__.encode())
    for name in (META, WEIGHTS):
        with open(folder / name, "rb") as f:
            for chunk in iter(lambda: f.read(HASH_CHUNK), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def cached_export(spec: str | Path, precision: str = "fp32", data_root: Any = None, device: str = "cpu") -> Path:
    """The export folder of checkpoint ``spec`` at ``precision`` (``fp32``, ``fp16``, ``int8``,
    ``int8-static``), built into :func:`cache_dir` on first use (parity gates included; a failed
    gate is an error) and reused while the checkpoint's content is unchanged."""
    from mmer.checkpoint import resolve
    from mmer.export.onnx_export import CARD_VERSION

    if precision not in PRECISION_FORMATS:
        raise ServeError(f"precision {precision!r} is not one of {sorted(PRECISION_FORMATS)}")
    folder = resolve(spec)
    fmt = PRECISION_FORMATS[precision]
    target = cache_dir() / "exports" / f"{folder.name}-{fmt}-{_checkpoint_key(folder)}"
    if is_export_folder(target) and read_card(target).get("format_version") == CARD_VERSION:
        return target
    if target.exists():          # written by another mmer version: build it again
        shutil.rmtree(target, ignore_errors=True)
    import mmer
    from mmer.export import export

    target.parent.mkdir(parents=True, exist_ok=True)
    print(f"mmer: building the {fmt} graph of {spec} once for ONNX Runtime (cached in {target}) ...",
          file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    model = mmer.load(folder, device=device)
    work = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        result = export(model, fmt, work, data_root=data_root, source=str(spec))
        if result.passed is False:
            gates = ", ".join(f"{g['gate']} {g['value']} (limit {g['threshold']})" for g in result.failed_gates())
            raise ServeError(f"the {fmt} export of {spec} failed its parity gates ({gates}); serve it with "
                             f"runtime='torch' or another precision")
        try:
            work.rename(target)
        except OSError:          # another process finished the same build first
            shutil.rmtree(work, ignore_errors=True)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    print(f"mmer: {fmt} graph of {spec} ready in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    return target


def serve(spec: Any, runtime: str = AUTO, device: str = "cpu", precision: str | None = None,
          threads: int | None = None, data_root: Any = None, **options: Any) -> Served:
    """Serve ``spec`` (a zoo model, a checkpoint folder, an embedded default's name, or an export
    folder) with the runtime called ``runtime``; see the module docstring.

    precision: for a checkpoint served by onnxruntime, the graph to build (default ``fp32``).
    threads: ONNX Runtime intra-op threads (None: its default). options: more runtime options.
    """
    import torch

    import mmer.models  # noqa: F401  (fills the registry)
    from mmer.registry import MODELS

    if runtime != AUTO:
        RUNTIMES.get(runtime)   # an unknown name fails here, with the closest registered one
    if isinstance(spec, torch.nn.Module):
        if runtime not in (AUTO, "torch"):
            raise ServeError(f"a model object is served by the torch runtime; export it (mmer.export.export) "
                             f"to serve it with {runtime}")
        return _serve_torch(spec, "<model>", device, **options)
    path = Path(str(spec))
    if is_export_folder(path):
        card = read_card(path)
        name = runtime if runtime != AUTO else card.get("runtime", "onnxruntime")
        if name == "torch":
            raise ServeError(f"{path} is an export folder; the torch runtime serves checkpoints "
                             f"(give the checkpoint it was exported from, or runtime='onnxruntime')")
        opts = dict(options)
        if name == "onnxruntime" and threads:
            opts["threads"] = threads
        rt = load_runtime(name, path, **opts)
        cls = MODELS.get(card["model"])
        dims = cls.dims_from_dict(card["dims"], source=str(path / "model.json"))
        return Served(str(spec), rt, cls.processor_for(dims, path, card), rt.contract, dims, card["label_set"],
                      Calibration(**card.get("calibration", {})), card=card, export_folder=path)
    if runtime in ("tensorrt", "tensorrt-rtx"):
        raise ServeError(f"{spec}: {runtime} serves engines, which are built for one GPU: export one on the target "
                         f"machine (mmer-export {spec} --format {'trt' if runtime == 'tensorrt' else 'trtrtx'}-fp16 "
                         f"--out DIR) and serve DIR")
    name = runtime
    if name == AUTO:
        name = AUTO_CPU_RUNTIME if str(device) == "cpu" else "torch"
    if name == "torch":
        import mmer
        return _serve_torch(mmer.load(spec, device=device), str(spec), device, **options)
    folder = cached_export(spec, precision or "fp32", data_root, device)
    served = serve(folder, name, device, threads=threads, **options)
    served.source = str(spec)
    return served


def _serve_torch(model: Any, source: str, device: str, **options: Any) -> Served:
    from mmer.runtime import TorchRuntime

    rt = TorchRuntime(model, device=device, **options)
    return Served(source, rt, model.processor(), model.contract(), model.dims, model.label_set,
                  Calibration.of(model), model=model, card={})
