"""The embedded default voice model (mmer/assets/default-voice): the frozen Whisper tiny.en encoder
of the packaged wheel with a head trained on EmoDB. Loads offline, runs on a real EmoDB clip,
and keeps its measured accuracy on EmoDB's held-out speakers (speaker-causal normalisation).

Regression test on real data (docs/voice.md): a change in the Whisper front end, the speaker
normalisation or a retrained head that moves the committed model's scores down fails here.
The cross-corpus score on RAVDESS is measured by `mmer-eval default-voice --data ravdess`
(README); the evaluation set is never used in tests that could steer training.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import mmer
from mmer.audio import load_waveform
from mmer.calibration import Calibration
from mmer.checkpoint import read_meta, resolve
from mmer.labels import get_label_set
from mmer.training.cli import evaluate_checkpoint
from mmer.training.emodb import FIXED_SPLIT

DEFAULT = "default-voice"
MAX_CHECKPOINT_BYTES = 2 * 1024 * 1024  # the head and the speaker prior only: the encoder is not stored
# Measured with `mmer-eval default-voice --data emodb --split test --data-root ../shared/data/EmoDB`
# (docs/voice.md), 107 clips of speakers 03 and 08. Deterministic in eval mode; the margin only
# absorbs float differences between torch builds and CPUs.
MEASURED_TEST_UA = 0.856
MARGIN = 0.03
ANGER_CLIP = Path("wav") / "03a01Wa.wav"   # speaker 03 (a test speaker), sentence a01, anger

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_default_voice_loads_offline_with_provenance_and_calibration():
    model = mmer.load(DEFAULT)
    assert model.registry_name == "audio_student" and not model.training
    assert model.dims.family == "whisper" and model.label_set == "meld7"
    folder = resolve(DEFAULT)
    assert sum(p.stat().st_size for p in folder.iterdir()) < MAX_CHECKPOINT_BYTES
    meta = read_meta(DEFAULT)
    prov = meta["provenance"]
    assert prov["license"].startswith("CC0-1.0") and "tess" not in prov["train"]
    assert prov["split"]["test"] == list(FIXED_SPLIT["test"])
    assert not set(prov["split"]["train"]) & set(FIXED_SPLIT["test"]), "test speakers must be unseen"
    cal = Calibration.of(model)
    assert cal.temperature != 1.0 and 0.0 < cal.reliability <= 1.0 and "dev" in cal.fitted_on


def test_default_voice_hears_anger_in_a_real_emodb_clip(emodb_dir):
    model = mmer.load(DEFAULT)
    x = torch.from_numpy(load_waveform(emodb_dir / ANGER_CLIP))[None]
    with torch.no_grad():
        out = model(x)
    labels = get_label_set("meld7").labels
    assert out.probs.shape == (1, len(labels)) and math.isclose(float(out.probs.sum()), 1.0, rel_tol=1e-5)
    assert labels[int(out.probs.argmax())] == "anger"


def test_default_voice_keeps_its_held_out_speaker_accuracy(emodb_dir):
    metrics, report = evaluate_checkpoint(DEFAULT, data="emodb", split="test", root=str(emodb_dir))
    assert metrics["n"] == 107 and metrics["n_without_input"] == 0
    assert metrics["ua"] >= MEASURED_TEST_UA - MARGIN, report
