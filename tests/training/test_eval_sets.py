"""The new corpora wired into the recipes and mmer-eval: split building, label sets, an end-to-end
``mmer-eval`` on slices of RAVDESS (default-voice) and DailyDialog (default-text), and refusals."""

from __future__ import annotations

import json

import pytest

from mmer.config import ConfigError
from mmer.training.cli import eval_main
from mmer.training.datasets import DatasetError
from mmer.training.recipes import DataConfig
from mmer.training.stages import build_split, build_splits, label_set_of

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
BASE_KEYS = {"weighted_f1", "macro_f1", "accuracy", "per_class", "confusion", "labels", "n", "ua", "wa",
             "n_without_input", "label_map"}
DD_KEYS = {"micro_f1_without_neutral", "micro_precision_without_neutral", "micro_recall_without_neutral"}
RAVDESS_SLICE = 14      # actor 01: every label twice
DAILYDIALOG_SLICE = 24

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_recipes_build_the_new_corpora(tess_dir, ravdess_dir, dailydialog_dir):
    tess = DataConfig(name="tess", root=str(tess_dir), fold=0)
    assert label_set_of(tess) == "meld7"
    assert {s.speaker for s in build_split(tess, "test", ("audio",), progress=False)} == {"OAF"}
    for name, root, modality in (("ravdess", ravdess_dir, "audio"), ("dailydialog", dailydialog_dir, "text")):
        cfg = DataConfig(name=name, root=str(root), limit=5)
        assert label_set_of(cfg) == "meld7" and len(build_split(cfg, "test", (modality,), progress=False)) == 5
        with pytest.raises(DatasetError, match="evaluation-only"):   # never a training set
            build_splits(cfg, (modality,), progress=False)
    with pytest.raises(ConfigError, match="fold"):
        build_split(DataConfig(name="ravdess", root=str(ravdess_dir), fold=0), "test", ("audio",))


def _check_outputs(out, keys):
    metrics = json.loads(out.read_text())
    assert keys <= set(metrics)
    assert out.with_suffix(".png").read_bytes()[:8] == PNG_MAGIC
    return metrics


def test_eval_voice_on_ravdess(ravdess_dir, tmp_path, capsys):
    out = tmp_path / "voice.json"
    assert eval_main(["default-voice", "--data", "ravdess", "--data-root", str(ravdess_dir), "--limit",
                      str(RAVDESS_SLICE), "--device", "cpu", "--json", str(out)]) == 0
    metrics = _check_outputs(out, BASE_KEYS)
    assert metrics["n"] == RAVDESS_SLICE and metrics["split"] == "test"
    assert metrics["wa"] == metrics["accuracy"] and 0.0 <= metrics["ua"] <= 1.0
    assert "micro_f1_without_neutral" not in metrics
    assert "UA (unweighted accuracy" in capsys.readouterr().out


def test_eval_text_on_dailydialog(dailydialog_dir, tmp_path, capsys):
    out = tmp_path / "text.json"
    assert eval_main(["default-text", "--data", "dailydialog", "--data-root", str(dailydialog_dir), "--limit",
                      str(DAILYDIALOG_SLICE), "--device", "cpu", "--json", str(out)]) == 0
    metrics = _check_outputs(out, BASE_KEYS | DD_KEYS)
    assert metrics["n"] == DAILYDIALOG_SLICE and metrics["n_without_input"] == 0
    assert 0.0 <= metrics["micro_f1_without_neutral"] <= 1.0
    assert "micro-F1 without neutral" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["default-text", "--data", "tess", "--fold", "0"], "TESS has only audio"),
    (["default-voice", "--data", "dailydialog"], "DailyDialog has only text"),
    (["default-voice", "--data", "ravdess", "--split", "train"], "evaluation-only"),
    (["default-voice", "--data", "tess"], "pass --fold 0 or 1"),
    (["default-voice", "--data", "tess", "--fold", "2"], "TESS fold"),
    (["default-voice", "--data", "ravdess", "--fold", "1"], "only emodb and tess have folds"),
])
def test_eval_refuses_with_one_line(args, message, tess_dir, ravdess_dir, dailydialog_dir, capsys):
    root = {"tess": tess_dir, "ravdess": ravdess_dir, "dailydialog": dailydialog_dir}[args[2]]
    assert eval_main(args + ["--data-root", str(root), "--device", "cpu"]) == 2
    assert message in capsys.readouterr().err


def test_eval_scores_an_export_folder_as_deployed(ravdess_dir, tmp_path, capsys):
    """mmer-eval on what mmer-export wrote runs the graph itself (ONNX Runtime), with the speaker
    statistics in the live order, and gives the checkpoint's confusion matrix at fp32."""
    import mmer
    from mmer.export import export

    folder = tmp_path / "voice-onnx"
    export(mmer.load("default-voice"), "onnx", folder, ("parity.num_samples=2", "parity.audio_range_s=[0.5, 1.5]"))
    scores = {}
    for name, model in (("checkpoint", "default-voice"), ("export", str(folder))):
        out = tmp_path / f"{name}.json"
        assert eval_main([model, "--data", "ravdess", "--data-root", str(ravdess_dir), "--limit", str(RAVDESS_SLICE),
                          "--device", "cpu", "--json", str(out)]) == 0
        scores[name] = json.loads(out.read_text())
    assert "onnxruntime" in scores["export"]["model_type"]
    assert scores["export"]["confusion"] == scores["checkpoint"]["confusion"]


def test_eval_names_the_closest_runtime(ravdess_dir, capsys):
    assert eval_main(["default-voice", "--data", "ravdess", "--data-root", str(ravdess_dir), "--limit", "2",
                      "--runtime", "onnxrt"]) == 2
    assert "did you mean 'onnxruntime'" in capsys.readouterr().err
