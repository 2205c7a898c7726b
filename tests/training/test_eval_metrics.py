"""The evaluation metrics of mmer.metrics that mmer-eval adds: UA and micro-F1 without neutral."""

from __future__ import annotations

import pytest
from sklearn.metrics import f1_score, precision_score, recall_score

from mmer.metrics import classification_metrics, micro_f1_excluding, unweighted_accuracy


def test_unweighted_accuracy_by_hand():
    # recalls: class 0 2/3, class 1 1/1, class 2 1/2; class 3 only predicted, never true
    y_true = [0, 0, 0, 1, 2, 2]
    y_pred = [0, 0, 3, 1, 0, 2]
    assert unweighted_accuracy(y_true, y_pred) == pytest.approx((2 / 3 + 1 + 1 / 2) / 3)
    m = classification_metrics(y_true, y_pred, ["a", "b", "c", "d"])
    assert m["accuracy"] == pytest.approx(4 / 6)
    # macro recall of the report averages over the whole label set, UA over the classes present
    assert m["macro_recall"] == pytest.approx((2 / 3 + 1 + 1 / 2 + 0) / 4)


def test_unweighted_equals_weighted_on_balanced_truth():
    y_true = [0, 0, 1, 1, 2, 2]
    y_pred = [0, 1, 1, 1, 0, 0]
    assert unweighted_accuracy(y_true, y_pred) == pytest.approx(3 / 6)


def test_micro_f1_without_neutral_by_hand():
    neutral = 0
    y_true = [0, 0, 1, 2, 2, 3]
    y_pred = [0, 1, 1, 0, 2, 0]
    # TP = 2 (indices 2, 4); non-neutral predictions 3 (1, 2, 4); non-neutral truths 4 (2, 3, 4, 5)
    got = micro_f1_excluding(y_true, y_pred, excluded=neutral)
    assert got["precision"] == pytest.approx(2 / 3)
    assert got["recall"] == pytest.approx(1 / 2)
    assert got["f1"] == pytest.approx(4 / 7)
    others = [1, 2, 3]
    assert got["f1"] == pytest.approx(f1_score(y_true, y_pred, labels=others, average="micro"))
    assert got["precision"] == pytest.approx(precision_score(y_true, y_pred, labels=others, average="micro"))
    assert got["recall"] == pytest.approx(recall_score(y_true, y_pred, labels=others, average="micro"))


def test_micro_f1_without_neutral_edge_cases():
    assert micro_f1_excluding([1, 2], [0, 0], excluded=0) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    assert micro_f1_excluding([0, 0], [0, 0], excluded=0) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    assert micro_f1_excluding([1, 2], [1, 2], excluded=0)["f1"] == pytest.approx(1.0)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="no predictions"):
        unweighted_accuracy([], [])
    with pytest.raises(ValueError, match="equal length"):
        micro_f1_excluding([0, 1], [0], excluded=0)
