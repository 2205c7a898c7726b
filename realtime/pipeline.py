"""The live pipeline moves frames: audio -> utterances -> words -> prediction, one per utterance.

    pipe = build_pipeline(load_live_config())          # mmer.realtime.build: loads and wires
    pipe.on_prediction(lambda p: print(p.label, p.latency_ms["end_of_speech_to_emit"]))
    pipe.push_turn("robot", "How was your day?")       # what the host itself said
    pipe.run(FileSource("talk.mp4").open())             # or push_audio / push_frame yourself
    pipe.close()

Work flows one way through bounded queues: the caller's thread runs the segmenter (cheap, it
must see every sample) and queues each utterance to the speech-to-text worker (``mmer-asr``),
which hands it on with its words to the prediction worker (``mmer-predict``): the assembler
joins words, dialogue context and face window, the predictor fuses, the outputs get the typed
:class:`Prediction`. A stage that falls behind blocks the one before it: utterances are never
dropped (camera frames may be, counted by the face path). Every wait has a deadline.

Callbacks: ``on_prediction`` runs in ``mmer-predict``, ``on_event`` in the caller's thread (the
``interim`` words heard while someone speaks come from ``mmer-predict``, before that utterance's
prediction); one
that raises is logged and counted (``callback_errors``) and the other outputs still get the frame.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import wait
from dataclasses import replace
from typing import Any, Callable

import numpy as np

from mmer.errors import UsageError
from mmer.media import downmix
from mmer.realtime.clock import StreamClock
from mmer.realtime.frames import (SAMPLE_RATE_HZ, AudioChunk, Interim, SpeechPause, SpeechResumed, SpeechSoFar,
                                  Utterance, UtteranceEnded, VadEvent, VideoFrame)
from mmer.realtime.prediction_worker import PredictionWorker
from mmer.realtime.sinks import CallbackSink

log = logging.getLogger(__name__)

FLUSH_TIMEOUT_S = 60.0        # the longest flush() waits for the utterances in flight
CLOSE_TIMEOUT_S = 10.0        # each thread's join deadline in close()
LOCKSTEP_TIMEOUT_S = 120.0    # lockstep replays: the longest wait for one utterance's prediction
FACE_CATCH_UP_S = 5.0         # lockstep replays: the longest wait for the face path's backlog
CLOCK_TOLERANCE_S = 0.05      # push_audio: a block may start this much before the last one ended
WARMUP_FRAME_PX = (240, 320)  # (H, W) of the blank frame the face model warms up on


class LivePipeline:
    """Segmenter -> speech-to-text worker -> prediction worker -> outputs; nothing else.

    Built ready by :func:`mmer.realtime.build.build_pipeline` (which loads the models and
    opens the websocket). ``faces``: the face path or None; ``frame_sinks``: outputs that also
    see camera frames (the overlay). ``lockstep``: the caller waits for each utterance's
    prediction before reading on (benchmarks: per-utterance latency without queueing).
    ``end_silence_s``: lockstep replays give the early runs at a pause (voice model and speech-to-
    text) this much wall time, what is left of the silence live; ``interim_stride_s``: they give
    an interim speech-to-text pass this much, the time until the next one live.
    """

    def __init__(self, segmenter: Any, asr: Any, assembler: Any, predictor: Any, outputs: Any, *,
                 faces: Any = None, frame_sinks: tuple = (), queue_size: int = 8, user_speaker: str = "user",
                 torch_threads: int = 0, lockstep: bool = False, end_silence_s: float = 0.0,
                 interim_stride_s: float = 0.0) -> None:
        from mmer.realtime.asr import AsrWorker

        self.segmenter, self.asr, self.assembler, self.predictor = segmenter, asr, assembler, predictor
        self.outputs, self.face_path, self.frame_sinks = outputs, faces, tuple(frame_sinks)
        self.user_speaker, self.torch_threads = user_speaker, torch_threads
        self.lockstep, self.end_silence_s, self.interim_stride_s = lockstep, end_silence_s, interim_stride_s
        self.context = assembler.context
        self._audio_end_s: float | None = None
        self.clock = StreamClock()            # stream s -> Unix time for the JSON stamps (mmer.realtime.clock)
        self.stop_event = threading.Event()   # run() returns when set
        self.worker = PredictionWorker(assembler, predictor, outputs, faces, queue_size=queue_size,
                                       host_text=asr.name == "none", torch_threads=torch_threads)
        self.asr_worker = None if asr.name == "none" else AsrWorker(asr, queue_size, forward=self.worker.put,
                                                                  on_interim=self._interim_words)
        if faces is not None:
            faces.start()

    @property
    def stats(self) -> dict[str, int]:
        """utterances (queued), predictions, errors, flush_timeouts."""
        return self.worker.stats

    @property
    def predictions(self):
        """The latest predictions, for inspection."""
        return self.worker.predictions

    @property
    def pending(self) -> int:
        """Utterances queued and not yet emitted (or failed)."""
        return self.worker.pending

    # -- host API -------------------------------------------------------------------------------
    def on_prediction(self, callback: Callable[[Any], Any]) -> None:
        """``callback(prediction)`` (a :class:`Prediction`) for every utterance, in ``mmer-predict``."""
        self.outputs.add(CallbackSink(callback))

    def on_event(self, callback: Callable[[Any], Any]) -> None:
        """``callback(event)`` for :class:`VadEvent` (speech start/end) and :class:`UtteranceEnded`
        (the moment to ``push_text`` its words with ASR "none"), in the caller's thread, and for
        :class:`Interim` (the words heard so far, with speech-to-text), in ``mmer-predict``."""
        self.outputs.add(CallbackSink(callback, events=True))

    def push_turn(self, speaker: str, text: str) -> None:
        """A turn the host knows about (what the robot said) joins the dialogue context."""
        self.assembler.push_turn(speaker, text)

    def push_text(self, utterance_id: int, text: str, speaker: str | None = None) -> None:
        """With ASR "none": the words of utterance ``utterance_id`` (before or after it ends)."""
        self.assembler.push_text(utterance_id, text, speaker)

    def reset_context(self) -> None:
        """Forget the conversation (a new person walked up): the turns and the speakers' voices."""
        self.assembler.reset()
        self.predictor.reset()

    def push_audio(self, samples: np.ndarray, t: float) -> None:
        """Feed 16 kHz int16 (or float in [-1, 1]) samples starting at stream time ``t`` s:
        (n,) mono, or (n, channels) / (channels, n), down-mixed. Sources at other rates
        resample first (mmer.media). Time must not go backwards (``reset()`` between streams)."""
        self.push_chunk(AudioChunk(downmix(samples), float(t)))

    def push_chunk(self, chunk: AudioChunk) -> None:
        """Feed one mono 16 kHz :class:`AudioChunk` as a source delivers it (passed on unchanged)."""
        if chunk.sample_rate_hz != SAMPLE_RATE_HZ or np.ndim(chunk.samples) != 1:
            raise UsageError(f"push_chunk: expected mono {SAMPLE_RATE_HZ} Hz audio, got {chunk.sample_rate_hz} Hz "
                             f"of shape {np.shape(chunk.samples)}; resample and down-mix first (mmer.media)")
        if self._audio_end_s is not None and chunk.start_s < self._audio_end_s - CLOCK_TOLERANCE_S:
            raise UsageError(f"push_audio: time went backwards ({chunk.start_s:.3f} s after a block that ended at "
                             f"{self._audio_end_s:.3f} s); call reset() before a new stream")
        self.clock.anchor(chunk.start_s, chunk.end_s)
        self.segmenter.push(chunk)
        self._audio_end_s = chunk.end_s
        self._dispatch(self.segmenter.poll(), decided_at_s=chunk.end_s)

    def push_frame(self, image_bgr: np.ndarray, t: float) -> None:
        """Feed one (H, W, 3) uint8 BGR camera frame taken at stream time ``t`` s."""
        self.push_video(VideoFrame(image_bgr, float(t), 0))

    def push_video(self, frame: VideoFrame) -> None:
        """Feed one :class:`VideoFrame` as a source delivers it (passed on unchanged)."""
        if self.face_path is None:
            return
        self.face_path.push(frame)
        if self.frame_sinks:
            latest = self.face_path.latest()
            for sink in self.frame_sinks:
                sink.on_frame(frame.image, None if latest is None else latest.box)

    # -- segmentation -> the first queue -----------------------------------------------------
    def _dispatch(self, items: list, decided_at_s: float) -> None:
        for item in items:
            if isinstance(item, VadEvent):
                stamped = replace(item, clock_origin_unix_s=self.clock.origin_for(item.time_s))
                self.outputs.emit(stamped, event=True)
            elif isinstance(item, SpeechPause):
                early = [self.predictor.speculate(item, self.user_speaker)]
                if self.asr_worker is not None:
                    early.append(self.asr_worker.speculate(item))
                early = [job for job in early if job is not None]
                if early and self.lockstep:  # live, the rest of the silence passes first
                    wait(early, timeout=self.end_silence_s)
            elif isinstance(item, SpeechResumed):
                if self.asr_worker is not None:
                    self.asr_worker.resumed()
            elif isinstance(item, SpeechSoFar):
                if self.asr_worker is not None:
                    job = self.asr_worker.interim(item, self.user_speaker)
                    if job is not None and self.lockstep:  # live, the next stride passes first
                        wait([job], timeout=self.interim_stride_s)
            else:
                self._queue_utterance(item, decided_at_s)

    def _interim_words(self, interim: Interim) -> None:
        """The speech-to-text worker heard words of an open utterance: on to the prediction worker,
        which adds the text model's reading and emits it (before that utterance's prediction)."""
        interim.clock_origin_unix_s = self.clock.origin_unix_s
        self.worker.put_interim(interim)

    def _queue_utterance(self, utt: Utterance, decided_at_s: float) -> None:
        if self.lockstep and self.face_path is not None:
            # A faster-than-life replay queues frames the live path would have done by now.
            t0 = time.perf_counter()
            self.face_path.wait_until(decided_at_s, FACE_CATCH_UP_S)
            utt.end_of_speech_wall_s += time.perf_counter() - t0 if utt.end_of_speech_wall_s else 0.0
        utt.end_of_speech_wall_s = utt.end_of_speech_wall_s or time.perf_counter()
        utt.speaker = self.user_speaker
        utt.timings_ms["capture_to_end_of_speech"] = max(0.0, (decided_at_s - utt.end_s) * 1000)
        utt.clock_origin_unix_s = self.clock.origin_for(utt.end_s)
        self.outputs.emit(UtteranceEnded(utt.id, utt.start_s, utt.end_s, utt.clock_origin_unix_s), event=True)
        # Blocks when full: backpressure, never a dropped utterance. Counted once queued.
        (self.asr_worker.submit if self.asr_worker is not None else self.worker.put)(utt)
        self.worker.admit()
        if self.lockstep:
            self.worker.wait_done(LOCKSTEP_TIMEOUT_S)

    # -- running --------------------------------------------------------------------------------
    def warmup(self) -> None:
        """Run every model once on dummy input so the first utterance is not slower."""
        self.predictor.warmup()
        if self.face_path is not None:
            self.face_path.observe(VideoFrame(np.zeros((*WARMUP_FRAME_PX, 3), np.uint8), 0.0, -1))
        self.asr.warmup()

    def end_stream(self) -> None:
        """The input stopped (ended, or a gap): the pending utterance is cut and queued."""
        self._dispatch(self.segmenter.flush(), decided_at_s=self._audio_end_s or 0.0)

    def flush(self, timeout_s: float = FLUSH_TIMEOUT_S) -> bool:
        """End of stream: close a pending utterance and wait (at most ``timeout_s``) until every
        utterance is emitted; False when some were still in flight at the deadline."""
        self.end_stream()
        return self.worker.wait_done(timeout_s)

    def reset(self) -> None:
        """Between two recordings: flush, then forget the segmenter, the face history and the
        conversation, so the next stream may start again at time 0."""
        self.flush()
        self.segmenter.reset()
        if self.face_path is not None:
            self.face_path.flush()
            self.face_path.reset()
        self.reset_context()
        self._audio_end_s = None
        self.clock.new_stream()

    def stop(self) -> None:
        """Ask ``run`` to return after the current read (thread-safe; signal handlers call it)."""
        self.stop_event.set()

    @property
    def stopping(self) -> bool:
        """True once ``stop()`` was asked."""
        return self.stop_event.is_set()

    def run(self, source: Any, camera: Any = None) -> int:
        """Read ``source`` (and ``camera``) until it ends or ``stop()``; flush and return the exit
        code (:func:`mmer.realtime.reading.read_into`: a lost device returns ``EXIT_ENVIRONMENT``)."""
        from mmer.realtime.reading import read_into

        if getattr(source, "clock_origin_unix_s", None) is not None:  # a device: stamps are capture times
            self.clock.set_origin(source.clock_origin_unix_s)
        return read_into(self, source, camera)

    def stats_line(self) -> str:
        """One line of counters for the end of a run (:func:`mmer.realtime.reading.counters`)."""
        from mmer.realtime.reading import counters

        return "stats: " + " ".join(f"{k}={v}" for k, v in counters(self).items())

    def close(self, timeout_s: float = CLOSE_TIMEOUT_S, abort: bool = False) -> None:
        """Flush (unless ``abort``), then stop every thread and close every output; each wait has
        ``timeout_s`` (a stuck thread is left as a daemon and logged). Idempotent."""
        if self.worker.thread.is_alive():
            if not abort:
                self.flush(timeout_s)
            self.stop_event.set()
            self.assembler.close()
            if self.asr_worker is not None:
                self.asr_worker.close(timeout_s)
            self.worker.close(timeout_s)
        if self.face_path is not None:
            if not abort:
                self.face_path.flush(timeout_s)   # the frames already taken are seen, not dropped
            self.face_path.close()
        self.predictor.close()   # its voice worker; a reused predictor then runs voice inline
        self.outputs.close()

    @property
    def threads(self) -> list[threading.Thread]:
        """The pipeline's own threads (all joined after ``close``)."""
        return [self.worker.thread] + ([self.asr_worker.thread] if self.asr_worker is not None else [])

    def __enter__(self) -> "LivePipeline":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
