"""Average text teachers fine-tuned from one initialisation into one model (a greedy soup), on MELD dev.

    HF_HUB_OFFLINE=1 python -m mmer.training.soup runs/a/checkpoint runs/b/checkpoint ... \
        --data-root ../shared/data/MELD --out runs/soup/checkpoint

Runs meant for a soup are trained with one ``model.init_seed`` and different ``optim.seed``
(data order and dropout), e.g. ``mmer-train teacher ... optim.seed=43 model.init_seed=42``.

Greedy soup (Wortsman et al., ICML 2022): the ingredients are ranked by their own MELD **dev**
weighted F1 as they would ship, after their own neutral prior (mmer.training.neutral_prior: the
best offset on the neutral logit, which moves the score by more than the soups differ); each is
added to the running weight average only if the average's calibrated dev weighted F1 does not
drop. The soup has the size and cost of one teacher, so the live text stage does not slow down.
For reference the script also prints the uniform soup and the logit ensemble (mean of the
probabilities, N times the compute), on dev only.

Averaging is only meaningful for runs that start from the same weights: the ingredients must
share the encoder, the label set and the seed of their random weights (``model.init_seed``,
else ``optim.seed``); anything else is refused by name (exit 2). The soup is written in the dtype
of the first ingredient and with its dims (max_tokens), the best ingredient's recipe and the dev
scores in the provenance, and without calibration: run ``python -m mmer.training.neutral_prior``
on it, which fits the neutral prior, the temperature and the reliability on MELD dev. Nothing but
MELD dev is read.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

import mmer
from mmer.checkpoint import read_meta, resolve, save_checkpoint
from mmer.errors import MmerError, UsageError
from mmer.metrics import classification_metrics
from mmer.training.neutral_prior import BATCH, choose_offset, meld_dev
from mmer.training.stages import run_frozen

MELD_LABELS = "meld7"
SCORE = "calibrated_weighted_f1"   # dev weighted F1 after the model's own neutral prior
# provenance keys that describe one ingredient's run, not the soup
INGREDIENT_ONLY = ("test_metrics", "best_epoch", "wall_time_s", "neutral_prior", "date", "git_commit")


def init_seed(meta: dict) -> int | None:
    """The seed of a teacher's random weights, from its recorded recipe."""
    config = meta.get("provenance", {}).get("config", {})
    seed = config.get("model", {}).get("init_seed")
    return config.get("optim", {}).get("seed") if seed is None else seed


def check_ingredients(folders: list[Path]) -> list[dict]:
    """The ingredients' metadata; UsageError naming the first one that cannot join the soup."""
    metas = [read_meta(f) for f in folders]
    ref = metas[0]
    if ref.get("model") != "teacher" or ref.get("label_set") != MELD_LABELS:
        raise UsageError(f"{folders[0]}: a {ref.get('model')} over {ref.get('label_set')!r}; the soup is "
                         f"scored on MELD dev, so it takes text teachers over {MELD_LABELS!r}")
    for folder, meta in zip(folders[1:], metas[1:]):
        for what, get in (("model", lambda m: m.get("model")),
                          ("encoder", lambda m: m["dims"]["encoder"]),
                          ("label set", lambda m: m.get("label_set")),
                          ("init seed (model.init_seed, else optim.seed)", init_seed)):
            if get(meta) != get(ref):
                raise UsageError(f"{folder}: {what} {get(meta)!r} differs from {folders[0]}'s "
                                 f"{get(ref)!r}; only runs from the same initial weights can be averaged")
    return metas


class DevScorer:
    """MELD dev weighted F1 of a teacher, or of any state dict loaded into the first ingredient."""

    def __init__(self, root: str, template: Path):
        self.dataset, self.true = meld_dev(root)
        self.labels = list(read_meta(template)["id2label"].values())
        self.model = mmer.load(template)

    def logits(self, model) -> np.ndarray:
        return run_frozen(model, self.dataset, self.dataset.samples, BATCH, torch.device("cpu"), progress=False)["logits"]

    def metrics(self, logits: np.ndarray) -> dict:
        """Dev scores of ``logits`` (n, C) as they are, and the weighted F1 after the best neutral offset."""
        m = classification_metrics(self.true, logits.argmax(1), self.labels)
        offset, sweep = choose_offset(logits, self.true, self.labels, self.labels.index("neutral"))
        calibrated = next(r for r in sweep if r["offset"] == offset)
        return {**{k: round(m[k], 4) for k in ("weighted_f1", "accuracy", "macro_f1")},
                "neutral_offset": offset, SCORE: calibrated["weighted_f1"]}

    def of_state(self, state: dict[str, torch.Tensor]) -> dict:
        """Dev scores of ``state`` loaded into the first ingredient's model."""
        self.model.load_state_dict(state)
        return self.metrics(self.logits(self.model))


