"""The one-call Python API on the real packaged text model: raw text in, labelled emotions out."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

import mmer
from mmer.dialogue import Turn
from mmer.errors import UsageError
from mmer.labels import get_label_set

ASSETS = Path(mmer.__file__).parent / "assets"


@pytest.fixture(scope="module")
def text_model():
    return mmer.load("default-text")


def test_a_list_of_strings_gives_labelled_scores(text_model):
    (result,) = text_model(["I got the job!"])
    labels = get_label_set("meld7").labels
    assert result["label"] in labels and set(result["scores"]) == set(labels)
    assert 0 <= result["score"] <= 1 and result["score"] == max(result["scores"].values())
    assert math.isclose(sum(result["scores"].values()), 1.0, abs_tol=1e-4)
    assert result["label"] == "joy"  # the shipped teacher reads good news as joy


def test_batches_equal_one_by_one_and_inputs_take_every_form(text_model):
    texts = ["Hi.", "You're late again!", "I lost my keys on the train.", "Wow, really?"]
    batched = text_model(texts, batch_size=3)
    single = [text_model(t) for t in texts]
    assert [b["label"] for b in batched] == [s["label"] for s in single]
    assert all(math.isclose(b["score"], s["score"], abs_tol=1e-4) for b, s in zip(batched, single))
    pair = text_model(("ana", "You're late again!"))
    turn = text_model(Turn("ana", "You're late again!"))
    assert math.isclose(pair["score"], turn["score"], abs_tol=1e-6)


def test_a_nested_list_is_a_dialogue_classified_at_its_last_turn(text_model):
    dialogue = [("ana", "I failed my exam."), ("ben", "Oh no, I am so sorry.")]
    in_context = text_model([dialogue])[0]
    alone = text_model(("ben", "Oh no, I am so sorry."))
    assert in_context["label"] in get_label_set("meld7").labels
    assert in_context["scores"] != alone["scores"]  # the context is read
    out = text_model.predict_turns(dialogue)       # the tensor route takes the same forms
    assert out.probs.shape == (1, 7)


@pytest.mark.parametrize("bad", [5, [], [1, 2], ("only one",), {"text": "hi"}])
def test_bad_input_is_a_usage_error(text_model, bad):
    with pytest.raises(UsageError, match="turn|dialogue"):
        text_model(bad if not isinstance(bad, list) else [bad])


def test_batch_size_must_be_positive(text_model):
    with pytest.raises(UsageError, match="batch_size"):
        text_model(["hi"], batch_size=0)


@pytest.mark.parametrize("name", ["default-text", "default-voice", "default-face"])
def test_shipped_cards_carry_id2label(name):
    card = json.loads((ASSETS / name / "mmer.json").read_text())
    labels = get_label_set(card["label_set"]).labels
    assert card["id2label"] == {str(i): label for i, label in enumerate(labels)}


def test_a_saved_checkpoint_carries_id2label(tmp_path, text_model):
    from mmer.checkpoint import save_checkpoint

    folder = save_checkpoint(text_model, tmp_path / "ckpt")
    card = json.loads((folder / "mmer.json").read_text())
    assert card["id2label"]["0"] == get_label_set("meld7").labels[0]
    assert mmer.load(folder)("I got the job!")["label"] == text_model("I got the job!")["label"]
