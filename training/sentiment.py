"""The ``msa`` stage: DERL, MMILN, CENet or CMATH on an MMSA pickle, through the one Trainer.

    mmer-train msa --model derl --data MOSI/unaligned_50.pkl [--config derl_mosi] [--seeds 1 2 3 4 5]

One run = the model built from the data's widths, ``model.prepare(train)`` (CENet's k-means
vocabularies, MMILN's label memory), the Trainer (AdamW, warm-up/decay in steps, clipping,
selection on the valid split only, test scored once, run folder with metrics.json, report.txt,
confusion_matrix.png of the Acc-7 bins, checkpoint/). ``--seeds`` repeats the run per seed in
``OUT/seed_<s>/`` and writes ``OUT/summary.json`` with the mean and sample standard deviation
of every test metric.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from mmer.config import ConfigError, from_dict, save_config
from mmer.labels import get_label_set
from mmer.models.msa import REGRESSION
from mmer.registry import MODELS
from mmer.training.distributed import is_main_process
from mmer.training.mmsa import MmsaDataset, MmsaSplit, load_mmsa, mmsa_collate
from mmer.training.recipes import MsaRecipe
from mmer.training.trainer import Splits, StepOutput, Trainer

log = logging.getLogger(__name__)

SUMMARY = "summary.json"
LANGUAGE_MODEL_LR = 5e-5   # a fine-tuned language model's rate unless optim.lr_by_prefix names one (BERT practice)
LANGUAGE_MODEL_PREFIX = "text.encoder"
SPLIT_OF = {"train": "train", "dev": "valid", "test": "test"}   # Trainer split -> MMSA split


def _limited(split: MmsaSplit, limit: int) -> MmsaSplit:
    if not limit or limit >= len(split):
        return split
    cut = slice(0, limit)
    return MmsaSplit(split.name, split.text[cut], split.text_ids[cut], split.text_mask[cut], split.audio[cut],
                     split.audio_lengths[cut], split.vision[cut], split.vision_lengths[cut], split.labels[cut],
                     split.ids[:limit], split.non_finite)


def build_msa_model(recipe: MsaRecipe, widths: dict[str, int]):
    """The recipe's model with input widths from the data; ``model.overrides`` are checked
    against the model's Dims (an unknown key names the closest valid one)."""
    import mmer.models  # noqa: F401  (fills the registry)

    cls = MODELS.get(recipe.model.name)
    label_set = recipe.data.label_set
    if recipe.data.task == "regression":
        if label_set != REGRESSION:
            raise ConfigError(f"data.task=regression predicts one score; data.label_set must be '{REGRESSION}', "
                              f"got '{label_set}'")
        num_outputs = 1
    else:
        if label_set == REGRESSION:
            raise ConfigError("data.task=classification needs data.label_set (e.g. meld7, iemocap6)")
        num_outputs = len(get_label_set(label_set))
    fields = {"label_set": label_set, "num_outputs": num_outputs, **widths, **recipe.model.overrides}
    if recipe.model.text_encoder is not None:
        fields["text_encoder"] = recipe.model.text_encoder
    dims = from_dict(cls.Dims, fields, source="model.overrides")
    return cls(dims)


def msa_step(model, batch: dict) -> StepOutput:
    """One batch through a sentiment model and its own objective (``model.loss``)."""
    out = model(batch["text"], batch["text_mask"], batch["audio"], batch["audio_lengths"], batch["vision"],
                batch["vision_lengths"])
    core = getattr(model, "module", model)   # DistributedDataParallel wraps the model
    loss, parts = core.loss(out, batch["labels"], batch["index"])
    return StepOutput(loss=loss, logits=out.prediction, labels=batch["labels"], parts=parts)


