"""Label sets as data and the explicit maps between them."""

import numpy as np
import pytest

from mmer.labels import LABEL_MAPS, LabelMap, get_label_map, get_label_set


def test_meld_official_order():
    assert get_label_set("meld7").labels == ("neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger")


@pytest.mark.parametrize("name, n", [("meld7", 7), ("meld_sentiment3", 3), ("iemocap6", 6), ("iemocap4", 4),
                                     ("emodb7", 7), ("fer2013", 7)])
def test_sizes(name, n):
    assert len(get_label_set(name)) == n


def test_unknown_names_are_listed():
    with pytest.raises(KeyError, match="meld7"):
        get_label_set("meld8")
    with pytest.raises(KeyError, match="fer2013->meld7"):
        get_label_map("meld7", "fer2013")
    with pytest.raises(KeyError, match="anger"):
        get_label_set("meld7").index("angry")


def test_fer_to_meld_is_one_to_one():
    m = get_label_map("fer2013", "meld7")
    assert m.map_label("happy") == "joy" and m.map_label("angry") == "anger" and m.map_label("sad") == "sadness"
    assert (m.matrix().sum(axis=0) == 1).all() and (m.matrix().sum(axis=1) == 1).all()


@pytest.mark.parametrize("key", list(LABEL_MAPS))
def test_maps_preserve_probability_mass(key):
    m = LABEL_MAPS[key]
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(len(get_label_set(m.source))), size=5)
    q = m.map_probs(p)
    assert q.shape == (5, len(get_label_set(m.target)))
    np.testing.assert_allclose(q.sum(axis=1), 1.0, rtol=1e-5)


def test_emodb_cannot_express_surprise():
    m = get_label_map("emodb7", "meld7")
    covered = dict(zip(get_label_set("meld7").labels, m.covered()))
    assert not covered["surprise"] and covered["anger"]
    # boredom and neutral both land on neutral: their mass adds up
    p = np.zeros(7, dtype=np.float32)
    p[get_label_set("emodb7").index("boredom")] = 0.3
    p[get_label_set("emodb7").index("neutral")] = 0.7
    assert m.map_probs(p)[get_label_set("meld7").index("neutral")] == pytest.approx(1.0)


def test_iemocap_four_class_merge():
    m = get_label_map("iemocap6", "iemocap4")
    assert m.map_label("exc") == "hap"


def test_identity_map():
    m = get_label_map("meld7", "meld7")
    np.testing.assert_array_equal(m.matrix(), np.eye(7, dtype=np.float32))


def test_incomplete_map_is_refused():
    with pytest.raises(ValueError, match="every source label"):
        LabelMap("fer2013", "meld7", (("angry", "anger"),))
