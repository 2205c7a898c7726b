"""Classification metrics, the per-class report and the confusion-matrix picture.

The report is the layout of scikit-learn's ``classification_report`` (the per-class tables of
seed 000), built from the metrics dict so it can be re-printed from a saved ``metrics.json``.
Averages run over every class of the label set, as ``classification_report(labels=...)`` does:
a class with no support contributes 0 to macro F1 and nothing to weighted F1.

    m = classification_metrics(y_true, y_pred, get_label_set("meld7").labels)
    m["ua"] = unweighted_accuracy(y_true, y_pred)          # speech emotion: mean recall of present classes
    dd = micro_f1_excluding(y_true, y_pred, excluded=0)    # DailyDialog: micro-F1 without neutral
    print(format_report(m))
    save_confusion_png(m["confusion"], m["labels"], "run/confusion_matrix.png")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mmer.extras import require

REPORT_DIGITS = 4  # seed 000's tables print four decimals
LAST_LINE_HEADING = "weighted avg"  # the widest row name of the layout
FIGURE_INCHES_PER_CLASS = 0.9
FIGURE_MIN_INCHES = 4.0
FIGURE_DPI = 120


def _int_labels(y_true: Sequence[int], y_pred: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} must be 1-D of equal length")
    if y_true.size == 0:
        raise ValueError("no predictions to score")
    return y_true, y_pred


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[str]) -> dict:
    """Metrics of integer predictions ``y_pred`` against ``y_true`` (indices into ``labels``).

    Returns {"weighted_f1", "accuracy", "macro_f1", "weighted_precision", "weighted_recall",
    "macro_precision", "macro_recall", "per_class": {label: {precision, recall, f1, support}},
    "n", "labels", "confusion"}; ``confusion[i][j]`` counts true class i predicted as j.
    """
    require("sklearn")  # fails with the install command when the train extra is missing
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support
    y_true, y_pred = _int_labels(y_true, y_pred)
    ids = list(range(len(labels)))
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        if y.min() < 0 or y.max() >= len(labels):
            raise ValueError(f"{name} holds class ids outside 0..{len(labels) - 1} ({list(labels)})")
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=ids, average=None, zero_division=0)
    out: dict = {"n": int(y_true.size), "labels": list(labels), "accuracy": float((y_true == y_pred).mean())}
    for avg in ("weighted", "macro"):
        ap, ar, af, _ = precision_recall_fscore_support(y_true, y_pred, labels=ids, average=avg, zero_division=0)
        out[f"{avg}_f1"], out[f"{avg}_precision"], out[f"{avg}_recall"] = float(af), float(ap), float(ar)
    out["per_class"] = {
        lab: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
        for i, lab in enumerate(labels)
    }
    out["confusion"] = confusion_matrix(y_true, y_pred, labels=ids).tolist()
    return out


def unweighted_accuracy(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    """UA, the speech-emotion convention: mean per-class recall over the classes present in ``y_true``.

    UA = (1 / |K|) * sum_{k in K} |{i : t_i = k, p_i = k}| / |{i : t_i = k}|,  K = set(y_true).

    Unlike ``macro_recall`` of :func:`classification_metrics` (which averages over the whole
    label set), a class absent from the truth does not count; on balanced data UA equals the
    weighted accuracy WA (plain accuracy, ``accuracy`` in the metrics).
    """
    y_true, y_pred = _int_labels(y_true, y_pred)
    return float(np.mean([np.mean(y_pred[y_true == k] == k) for k in np.unique(y_true)]))


def micro_f1_excluding(y_true: Sequence[int], y_pred: Sequence[int], excluded: int) -> dict[str, float]:
    """Micro-averaged precision, recall and F1 over every class but ``excluded`` (DailyDialog: neutral).

    The DailyDialog ERC convention: with TP = |{i : p_i = t_i != e}|,
    precision = TP / |{i : p_i != e}|, recall = TP / |{i : t_i != e}|, F1 = 2PR / (P + R);
    an empty denominator gives 0. Same as sklearn's ``f1_score(labels=others, average="micro")``.

    Returns {"precision", "recall", "f1"}.
    """
    y_true, y_pred = _int_labels(y_true, y_pred)
    hits = int(np.sum((y_pred == y_true) & (y_true != excluded)))
    called, actual = int(np.sum(y_pred != excluded)), int(np.sum(y_true != excluded))
    precision = hits / called if called else 0.0
    recall = hits / actual if actual else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1)}


def format_report(metrics: dict, digits: int = REPORT_DIGITS) -> str:
    """The per-class table of :func:`classification_metrics`' output, in sklearn's layout."""
    per_class = metrics["per_class"]
    names = list(per_class)
    width = max(max(len(n) for n in names), len(LAST_LINE_HEADING), digits)
    headers = ["precision", "recall", "f1-score", "support"]
    report = ("{:>{width}s} " + " {:>9}" * len(headers)).format("", *headers, width=width) + "\n\n"
    row_fmt = "{:>{width}s} " + " {:>9.{digits}f}" * 3 + " {:>9}\n"
    for name in names:
        c = per_class[name]
        report += row_fmt.format(name, c["precision"], c["recall"], c["f1"], c["support"],
                                 width=width, digits=digits)
    report += "\n"
    n = metrics["n"]
    acc_fmt = "{:>{width}s} " + " {:>9.{digits}}" * 2 + " {:>9.{digits}f}" + " {:>9}\n"
    report += acc_fmt.format("accuracy", "", "", metrics["accuracy"], n, width=width, digits=digits)
    for avg in ("macro", "weighted"):
        report += row_fmt.format(f"{avg} avg", metrics[f"{avg}_precision"], metrics[f"{avg}_recall"],
                                 metrics[f"{avg}_f1"], n, width=width, digits=digits)
    return report


def save_confusion_png(confusion: Sequence[Sequence[int]], labels: Sequence[str], path: str | Path,
                       title: str | None = None) -> Path:
    """Draw the (C, C) count matrix, rows = true class, columns = predicted, as a PNG."""
    fig = confusion_figure(confusion, labels, title)   # first: it names the extra when matplotlib is missing
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def confusion_figure(confusion: Sequence[Sequence[int]], labels: Sequence[str], title: str | None = None) -> Any:
    """The matplotlib Figure of :func:`save_confusion_png`: the (C, C) counts coloured by
    row-normalised recall, ``labels`` as the tick labels of both axes."""
    matplotlib = require("matplotlib")
    matplotlib.use("Agg")  # no display on servers and CI; Agg writes files only
    import matplotlib.pyplot as plt

    counts = np.asarray(confusion, dtype=np.int64)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1] or counts.shape[0] != len(labels):
        raise ValueError(f"a confusion matrix of shape {counts.shape} needs one label per row; got {len(labels)}")
    row_sums = counts.sum(axis=1, keepdims=True)
    # Colour by row-normalised recall so rare classes are readable; the numbers stay raw counts.
    shade = np.divide(counts, row_sums, out=np.zeros(counts.shape, dtype=float), where=row_sums > 0)
    size = max(FIGURE_MIN_INCHES, FIGURE_INCHES_PER_CLASS * len(labels))
    fig, ax = plt.subplots(figsize=(size + 1.0, size), dpi=FIGURE_DPI)
    im = ax.imshow(shade, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title)
    for i in range(counts.shape[0]):
        for j in range(counts.shape[1]):
            ax.text(j, i, str(counts[i, j]), ha="center", va="center",
                    color="white" if shade[i, j] > 0.5 else "black", fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    fig.tight_layout()
    return fig


# -- multimodal sentiment analysis (CMU-MOSI / MOSEI), MMSA's definitions -----------------------
SENTIMENT_CLASSES_7 = tuple(str(v) for v in range(-3, 4))   # Acc-7 bins: round(clip(y, -3, 3))
MSA_METRICS = ("acc2_has0", "f1_has0", "acc2_non0", "f1_non0", "acc5", "acc7", "mae", "corr")


def _rounded_accuracy(pred: np.ndarray, true: np.ndarray, bound: float) -> float:
    # np.round rounds halves to even (0.5 -> 0, 1.5 -> 2), exactly as MMSA's __multiclass_acc does.
    return float(np.mean(np.round(np.clip(pred, -bound, bound)) == np.round(np.clip(true, -bound, bound))))


def msa_metrics(y_true: Sequence[float], y_pred: Sequence[float]) -> dict:
    """Sentiment-regression metrics with MMSA's definitions (REFERENCE.md section 3).

    - ``acc7`` / ``acc5``: clip truth and prediction to [-3, 3] / [-2, 2], round (halves to
      even, as numpy does), compare.
    - ``acc2_has0`` / ``f1_has0``: negative (< 0) vs non-negative (>= 0), zero labels included.
    - ``acc2_non0`` / ``f1_non0``: samples with truth exactly 0 dropped, then negative (<= 0)
      vs positive (> 0). F1 is the support-weighted F1 of the two classes (sklearn
      ``average="weighted"``).
    - ``mae``: mean absolute error; ``corr``: Pearson correlation.

    A metric that is undefined on the given data is ``None`` instead of a number: the non-0
    pair when every label is 0, ``corr`` when predictions or labels are constant (MMSA's code
    would crash or return NaN there). The dict also carries ``n``, ``n_non0``, ``labels`` and
    ``confusion`` (the 7-bin rounded confusion matrix, for the picture).
    """
    require("sklearn")
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

    true = np.asarray(y_true, dtype=np.float64).reshape(-1)
    pred = np.asarray(y_pred, dtype=np.float64).reshape(-1)
    if true.shape != pred.shape:
        raise ValueError(f"y_true has {true.size} values and y_pred {pred.size}")
    if true.size == 0:
        raise ValueError("no predictions to score")
    if not np.isfinite(pred).all():
        raise ValueError("predictions hold NaN or infinite values")
    out: dict = {"n": int(true.size)}
    has0_true, has0_pred = true >= 0, pred >= 0
    out["acc2_has0"] = float(accuracy_score(has0_true, has0_pred))
    out["f1_has0"] = float(f1_score(has0_true, has0_pred, average="weighted", zero_division=0))
    non0 = true != 0
    out["n_non0"] = int(non0.sum())
    if non0.any():
        t, p = true[non0] > 0, pred[non0] > 0
        out["acc2_non0"] = float(accuracy_score(t, p))
        out["f1_non0"] = float(f1_score(t, p, average="weighted", zero_division=0))
    else:
        out["acc2_non0"] = out["f1_non0"] = None
    out["acc5"] = _rounded_accuracy(pred, true, 2.0)
    out["acc7"] = _rounded_accuracy(pred, true, 3.0)
    out["mae"] = float(np.mean(np.abs(pred - true)))
    constant = np.ptp(pred) == 0 or np.ptp(true) == 0
    out["corr"] = None if constant else float(np.corrcoef(pred, true)[0, 1])
    bins = [int(v) for v in SENTIMENT_CLASSES_7]
    out["labels"] = list(SENTIMENT_CLASSES_7)
    out["confusion"] = confusion_matrix(np.round(np.clip(true, -3, 3)).astype(int),
                                        np.round(np.clip(pred, -3, 3)).astype(int), labels=bins).tolist()
    return out


def format_msa_report(metrics: dict, digits: int = REPORT_DIGITS) -> str:
    """One table of :func:`msa_metrics`' output, in the order MMSA's papers print them."""
    names = {"acc2_has0": "Acc-2 (has 0)", "f1_has0": "F1 (has 0)", "acc2_non0": "Acc-2 (non 0)",
             "f1_non0": "F1 (non 0)", "acc5": "Acc-5", "acc7": "Acc-7", "mae": "MAE", "corr": "Corr"}
    width = max(len(v) for v in names.values())
    lines = [f"{name:>{width}s}  {'n/a' if metrics.get(key) is None else format(metrics[key], f'.{digits}f')}"
             for key, name in names.items()]
    lines.append(f"{'n':>{width}s}  {metrics['n']} ({metrics.get('n_non0', '?')} non-zero)")
    return "\n".join(lines) + "\n"