def run_msa(recipe: MsaRecipe, resume: bool = False) -> dict:
    """Train ``recipe.model`` on ``recipe.data``; returns the run's metrics.json content."""
    if not recipe.data.path:
        raise ConfigError("msa needs data.path=<MMSA pickle> (or --data FILE.pkl)")
    splits = {k: _limited(v, recipe.data.limit) for k, v in load_mmsa(recipe.data.path, recipe.data.task).items()}
    labels: Sequence[str] = ()
    if recipe.data.task == "classification":
        labels = get_label_set(recipe.data.label_set).labels
        for name, sp in splits.items():
            if sp.labels.max() >= len(labels):
                raise ConfigError(f"{recipe.data.path}: split '{name}' holds class id {int(sp.labels.max())}, "
                                  f"but label set '{recipe.data.label_set}' has {len(labels)} classes")
    torch.manual_seed(recipe.optim.seed)   # initial weights follow the run's seed
    model = build_msa_model(recipe, splits["train"].dims())
    model.prepare(splits["train"].arrays())
    data = Splits(MmsaDataset(splits["train"]), MmsaDataset(splits["valid"]), MmsaDataset(splits["test"]),
                  mmsa_collate(model.text_input))
    provenance = {"stage": "msa", "data": str(Path(recipe.data.path).resolve()), "task": recipe.data.task,
                  "label_set": recipe.data.label_set, "limit": recipe.data.limit,
                  "non_finite_features": {k: v.non_finite for k, v in splits.items()}}
    log.info("msa %s on %s: train/valid/test %d/%d/%d, widths %s", recipe.model.name, recipe.data.path,
             len(splits["train"]), len(splits["valid"]), len(splits["test"]), splits["train"].dims())
    optim = recipe.optim
    if model.text.uses_ids and not any(k.startswith("text") for k in optim.lr_by_prefix):
        # The fusion layers' rate (1e-3 by default) would wreck a pretrained language model.
        optim = replace(optim, lr_by_prefix={**optim.lr_by_prefix, LANGUAGE_MODEL_PREFIX: LANGUAGE_MODEL_LR})
        log.info("%s: %s gets lr %g (set optim.lr_by_prefix to change it)", recipe.model.name,
                 LANGUAGE_MODEL_PREFIX, LANGUAGE_MODEL_LR)
        recipe = replace(recipe, optim=optim)
    trainer = Trainer(model, msa_step, data, optim, recipe.out, labels, run_config=recipe,
                      provenance=provenance, task=recipe.data.task)
    return trainer.fit(resume=resume)


def _mean_std(values: list[float]) -> dict:
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0,
            "values": [float(v) for v in arr]}


def summarise_seeds(results: dict[int, dict]) -> dict:
    """Mean and sample standard deviation (ddof=1) of every numeric test metric over seeds."""
    per_metric: dict[str, list[float]] = {}
    for result in results.values():
        test = result.get("test") or {}
        for key, value in test.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in ("n", "n_non0"):
                per_metric.setdefault(key, []).append(float(value))
    n_seeds = len(results)
    return {"seeds": sorted(results), "test": {k: _mean_std(v) for k, v in per_metric.items() if len(v) == n_seeds},
            "best_epochs": {str(s): r.get("best_epoch") for s, r in results.items()}}


def format_seed_table(summary: dict) -> str:
    """The mean +- std table of :func:`summarise_seeds`."""
    rows = summary["test"]
    width = max((len(k) for k in rows), default=6)
    lines = [f"test metrics over seeds {summary['seeds']} (mean +- sample std)"]
    lines += [f"{k:>{width}s}  {v['mean']:.4f} +- {v['std']:.4f}" for k, v in rows.items()]
    return "\n".join(lines) + "\n"


def run_msa_seeds(recipe: MsaRecipe, seeds: Sequence[int], resume: bool = False) -> dict:
    """One run per seed in ``<out>/seed_<s>/``; writes ``<out>/summary.json`` and returns it."""
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds repeats a seed: {list(seeds)}")
    out = Path(recipe.out)
    results = {}
    for seed in seeds:
        run = replace(recipe, out=str(out / f"seed_{seed}"), optim=replace(recipe.optim, seed=seed))
        print(f"[mmer-train] msa {recipe.model.name}: seed {seed} -> {run.out}", flush=True)
        results[seed] = run_msa(run, resume=resume and (Path(run.out) / "last_state.pt").exists())
    summary = summarise_seeds(results)
    summary.update({"model": recipe.model.name, "data": recipe.data.path, "task": recipe.data.task})
    if not is_main_process():   # under torchrun only rank 0 scored test; it writes the summary
        return summary
    out.mkdir(parents=True, exist_ok=True)
    save_config(recipe, out / "config.yaml")
    (out / SUMMARY).write_text(json.dumps(summary, indent=2), encoding="utf-8")
    print(format_seed_table(summary), flush=True)
    return summary
