"""The voice model begun at a pause in speech (SpeechPause): same audio, same prediction, state
committed once, and discarded when the utterance turns out otherwise. Real webrtcvad on espeak-ng
speech, the real default voice model on ONNX Runtime."""

from __future__ import annotations

import numpy as np
import pytest

from mmer.realtime.frames import SpeechPause, Utterance
from tests.realtime import media

pytestmark = pytest.mark.skipif(bool(media.missing_tools()), reason=f"needs {media.missing_tools()} on PATH")

TURNS = ("I lost my keys on the train this morning, and then, well, the bus was late.", "That is great news!")


def segment(wav_path, **config) -> list:
    return media.segment(*media.read_wav(wav_path), **config)


@pytest.fixture(scope="module")
def conversation(tmp_path_factory):
    wav, _ = media.cached(tmp_path_factory, "early.wav", lambda p: media.make_conversation_wav(p, TURNS), TURNS)
    return wav


def test_every_pause_before_an_end_carries_the_utterance_audio(conversation):
    items = segment(conversation)
    utterances = [i for i in items if isinstance(i, Utterance)]
    pauses = {p.key: p for p in items if isinstance(p, SpeechPause)}
    assert len(utterances) == len(TURNS)
    for u in utterances:
        assert u.key in pauses                      # the final pause of each turn
        np.testing.assert_array_equal(pauses[u.key].audio, u.audio)
        assert (pauses[u.key].start_s, pauses[u.key].end_s) == (u.start_s, u.end_s)
    assert not any(isinstance(i, SpeechPause) for i in segment(conversation, pause_events=False))


def test_an_early_run_gives_the_prediction_of_a_late_one(conversation):
    pytest.importorskip("onnxruntime")
    from mmer.realtime.predictor import Predictor
    from mmer.serving import serve

    items = segment(conversation)
    late, early = Predictor(voice_model=serve("default-voice", "onnxruntime")), \
        Predictor(voice_model=serve("default-voice", "onnxruntime"), parallel=True)
    try:
        for item in items:
            if isinstance(item, SpeechPause):
                early.speculate(item, "user")
            elif isinstance(item, Utterance):
                a, b = late.predict(item), early.predict(item)
                assert a.label == b.label
                np.testing.assert_allclose(list(a.probs.values()), list(b.probs.values()), atol=1e-5)
        # the speaker's statistics were extended once per utterance, not once per pause
        n = sum(isinstance(i, Utterance) for i in items)
        assert early.voice.processor.speakers.utterances("user") == late.voice.processor.speakers.utterances("user") == n
        # a pause whose speech went on, or another speaker, is not used
        last = next(i for i in reversed(items) if isinstance(i, Utterance))
        early.speculate(SpeechPause(last.key, last.start_s, last.end_s, last.audio), "user")
        other = Utterance(99, last.start_s, last.end_s, last.audio, speaker="sam", key=last.key)
        early.predict(other)
        assert early.voice.processor.speakers.utterances("sam") == 1
        assert early.voice.processor.speakers.utterances("user") == n
    finally:
        early.close()


def test_a_speaker_named_late_reuses_the_encoder_pass(conversation, tmp_path):
    """The host names the speaker after the pause: the early run's pooled feature goes through
    the export's speaker head with that speaker's statistics, which equals a late run for them."""
    pytest.importorskip("onnxruntime")
    import mmer
    from mmer.export import export
    from mmer.realtime.predictor import Predictor
    from mmer.serving import serve

    folder = tmp_path / "voice"
    export(mmer.load("default-voice"), "onnx", folder, ("parity.num_samples=2", "parity.audio_range_s=[0.5, 1.5]"))
    assert (folder / "speaker_head.onnx").is_file()
    utterances = [i for i in segment(conversation) if isinstance(i, Utterance)]
    for served in (serve(folder), serve("default-voice", "torch")):
        late, early = Predictor(voice_model=serve(folder)), Predictor(voice_model=served, parallel=True)
        # "user" (the speaker the early runs are made for) has a history unlike anyone's, so an
        # early result that were not re-read for the named speaker would differ.
        width = len(early.voice.processor.speakers.prior_mean)
        early.voice.processor.speakers.update("user", np.random.default_rng(0).normal(3.0, 2.0, width))
        try:
            for i, u in enumerate(utterances):
                early.speculate(SpeechPause(u.key, u.start_s, u.end_s, u.audio), "user")
                u.speaker = ("alex", "sam")[i % 2]
                a, b = late.predict(u), early.predict(u)
                np.testing.assert_allclose(list(a.probs.values()), list(b.probs.values()), atol=1e-4)
            assert early.voice.processor.speakers.utterances("user") == 1   # the seed only
            assert early.voice.processor.speakers.utterances("alex") == 1
        finally:
            early.close()
