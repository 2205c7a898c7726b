"""The camera path: face expression for every frame, computed before the utterance ends.

Speech is slow and faces are fast: by the time the segmenter decides an utterance ended (after
``end_silence_ms`` of silence), every camera frame of that utterance arrived long ago. So the
face path runs at camera rate in its own thread and keeps one :class:`FaceObservation` per
processed frame, stamped on the stream clock, in a ring covering ``history_s``. When the
utterance ends, its visual evidence is a lookup, :meth:`FacePath.window` over
``[start_s, end_s]``, not a model call on the critical path.

Frames reach the thread through a one-frame "latest" slot: a frame arriving while the previous
one still waits replaces it (the older frame is dropped and counted), so a slow detector falls
behind by at most one frame and never by a growing queue. Frames closer together than
``1 / max_fps`` are skipped before the slot (counted apart), which caps the CPU the path takes.
For file replay as fast as possible, ``block_when_behind=True`` makes ``push`` wait for the slot
instead of dropping, so a replay is deterministic.

Every pushed frame is in exactly one counter of :attr:`FacePath.stats`: skipped (rate cap),
dropped (lost its place in the slot, or still there at ``close``), pending (in the slot or being
read now), processed, or failed (the face model raised on it). After ``flush`` nothing is pending.

Reading a frame (detection, tracking, crop, the student) is the face model's job:
:meth:`mmer.face.FaceExpressionModel.observe`. This module schedules frames and pools readings.

No face in a frame gives an observation with ``box = probs = None``; an utterance whose window
holds no face has no visual modality. It is never guessed.
"""

from __future__ import annotations

import bisect
import logging
import math
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

from mmer.errors import UsageError
from mmer.realtime.frames import FaceObservation, VideoFrame

if TYPE_CHECKING:
    from mmer.face import FaceExpressionModel, TrackMode

DEFAULT_MAX_FPS = 30.0        # a 30 fps camera leaves 33 ms per frame (REFERENCE.md section 4)
DEFAULT_HISTORY_S = 30.0      # longer than any utterance (the segmenter cuts at 15 s) plus slack
STOP_TIMEOUT_S = 5.0          # join timeout of the worker thread
FPS_WINDOW_FRAMES = 120       # processed frames over which the path's own fps is measured
FRAME_TIMES_KEPT = 10_000     # per-frame processing times kept for benchmarks (~80 KB)
# A 64x64 crop at batch 1 gains nothing from more intra-op threads, and on a small machine extra
# OpenMP threads contending with the other stages made single frames 20x slower (measured).
DEFAULT_TORCH_THREADS = 1
DEFAULT_NICE = 10                 # the face worker's scheduling step below the rest of the process
log = logging.getLogger(__name__)
PROB_FLOOR = 1e-8             # probabilities are clamped here before a log
TIME_EPS_S = 1e-6             # frames this close to a window edge count as inside it


@dataclass(frozen=True)
class FaceEvidence:
    """The pooled visual evidence of one utterance window.

    probs: (C,) float32 over the face model's label set, the normalised geometric mean of the
        per-frame probabilities, i.e. softmax of the mean per-frame logits, which is exactly how
        the edge visual student pools the frames of an utterance (mmer/models/visual_student.py).
    feature: (D,) float32 mean of the per-frame ``"visual"`` features (the student's projection
        is affine, so this equals the student's utterance feature), or None.
    faces / frames: frames with a face / frames processed in the window.
    box: the face box of the last frame with a face.
    """

    probs: np.ndarray
    feature: np.ndarray | None
    faces: int
    frames: int
    box: tuple[int, int, int, int] | None


def pool_observations(observations: Sequence[FaceObservation]) -> FaceEvidence | None:
    """Pool the frames of a window; ``None`` when no frame of it shows a face."""
    faces = [o for o in observations if o.probs is not None]
    if not faces:
        return None
    log_p = np.log(np.clip(np.stack([o.probs for o in faces]).astype(np.float64), PROB_FLOOR, None))
    mean = log_p.mean(axis=0)
    probs = np.exp(mean - mean.max())
    probs = (probs / probs.sum()).astype(np.float32)
    feats = [o.feature for o in faces if o.feature is not None]
    feature = np.mean(np.stack(feats), axis=0).astype(np.float32) if len(feats) == len(faces) else None
    return FaceEvidence(probs, feature, len(faces), len(observations), faces[-1].box)


