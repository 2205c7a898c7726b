"""Reading sources into a pipeline: the read loop, the camera reader, and reconnecting.

:func:`read_into` is what ``LivePipeline.run`` does: it moves every audio block and camera
frame of a source into the pipeline until the source ends or ``stop()`` is asked, then
flushes. :class:`ReconnectingSource` wraps a device source: when the device is lost it closes
it, reopens it (``attempts`` times, ``wait_s`` apart) and hands the pipeline a
:class:`StreamGap`, so the utterance spoken before the loss is emitted and the stream goes on.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

from mmer.errors import EXIT_ENVIRONMENT, EXIT_OK
from mmer.realtime.frames import AudioChunk, StreamGap, VideoFrame

log = logging.getLogger(__name__)

READ_TIMEOUT_S = 0.1          # source reads time out this often so stop requests are seen
READER_JOIN_TIMEOUT_S = 5.0   # the camera reader ends within one read; this is its deadline


def counters(pipeline: Any) -> dict[str, Any]:
    """Every counter of ``pipeline`` and its parts, for the stats line at the end of a run."""
    parts = dict(pipeline.stats, pending=pipeline.pending, callback_errors=pipeline.outputs.callback_errors,
                 **pipeline.assembler.stats, vad_dropped_short=pipeline.segmenter.dropped_short)
    if pipeline.face_path is not None:
        parts.update(pipeline.face_path.stats, face_fps=round(pipeline.face_path.fps, 1))
    if pipeline.asr_worker is not None:
        worker = pipeline.asr_worker
        parts.update(asr_blocked_submits=worker.blocked_submits, asr_errors=worker.errors,
                     asr_loops_cut=worker.loops_cut, asr_early_used=worker.speculative_used,
                     asr_early_wasted=worker.speculative_wasted, asr_early_skipped=worker.speculative_skipped,
                     asr_interim_passes=worker.interim_passes, asr_interim_skipped=worker.interim_skipped)
    parts.update(pipeline.outputs.counters())
    return parts


def read_into(pipeline: Any, source: Any, camera: Any = None) -> int:
    """Read ``source`` (and ``camera`` in a reader thread) into ``pipeline``; flush; exit code.

    A lost device (DeviceError) flushes the pending utterance and returns ``EXIT_ENVIRONMENT``;
    Ctrl-C (KeyboardInterrupt) flushes and returns ``EXIT_OK``, unless a stop was already asked
    (the second Ctrl-C: abort, raised at once); any other error flushes and is raised. A replay
    faster than real time (``source.paced`` False) has the face path process every frame.
    """
    from mmer.realtime.sources import DeviceError

    if pipeline.face_path is not None:
        pipeline.face_path.block_when_behind = not source.paced
    stop = pipeline.stop_event
    cam_errors: list[BaseException] = []
    reader = None
    if camera is not None:
        reader = threading.Thread(target=_camera_loop, args=(pipeline, camera, stop, cam_errors),
                                  name="mmer-camera-reader", daemon=True)
        reader.start()
    try:
        while not stop.is_set() and not cam_errors:
            item = source.read(READ_TIMEOUT_S)
            if isinstance(item, AudioChunk):
                pipeline.push_chunk(item)
            elif isinstance(item, VideoFrame):
                pipeline.push_video(item)
            elif isinstance(item, StreamGap):
                log.warning("input interrupted at %.2f s (%s); the pending utterance ends there",
                            item.time_s, item.reason)
                pipeline.end_stream()
            elif item is None and source.finished:
                break
        if cam_errors:
            raise cam_errors[0]
        code = EXIT_OK
    except DeviceError as e:
        log.error("%s", e)
        code = EXIT_ENVIRONMENT
    except KeyboardInterrupt:
        if stop.is_set():          # asked to stop already: this is the abort, no flush
            raise
        code = EXIT_OK
    except BaseException:
        pipeline.flush()           # what was spoken before the error still counts
        raise
    finally:
        stop.set()                 # ends the camera reader
        if reader is not None:
            reader.join(READER_JOIN_TIMEOUT_S)
        stop.clear()               # a stop ends this run only
    pipeline.flush()
    return code


def _camera_loop(pipeline: Any, camera: Any, stop: threading.Event, errors: list[BaseException]) -> None:
    try:
        while not stop.is_set():
            frame = camera.read(READ_TIMEOUT_S)
            if frame is not None:
                pipeline.push_video(frame)
    except Exception as e:  # handed to the read loop, which flushes and decides
        errors.append(e)


class ReconnectingSource:
    """A device source that reopens itself when the device is lost.

    ``open_source()`` returns an opened source (a MicrophoneSource or CameraSource); on a
    DeviceError from ``read`` the source is closed and reopened up to ``attempts`` times,
    ``wait_s`` apart, and ``read`` returns a :class:`StreamGap`; when every attempt fails the
    last DeviceError is raised. The stream clock never goes back: a reopened source whose
    clock restarts (a file, a device opened on a new origin) is shifted to go on from where
    the lost one stopped, and ``clock_origin_unix_s`` (the wall-clock stamps' origin) stays
    the first source's.
    """

    def __init__(self, open_source: Callable[[], Any], attempts: int = 3, wait_s: float = 2.0,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.open_source, self.attempts, self.wait_s, self._sleep = open_source, attempts, wait_s, sleep
        self.source = open_source()
        self.clock_origin_unix_s = getattr(self.source, "clock_origin_unix_s", None)
        self.reconnects = 0
        self._last_time_s = 0.0
        self._offset_s: float | None = 0.0   # None: decided by the first item after a reopen

    @property
    def paced(self) -> bool:
        return self.source.paced

    @property
    def finished(self) -> bool:
        return self.source.finished

    def read(self, timeout_s: float | None = None) -> Any:
        from mmer.realtime.sources import DeviceError

        try:
            item = self.source.read(timeout_s)
        except DeviceError as lost:
            self.source.close()
            for attempt in range(1, self.attempts + 1):
                self._sleep(self.wait_s)
                try:
                    self.source = self.open_source()
                except DeviceError as again:
                    log.warning("reconnect %d of %d failed: %s", attempt, self.attempts, again)
                    continue
                self.reconnects += 1
                self._offset_s = None
                log.warning("reconnected after %s (attempt %d)", lost, attempt)
                return StreamGap(self._last_time_s, str(lost))
            raise
        if isinstance(item, AudioChunk):
            if self._offset_s is None:
                self._offset_s = max(0.0, self._last_time_s - item.start_s)
            item = AudioChunk(item.samples, item.start_s + self._offset_s, item.sample_rate_hz)
            self._last_time_s = item.end_s
        elif isinstance(item, VideoFrame):
            if self._offset_s is None:
                self._offset_s = max(0.0, self._last_time_s - item.time_s)
            item = VideoFrame(item.image, item.time_s + self._offset_s, item.index)
            self._last_time_s = max(self._last_time_s, item.time_s)
        return item

    def close(self) -> None:
        self.source.close()
