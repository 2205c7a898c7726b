"""Voice activity detection and utterance segmentation.

Two layers, kept apart as in pipecat (STYLE.md): a frame classifier (:class:`WebRtcVad` or
:class:`SileroVad`) that says "speech / not speech" for each fixed-size frame, and the
:class:`VadSegmenter` state machine QUIET -> STARTING -> SPEAKING -> STOPPING that turns those
per-frame flags into start/end events and whole :class:`Utterance`\\ s with named durations.
Both are synchronous ``push / poll / flush / reset`` objects with bounded buffers, so a file
replay and a microphone give the same utterances.
"""

from __future__ import annotations

import enum
import importlib.util
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from mmer.config import bounded
from mmer.extras import MissingExtra, require
from mmer.realtime.frames import SAMPLE_RATE_HZ, AudioChunk, SpeechPause, SpeechResumed, SpeechSoFar, Utterance, VadEvent

from mmer.media import INT16_FULL_SCALE  # int16 -> float32 in [-1, 1)
WEBRTC_FRAME_MS = (10, 20, 30)  # the only frame lengths webrtcvad accepts
WEBRTC_RATES_HZ = (8000, 16000, 32000, 48000)
SILERO_FRAME_SAMPLES = 512  # Silero v5 at 16 kHz takes exactly 512-sample (32 ms) chunks
SILERO_CONTEXT_SAMPLES = 64  # ... each preceded by the last 64 samples of the previous chunk
SILERO_STATE_SHAPE = (2, 1, 128)  # recurrent state (2, batch, 128)
SILERO_HYSTERESIS = 0.15  # Silero's VADIterator ends speech at threshold - 0.15
CLOCK_TOLERANCE_S = 1e-3  # a chunk start further than this from the expected time is a gap
MAX_PUSH_SLICE_S = 1.0  # big pushes are cut into slices so the ring buffer never overruns


class FrameVad(Protocol):
    """A per-frame speech classifier: ``process`` takes any number of int16 samples and
    returns one bool per *complete* frame of ``frame_samples``; the remainder waits inside."""

    sample_rate_hz: int
    frame_samples: int

    def process(self, samples: np.ndarray) -> list[bool]: ...

    def reset(self) -> None: ...


class _Reframer:
    """Cuts arbitrary chunks into frames of exactly ``frame_samples`` (a one-frame carry buffer)."""

    def __init__(self, frame_samples: int):
        self.frame_samples = frame_samples
        self._carry = np.zeros(frame_samples, dtype=np.int16)
        self._filled = 0

    def frames(self, samples: np.ndarray):
        """Yield (frame_samples,) int16 frames from the carry buffer followed by ``samples``."""
        pos = 0
        n = len(samples)
        if self._filled:
            take = min(self.frame_samples - self._filled, n)
            self._carry[self._filled:self._filled + take] = samples[:take]
            self._filled += take
            pos = take
            if self._filled < self.frame_samples:
                return
            yield self._carry.copy()
            self._filled = 0
        while n - pos >= self.frame_samples:
            yield samples[pos:pos + self.frame_samples]
            pos += self.frame_samples
        rest = n - pos
        self._carry[:rest] = samples[pos:]
        self._filled = rest

    def reset(self) -> None:
        self._filled = 0


def _as_int16(samples: np.ndarray) -> np.ndarray:
    """Accept int16 as is; float audio in [-1, 1] is scaled to int16."""
    samples = np.asarray(samples).reshape(-1)
    if samples.dtype == np.int16:
        return samples
    if np.issubdtype(samples.dtype, np.floating):
        return np.clip(samples * INT16_FULL_SCALE, -INT16_FULL_SCALE, INT16_FULL_SCALE - 1).astype(np.int16)
    raise TypeError(f"audio samples must be int16 or float, got {samples.dtype}")


