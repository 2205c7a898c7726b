"""mmer.progress: bars on stderr, only on a terminal, gone when disabled."""

from __future__ import annotations

import io
import sys

from mmer.progress import progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bars_show_on_a_terminal_only(monkeypatch, capsys):
    assert list(progress([1, 2, 3], "x")) == [1, 2, 3]
    assert capsys.readouterr() == ("", "")                        # stderr captured: not a terminal
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert list(progress([1, 2], "shown", unit="file")) == [1, 2]
    assert "shown" in terminal.getvalue() and "file" in terminal.getvalue()
    terminal.truncate(0)
    assert list(progress([1, 2], "hidden", enabled=False)) == [1, 2]
    assert terminal.getvalue() == ""
    assert capsys.readouterr().out == ""                          # never on stdout
