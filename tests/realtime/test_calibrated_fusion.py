"""Calibrated late fusion and abstention in the live predictor (issue: every modality earns its vote)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mmer
from mmer.calibration import Calibration
from mmer.labels import get_label_set
from mmer.models.late_fusion import LateFusion, LateFusionDims
from mmer.realtime.frames import Utterance
from mmer.realtime.predictor import Predictor, voice_input_problem
from mmer.training.voice import fit_temperature, skill

LABELS = get_label_set("meld7").labels
RATE_HZ = 16_000
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _overconfident_dev(right_rate: float, n: int = 700, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Dev logits of a model right ``right_rate`` of the time but always near-certain."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(LABELS), n)
    guess = np.where(rng.random(n) < right_rate, labels, rng.integers(0, len(LABELS), n))
    logits = rng.normal(0, 0.3, (n, len(LABELS)))
    logits[np.arange(n), guess] += 9.0
    return logits, labels


def _fuse(probs: dict[str, np.ndarray], weights: tuple[float, float]) -> str:
    fusion = LateFusion(LateFusionDims(modalities=("text", "audio"), source_label_sets=("meld7", "meld7"),
                                       base_weights=weights))
    out = fusion({m: torch.from_numpy(p)[None] for m, p in probs.items()})
    return LABELS[int(out.probs.argmax())]


def test_a_confidently_wrong_modality_stops_winning_once_calibrated():
    # The voice is near-certain and right 20 % of the time on its dev split, the text right 70 %.
    voice_dev, voice_y = _overconfident_dev(0.2, seed=1)
    text_dev, text_y = _overconfident_dev(0.7, seed=2)
    voice_cal = Calibration(temperature=fit_temperature(voice_dev, voice_y),
                            reliability=skill(float((voice_dev.argmax(-1) == voice_y).mean()), 7))
    text_cal = Calibration(temperature=fit_temperature(text_dev, text_y),
                           reliability=skill(float((text_dev.argmax(-1) == text_y).mean()), 7))
    # One utterance: truth is joy; the text says joy fairly surely, the voice shouts fear.
    text_logits = np.zeros(7); text_logits[LABELS.index("joy")] = 4.0; text_logits[LABELS.index("fear")] = 1.0
    voice_logits = np.zeros(7); voice_logits[LABELS.index("fear")] = 12.0
    raw = {"text": Calibration().probs(text_logits), "audio": Calibration().probs(voice_logits)}
    assert _fuse(raw, (1.0, 1.0)) == "fear"      # uncalibrated: the loud modality wins
    calibrated = {"text": text_cal.probs(text_logits), "audio": voice_cal.probs(voice_logits)}
    assert voice_cal.temperature > text_cal.temperature and voice_cal.reliability < text_cal.reliability
    assert _fuse(calibrated, (text_cal.reliability, voice_cal.reliability)) == "joy"


def _tone(seconds: float, level: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * RATE_HZ)) / RATE_HZ
    return (level * np.sin(2 * np.pi * 180 * t) * np.hanning(len(t))).astype(np.float32)


def test_out_of_range_audio_is_named():
    assert voice_input_problem(_tone(0.2)).startswith("too short")
    assert voice_input_problem(np.zeros(RATE_HZ, np.float32)) == "near-silent"
    assert voice_input_problem(np.clip(_tone(1.0, 5.0), -1, 1)) == "clipped"
    assert voice_input_problem(_tone(1.0)) == ""


def test_abstention_is_recorded_in_the_prediction_json():
    voice = mmer.load("default-voice")
    predictor = Predictor(voice_model=voice, face_label_set="fer2013")
    short = Utterance(id=0, start_s=0.0, end_s=0.2, audio=_tone(0.2))
    d = predictor.predict(short, None, None).to_dict()
    assert d["abstained"]["audio"].startswith("too short") and d["abstained"]["visual"] == "no face"
    assert d["modalities"] == [] and d["fusion"] == "none"
    long = Utterance(id=1, start_s=0.0, end_s=1.5, audio=_tone(1.5), speaker="ann")
    d = predictor.predict(long, None, None).to_dict()
    assert "audio" not in d["abstained"] and d["modalities"] == ["audio"] and d["weights"] == {"audio": 1.0}
    assert predictor.voice.processor.speakers.utterances("ann") == 1   # the speaker's statistics started
