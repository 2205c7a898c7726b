"""The one-call Python API on the packaged defaults (text, voice, face) and tiny random models:
raw input in, labelled emotions out."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import mmer
from mmer.dialogue import Turn, as_turns
from mmer.errors import UsageError
from mmer.labels import get_label_set
from mmer.media import SAMPLE_RATE_HZ, resample
from mmer.models.audio_student import AudioStudent, AudioStudentDims
from mmer.outputs import EmotionOutput

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


def test_a_dialogue_classifies_every_turn_in_its_context(text_model):
    turns = [("ana", "I failed my exam."), ("ben", "Oh no, I am so sorry."), Turn("ana", "Thanks.")]
    every = text_model(dialogue=turns, batch_size=2)
    assert len(every) == 3
    assert math.isclose(every[0]["score"], text_model(turns[0])["score"], abs_tol=1e-4)  # nothing before it
    assert math.isclose(every[1]["score"], text_model([turns[:2]])[0]["score"], abs_tol=1e-4)  # never what follows
    assert math.isclose(every[2]["score"], text_model([turns])[0]["score"], abs_tol=1e-4)
    with pytest.raises(UsageError, match="dialogue"):
        text_model.recognize(["hi"], dialogue=turns)


def test_tensors_alone_are_the_torch_forward(text_model):
    batch = text_model.prompt.collate([text_model.prompt.encode(as_turns("Hi."))])
    out = text_model(batch["input_ids"], batch["attention_mask"])
    assert isinstance(out, EmotionOutput) and out.probs.shape == (1, 7)


# -- voice: the packaged default-voice and a tiny random edge model -------------------------------
def tone(rate_hz: int, seconds: float = 1.5, seed: int = 0) -> np.ndarray:
    """A wobbling 220 Hz tone with a little noise, float32 (n,) at ``rate_hz``."""
    t = np.arange(int(rate_hz * seconds)) / rate_hz
    noise = np.random.default_rng(seed).standard_normal(t.size)
    return (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t)) + 0.01 * noise).astype(np.float32)


@pytest.fixture(scope="module")
def voice_model():
    return mmer.load("default-voice")


def tiny_edge_voice() -> AudioStudent:
    torch.manual_seed(0)
    return AudioStudent(AudioStudentDims.for_edge(kd_dim=16, stem_channels=16, block_channels=(16, 24),
                                                  block_strides=(1, 2))).eval()


def assert_labelled(result: dict, label_set: str) -> None:
    labels = get_label_set(label_set).labels
    assert result["label"] in labels and list(result["scores"]) == list(labels)
    assert 0 <= result["score"] <= 1 and result["score"] == max(result["scores"].values())
    assert math.isclose(sum(result["scores"].values()), 1.0, abs_tol=1e-4)


def test_voice_numpy_at_44k_is_resampled_once(voice_model):
    clip = tone(44_100)
    result = voice_model(clip, sample_rate_hz=44_100)
    assert_labelled(result, "meld7")
    at_16k = voice_model(resample(clip, 44_100, SAMPLE_RATE_HZ))   # no rate: the model's 16 kHz
    assert result["scores"] == pytest.approx(at_16k["scores"], abs=1e-5)


@pytest.mark.parametrize("model", ["default-voice", "tiny-edge"])
def test_voice_batches_equal_one_by_one(voice_model, model):
    voice = voice_model if model == "default-voice" else tiny_edge_voice()
    a, b = tone(SAMPLE_RATE_HZ, seed=1), tone(SAMPLE_RATE_HZ, seed=2)[::-1].copy()
    batched = voice(torch.from_numpy(np.stack([a, b])), sample_rate_hz=SAMPLE_RATE_HZ)  # torch (B, T)
    ragged = voice([a, torch.from_numpy(b[:9_000])], batch_size=2)                   # a list, any lengths
    for got, clip in zip(batched + ragged, [a, b, a, b[:9_000]]):
        assert_labelled(got, voice.label_set)
        assert got["scores"] == pytest.approx(voice(clip)["scores"], abs=1e-4)
    pcm = (a * 32767).astype(np.int16)
    assert voice(pcm)["scores"] == pytest.approx(voice(a)["scores"], abs=1e-3)  # int16 PCM is read as /32768


@pytest.mark.parametrize("bad, match", [
    (np.zeros((2, 3, 1600), np.float32), r"\(B, T\).*3-D"),
    (np.zeros(1600, np.int32), "int16"),
    (np.zeros(1600, bool), "int16"),
    (np.zeros((16_000, 2), np.float32), "mono"),
    (np.zeros(0, np.float32), "empty"),
    (np.full(1600, np.nan, np.float32), "NaN"),
    ([0.1, 0.2], "numpy"),
])
def test_bad_voice_input_is_a_usage_error(bad, match):
    with pytest.raises(UsageError, match=match):
        tiny_edge_voice()(bad)


def test_voice_rate_and_tensor_rank_errors_name_the_fix():
    voice = tiny_edge_voice()
    with pytest.raises(UsageError, match="sample_rate_hz"):
        voice(tone(SAMPLE_RATE_HZ), sample_rate_hz=0)
    with pytest.raises(UsageError, match=r"\(B, T\).*sample_rate_hz"):  # a 1-D tensor alone is forward's input
        voice(torch.zeros(1600))
    assert_labelled(voice(torch.zeros(1600), sample_rate_hz=SAMPLE_RATE_HZ), voice.label_set)


# -- face: the packaged default-face (fer2013) ------------------------------------------------------
@pytest.fixture(scope="module")
def face_model():
    return mmer.load("default-face")


def test_face_takes_bgr_gray_batches_and_torch(face_model):
    rng = np.random.default_rng(0)
    bgr = rng.integers(0, 256, (120, 100, 3), dtype=np.uint8)
    assert_labelled(face_model(bgr), "fer2013")
    gray = rng.integers(0, 256, (4, 64, 64), dtype=np.uint8)
    batched = face_model(gray, batch_size=3)
    assert [b["scores"] for b in batched] == [pytest.approx(face_model(g)["scores"], abs=1e-5) for g in gray]
    as_float = face_model.recognize(torch.from_numpy(gray).float() / 255)   # float in [0, 1], torch
    assert [f["scores"] for f in as_float] == [pytest.approx(b["scores"], abs=1e-5) for b in batched]
    rgb = face_model(bgr[..., ::-1].copy(), bgr=False)
    assert rgb["scores"] == pytest.approx(face_model(bgr)["scores"], abs=1e-6)


@pytest.mark.parametrize("bad, match", [
    (np.zeros((2, 3, 64, 64), np.float32), "channels-first"),
    (np.zeros((64, 64), np.int16), "uint8"),
    (np.zeros((64, 64, 4), np.uint8), r"C in \(1, 3\)"),
    (np.full((64, 64), 200.0), r"\[0, 1\]"),
    (np.zeros((1, 2, 3, 4, 5), np.uint8), "5-D"),
    ("face.png", "numpy"),
])
def test_bad_face_input_is_a_usage_error(face_model, bad, match):
    with pytest.raises(UsageError, match=match):
        face_model(bad)


# -- cards without id2label ------------------------------------------------------------------------
def test_a_card_without_id2label_loads_and_a_wrong_one_is_refused(tmp_path):
    from mmer.checkpoint import CheckpointError, save_checkpoint

    folder = save_checkpoint(tiny_edge_voice(), tmp_path / "voice")
    card_path = folder / "mmer.json"
    card = json.loads(card_path.read_text())
    del card["id2label"]
    card_path.write_text(json.dumps(card))
    filled = mmer.load(folder).checkpoint_meta["id2label"]
    assert filled == {str(i): label for i, label in enumerate(get_label_set("meld7").labels)}
    card["id2label"] = {"0": "joy"}
    card_path.write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="id2label"):
        mmer.load(folder)
