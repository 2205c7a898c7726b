"""The last stage of the live pipeline: one thread that turns utterances into predictions.

:class:`PredictionWorker` takes utterances (with their words, or waiting for the host's) from a
bounded inbox, has the assembler join the dialogue context and the face window, the predictor
fuse, and hands the typed :class:`Prediction` to the outputs. It keeps the pipeline's counters:
an utterance is counted when it is queued (:meth:`admit`), and :meth:`wait_done` waits, with a
deadline, until every counted utterance was emitted or failed.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from typing import Any

from mmer.realtime.frames import Interim, Utterance

log = logging.getLogger(__name__)

RECENT_PREDICTIONS = 256      # predictions kept for inspection
_STOP = object()


class PredictionWorker:
    """Thread ``mmer-predict``: inbox -> assembler -> predictor -> outputs.

    ``host_text``: the words come from the host (ASR "none"), so each utterance waits for them
    (at most the assembler's ``text_wait_s``). ``torch_threads`` > 0 sets this thread's torch
    threads. A failing utterance is logged and counted in ``errors``; the next one goes on.
    """

    def __init__(self, assembler: Any, predictor: Any, outputs: Any, faces: Any = None, *, queue_size: int = 8,
                 host_text: bool = False, torch_threads: int = 0) -> None:
        self.assembler, self.predictor, self.outputs, self.faces = assembler, predictor, outputs, faces
        self.host_text, self.torch_threads = host_text, torch_threads
        self.inbox: queue.Queue = queue.Queue(maxsize=queue_size)
        self.predictions: deque = deque(maxlen=RECENT_PREDICTIONS)
        self.stats = {"utterances": 0, "predictions": 0, "errors": 0, "flush_timeouts": 0, "interims": 0,
                      "interim_dropped": 0}
        self._done = threading.Condition()
        self.thread = threading.Thread(target=self._run, name="mmer-predict", daemon=True)
        self.thread.start()

    def put(self, utterance: Utterance) -> None:
        """Queue ``utterance``; blocks while the inbox is full (backpressure, never a drop)."""
        self.inbox.put(utterance)

    def put_interim(self, interim: Interim) -> None:
        """Queue words heard so far (an event, behind the utterances already queued and before
        their own utterance); skipped, never waited for, when the inbox is full."""
        try:
            self.inbox.put_nowait(interim)
        except queue.Full:
            self.stats["interim_dropped"] += 1

    def admit(self) -> None:
        """Count one more utterance in flight (once it is queued, at this stage or an earlier one)."""
        with self._done:
            self.stats["utterances"] += 1

    @property
    def pending(self) -> int:
        """Utterances counted and not yet emitted (or failed)."""
        return self.stats["utterances"] - self.stats["predictions"] - self.stats["errors"]

    def wait_done(self, timeout_s: float) -> bool:
        """Wait until nothing is pending, at most ``timeout_s``; False (and logged) at the deadline."""
        with self._done:
            done = self._done.wait_for(lambda: self.pending <= 0, timeout_s)
        if not done:
            self.stats["flush_timeouts"] += 1
            log.warning("%d utterance(s) still in flight after %.0f s", self.pending, timeout_s)
        return done

    def _run(self) -> None:
        if self.torch_threads > 0:
            import torch

            torch.set_num_threads(self.torch_threads)  # this thread only (OpenMP)
        while (utt := self.inbox.get()) is not _STOP:
            if isinstance(utt, Interim):
                self._interim(utt)
                continue
            try:
                if self.host_text:
                    self.assembler.take_host_text(utt)
                turns, evidence = self.assembler.assemble(utt, self.faces)
                prediction = self.predictor.predict(utt, turns, evidence)
                prediction.latency_ms = dict(utt.timings_ms)
                prediction.latency_ms["end_of_speech_to_emit"] = (time.perf_counter() - utt.end_of_speech_wall_s) * 1e3
                self.outputs.emit(prediction)
                self.predictions.append(prediction)
                outcome = "predictions"
            except Exception:  # one failing utterance must not end the session
                log.exception("prediction of utterance %s failed", utt.id)
                outcome = "errors"
            with self._done:
                self.stats[outcome] += 1
                self._done.notify_all()

    def _interim(self, interim: Interim) -> None:
        """The text model on the words so far, then the event out (a failure is logged, not counted
        against the utterance)."""
        try:
            turns = self.assembler.interim_turns(interim.speaker, interim.text)
            if turns is not None:
                interim.label, interim.probs = self.predictor.interim_text(turns)
            self.outputs.emit(interim, event=True)
            self.stats["interims"] += 1
        except Exception:
            log.exception("interim words of utterance %s failed", interim.utterance_id)

    def close(self, timeout_s: float) -> None:
        """Stop after the queued utterances; each wait has ``timeout_s`` (a stuck thread is logged)."""
        if not self.thread.is_alive():
            return
        try:
            self.inbox.put(_STOP, timeout=timeout_s)
        except queue.Full:
            log.warning("prediction worker stuck; left as a daemon")
            return
        self.thread.join(timeout_s)
