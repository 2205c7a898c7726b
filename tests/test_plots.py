"""mmer.plots: the benchmarks' latency histograms draw only what has values, on log axes."""

from __future__ import annotations

import pytest

pytest.importorskip("matplotlib")

from mmer.plots import latency_histograms, save_figure  # noqa: E402


def test_only_panels_and_curves_with_values_are_drawn(tmp_path):
    fig = latency_histograms({"a": {"x": [0.5, 2.0, 40.0], "empty": []}, "nothing": {"y": []},
                              "b": {"y": [0.0, 0.0]}, "c": {"z": [3.0]}}, columns=2)
    assert [ax.get_title() for ax in fig.axes] == ["a", "b", "c"]     # the 4th cell of the 2x2 grid is removed
    assert [len(ax.patches) for ax in fig.axes] == [1, 1, 1]
    assert {ax.get_xscale() for ax in fig.axes} == {"log"}
    first = latency_histograms({"p": {"x": [1.0], "y": [2.0]}, "q": {"y": [3.0]}})
    assert first.axes[0].patches[1].get_edgecolor() == first.axes[1].patches[0].get_edgecolor()   # y alike
    path = save_figure(fig, tmp_path / "sub" / "h.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_nothing_to_draw_is_none():
    assert latency_histograms({}) is None
    assert latency_histograms({"a": {"x": []}}) is None
