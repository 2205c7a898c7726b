"""One Trainer for every stage (teacher, students, fusion, voice), parameterised by model,
step function and data.

What a run does: AdamW; linear warm-up/decay counted in optimizer steps (training/schedule.py);
gradient clipping and accumulation; autocast (bf16, else fp16 + GradScaler) on CUDA, float32 on
CPU; fixed seeds (re-seeded per epoch, so a resumed run continues the same random stream);
model selection on the dev split only (weighted F1 for classes, MAE for sentiment scores). The
test split is scored once, at the end, with the selected checkpoint. After every epoch
``last_state.pt`` (weights, optimizer, scheduler, epoch, history) lets ``fit(resume=True)``
continue an interrupted run;
``save_every_steps`` adds mid-epoch saves for runs whose epochs take hours (a resumed
mid-epoch run skips the batches already trained; its dropout stream then differs).

The run folder::

    config.yaml           the resolved config (mmer.config.save_config)
    metrics.json          per-epoch train loss / lr / dev metrics, best epoch, final test metrics
    report.txt            per-class precision/recall/F1/support (sklearn layout), dev and test
    confusion_matrix.png  test confusion matrix (dev when there is no test split)
    checkpoint/           the selected model (mmer.checkpoint.save_checkpoint, with provenance)
    last_state.pt         resume state (read back with torch.load(weights_only=True))

Multi-GPU: launched by torchrun (env RANK / WORLD_SIZE / LOCAL_RANK), the Trainer joins the
process group (training/distributed.py), wraps the model in DistributedDataParallel and shards
the training set with a DistributedSampler (length bucketing is then off). Rank 0 alone scores
dev and test and writes the run folder; the other ranks wait for it at the end of each epoch.
``batch_size`` is per process: the effective batch is batch_size x world size x grad_accum_steps,
and the learning rate is used as given (docs/training_scale.md)::

    torchrun --standalone --nproc_per_node=4 -m mmer.training.cli teacher --config configs/meld_teacher.yaml
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import random
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from mmer.checkpoint import WEIGHTS, save_checkpoint
from mmer.config import ConfigError, bounded, save_config, to_dict
from mmer.metrics import (classification_metrics, format_msa_report, format_report, msa_metrics,
                          save_confusion_png)
from mmer.training.distributed import init_distributed, rank, world_size
from mmer.training.schedule import make_scheduler, total_optimizer_steps, warmup_steps_for

BUCKET_SIZE_BATCHES = 50   # length bucketing sorts within pools of this many batches
LAST_STATE = "last_state.pt"
CHECKPOINT_DIR = "checkpoint"
SELECTION_METRIC = "weighted_f1"   # classification runs select on dev weighted F1 (TelME's practice)


@dataclass
class TrainerConfig:
    """Optimisation settings shared by every stage (TelME values in REFERENCE.md section 2)."""

    lr: float = bounded(1e-5, gt=0, le=1)
    weight_decay: float = bounded(0.01, ge=0, le=1)
    epochs: int = bounded(10, ge=1, le=10_000)
    batch_size: int = bounded(4, ge=1, le=65_536)
    eval_batch_size: int = bounded(32, ge=1, le=65_536)
    grad_accum_steps: int = bounded(1, ge=1, le=4096)
    grad_clip_norm: float = bounded(10.0, ge=0)   # TelME clips at 10; 0 turns clipping off
    warmup_ratio: float = bounded(0.1, ge=0, le=1)   # fraction of all optimizer steps
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"   # auto: bf16/fp16 on CUDA, off on CPU
    seed: int = bounded(42, ge=0, le=2**32 - 1)   # numpy's seed range
    device: str = "auto"                  # auto, cpu, cuda, cuda:1 ...
    num_workers: int = bounded(0, ge=0, le=256)
    bucket_by_length: bool = True         # batches of similar length: less padding, less compute
    save_every_steps: int = bounded(0, ge=0)   # also save last_state.pt every N optimizer steps (0: epoch ends only)
    progress: bool = True
    # Learning rates per parameter-name prefix, e.g. {"text.encoder": 1e-5}: a fine-tuned language
    # model usually wants a smaller rate than the layers trained from scratch (DERL, MMILN, CENet).
    lr_by_prefix: dict = field(default_factory=dict)


@dataclass
class StepOutput:
    """What a stage's step function returns for one batch.

    loss: scalar to back-propagate; logits: (B, C); labels: (B,) int64; parts: floats to log.
    """

    loss: torch.Tensor
    logits: torch.Tensor
    labels: torch.Tensor
    parts: dict[str, float] = field(default_factory=dict)


StepFn = Callable[[nn.Module, dict], StepOutput]


class ClassificationTask:
    """Scores class logits: per-class report, weighted/macro F1, confusion matrix; selects on
    dev weighted F1 (higher is better)."""

    name = "classification"
    selection_metric = SELECTION_METRIC
    higher_is_better = True

    def score(self, outputs: np.ndarray, targets: np.ndarray, labels: Sequence[str]) -> dict:
        """outputs: (N, C) logits; targets: (N,) class ids."""
        return classification_metrics(targets.astype(np.int64), outputs.argmax(axis=-1), labels)

    def report(self, metrics: dict) -> str:
        return format_report(metrics)

    def summary(self, metrics: dict) -> str:
        return (f"weighted F1 {metrics['weighted_f1']:.4f}  acc {metrics['accuracy']:.4f}  "
                f"macro F1 {metrics['macro_f1']:.4f}")


class RegressionTask:
    """Scores one sentiment score per sample with MMSA's metrics (mmer.metrics.msa_metrics);
    selects on dev MAE (lower is better; MMSA selects on the validation L1 loss, the same number).
    The picture is the confusion matrix of the rounded scores (the Acc-7 bins)."""

    name = "regression"
    selection_metric = "mae"
    higher_is_better = False

    def score(self, outputs: np.ndarray, targets: np.ndarray, labels: Sequence[str] = ()) -> dict:
        """outputs: (N, 1) or (N,) scores; targets: (N,) scores."""
        return msa_metrics(targets, outputs.reshape(-1))

    def report(self, metrics: dict) -> str:
        return format_msa_report(metrics)

    def summary(self, metrics: dict) -> str:
        corr = "n/a" if metrics["corr"] is None else f"{metrics['corr']:.4f}"
        return f"MAE {metrics['mae']:.4f}  corr {corr}  Acc-2 {metrics['acc2_has0']:.4f}  Acc-7 {metrics['acc7']:.4f}"


TASKS = {"classification": ClassificationTask(), "regression": RegressionTask()}


@dataclass
class Splits:
    """The data of a run: datasets, their collate function, and per-item lengths for bucketing."""

    train: Dataset
    dev: Dataset
    test: Dataset | None
    collate: Callable[[list], dict]
    lengths: dict[str, Sequence[int]] = field(default_factory=dict)   # split name -> cost per item

    def sizes(self) -> dict[str, int]:
        return {name: len(ds) for name, ds in (("train", self.train), ("dev", self.dev), ("test", self.test))
                if ds is not None}


class LengthBucketSampler(Sampler[list[int]]):
    """Batches of similar length (less padding): shuffle, sort within pools, shuffle the batches.

    ``shuffle=False`` gives batches in plain sorted order, for evaluation.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, shuffle: bool, seed: int = 0) -> None:
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)

    def __iter__(self):
        n, bs = len(self.lengths), self.batch_size
        if not self.shuffle:
            order = np.argsort(self.lengths, kind="stable")
            yield from (order[i:i + bs].tolist() for i in range(0, n, bs))
            return
        rng = np.random.default_rng(self.seed + self.epoch)
        perm = rng.permutation(n)
        pool = bs * BUCKET_SIZE_BATCHES
        batches = []
        for start in range(0, n, pool):
            chunk = perm[start:start + pool]
            chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
            batches += [chunk[i:i + bs].tolist() for i in range(0, len(chunk), bs)]
        for i in rng.permutation(len(batches)):
            yield batches[i]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``amp`` on ``device``; None = float32 (always on CPU)."""
    if device.type != "cuda" or amp == "off":
        return None
    if amp == "bf16" or (amp == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def eval_loader(dataset: Dataset, collate: Callable, batch_size: int, lengths: Sequence[int] | None = None,
                num_workers: int = 0) -> DataLoader:
    """Deterministic batches for scoring (length-sorted when lengths are known)."""
    if lengths is not None:
        return DataLoader(dataset, batch_sampler=LengthBucketSampler(lengths, batch_size, shuffle=False),
                          collate_fn=collate, num_workers=num_workers)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate, num_workers=num_workers)


@torch.no_grad()
def predict(model: nn.Module, step_fn: StepFn, loader: DataLoader, device: torch.device,
            amp_dtype: torch.dtype | None = None, progress: bool = False,
            desc: str = "eval") -> tuple[np.ndarray, np.ndarray, float]:
    """Run ``step_fn`` in eval mode over ``loader``: (outputs (N, K) float32, targets (N,), mean loss).

    Outputs are the step's ``logits`` as they are: class scores, or sentiment scores (N, 1)."""
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    preds, trues, loss_sum, n = [], [], 0.0, 0
    for batch in tqdm(loader, desc=desc, disable=not progress, leave=False):
        batch = to_device(batch, device)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            out = step_fn(model, batch)
        preds.append(out.logits.detach().float().cpu())
        trues.append(out.labels.cpu())
        loss_sum += float(out.loss) * len(out.labels)
        n += len(out.labels)
    model.train(was_training)
    return torch.cat(preds).numpy(), torch.cat(trues).numpy(), loss_sum / max(n, 1)


