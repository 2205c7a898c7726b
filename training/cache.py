"""Disk cache of frozen-encoder outputs, so later stages never recompute a frozen model.

TelME trains in stages: the teacher is frozen while the students distil from it, and both are
frozen while the fusion trains. Their outputs on a sample never change, so they are computed
once and kept as safetensors shards::

    folder/<fingerprint[:16]>/meta.json                 what the fingerprint was made of
    folder/<fingerprint[:16]>/shard-<n>.safetensors     tensors named "<uid>::<key>"

The fingerprint (:func:`encoder_fingerprint`) covers the checkpoint path, the size and mtime
of every file in it, and any settings that change the outputs (decoding options, max tokens),
so a retrained teacher or a new audio cap never reads stale features.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file
from tqdm import tqdm

SEPARATOR = "::"              # between uid and key in a tensor name
ARRAY_KEY = "__array__"       # key used when the compute function returns one array
DEFAULT_CHUNK = 256           # uids computed (and written as one shard) at a time
FINGERPRINT_CHARS = 16        # hex characters of the fingerprint used as the folder name


def default_cache_dir() -> Path:
    """``$MMER_CACHE_DIR`` or ``~/.cache/mmer``."""
    return Path(os.environ.get("MMER_CACHE_DIR", Path.home() / ".cache" / "mmer"))


def encoder_fingerprint(checkpoint: str | Path | None, **settings: Any) -> str:
    """sha256 over the checkpoint (resolved path; size and mtime of each file in it) and ``settings``.

    ``settings`` must be JSON-serialisable (e.g. ``MediaOptions.to_dict()``, ``max_tokens=256``).
    A checkpoint that is a hub name rather than a path is hashed by name.
    """
    h = hashlib.sha256()
    if checkpoint is not None:
        path = Path(checkpoint)
        h.update(str(path.resolve() if path.exists() else checkpoint).encode())
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path] if path.exists() else []
        for f in files:
            st = f.stat()
            h.update(f"{f.relative_to(path) if path.is_dir() else f.name}|{st.st_size}|{st.st_mtime_ns}".encode())
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return h.hexdigest()


class FeatureCache:
    """uid -> arrays, on disk, for one encoder fingerprint.

    Args:
        folder: cache root; entries live in ``folder/<fingerprint[:16]>/``.
        fingerprint: from :func:`encoder_fingerprint`; a different one is a different cache.
        chunk_size: uids per call of the compute function and per shard, so an interrupted
            run keeps what it finished.
        meta: what the fingerprint was made of, written to meta.json for humans.
    """

    def __init__(self, folder: str | Path, fingerprint: str, chunk_size: int = DEFAULT_CHUNK,
                 meta: Mapping[str, Any] | None = None, progress: bool = True) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.fingerprint = fingerprint
        self.dir = Path(folder) / fingerprint[:FINGERPRINT_CHARS]
        self.dir.mkdir(parents=True, exist_ok=True)
        self.chunk_size = chunk_size
        self.progress = progress
        meta_file = self.dir / "meta.json"
        if not meta_file.exists():
            meta_file.write_text(json.dumps({"fingerprint": fingerprint, **dict(meta or {})}, indent=1, default=str))
        self._index: dict[str, dict[str, Path]] = {}   # uid -> key -> shard
        for shard in sorted(self.dir.glob("shard-*.safetensors")):
            self._index_shard(shard)

    def _index_shard(self, shard: Path) -> None:
        with safe_open(str(shard), framework="np") as f:
            for name in f.keys():
                uid, key = name.rsplit(SEPARATOR, 1)
                self._index.setdefault(uid, {})[key] = shard

    def __contains__(self, uid: str) -> bool:
        return uid in self._index

    def __len__(self) -> int:
        return len(self._index)

    def uids(self) -> list[str]:
        return sorted(self._index)

    def _write(self, uids: Sequence[str], outputs: Mapping[str, np.ndarray]) -> None:
        tensors = {f"{uid}{SEPARATOR}{key}": np.ascontiguousarray(arr[i])
                   for key, arr in outputs.items() for i, uid in enumerate(uids)}
        shard = self.dir / f"shard-{time.time_ns()}-{os.getpid()}.safetensors"
        tmp = shard.with_suffix(".tmp")
        save_file(tensors, str(tmp))
        os.replace(tmp, shard)  # a reader never sees half a shard
        self._index_shard(shard)

    def load(self, uids: Sequence[str]) -> dict[str, np.ndarray]:
        """Key -> stacked (len(uids), ...) arrays of cached uids; ``KeyError`` names a missing one."""
        by_shard: dict[Path, list[tuple[int, str, str]]] = {}
        keys: list[str] | None = None
        for i, uid in enumerate(uids):
            if uid not in self._index:
                raise KeyError(f"uid '{uid}' is not in the feature cache {self.dir}")
            entry = self._index[uid]
            if keys is None:
                keys = sorted(entry)
            elif sorted(entry) != keys:
                raise ValueError(f"cache entries disagree on keys: {keys} vs {sorted(entry)} for '{uid}'")
            for key, shard in entry.items():
                by_shard.setdefault(shard, []).append((i, uid, key))
        rows: dict[str, list[Any]] = {k: [None] * len(uids) for k in keys or []}
        for shard, wanted in by_shard.items():
            with safe_open(str(shard), framework="np") as f:
                for i, uid, key in wanted:
                    rows[key][i] = f.get_tensor(f"{uid}{SEPARATOR}{key}")
        try:
            return {k: np.stack(v) for k, v in rows.items()}
        except ValueError as e:
            raise ValueError(f"cached arrays differ in shape and cannot be stacked: {e}") from None

    def get_or_compute(self, uids: Sequence[str],
                       fn: Callable[[list[str]], Any], desc: str = "encoding") -> np.ndarray | dict[str, np.ndarray]:
        """Outputs for ``uids`` in order, computing (and caching) only the missing ones.

        Args:
            uids: sample uids (no ``"::"`` inside).
            fn: called with a list of missing uids (at most ``chunk_size``); returns an array
                or tensor (n, ...) or a mapping key -> (n, ...) (e.g. ``{"features", "logits"}``).

        Returns:
            an array (len(uids), ...) if ``fn`` returns one array, else key -> array
            (an empty ``uids`` gives an empty dict).
        """
        bad = [u for u in uids if SEPARATOR in u]
        if bad:
            raise ValueError(f"uids must not contain '{SEPARATOR}': {bad[:3]}")
        missing = list(dict.fromkeys(u for u in uids if u not in self._index))
        chunks = [missing[i:i + self.chunk_size] for i in range(0, len(missing), self.chunk_size)]
        for chunk in tqdm(chunks, desc=desc, disable=not self.progress or not chunks, leave=False):
            out = fn(list(chunk))
            pairs = out.items() if isinstance(out, Mapping) else [(ARRAY_KEY, out)]
            outputs = {k: _to_numpy(v) for k, v in pairs}
            for key, arr in outputs.items():
                if SEPARATOR in key:
                    raise ValueError(f"output keys must not contain '{SEPARATOR}': '{key}'")
                if arr.shape[0] != len(chunk):
                    raise ValueError(f"fn returned {arr.shape[0]} rows for key '{key}' but was given {len(chunk)} uids")
            self._write(chunk, outputs)
        if not uids:
            return {}
        loaded = self.load(uids)
        return loaded[ARRAY_KEY] if set(loaded) == {ARRAY_KEY} else loaded


def _to_numpy(x: Any) -> np.ndarray:
    """numpy from a numpy array or a torch tensor (bf16/fp16 widened to float32, moved to CPU)."""
    if hasattr(x, "detach"):
        import torch

        t = x.detach().cpu()
        if t.dtype in (torch.bfloat16, torch.float16):
            t = t.float()
        return t.numpy()
    return np.asarray(x)