def average(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The element-wise mean of float state dicts (non-float buffers from the first)."""
    out = {}
    for key, value in states[0].items():
        out[key] = (torch.stack([s[key].float() for s in states]).mean(0).to(value.dtype)
                    if value.is_floating_point() else value.clone())
    return out


def greedy_soup(folders: list[Path], scorer: "DevScorer", log=print) -> tuple[dict[str, torch.Tensor], dict]:
    """The greedy soup's weights and its record (candidates, kept ingredients, uniform soup, ensemble)."""
    rows, states, probs = [], [], []
    for i, folder in enumerate(folders):
        model = mmer.load(folder)
        logits = scorer.logits(model)
        states.append({k: v.detach().float().clone() for k, v in model.state_dict().items()})
        probs.append(torch.softmax(torch.from_numpy(logits).double(), dim=1).numpy())
        rows.append({"ingredient": str(folder), "dev": scorer.metrics(logits)})
        log(f"[{i + 1}/{len(folders)}] {folder}: dev {rows[-1]['dev']}")
    order = sorted(range(len(folders)), key=lambda i: -rows[i]["dev"][SCORE])
    chosen, best = [order[0]], rows[order[0]]["dev"]
    for i in order[1:]:
        trial = scorer.of_state(average([states[j] for j in chosen + [i]]))
        kept = trial[SCORE] >= best[SCORE]
        log(f"greedy: + {folders[i]}: dev {trial} -> {'kept' if kept else 'left out'}")
        if kept:
            chosen, best = chosen + [i], trial
    uniform = scorer.of_state(average(states))
    ensemble = scorer.metrics(np.log(np.mean(probs, axis=0)))
    log(f"uniform soup of all {len(folders)}: dev {uniform}")
    log(f"logit ensemble of all {len(folders)} ({len(folders)}x the compute, not shipped): dev {ensemble}")
    log(f"greedy soup of {len(chosen)}: dev {best}")
    record = {"method": "greedy soup, selected on MELD dev weighted F1 after each model's neutral prior",
              "best_candidate": str(folders[order[0]]),
              "ingredients": [str(folders[j]) for j in chosen], "candidates": rows, "dev": best,
              "uniform_dev": uniform, "ensemble_dev": ensemble}
    return average([states[j] for j in chosen]), record


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mmer.training.soup", description=__doc__.split("\n")[0])
    p.add_argument("models", nargs="+", help="teacher checkpoint folders (or default names) fine-tuned from one init")
    p.add_argument("--data-root", default="../shared/data/MELD", help="the MELD folder (its dev split is read)")
    p.add_argument("--out", required=True, help="folder for the soup checkpoint")
    args = p.parse_args(argv)
    try:
        return make_soup(args)
    except MmerError as e:
        print(f"soup: {e}", file=sys.stderr)
        return e.exit_code


def make_soup(args: argparse.Namespace) -> int:
    """Score the candidates, cook the greedy soup and write it with soup.json beside it."""
    folders = [resolve(m) for m in args.models]
    if len(folders) < 2:
        raise UsageError("give at least two checkpoints")
    metas = check_ingredients(folders)
    scorer = DevScorer(args.data_root, folders[0])
    weights, record = greedy_soup(folders, scorer, log=lambda line: print(line, flush=True))
    scorer.model.load_state_dict(weights)
    best_meta = metas[folders.index(Path(record["best_candidate"]))]
    # the best ingredient's recipe and data, not its scores: the soup is scored on dev here and on
    # test only afterwards, by mmer-eval
    # (facts every ingredient shares, such as the data and encoder licences, from any that records them)
    merged = {}
    for meta in [*metas, best_meta]:
        merged.update(meta.get("provenance", {}))
    inherited = {k: v for k, v in merged.items() if k not in INGREDIENT_ONLY}
    provenance = {**inherited, "dev_metrics": record["dev"],
                  "selection": "dev weighted_f1 after the neutral prior (greedy soup)",
                  "soup": {**record, "command": "python -m mmer.training.soup"}}
    dtype = torch.float16 if metas[0].get("weights_dtype") == "float16" else None
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    save_checkpoint(scorer.model, out, provenance=provenance, dtype=dtype)
    (out.parent / "soup.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"soup checkpoint -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
