"""The sentiment side: MMSA pickles, MMSA's metrics, `mmer-train msa` for the four models, seeds,
and their ONNX export with parity."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import mmer
from mmer.metrics import MSA_METRICS, SENTIMENT_CLASSES_7, msa_metrics
from mmer.training.cli import train_main
from mmer.training.datasets import DatasetError
from mmer.training.mmsa import load_mmsa, make_synthetic_mmsa

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MODELS = ("derl", "mmiln", "cenet", "cmath")
EPOCHS = 3
# Small but real sizes, so four models train in seconds on two cores.
SMALL = {"derl": ["model.overrides={hidden_dim: 16, num_heads: 2, num_layers: 1, ffn_dim: 32}"],
         "mmiln": ["model.overrides={hidden_dim: 16, num_heads: 2, num_layers: 1, ffn_dim: 32}"],
         "cenet": [],   # the default language model: the packaged MiniLM-L6
         "cmath": ["model.overrides={hidden_dim: 16, num_heads: 2, latent_dim: 8, cma_layers: 1}"]}


# -- metrics ----------------------------------------------------------------------------------
def test_msa_metrics_match_hand_computed_values():
    true = [0.0, 1.2, -2.5, 3.0, 0.5]
    pred = [0.1, 0.4, -0.2, 2.6, -0.5]
    m = msa_metrics(true, pred)
    # has0: truth >= 0 -> T T F T T; pred >= 0 -> T T F T F: 4 of 5 agree.
    assert m["acc2_has0"] == pytest.approx(0.8)
    # weighted F1 over {False: support 1, F1 2/3}, {True: support 4, F1 6/7}.
    assert m["f1_has0"] == pytest.approx((1 * 2 / 3 + 4 * 6 / 7) / 5)
    # non0 drops the zero label: truth > 0 -> T F T T, pred > 0 -> T F T F: 3 of 4.
    assert m["n_non0"] == 4 and m["acc2_non0"] == pytest.approx(0.75)
    assert m["f1_non0"] == pytest.approx((1 * 2 / 3 + 3 * 0.8) / 4)
    # Acc-7: round(clip) with halves to even: truth 0 1 -2 3 0, pred 0 0 -0 3 -0 -> 3 of 5.
    assert m["acc7"] == pytest.approx(0.6)
    # Acc-5 clips to [-2, 2] first: truth 0 1 -2 2 0, pred 0 0 0 2 0 -> 3 of 5.
    assert m["acc5"] == pytest.approx(0.6)
    assert m["mae"] == pytest.approx(np.mean(np.abs(np.subtract(pred, true))))
    assert m["corr"] == pytest.approx(np.corrcoef(pred, true)[0, 1])
    assert set(MSA_METRICS) <= set(m)
    assert np.asarray(m["confusion"]).sum() == 5


def test_msa_metrics_zero_label_edge_cases():
    # Every label 0: the non-0 split is empty, so its metrics are undefined (None), not a crash.
    m = msa_metrics([0.0, 0.0, 0.0], [0.3, -0.2, 0.0])
    assert m["acc2_non0"] is None and m["f1_non0"] is None and m["n_non0"] == 0
    assert m["acc2_has0"] == pytest.approx(2 / 3)        # 0 counts as non-negative for has0
    assert m["corr"] is None                             # constant truth: Pearson undefined
    # A prediction of exactly 0 is "non-negative" for has0 but "not positive" for non0.
    m = msa_metrics([1.0, -1.0], [0.0, 0.0])
    assert m["acc2_has0"] == pytest.approx(0.5) and m["acc2_non0"] == pytest.approx(0.5)
    assert m["corr"] is None                             # constant prediction
    with pytest.raises(ValueError, match="NaN"):
        msa_metrics([1.0], [float("nan")])


# -- MMSA pickles -----------------------------------------------------------------------------
def _write(path: Path, data: dict) -> Path:
    with open(path, "wb") as f:
        pickle.dump(data, f)
    return path


def test_synthetic_file_has_the_mmsa_layout_and_loads(tmp_path):
    path = tmp_path / "tiny.pkl"
    make_synthetic_mmsa(path, sizes=(20, 6, 6), dims=(768, 5, 20))
    raw = pickle.loads(path.read_bytes())
    assert set(raw) == {"train", "valid", "test"}
    keys = {"raw_text", "text", "text_bert", "audio", "vision", "audio_lengths", "vision_lengths", "id",
            "regression_labels", "annotations"}
    assert keys <= set(raw["train"])
    assert raw["train"]["text"].shape[2] == 768 and raw["train"]["text_bert"].shape[1] == 3
    assert np.isneginf(raw["train"]["audio"]).any()       # MOSEI-style -inf values are present ...
    splits = load_mmsa(path)
    assert all(np.isfinite(s.audio).all() for s in splits.values())   # ... and become 0 on load
    assert splits["train"].non_finite == int(np.isneginf(raw["train"]["audio"]).sum())
    assert splits["train"].dims() == {"text_dim": 768, "audio_dim": 5, "vision_dim": 20}


def test_aligned_file_takes_lengths_from_the_text_mask(tmp_path):
    path = tmp_path / "aligned.pkl"
    raw = make_synthetic_mmsa(path, sizes=(8, 4, 4), aligned=True)
    assert "audio_lengths" not in raw["train"]
    train = load_mmsa(path)["train"]
    assert (train.audio_lengths == raw["train"]["text_bert"][:, 1].sum(axis=1)).all()


@pytest.mark.parametrize("breakage, message", [
    (lambda d: d["valid"].pop("vision"), "split 'valid', key 'vision': missing"),
    (lambda d: d["test"].update(audio=d["test"]["audio"][:, :, :2]), "split 'test', key 'audio': feature width 2"),
    (lambda d: d["train"].update(text_bert=d["train"]["text_bert"][:, :2]), r"expected \(8, 3, 12\)"),
    (lambda d: d["train"].update(vision=d["train"]["vision"][:5]), r"key 'vision': shape \(5, 16, 20\), expected \(8, L, D\)"),
    (lambda d: d["train"].pop("audio_lengths"), "key 'audio_lengths': missing while the other length key"),
    (lambda d: d["valid"].update(vision_lengths=d["valid"]["vision_lengths"] + 100), "values must lie in 0..16"),
    (lambda d: d.pop("test"), r"expected top-level keys \['train', 'valid', 'test'\]"),
])
def test_broken_files_name_split_key_and_expected_shape(tmp_path, breakage, message):
    data = make_synthetic_mmsa(sizes=(8, 4, 4))
    breakage(data)
    path = _write(tmp_path / "broken.pkl", data)
    with pytest.raises(DatasetError, match=message) as info:
        load_mmsa(path)
    assert str(path) in str(info.value)


def test_missing_file_says_how_to_make_one(tmp_path):
    with pytest.raises(DatasetError, match="python -m mmer.training.mmsa"):
        load_mmsa(tmp_path / "absent.pkl")


# -- mmer-train msa ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_pkl(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("mmsa") / "tiny.pkl"
    make_synthetic_mmsa(path, sizes=(96, 32, 32), dims=(32, 5, 20), seed=3)
    return path


# run name -> (x, y) tick labels of the figure behind its confusion_matrix.png
CONFUSION_TICKS: dict[str, tuple[list[str], list[str]]] = {}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_pkl) -> dict[str, Path]:
    """One `mmer-train msa` run per model, through the command-line entry point; the tick labels
    of each run's confusion picture land in CONFUSION_TICKS."""
    import mmer.metrics

    torch.set_num_threads(1)
    out = {}
    draw = mmer.metrics.confusion_figure
    with pytest.MonkeyPatch.context() as mp:
        for name in MODELS:
            def recorded(*args, name=name, **kwargs):
                fig = draw(*args, **kwargs)
                ax = fig.axes[0]
                CONFUSION_TICKS[name] = ([t.get_text() for t in ax.get_xticklabels()],
                                         [t.get_text() for t in ax.get_yticklabels()])
                return fig

            mp.setattr(mmer.metrics, "confusion_figure", recorded)
            run = tmp_path_factory.mktemp(f"run_{name}")
            code = train_main(["msa", "--model", name, "--data", str(tiny_pkl), "--out", str(run),
                               f"optim.epochs={EPOCHS}", "optim.lr=3e-3" if name != "cenet" else "optim.lr=1e-4",
                               "optim.progress=false", *SMALL[name]])
            assert code == 0, name
            out[name] = run
    return out


