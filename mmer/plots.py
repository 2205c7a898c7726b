"""The benchmarks' latency histograms (``mmer-bench models`` and ``mmer-bench live``).

    fig = latency_histograms({"teacher: batch-1 latency": {"torch fp32": [12.1, 12.4], "onnxruntime fp32": [...]}})
    save_figure(fig, "bench.png")

One panel per thing timed (a model, a pipeline stage), one step curve per variant (a backend, a
run), log-spaced bins on a log x axis: backends and stages differ by orders of magnitude, and
linear bins would squash all but the slowest into one bar. Only what has values is drawn, so
there are no empty panels.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

HIST_BINS = 40
MIN_HIST_MS = 1e-3              # the lowest bin edge; shorter times (a wait of 0 ms) are drawn there
PANEL_INCHES = (8.0, 2.4)       # width, height of one panel
FIGURE_DPI = 110
LEGEND_FONT_SIZE = 6


def latency_histograms(panels: Mapping[str, Mapping[str, Sequence[float]]], columns: int = 1,
                       xlabel: str = "ms (log scale)") -> Any:
    """A matplotlib Figure of ``panels`` (title -> {curve label -> latencies in ms}), laid out
    ``columns`` wide; curves without values and panels without curves are left out. None
    without matplotlib or without anything to draw."""
    try:
        import matplotlib
        matplotlib.use("Agg")  # no display on servers and CI; Agg writes files only
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    drawn = {title: {label: np.asarray(v, float) for label, v in curves.items() if len(v)}
             for title, curves in panels.items()}
    drawn = {title: curves for title, curves in drawn.items() if curves}
    if not drawn:
        return None
    # One colour per curve label across every panel, so a backend or run reads the same everywhere.
    colours = {label: f"C{i}" for i, label in enumerate(dict.fromkeys(l for c in drawn.values() for l in c))}
    columns = max(1, min(columns, len(drawn)))
    rows = math.ceil(len(drawn) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(PANEL_INCHES[0] * columns, PANEL_INCHES[1] * rows),
                             squeeze=False)
    for ax, (title, curves) in zip(axes.flat, drawn.items()):
        values = np.concatenate(list(curves.values()))
        lo, hi = max(float(values.min()), MIN_HIST_MS), max(float(values.max()), MIN_HIST_MS)
        if hi <= lo * 1.01:  # one value (or nearly): widen, so the bar has a visible width
            lo, hi = lo / 1.1, hi * 1.1
        bins = np.logspace(np.log10(lo), np.log10(hi), HIST_BINS + 1)
        for label, v in curves.items():
            ax.hist(np.clip(v, lo, hi), bins=bins, histtype="step", label=label, color=colours[label])
        ax.set_xscale("log")
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.legend(fontsize=LEGEND_FONT_SIZE)
    for ax in list(axes.flat)[len(drawn):]:   # the unused cells of the last row
        ax.remove()
    fig.tight_layout()
    return fig


def save_figure(fig: Any, path: str | Path) -> Path:
    """Write ``fig`` as a PNG (its folder made) and free it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=FIGURE_DPI)
    plt.close(fig)
    return path
