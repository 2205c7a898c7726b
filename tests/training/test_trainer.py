"""The one Trainer: run folder, dev-only selection, resume, accumulation, bucketing."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

import mmer
from mmer.models.base import MmerModel
from mmer.outputs import EmotionOutput
from mmer.registry import MODELS
from mmer.training.losses import cross_entropy
from mmer.training.trainer import LengthBucketSampler, Splits, StepOutput, Trainer, TrainerConfig

LABELS = ("a", "b", "c")
N_FEATURES = 6
BLOB_NOISE = 1.0  # overlapping blobs: dev F1 moves between epochs, so selection matters


@dataclass(frozen=True)
class ToyDims:
    label_set: str = "meld7"
    num_labels: int = 3
    in_dim: int = N_FEATURES


@MODELS.register("test_toy_mlp")
class ToyMLP(MmerModel):
    """A two-layer MLP: the smallest model that exercises checkpointing like the zoo's models."""

    registry_name = "test_toy_mlp"
    Dims = ToyDims

    def __init__(self, dims: ToyDims) -> None:
        super().__init__(dims)
        self.net = nn.Sequential(nn.Linear(dims.in_dim, 16), nn.ReLU(), nn.Linear(16, dims.num_labels))

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> EmotionOutput:
        logits = self.net(x)
        return EmotionOutput.from_logits(logits, {"toy": logits})


def toy_step(model: nn.Module, batch: dict) -> StepOutput:
    out = model(batch["x"])
    return StepOutput(cross_entropy(out.logits, batch["labels"]), out.logits, batch["labels"])


