"""torch -> ONNX for every model of the zoo, with the metadata that makes the folder self-describing.

Each model's graph takes the same named inputs as its ``forward`` and returns three outputs:
``logits`` (B, C), ``probs`` (B, C) and the model's distillation/fusion feature (B, D), named
after the modality (``text``, ``audio``, ``visual``, ``fused``). Batch and sequence/time axes are
dynamic; the video frame count is fixed (8). The exported folder holds::

    model.onnx        the graph (ONNX metadata_props carry the model card too)
    model.json        model card: registry name, dims, labels, inputs/outputs, precision, provenance
    tokenizer/        teacher only: the tokenizer with its speaker tokens (rebuild the prompt from it)
"""

from __future__ import annotations

import datetime as _dt
import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import mmer
from mmer.extras import require
from mmer.labels import get_label_set

MODEL_FILE = "model.onnx"
CARD_FILE = "model.json"
TOKENIZER_DIR = "tokenizer"
CARD_FORMAT = "mmer-export"
CARD_VERSION = 1
OUTPUTS = ("logits", "probs")
SCORE_OUTPUTS = ("score",)    # sentiment regression models: one score in [-3, 3] per row
BATCH = "batch"
MSA_MODELS = ("derl", "mmiln", "cenet", "cmath")
FEATURE_OF = {"teacher": "text", "audio_student": "audio", "visual_student": "visual", "asf": "fused",
              **{m: "fused" for m in MSA_MODELS}}


class ExportError(RuntimeError):
    """A model that cannot be exported as asked; the message says why and what to do."""


@dataclass(frozen=True)
class TensorSpec:
    """One graph input: name, numpy dtype, shape with symbolic names for dynamic axes."""

    name: str
    dtype: str
    shape: tuple[str | int, ...]


@dataclass(frozen=True)
class ModelSpec:
    """What a zoo model's exported graph takes and gives."""

    model: str
    inputs: tuple[TensorSpec, ...]
    feature: str
    heads: tuple[str, ...] = OUTPUTS     # ("logits", "probs"), or ("score",) for sentiment regression

    @property
    def outputs(self) -> tuple[str, ...]:
        return self.heads + (self.feature,)

    def input(self, name: str) -> TensorSpec:
        return next(s for s in self.inputs if s.name == name)


def model_spec(model: nn.Module) -> ModelSpec:
    """Inputs and feature of ``model`` (a zoo model, by its ``registry_name`` and dims)."""
    name = getattr(model, "registry_name", "")
    d = getattr(model, "dims", None)
    if name == "teacher":
        ins = (TensorSpec("input_ids", "int64", (BATCH, "tokens")), TensorSpec("attention_mask", "int64", (BATCH, "tokens")))
    elif name == "audio_student":
        ins = (TensorSpec("waveform", "float32", (BATCH, "samples")),
               TensorSpec("attention_mask", "int64", (BATCH, "samples")))
    elif name == "visual_student":
        channels = 1 if d.family == "edge" else 3  # edge takes the face path's gray crops
        ins = (TensorSpec("frames", "float32", (BATCH, d.num_frames, channels, d.image_size, d.image_size)),
               TensorSpec("frame_mask", "bool", (BATCH, d.num_frames)))
    elif name == "asf":
        ins = tuple(TensorSpec(m, "float32", (BATCH, d.kd_dim)) for m in ("text", "audio", "visual")) + \
              tuple(TensorSpec(f"{m}_present", "bool", (BATCH,)) for m in ("audio", "visual"))
    elif name in MSA_MODELS:
        text = TensorSpec("text", "int64", (BATCH, "text_steps")) if model.text_input == "ids" else \
            TensorSpec("text", "float32", (BATCH, "text_steps", d.text_dim))
        ins = (text, TensorSpec("text_mask", "bool", (BATCH, "text_steps")),
               TensorSpec("audio", "float32", (BATCH, "audio_steps", d.audio_dim)),
               TensorSpec("audio_lengths", "int64", (BATCH,)),
               TensorSpec("vision", "float32", (BATCH, "vision_steps", d.vision_dim)),
               TensorSpec("vision_lengths", "int64", (BATCH,)))
        heads = SCORE_OUTPUTS if model.task == "regression" else OUTPUTS
        return ModelSpec(name, ins, FEATURE_OF[name], heads)
    else:
        raise ExportError(f"no export spec for model {name!r} ({type(model).__name__}); exportable: {sorted(FEATURE_OF)}")
    return ModelSpec(name, ins, FEATURE_OF[name])