class FacePath:
    """Face detection + expression per camera frame in a worker thread, with a bounded history.

    Args:
        face_model: a :class:`mmer.face.FaceExpressionModel`; its ``observe`` reads each frame
            (box, probabilities over ``labels`` and the student's ``"visual"`` feature for ASF)
            and keeps the tracked face, which ``reset`` (and a new FacePath) forgets.
        max_fps: process at most this many frames per second of stream time.
        history_s: how far back observations are kept.
        block_when_behind: ``push`` waits for the slot instead of dropping (file replay).
        torch_threads: intra-op threads of the worker thread (0: torch's default).
        nice: how much lower than the rest of the process the worker thread is scheduled (Linux),
            so the per-utterance prediction gets the cores first; 0 leaves it alone.
        track: "largest": a full-frame detection per frame, the largest face; "follow": a cheap
            search around the followed face, staying on it when a bigger face walks past (the
            largest face when there is none yet or it was lost). See :class:`mmer.face.FaceTracker`.
    """

    def __init__(self, face_model: FaceExpressionModel, max_fps: float = DEFAULT_MAX_FPS,
                 history_s: float = DEFAULT_HISTORY_S, block_when_behind: bool = False, track: TrackMode = "largest",
                 torch_threads: int = DEFAULT_TORCH_THREADS, nice: int = DEFAULT_NICE) -> None:
        from mmer.face import TRACK_MODES  # already imported with the model: no cost

        if max_fps <= 0 or history_s <= 0:
            raise UsageError(f"max_fps and history_s must be > 0, got {max_fps}, {history_s}")
        if track not in TRACK_MODES:
            raise UsageError(f"track must be one of {TRACK_MODES}, got {track!r}")
        self.face_model = face_model
        self.labels: tuple[str, ...] = tuple(face_model.labels)
        self.label_set: str | None = face_model.label_set
        face_model.reset()  # a new path follows no face yet
        self.max_fps, self.history_s = max_fps, history_s
        self.block_when_behind, self.track, self.torch_threads = block_when_behind, track, torch_threads
        self.nice = nice
        self._ring: deque[FaceObservation] = deque(maxlen=int(math.ceil(history_s * max_fps)) + 1)
        self._new: deque[FaceObservation] = deque(maxlen=self._ring.maxlen)
        self._cond = threading.Condition()
        self._slot: VideoFrame | None = None
        self._busy = False
        self._stop = False
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._last_accepted_s: float | None = None
        self._done_until_s = -math.inf
        self._process_wall_s: deque[float] = deque(maxlen=FPS_WINDOW_FRAMES)
        self.frame_ms: deque[float] = deque(maxlen=FRAME_TIMES_KEPT)  # detection + expression, per frame
        self.latest_frame: VideoFrame | None = None
        # frames_in == frames_skipped + frames_dropped + frames_pending + frames_processed + frames_failed
        self.stats = {"frames_in": 0, "frames_processed": 0, "frames_dropped": 0, "frames_skipped": 0,
                      "frames_pending": 0, "frames_failed": 0, "faces_found": 0}

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> "FacePath":
        """Start the worker thread (idempotent)."""
        if self._thread is None:
            self._stop = False
            self._thread = threading.Thread(target=self._run, name="mmer-face-path", daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        """Stop and join the worker thread; a frame still in the slot is discarded (counted as dropped)."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(STOP_TIMEOUT_S)
            self._thread = None
        with self._cond:
            if self._slot is not None:
                self._slot = None
                self._count_dropped()
            self._cond.notify_all()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- push / poll / flush / reset ---------------------------------------------------------
    def push(self, frame: VideoFrame) -> bool:
        """Offer one frame; returns False when it is skipped by the rate cap.

        Raises the worker's exception if the face model failed.
        """
        with self._cond:
            if self._error is not None:
                raise RuntimeError(f"face path stopped: {self._error!r}") from self._error
            self.stats["frames_in"] += 1
            self.latest_frame = frame
            min_gap_s = 1.0 / self.max_fps - TIME_EPS_S
            if self._last_accepted_s is not None and 0 <= frame.time_s - self._last_accepted_s < min_gap_s:
                self.stats["frames_skipped"] += 1
                return False
            if self.block_when_behind:
                self._cond.wait_for(lambda: self._slot is None or self._stop or self._error is not None
                                    or not self.running)
            if self._slot is not None:  # the older waiting frame loses its place
                self._count_dropped()
            self._slot = frame
            self.stats["frames_pending"] += 1
            self._last_accepted_s = frame.time_s
            self._cond.notify_all()
            return True

    def poll(self) -> list[FaceObservation]:
        """Observations made since the last poll (bounded; for the overlay)."""
        with self._cond:
            out = list(self._new)
            self._new.clear()
            return out

    def wait_until(self, time_s: float, timeout_s: float) -> bool:
        """Wait until every frame pushed so far up to ``time_s`` is processed (or dropped).

        Returns False on timeout. Live, this returns at once: frames of an utterance arrived
        ``end_silence_ms`` before its end was decided.
        """
        with self._cond:
            return self._cond.wait_for(
                lambda: self._done_until_s >= time_s - TIME_EPS_S or (self._slot is None and not self._busy)
                or self._error is not None or not self.running, timeout_s)

    def flush(self, timeout_s: float = STOP_TIMEOUT_S) -> bool:
        """Wait until the slot is empty and the worker idle; False on timeout."""
        return self.wait_until(math.inf, timeout_s)

    def reset(self) -> None:
        """Forget observations and the tracked face (a new user); the counters keep counting."""
        with self._cond:
            self._ring.clear()
            self._new.clear()
            self._last_accepted_s = None
            self.face_model.reset()
            self._done_until_s = -math.inf

    # -- lookup --------------------------------------------------------------------------------
    def window(self, start_s: float, end_s: float) -> list[FaceObservation]:
        """Observations with ``start_s <= time_s <= end_s``, oldest first."""
        with self._cond:
            ring = list(self._ring)
        times = [o.time_s for o in ring]
        lo = bisect.bisect_left(times, start_s - TIME_EPS_S)
        hi = bisect.bisect_right(times, end_s + TIME_EPS_S)
        return ring[lo:hi]

    def latest(self) -> FaceObservation | None:
        with self._cond:
            return self._ring[-1] if self._ring else None

    @property
    def fps(self) -> float:
        """Frames processed per wall-clock second over the last ``FPS_WINDOW_FRAMES`` frames."""
        with self._cond:
            stamps = list(self._process_wall_s)
        if len(stamps) < 2 or stamps[-1] <= stamps[0]:
            return 0.0
        return (len(stamps) - 1) / (stamps[-1] - stamps[0])

    # -- worker -------------------------------------------------------------------------------
    def _run(self) -> None:
        if self.torch_threads > 0:
            import torch

            torch.set_num_threads(self.torch_threads)  # per thread with OpenMP: the other stages keep theirs
        if self.nice and hasattr(os, "setpriority"):
            # Throughput work: a frame may wait a few ms, an utterance's prediction should not wait
            # for a frame. Linux schedules threads on their own, so this lowers only this one.
            try:
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, 0) + self.nice)
            except OSError as e:
                log.info("face path: could not lower its priority (%s)", e)
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._slot is not None or self._stop)
                if self._stop:
                    return
                frame, self._slot, self._busy = self._slot, None, True
                self._cond.notify_all()
            t0 = time.perf_counter()
            try:
                obs = self.observe(frame)
            except BaseException as e:  # surfaced by the next push()
                with self._cond:
                    self._error, self._busy = e, False
                    self.stats["frames_pending"] -= 1
                    self.stats["frames_failed"] += 1
                    self._cond.notify_all()
                return
            with self._cond:
                # Time goes forward; a replay that restarts (reset) starts a fresh ring.
                if self._ring and obs.time_s < self._ring[-1].time_s:
                    self._ring.clear()
                self._ring.append(obs)
                self._new.append(obs)
                self._done_until_s = max(self._done_until_s, frame.time_s)
                self._busy = False
                now = time.perf_counter()
                self._process_wall_s.append(now)
                self.frame_ms.append((now - t0) * 1000)
                self.stats["frames_pending"] -= 1
                self.stats["frames_processed"] += 1
                self.stats["faces_found"] += obs.probs is not None
                self._cond.notify_all()

    def _count_dropped(self) -> None:
        """The frame in the slot leaves it unread (caller holds the lock)."""
        self.stats["frames_pending"] -= 1
        self.stats["frames_dropped"] += 1

    def observe(self, frame: VideoFrame) -> FaceObservation:
        """Read one frame with the face model (in the caller's thread); not counted in ``stats``."""
        reading = self.face_model.observe(frame.image, track=self.track)
        return FaceObservation(frame.time_s, reading.box, reading.probs, reading.feature)
