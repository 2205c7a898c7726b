"""What every model of the zoo shares: frozen dims saved inside the checkpoint, a registry
name, and hooks for the files a checkpoint needs besides its weights."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from mmer.config import from_dict, to_dict


class MmerModel(nn.Module):
    """Base class of the zoo.

    Subclasses set ``registry_name`` and ``Dims`` (a frozen dataclass holding every size the
    architecture needs, the label set included), take ``dims`` as their first constructor
    argument, and return :class:`mmer.outputs.EmotionOutput` from ``forward``.
    """

    registry_name: ClassVar[str] = ""
    Dims: ClassVar[type] = object

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

    @property
    def label_set(self) -> str:
        return self.dims.label_set

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


def replace_dims(dims: Any, **changes: Any) -> Any:
    return dataclasses.replace(dims, **changes)
