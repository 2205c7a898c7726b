"""The embedded default voice model (mmer/assets/default-voice): loads offline, runs on a real
EmoDB clip, and keeps its measured accuracy on the fixed speaker-independent test split.

A regression test on real data (docs/voice.md): if retraining or a change in the audio front
end (mmer/audio.py, the edge network) moves the committed model's test scores down, it fails.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import mmer
from mmer.audio import load_waveform
from mmer.checkpoint import read_meta, resolve
from mmer.labels import get_label_map, get_label_set
from mmer.training.cli import evaluate_checkpoint
from mmer.training.emodb import FIXED_SPLIT

DEFAULT = "default-voice"
RATE_HZ = 16_000
CLIP_S = 2.0                         # every clip of the EmoDB mirror is 2.000 s
MAX_WEIGHTS_BYTES = 2 * 1024 * 1024  # the default ships in the wheel: keep it small
# Measured with `mmer-eval default-voice --data emodb --split test` (docs/voice.md), 107 clips of
# speakers 03 and 08. The model is deterministic in eval mode; the margin (about 2 clips) only
# absorbs float differences between torch builds and CPUs.
MEASURED_TEST_UA = 0.458              # unweighted accuracy = macro recall
MEASURED_TEST_WA = 0.542              # weighted accuracy = plain accuracy
MARGIN = 0.02
CHANCE_UA = 1 / 7                    # seven classes
ANGER_CLIP = Path("wav") / "03a01Wa.wav"   # speaker 03 (a test speaker), sentence a01, anger


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_default_voice_loads_offline_with_its_provenance():
    model = mmer.load(DEFAULT)
    assert model.registry_name == "audio_student" and not model.training
    assert model.dims.family == "edge" and model.label_set == "emodb7"
    folder = resolve(DEFAULT)
    assert sum(p.stat().st_size for p in folder.iterdir()) < MAX_WEIGHTS_BYTES
    prov = read_meta(DEFAULT)["provenance"]
    assert prov["license"].startswith("CC0-1.0")
    assert prov["split"]["test"] == list(FIXED_SPLIT["test"])
    assert not set(prov["split"]["train"]) & set(FIXED_SPLIT["test"]), "test speakers must be unseen"


def test_default_voice_runs_on_a_real_emodb_clip(emodb_dir):
    x = load_waveform(emodb_dir / ANGER_CLIP)
    assert x.shape == (int(CLIP_S * RATE_HZ),)
    model = mmer.load(DEFAULT)
    with torch.no_grad():
        out = model(torch.from_numpy(x)[None])
    labels = get_label_set("emodb7").labels
    assert out.probs.shape == (1, len(labels)) and torch.isfinite(out.features["audio"]).all()
    assert math.isclose(float(out.probs.sum()), 1.0, rel_tol=1e-5)
    meld = get_label_map("emodb7", "meld7").map_probs(out.probs.numpy())
    assert meld[0, get_label_set("meld7").index("surprise")] == 0.0  # EmoDB has no surprise to map from


def test_default_voice_keeps_its_accuracy_on_unseen_test_speakers(emodb_dir):
    metrics, report = evaluate_checkpoint(DEFAULT, data="emodb", split="test", root=str(emodb_dir), device="cpu")
    assert metrics["n"] == 107 and metrics["n_without_input"] == 0, report
    assert metrics["macro_recall"] >= MEASURED_TEST_UA - MARGIN, report
    assert metrics["accuracy"] >= MEASURED_TEST_WA - MARGIN, report
    assert metrics["macro_recall"] > 2 * CHANCE_UA, report
