"""Calibrate a text teacher's neutral prior on MELD dev: one offset added to the neutral logit.

    HF_HUB_OFFLINE=1 python -m mmer.training.neutral_prior --model default-text \
        --data-root ../shared/data/MELD --out runs/neutral_prior/checkpoint

A teacher trained with class weights (inverse_sqrt: neutral weighted 0.40) under-calls neutral,
the class of half of everyday conversation. The offset b is the value in [-2, 3] (steps of 0.05)
that maximises weighted F1 on MELD **dev** (ties: the smallest |b|); nothing else is looked at.
The offset goes into the classifier's bias, so every runtime and export reads the same model.
The calibrated checkpoint (same dtype, provenance extended with the offset and the dev scores,
its temperature and reliability fitted again on the shifted dev logits) is written to --out;
score it with mmer-eval on MELD test and on DailyDialog (evaluation only).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import torch

import mmer
from mmer.checkpoint import WEIGHTS, read_meta, resolve
from mmer.metrics import classification_metrics
from mmer.training.recipes import DataConfig
from mmer.training.stages import build_split, run_frozen

OFFSETS = np.round(np.arange(-2.0, 3.0001, 0.05), 2)
COMMAND = "python -m mmer.training.neutral_prior"
BATCH = 32


def meld_dev(root: str):
    """MELD dev as text samples, and its labels (n,)."""
    dataset = build_split(DataConfig(name="meld", root=root), "dev", ("text",))
    return dataset, np.array([s.label for s in dataset.samples])


def dev_logits(model_name: str, root: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(logits (n, C), labels (n,), label names) of the teacher on MELD dev."""
    model = mmer.load(model_name)
    dataset, true = meld_dev(root)
    out = run_frozen(model, dataset, dataset.samples, BATCH, torch.device("cpu"), progress=True)
    labels = list(read_meta(resolve(model_name))["id2label"].values())
    return out["logits"], true, labels


def choose_offset(logits: np.ndarray, true: np.ndarray, labels: list[str], neutral: int) -> tuple[float, list]:
    """The offset of the best dev weighted F1 (smallest |b| among ties) and the whole sweep."""
    sweep = []
    for b in OFFSETS:
        shifted = logits.copy()
        shifted[:, neutral] += b
        m = classification_metrics(true, shifted.argmax(1), labels)
        sweep.append({"offset": float(b), "weighted_f1": round(m["weighted_f1"], 4), "accuracy": round(m["accuracy"], 4),
                      "macro_f1": round(m["macro_f1"], 4)})
    best = max(sweep, key=lambda r: (r["weighted_f1"], -abs(r["offset"])))
    return best["offset"], sweep


def refit_calibration(logits: np.ndarray, true: np.ndarray, labels: list[str], neutral: int, offset: float) -> dict:
    """The checkpoint's calibration (mmer.calibration) fitted again on the shifted dev logits:
    temperature by dev NLL, reliability (UA - chance) / (1 - chance); it never abstains."""
    import torch.nn.functional as F

    from mmer.training.voice import fit_temperature

    shifted = logits.copy()
    shifted[:, neutral] += offset
    temperature = fit_temperature(shifted, true)
    z, y = torch.from_numpy(shifted.astype(np.float64)), torch.from_numpy(true.astype(np.int64))
    nll_1, nll_t = float(F.cross_entropy(z, y)), float(F.cross_entropy(z / temperature, y))
    ua = classification_metrics(true, shifted.argmax(1), labels)["macro_recall"]
    chance = 1.0 / len(labels)
    return {"temperature": temperature, "reliability": max(0.0, (ua - chance) / (1 - chance)), "min_confidence": 0.0,
            "fitted_on": f"MELD dev ({len(true)} utterances), neutral logit {offset:+.2f}: NLL {nll_1:.4f} -> "
                         f"{nll_t:.4f}, UA {ua:.4f}"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n")[0])
    p.add_argument("--model", default="default-text")
    p.add_argument("--data-root", default="../shared/data/MELD")
    p.add_argument("--out", required=True, help="folder for the calibrated checkpoint")
    args = p.parse_args(argv)
    logits, true, labels = dev_logits(args.model, args.data_root)
    neutral = labels.index("neutral")
    offset, sweep = choose_offset(logits, true, labels, neutral)
    before = next(r for r in sweep if r["offset"] == 0.0)
    after = next(r for r in sweep if r["offset"] == offset)
    print(f"MELD dev ({len(true)} utterances): offset 0: weighted F1 {before['weighted_f1']:.4f}, accuracy "
          f"{before['accuracy']:.4f}, macro F1 {before['macro_f1']:.4f}")
    print(f"MELD dev best offset {offset:+.2f}: weighted F1 {after['weighted_f1']:.4f}, accuracy "
          f"{after['accuracy']:.4f}, macro F1 {after['macro_f1']:.4f}")
    source, out = resolve(args.model), Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(source, out)
    from safetensors.torch import load_file, save_file

    from safetensors import safe_open

    with safe_open(str(out / WEIGHTS), "pt") as f:
        file_meta = f.metadata()
    weights = load_file(str(out / WEIGHTS))
    bias = weights["classifier.bias"]
    bias[neutral] = (bias[neutral].float() + offset).to(bias.dtype)
    save_file(weights, str(out / WEIGHTS), metadata=file_meta)
    meta = json.loads((out / "mmer.json").read_text(encoding="utf-8"))
    meta["calibration"] = refit_calibration(logits, true, labels, neutral, offset)
    meta.setdefault("provenance", {})["neutral_prior"] = {
        "offset": offset, "added_to": "classifier.bias[neutral]", "selected_on": "MELD dev weighted F1",
        "dev_before": before, "dev_after": after, "command": COMMAND}
    (out / "mmer.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    (out.parent / "neutral_prior_sweep.json").write_text(json.dumps(sweep, indent=2) + "\n", encoding="utf-8")
    print(f"calibrated checkpoint -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
