"""mmer: multimodal emotion recognition in live conversation (text, voice, face)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__version__ = "0.1.0"

__all__ = ["load", "__version__"]


def load(path_or_name: str | Path, device: str = "cpu") -> Any:
    """Load a checkpoint folder, or the name of an embedded default, as a ready eval-mode model.

    >>> model = mmer.load("runs/teacher/checkpoint")   # doctest: +SKIP
    """
    from mmer.checkpoint import load_checkpoint

    return load_checkpoint(path_or_name, device=device)
