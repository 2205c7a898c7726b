"""Checkpoints: safetensors weights plus ``mmer.json`` metadata, loadable without any YAML.

Layout of a checkpoint folder::

    model.safetensors   weights (float32, or float16 for the embedded defaults)
    mmer.json           {"format": "mmer-checkpoint", "model": <registry name>, "dims": {...},
                         "label_set": ..., "id2label": {"0": <label>, ...}, "provenance": {...}}
    <assets>/           whatever the model's ``save_assets`` wrote (tokenizer, encoder config)

Pickle-based files (``.pt``, ``.pth``, ``.bin``, ``.ckpt``, ``.pkl``) are refused: unpickling
runs arbitrary code.
"""

from __future__ import annotations

import datetime as _dt
import json
import struct
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mmer.errors import UsageError
from mmer.registry import MODELS

FORMAT = "mmer-checkpoint"
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
META = "mmer.json"
PICKLE_SUFFIXES = {".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle"}
ASSETS_DIR = Path(__file__).resolve().parent / "assets"
REQUIRED_META = ("model", "dims", "label_set")   # a checkpoint carries its sizes: no default dims
HEADER_LEN_BYTES = 8                    # safetensors: u64 little-endian header length, then JSON
PICKLE_MAGIC = (b"PK\x03\x04",          # torch.save's zip archive (a pickle inside)
                b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")   # a bare pickle, protocol 2-5
FIX = "re-save it with mmer.checkpoint.save_checkpoint(), or re-download/re-train the checkpoint"


class CheckpointError(UsageError):
    """A checkpoint that cannot be read; the message names the file and the fix (a ValueError too)."""


def _state_dict_for_save(model: torch.nn.Module, dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    state = {}
    seen: dict[int, str] = {}
    for name, tensor in model.state_dict().items():
        # Tied weights share storage; safetensors refuses shared tensors, so each is written once
        # and re-tied by load_state_dict(strict=False) + the model's own tying.
        key = tensor.data_ptr()
        if key in seen and tensor.numel() > 0:
            continue
        seen[key] = name
        t = tensor.detach().cpu()
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        state[name] = t.contiguous()
    return state


def _id2label(label_set: str) -> dict[str, str] | None:
    """Class id (as a string, the JSON key) -> label name, as Hugging Face configs carry it."""
    from mmer.labels import get_label_set

    try:
        return {str(i): name for i, name in enumerate(get_label_set(label_set).labels)}
    except (KeyError, ValueError):  # a model without a classification label set (regression)
        return None


def save_checkpoint(model: Any, folder: str | Path, provenance: dict | None = None,
                    dtype: torch.dtype | None = None, calibration: dict | None = None) -> Path:
    """Write ``model`` (an :class:`mmer.models.base.MmerModel`) to ``folder``.

    ``provenance`` records how it was made (data, recipe, metrics); ``dtype=torch.float16``
    halves the size of floating-point weights (they load back as float32); ``calibration`` is
    a :class:`mmer.calibration.Calibration` as a dict (temperature, reliability, abstention).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(_state_dict_for_save(model, dtype), str(folder / WEIGHTS), metadata={"format": "pt"})
    model.save_assets(folder)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": model.registry_name,
        "dims": model.dims_dict(),
        "label_set": model.label_set,
        "id2label": _id2label(model.label_set),
        "weights_dtype": str(dtype or torch.float32).replace("torch.", ""),
        "saved_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "provenance": provenance or {},
    }
    if calibration:
        meta["calibration"] = calibration
    (folder / META).write_text(json.dumps(meta, indent=2, sort_keys=False), encoding="utf-8")
    return folder


def resolve(path_or_name: str | Path) -> Path:
    """Turn a checkpoint folder, a file inside it, or an embedded default's name into a folder."""
    p = Path(path_or_name)
    if p.suffix.lower() in PICKLE_SUFFIXES:
        raise CheckpointError(
            f"{p}: pickle checkpoints are refused because loading them can run arbitrary code. "
            f"Convert it once in a trusted environment: load it with torch, then "
            f"mmer.checkpoint.save_checkpoint(model, 'out_dir') writes safetensors + mmer.json.")
    if p.is_file() and p.name in (WEIGHTS, META):
        p = p.parent
    if p.is_dir():
        return p
    embedded = ASSETS_DIR / str(path_or_name)
    if (embedded / META).is_file():
        return embedded
    known = sorted(d.name for d in ASSETS_DIR.iterdir() if (d / META).is_file()) if ASSETS_DIR.is_dir() else []
    raise CheckpointError(f"{path_or_name}: no checkpoint folder and no embedded default of that name; "
                          f"embedded defaults: {known or 'none installed'}")


def read_meta(folder: str | Path) -> dict:
    """The checkpoint's ``mmer.json``, checked: format, version, and the keys loading needs."""
    folder = resolve(folder)
    meta_path = folder / META
    if not meta_path.is_file():
        raise CheckpointError(f"{folder}: no {META}; a mmer checkpoint folder holds {WEIGHTS} and {META} "
                              f"(written by mmer.checkpoint.save_checkpoint)")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{meta_path}: not valid JSON ({e}); {FIX}") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{meta_path}: expected a JSON object, got {type(meta).__name__}; {FIX}")
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{meta_path}: 'format' is {meta.get('format')!r}, expected {FORMAT!r}")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{meta_path}: format_version {meta['format_version']} is newer than this mmer "
                              f"reads ({FORMAT_VERSION}); upgrade mmer")
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise CheckpointError(f"{meta_path}: {META} has no {' and no '.join(repr(k) for k in missing)}; {FIX}")
    if not isinstance(meta["dims"], dict) or not meta["dims"]:
        raise CheckpointError(f"{meta_path}: 'dims' must be the model's sizes as a non-empty mapping, got "
                              f"{meta['dims']!r}; {FIX}")
    id2label = _id2label(meta["label_set"])
    if meta.get("id2label") is None:   # a card written before id2label: the label set gives it
        meta["id2label"] = id2label
    elif id2label is not None and meta["id2label"] != id2label:
        raise CheckpointError(f"{meta_path}: 'id2label' {meta['id2label']} contradicts label set "
                              f"{meta['label_set']!r} ({id2label}); {FIX}")
    return meta


