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
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _run(tmp_path, *args: str) -> dict:
    out = tmp_path / "bench.json"
    code = bench_models_main(["models", *args, "--json", str(out), "--runs", "5", "--warmup", "1",
                              "--no-reference", "--device", "cpu"])
    assert code == 0
    return json.loads(out.read_text())


def test_bench_an_export_folder_on_its_runtime(tmp_path):
    from mmer.export.exporter import export
    from tests.export.test_onnx_zoo import tiny_asf

    folder = tmp_path / "asf-onnx"
    export(tiny_asf(), "onnx", folder, ("parity.num_samples=2",))
    result = _run(tmp_path, str(folder))
    (device,) = result["devices"]
    (row,) = device["rows"]                       # card runtime onnxruntime: one backend
    assert (row["backend"], row["precision"]) == ("onnxruntime", "fp32")
    assert row["model"] == "asf-onnx (asf onnx)" and row["modality"] == "fusion" and row["runs"] == 5
    # no source checkpoint: the card's class is rebuilt from its dims and makes the inputs
    (artefact,) = result["artefacts"]
    assert artefact["export"] == str(folder) and "ASF.example_inputs" in artefact["notes"][0]


def test_bench_a_checkpoint_folder_on_torch_and_onnxruntime(tmp_path):
    from mmer.checkpoint import save_checkpoint
    from tests.export.test_onnx_zoo import tiny_asf

    ckpt = save_checkpoint(tiny_asf(), tmp_path / "ckpt")
    result = _run(tmp_path, str(ckpt), "--formats", "onnx")
    rows = {(r["model"], r["backend"], r["precision"]) for r in result["devices"][0]["rows"]}
    assert rows == {("ckpt (asf)", "torch eager", "fp32"), ("ckpt (asf)", "onnxruntime", "fp32")}


def test_bench_refuses_what_is_neither_checkpoint_default_nor_export(tmp_path, capsys):
    (tmp_path / "junk").mkdir()
    with pytest.raises(SystemExit) as e:
        bench_models_main(["models", str(tmp_path / "junk"), "--device", "cpu"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "junk" in err and "not a checkpoint folder, an embedded default name or an export folder" in err
    with pytest.raises(SystemExit):
        bench_models_main(["models", "default-text", "--models", "asf"])
    assert "give one or the other" in capsys.readouterr().err


def test_histogram_is_one_log_x_subplot_per_model_that_ran():
    from mmer.export.bench import histogram_figure

    pytest.importorskip("matplotlib")
    row = {"backend": "torch eager", "precision": "fp32"}
    result = {"devices": [{"info": {"device": "cpu"}, "rows": [
        row | {"model": "a (asf)", "samples_ms": [0.1, 0.2, 0.4]},
        row | {"model": "a (asf)", "backend": "onnxruntime", "samples_ms": [0.05, 0.06]},
        row | {"model": "b (teacher)", "samples_ms": [10.0, 30.0, 900.0]}]}]}
    fig = histogram_figure(result)
    assert [ax.get_title() for ax in fig.axes] == ["a (asf): batch-1 latency", "b (teacher): batch-1 latency"]
    assert [ax.get_xscale() for ax in fig.axes] == ["log", "log"]
    curves = [len(ax.patches) for ax in fig.axes]
    assert curves == [2, 1]
    edges = fig.axes[1].patches[0].get_path().vertices[:, 0]
    assert edges.min() == pytest.approx(10.0) and edges.max() == pytest.approx(900.0)
    assert histogram_figure({"devices": [{"info": {"device": "cpu"}, "rows": []}]}) is None
