"""The live pipeline: audio -> utterances -> words -> context -> fused emotion, one per utterance.

    pipe = LivePipeline(load_live_config(overrides=["outputs.json=null"]))
    pipe.on_prediction(lambda p: print(p["label"], p["latency_ms"]["end_of_speech_to_emit"]))
    pipe.push_turn("robot", "How was your day?")     # what the host itself said
    pipe.run(FileSource("talk.mp4").open())            # or push_audio / push_frame yourself
    pipe.close()

Threads. The caller's thread (``push_audio``, or ``run``) runs the segmenter, which is cheap and
must see every sample. Finished utterances go to the speech-to-text worker (its own thread,
mmer.realtime.asr) and, in order, through one bounded queue to the prediction thread, which
waits for each utterance's words, adds them to the dialogue context, looks up the face window
(the face path runs in its own thread at camera rate), runs the predictor and emits. Queues are
bounded everywhere; when the prediction side falls behind, the caller blocks: utterances are
never dropped, camera frames may be (counted by the face path).

Latencies (``latency_ms`` of every prediction, docs/live.md): ``capture_to_end_of_speech`` is
the segmenter's decision delay on the stream clock (how long after the last voiced instant the
end was decided: the end-silence hangover), and every other stage is wall time measured from
that decision, ``end_of_speech_to_emit`` covering them all.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections import OrderedDict, deque
from concurrent.futures import wait
from typing import Any, Callable

import numpy as np

from mmer.realtime.config import LiveConfig
from mmer.realtime.context import DialogueContext
from mmer.realtime.face_path import FacePath, pool_observations
from mmer.realtime.frames import SAMPLE_RATE_HZ, AudioChunk, SpeechPause, Utterance, VadEvent, VideoFrame
from mmer.realtime.sinks import CallbackSink, JsonLinesSink, OverlaySink, WebSocketServer, apply_host_message

EXIT_OK = 0
EXIT_DEVICE_ERROR = 3                 # a device was lost mid-run (after the pending utterance was flushed)
READ_TIMEOUT_S = 0.1                  # source reads time out this often so stop requests are seen
FACE_CATCH_UP_S = 5.0                 # lockstep replays: the longest wait for the face path's backlog
ASR_POLL_S = 0.002                    # how often the prediction thread checks for a finished transcript
OVERLAY_MAX_FPS = 15.0                # the --show window redraws at most this often
JOIN_TIMEOUT_S = 10.0
WARMUP_AUDIO_S = 1.0
RECENT_PREDICTIONS = 256              # predictions kept on the pipeline object for inspection
WARMUP_FRAME_PX = (240, 320)          # (H, W) of the blank frame the face model warms up on
_STOP = object()


class LivePipeline:
    """Segmenter + speech-to-text + dialogue context + face path + predictor + sinks.

    Args:
        config: a :class:`LiveConfig`; the models, ASR and outputs it names are loaded unless
            given ready-made below.
        predictor / face_model / asr: ready components (tests and embedding hosts that already
            hold the models); ``face_model=False`` turns the face path off.
        block_frames: face path waits instead of dropping frames (file replay as fast as possible).
        lockstep: the caller waits for each utterance's prediction before reading on, so a
            fast replay measures per-utterance latency without queueing behind earlier ones.
    """

    def __init__(self, config: LiveConfig, predictor: Any = None, face_model: Any = None, asr: Any = None,
                 block_frames: bool = False, lockstep: bool = False) -> None:
        from mmer.realtime.asr import AsrWorker, make_asr
        from mmer.realtime.vad import VadSegmenter

        self.config = config
        self.lockstep = lockstep
        self.segmenter = VadSegmenter.from_config(config.segmenter)
        if predictor is None or face_model is None:
            from mmer.realtime.predictor import load_stack

            predictor, face_model = load_stack(config.models, predictor, face_model)
        self.predictor = predictor
        self.face_path = None
        if face_model:
            self.face_path = FacePath(face_model, config.face.max_fps, config.face.history_s,
                                      block_when_behind=block_frames, track=config.face.track,
                                      torch_threads=config.face.torch_threads, nice=config.face.nice)
        tokenizer = getattr(getattr(getattr(predictor, "text", None), "processor", None), "tokenizer", None)
        count = (lambda text: len(tokenizer.encode(text, add_special_tokens=False))) if tokenizer else None
        self.context = DialogueContext(config.context.max_turns, config.context.max_tokens, count)
        self._sinks: list[Any] = []
        self._events: list[Any] = []   # sinks that also get non-prediction events (websocket)
        self.overlay: OverlaySink | None = None
        self.websocket: WebSocketServer | None = None
        out = config.outputs
        if out.json is not None:
            self._sinks.append(JsonLinesSink(out.json))
        if out.show:
            self.overlay = OverlaySink()
            self._sinks.append(self.overlay)
        self.asr = asr if asr is not None else make_asr(config.asr.backend, config.asr.model_dir)
        self._inbox: queue.Queue = queue.Queue(maxsize=config.queues.utterances)
        self._texts: OrderedDict[int, tuple[str, str | None]] = OrderedDict()
        self._texts_cond = threading.Condition()
        self._asr_done: set[int] = set()
        self._emitted = threading.Condition()
        self._frame_index = 0
        self._audio_end_s = 0.0
        self._last_overlay_s = 0.0
        self._stop = threading.Event()
        self.predictions: deque[dict] = deque(maxlen=RECENT_PREDICTIONS)  # the latest, for inspection
        self.stats = {"utterances": 0, "predictions": 0, "errors": 0, "host_text_overflows": 0,
                      "host_turns": 0, "utterances_without_text": 0, "input_overflows": 0}
        # Threads start last, once everything that can fail (models, ASR, port) has succeeded.
        if out.ws_port is not None:
            self.websocket = WebSocketServer(out.ws_port, out.ws_host, self.handle_host_message).start()
            self._sinks.append(self.websocket)
            self._events.append(self.websocket)
        self.asr_worker = None if self.asr.name == "none" else AsrWorker(self.asr, config.queues.utterances)
        self._worker = threading.Thread(target=self._predict_loop, name="mmer-predict", daemon=True)
        self._worker.start()
        if self.face_path is not None:
            self.face_path.start()

    # -- host API ---------------------------------------------------------------------------
    def on_prediction(self, callback: Callable[[dict], Any]) -> None:
        """Call ``callback(prediction_dict)`` for every prediction (in the prediction thread)."""
        self._sinks.append(CallbackSink(callback))

    def push_audio(self, samples: np.ndarray, t: float) -> None:
        """Feed (n,) int16 (or float in [-1, 1]) 16 kHz mono samples starting at stream time ``t`` s."""
        chunk = AudioChunk(np.asarray(samples).reshape(-1), float(t))
        self.segmenter.push(chunk)
        self._audio_end_s = chunk.end_s
        self._dispatch(self.segmenter.poll(), decided_at_s=chunk.end_s)

    def push_frame(self, image_bgr: np.ndarray, t: float) -> None:
        """Feed one (H, W, 3) uint8 BGR camera frame taken at stream time ``t`` s."""
        if self.face_path is None:
            return
        self.face_path.push(VideoFrame(image_bgr, float(t), self._frame_index))
        self._frame_index += 1
        if self.overlay is not None and self.overlay.enabled:
            now = time.perf_counter()
            if now - self._last_overlay_s >= 1.0 / OVERLAY_MAX_FPS:
                self._last_overlay_s = now
                latest = self.face_path.latest()
                self.overlay.show(image_bgr, None if latest is None else latest.box)
                if self.overlay.quit_requested:
                    self._stop.set()

    def push_turn(self, speaker: str, text: str) -> None:
        """Add a turn the host knows about (what the robot said) to the dialogue context."""
        self.context.push_turn(speaker, text)
        self.stats["host_turns"] += 1

    def on_event(self, callback: Callable[[dict], Any]) -> None:
        """Call ``callback(event)`` for segmentation events: ``{"type": "vad", "kind": "start"|"end",
        "time_s"}`` and ``{"type": "utterance", "utterance_id", "start_s", "end_s"}`` (the moment
        to supply its text with ``push_text`` when ASR is "none"). Runs in the audio thread."""
        self._events.append(CallbackSink(callback))

    def push_text(self, utterance_id: int, text: str, speaker: str | None = None) -> None:
        """With ASR "none": the words of utterance ``utterance_id`` (before or after it ends),
        and optionally who said them (the host's own diarization; default the user)."""
        with self._texts_cond:
            self._texts[int(utterance_id)] = (str(text), speaker)
            while len(self._texts) > self.config.queues.host_texts:
                self._texts.popitem(last=False)
                self.stats["host_text_overflows"] += 1
            self._texts_cond.notify_all()

    def reset_context(self) -> None:
        """Forget the conversation (a new person walked up): the turns and the speakers' voices."""
        self.context.reset()
        if hasattr(self.predictor, "reset"):
            self.predictor.reset()

    def reset(self) -> None:
        """Between two recordings: flush, then forget the segmenter state, the face history
        and the conversation, so the next stream may start again at time 0."""
        self.flush()
        self.segmenter.reset()
        if self.face_path is not None:
            self.face_path.flush()
            self.face_path.reset()
        self.reset_context()
        self._audio_end_s = 0.0

    def handle_host_message(self, message: dict) -> dict:
        """Apply one host message (websocket protocol: :func:`mmer.realtime.sinks.apply_host_message`)."""
        return apply_host_message(self, message, self.config.context.host_speaker)

    # -- segmentation -> prediction queue -----------------------------------------------------
    def _dispatch(self, items: list[Utterance | VadEvent | SpeechPause], decided_at_s: float) -> None:
        for item in items:
            if isinstance(item, VadEvent):
                self._event({"type": "vad", "kind": item.kind, "time_s": round(item.time_s, 3)})
                continue
            if isinstance(item, SpeechPause):
                # Flows downstream like every item: the predictor may start the voice model on
                # it now, in its worker, and uses that only for the utterance with this key.
                early = self.predictor.speculate(item, self.config.context.user_speaker) \
                    if hasattr(self.predictor, "speculate") else None
                if early is not None and self.lockstep:
                    # Live, the rest of the silence passes before the end can be decided; a
                    # faster-than-life replay gives the early run that much wall time, no more.
                    seg = self.config.segmenter
                    wait([early], timeout=max(0.0, seg.end_silence_ms - seg.post_roll_ms) / 1000)
                continue
            if self.lockstep and self.face_path is not None:
                # Live, frames arrive at camera pace and the face path keeps up with them (its own
                # throughput is measured apart), so when speech is decided over, the frames up to
                # then are processed. A faster-than-life replay queues them instead: let the path
                # catch up first, so its backlog is not charged to (or run during) the prediction.
                t0 = time.perf_counter()
                self.face_path.wait_until(decided_at_s, FACE_CATCH_UP_S)
                if item.end_of_speech_wall_s:
                    item.end_of_speech_wall_s += time.perf_counter() - t0
            if not item.end_of_speech_wall_s:
                item.end_of_speech_wall_s = time.perf_counter()
            item.speaker = self.config.context.user_speaker
            item.timings_ms["capture_to_end_of_speech"] = max(0.0, (decided_at_s - item.end_s) * 1000)
            self.stats["utterances"] += 1
            self._event({"type": "utterance", "utterance_id": item.id, "start_s": round(item.start_s, 3),
                         "end_s": round(item.end_s, 3)})
            if self.asr_worker is not None:
                self.asr_worker.submit(item)
            self._inbox.put(item)  # blocks when full: backpressure, never a dropped utterance
            if self.lockstep:
                with self._emitted:
                    self._emitted.wait_for(lambda: self.stats["predictions"] + self.stats["errors"]
                                           >= self.stats["utterances"] or not self._worker.is_alive())

    def _event(self, message: dict) -> None:
        for sink in self._events:
            sink.emit(message)

    def _wait_for_words(self, utt: Utterance) -> None:
        t0 = time.perf_counter()
        if self.asr_worker is not None:
            while utt.id not in self._asr_done:
                self._asr_done.update(u.id for u in self.asr_worker.poll())
                if utt.id not in self._asr_done:
                    time.sleep(ASR_POLL_S)
            self._asr_done.discard(utt.id)
            return
        with self._texts_cond:
            self._texts_cond.wait_for(lambda: utt.id in self._texts or self._stop.is_set(),
                                      self.config.asr.text_wait_s)
            if utt.id in self._texts:
                utt.text, speaker = self._texts.pop(utt.id)
                utt.speaker = speaker or utt.speaker
        utt.timings_ms["text_wait"] = (time.perf_counter() - t0) * 1000

    def _predict_loop(self) -> None:
        if self.config.models.torch_threads > 0:
            import torch

            torch.set_num_threads(self.config.models.torch_threads)  # this thread only (OpenMP)
        while (utt := self._inbox.get()) is not _STOP:
            try:
                self._predict_one(utt)
            except Exception as e:  # one failing utterance must not end the session
                self.stats["errors"] += 1
                print(f"mmer-live: prediction of utterance {utt.id} failed: {e!r}", file=sys.stderr)
            finally:
                with self._emitted:
                    self._emitted.notify_all()
                self._inbox.task_done()
        self._inbox.task_done()

    def _predict_one(self, utt: Utterance) -> None:
        self._wait_for_words(utt)
        turns = None
        if utt.text and utt.text.strip():
            self.context.add_user_turn(utt.text, utt.speaker, utt.id)
            turns = self.context.turns()
        else:
            self.stats["utterances_without_text"] += 1
        evidence = None
        if self.face_path is not None:
            t0 = time.perf_counter()
            self.face_path.wait_until(utt.end_s, self.config.face.wait_ms / 1000)
            t1 = time.perf_counter()
            evidence = pool_observations(self.face_path.window(utt.start_s, utt.end_s))
            utt.timings_ms["face_wait"] = (t1 - t0) * 1000
            utt.timings_ms["face"] = (time.perf_counter() - t1) * 1000
        prediction = self.predictor.predict(utt, turns, evidence)
        prediction.latency_ms = dict(utt.timings_ms)
        prediction.latency_ms["end_of_speech_to_emit"] = (time.perf_counter() - utt.end_of_speech_wall_s) * 1000
        message = prediction.to_dict()
        for sink in self._sinks:
            sink.emit(message)
        self.predictions.append(message)
        self.stats["predictions"] += 1

    # -- running ------------------------------------------------------------------------------
    def warmup(self) -> None:
        """Run every model once on dummy input so the first utterance is not slower."""
        from mmer.dialogue import Turn

        silence = np.zeros(int(WARMUP_AUDIO_S * SAMPLE_RATE_HZ), np.float32)
        self.predictor.predict(Utterance(-1, 0.0, WARMUP_AUDIO_S, silence, text="hello"), [Turn("user", "hello")])
        if self.face_path is not None:
            self.face_path.observe(VideoFrame(np.zeros((*WARMUP_FRAME_PX, 3), np.uint8), 0.0, -1))
        self.asr.warmup()

    def flush(self, timeout_s: float | None = None) -> None:
        """End of stream: close a pending utterance and wait until every utterance is emitted."""
        self._dispatch(self.segmenter.flush(), decided_at_s=self._audio_end_s)
        deadline = None if timeout_s is None else time.perf_counter() + timeout_s
        with self._emitted:
            self._emitted.wait_for(lambda: self.stats["predictions"] + self.stats["errors"] >= self.stats["utterances"]
                                   or not self._worker.is_alive(),
                                   None if deadline is None else max(0.0, deadline - time.perf_counter()))

    def stop(self) -> None:
        """Ask ``run`` to return after the current read (thread-safe)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        """``stop()`` was called and the current (or next) ``run`` has not returned yet."""
        return self._stop.is_set()

    def run(self, source: Any, camera: Any = None, reopen: Callable[[], Any] | None = None) -> int:
        """Read ``source`` (a FileSource, or a MicrophoneSource with ``camera`` beside it) until it
        ends, ``stop()`` is called or Ctrl-C; flush and return an exit code.

        A DeviceError flushes the pending utterance and returns ``EXIT_DEVICE_ERROR``, unless
        ``config.sources.reconnect`` and ``reopen() -> (source, camera)`` succeeds.
        """
        from mmer.realtime.sources import DeviceError

        cfg = self.config.sources
        given = (source, camera)
        attempts = 0
        try:
            while True:
                try:
                    self._read_loop(source, camera)
                    break
                except KeyboardInterrupt:
                    print("mmer-live: interrupted, flushing", file=sys.stderr)
                    break
                except DeviceError as e:
                    print(f"mmer-live: {e}", file=sys.stderr)
                    self.flush()  # the pending utterance first: it was spoken before the device went
                    self._collect_source_stats(source, camera)
                    _close(source, camera)
                    source = camera = None
                    while reopen is not None and cfg.reconnect and source is None \
                            and attempts < cfg.reconnect_attempts:
                        attempts += 1
                        time.sleep(cfg.reconnect_wait_s)
                        try:
                            source, camera = reopen()
                            print(f"mmer-live: reconnected (attempt {attempts})", file=sys.stderr)
                        except DeviceError as again:
                            print(f"mmer-live: reconnect {attempts} failed: {again}", file=sys.stderr)
                    if source is None:
                        return EXIT_DEVICE_ERROR
            self.flush()
            self._collect_source_stats(source, camera)
            return EXIT_OK
        finally:
            if (source, camera) != given:  # sources this call reopened are its own to close
                _close(source, camera)
            self._stop.clear()  # a stop ends this run only; stop() before run() ends it at once

    def _read_loop(self, source: Any, camera: Any) -> None:
        cam_error: list[BaseException] = []
        cam_stop = threading.Event()
        cam_thread = None
        if camera is not None:
            cam_thread = threading.Thread(target=self._camera_loop, args=(camera, cam_stop, cam_error),
                                          name="mmer-camera-reader", daemon=True)
            cam_thread.start()
        try:
            while not self._stop.is_set():
                if cam_error:
                    raise cam_error[0]
                item = source.read(READ_TIMEOUT_S)
                if item is None:
                    if getattr(source, "finished", False):
                        return
                    continue
                if isinstance(item, AudioChunk):
                    self.push_audio(item.samples, item.start_s)
                else:
                    self.push_frame(item.image, item.time_s)
        finally:
            if cam_thread is not None:
                cam_stop.set()
                cam_thread.join(JOIN_TIMEOUT_S)

    def _camera_loop(self, camera: Any, stop: threading.Event, errors: list[BaseException]) -> None:
        try:
            while not stop.is_set() and not self._stop.is_set():
                frame = camera.read(READ_TIMEOUT_S)
                if frame is not None:
                    self.push_frame(frame.image, frame.time_s)
        except Exception as e:  # handed to the main loop, which flushes and decides
            errors.append(e)

    def _collect_source_stats(self, *sources: Any) -> None:
        for src in sources:
            for attr in ("input_overflows", "dropped_blocks", "dropped_frames"):
                self.stats["input_overflows"] += int(getattr(src, attr, 0) or 0)

    def stats_line(self) -> str:
        """One line of counters for stderr at the end of a run."""
        parts = dict(self.stats)
        if self.face_path is not None:
            parts.update(self.face_path.stats)
            parts["face_fps"] = round(self.face_path.fps, 1)
        if self.asr_worker is not None:
            parts["asr_blocked_submits"] = self.asr_worker.blocked_submits
            parts["asr_errors"] = self.asr_worker.errors
        parts["vad_dropped_short"] = getattr(self.segmenter, "dropped_short", 0)
        if self.websocket is not None:
            parts.update({f"ws_{k}": v for k, v in self.websocket.stats.items()})
        return "mmer-live stats: " + " ".join(f"{k}={v}" for k, v in parts.items())

    def close(self) -> None:
        """Flush, then stop and join every thread and close every sink (idempotent)."""
        if self._worker.is_alive():
            self.flush()
            self._stop.set()
            with self._texts_cond:
                self._texts_cond.notify_all()
            self._inbox.put(_STOP)
            self._worker.join(JOIN_TIMEOUT_S)
        if self.asr_worker is not None:
            self.asr_worker.close(JOIN_TIMEOUT_S)
        if self.face_path is not None:
            self.face_path.close()
        if hasattr(self.predictor, "close"):
            self.predictor.close()   # its voice worker; a reused predictor then runs voice inline
        for sink in self._sinks:
            sink.close()

    def __enter__(self) -> "LivePipeline":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def threads(self) -> list[threading.Thread]:
        """The pipeline's own threads (all joined after ``close``)."""
        out = [self._worker]
        for owner in (self.face_path, self.asr_worker, self.websocket):
            t = getattr(owner, "_thread", None)
            if t is not None:
                out.append(t)
        return out


def _close(*sources: Any) -> None:
    for src in sources:
        if src is not None:
            src.close()
