"""What a model takes and gives, declared by the model itself (STYLE.md habit 15).

Every exportable model of the zoo answers ``model.contract()`` with a :class:`Contract`: its
modality, the named inputs of its graph (dtype, shape with symbolic names for dynamic axes),
its heads and feature, and the facts the exporter, the engine builder, parity, benchmarks and
the live predictor need (which axes are dynamic, the sequence axis an engine profile covers,
whether padded batches are exact). Nothing outside the model's own file switches on its
registry name: ``model.example_inputs(n, seed)`` makes real inputs, ``model.processor()`` turns
raw input (dialogue turns, a waveform, face crops, features) into graph inputs, and
:class:`GraphWrapper` is the one signature every backend runs::

    contract = model.contract()
    inputs = model.processor().inputs(turns)          # {"input_ids": (1, L), "attention_mask": (1, L)}
    logits, probs, feature = GraphWrapper(model)(*[torch.from_numpy(inputs[s.name]) for s in contract.inputs])
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from mmer.errors import UsageError

BATCH = "batch"
OUTPUTS = ("logits", "probs")
SCORE_OUTPUTS = ("score",)    # sentiment regression models: one score in [-3, 3] per row
MODALITIES = ("text", "audio", "visual", "fusion", "multimodal")


class ContractError(UsageError):
    """A model without a contract, or inputs that do not match it; the message says which (a ValueError too)."""


@dataclass(frozen=True)
class TensorSpec:
    """One graph input: name, numpy dtype, shape with symbolic names for dynamic axes."""

    name: str
    dtype: str
    shape: tuple[str | int, ...]


@dataclass(frozen=True)
class SequenceAxis:
    """The variable-length axis an engine optimization profile covers.

    profile: the key of configs/export.yaml ``profiles`` holding its buckets (``text_tokens``:
    token counts; ``audio``: seconds). per_second: samples per second when buckets are in
    seconds (0: buckets are counts). cap: the longest input the model reads (it cuts the rest).
    """

    profile: str
    cap: int
    per_second: int = 0


@dataclass(frozen=True)
class Contract:
    """What a model's graph takes and gives (see the module docstring).

    extra_outputs: graph outputs after the feature that a processor reads back (the pooled
    voice feature that updates a speaker's running statistics). dynamic: ``"all"`` (every
    symbolic axis is dynamic in the exported graph) or ``"batch"`` (only the batch axis; the
    sentiment models' traced attention bakes their fixed MMSA lengths in). engine_note: why no
    TensorRT engine can be built, or "" when one can. speaker_state: some inputs carry the
    speaker's running statistics, so utterances must be run in order, speaker by speaker.
    """

    model: str
    modality: str
    inputs: tuple[TensorSpec, ...]
    feature: str
    heads: tuple[str, ...] = OUTPUTS
    extra_outputs: tuple[str, ...] = ()
    dynamic: str = "all"
    padding_exact: bool = True
    sequence: SequenceAxis | None = None
    engine_note: str = ""
    speaker_state: bool = False

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise ContractError(f"{self.model}: modality {self.modality!r} is not one of {list(MODALITIES)}")
        if self.dynamic not in ("all", "batch"):
            raise ContractError(f"{self.model}: dynamic must be 'all' or 'batch', got {self.dynamic!r}")

    @property
    def outputs(self) -> tuple[str, ...]:
        return self.heads + (self.feature,) + self.extra_outputs

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.inputs)

    def input(self, name: str) -> TensorSpec:
        return next(s for s in self.inputs if s.name == name)

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """torch.onnx ``dynamic_axes`` of this graph's inputs and outputs."""
        keep = (lambda a: a == BATCH) if self.dynamic == "batch" else (lambda a: isinstance(a, str))
        axes = {s.name: {i: a for i, a in enumerate(s.shape) if keep(a)} for s in self.inputs}
        axes.update({o: {0: BATCH} for o in self.outputs})
        return axes

    def to_card(self) -> dict:
        """The contract's part of an export's model.json."""
        return {"modality": self.modality, "inputs": [{"name": s.name, "dtype": s.dtype, "shape": list(s.shape)}
                                                      for s in self.inputs],
                "outputs": list(self.outputs), "heads": list(self.heads), "feature": self.feature,
                "extra_outputs": list(self.extra_outputs), "padding_exact": self.padding_exact,
                "speaker_state": self.speaker_state}

    @classmethod
    def from_card(cls, card: Mapping[str, Any]) -> "Contract":
        """The contract recorded in an export's model.json (cards of older exports included)."""
        feature = card["feature"]
        outputs = list(card["outputs"])
        extra = tuple(card.get("extra_outputs", ()))
        heads = tuple(card.get("heads", outputs[:outputs.index(feature)]))
        return cls(model=card["model"], modality=card.get("modality", _MODALITY_OF_FEATURE.get(feature, "fusion")),
                   inputs=tuple(TensorSpec(s["name"], s["dtype"], tuple(s["shape"])) for s in card["inputs"]),
                   feature=feature, heads=heads, extra_outputs=extra, padding_exact=card.get("padding_exact", True),
                   speaker_state=card.get("speaker_state", False))

    def check(self, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """``inputs`` as contiguous numpy arrays of the declared dtypes; a clear error when names differ."""
        missing = [n for n in self.input_names if n not in inputs]
        unknown = [n for n in inputs if n not in self.input_names]
        if missing or unknown:
            raise ContractError(f"{self.model} takes inputs {list(self.input_names)}; missing {missing}, "
                                f"unknown {unknown}")
        return {s.name: np.ascontiguousarray(np.asarray(inputs[s.name]), dtype=s.dtype) for s in self.inputs}


_MODALITY_OF_FEATURE = {"text": "text", "audio": "audio", "visual": "visual", "fused": "fusion"}


class Processor(ABC):
    """Raw input -> the graph's named numpy inputs (a batch of one), and back.

    One processor serves every backend, so torch, ONNX Runtime and TensorRT see identical
    inputs. ``inputs(raw, **context)`` builds them; ``outputs(result, **context)`` reads the
    graph's outputs back (stateful processors update their state there: the voice model's
    per-speaker statistics) and returns them.
    """

    @abstractmethod
    def inputs(self, raw: Any, **context: Any) -> dict[str, np.ndarray]:
        """The graph's named inputs (a batch of one) for ``raw``."""

    def outputs(self, result: dict[str, np.ndarray], **context: Any) -> dict[str, np.ndarray]:
        return result

    def reset(self) -> None:
        """Forget any state (a new conversation)."""


def collate(samples: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Stack batch-1 samples into one batch, right-padding every axis with zeros (masks too)."""
    out = {}
    for name in samples[0]:
        arrays = [s[name] for s in samples]
        shape = [len(arrays)] + [max(a.shape[d] for a in arrays) for d in range(1, arrays[0].ndim)]
        batch = np.zeros(shape, dtype=arrays[0].dtype)
        for i, a in enumerate(arrays):
            batch[(i,) + tuple(slice(0, s) for s in a.shape[1:])] = a[0]
        out[name] = batch
    return out


class GraphWrapper(nn.Module):
    """Positional tensors in, the contract's outputs out: the exported graph's signature.

    The torch runtime calls this same wrapper, so torch and every exported backend agree on
    inputs and outputs by construction. It calls ``model.graph_outputs(**named_inputs)``.
    """

    def __init__(self, model: nn.Module, contract: Contract | None = None) -> None:
        super().__init__()
        self.model = model
        self.contract = contract or model.contract()
        self.names = list(self.contract.input_names)

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.model.graph_outputs(**dict(zip(self.names, inputs))))