def check_weights_file(path: str | Path) -> None:
    """Refuse, with a :class:`CheckpointError` naming ``path`` and the fix, a weights file that is
    not a whole safetensors file: empty, a pickle under a safetensors name, a foreign file, or one
    cut short (its header promises more bytes than it holds). Reads only the header."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; {FIX}")
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(HEADER_LEN_BYTES + 1)
    if size == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes); {FIX}")
    if head[HEADER_LEN_BYTES:] != b"{":   # the JSON header of a safetensors file opens right after its length
        if head.startswith(PICKLE_MAGIC):
            what = "not a safetensors file (it starts like a Python pickle; mmer never loads pickles)"
        elif size <= HEADER_LEN_BYTES:
            what = f"truncated: {size} bytes, shorter than a safetensors header"
        else:
            what = "not a safetensors file (it does not start with a safetensors header)"
        raise CheckpointError(f"{path}: {what}; {FIX}")
    (header_len,) = struct.unpack("<Q", head[:HEADER_LEN_BYTES])
    header_end = HEADER_LEN_BYTES + header_len
    if header_end > size:
        raise CheckpointError(f"{path}: truncated: header says at least {header_end} bytes, file has {size}; {FIX}")
    with path.open("rb") as f:
        f.seek(HEADER_LEN_BYTES)
        raw = f.read(header_len)
    try:
        header = json.loads(raw)
        data_len = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        raise CheckpointError(f"{path}: not a safetensors file (its header is not a valid tensor table); "
                              f"{FIX}") from None
    if header_end + data_len > size:
        raise CheckpointError(f"{path}: truncated: header says {header_end + data_len} bytes, file has {size}; {FIX}")


def load_checkpoint(path_or_name: str | Path, device: str | torch.device = "cpu") -> Any:
    """Load a checkpoint folder (or embedded default name) into a ready, eval-mode model."""
    import mmer.models  # noqa: F401  (fills the registry)

    folder = resolve(path_or_name)
    meta = read_meta(folder)
    cls = MODELS.get(meta["model"])
    dims = cls.dims_from_dict(meta["dims"], source=str(folder / META))
    weights = folder / WEIGHTS
    check_weights_file(weights)   # before building the architecture, which can be slow
    model = cls.from_checkpoint(dims, folder)
    try:
        state = load_file(str(weights))
    except SafetensorError as e:   # a corruption the header check cannot see
        raise CheckpointError(f"{weights}: unreadable safetensors file ({e}); {FIX}") from None
    expected = model.state_dict()
    state = {k: v.to(expected[k].dtype) if k in expected else v for k, v in state.items()}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:      # tensor shapes that differ from the dims in mmer.json
        raise CheckpointError(f"{weights}: weights do not match the '{meta['model']}' architecture in {META}: "
                              f"{e}") from None
    # Only tied (shared-storage) weights may be absent from the file.
    ptrs = {}
    for k, v in expected.items():
        ptrs.setdefault(v.data_ptr(), []).append(k)
    tied = {k for group in ptrs.values() if len(group) > 1 for k in group}
    really_missing = [k for k in missing if k not in tied]
    if really_missing or unexpected:
        raise CheckpointError(f"{weights}: weights do not match the '{meta['model']}' architecture in {META}: "
                              f"missing {really_missing[:5]}, unexpected {list(unexpected)[:5]}")
    model.checkpoint_meta = meta
    return model.to(device).eval()
