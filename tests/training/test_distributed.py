"""Data-parallel training through torchrun: 2 CPU processes (gloo), one run folder, rank 0 first."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from mmer.training.distributed import init_distributed, main_process_first, world_size

ROOT = Path(__file__).resolve().parents[2]
DEV_ROWS, TEST_ROWS, EPOCHS = 30, 30, 3   # tests.training.test_trainer: make_splits(), cfg()


def events(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()] if log.is_file() else []


def test_two_process_torchrun_writes_one_run_folder(tmp_path):
    run, cache, logs = tmp_path / "run", tmp_path / "cache", tmp_path / "logs"
    logs.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    env.pop("WORLD_SIZE", None)
    # --standalone: a free local port, so concurrent runs on one machine do not collide
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "tests.training.ddp_worker", str(run), str(cache), str(logs)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rank0, rank1 = events(logs / "rank0.jsonl"), events(logs / "rank1.jsonl")
    assert {"done": True, "has_test": True} in rank0 and {"done": True, "has_test": False} in rank1
    # the cache was computed once, by rank 0; rank 1 read it
    assert sum(e.get("cache_rows", 0) for e in rank0) == 96
    assert not any("cache_rows" in e for e in rank1)
    # dev every epoch and test once, scored by rank 0 only
    assert sum(e.get("scored_rows", 0) for e in rank0) == EPOCHS * DEV_ROWS + TEST_ROWS
    assert not any("scored_rows" in e for e in rank1)
    # one run folder, written once, with dev and test scores
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "logs", "run"]
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    assert len(metrics["epochs"]) == EPOCHS and all(e["dev"]["n"] == DEV_ROWS for e in metrics["epochs"])
    assert metrics["test"]["n"] == TEST_ROWS
    assert (run / "checkpoint" / "mmer.json").is_file() and (run / "report.txt").read_text().count("test,") == 1
    assert "batch 8 x 2 processes x accumulation 1 = 16" in out.stdout


def test_without_torchrun_everything_is_a_no_op(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with main_process_first():
        pass
    assert world_size() == 1 and not torch.distributed.is_initialized()
    assert init_distributed("cpu") == torch.device("cpu")
