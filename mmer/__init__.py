"""mmer: multimodal emotion recognition in live conversation (text, voice, face)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version as _version
from pathlib import Path
from typing import Any

try:   # pyproject.toml's version, as installed: one number, written in one place
    __version__ = _version("mmer")
except PackageNotFoundError:   # a source tree on sys.path that was never pip-installed
    __version__ = "0+unknown"

__all__ = ["load", "__version__"]


def load(path_or_name: str | Path, device: str = "cpu") -> Any:
    """Load a checkpoint folder, or the name of an embedded default, as a ready eval-mode model.

    The model itself is returned: called with tensors it is the torch module (``forward``);
    called with raw input it answers labelled dicts (:meth:`~mmer.models.base.MmerModel.recognize`).

    >>> mmer.load("default-text")(["Hi.", "You're late again!"])   # doctest: +SKIP
    [{'label': 'neutral', 'score': ..., 'scores': {...}}, {'label': 'anger', ...}]
    >>> mmer.load("default-voice")(clip, sample_rate_hz=44_100)      # doctest: +SKIP
    """
    from mmer.checkpoint import load_checkpoint

    return load_checkpoint(path_or_name, device=device)
