"""torch -> ONNX for every model of the zoo, with the metadata that makes the folder self-describing.

Each graph takes the named inputs of the model's contract (:mod:`mmer.contract`) and returns
its outputs: ``logits`` (B, C), ``probs`` (B, C), the distillation/fusion feature (B, D) named
after the modality (``text``, ``audio``, ``visual``, ``fused``), and any extra outputs. Which
axes are dynamic is the contract's to say. The exported folder holds::

    model.onnx        the graph (ONNX metadata_props carry the model card too)
    model.json        model card: registry name, contract, dims, labels, calibration, precision,
                      provenance, and what the model's processor needs (``export_info``)
    <assets>          what ``model.save_export_assets`` wrote (the teacher: tokenizer/ with its speaker tokens)
"""

from __future__ import annotations

import datetime as _dt
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import mmer
from mmer.contract import Contract, ContractError, GraphWrapper
from mmer.errors import MmerError
from mmer.extras import require
from mmer.labels import get_label_set
from mmer.runtime import CARD_FILE, CARD_FORMAT, MODEL_FILE, read_card  # noqa: F401  (read_card re-exported)

TOKENIZER_DIR = "tokenizer"
CARD_VERSION = 3     # 2: the card carries the model's contract and export_info; 3: speaker-stateful
                     # models also export their speaker head (files["speaker_head"])


class ExportError(MmerError, RuntimeError):
    """A model that cannot be exported as asked; the message says why and what to do (a RuntimeError too)."""

    kind = "usage"


def contract_of(model: nn.Module) -> Contract:
    """``model.contract()``, or an :class:`ExportError` naming what is missing."""
    if not callable(getattr(model, "contract", None)):
        raise ExportError(f"{type(model).__name__} is not a mmer model: only models that declare a contract "
                          f"(mmer.models.base.MmerModel.build_contract) can be exported")
    try:
        return model.contract()
    except ContractError as e:
        raise ExportError(f"{type(model).__name__} cannot be exported: {e}") from None


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

    example: one batch of named numpy inputs (``model.example_batch``). Runs the ONNX checker.
    """
    onnx = require("onnx")
    if opset < 17:
        raise ExportError(f"opset {opset} is too old: LayerNormalization needs opset >= 17")
    contract = contract_of(model)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / MODEL_FILE
    wrapper = GraphWrapper(model, contract).eval()
    args = tuple(torch.from_numpy(np.asarray(example[s.name])) for s in contract.inputs)
    axes = contract.dynamic_axes()
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
                              input_names=list(contract.input_names), output_names=list(contract.outputs),
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


def model_card(model: nn.Module, export_format: str, precision: str, source: str = "", extra: dict | None = None,
               files: dict | None = None) -> dict:
    """The model.json dict of an export of ``model``: its contract, dims, labels, calibration,
    what its processor needs (``model.export_info()``), precision and provenance."""
    from mmer.calibration import Calibration

    contract = contract_of(model)
    meta = getattr(model, "checkpoint_meta", {}) or {}
    card: dict[str, Any] = {
        "format": CARD_FORMAT, "format_version": CARD_VERSION,
        "model": contract.model, "export_format": export_format, "precision": precision,
        "dims": model.dims_dict(), "label_set": model.label_set, "labels": list(get_label_set(model.label_set).labels),
        **contract.to_card(),
        "calibration": Calibration.of(model).to_dict(),
        "files": {"onnx": MODEL_FILE, **(files or {})},
        "provenance": {"source": source, "checkpoint": meta.get("provenance", {}),
                       "exported_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                       "versions": _versions()},
        **model.export_info(),
    }
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
