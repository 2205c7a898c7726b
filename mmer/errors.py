"""One error root and one exit-code table for every mmer command (STYLE.md habit 17).

Every error mmer raises on purpose derives from :class:`MmerError` and carries a ``kind``:

- ``usage``: the caller can fix it (a bad argument, config key or value, a missing or corrupt
  file, a busy port); nothing ran.
- ``environment``: the machine cannot do it (a lost device, a runtime or extra that is not
  installed, an engine for another GPU).
- ``gate``: the work ran and its result failed a declared check (an export's parity gate).

Each kind maps to one exit code, the same in every command (docs/errors.md):

===== =================================================================================
code  meaning
===== =================================================================================
0     done (also: mmer-live stopped by Ctrl-C or SIGTERM after flushing the pending utterance)
1     failed: an unexpected error (a bug; the traceback is logged)
2     usage: bad arguments, config, input file, model folder or port; nothing ran
3     gate: a parity or quality gate failed (the result is kept for inspection)
4     environment: a device was lost or a runtime / extra is missing
130   interrupted: mmer-predict stopped by Ctrl-C or SIGTERM before every file was done
      (the finished files' results are written)
===== =================================================================================

Library code never prints: it logs through :mod:`logging` (logger names ``mmer.*``) and raises
these errors; only the command-line fronts turn them into one ``prog: message`` line and a code.
The concrete classes keep a builtin base too (``ValueError``, ``FileNotFoundError``...), so
callers that caught those before still do.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal

Kind = Literal["usage", "environment", "gate"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_GATE = 3
EXIT_ENVIRONMENT = 4
EXIT_INTERRUPTED = 130   # 128 + SIGINT, as shells report an interrupted command

EXIT_CODES: dict[str, int] = {"usage": EXIT_USAGE, "environment": EXIT_ENVIRONMENT, "gate": EXIT_GATE}


class MmerError(Exception):
    """The root of every error mmer raises on purpose; ``kind`` picks the exit code."""

    kind: Kind = "usage"

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.kind]


class UsageError(MmerError, ValueError):
    """Something the caller gave is wrong (argument, value, file); the message names the fix."""

    kind = "usage"


class EnvironmentProblem(MmerError, RuntimeError):
    """The machine lacks what is needed (device, library, runtime); the message names the fix."""

    kind = "environment"


def exit_code_of(error: BaseException) -> int:
    """The exit code for ``error``: its kind's for an :class:`MmerError`, else ``EXIT_FAILED``."""
    return error.exit_code if isinstance(error, MmerError) else EXIT_FAILED


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of each record (tests swap it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def setup_logging(prog: str, level: int = logging.WARNING) -> None:
    """A command's log lines: ``prog: message`` on stderr for the ``mmer`` loggers."""
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter(f"{prog}: %(message)s"))
    root = logging.getLogger("mmer")
    root.handlers[:] = [handler]
    root.setLevel(level)