def blobs(n: int, seed: int) -> list[tuple[np.ndarray, int]]:
    """Three separable Gaussian blobs."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(123).normal(0, 1.0, size=(3, N_FEATURES))
    y = rng.integers(0, 3, size=n)
    x = centres[y] + rng.normal(0, BLOB_NOISE, size=(n, N_FEATURES))
    return [(x[i].astype(np.float32), int(y[i])) for i in range(n)]


def collate(items):
    return {"x": torch.tensor(np.stack([x for x, _ in items])), "labels": torch.tensor([y for _, y in items])}


def make_splits(with_test: bool = True) -> Splits:
    train = blobs(96, 1)
    return Splits(train=train, dev=blobs(30, 2), test=blobs(30, 3) if with_test else None, collate=collate,
                  lengths={"train": [i % 7 for i in range(len(train))]})


def cfg(**kw) -> TrainerConfig:
    base = dict(lr=5e-2, epochs=3, batch_size=8, eval_batch_size=16, warmup_ratio=0.1, progress=False, seed=3)
    base.update(kw)
    return TrainerConfig(**base)


def test_fit_writes_the_run_folder_and_selects_on_dev(tmp_path):
    torch.manual_seed(0)
    model = ToyMLP(ToyDims())
    result = Trainer(model, toy_step, make_splits(), cfg(), tmp_path, LABELS,
                     provenance={"dataset": "toy"}).fit()
    for name in ("config.yaml", "metrics.json", "report.txt", "confusion_matrix.png", "checkpoint/mmer.json",
                 "last_state.pt"):
        assert (tmp_path / name).is_file(), name
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics == result
    devs = [e["dev"]["weighted_f1"] for e in metrics["epochs"]]
    assert metrics["best_epoch"] == int(np.argmax(devs)) + 1     # first best on dev, never on test
    assert metrics["test"]["n"] == 30 and metrics["test"]["weighted_f1"] > 0.5
    losses = [e["train_loss"] for e in metrics["epochs"]]
    assert losses[-1] < losses[0]
    report = (tmp_path / "report.txt").read_text()
    assert "weighted avg" in report and "test, checkpoint of epoch" in report
    loaded = mmer.load(tmp_path / "checkpoint")
    prov = loaded.checkpoint_meta["provenance"]
    assert prov["dataset"] == "toy" and prov["best_epoch"] == metrics["best_epoch"]
    assert prov["split_sizes"] == {"train": 96, "dev": 30, "test": 30}
    assert prov["test_metrics"]["weighted_f1"] == pytest.approx(metrics["test"]["weighted_f1"])
    assert {"git_commit", "date", "device", "wall_time_s", "config"} <= set(prov)
    # the checkpoint holds the selected weights: it scores test exactly as reported
    x = torch.tensor(np.stack([x for x, _ in blobs(30, 3)]))
    y = np.array([y for _, y in blobs(30, 3)])
    acc = float((loaded(x).logits.argmax(-1).numpy() == y).mean())
    assert acc == pytest.approx(metrics["test"]["accuracy"])


def test_resume_continues_to_the_same_result(tmp_path):
    torch.manual_seed(0)
    full = Trainer(ToyMLP(ToyDims()), toy_step, make_splits(), cfg(), tmp_path / "full", LABELS).fit()
    torch.manual_seed(0)
    part = Trainer(ToyMLP(ToyDims()), toy_step, make_splits(), cfg(), tmp_path / "cut", LABELS)
    assert part.fit(stop_after_epoch=2)["stopped_after_epoch"] == 2
    assert not (tmp_path / "cut" / "report.txt").exists()
    with pytest.raises(FileExistsError, match="--resume"):
        Trainer(ToyMLP(ToyDims()), toy_step, make_splits(), cfg(), tmp_path / "cut", LABELS).fit()
    # a fresh process: different initial weights, restored from last_state.pt
    torch.manual_seed(99)
    resumed = Trainer(ToyMLP(ToyDims()), toy_step, make_splits(), cfg(), tmp_path / "cut", LABELS).fit(resume=True)
    assert len(resumed["epochs"]) == 3
    for a, b in zip(full["epochs"], resumed["epochs"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["lr"] == pytest.approx(b["lr"])
        assert a["dev"]["weighted_f1"] == pytest.approx(b["dev"]["weighted_f1"])
    assert resumed["best_epoch"] == full["best_epoch"]
    assert resumed["test"]["accuracy"] == pytest.approx(full["test"]["accuracy"])


def test_mid_epoch_crash_resumes_from_the_last_save(tmp_path):
    torch.manual_seed(0)
    full = Trainer(ToyMLP(ToyDims()), toy_step, make_splits(), cfg(), tmp_path / "full", LABELS).fit()
    calls = {"n": 0}

    def crashing_step(model, batch):
        calls["n"] += 1
        if model.training and calls["n"] == 20:   # 12 batches per epoch: dies in epoch 2, batch 8
            raise KeyboardInterrupt
        return toy_step(model, batch)

    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        Trainer(ToyMLP(ToyDims()), crashing_step, make_splits(), cfg(save_every_steps=5), tmp_path / "cut",
                 LABELS).fit()
    state = torch.load(tmp_path / "cut" / "last_state.pt", weights_only=True)
    assert (state["epoch"], state["batches_done"]) == (0, 3)   # saved at optimizer step 15 = epoch 2, batch 3
    torch.manual_seed(99)
    resumed = Trainer(ToyMLP(ToyDims()), toy_step, make_splits(), cfg(save_every_steps=5), tmp_path / "cut",
                      LABELS).fit(resume=True)
    # no dropout in the toy model and a deterministic batch order: the same run, step for step
    for a, b in zip(full["epochs"], resumed["epochs"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
    assert resumed["test"]["accuracy"] == pytest.approx(full["test"]["accuracy"])


def test_grad_accumulation_counts_optimizer_steps(tmp_path):
    torch.manual_seed(0)
    res = Trainer(ToyMLP(ToyDims()), toy_step, make_splits(with_test=False), cfg(epochs=1, grad_accum_steps=5,
                  warmup_ratio=0.0), tmp_path, LABELS).fit()
    # 96 items / batch 8 = 12 batches; accumulating 5 -> steps after batches 5, 10 and 12
    state = torch.load(tmp_path / "last_state.pt", weights_only=True)
    assert state["scheduler"]["last_epoch"] == 3
    assert res["epochs"][0]["lr"] == 0.0
    assert res["test"] is None and (tmp_path / "confusion_matrix.png").is_file()


def test_length_bucket_sampler_covers_everything_once():
    lengths = list(np.random.default_rng(0).integers(1, 100, size=103))
    s = LengthBucketSampler(lengths, 8, shuffle=True, seed=1)
    batches = list(s)
    assert sorted(i for b in batches for i in b) == list(range(103))
    assert len(batches) == len(s) == 13
    s.set_epoch(1)
    assert list(s) != batches
    sorted_batches = list(LengthBucketSampler(lengths, 8, shuffle=False))
    flat = [lengths[i] for b in sorted_batches for i in b]
    assert flat == sorted(lengths)


def test_cli_reports_config_mistakes_in_one_line(capsys):
    from mmer.training.cli import train_main

    assert train_main(["teacher", "--config", "mmer_meld_teacher", "optim.lrr=1e-5"]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'optim.lrr'" in err and "closest valid key: 'lr'" in err
    assert train_main(["student", "--config", "mmer_meld_student_audio", "teacher=null"]) == 2
    assert "needs teacher=" in capsys.readouterr().err
