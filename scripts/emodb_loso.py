"""Leave-one-speaker-out evaluation of the EmoDB voice recipe: train the 10 folds, pool their tests.

    python scripts/emodb_loso.py --data-root ../shared/data/EmoDB --out runs/voice_loso [key=value ...]

Fold k tests on speaker k, selects its epoch on the next speaker (dev), trains on the other 8
(training/emodb.py). UA (mean recall) and WA (accuracy) are computed on the pooled confusion
matrix of the 10 test speakers (535 utterances), and also per fold (mean +- sample std). Folds
whose run folder already holds metrics.json are not trained again. Writes OUT/loso.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

FOLDS = 10   # one per EmoDB speaker


def unweighted_accuracy(confusion: np.ndarray) -> float:
    """Mean recall over the classes that occur (rows with support)."""
    support = confusion.sum(axis=1)
    present = support > 0
    return float(np.mean(np.diag(confusion)[present] / support[present]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", required=True, help="the EmoDB folder (labels.csv + wav/)")
    parser.add_argument("--out", default="runs/voice_loso")
    parser.add_argument("--config", default="configs/mmer_emodb_voice.yaml")
    parser.add_argument("overrides", nargs="*", help="key=value overrides for every fold")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    folds = []
    for k in range(FOLDS):
        run = out / f"fold_{k}"
        if not (run / "metrics.json").is_file():
            start = time.perf_counter()
            cmd = [sys.executable, "-m", "mmer.training.cli", "student", "--config", args.config,
                   f"data.root={args.data_root}", f"data.fold={k}", "optim.progress=false", "--out", str(run),
                   *args.overrides]
            with open(out / f"fold_{k}.log", "w", encoding="utf-8") as log:
                code = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
            if code:
                print(f"fold {k}: training failed (exit {code}); see {out / f'fold_{k}.log'}", file=sys.stderr)
                return code
            print(f"fold {k}: trained in {time.perf_counter() - start:.0f} s", flush=True)
        metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
        confusion = np.asarray(metrics["test"]["confusion"])
        folds.append({"fold": k, "n": int(confusion.sum()), "best_epoch": metrics["best_epoch"],
                      "ua": unweighted_accuracy(confusion), "wa": float(np.trace(confusion) / confusion.sum()),
                      "confusion": confusion})
    pooled = sum(f["confusion"] for f in folds)
    labels = list(metrics["test"]["per_class"])
    support = pooled.sum(axis=1)
    result = {
        "protocol": "leave-one-speaker-out, 10 folds; epoch selected on the next speaker",
        "pooled": {"n": int(pooled.sum()), "ua": unweighted_accuracy(pooled), "wa": float(np.trace(pooled) / pooled.sum()),
                   "recall": {lab: float(pooled[i, i] / max(support[i], 1)) for i, lab in enumerate(labels)},
                   "confusion": pooled.tolist(), "labels": labels},
        "per_fold_mean": {m: {"mean": float(np.mean([f[m] for f in folds])),
                              "std": float(np.std([f[m] for f in folds], ddof=1))} for m in ("ua", "wa")},
        "folds": [{k: v for k, v in f.items() if k != "confusion"} for f in folds],
    }
    (out / "loso.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    for f in folds:
        print(f"fold {f['fold']}  n={f['n']:3d}  best epoch {f['best_epoch']:2d}  UA {f['ua']:.3f}  WA {f['wa']:.3f}")
    p, m = result["pooled"], result["per_fold_mean"]
    print(f"pooled ({p['n']} utterances): UA {p['ua']:.3f}  WA {p['wa']:.3f}")
    print(f"per fold: UA {m['ua']['mean']:.3f} +- {m['ua']['std']:.3f}  WA {m['wa']['mean']:.3f} +- {m['wa']['std']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