class WebRtcVad:
    """The WebRTC GMM voice activity detector: binary output per 10/20/30 ms frame.

    ``mode`` 0-3 is its aggressiveness (3 rejects the most non-speech). Mode 2 is the common
    middle ground for a close microphone: 3 drops soft word onsets, 0-1 fire on fans and music.
    """

    def __init__(self, mode: int = 2, sample_rate_hz: int = SAMPLE_RATE_HZ, frame_ms: int = 30):
        if frame_ms not in WEBRTC_FRAME_MS:
            raise ValueError(f"webrtcvad takes frames of {WEBRTC_FRAME_MS} ms only, got frame_ms={frame_ms}")
        if sample_rate_hz not in WEBRTC_RATES_HZ:
            raise ValueError(f"webrtcvad takes {WEBRTC_RATES_HZ} Hz only, got {sample_rate_hz}")
        if mode not in (0, 1, 2, 3):
            raise ValueError(f"webrtcvad mode must be 0-3, got {mode}")
        self._vad = require("webrtcvad").Vad(mode)
        self.mode = mode
        self.sample_rate_hz = sample_rate_hz
        self.frame_ms = frame_ms
        self.frame_samples = sample_rate_hz * frame_ms // 1000
        self._reframer = _Reframer(self.frame_samples)

    def process(self, samples: np.ndarray) -> list[bool]:
        """``samples`` (n,) int16 (or float in [-1, 1]) -> one speech flag per completed frame."""
        return [self._vad.is_speech(f.tobytes(), self.sample_rate_hz)
                for f in self._reframer.frames(_as_int16(samples))]

    def reset(self) -> None:
        self._reframer.reset()


