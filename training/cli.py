"""``mmer-train`` and ``mmer-eval``.

    mmer-train teacher --config configs/mmer_meld_teacher.yaml data.root=/data/MELD [--out DIR] [--resume]
    mmer-train student --config configs/meld_student_audio.yaml teacher=runs/teacher/checkpoint
    mmer-train fusion  --config configs/meld_fusion.yaml teacher=... audio_student=... visual_student=...
    mmer-train msa --model derl|mmiln|cenet|cmath --data MOSI/unaligned_50.pkl [--config derl_mosi] [--seeds 1 2 3]
    mmer-eval runs/teacher/checkpoint --data meld --split test --data-root /data/MELD --json out.json
    mmer-eval default-voice --data ravdess --data-root ../shared/eval/ravdess_speech --json ev/voice.json

Multi-GPU (data parallel, through torchrun; docs/training_scale.md)::

    torchrun --standalone --nproc_per_node=N -m mmer.training.cli teacher --config configs/meld_teacher.yaml
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path

from mmer.cli import add_version
from mmer.checkpoint import CheckpointError
from mmer.config import ConfigError
from mmer.errors import UsageError
from mmer.extras import MissingExtra
from mmer.training.datasets import DatasetError, dataset_names

EXIT_USAGE = 2
NEUTRAL = "neutral"
# DailyDialog is 82 % neutral; its ERC convention scores micro-F1 over the other six classes.
WITHOUT_NEUTRAL_DATASETS = ("dailydialog",)
# Errors that mean "the user's settings or files are wrong": reported in one line, exit code 2.
USER_ERRORS = (ConfigError, DatasetError, CheckpointError, MissingExtra, FileExistsError, FileNotFoundError)


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")


def train_main(argv: list[str] | None = None) -> int:
    """Entry point of ``mmer-train STAGE --config FILE [--out DIR] [--resume] [key=value ...]``."""
    from mmer.training.recipes import RECIPES, load_recipe

    parser = argparse.ArgumentParser(
        prog="mmer-train", description="Train a stage of the TelME recipe: teacher, student (audio/visual, or the "
        "EmoDB voice model with data.name=emodb and no teacher) or fusion (ASF); or, with 'msa', one of the "
        "sentiment models (DERL, MMILN, CENet, CMATH) on an MMSA pickle. Config keys can be overridden "
        "as key=value, e.g. optim.lr=2e-5 data.limit=50.")
    add_version(parser)
    parser.add_argument("stage", choices=sorted(RECIPES))
    parser.add_argument("--config", help="YAML recipe, or the name of a shipped one (mmer_meld_teacher)")
    parser.add_argument("--out", help="run folder (overrides the recipe's 'out')")
    parser.add_argument("--resume", action="store_true", help="continue the run in the run folder")
    msa = parser.add_argument_group("msa stage (DERL, MMILN, CENet, CMATH on an MMSA pickle)")
    msa.add_argument("--model", choices=["derl", "mmiln", "cenet", "cmath"], help="same as model.name=")
    msa.add_argument("--data", help="MMSA pickle (CMU-MOSI/MOSEI layout); same as data.path=")
    msa.add_argument("--seeds", nargs="+", metavar="SEED", help="one run per seed in OUT/seed_<s>/, then mean +- "
                     "std of the test metrics in OUT/summary.json")
    parser.add_argument("overrides", nargs="*", help="key=value overrides")
    args = parser.parse_intermixed_args(argv)
    _setup_logging()
    overrides = list(args.overrides)
    seeds: list[int] = []
    for token in args.seeds or ():
        if "=" in token:   # nargs="+" also swallows key=value overrides written after the seeds
            overrides.append(token)
        elif token.lstrip("-").isdigit():
            seeds.append(int(token))
        else:
            print(f"mmer-train: --seeds takes integers, got {token!r}", file=sys.stderr)
            return EXIT_USAGE
    if args.stage != "msa" and (args.model or args.data or seeds):
        print("mmer-train: --model, --data and --seeds belong to the msa stage", file=sys.stderr)
        return EXIT_USAGE
    # Flags first, so explicit key=value overrides still win.
    overrides = [f"model.name={args.model}"] * bool(args.model) + [f"data.path={args.data}"] * bool(args.data) \
        + overrides
    try:
        recipe = load_recipe(args.stage, args.config, overrides)
    except ConfigError as e:
        print(f"mmer-train: {e}", file=sys.stderr)
        return EXIT_USAGE
    if args.out:
        recipe = replace(recipe, out=args.out)
    from mmer.training.stages import STAGES

    try:
        if seeds:
            from mmer.training.sentiment import run_msa_seeds

            run_msa_seeds(recipe, seeds, resume=args.resume)
            print(f"mmer-train: summary -> {Path(recipe.out) / 'summary.json'}")
            return 0
        result = STAGES[args.stage](recipe, resume=args.resume)
    except USER_ERRORS as e:  # a bad setting or missing file: one line; a bug keeps its traceback
        print(f"mmer-train: {e}", file=sys.stderr)
        return EXIT_USAGE
    test = result.get("test") if isinstance(result, dict) else None
    if test and "weighted_f1" in test:
        print(f"mmer-train: test weighted F1 {test['weighted_f1']:.4f}  accuracy {test['accuracy']:.4f}  "
              f"macro F1 {test['macro_f1']:.4f}  ->  {Path(recipe.out) / 'checkpoint'}")
    elif test:
        from mmer.training.trainer import TASKS

        print(f"mmer-train: test {TASKS['regression'].summary(test)}  ->  {Path(recipe.out) / 'checkpoint'}")
    return 0


class EvalError(UsageError):
    """A model that mmer-eval cannot feed with the asked data; the message says why (a ValueError too)."""


def evaluate_checkpoint(model: str, data: str, split: str, root: str, clips_root: str | None = None,
                        fold: int | None = None, limit: int = 0, batch_size: int = 16,
                        device: str = "auto", runtime: str = "auto", precision: str | None = None) -> tuple[dict, str]:
    """Score a checkpoint folder, an embedded default or an export folder (mmer-export; served by
    ``runtime``, default its own, so the deployed artefact itself is scored) on one split;
    returns (metrics, report text). A checkpoint with ``runtime`` other than auto is served by it
    (onnxruntime: the graph at ``precision`` built once into the cache, mmer.serving).

    Teachers read the dialogue text, audio students the clips' audio, visual students their
    frames (face-cropped for the edge family); an ASF checkpoint is fed by the teacher and
    students named in its provenance. When the model's label set differs from the data's, its
    probabilities go through the explicit map of mmer.labels (e.g. emodb7 -> meld7). A sample
    whose clip is unusable gets the model's no-evidence answer (uniform probabilities) and is
    counted in ``n_without_input``.

    Besides :func:`mmer.metrics.classification_metrics` the metrics hold ``ua`` (unweighted
    accuracy: mean recall over the classes in the truth) and ``wa`` (weighted accuracy = plain
    accuracy); on DailyDialog also ``micro_f1_without_neutral`` with its ``micro_precision_`` and
    ``micro_recall_without_neutral``. Evaluation-only sets (ravdess, dailydialog) have only "test".
    """
    import numpy as np
    import torch

    import mmer
    from mmer.checkpoint import WEIGHTS, check_weights_file, read_meta, resolve
    from mmer.labels import get_label_map, get_label_set
    from mmer.training.datasets import dataset_class
    from mmer.training.recipes import DataConfig
    from mmer.registry import MODELS
    from mmer.runtime import is_export_folder, read_card
    from mmer.training.stages import build_split, label_set_of, run_frozen, run_served
    from mmer.training.trainer import resolve_device

    import mmer.models  # noqa: F401  (fills the registry)

    exported = is_export_folder(model)
    folder = Path(model) if exported else resolve(model)
    meta = read_card(folder) if exported else read_meta(folder)
    if not exported:
        check_weights_file(folder / WEIGHTS)   # a broken file fails now, not after a pass over the data
    kind, model_labels = meta["model"], meta["label_set"]
    modality = MODELS.get(kind).modality
    dev = resolve_device(device)
    cfg = DataConfig(name=data, root=root, clips_root=clips_root, fold=fold, limit=limit,
                     classes=4 if model_labels == "iemocap4" else 6)
    parts: dict[str, str] = {}
    if modality == "fusion" and not exported:
        prov = meta.get("provenance", {})
        parts = {m: prov.get(key) for m, key in (("text", "teacher"), ("audio", "audio_student"),
                                                 ("visual", "visual_student")) if prov.get(key)}
        if "text" not in parts:
            raise EvalError(f"{folder}: this fusion checkpoint does not name its teacher in its provenance")
    elif modality in ("text", "audio", "visual"):
        parts = {modality: str(folder)}
    else:
        raise EvalError(f"mmer-eval has no input pipeline for a '{kind}' model; it scores text, voice and face "
                        f"models (checkpoints or export folders) and feature-fusion checkpoints")
    corpus = dataset_class(data)
    if not set(parts) <= set(corpus.labelled_modalities):
        raise EvalError(f"{corpus.title} has only {' and '.join(corpus.labelled_modalities)} with labels; a '{kind}' "
                        f"model reads {' and '.join(parts)} and cannot be scored on it")
    if "visual" in parts:
        vdims = (read_card if is_export_folder(parts["visual"]) else read_meta)(parts["visual"])["dims"]
        cfg = replace(cfg, frame_size_px=vdims["image_size"], n_frames=vdims["num_frames"],
                      face_crop=vdims["family"] == "edge")
    data_labels = label_set_of(cfg)
    try:
        dataset = build_split(cfg, split, tuple(parts))
    except ValueError as e:  # a split, fold or modality the corpus does not have (DatasetError included)
        raise EvalError(str(e)) from None
    if not len(dataset):
        raise EvalError(f"{data} {split} (fold {fold}): no samples to score"
                        + ("; TESS without --fold keeps both speakers in train, pass --fold 0 or 1"
                           if data == "tess" and fold is None else ""))
    if exported or runtime != "auto":
        from mmer.serving import serve

        if modality not in parts:
            raise EvalError(f"--runtime serves one model; a '{kind}' fusion checkpoint is scored in torch (drop --runtime)")
        served = serve(folder, runtime=runtime, precision=precision)
        outputs = {modality: run_served(served, dataset, dataset.samples, progress=True)}
        kind = f"{kind} ({meta.get('export_format', 'checkpoint')} on {served.describe()})"
    else:
        outputs = {m: run_frozen(mmer.load(path, device=str(dev)), dataset, dataset.samples, batch_size, dev,
                                 progress=True) for m, path in parts.items()}
    if modality == "fusion":
        fusion = mmer.load(folder, device=str(dev))
        zeros = np.zeros_like(outputs["text"]["feature"])
        with torch.no_grad():
            feats = {m: torch.from_numpy(outputs[m]["feature"] if m in outputs else zeros).to(dev)
                     for m in ("text", "audio", "visual")}
            present = {m: torch.from_numpy(outputs[m]["present"] > 0 if m in outputs else
                                           np.zeros(len(dataset), bool)).to(dev) for m in ("audio", "visual")}
            logits = torch.cat([fusion(text=feats["text"][i:i + batch_size], audio=feats["audio"][i:i + batch_size],
                                       visual=feats["visual"][i:i + batch_size],
                                       audio_present=present["audio"][i:i + batch_size],
                                       visual_present=present["visual"][i:i + batch_size]).logits.float().cpu()
                                for i in range(0, len(dataset), batch_size)]).numpy()
        absent = 0
    else:
        (out,) = outputs.values()
        logits, absent = out["logits"], int((out["present"] == 0).sum())
    probs = torch.softmax(torch.from_numpy(logits), dim=-1).numpy()
    true = np.array([s.label for s in dataset.samples])
    try:
        label_map = get_label_map(model_labels, data_labels)
        pred = label_map.map_probs(probs).argmax(axis=-1)
    except KeyError as e:
        # The data's classes are finer than the model's (EmoDB's boredom for a meld7 voice model):
        # map the truth into the model's label set instead and score there.
        try:
            label_map = get_label_map(data_labels, model_labels)
        except KeyError:
            raise EvalError(f"the model predicts '{model_labels}' and the data is labelled '{data_labels}': "
                            f"{e}") from None
        model_set, data_set = get_label_set(model_labels), get_label_set(data_labels)
        true = np.array([model_set.index(label_map.map_label(data_set.labels[t])) for t in true])
        pred = probs.argmax(axis=-1)
        data_labels = model_labels
    metrics = score_labels(true, pred, data_labels, data)
    metrics.update({"model": str(model), "model_type": kind, "model_label_set": model_labels, "data": data,
                    "split": split, "label_map": label_map.note, "n_without_input": absent,
                    "skipped": len(dataset.skipped)})
    return metrics, eval_report(metrics)


def score_labels(true, pred, label_set: str, data: str) -> dict:
    """Every mmer-eval metric of integer labels (N,) over ``label_set``: the classification
    metrics, UA and WA, and on DailyDialog micro-F1 without neutral."""
    from mmer.labels import get_label_set
    from mmer.metrics import classification_metrics, micro_f1_excluding, unweighted_accuracy

    labels = get_label_set(label_set)
    metrics = classification_metrics(true, pred, labels.labels)
    metrics.update({"ua": unweighted_accuracy(true, pred), "wa": metrics["accuracy"]})
    if data in WITHOUT_NEUTRAL_DATASETS:
        prf = micro_f1_excluding(true, pred, excluded=labels.index(NEUTRAL))
        metrics.update({f"micro_{k}_without_neutral": v for k, v in prf.items()})
    return metrics


def evaluate_default(data: str, split: str, root: str, limit: int = 0) -> tuple[dict, str]:
    """Score the whole default live stack (``mmer-eval default``): the fused label, and each
    modality's own calibrated label on the same run (mmer.training.stack_eval)."""
    from mmer.training.stack_eval import evaluate_stack

    try:
        results, info = evaluate_stack(data, split, root, limit)
    except ValueError as e:
        raise EvalError(str(e)) from None
    scored = {}
    for name, r in results.items():
        m = score_labels(r["true"], r["pred"], "meld7", data)
        m.update({"model": "default" if name == "fused" else f"default ({name} alone)",
                  "model_type": "stack" if name == "fused" else name, "data": data, "split": split,
                  "n_without_input": 0})
        scored[name] = m
    metrics = dict(scored["fused"])
    metrics.update({"modalities": {k: v for k, v in scored.items() if k != "fused"}, **info})
    parts = [eval_report(scored["fused"])]
    parts += [eval_report(v) for k, v in scored.items() if k != "fused"]
    parts.append(f"abstentions: {info['abstained'] or 'none'}; order: {info['order']}")
    return metrics, "\n\n".join(parts)


