"""The few frame types that flow through the live pipeline.

Every stage is a small synchronous object with ``push / poll / flush / reset``; what moves
between stages is one of these dataclasses. Times are seconds on the stream clock: sample
index / sample rate for audio, the source's capture time for video, so a replayed file and a
live device produce the same timestamps. A frame that reaches the JSON output carries its
stream's ``clock_origin_unix_s`` (mmer.realtime.clock), so ``to_dict`` also gives wall-clock times.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mmer.media import SAMPLE_RATE_HZ  # every audio frame inside the pipeline is 16 kHz mono
from mmer.realtime.clock import to_unix_s
from mmer.realtime.schema import SCHEMA_VERSION


@dataclass(frozen=True)
class AudioChunk:
    """A block of captured audio: ``samples`` (n,) int16 mono at ``sample_rate_hz``."""

    samples: np.ndarray
    start_s: float
    sample_rate_hz: int = SAMPLE_RATE_HZ

    @property
    def end_s(self) -> float:
        return self.start_s + len(self.samples) / self.sample_rate_hz


@dataclass(frozen=True)
class VideoFrame:
    """One camera frame: ``image`` (H, W, 3) uint8 BGR as OpenCV delivers it."""

    image: np.ndarray
    time_s: float
    index: int


@dataclass(frozen=True)
class VadEvent:
    """Speech start or end, as decided by the segmentation state machine."""

    kind: str  # "start" | "end"
    time_s: float
    clock_origin_unix_s: float | None = None  # Unix time of stream second 0 (set by the pipeline)

    def to_dict(self) -> dict:
        """The JSON object of docs/live.md ("type": "vad")."""
        time_s = round(self.time_s, 3)
        return {"type": "vad", "schema_version": SCHEMA_VERSION, "kind": self.kind, "time_s": time_s,
                "time_unix_s": to_unix_s(self.clock_origin_unix_s, time_s)}


@dataclass(frozen=True)
class UtteranceEnded:
    """An utterance was cut and queued for its words and prediction: the moment a host with
    its own speech-to-text supplies the text (``push_text``)."""

    utterance_id: int
    start_s: float
    end_s: float
    clock_origin_unix_s: float | None = None  # Unix time of stream second 0 (set by the pipeline)

    def to_dict(self) -> dict:
        """The JSON object of docs/live.md ("type": "utterance")."""
        return {"type": "utterance", "schema_version": SCHEMA_VERSION, "utterance_id": self.utterance_id,
                **stream_times(self.start_s, self.end_s, self.clock_origin_unix_s)}


def stream_times(start_s: float, end_s: float, clock_origin_unix_s: float | None) -> dict:
    """``start_s``/``end_s`` (stream s, to the ms) and the same instants as Unix time (to the us;
    None without a stream clock), computed from the rounded stream seconds so the two agree."""
    start_s, end_s = round(start_s, 3), round(end_s, 3)
    return {"start_s": start_s, "end_s": end_s, "start_unix_s": to_unix_s(clock_origin_unix_s, start_s),
            "end_unix_s": to_unix_s(clock_origin_unix_s, end_s)}


@dataclass(frozen=True)
class StreamGap:
    """The input was interrupted at ``time_s`` (a device lost and reopened): the pending
    utterance ends there, and the stream goes on from the reopened device's first block."""

    time_s: float
    reason: str


@dataclass
class Utterance:
    """One segmented utterance: ``audio`` (n,) float32 in [-1, 1] at 16 kHz.

    ``end_of_speech_wall_s`` is the wall-clock (time.perf_counter) moment the segmenter
    decided the utterance ended: every latency of the prediction is measured from it.
    ``encoder_hidden``: set by speech-to-text that shares its encoder pass (asr.SharedEncoderASR):
    the Whisper encoder's state after each of its 4 blocks, (1, L, 384) torch tensors of all of
    ``audio`` scaled to the voice model's peak level, so the voice model need not encode again.
    """

    id: int
    start_s: float
    end_s: float
    audio: np.ndarray
    speaker: str = "user"
    text: str | None = None
    end_of_speech_wall_s: float = 0.0
    split: bool = False  # True when cut at the maximum utterance length (a monologue)
    audio_start_s: float | None = None  # stream time of audio[0]: start_s minus the pre-roll
    timings_ms: dict[str, float] = field(default_factory=dict)
    encoder_hidden: list | None = field(default=None, repr=False)
    key: tuple[int, int] | None = None  # (onset, last voiced) sample indices: matches its SpeechPause
    clock_origin_unix_s: float | None = None  # Unix time of stream second 0 (set by the pipeline)


@dataclass
class SpeechPause:
    """The speaker has been silent for ``post_roll_ms``: ``audio`` is the utterance so far,
    sample for sample what the segmenter will emit if speech does not resume within
    ``end_silence_ms``. A provisional item: a model may start on it during the rest of the
    silence, and its result counts only for the Utterance with the same ``key``."""

    key: tuple[int, int]
    start_s: float
    end_s: float
    audio: np.ndarray


@dataclass(frozen=True)
class SpeechResumed:
    """Speech came back after a :class:`SpeechPause` (at stream time ``time_s``): work begun on
    that pause will not be the utterance's, and may stop."""

    time_s: float


@dataclass
class SpeechSoFar:
    """An utterance still being spoken: ``audio`` from its start (with the pre-roll) up to stream
    time ``time_s``. ``utterance_id`` is the id its Utterance will have. A provisional item for
    interim speech-to-text; the final text always comes from the whole utterance."""

    utterance_id: int
    start_s: float
    time_s: float
    audio: np.ndarray


@dataclass
class Interim:
    """The words heard so far in utterance ``utterance_id`` (``type: "interim"``), never in place
    of its prediction and always before it. ``text``: the latest hypothesis; ``committed``: its
    prefix that two successive passes agreed on (whisper_streaming's local agreement), which
    later passes keep. ``label`` / ``probs``: the text model on the dialogue context and
    ``text`` (None without a text model)."""

    utterance_id: int
    start_s: float
    time_s: float
    text: str
    committed: str
    speaker: str = ""
    label: str | None = None
    probs: dict[str, float] | None = None
    clock_origin_unix_s: float | None = None  # Unix time of stream second 0 (set by the pipeline)

    def to_dict(self) -> dict:
        """The JSON object of docs/live.md ("type": "interim")."""
        start_s, time_s = round(self.start_s, 3), round(self.time_s, 3)
        return {"type": "interim", "schema_version": SCHEMA_VERSION, "utterance_id": self.utterance_id,
                "start_s": start_s, "time_s": time_s, "start_unix_s": to_unix_s(self.clock_origin_unix_s, start_s),
                "time_unix_s": to_unix_s(self.clock_origin_unix_s, time_s), "speaker": self.speaker,
                "text": self.text, "committed": self.committed, "label": self.label, "probs": self.probs}


@dataclass(frozen=True)
class FaceObservation:
    """The face path's result for one frame: ``box`` (x, y, w, h) and ``probs`` over the face
    model's label set, or both ``None`` when no face was found."""

    time_s: float
    box: tuple[int, int, int, int] | None
    probs: np.ndarray | None
    feature: np.ndarray | None = None