def git_commit() -> str | None:
    """The repository's HEAD commit, if this source tree is a git checkout (read-only)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def _summary(metrics: dict) -> dict:
    """Metrics without the confusion matrix, for provenance and logs."""
    return {k: v for k, v in metrics.items() if k not in ("confusion", "labels")}


class Trainer:
    """Fits ``model`` with ``step_fn`` on ``splits``; writes the run folder ``run_dir``.

    model: the module whose trainable parameters (``requires_grad``) are optimised and which is
        saved as the checkpoint (an :class:`mmer.models.base.MmerModel`).
    step_fn: ``(model, batch) -> StepOutput``; the same function trains and scores (under
        ``no_grad`` in eval mode). Frozen teachers live inside the step function or its cache.
    labels: class names in logit order (for reports).
    run_config: the resolved config dataclass, saved as config.yaml and into the provenance.
    provenance: extra facts for the checkpoint (dataset, stage, teacher checkpoint ...).
    task: "classification" (default) or "regression": how outputs are scored and which dev
        metric selects the checkpoint (see :class:`ClassificationTask`, :class:`RegressionTask`).
    """

    def __init__(self, model: nn.Module, step_fn: StepFn, splits: Splits, cfg: TrainerConfig, run_dir: str | Path,
                 labels: Sequence[str], run_config: Any = None, provenance: dict | None = None,
                 checkpoint_dtype: torch.dtype | None = None, task: str = "classification") -> None:
        if task not in TASKS:
            raise ValueError(f"task must be one of {sorted(TASKS)}, got {task!r}")
        self.task = TASKS[task]
        self.model, self.step_fn, self.splits, self.cfg = model, step_fn, splits, cfg
        self.run_dir = Path(run_dir)
        self.labels = list(labels)
        self.run_config = run_config if run_config is not None else cfg
        self.provenance = dict(provenance or {})
        self.checkpoint_dtype = checkpoint_dtype
        self.world_size, self.rank = world_size(), rank()
        self.distributed = self.world_size > 1
        self.device = init_distributed(cfg.device) if self.distributed else resolve_device(cfg.device)
        self.is_main = self.rank == 0
        self.amp_dtype = autocast_dtype(cfg.amp, self.device)

    # -- setup -------------------------------------------------------------------------
    def _train_loader(self) -> tuple[DataLoader, Sampler | None, torch.Generator | None]:
        """The shuffled training loader, and its sampler or generator (re-seeded every epoch)."""
        cfg, ds = self.cfg, self.splits.train
        lengths = self.splits.lengths.get("train")
        if self.distributed:
            sampler = DistributedSampler(ds, shuffle=True, seed=cfg.seed)
            return DataLoader(ds, batch_size=cfg.batch_size, sampler=sampler, collate_fn=self.splits.collate,
                              num_workers=cfg.num_workers), sampler, None
        if cfg.bucket_by_length and lengths is not None:
            sampler = LengthBucketSampler(lengths, cfg.batch_size, shuffle=True, seed=cfg.seed)
            return DataLoader(ds, batch_sampler=sampler, collate_fn=self.splits.collate,
                              num_workers=cfg.num_workers), sampler, None
        gen = torch.Generator().manual_seed(cfg.seed)
        return DataLoader(ds, batch_size=cfg.batch_size, shuffle=True, generator=gen,
                          collate_fn=self.splits.collate, num_workers=cfg.num_workers), None, gen

    def _optimizer(self) -> torch.optim.Optimizer:
        """AdamW over the trainable parameters; biases and norm gains (1-D) are not decayed, as in
        BERT-style fine-tuning; ``lr_by_prefix`` gives parameter groups their own rate."""
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        prefixes = sorted(self.cfg.lr_by_prefix, key=len, reverse=True)   # the longest prefix wins
        unused = [k for k in prefixes if not any(n.startswith(k) for n, _ in named)]
        if unused:
            raise ConfigError(f"optim.lr_by_prefix: no trainable parameter name starts with {unused}; "
                             f"names start with {sorted({n.split('.')[0] for n, _ in named})}")
        groups: dict[tuple[float, bool], list[nn.Parameter]] = {}
        for name, p in named:
            lr = next((float(self.cfg.lr_by_prefix[k]) for k in prefixes if name.startswith(k)), self.cfg.lr)
            groups.setdefault((lr, p.ndim >= 2), []).append(p)
        return torch.optim.AdamW([{"params": ps, "lr": lr, "weight_decay": self.cfg.weight_decay if decay else 0.0}
                                  for (lr, decay), ps in groups.items()], lr=self.cfg.lr)

    def _score(self, module: nn.Module, split: str) -> tuple[dict, float]:
        ds = getattr(self.splits, split)
        loader = eval_loader(ds, self.splits.collate, self.cfg.eval_batch_size, self.splits.lengths.get(split),
                             self.cfg.num_workers)
        outputs, true, loss = predict(module, self.step_fn, loader, self.device, self.amp_dtype,
                                      progress=self.cfg.progress and self.is_main, desc=split)
        metrics = self.task.score(outputs, true, self.labels)
        metrics["loss"] = loss
        return metrics, loss

    # -- run ---------------------------------------------------------------------------
    def fit(self, resume: bool = False, stop_after_epoch: int | None = None) -> dict:
        """Train, select on dev, score test once; returns the final metrics.json content.

        resume: continue from ``last_state.pt`` in the run folder (refused without it when one exists).
        stop_after_epoch: end the process's work after this (1-based) epoch without the final test
            scoring, leaving ``last_state.pt`` to resume from (for time-sliced jobs); returns
            the metrics so far.
        """
        from tqdm.auto import tqdm

        cfg = self.cfg
        start_wall = time.perf_counter()
        state_path = self.run_dir / LAST_STATE
        if state_path.exists() and not resume:
            raise FileExistsError(f"{self.run_dir} already holds a run ({LAST_STATE}); pass --resume to continue it "
                                  f"or choose another --out folder")
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(self.run_config, self.run_dir / "config.yaml")
        seed_everything(cfg.seed)
        self.model.to(self.device)
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no trainable parameters")
        net: nn.Module = self.model
        if self.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            net = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        loader, sampler, generator = self._train_loader()
        total = total_optimizer_steps(len(loader), cfg.epochs, cfg.grad_accum_steps)
        warmup = warmup_steps_for(total, cfg.warmup_ratio)
        optimizer = self._optimizer()
        scheduler = make_scheduler(optimizer, total, warmup)
        use_scaler = self.amp_dtype == torch.float16
        scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
        history: list[dict] = []
        key = self.task.selection_metric
        best = {"epoch": -1, key: -math.inf if self.task.higher_is_better else math.inf, "dev": None}
        first_epoch = 0
        if resume and state_path.exists():
            state = torch.load(state_path, map_location="cpu", weights_only=True)
            self.model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            if use_scaler and state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
            history, best, first_epoch = state["history"], state["best"], state["epoch"] + 1
            resume_batches, resume_partial = state.get("batches_done", 0), state.get("partial", {})
            wall_before = float(state.get("wall_time_s", 0.0))
        else:
            resume_batches, resume_partial, wall_before = 0, {}, 0.0
        if self.distributed:
            self._check_same_start(first_epoch, resume_batches)
        if self.is_main:
            ranks = f" x {self.world_size} processes" if self.distributed else ""
            print(f"[mmer-train] device={self.device} amp={self.amp_dtype} train={len(self.splits.train)} "
                  f"steps={total} (warm-up {warmup}) batch {cfg.batch_size}{ranks} x accumulation "
                  f"{cfg.grad_accum_steps} = {cfg.batch_size * self.world_size * cfg.grad_accum_steps} "
                  f"run_dir={self.run_dir}", flush=True)

        def save_state(epoch_done: int, batches_done: int, partial: dict) -> None:
            """Write last_state.pt atomically: after ``epoch_done`` (0-based, -1 = none) plus
            ``batches_done`` batches of the next epoch (mid-epoch saves, ``save_every_steps``)."""
            if not self.is_main:
                return
            tmp = state_path.with_suffix(".tmp")
            torch.save({"model": self.model.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if use_scaler else {},
                        "epoch": epoch_done, "batches_done": batches_done, "partial": partial,
                        "history": history, "best": best,
                        "wall_time_s": wall_before + time.perf_counter() - start_wall}, tmp)
            os.replace(tmp, state_path)

        for epoch in range(first_epoch, cfg.epochs):
            seed_everything(cfg.seed + epoch)  # same dropout/shuffle stream whether resumed or not
            if sampler is not None:
                sampler.set_epoch(epoch)
            if generator is not None:
                generator.manual_seed(cfg.seed + epoch)
            net.train()
            skip = resume_batches if epoch == first_epoch else 0
            partial = resume_partial if skip else {"loss_sum": 0.0, "n_seen": 0, "parts": {}}
            micro = 0
            bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not (cfg.progress and self.is_main))
            optimizer.zero_grad(set_to_none=True)
            for i, batch in enumerate(bar):
                if i < skip:  # resumed mid-epoch: these batches were trained before the interruption
                    continue
                batch = to_device(batch, self.device)
                with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                    out = self.step_fn(net, batch)
                scaler.scale(out.loss / cfg.grad_accum_steps).backward()
                micro += 1
                n = len(out.labels)
                partial["loss_sum"] += float(out.loss.detach()) * n
                partial["n_seen"] += n
                for k, v in out.parts.items():
                    partial["parts"][k] = partial["parts"].get(k, 0.0) + v * n
                if micro == cfg.grad_accum_steps or i == len(loader) - 1:
                    if cfg.grad_clip_norm > 0:
                        scaler.unscale_(optimizer)
                        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip_norm)
                    scaler.step(optimizer)
                    scaler.update()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    micro = 0
                    if cfg.save_every_steps and scheduler.last_epoch % cfg.save_every_steps == 0 \
                            and i < len(loader) - 1:
                        save_state(epoch - 1, i + 1, partial)
                bar.set_postfix(loss=f"{partial['loss_sum'] / max(partial['n_seen'], 1):.4f}",
                                lr=f"{optimizer.param_groups[0]['lr']:.2e}")
            # Rank 0 alone scores dev; the others wait at the barrier below. Every rank holds the
            # same weights, so more copies of the score would only cost time. (Train loss and
            # parts are rank 0's shard of the epoch.)
            dev = self._score(self.model, "dev")[0] if self.is_main else None
            seen = max(partial["n_seen"], 1)
            row = {"epoch": epoch + 1, "train_loss": partial["loss_sum"] / seen,
                   "train_parts": {k: v / seen for k, v in partial["parts"].items()},
                   "lr": optimizer.param_groups[0]["lr"], "dev": dev}
            history.append(row)
            improved = dev is not None and (dev[key] > best[key] if self.task.higher_is_better
                                            else dev[key] < best[key])
            if improved:
                best = {"epoch": epoch + 1, key: dev[key], "dev": dev}
            if self.is_main:
                print(f"[mmer-train] epoch {epoch + 1}: train loss {row['train_loss']:.4f}  dev "
                      f"{self.task.summary(dev)}{'  (best)' if improved else ''}", flush=True)
                if improved:
                    self._save_checkpoint(best, None, wall_before + time.perf_counter() - start_wall)
                self._write_metrics(history, best, None)
            save_state(epoch, 0, {})
            if self.distributed:
                torch.distributed.barrier()
            if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch and epoch + 1 < cfg.epochs:
                return {"history": history, "best": best, "stopped_after_epoch": epoch + 1}
        return self._finish(history, best, wall_before + time.perf_counter() - start_wall)

    def _check_same_start(self, first_epoch: int, batches_done: int) -> None:
        """Refuse a resume in which the ranks would start from different points (they would wait
        for each other forever): every rank reads rank 0's last_state.pt, so the run folder must
        be on a filesystem that every node sees."""
        starts: list = [None] * self.world_size
        torch.distributed.all_gather_object(starts, (first_epoch, batches_done))
        if len(set(starts)) > 1:
            raise FileNotFoundError(
                f"the {self.world_size} processes would resume from different points (epoch, batch per rank: "
                f"{starts}): every rank reads {self.run_dir / LAST_STATE}, so the run folder must be on a "
                f"filesystem that every node shares")

    def _finish(self, history: list[dict], best: dict, wall: float) -> dict:
        """Reload the selected weights, score test once, write report, picture and checkpoint."""
        from safetensors.torch import load_file

        result = {"history": history, "best": best}
        if not self.is_main:   # training is over for this rank: rank 0 scores test and writes alone
            return result
        if best["epoch"] < 0:
            raise RuntimeError("no epoch was trained; nothing to select")
        state = load_file(str(self.run_dir / CHECKPOINT_DIR / WEIGHTS))
        expected = self.model.state_dict()
        self.model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items() if k in expected},
                                   strict=False)
        test = self._score(self.model, "test")[0] if self.splits.test is not None else None
        self._write_metrics(history, best, test)
        final = test or best["dev"]
        # A regression task's bins (Acc-7: -3..3) come with its metrics; a classifier's are its labels.
        save_confusion_png(final["confusion"], final.get("labels") or self.labels,
                           self.run_dir / "confusion_matrix.png",
                           title=f"{'test' if test else 'dev'} (best epoch {best['epoch']})")
        text = f"dev, best epoch {best['epoch']}\n{self.task.report(best['dev'])}"
        if test:
            text += f"\ntest, checkpoint of epoch {best['epoch']}\n{self.task.report(test)}"
        (self.run_dir / "report.txt").write_text(text, encoding="utf-8")
        print(text, flush=True)
        self._save_checkpoint(best, test, wall)
        return json.loads((self.run_dir / "metrics.json").read_text(encoding="utf-8"))

    def _selection(self) -> str:
        return f"dev {self.task.selection_metric} ({'max' if self.task.higher_is_better else 'min'})"

    def _write_metrics(self, history: list[dict], best: dict, test: dict | None) -> None:
        data = {"task": self.task.name, "selection": self._selection(), "best_epoch": best["epoch"], "epochs": history,
                "best_dev": best["dev"], "test": test}
        (self.run_dir / "metrics.json").write_text(json.dumps(data, indent=2), encoding="utf-8")

    def _save_checkpoint(self, best: dict, test: dict | None, wall: float) -> None:
        provenance = {
            **self.provenance,
            "split_sizes": self.splits.sizes(),
            "config": to_dict(self.run_config),
            "best_epoch": best["epoch"],
            "selection": self._selection(),
            "dev_metrics": _summary(best["dev"]),
            "test_metrics": _summary(test) if test else None,
            "git_commit": git_commit(),
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "device": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu",
            "wall_time_s": round(wall, 1),
        }
        save_checkpoint(self.model, self.run_dir / CHECKPOINT_DIR, provenance, dtype=self.checkpoint_dtype)
