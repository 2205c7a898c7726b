"""Per-utterance prediction with real (tiny, random-weight) models and the real face path.

The session fixtures here (tiny teacher, voice student, ASF stack and their checkpoints) are
imported by the pipeline and CLI tests too.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from mmer.dialogue import Turn
from mmer.labels import get_label_set
from mmer.media import SAMPLE_RATE_HZ
from mmer.realtime.face_path import FacePath, pool_observations
from mmer.realtime.frames import Utterance, VideoFrame
from mmer.realtime.predictor import (CIRCUMPLEX_DEG, ROS4HRI_EXPRESSION, Predictor, load_model, valence_arousal)
from tests.realtime.test_face_path import astronaut_frame, face_model  # noqa: F401  (fixture)

KD = 24  # distillation width of every tiny model (divisible by ASF's 3 heads)
MELD7 = get_label_set("meld7").labels


@pytest.fixture(scope="session")
def tiny_teacher(tiny_text_encoder_dir):
    from mmer.models.teacher import Teacher, TeacherDims

    torch.manual_seed(0)
    return Teacher.from_pretrained(TeacherDims(encoder=str(tiny_text_encoder_dir), kd_dim=KD, max_tokens=128)).eval()


@pytest.fixture(scope="session")
def tiny_voice():
    from mmer.models.audio_student import AudioStudent, AudioStudentDims

    torch.manual_seed(1)
    dims = AudioStudentDims.for_edge(label_set="emodb7", kd_dim=KD, stem_channels=16, block_channels=(16, 16),
                                     block_strides=(2, 2), attention_dim=8)
    return AudioStudent(dims).eval()


@pytest.fixture(scope="session")
def tiny_face_student():
    """An edge visual student distilled to KD (random weights): the face model of a TelME stack."""
    from mmer.models.visual_student import VisualStudent, VisualStudentDims

    torch.manual_seed(2)
    return VisualStudent(VisualStudentDims(family="edge", label_set="fer2013", kd_dim=KD)).eval()


@pytest.fixture(scope="session")
def tiny_asf():
    from mmer.models.asf import ASF, ASFDims

    torch.manual_seed(3)
    return ASF(ASFDims(kd_dim=KD, num_heads=3)).eval()


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory, tiny_teacher, tiny_voice, tiny_face_student, tiny_asf):
    """Checkpoint folders of the tiny models: {"text", "voice", "face_kd", "asf"}."""
    from mmer.checkpoint import save_checkpoint

    root = tmp_path_factory.mktemp("tiny_ckpt")
    models = {"text": tiny_teacher, "voice": tiny_voice, "face_kd": tiny_face_student, "asf": tiny_asf}
    return {k: save_checkpoint(m, root / k, provenance={"recipe": "tiny random test model"})
            for k, m in models.items()}


def speechlike(duration_s: float = 1.0, seed: int = 0) -> np.ndarray:
    """(n,) float32 amplitude-modulated harmonics: enough signal for the voice model to run."""
    t = np.arange(int(duration_s * SAMPLE_RATE_HZ)) / SAMPLE_RATE_HZ
    f0 = 140 + 20 * np.random.default_rng(seed).standard_normal()
    x = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6)) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t))
    return (0.1 * x).astype(np.float32)


def utterance(text: str | None = "I am so happy today", uid: int = 0, duration_s: float = 1.0) -> Utterance:
    return Utterance(uid, 1.0, 1.0 + duration_s, speechlike(duration_s, uid), text=text)


@pytest.fixture(scope="module")
def face_evidence(face_model):  # noqa: F811
    path = FacePath(face_model)
    return pool_observations([path.observe(VideoFrame(astronaut_frame(s), 0.1 * i, i)) for i, s in enumerate((0, 6))])


def _check_prediction(pred, modalities):
    d = pred.to_dict()
    json.dumps(d)
    assert d["modalities"] == modalities and sorted(d["modality_probs"]) == sorted(modalities)
    assert list(d["probs"]) == list(MELD7) and abs(sum(d["probs"].values()) - 1) < 1e-3
    assert d["label"] == max(d["probs"], key=d["probs"].get) and d["expression"] == ROS4HRI_EXPRESSION[d["label"]]
    assert -1 <= d["valence"] <= 1 and -1 <= d["arousal"] <= 1 and 0 <= d["confidence"] <= 1
    for probs in d["modality_probs"].values():
        assert list(probs) == list(MELD7) and abs(sum(probs.values()) - 1) < 1e-3
    return d


def test_all_three_modalities_late_fusion(tiny_teacher, tiny_voice, face_evidence):
    pred = Predictor(tiny_teacher, tiny_voice, "fer2013")
    assert pred.modalities == ["text", "audio", "visual"] and pred.fusion_name == "late"
    utt = utterance()
    d = _check_prediction(pred.predict(utt, [Turn("robot", "How are you?"), Turn("user", utt.text)], face_evidence),
                          ["text", "audio", "visual"])
    assert d["fusion"] == "late" and d["face"]["faces"] == 2
    assert d["modality_probs"]["audio"]["surprise"] == 0.0  # EmoDB has no surprise: the map cannot reach it
    assert {"text", "voice", "fusion"} <= set(utt.timings_ms) and all(v >= 0 for v in utt.timings_ms.values())


@pytest.mark.parametrize("which", ["text", "audio", "visual"])
def test_each_single_modality(which, tiny_teacher, tiny_voice, face_evidence):
    pred = Predictor(tiny_teacher if which == "text" else None, tiny_voice if which == "audio" else None,
                     "fer2013" if which == "visual" else None)
    utt = utterance()
    d = _check_prediction(pred.predict(utt, [Turn("user", utt.text)], face_evidence), [which])
    assert d["fusion"] == "single"
    if which != "audio":  # a modality covering all 7 classes alone is returned as it is
        np.testing.assert_allclose(list(d["probs"].values()), list(d["modality_probs"][which].values()), atol=1e-4)


def test_missing_words_or_face_turn_those_modalities_off(tiny_teacher, tiny_voice):
    pred = Predictor(tiny_teacher, tiny_voice, "fer2013")
    utt = utterance(text="")
    _check_prediction(pred.predict(utt, [Turn("user", "")], None), ["audio"])
    assert "text" not in utt.timings_ms
    empty = Predictor(tiny_teacher)
    d = _check_prediction(empty.predict(utterance(text=None), None, None), [])
    assert d["confidence"] == 0.0 and d["fusion"] == "none"


def test_teacher_reads_the_dialogue_context(tiny_teacher):
    pred = Predictor(tiny_teacher)
    target = Turn("user", "Really?")
    alone = pred.predict(utterance(target.text), [target]).probs
    context = [Turn("robot", "Your flight was cancelled."), Turn("user", "What? No!"), target]
    with_context = pred.predict(utterance(target.text), context).probs
    assert max(abs(alone[k] - with_context[k]) for k in MELD7) > 1e-4


def test_asf_stack_fuses_teacher_and_student_features(tiny_teacher, tiny_voice, tiny_face_student, tiny_asf):
    from mmer.face import FaceExpressionModel

    face = FaceExpressionModel(tiny_face_student)
    path = FacePath(face)
    evidence = pool_observations([path.observe(VideoFrame(astronaut_frame(), 0.0, 0))])
    assert evidence.feature.shape == (KD,)
    pred = Predictor(tiny_teacher, tiny_voice, "fer2013", fusion=tiny_asf, face_feature_dim=KD)
    assert pred.fusion_name == "asf"
    utt = utterance()
    turns = [Turn("user", utt.text)]
    d = _check_prediction(pred.predict(utt, turns, evidence), ["text", "audio", "visual"])
    assert d["fusion"] == "asf"
    with torch.inference_mode():  # the same numbers by hand: features -> ASF
        batch = tiny_teacher.prompt.collate([tiny_teacher.prompt.encode(turns, -1)])
        text = tiny_teacher(**batch).features["text"]
        audio = tiny_voice(torch.from_numpy(utt.audio)[None]).features["audio"]
        ref = tiny_asf(text=text, audio=audio, visual=torch.from_numpy(evidence.feature)[None]).probs[0].numpy()
    np.testing.assert_allclose(list(d["probs"].values()), ref, atol=1e-4)
    # No words: ASF is led by the text, so the other modalities fall back to late fusion.
    assert pred.predict(utterance(text=""), None, evidence).fusion == "late"


def test_asf_refuses_features_of_another_width(tiny_teacher, tiny_voice, tiny_asf):
    with pytest.raises(ValueError, match="kd_dim"):
        Predictor(tiny_teacher, tiny_voice, "fer2013", fusion=tiny_asf, face_feature_dim=768)
    with pytest.raises(ValueError, match="text"):
        Predictor(None, tiny_voice, fusion=tiny_asf)


def test_late_fusion_checkpoint_must_match_the_label_sets(tiny_teacher, tiny_voice):
    from mmer.models.late_fusion import LateFusion, LateFusionDims

    wrong = LateFusion(LateFusionDims(source_label_sets=("meld7", "iemocap6", "fer2013")))
    with pytest.raises(ValueError, match="audio"):
        Predictor(tiny_teacher, tiny_voice, "fer2013", fusion=wrong)
    right = LateFusion(LateFusionDims(base_weights=(1.0, 0.0, 0.0)))
    d = Predictor(tiny_teacher, tiny_voice, fusion=right).predict(utterance(), [Turn("user", "yes")]).to_dict()
    np.testing.assert_allclose(list(d["probs"].values()), list(d["modality_probs"]["text"].values()), atol=1e-4)


def test_load_model_checks_the_kind(tiny_checkpoints):
    assert load_model("text", tiny_checkpoints["text"]).registry_name == "teacher"
    with pytest.raises(ValueError, match="reads text, the voice model must read audio"):
        load_model("voice", tiny_checkpoints["text"])


def test_circumplex_table():
    assert set(CIRCUMPLEX_DEG) == set(MELD7) == set(ROS4HRI_EXPRESSION)
    one_hot = {lab: valence_arousal(np.eye(7)[i], MELD7) for i, lab in enumerate(MELD7)}
    assert one_hot["neutral"] == (0.0, 0.0)
    assert one_hot["joy"][0] > 0.9 and one_hot["sadness"][0] < -0.8 and one_hot["sadness"][1] < -0.4
    assert one_hot["anger"][1] > 0.9 and one_hot["fear"][0] < 0 < one_hot["fear"][1]
    assert all(math.hypot(v, a) <= 1 + 1e-9 for v, a in one_hot.values())
    assert valence_arousal(np.full(7, 1 / 7), MELD7)[0] < 0  # more negative than positive classes
