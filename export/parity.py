"""Parity of an exported model against the torch model it came from, and the gates it must pass.

Measured on real inputs (:mod:`mmer.samples`): each sample alone (batch 1) plus one
padded batch of several when the graph is padding-exact. Reported per output (logits, probs,
feature; score and feature for the sentiment regression models): ``max_abs`` = max |candidate -
torch| and ``max_rel`` = max_abs / max |torch| (the error relative to the output's scale;
element-wise ratios explode near zero). ``top1_agreement`` is the share of rows whose decision is
the same: the argmax class, or a sentiment score's polarity. For models with labelled inputs
(``model.labelled_inputs``: the teacher on MELD dev), the weighted F1 of both backends and its change in points.

Gates (config ``parity``): FP32 max_abs <= 1e-4 on every output; FP16 top-1 agreement >= 99.5%;
INT8 weighted-F1 drop <= 1 point (teacher; elsewhere no labelled data exists, so the INT8 gate is
reported as not applicable). A failed gate sets ``passed: false`` in parity.json, and
``mmer-export`` exits with :data:`GATE_FAILED_EXIT`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from mmer.contract import collate
from mmer.export.config import ParityConfig
from mmer.labels import get_label_set
from mmer.progress import progress
from mmer.runtime import Runtime

PARITY_FILE = "parity.json"
GATE_FAILED_EXIT = 3
PADDED_BATCH = 4          # samples padded together into the one multi-row batch
POINTS = 100.0            # F1 in points
F1_SEED_OFFSET = 2000     # MELD dev draw for the F1 check, apart from calibration's and the parity samples' draws


def _batches(samples: list[dict[str, np.ndarray]], padding_exact: bool) -> list[dict[str, np.ndarray]]:
    batches = list(samples)
    if padding_exact and len(samples) >= 2:
        batches.append(collate(samples[:PADDED_BATCH]))
    return batches


def decisions(out: dict[str, np.ndarray]) -> np.ndarray:
    """The decision each row stands for: the argmax class, or for a sentiment score its
    polarity (score >= 0, the Acc-2 "has 0" split)."""
    if "logits" in out:
        return out["logits"].argmax(-1)
    return out["score"].reshape(-1) >= 0


def compare(reference: Runtime, candidate: Runtime, batches: list[dict[str, np.ndarray]]) -> dict:
    """Element-wise comparison of two runtimes on the same batches (see the module docstring).

    ``top1_agreement`` is the share of rows with the same decision (:func:`decisions`)."""
    err: dict[str, float] = {}
    scale: dict[str, float] = {}
    agree = rows = 0
    for batch in progress(batches, f"parity {candidate.name}", unit="batch"):
        ref, got = reference(**batch), candidate(**batch)
        for k in reference.outputs:
            err[k] = max(err.get(k, 0.0), float(np.abs(ref[k].astype(np.float64) - got[k]).max()))
            scale[k] = max(scale.get(k, 0.0), float(np.abs(ref[k]).max()))
        agree += int((decisions(ref) == decisions(got)).sum())
        rows += len(decisions(ref))
    outputs = {k: {"max_abs": err[k], "max_rel": err[k] / scale[k] if scale[k] else 0.0} for k in err}
    return {"outputs": outputs, "top1_agreement": agree / rows, "rows": rows, "batches": len(batches)}


def labelled_f1(model: Any, reference: Runtime, candidate: Runtime, n: int, data_root: Any, seed: int) -> dict | None:
    """Weighted F1 of both runtimes on ``n`` of the model's labelled inputs
    (``model.labelled_inputs``: MELD dev utterances for the teacher), or None when it has none."""
    from mmer.metrics import classification_metrics

    labelled = model.labelled_inputs(n, seed, data_root)
    if labelled is None:
        return None
    samples, labels = labelled
    keep = [i for i, y in enumerate(labels) if y >= 0]
    if not keep:
        return {"status": "skipped", "reason": f"no labelled example is in label set {model.label_set!r}"}
    y = [labels[i] for i in keep]
    label_names = list(get_label_set(model.label_set).labels)
    pred = {}
    for key, rt in (("torch", reference), ("candidate", candidate)):
        pred[key] = [int(rt(**samples[i])["logits"].argmax(-1)[0])
                     for i in progress(keep, f"parity F1 {rt.name}", unit="utt")]
    f1 = {k: classification_metrics(y, p, label_names)["weighted_f1"] for k, p in pred.items()}
    return {"utterances": len(y), "weighted_f1_torch": f1["torch"], "weighted_f1_candidate": f1["candidate"],
            "drop_points": (f1["torch"] - f1["candidate"]) * POINTS,
            "top1_agreement": float(np.mean(np.equal(pred["torch"], pred["candidate"])))}


def gates(precision: str, report: dict, cfg: ParityConfig) -> list[dict]:
    """The gates that apply to ``precision`` with their values and verdicts."""
    out = []
    if precision == "fp32":
        for k in report["outputs"]:
            v = report["outputs"][k]["max_abs"]
            out.append({"gate": f"fp32 {k} max_abs", "value": v, "threshold": cfg.fp32_max_abs, "passed": v <= cfg.fp32_max_abs})
    elif precision == "fp16":
        v = report["top1_agreement"]
        out.append({"gate": "fp16 top1_agreement", "value": v, "threshold": cfg.fp16_min_top1, "passed": v >= cfg.fp16_min_top1})
    elif precision == "int8":
        f1 = report.get("f1") or {}
        if "drop_points" in f1:
            v = f1["drop_points"]
            out.append({"gate": "int8 weighted_f1 drop (points)", "value": v, "threshold": cfg.int8_max_f1_drop_points,
                        "passed": v <= cfg.int8_max_f1_drop_points})
        else:
            out.append({"gate": "int8 weighted_f1 drop (points)", "value": None, "threshold": cfg.int8_max_f1_drop_points,
                        "passed": None, "note": "not applicable: this model has no labelled inputs here "
                                                "(the teacher's are MELD dev, when it is on disk)"})
    return out


def measure_parity(model: Any, reference: Runtime, candidate: Runtime, samples: list[dict[str, np.ndarray]],
                   precision: str, cfg: ParityConfig, data_root: Any = None) -> dict:
    """Full parity report of ``candidate`` against ``reference`` (the torch runtime of ``model``)."""
    report = compare(reference, candidate, _batches(samples, model.contract().padding_exact))
    report.update(precision=precision, reference=reference.describe(), candidate=candidate.describe())
    if cfg.f1_utterances > 0:
        # Another draw than calibration's (seed 0 by default), so the scored subset is not the calibration set.
        f1 = labelled_f1(model, reference, candidate, cfg.f1_utterances, data_root, cfg.seed + F1_SEED_OFFSET)
        if f1 is not None:
            report["f1"] = f1
    report["gates"] = gates(precision, report, cfg)
    report["passed"] = all(g["passed"] is not False for g in report["gates"])
    return report


def not_run(precision: str, reason: str) -> dict:
    """Parity record of an export whose runtime cannot run here (an engine without its GPU)."""
    return {"precision": precision, "status": "not run", "reason": reason, "gates": [], "passed": None}


def write_parity(folder: str | Path, report: dict) -> Path:
    path = Path(folder) / PARITY_FILE
    path.write_text(json.dumps(report, indent=2), encoding="utf-8")
    return path


def failed_gates(report: dict) -> list[dict]:
    return [g for g in report.get("gates", []) if g["passed"] is False]
