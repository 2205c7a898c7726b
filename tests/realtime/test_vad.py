"""VAD and segmentation on real espeak-ng speech, through the real webrtcvad (and Silero when
its model is installed). Ground truth is measured on the synthesized samples (media.py)."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

from mmer.config import from_dict
from mmer.realtime.frames import AudioChunk, Utterance, VadEvent
from mmer.realtime.vad import (SegmenterConfig, SileroVad, VadSegmenter, VadState, WebRtcVad, make_vad,
                               silero_model_path)
from tests.realtime import media

pytestmark = pytest.mark.skipif(bool(media.missing_tools("espeak-ng", "sox")),
                                reason=f"needs {media.missing_tools('espeak-ng', 'sox')} for test speech")

SR = media.SAMPLE_RATE_HZ
BLOCK = SR * 30 // 1000  # 30 ms capture blocks, as the microphone delivers them
TOLERANCE_S = 0.25
TURNS = ["hello there, how are you doing today", "I am fine thank you, and you", "not too bad at all"]
MONOLOGUE = ("so this is what happened when we went down to the harbour last summer and the boats were all "
             "painted in bright colours and the fishermen kept telling stories about storms and whales and "
             "lost nets while the children ran along the pier with ice cream melting in their hands and "
             "nobody wanted to go home before the sun went down behind the old lighthouse on the hill")


def wav_as_int16(path) -> np.ndarray:
    audio, sr = media.read_wav(path)
    assert sr == SR
    return np.round(audio * 32768).astype(np.int16)


def run(segmenter: VadSegmenter, samples: np.ndarray, block: int = BLOCK, flush: bool = True):
    """Push ``samples`` in blocks the way a source would; return everything polled."""
    out = []
    for i in range(0, len(samples), block):
        segmenter.push(AudioChunk(samples[i:i + block], i / SR))
        out += segmenter.poll()
    if flush:
        out += segmenter.flush()
    return out


def utterances(out) -> list[Utterance]:
    return [o for o in out if isinstance(o, Utterance)]


@pytest.fixture(scope="module")
def conversation(tmp_path_factory):
    path, bounds = media.cached(tmp_path_factory, "conversation.wav",
                                lambda p: media.make_conversation_wav(p, TURNS, silence_s=1.0, lead_s=0.5), TURNS)
    return wav_as_int16(path), bounds


def check_turns(out, bounds):
    utts = utterances(out)
    assert len(utts) == len(bounds), [(u.start_s, u.end_s) for u in utts]
    for u, (start, end) in zip(utts, bounds, strict=True):
        assert abs(u.start_s - start) < TOLERANCE_S, (u.start_s, start)
        assert abs(u.end_s - end) < TOLERANCE_S, (u.end_s, end)
        assert not u.split and u.end_of_speech_wall_s > 0
        assert u.audio.dtype == np.float32 and np.abs(u.audio).max() <= 1.0
        # audio = pre-roll + speech + post-roll, placed on the stream clock
        assert u.audio_start_s <= u.start_s
        assert abs(u.audio_start_s + len(u.audio) / SR - u.end_s) <= 0.15 + 1e-6
    assert [u.id for u in utts] == sorted(u.id for u in utts)
    kinds = [o.kind for o in out if isinstance(o, VadEvent)]
    assert kinds == ["start", "end"] * len(bounds)
    # Events precede the utterance they belong to, and every end comes right before its utterance.
    for i, o in enumerate(out):
        if isinstance(o, Utterance):
            assert isinstance(out[i - 1], VadEvent) and out[i - 1].kind == "end"


def test_webrtc_reframes_arbitrary_chunks(conversation):
    samples, _ = conversation
    whole = WebRtcVad().process(samples)
    vad = WebRtcVad()
    pieces, pos, k = [], 0, 0
    sizes = [7, 333, 481, 1000, 13]  # block sizes that never line up with 30 ms frames
    while pos < len(samples):
        pieces += vad.process(samples[pos:pos + sizes[k % len(sizes)]])
        pos += sizes[k % len(sizes)]
        k += 1
    assert len(whole) == len(samples) // vad.frame_samples
    assert pieces == whole and any(whole) and not all(whole)


def test_three_turn_conversation(conversation):
    samples, bounds = conversation
    check_turns(run(VadSegmenter(WebRtcVad()), samples), bounds)


def test_conversation_in_one_big_push(conversation):
    # A whole file pushed at once must give the same result (internally sliced; ring never overruns).
    samples, bounds = conversation
    check_turns(run(VadSegmenter(WebRtcVad()), samples, block=len(samples)), bounds)


def test_silence_gives_nothing(tmp_path_factory):
    path, _ = media.cached(tmp_path_factory, "silence.wav", lambda p: media.make_silence_wav(p, 5.0))
    segmenter = VadSegmenter(WebRtcVad())
    assert run(segmenter, wav_as_int16(path)) == []
    assert segmenter.state is VadState.QUIET


def test_monologue_is_split_at_max_length(tmp_path_factory):
    def build(p):
        s = media.speech(MONOLOGUE, words_per_minute=130)
        media.write_wav(p, np.concatenate([media.noise_floor(0.5), s, media.noise_floor(1.0)]))
        return [0.5, 0.5 + len(s) / SR]
    path, (start, end) = media.cached(tmp_path_factory, "monologue.wav", build, MONOLOGUE)
    assert end - start > 22.0  # about 25 s of talking
    max_s = 10.0
    utts = utterances(run(VadSegmenter(WebRtcVad(), max_utterance_s=max_s), wav_as_int16(path)))
    assert len(utts) >= 3
    assert all(u.split for u in utts)
    assert all(u.end_s - u.start_s <= max_s + 1e-6 for u in utts)
    assert abs(utts[0].start_s - start) < TOLERANCE_S and abs(utts[-1].end_s - end) < TOLERANCE_S
    # Pieces follow each other without gaps or overlaps where the cut was made mid-speech.
    for a, b in itertools.pairwise(utts):
        assert b.start_s >= a.end_s - 1e-6


def test_short_blip_is_dropped(tmp_path_factory):
    s = media.speech("bah")
    blip = s[len(s) // 2 - SR // 20:len(s) // 2 + SR // 20]  # 100 ms from the middle of a vowel
    samples = np.concatenate([media.noise_floor(1.0), blip, media.noise_floor(1.5)])
    samples = np.round(samples * 32768).astype(np.int16)
    # start_ms low enough that the blip reaches SPEAKING: what removes it is min_utterance_ms.
    segmenter = VadSegmenter(WebRtcVad(), start_ms=30, min_utterance_ms=250)
    out = run(segmenter, samples)
    assert utterances(out) == []
    assert [o.kind for o in out] == ["start", "end"]
    assert segmenter.dropped_short == 1
    # and the same blip is kept when the minimum is lowered below its length
    assert len(utterances(run(VadSegmenter(WebRtcVad(), start_ms=30, min_utterance_ms=50), samples))) == 1


def test_flush_emits_pending_utterance(conversation):
    samples, bounds = conversation
    cut = int((bounds[-1][1] + 0.1) * SR)  # the stream stops 100 ms after the last word
    segmenter = VadSegmenter(WebRtcVad())
    out = run(segmenter, samples[:cut], flush=False)
    assert len(utterances(out)) == 2 and segmenter.state in (VadState.SPEAKING, VadState.STOPPING)
    tail = segmenter.flush()
    last = utterances(tail)
    assert len(last) == 1 and abs(last[0].start_s - bounds[-1][0]) < TOLERANCE_S
    assert abs(last[0].end_s - bounds[-1][1]) < TOLERANCE_S
    assert segmenter.state is VadState.QUIET and segmenter.flush() == []


def test_reset_clears_state(conversation):
    samples, bounds = conversation
    segmenter = VadSegmenter(WebRtcVad())
    run(segmenter, samples[:int((bounds[0][0] + 1.0) * SR)], flush=False)  # stop mid first turn
    assert segmenter.state is not VadState.QUIET
    segmenter.reset()
    assert segmenter.state is VadState.QUIET and segmenter.poll() == [] and segmenter.flush() == []
    # after a reset the stream clock restarts from the next chunk, and segmentation works again
    check_turns(run(segmenter, samples), bounds)


def test_buffers_stay_bounded(conversation):
    samples, _ = conversation
    segmenter = VadSegmenter(WebRtcVad(), max_utterance_s=10.0)
    capacity = segmenter.buffer_capacity_samples
    for _ in range(3):
        run(segmenter, samples, flush=False)
        segmenter.reset()
    assert segmenter.buffer_capacity_samples == capacity
    assert segmenter._ring._buf.nbytes == capacity * 2  # int16 ring of fixed size


def test_gap_in_stream_keeps_clock(conversation):
    # A dropped capture block shows as a jump in start_s; times after it must follow the chunks.
    samples, bounds = conversation
    segmenter = VadSegmenter(WebRtcVad())
    gap_s = 0.3
    half = int(2.9 * SR) // BLOCK * BLOCK  # inside the silence after turn 1
    out = []
    for i in range(0, len(samples), BLOCK):
        t = i / SR + (gap_s if i >= half else 0.0)
        segmenter.push(AudioChunk(samples[i:i + BLOCK], t))
        out += segmenter.poll()
    utts = utterances(out + segmenter.flush())
    assert len(utts) == 3
    assert abs(utts[1].start_s - (bounds[1][0] + gap_s)) < TOLERANCE_S


def test_config_is_strict_and_frozen():
    cfg = from_dict(SegmenterConfig, {"end_silence_ms": 600, "vad": "webrtc"})
    assert cfg.end_silence_ms == 600.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.start_ms = 1.0
    segmenter = VadSegmenter.from_config(cfg)
    assert segmenter.end_silence_ms == 600.0 and isinstance(segmenter.vad, WebRtcVad)
    with pytest.raises(ValueError):
        WebRtcVad(frame_ms=25)


silero = pytest.mark.skipif(silero_model_path() is None,
                            reason="silero-vad not installed (pip install 'mmer[vad]' gives the ONNX file)")


@silero
def test_silero_three_turn_conversation(conversation):
    samples, bounds = conversation
    segmenter = VadSegmenter.from_config(SegmenterConfig(vad="silero"))
    assert isinstance(segmenter.vad, SileroVad) and segmenter.vad.frame_samples == 512
    check_turns(run(segmenter, samples), bounds)


@silero
def test_silero_ends_speech_in_white_noise_where_webrtc_does_not():
    # Broadband noise after speech: webrtcvad keeps calling it speech (a known weakness,
    # REFERENCE.md: ROC-AUC 0.73 vs 0.96), Silero ends the utterance.
    s = media.speech(TURNS[0])
    gap = media.noise_floor(1.5, level_dbfs=-50.0, color="white")
    samples = np.round(np.concatenate([gap, s, gap, s, gap]) * 32768).astype(np.int16)
    assert len(utterances(run(VadSegmenter(make_vad(SegmenterConfig(vad="silero"))), samples))) == 2
    assert len(utterances(run(VadSegmenter(WebRtcVad(mode=2)), samples))) < 2