def silero_model_path() -> Path | None:
    """The Silero v5 ONNX file shipped inside the ``silero-vad`` wheel, found without importing
    the package (its ``__init__`` imports torch, which mmer does not need for it)."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "data" / "silero_vad.onnx"
        if path.is_file():
            return path
    return None


class SileroVad:
    """Silero VAD v5 run with ONNX Runtime on 512-sample (32 ms) frames at 16 kHz.

    A frame is speech when its probability reaches ``threshold``, and stays speech while it is
    above ``threshold - 0.15`` (the hysteresis of Silero's own ``VADIterator``).
    """

    def __init__(self, model_path: str | Path | None = None, threshold: float = 0.5,
                 sample_rate_hz: int = SAMPLE_RATE_HZ):
        if sample_rate_hz != SAMPLE_RATE_HZ:
            raise ValueError(f"SileroVad runs at {SAMPLE_RATE_HZ} Hz only, got {sample_rate_hz}")
        path = Path(model_path) if model_path is not None else silero_model_path()
        if path is None:
            raise MissingExtra("SileroVad needs the Silero ONNX model, shipped in the 'silero-vad' wheel. "
                               "Install it with: pip install 'mmer[vad]' "
                               "(mmer runs the ONNX file with onnxruntime; torchaudio is not needed), "
                               "or pass model_path=/path/to/silero_vad.onnx")
        if not path.is_file():
            raise FileNotFoundError(f"Silero VAD model not found: {path}")
        ort = require("onnxruntime")
        opts = ort.SessionOptions()
        # One thread: a 32 ms frame costs well under 1 ms, and the live pipeline's other
        # stages need the cores more than this one.
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self._session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        self.model_path = path
        self.threshold = threshold
        self.neg_threshold = max(threshold - SILERO_HYSTERESIS, 0.01)
        self.sample_rate_hz = sample_rate_hz
        self.frame_samples = SILERO_FRAME_SAMPLES
        self.frame_ms = 1000.0 * SILERO_FRAME_SAMPLES / sample_rate_hz
        self._reframer = _Reframer(self.frame_samples)
        self._sr = np.array(sample_rate_hz, dtype=np.int64)
        self.reset()

    def probability(self, frame: np.ndarray) -> float:
        """Speech probability of one (512,) int16 frame; advances the recurrent state."""
        x = frame.astype(np.float32) / INT16_FULL_SCALE
        inp = np.concatenate([self._context, x])[None, :]
        prob, self._state = self._session.run(None, {"input": inp, "state": self._state, "sr": self._sr})
        self._context = x[-SILERO_CONTEXT_SAMPLES:]
        return float(prob[0, 0])

    def process(self, samples: np.ndarray) -> list[bool]:
        """``samples`` (n,) int16 (or float in [-1, 1]) -> one speech flag per completed frame."""
        flags = []
        for frame in self._reframer.frames(_as_int16(samples)):
            p = self.probability(frame)
            self._speaking = p >= self.threshold or (self._speaking and p >= self.neg_threshold)
            flags.append(self._speaking)
        return flags

    def reset(self) -> None:
        self._reframer.reset()
        self._state = np.zeros(SILERO_STATE_SHAPE, dtype=np.float32)
        self._context = np.zeros(SILERO_CONTEXT_SAMPLES, dtype=np.float32)
        self._speaking = False


@dataclass(frozen=True)
class SegmenterConfig:
    """Endpointing settings; peers' defaults are in REFERENCE.md section 4.

    - ``start_ms`` 120: speech must last this long before an utterance starts. LiveKit uses
      50 ms with Silero, pipecat 200 ms; webrtcvad fires on short noise bursts far more often
      than Silero, so we need more than 50 ms. It delays only the "start" event, never the
      result (the onset is back-dated to the first voiced frame); longer would miss short words.
    - ``end_silence_ms`` 550: silence that ends an utterance; LiveKit 550 ms, RealtimeSTT 600,
      pipecat 800. It is the largest term of end-of-speech -> result latency, and people leave
      ~200 ms between turns, so in-sentence pauses (< ~400 ms) must not cut an utterance.
    - ``pre_roll_ms`` 300: audio kept before the first voiced frame, for soft onsets the VAD
      misses (LiveKit pads 500 ms, RealtimeSTT 1 s for its ASR); the emotion models' cost
      grows with the audio length, so we keep the short end.
    - ``post_roll_ms`` 150: audio kept after the last voiced frame; webrtcvad often marks the
      weak final consonant of a word as silence.
    - ``min_utterance_ms`` 250: shorter voiced runs are coughs, clicks, door knocks; a short
      word ("yes") lasts ~250-300 ms.
    - ``max_utterance_s`` 15: a monologue is cut into pieces at most this long so a result
      still arrives while someone talks; MELD utterances (the training data) are ~3 s on
      average and rarely above 15 s, and Whisper's window is 30 s.
    - ``pause_events`` true: once a silence has lasted ``post_roll_ms``, the utterance's audio is
      final unless speech resumes, so a :class:`SpeechPause` carries it: the voice model runs
      during the remaining ~400 ms of silence instead of after the end is decided; the
      speech-to-text worker decodes the same audio then, so at the end only the text model and
      fusion remain.
    - ``interim_stride_ms`` 1000: while someone speaks, every this much audio a
      :class:`SpeechSoFar` carries the utterance so far, for interim speech-to-text (the words
      heard so far, in the whisper_streaming manner). Each pass costs an encoder pass and a
      decode (~0.1-0.2 s of one core for Whisper tiny on a few seconds): shorter strides give
      earlier words for more CPU; a busy worker skips passes, and a piece longer than half of
      ``max_utterance_s`` gets no more (each pass re-decodes the whole piece). 0 turns them off.
    """

    vad: Literal["webrtc", "silero"] = "webrtc"
    webrtc_mode: int = bounded(2, ge=0, le=3)
    frame_ms: int = bounded(30, ge=10, le=30)  # webrtcvad frame (10, 20 or 30); Silero always uses 32 ms (512 samples)
    silero_threshold: float = bounded(0.5, gt=0, lt=1)
    start_ms: float = bounded(120.0, ge=0, le=2000)
    end_silence_ms: float = bounded(550.0, ge=10, le=10_000)
    pre_roll_ms: float = bounded(300.0, ge=0, le=5000)
    post_roll_ms: float = bounded(150.0, ge=0, le=5000)
    min_utterance_ms: float = bounded(250.0, ge=0, le=10_000)
    max_utterance_s: float = bounded(15.0, gt=0, le=120)
    pause_events: bool = True
    interim_stride_ms: float = bounded(1000.0, ge=0, le=60_000)


def make_vad(config: SegmenterConfig, sample_rate_hz: int = SAMPLE_RATE_HZ) -> FrameVad:
    """Build the frame classifier named by ``config.vad``."""
    if config.vad == "webrtc":
        return WebRtcVad(config.webrtc_mode, sample_rate_hz, config.frame_ms)
    if config.vad == "silero":
        return SileroVad(threshold=config.silero_threshold, sample_rate_hz=sample_rate_hz)
    raise ValueError(f"unknown vad '{config.vad}' (expected 'webrtc' or 'silero')")


class _SampleRing:
    """A fixed-capacity int16 ring addressed by absolute sample index (0 = first sample pushed)."""

    def __init__(self, capacity_samples: int):
        self.capacity_samples = capacity_samples
        self._buf = np.zeros(capacity_samples, dtype=np.int16)
        self.end_index = 0  # absolute index one past the newest sample

    def write(self, samples: np.ndarray) -> None:
        n = len(samples)
        if n > self.capacity_samples:
            raise ValueError(f"write of {n} samples exceeds the ring capacity {self.capacity_samples}")
        pos = self.end_index % self.capacity_samples
        first = min(n, self.capacity_samples - pos)
        self._buf[pos:pos + first] = samples[:first]
        self._buf[:n - first] = samples[first:]
        self.end_index += n

    def read(self, start_index: int, end_index: int) -> np.ndarray:
        """Copy of samples [start_index, end_index), clipped to what the ring still holds."""
        start_index = max(start_index, self.end_index - self.capacity_samples, 0)
        end_index = min(end_index, self.end_index)
        if end_index <= start_index:
            return np.zeros(0, dtype=np.int16)
        idx = np.arange(start_index, end_index) % self.capacity_samples
        return self._buf[idx]

    def reset(self) -> None:
        self.end_index = 0


class VadState(enum.Enum):
    QUIET = "quiet"
    STARTING = "starting"
    SPEAKING = "speaking"
    STOPPING = "stopping"


class VadSegmenter:
    """Turns audio chunks into speech events and utterances (QUIET/STARTING/SPEAKING/STOPPING).

    ``push(chunk)`` feeds audio; ``poll()`` returns, in stream order, ``VadEvent("start")`` when
    speech has lasted ``start_ms``, then ``VadEvent("end")`` and the finished ``Utterance`` once
    ``end_silence_ms`` of silence followed it. ``Utterance.start_s``/``end_s`` are the first and
    last voiced instants; its audio also holds the pre-roll and post-roll
    (``audio_start_s`` is the stream time of ``audio[0]``). Utterances shorter than
    ``min_utterance_ms`` are dropped (counted in ``dropped_short``); speech longer than
    ``max_utterance_s`` is cut into pieces, every piece of such a monologue marked ``split``
    (no end/start events at the cuts: the speaker has not stopped). With ``pause_events``, a
    :class:`SpeechPause` comes ``post_roll_ms`` into each silence, carrying the audio the
    utterance will have if the silence lasts (same ``key``). Memory is one fixed ring.
    """

    def __init__(self, vad: FrameVad, start_ms: float = SegmenterConfig.start_ms,
                 end_silence_ms: float = SegmenterConfig.end_silence_ms,
                 pre_roll_ms: float = SegmenterConfig.pre_roll_ms,
                 min_utterance_ms: float = SegmenterConfig.min_utterance_ms,
                 max_utterance_s: float = SegmenterConfig.max_utterance_s,
                 post_roll_ms: float = SegmenterConfig.post_roll_ms,
                 pause_events: bool = SegmenterConfig.pause_events,
                 interim_stride_ms: float = SegmenterConfig.interim_stride_ms):
        if min(start_ms, end_silence_ms, pre_roll_ms, min_utterance_ms, post_roll_ms) < 0 or max_utterance_s <= 0:
            raise ValueError("segmenter durations must be >= 0 (max_utterance_s > 0)")
        self.vad = vad
        self.sample_rate_hz = vad.sample_rate_hz
        self.start_ms, self.end_silence_ms = start_ms, end_silence_ms
        self.pre_roll_ms, self.post_roll_ms = pre_roll_ms, post_roll_ms
        self.min_utterance_ms, self.max_utterance_s = min_utterance_ms, max_utterance_s
        self.pause_events = pause_events
        sr = self.sample_rate_hz
        self._interim_stride_samples = round(interim_stride_ms * sr / 1000)  # 0: no SpeechSoFar
        self._frame_s = vad.frame_samples / sr
        self._pre_roll_samples = round(pre_roll_ms * sr / 1000)
        self._post_roll_samples = round(post_roll_ms * sr / 1000)
        # Longest audio ever read back: pre-roll + max utterance + the frames of the stopping
        # run; plus one push slice still waiting for classification.
        capacity_s = (pre_roll_ms + post_roll_ms + end_silence_ms) / 1000 + max_utterance_s + 2 * MAX_PUSH_SLICE_S
        self._ring = _SampleRing(int(capacity_s * sr))
        self._next_id = 0
        self.dropped_short = 0
        self.reset()

    @classmethod
    def from_config(cls, config: SegmenterConfig, vad: FrameVad | None = None) -> VadSegmenter:
        """A segmenter with ``config``'s durations around ``vad`` (default: ``make_vad(config)``)."""
        return cls(vad if vad is not None else make_vad(config), config.start_ms, config.end_silence_ms,
                   config.pre_roll_ms, config.min_utterance_ms, config.max_utterance_s, config.post_roll_ms,
                   config.pause_events, config.interim_stride_ms)

    @property
    def buffer_capacity_samples(self) -> int:
        """Fixed size of the audio ring (it never grows)."""
        return self._ring.capacity_samples

    def reset(self) -> None:
        """Forget all audio and state (ids keep increasing so they stay unique)."""
        self.vad.reset()
        self._ring.reset()
        self._out: list[Utterance | VadEvent | SpeechPause | SpeechResumed | SpeechSoFar] = []
        self.state = VadState.QUIET
        self._offset_s: float | None = None  # stream time of absolute sample 0
        self._frames_done = 0  # frames classified since reset
        self._run_s = 0.0  # length of the current voiced (STARTING) or silent (STOPPING) run
        self._onset: tuple[int, float] | None = None  # (sample index, time) of the utterance onset
        self._last_voice: tuple[int, float] | None = None  # end of the last voiced frame
        self._piece_of_split = False
        self._paused_at: int | None = None  # last voiced index a SpeechPause was given for
        self._interim_at = 0  # sample index of the last SpeechSoFar (or of the utterance's onset)

    def _time(self, index: int) -> float:
        return self._offset_s + index / self.sample_rate_hz

    def push(self, chunk: AudioChunk) -> None:
        """Feed one chunk (``samples`` (n,) int16 mono, at the VAD's sample rate)."""
        if chunk.sample_rate_hz != self.sample_rate_hz:
            raise ValueError(f"chunk at {chunk.sample_rate_hz} Hz, segmenter expects {self.sample_rate_hz} Hz")
        samples = _as_int16(chunk.samples)
        if self._offset_s is None:
            self._offset_s = chunk.start_s
        else:
            # A dropped capture block shows as a jump in start_s: re-anchor the clock so later
            # times stay true (the audio just skips the gap).
            gap_s = chunk.start_s - self._time(self._ring.end_index)
            if abs(gap_s) > CLOCK_TOLERANCE_S:
                self._offset_s += gap_s
        step = int(MAX_PUSH_SLICE_S * self.sample_rate_hz)
        for pos in range(0, len(samples), step):
            part = samples[pos:pos + step]
            self._ring.write(part)
            for is_speech in self.vad.process(part):
                self._step(is_speech)

    def _step(self, is_speech: bool) -> None:
        """Advance the state machine by one classified frame."""
        n = self.vad.frame_samples
        start_idx = self._frames_done * n
        end_idx = start_idx + n
        self._frames_done += 1
        t_start, t_end = self._time(start_idx), self._time(end_idx)
        st = self.state
        if st is VadState.QUIET:
            if is_speech:
                self.state, self._run_s, self._onset = VadState.STARTING, self._frame_s, (start_idx, t_start)
                self._last_voice = (end_idx, t_end)
                self._maybe_start()
        elif st is VadState.STARTING:
            if is_speech:
                self._run_s += self._frame_s
                self._last_voice = (end_idx, t_end)
                self._maybe_start()
            else:  # a voiced blip shorter than start_ms: noise
                self.state, self._onset = VadState.QUIET, None
        else:  # SPEAKING or STOPPING
            if is_speech:
                if st is VadState.STOPPING and self._paused_at == self._last_voice[0]:
                    self._out.append(SpeechResumed(t_start))   # the SpeechPause of this silence is void
                self.state, self._run_s, self._last_voice = VadState.SPEAKING, 0.0, (end_idx, t_end)
                # Cut only while voiced (a pause ends the utterance within end_silence_ms anyway),
                # at the last frame boundary that keeps the piece within max_utterance_s.
                if t_end + self._frame_s - self._onset[1] > self.max_utterance_s + 1e-6:
                    self._cut_monologue(end_idx, t_end)
                elif self._interim_stride_samples and end_idx - self._interim_at >= self._interim_stride_samples:
                    self._so_far(end_idx)
            else:
                if st is VadState.SPEAKING:
                    self.state, self._run_s = VadState.STOPPING, 0.0
                self._run_s += self._frame_s
                if self._run_s * 1000 >= self.end_silence_ms - 1e-6:
                    self._end_utterance(self._last_voice, end_idx, split=self._piece_of_split)
                elif self.pause_events and self._paused_at != self._last_voice[0] and \
                        end_idx >= self._last_voice[0] + self._post_roll_samples:
                    self._pause(end_idx)

    def _maybe_start(self) -> None:
        if self._run_s * 1000 >= self.start_ms - 1e-6:
            self.state = VadState.SPEAKING
            self._piece_of_split = False
            self._out.append(VadEvent("start", self._onset[1]))
            self._interim_at = self._onset[0]

    def _cut_monologue(self, end_idx: int, t_end: float) -> None:
        """Emit the speech so far as a split piece and go on with a new piece from here."""
        cut = (end_idx, t_end)
        self._emit(self._onset, cut, audio_end_index=end_idx, split=True, pre_roll=not self._piece_of_split)
        self._piece_of_split = True
        self._onset, self._last_voice = cut, cut
        self._interim_at = end_idx

    def _end_utterance(self, last_voice: tuple[int, float], now_index: int, split: bool) -> None:
        audio_end = min(last_voice[0] + self._post_roll_samples, now_index)
        self._out.append(VadEvent("end", last_voice[1]))
        self._emit(self._onset, last_voice, audio_end, split=split, pre_roll=not split)
        self.state, self._onset, self._last_voice, self._run_s = VadState.QUIET, None, None, 0.0
        self._piece_of_split = False

    def _pause(self, now_index: int) -> None:
        """The audio of the utterance so far is what _end_utterance would emit now: offer it."""
        onset, last = self._onset, self._last_voice
        self._paused_at = last[0]
        if not self._piece_of_split and (last[1] - onset[1]) * 1000 < self.min_utterance_ms - 1e-6:
            return   # a too-short run would be dropped: nothing to start early on (a split tail is kept)
        _, audio = self._audio(onset, min(last[0] + self._post_roll_samples, now_index),
                               pre_roll=not self._piece_of_split)
        self._out.append(SpeechPause((onset[0], last[0]), onset[1], last[1], audio))

    def _so_far(self, now_index: int) -> None:
        """Offer the open utterance's audio up to now for an interim transcription. Only once it
        is long enough to be emitted (so ``utterance_id`` is the id it will get)."""
        self._interim_at = now_index
        onset, last = self._onset, self._last_voice
        if not self._piece_of_split and (last[1] - onset[1]) * 1000 < self.min_utterance_ms - 1e-6:
            return
        if self._time(now_index) - onset[1] > self.max_utterance_s / 2:
            # A long piece: each pass re-decodes all of it (0.3-0.8 s of a core at 8-15 s), tells
            # little more than the last one, and would still be running when the monologue is cut.
            return
        _, audio = self._audio(onset, now_index, pre_roll=not self._piece_of_split)
        self._out.append(SpeechSoFar(self._next_id, onset[1], self._time(now_index), audio))

    def _audio(self, onset: tuple[int, float], audio_end_index: int, pre_roll: bool) -> tuple[int, np.ndarray]:
        start = max(onset[0] - (self._pre_roll_samples if pre_roll else 0), 0,
                    self._ring.end_index - self._ring.capacity_samples)
        return start, self._ring.read(start, audio_end_index).astype(np.float32) / INT16_FULL_SCALE

    def _emit(self, onset: tuple[int, float], end: tuple[int, float], audio_end_index: int,
              split: bool, pre_roll: bool) -> None:
        decided_wall_s = time.perf_counter()
        # The tail of a split monologue is kept however short: it holds the speaker's last words.
        if not split and (end[1] - onset[1]) * 1000 < self.min_utterance_ms - 1e-6:
            self.dropped_short += 1
            return
        audio_start_index, audio = self._audio(onset, audio_end_index, pre_roll)
        self._out.append(Utterance(id=self._next_id, start_s=onset[1], end_s=end[1], audio=audio,
                                   end_of_speech_wall_s=decided_wall_s, split=split,
                                   audio_start_s=self._time(audio_start_index), key=(onset[0], end[0])))
        self._next_id += 1

    def poll(self) -> list[Utterance | VadEvent | SpeechPause | SpeechResumed | SpeechSoFar]:
        """Everything decided since the last poll, in stream order."""
        out, self._out = self._out, []
        return out

    def flush(self) -> list[Utterance | VadEvent | SpeechPause | SpeechResumed | SpeechSoFar]:
        """End of stream / shutdown: close a pending utterance now and return all outputs.

        A run still in STARTING (shorter than ``start_ms``) is discarded as noise.
        """
        if self.state in (VadState.SPEAKING, VadState.STOPPING):
            self._end_utterance(self._last_voice, self._ring.end_index, split=self._piece_of_split)
        elif self.state is VadState.STARTING:
            self.state, self._onset = VadState.QUIET, None
        return self.poll()
