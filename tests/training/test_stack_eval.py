"""``mmer-eval default``: the whole live predictor (calibration, abstention, fusion) over a labelled set."""

from __future__ import annotations

import json

import pytest

from mmer.training.cli import eval_main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
RAVDESS_SLICE = 14      # actor 01: every label twice
DAILYDIALOG_SLICE = 20

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_the_stack_on_ravdess_scores_fused_and_each_modality(ravdess_dir, tmp_path, capsys):
    out = tmp_path / "stack.json"
    assert eval_main(["default", "--data", "ravdess", "--data-root", str(ravdess_dir), "--limit",
                      str(RAVDESS_SLICE), "--json", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert out.with_suffix(".png").read_bytes()[:8] == PNG_MAGIC
    assert metrics["model"] == "default" and metrics["n"] == RAVDESS_SLICE
    assert set(metrics["modalities"]) == {"text", "audio"}
    # RAVDESS sentences are lexically neutral: the words defer to the voice, recorded per reason.
    deferred = sum(n for reason, n in metrics["abstained"].items() if reason.startswith("text: words read as neutral"))
    assert deferred >= RAVDESS_SLICE // 2
    assert metrics["ua"] >= metrics["modalities"]["audio"]["ua"] - 0.01 - 1 / RAVDESS_SLICE
    report = capsys.readouterr().out
    assert "default (audio alone)" in report and "abstentions:" in report


def test_the_stack_on_text_only_data_equals_the_text_model(dailydialog_dir, tmp_path):
    out = tmp_path / "dd.json"
    assert eval_main(["default", "--data", "dailydialog", "--data-root", str(dailydialog_dir), "--limit",
                      str(DAILYDIALOG_SLICE), "--json", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert set(metrics["modalities"]) == {"text"} and "micro_f1_without_neutral" in metrics
    assert metrics["confusion"] == metrics["modalities"]["text"]["confusion"]   # one modality: fused = text


def test_the_stack_names_a_missing_corpus_root(tmp_path, capsys):
    assert eval_main(["default", "--data", "iemocap", "--data-root", str(tmp_path)]) == 2
    assert "mmer-eval" in capsys.readouterr().err
