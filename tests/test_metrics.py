"""mmer.metrics: numbers against sklearn, the report layout, the confusion picture."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import classification_report, f1_score

from mmer.labels import get_label_set
from mmer.metrics import (SENTIMENT_CLASSES_7, classification_metrics, confusion_figure, format_report, msa_metrics,
                          save_confusion_png)

LABELS = get_label_set("meld7").labels


def _sample():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 7, size=200)
    y_pred = np.where(rng.random(200) < 0.6, y_true, rng.integers(0, 7, size=200))
    return y_true, y_pred


def test_metrics_match_hand_values():
    # 3 classes; class 2 never occurs nor is predicted.
    m = classification_metrics([0, 0, 1, 1], [0, 1, 1, 1], ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["per_class"]["a"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2}
    assert m["per_class"]["b"]["precision"] == pytest.approx(2 / 3)
    assert m["per_class"]["b"]["f1"] == pytest.approx(0.8)
    assert m["weighted_f1"] == pytest.approx((2 / 3 + 0.8) / 2)
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.8 + 0.0) / 3)
    assert m["confusion"] == [[1, 1, 0], [0, 2, 0], [0, 0, 0]]
    assert m["n"] == 4
    json.dumps(m)  # everything is plain JSON


def test_metrics_and_report_match_sklearn():
    y_true, y_pred = _sample()
    m = classification_metrics(y_true, y_pred, LABELS)
    assert m["weighted_f1"] == pytest.approx(f1_score(y_true, y_pred, average="weighted"))
    assert m["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    expected = classification_report(y_true, y_pred, labels=list(range(7)), target_names=list(LABELS), digits=4,
                                     zero_division=0)
    assert format_report(m) == expected


def test_bad_ids_are_refused():
    with pytest.raises(ValueError, match="outside"):
        classification_metrics([0, 7], [0, 1], LABELS)


def test_confusion_png(tmp_path):
    y_true, y_pred = _sample()
    m = classification_metrics(y_true, y_pred, LABELS)
    path = save_confusion_png(m["confusion"], LABELS, tmp_path / "cm.png", title="test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 5000


def test_regression_confusion_is_labelled_with_the_acc7_bins():
    m = msa_metrics([-3.0, -0.4, 0.2, 1.6, 2.9], [-2.6, 0.1, 0.4, 2.2, 3.4])
    fig = confusion_figure(m["confusion"], m["labels"], title="test")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == list(SENTIMENT_CLASSES_7)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["-3", "-2", "-1", "0", "1", "2", "3"]
    assert ax.get_title() == "test"
