"""Progress bars of the commands' long loops (mmer-eval, mmer-export, mmer-predict, mmer-bench).

    for batch in progress(batches, "eval text", unit="batch"):
        ...

Bars go to stderr, because stdout carries reports, tables and JSON lines that callers parse,
and only to a terminal: tqdm's ``disable=None`` turns a bar off when stderr is a pipe, a file
or a test's capture, so logs and CI output get no carriage-return noise. ``leave=False``
erases a finished bar, so what remains on screen is the command's own output.
(The training loops keep their ``optim.progress`` switch: long runs are often logged to files.)
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any


def progress(iterable: Iterable | None = None, desc: str = "", total: int | None = None, enabled: bool = True,
             unit: str = "it") -> Any:
    """A tqdm bar over ``iterable`` (or one updated by hand when None) on stderr, shown only
    when stderr is a terminal and ``enabled``; iterating it yields the items unchanged."""
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, unit=unit, leave=False, file=sys.stderr,
                disable=None if enabled else True, dynamic_ncols=True)