def eval_title(metrics: dict) -> str:
    """One line naming what was scored: model, data, split, counts."""
    return (f"{metrics['model_type']} {metrics['model']} on {metrics['data']} {metrics['split']} "
            f"(n={metrics['n']}, without input: {metrics['n_without_input']})")


def eval_report(metrics: dict) -> str:
    """The title, the per-class table, then UA / WA (and micro-F1 without neutral when scored)."""
    from mmer.metrics import format_report

    lines = [eval_title(metrics), format_report(metrics),
             f"UA (unweighted accuracy, mean recall) {metrics['ua']:.4f}   WA (weighted accuracy) {metrics['wa']:.4f}"]
    if "micro_f1_without_neutral" in metrics:
        lines.append(f"micro-F1 without neutral {metrics['micro_f1_without_neutral']:.4f}   "
                     f"(precision {metrics['micro_precision_without_neutral']:.4f}, "
                     f"recall {metrics['micro_recall_without_neutral']:.4f})")
    return "\n".join(lines)


def eval_main(argv: list[str] | None = None) -> int:
    """Entry point of ``mmer-eval MODEL --data NAME --split SPLIT --data-root DIR [--json OUT]``."""
    parser = argparse.ArgumentParser(
        prog="mmer-eval", description="Score a checkpoint folder, an embedded default or an export folder "
        "(mmer-export: the deployed artefact itself, on its runtime) on a dataset split: "
        "per-class report, weighted/macro F1, accuracy, UA/WA; on DailyDialog micro-F1 without neutral. "
        "ravdess and dailydialog are evaluation-only sets (split test).")
    add_version(parser)
    parser.add_argument("model", help="checkpoint folder, embedded default name, export folder, or 'default' for the whole "
                        "default live stack (calibrated modalities + fusion) over the set's audio and/or text")
    parser.add_argument("--data", required=True, choices=dataset_names())
    parser.add_argument("--split", default="test", choices=["train", "dev", "test"],
                        help="default test (the only split of ravdess and dailydialog)")
    parser.add_argument("--data-root", required=True, help="corpus folder")
    parser.add_argument("--clips-root", help="MELD clip folders when not under --data-root")
    parser.add_argument("--fold", type=int, help="EmoDB leave-one-speaker-out fold 0-9 (default: the fixed "
                        "split); TESS held-out test speaker 0 (OAF) or 1 (YAF)")
    parser.add_argument("--limit", type=int, default=0, help="score only the first N samples")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--runtime", default="auto", help="what serves the model: auto (an export folder's own "
                        "runtime; checkpoints in batched torch), torch, onnxruntime, tensorrt, tensorrt-rtx")
    parser.add_argument("--precision", choices=["fp32", "fp16", "int8", "int8-static"],
                        help="with --runtime onnxruntime on a checkpoint: the graph to build (default fp32)")
    parser.add_argument("--json", help="write the metrics here, and the confusion matrix next to it (.png)")
    args = parser.parse_args(argv)
    _setup_logging()
    from mmer.runtime import RuntimeUnavailable
    from mmer.serving import ServeError

    from tqdm.contrib.logging import logging_redirect_tqdm

    try:
        with logging_redirect_tqdm():   # log lines print above the progress bars, not through them
            if args.model == "default":
                metrics, report = evaluate_default(args.data, args.split, args.data_root, args.limit)
            else:
                metrics, report = evaluate_checkpoint(args.model, data=args.data, split=args.split,
                                                      root=args.data_root, clips_root=args.clips_root,
                                                      fold=args.fold, limit=args.limit,
                                                      batch_size=args.batch_size, device=args.device,
                                                      runtime=args.runtime, precision=args.precision)
    except KeyError as e:                 # an unknown runtime name, with the closest registered one
        print(f"mmer-eval: {e.args[0]}", file=sys.stderr)
        return EXIT_USAGE
    except (EvalError, ServeError, RuntimeUnavailable, *USER_ERRORS) as e:
        print(f"mmer-eval: {e}", file=sys.stderr)
        return EXIT_USAGE
    print(report)
    if args.json:
        from mmer.metrics import save_confusion_png

        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(metrics, indent=2), encoding="utf-8")
        try:
            png = save_confusion_png(metrics["confusion"], metrics["labels"], out.with_suffix(".png"),
                                     title=f"{metrics['model']} on {metrics['data']} {metrics['split']}")
        except MissingExtra as e:
            print(f"mmer-eval: metrics -> {out}; no confusion matrix: {e}", file=sys.stderr)
            return EXIT_USAGE
        print(f"mmer-eval: metrics -> {out}, confusion matrix -> {png}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m mmer.training.cli STAGE ...`` (what torchrun launches) is ``mmer-train``."""
    return train_main(argv)


if __name__ == "__main__":
    sys.exit(main())
