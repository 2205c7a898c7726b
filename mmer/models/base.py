"""What every model of the zoo shares: frozen dims saved inside the checkpoint, a registry
name, hooks for the files a checkpoint needs besides its weights, and the contract
(:mod:`mmer.contract`) through which exporters, runtimes, benchmarks and the live predictor
use it without knowing which model it is."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from mmer.config import from_dict, to_dict
from mmer.contract import SCORE_OUTPUTS, Contract, ContractError, Processor, collate
from mmer.errors import UsageError

DEFAULT_BATCH_SIZE = 8  # items per padded forward pass of MmerModel.recognize


class MmerModel(nn.Module):
    """Base class of the zoo.

    Subclasses set ``registry_name`` and ``Dims`` (a frozen dataclass holding every size the
    architecture needs, the label set included), take ``dims`` as their first constructor
    argument, and return :class:`mmer.outputs.EmotionOutput` from ``forward``.
    """

    registry_name: ClassVar[str] = ""
    Dims: ClassVar[type] = object
    modality: ClassVar[str] = ""

    # Keyword options only the labelled route (:meth:`recognize`) takes; passing one routes a
    # call there even with tensors, e.g. ``voice(torch_batch, sample_rate_hz=16_000)``.
    recognize_options: ClassVar[frozenset[str]] = frozenset({"batch_size"})

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Tensors alone: ``forward``, as any torch module (trainers, exporters, tracing).
        Raw input (a string, a list, a numpy array), or any of ``recognize_options``:
        :meth:`recognize`, labelled results in the transformers habit."""
        raw = (args and not isinstance(args[0], torch.Tensor)) or not self.recognize_options.isdisjoint(kwargs)
        if raw and type(self).recognize is not MmerModel.recognize:
            return self.recognize(*args, **kwargs)
        return super().__call__(*args, **kwargs)

    def recognize(self, inputs: Any, batch_size: int = DEFAULT_BATCH_SIZE) -> Any:
        """Raw input -> one ``{"label", "score", "scores"}`` dict per item, a single item -> one
        dict (models that take raw input override this; see :func:`mmer.outputs.labelled`)."""
        raise ContractError(f"{type(self).__name__} takes tensors only; call its processor's inputs() first")

    def __init__(self, dims: Any) -> None:
        super().__init__()
        if not isinstance(dims, self.Dims):
            raise TypeError(f"{type(self).__name__} takes {self.Dims.__name__}, got {type(dims).__name__}")
        self.dims = dims

    # -- checkpoint hooks ---------------------------------------------------------------
    def dims_dict(self) -> dict:
        return to_dict(self.dims)

    @classmethod
    def dims_from_dict(cls, data: dict, source: str = "checkpoint") -> Any:
        return from_dict(cls.Dims, data, source)

    def save_assets(self, folder: Path) -> None:
        """Write files the architecture needs besides its weights (tokenizer, encoder config)."""

    @classmethod
    def from_checkpoint(cls, dims: Any, folder: Path) -> "MmerModel":
        """Build the architecture (random weights) so the checkpoint's weights can be loaded."""
        return cls(dims)

    # -- the contract (mmer.contract) ----------------------------------------------------
    def build_contract(self) -> Contract:
        """What this model's graph takes and gives; exportable models override this."""
        raise ContractError(f"{type(self).__name__} ('{self.registry_name}') declares no contract, so it cannot "
                            f"be exported or served by a runtime; exportable models override build_contract()")

    def contract(self) -> Contract:
        """:meth:`build_contract`, built once (dims are frozen, so it never changes)."""
        cached = self.__dict__.get("_contract")
        if cached is None:
            cached = self.__dict__["_contract"] = self.build_contract()
        return cached

    def graph_outputs(self, **inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The graph's outputs in contract order (heads, feature, extras) from its named inputs."""
        c = self.contract()
        out = self(**inputs)
        if hasattr(out, "prediction"):   # a sentiment model (mmer.outputs.MsaOutput)
            heads = (out.prediction,) if c.heads == SCORE_OUTPUTS else \
                (out.prediction, torch.softmax(out.prediction.float(), dim=-1))
        else:
            heads = (out.logits, out.probs)
        return heads + tuple(out.features[k] for k in (c.feature,) + c.extra_outputs)

    def example_inputs(self, n: int = 2, seed: int = 0, data_root: Any = None, data: str = "meld-dev",
                       audio_range_s: tuple[float, float] | None = None) -> list[dict[str, np.ndarray]]:
        """``n`` real batch-1 inputs (named numpy arrays) for calibration, parity and benchmarks.

        data: ``meld-dev`` (real transcripts, speech read from them) or ``generated``; seed fixes the draw.
        """
        raise ContractError(f"{type(self).__name__} makes no example inputs; override example_inputs()")

    def example_batch(self, samples: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """Two samples padded into one batch: the example the exporter traces with."""
        return collate(samples[:2])

    def labelled_inputs(self, n: int, seed: int = 0, data_root: Any = None
                        ) -> tuple[list[dict[str, np.ndarray]], list[int]] | None:
        """Inputs with their class ids (-1: not in the label set) for an accuracy gate, or None
        when no labelled data exists for this model (then INT8 exports are gated on agreement only)."""
        return None

    @classmethod
    def processor_for(cls, dims: Any, folder: Path | None = None, card: dict | None = None) -> Processor:
        """The processor of a model with ``dims`` whose assets lie in ``folder`` (a checkpoint or an
        export folder; ``card`` is the export's model.json): raw input -> graph inputs."""
        raise ContractError(f"{cls.__name__} has no processor; override processor_for()")

    def processor(self) -> Processor:
        """This model's processor (one per model, so stateful ones keep their state)."""
        cached = self.__dict__.get("_processor")
        if cached is None:
            cached = self.__dict__["_processor"] = self.make_processor()
        return cached

    def make_processor(self) -> Processor:
        return self.processor_for(self.dims, None, self.export_info())

    def export_info(self) -> dict:
        """What an export's model.json must carry for :meth:`processor_for` to rebuild the
        processor without this torch model (prompt settings, a speaker prior)."""
        return {}

    def save_export_assets(self, folder: Path) -> dict[str, str]:
        """Write the files an export needs besides the graph (a tokenizer); returns role -> file name."""
        return {}

    @torch.inference_mode()
    def predict(self, raw: Any, **context: Any) -> dict[str, np.ndarray]:
        """Batch-of-one prediction from raw input (turns, a waveform, a face crop, features), in
        torch: the processor's inputs -> :meth:`graph_outputs` -> the processor's outputs.
        Returns the contract's outputs by name ("logits", "probs", the feature under its name and
        as "feature", extras) as numpy, like every :class:`mmer.runtime.Runtime`."""
        proc = self.processor()
        c = self.contract()
        inputs = c.check(proc.inputs(raw, **context))
        device = self.device
        out = self.graph_outputs(**{k: torch.from_numpy(v).to(device) for k, v in inputs.items()})
        result = {name: t.float().cpu().numpy() for name, t in zip(c.outputs, out)}
        result["feature"] = result[c.feature]
        return proc.outputs(result, **context)

    @property
    def label_set(self) -> str:
        return self.dims.label_set

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


def replace_dims(dims: Any, **changes: Any) -> Any:
    return dataclasses.replace(dims, **changes)


def as_array(x: Any, expected: str) -> np.ndarray:
    """Raw input of :meth:`MmerModel.recognize` as numpy: a numpy array as is, a torch tensor on
    the CPU (floating point as float32); anything else is a UsageError saying ``expected``."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        return (x.float() if x.is_floating_point() else x).numpy()
    if not isinstance(x, np.ndarray):
        raise UsageError(f"{expected}, as numpy arrays or torch tensors; got {type(x).__name__}")
    return x


def batch_starts(n: int, batch_size: int) -> range:
    """Where each padded batch of :meth:`MmerModel.recognize` starts among ``n`` items;
    ``batch_size`` below 1 is a :class:`mmer.errors.UsageError`."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UsageError(f"batch_size must be an int >= 1, got {batch_size!r}")
    return range(0, n, batch_size)