@pytest.mark.parametrize("name", MODELS)
def test_msa_run_writes_every_artifact_and_learns(runs, tiny_pkl, name):
    run = runs[name]
    for artifact in ("config.yaml", "metrics.json", "report.txt", "confusion_matrix.png", "checkpoint/mmer.json",
                     "checkpoint/model.safetensors"):
        assert (run / artifact).is_file(), artifact
    assert (run / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The picture's rows and columns are the Acc-7 bins, named on both axes.
    assert CONFUSION_TICKS[name] == (list(SENTIMENT_CLASSES_7), list(SENTIMENT_CLASSES_7))
    assert SENTIMENT_CLASSES_7 == ("-3", "-2", "-1", "0", "1", "2", "3")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["task"] == "regression" and metrics["selection"] == "dev mae (min)"
    test = metrics["test"]
    assert set(MSA_METRICS) <= set(test)
    losses = [e["train_loss"] for e in metrics["epochs"]]
    assert losses[-1] < losses[0], losses
    # Better than predicting the training mean on the test split.
    splits = load_mmsa(tiny_pkl)
    mean_mae = float(np.mean(np.abs(splits["test"].labels - splits["train"].labels.mean())))
    assert test["mae"] < mean_mae, (test["mae"], mean_mae)
    # Selection used the valid split only: the best epoch is the one with the lowest dev MAE.
    dev_mae = [e["dev"]["mae"] for e in metrics["epochs"]]
    assert metrics["best_epoch"] == int(np.argmin(dev_mae)) + 1
    assert "Acc-7" in (run / "report.txt").read_text()
    if name == "cenet":   # a fine-tuned language model gets its own, small rate by default
        import yaml
        assert yaml.safe_load((run / "config.yaml").read_text())["optim"]["lr_by_prefix"] == {"text.encoder": 5e-5}
    # The checkpoint reloads without any YAML and reproduces the run's test MAE.
    model = mmer.load(run / "checkpoint")
    assert model.registry_name == name
    from mmer.training.mmsa import MmsaDataset, mmsa_collate
    batch = mmsa_collate(model.text_input)([MmsaDataset(splits["test"])[i] for i in range(len(splits["test"]))])
    with torch.no_grad():
        pred = model(batch["text"], batch["text_mask"], batch["audio"], batch["audio_lengths"], batch["vision"],
                     batch["vision_lengths"]).prediction.view(-1).numpy()
    assert np.mean(np.abs(pred - splits["test"].labels)) == pytest.approx(test["mae"], abs=1e-5)


def test_seeds_give_mean_and_sample_std(tmp_path, tiny_pkl):
    out = tmp_path / "seeds"
    code = train_main(["msa", "--model", "cmath", "--data", str(tiny_pkl), "--out", str(out), "--seeds", "1", "2",
                       "optim.epochs=1", "optim.progress=false", *SMALL["cmath"]])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seeds"] == [1, 2]
    per_seed = [json.loads((out / f"seed_{s}" / "metrics.json").read_text())["test"] for s in (1, 2)]
    for key in MSA_METRICS:
        values = [m[key] for m in per_seed]
        assert summary["test"][key]["values"] == pytest.approx(values)
        assert summary["test"][key]["mean"] == pytest.approx(np.mean(values))
        assert summary["test"][key]["std"] == pytest.approx(np.std(values, ddof=1))
    assert per_seed[0]["mae"] != per_seed[1]["mae"]    # the seed reaches the weights


def test_cmath_trains_as_an_emotion_classifier(tmp_path):
    data = tmp_path / "meld_features.pkl"
    make_synthetic_mmsa(data, sizes=(96, 32, 32), num_classes=7, seed=4)
    out = tmp_path / "cmath_meld"
    code = train_main(["msa", "--config", "cmath_meld", "--data", str(data), "--out", str(out), "optim.epochs=2",
                       "optim.lr=3e-3", "optim.progress=false", *SMALL["cmath"]])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "classification" and metrics["selection"] == "dev weighted_f1 (max)"
    assert {"weighted_f1", "accuracy", "macro_f1", "per_class"} <= set(metrics["test"])
    assert list(metrics["test"]["per_class"]) == list(mmer.labels.get_label_set("meld7").labels)


def test_bad_msa_settings_are_one_line_errors(tmp_path, tiny_pkl, capsys):
    assert train_main(["msa", "--model", "derl", "--data", str(tmp_path / "absent.pkl")]) == 2
    assert "absent.pkl: no such file" in capsys.readouterr().err
    assert train_main(["msa", "--model", "derl", "--data", str(tiny_pkl), "model.overrides={hiden_dim: 8}"]) == 2
    assert "hidden_dim" in capsys.readouterr().err            # the closest valid key is named
    assert train_main(["msa", "--model", "derl", "--data", str(tiny_pkl), "--out", str(tmp_path / "r"),
                       "optim.lr_by_prefix={text.encoder: 1e-5}"]) == 2
    assert "lr_by_prefix" in capsys.readouterr().err           # features mode has no language model
    assert train_main(["teacher", "--seeds", "1"]) == 2


def test_lr_by_prefix_gives_groups_their_rate(tmp_path, tiny_pkl):
    from mmer.training.recipes import load_recipe
    from mmer.training.sentiment import build_msa_model
    from mmer.training.trainer import Trainer

    recipe = load_recipe("msa", None, [f"data.path={tiny_pkl}", "model.name=mmiln", "optim.lr=1e-3",
                                       "optim.lr_by_prefix={audio_lstm: 5e-3, vision_lstm: 1e-4}", *SMALL["mmiln"]])
    model = build_msa_model(recipe, {"text_dim": 32, "audio_dim": 5, "vision_dim": 20})
    trainer = Trainer(model, lambda m, b: None, None, recipe.optim, tmp_path, (), task="regression")
    optimizer = trainer._optimizer()
    rate_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        expected = 5e-3 if name.startswith("audio_lstm") else 1e-4 if name.startswith("vision_lstm") else 1e-3
        assert rate_of[id(p)] == expected, name


# -- export -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", MODELS)
def test_msa_models_export_to_onnx_with_parity(runs, tmp_path, name):
    from mmer.export import export

    model = mmer.load(runs[name] / "checkpoint")
    result = export(model, "onnx", tmp_path / name, source=str(runs[name]))
    assert result.parity["passed"] is True
    assert set(result.parity["outputs"]) == {"score", "fused"}
    assert result.parity["outputs"]["score"]["max_abs"] <= 1e-4
    assert result.parity["top1_agreement"] == 1.0
    assert result.card["outputs"] == ["score", "fused"]


def test_sentiment_models_refuse_engine_formats(runs, tmp_path):
    from mmer.export import export
    from mmer.export.onnx_export import ExportError

    with pytest.raises(ExportError, match="ONNX formats only"):
        export(mmer.load(runs["derl"] / "checkpoint"), "trtrtx-fp16", tmp_path / "engine")
