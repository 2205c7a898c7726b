"""mmer-bench models on a small subset: timing helpers, the JSON/Markdown/PNG outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from mmer.export.bench import bench_models_main, summarize, time_calls  # noqa: E402


def test_time_calls_and_percentiles():
    calls = []
    ms = time_calls(lambda x: calls.append(x), [1, 2, 3], runs=7, warmup=2)
    assert calls == [1, 2, 1, 2, 3, 1, 2, 3, 1] and ms.shape == (7,) and (ms >= 0).all()
    stats = summarize(np.arange(1, 101, dtype=float))
    assert stats["p50_ms"] == pytest.approx(50.5) and stats["p95_ms"] == pytest.approx(95.05)
    assert stats["p99_ms"] == pytest.approx(99.01) and stats["runs"] == 100


def test_bench_models_writes_json_markdown_and_histogram(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = bench_models_main(["models", "--json", str(out), "--models", "asf", "--formats", "onnx",
                              "--runs", "5", "--warmup", "1", "--no-reference", "--device", "cpu"])
    assert code == 0
    result = json.loads(out.read_text())
    (device,) = result["devices"]
    assert device["info"]["device"] == "cpu" and "onnxruntime" in device["info"]
    rows = {(r["backend"], r["precision"]): r for r in device["rows"]}
    assert set(rows) == {("torch eager", "fp32"), ("onnxruntime", "fp32")}
    for r in rows.values():
        assert r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"] and r["runs"] == 5 and r["throughput_per_s"] > 0
        assert r["throughput_batch"] == 8 and r["size_mb"] > 0
    md = out.with_suffix(".md").read_text()
    assert "| asf (asf) | onnxruntime | fp32 |" in md
    assert out.with_suffix(".png").stat().st_size > 0