class GraphWrapper(nn.Module):
    """Positional tensors in, (logits, probs, feature) out: the exported graph's signature.

    The torch runtime calls this same wrapper, so torch and every exported backend agree on
    inputs and outputs by construction.
    """

    def __init__(self, model: nn.Module, spec: ModelSpec) -> None:
        super().__init__()
        self.model = model
        self.names = [s.name for s in spec.inputs]
        self.feature = spec.feature
        self.heads = spec.heads

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(**dict(zip(self.names, inputs)))
        if hasattr(out, "prediction"):   # a sentiment model (mmer.outputs.MsaOutput)
            if self.heads == SCORE_OUTPUTS:
                return out.prediction, out.features[self.feature]
            return out.prediction, torch.softmax(out.prediction.float(), dim=-1), out.features[self.feature]
        return out.logits, out.probs, out.features[self.feature]


def padding_exact(model: nn.Module) -> bool:
    """False for hf audio encoders whose torch forward runs one clip at a time (see audio_student):
    their graph is exported on the batched path and is exact only for unpadded clips."""
    return not (getattr(model, "registry_name", "") == "audio_student" and model.dims.family == "hf"
                and not getattr(model, "padding_exact", True))


def example_batch(model: nn.Module, samples: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Two samples padded into a batch (equal-length clips for the audio student, so tracing
    follows the batched path every audio family has)."""
    from mmer.export.samples import collate

    pair = samples[:2]
    if getattr(model, "registry_name", "") == "audio_student":
        n = min(s["waveform"].shape[1] for s in pair)
        pair = [{k: v[:, :n] for k, v in s.items()} for s in pair]
    return collate(pair)


def _sort_symbolic(g: Any, self: Any, *args: Any) -> Any:
    """``aten::sort`` (also the ``stable=True`` overload the legacy exporter cannot read) as ONNX TopK.

    ONNX TopK breaks ties by the lower index, so it is a stable sort. Values go through float32
    because TopK has no kernel for small integer types (the visual student sorts an int8 mask).
    """
    from torch.onnx import symbolic_helper as sh
    from torch.onnx._internal.torchscript_exporter import _type_utils

    dim, descending = args[-2:]
    dim = sh._get_const(dim, "i", "dim")
    descending = sh._maybe_get_const(descending, "b")
    scalar = _type_utils.JitScalarType.from_value(self)
    values = g.op("Cast", self, to_i=_type_utils.JitScalarType.FLOAT.onnx_type())
    size = g.op("Unsqueeze", sh._size_helper(g, self, g.op("Constant", value_t=torch.tensor(dim))),
                g.op("Constant", value_t=torch.tensor([0])))
    top, indices = g.op("TopK", values, size, axis_i=dim, largest_i=int(bool(descending)), sorted_i=1, outputs=2)
    return g.op("Cast", top, to_i=scalar.onnx_type()), indices


def torch2onnx(model: nn.Module, folder: str | Path, example: dict[str, np.ndarray], opset: int = 17) -> Path:
    """Export ``model`` (eval mode) to ``folder/model.onnx`` with dynamic batch/sequence axes.

    example: one batch of named numpy inputs (see :func:`example_batch`). Runs the ONNX checker.
    """
    onnx = require("onnx")
    if opset < 17:
        raise ExportError(f"opset {opset} is too old: LayerNormalization needs opset >= 17")
    spec = model_spec(model)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / MODEL_FILE
    wrapper = GraphWrapper(model, spec).eval()
    args = tuple(torch.from_numpy(np.asarray(example[s.name])) for s in spec.inputs)
    # The sentiment models read MMSA's fixed-length padded sequences, and nn.MultiheadAttention's
    # legacy trace bakes the sequence lengths into its reshapes: only their batch axis is dynamic.
    dynamic = (lambda a: a == BATCH) if spec.model in MSA_MODELS else (lambda a: isinstance(a, str))
    axes = {s.name: {i: a for i, a in enumerate(s.shape) if dynamic(a)} for s in spec.inputs}
    axes.update({o: {0: BATCH} for o in spec.outputs})
    torch.onnx.register_custom_op_symbolic("aten::sort", _sort_symbolic, opset)
    # nn.MultiheadAttention's inference fast path is one fused kernel with no ONNX form; the
    # standard path it stands in for computes the same thing.
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # The tracer warns about every Python-level shape read in transformers' mask code;
            # those branches are shape-generic, and parity on other shapes proves the graph.
            warnings.simplefilter("ignore")
            torch.onnx.export(wrapper, args, str(path), dynamo=False, opset_version=opset,
                              input_names=[s.name for s in spec.inputs], output_names=list(spec.outputs),
                              dynamic_axes=axes, do_constant_folding=True)
    finally:
        torch.onnx.unregister_custom_op_symbolic("aten::sort", opset)
        torch.backends.mha.set_fastpath_enabled(fastpath)
    model.eval()  # the exporter restores the training flag of the whole tree; be explicit
    onnx.checker.check_model(str(path))
    return path


def _versions() -> dict[str, str]:
    out = {"mmer": mmer.__version__, "torch": torch.__version__}
    for mod in ("onnx", "onnxruntime", "transformers"):
        try:
            out[mod] = __import__(mod).__version__
        except ImportError:
            pass
    return out


def model_card(model: nn.Module, export_format: str, precision: str, source: str = "", extra: dict | None = None) -> dict:
    """The model.json dict of an export of ``model``."""
    spec = model_spec(model)
    meta = getattr(model, "checkpoint_meta", {}) or {}
    card: dict[str, Any] = {
        "format": CARD_FORMAT, "format_version": CARD_VERSION,
        "model": spec.model, "export_format": export_format, "precision": precision,
        "dims": model.dims_dict(), "label_set": model.label_set, "labels": list(get_label_set(model.label_set).labels),
        "inputs": [asdict(s) for s in spec.inputs], "outputs": list(spec.outputs), "feature": spec.feature,
        "padding_exact": padding_exact(model),
        "files": {"onnx": MODEL_FILE},
        "provenance": {"source": source, "checkpoint": meta.get("provenance", {}),
                       "exported_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                       "versions": _versions()},
    }
    if spec.model == "teacher":
        card["files"]["tokenizer"] = TOKENIZER_DIR
        p = model.prompt
        card["prompt"] = {"num_speaker_tokens": p.num_speaker_tokens, "max_tokens": p.max_tokens,
                          "prompt_template": p.prompt_template, "mask_token_id": model.mask_token_id}
    if extra:
        card.update(extra)
    return card


def write_card(folder: str | Path, card: dict, onnx_path: Path | None = None) -> Path:
    """Write ``model.json`` and copy the card into the ONNX file's metadata_props."""
    folder = Path(folder)
    (folder / CARD_FILE).write_text(json.dumps(card, indent=2), encoding="utf-8")
    if onnx_path is not None and onnx_path.is_file():
        onnx = require("onnx")
        proto = onnx.load(str(onnx_path))
        props = {"mmer.model": card["model"], "mmer.label_set": card["label_set"],
                 "mmer.labels": ",".join(card["labels"]), "mmer.feature": card["feature"],
                 "mmer.export_format": card["export_format"], "mmer.precision": card["precision"],
                 "mmer.card": json.dumps(card, separators=(",", ":"))}
        del proto.metadata_props[:]
        for key, value in props.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        proto.producer_name = "mmer"
        onnx.save(proto, str(onnx_path))
    return folder / CARD_FILE


def save_tokenizer(model: nn.Module, folder: str | Path) -> None:
    """Teacher: copy the tokenizer (speaker tokens included) next to the graph."""
    if getattr(model, "registry_name", "") == "teacher":
        model.tokenizer.save_pretrained(str(Path(folder) / TOKENIZER_DIR))


def read_card(folder: str | Path) -> dict:
    """The model.json of an export folder (or of the folder holding an .onnx/.engine file)."""
    folder = Path(folder)
    if folder.is_file():
        folder = folder.parent
    path = folder / CARD_FILE
    if not path.is_file():
        raise ExportError(f"{folder}: no {CARD_FILE}; export folders are written by mmer-export")
    return json.loads(path.read_text(encoding="utf-8"))
