"""Where audio and video come from: microphone, camera, or a replayed file.

The only module that touches hardware (STYLE.md habit 8): sounddevice and cv2.VideoCapture
are imported here, lazily, inside the functions that need them. Every source has the same
shape: ``open()`` (fails early with a clear :class:`DeviceError` / :class:`MediaFileError`),
``read(timeout_s) -> AudioChunk | VideoFrame | None``, ``close()``, and a context manager.
Audio leaves every source as 16 kHz mono int16 ``AudioChunk``\\ s stamped on the stream clock,
so a replayed file and a live microphone feed the pipeline identically: both down-mix and
resample through :mod:`mmer.media`, the code training decodes with too.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from mmer.errors import MmerError
from mmer.extras import MissingExtra, require
from mmer.media import (DEFAULT_BLOCK_MS, INT16_FULL_SCALE, MediaError, MediaReader, StreamResampler, VideoImage,
                        downmix, to_int16)
from mmer.realtime.clock import unix_time_of
from mmer.realtime.frames import SAMPLE_RATE_HZ, AudioChunk, VideoFrame

log = logging.getLogger(__name__)

LIST_DEVICES_HINT = "List the available devices with: mmer-live --list-devices"
MIC_QUEUE_S = 2.0  # audio the microphone queue holds before it drops blocks
MIC_STALL_S = 2.0  # no block for this long while the stream claims to run: the device is gone
MIC_START_S = 5.0  # ... before the first block (Bluetooth headsets take seconds to start)
COMMON_CAPTURE_RATES_HZ = (48_000, 44_100)  # tried after 16 kHz and the device's default rate
MAX_CAPTURE_CHANNELS = 2  # a device that refuses mono is opened in stereo and down-mixed
CAMERA_FIRST_FRAME_TIMEOUT_S = 5.0
CAMERA_MAX_READ_FAILURES = 30  # consecutive failed reads (~1 s at 30 fps) = camera lost
MAX_CAMERA_PROBE = 5  # list_devices tries camera indices 0..4


class SourceError(MmerError, RuntimeError):
    """A capture source was used wrongly (read before open...)."""

    kind = "usage"


class DeviceError(SourceError):
    """A microphone or camera is missing, cannot be opened, or was lost while running."""

    kind = "environment"


MediaFileError = MediaError  # a replayed file that is missing or cannot be decoded (mmer.media names it)


def _sounddevice():
    try:
        return require("sounddevice")
    except OSError as e:  # the module is there but the PortAudio C library is not
        raise MissingExtra(f"the microphone source needs the PortAudio library ({e}). Install it with: "
                           "apt-get install libportaudio2 (macOS: brew install portaudio)") from None


@contextlib.contextmanager
def _quiet_opencv(cv2):
    """Silence OpenCV's backend warnings while probing devices; our own error says what failed."""
    previous = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        cv2.utils.logging.setLogLevel(previous)


class _Source:
    """``with source:`` opens and closes it (subclasses define ``open`` and ``close``).

    ``paced``: items arrive at the pace they were captured (devices, a real-time replay);
    False for a replay as fast as possible, where the pipeline must process every frame.
    """

    paced = True
    finished = False   # a file source sets it at its end; a device never ends, it is lost (DeviceError)

    def __enter__(self):
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()


class MicrophoneSource(_Source):
    """Microphone capture via sounddevice: int16 mono blocks of ``block_ms`` into a bounded queue.

    The device is opened at 16 kHz mono when it takes that; otherwise at its own default rate
    (44.1 kHz on many USB and macOS devices) or 48 / 44.1 kHz, in stereo if it refuses mono,
    and the callback down-mixes and resamples with :class:`mmer.media.StreamResampler`, the
    resampler of the file replay and of training, so the model hears the same numbers.
    ``capture_rate_hz`` / ``capture_channels`` say what was opened.

    The PortAudio callback never blocks: when the queue (``MIC_QUEUE_S`` of audio) is full the
    block is dropped and counted in ``dropped_blocks``; driver-side overruns are counted in
    ``input_overflows``. ``start_s`` of a chunk is its first sample's time in seconds since
    ``clock_origin_s`` (a ``time.perf_counter()`` value; default: when ``open()`` ran), so
    microphone and camera share one clock when given the same origin; ``clock_origin_unix_s``
    is that origin as Unix time, taken once at ``open()`` (the wall-clock stamps' origin).
    """

    def __init__(self, device: int | str | None = None, sample_rate_hz: int = SAMPLE_RATE_HZ,
                 block_ms: int = DEFAULT_BLOCK_MS, clock_origin_s: float | None = None):
        self.device, self.sample_rate_hz, self.block_ms = device, sample_rate_hz, block_ms
        self.block_samples = sample_rate_hz * block_ms // 1000
        self.clock_origin_s = clock_origin_s
        self.clock_origin_unix_s: float | None = None
        self._queue: queue.Queue[AudioChunk] = queue.Queue(maxsize=max(1, int(MIC_QUEUE_S * 1000 / block_ms)))
        self._stream = None
        self.input_overflows = 0
        self.dropped_blocks = 0
        self.device_name = "default input" if device is None else f"'{device}'"
        self.capture_rate_hz = self.capture_channels = 0

    def _describe(self) -> str:
        return f"microphone {self.device_name}"

    def _capture_settings(self, sd, info) -> tuple[int, int]:
        """(rate_hz, channels) the device accepts, as int16: the pipeline's rate in mono first."""
        max_channels = int(info.get("max_input_channels", 1) or 0)
        if max_channels < 1:
            raise DeviceError(f"{self._describe()} has no input channels. {LIST_DEVICES_HINT}")
        native_hz = int(round(float(info.get("default_samplerate") or self.sample_rate_hz)))
        rates = list(dict.fromkeys((self.sample_rate_hz, native_hz, *COMMON_CAPTURE_RATES_HZ)))
        channel_counts = list(dict.fromkeys((1, min(MAX_CAPTURE_CHANNELS, max_channels))))
        for rate in rates:
            for channels in channel_counts:
                try:
                    sd.check_input_settings(device=self.device, channels=channels, dtype="int16", samplerate=rate)
                except (ValueError, sd.PortAudioError):
                    continue
                return rate, channels
        raise DeviceError(f"{self._describe()} accepts none of {rates} Hz with {channel_counts} channel(s) as "
                          f"int16. {LIST_DEVICES_HINT}")

    def open(self) -> MicrophoneSource:
        """Check the device, then start capturing. Raises :class:`DeviceError` if it is missing."""
        sd = _sounddevice()
        try:
            info = sd.query_devices(self.device, kind="input")
        except (ValueError, sd.PortAudioError) as e:
            raise DeviceError(f"{self._describe()} not found ({e}). {LIST_DEVICES_HINT}") from None
        self.device_name = f"'{info['name']}'"
        self.capture_rate_hz, self.capture_channels = self._capture_settings(sd, info)
        converting = self.capture_rate_hz != self.sample_rate_hz or self.capture_channels != 1
        self._resampler = StreamResampler(self.capture_rate_hz, self.sample_rate_hz) if converting else None
        if converting:
            log.info("%s opened at %d Hz, %d channel(s); down-mixed and resampled to %d Hz mono",
                     self._describe(), self.capture_rate_hz, self.capture_channels, self.sample_rate_hz)
        self._samples_out = 0
        self._clock_offset_s: float | None = None
        self._error: BaseException | None = None
        self._finished = False
        self._last_block_wall_s = time.perf_counter()
        if self.clock_origin_s is None:
            self.clock_origin_s = time.perf_counter()
        self.clock_origin_unix_s = unix_time_of(self.clock_origin_s)
        try:
            self._stream = sd.InputStream(samplerate=self.capture_rate_hz,
                                          blocksize=self.capture_rate_hz * self.block_ms // 1000,
                                          device=self.device, channels=self.capture_channels, dtype="int16",
                                          callback=self._callback, finished_callback=self._on_finished)
            self._stream.start()
        except sd.PortAudioError as e:
            self._stream = None
            raise DeviceError(f"{self._describe()} could not be started ({e}). {LIST_DEVICES_HINT}") from None
        return self

    def _on_finished(self) -> None:
        self._finished = True

    def _convert(self, indata: np.ndarray) -> np.ndarray:
        """(frames, channels) int16 at the capture rate -> (n,) int16 mono at ``sample_rate_hz``."""
        if self._resampler is None:
            return indata[:, 0].copy()
        mono = downmix(indata.astype(np.float32) / INT16_FULL_SCALE, channel_axis=1)
        return to_int16(self._resampler.push(mono))

    def _callback(self, indata, frames, time_info, status) -> None:  # PortAudio's thread
        try:
            now = time.perf_counter()
            if status.input_overflow:
                self.input_overflows += 1
            samples = self._convert(indata)
            if self._clock_offset_s is None:  # the first block was captured over its own length
                self._clock_offset_s = now - self.clock_origin_s - frames / self.capture_rate_hz
            self._last_block_wall_s = now
            if not len(samples):  # the resampler's first block may still be inside its filter
                return
            chunk = AudioChunk(samples, self._clock_offset_s + self._samples_out / self.sample_rate_hz,
                               self.sample_rate_hz)
            self._samples_out += len(samples)
            try:
                self._queue.put_nowait(chunk)
            except queue.Full:
                self.dropped_blocks += 1
        except BaseException as e:  # surface it from read(); raising here kills the stream silently
            self._error = e
            raise

    def read(self, timeout_s: float | None = None) -> AudioChunk | None:
        """The next block, or ``None`` if none arrived within ``timeout_s``.

        Raises :class:`DeviceError` once the queue is drained and the device has stopped.
        """
        if self._stream is None:
            raise SourceError("MicrophoneSource.read() on a source that is not open")
        try:
            return self._queue.get(timeout=timeout_s)
        except queue.Empty:
            pass
        if self._error is not None:
            raise DeviceError(f"{self._describe()} capture failed: {self._error!r}")
        limit_s = MIC_STALL_S if self._samples_out else MIC_START_S
        stalled = time.perf_counter() - self._last_block_wall_s > limit_s
        if self._finished or not self._stream.active or stalled:
            raise DeviceError(f"{self._describe()} stopped delivering audio (unplugged?). {LIST_DEVICES_HINT}")
        return None

    def close(self) -> None:
        """Stop and release the stream (idempotent)."""
        stream, self._stream = self._stream, None
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.abort()
            stream.close()


def _camera_target(index: int | str) -> int | str:
    """What cv2.VideoCapture is given: an int for a camera number (also written as digits), else the string."""
    if isinstance(index, str) and index.strip().isdigit():
        return int(index.strip())
    if isinstance(index, (int, np.integer)) and not isinstance(index, bool):
        return int(index)
    if isinstance(index, (str, Path)) and str(index).strip():
        return str(index).strip()
    raise DeviceError(f"camera {index!r}: give a camera number, a device path, a URL or a GStreamer pipeline. "
                      f"{LIST_DEVICES_HINT}")


def _is_local_path(target: int | str) -> bool:
    """A device path or file name (not a URL, not a GStreamer pipeline)."""
    return isinstance(target, str) and "://" not in target and "!" not in target


class CameraSource(_Source):
    """Camera capture via cv2.VideoCapture in a thread that keeps only the newest frames.

    ``index`` is what cv2.VideoCapture opens: a camera number (a string of digits such as
    ``"2"`` counts as one), a device path (``/dev/video2``), a URL (an ``rtsp://`` IP camera),
    a GStreamer pipeline (``"... ! appsink"``) or a video file. One that does not open raises
    :class:`DeviceError` naming it.

    The buffer holds ``max_buffered_frames`` (default 1: the face path always wants the latest
    frame); older unread frames are dropped and counted in ``dropped_frames``.
    ``VideoFrame.time_s`` is seconds since ``clock_origin_s`` (``time.perf_counter()``), which
    is ``clock_origin_unix_s`` as Unix time (taken at ``open()``).
    """

    def __init__(self, index: int | str = 0, width: int = 640, height: int = 480, fps: int = 30,
                 max_buffered_frames: int = 1, clock_origin_s: float | None = None):
        self.index = _camera_target(index)
        self.width, self.height, self.fps = width, height, fps
        self.clock_origin_s = clock_origin_s
        self.clock_origin_unix_s: float | None = None
        self._buffer: deque[VideoFrame] = deque(maxlen=max_buffered_frames)
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._cap = None
        self._error: DeviceError | None = None
        self.frames_captured = 0
        self.dropped_frames = 0

    def _describe(self) -> str:
        return f"camera {self.index}" if isinstance(self.index, int) else f"camera '{self.index}'"

    def open(self) -> CameraSource:
        """Open the camera and wait for its first frame; :class:`DeviceError` if either fails."""
        if _is_local_path(self.index) and not Path(self.index).exists():
            raise DeviceError(f"{self._describe()}: no such device or file. {LIST_DEVICES_HINT}")
        cv2 = require("cv2")
        with _quiet_opencv(cv2):
            cap = cv2.VideoCapture(self.index)
        if not cap.isOpened():
            cap.release()
            raise DeviceError(f"{self._describe()} could not be opened. {LIST_DEVICES_HINT}")
        cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
        cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
        cap.set(cv2.CAP_PROP_FPS, self.fps)
        self._cap = cap
        if self.clock_origin_s is None:
            self.clock_origin_s = time.perf_counter()
        self.clock_origin_unix_s = unix_time_of(self.clock_origin_s)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"camera-{self.index}", daemon=True)
        self._thread.start()
        with self._cond:  # the first read runs in the thread, so a stuck driver cannot hang us
            got = self._cond.wait_for(lambda: self.frames_captured > 0 or self._error is not None,
                                      CAMERA_FIRST_FRAME_TIMEOUT_S)
        if not got or self._error is not None:
            self.close()
            raise DeviceError(f"{self._describe()} opened but delivered no frame within "
                              f"{CAMERA_FIRST_FRAME_TIMEOUT_S:.0f} s. {LIST_DEVICES_HINT}")
        return self

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            ok, image = self._cap.read()
            now = time.perf_counter()
            with self._cond:
                if not ok:
                    failures += 1
                    if failures >= CAMERA_MAX_READ_FAILURES:
                        self._error = DeviceError(f"{self._describe()} stopped delivering frames "
                                                  f"(unplugged?). {LIST_DEVICES_HINT}")
                        self._cond.notify_all()
                        return
                    continue
                failures = 0
                if len(self._buffer) == self._buffer.maxlen:
                    self.dropped_frames += 1
                self._buffer.append(VideoFrame(image, now - self.clock_origin_s, self.frames_captured))
                self.frames_captured += 1
                self._cond.notify_all()

    def read(self, timeout_s: float | None = None) -> VideoFrame | None:
        """The oldest buffered frame (the newest one with the default buffer of 1), or ``None``
        if none arrived within ``timeout_s``; :class:`DeviceError` if the camera was lost."""
        with self._cond:
            self._cond.wait_for(lambda: self._buffer or self._error is not None or self._stop.is_set(), timeout_s)
            if self._buffer:
                return self._buffer.popleft()
            if self._error is not None:
                raise self._error
            return None

    def close(self) -> None:
        """Stop the capture thread and release the camera (idempotent)."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=CAMERA_FIRST_FRAME_TIMEOUT_S)
            if self._thread.is_alive():  # stuck inside the driver: releasing under it could crash
                return
            self._thread = None
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class FileSource(_Source):
    """Replays a wav/mp3/mp4 as the live sources would deliver it: 16 kHz mono int16 audio
    chunks of ``block_ms`` and video frames, in the order they would become available
    (an audio chunk at its end time, a frame at its time), as fast as possible or paced in
    real time (``realtime=True``). Decoding streams through :class:`mmer.media.MediaReader`
    (down-mix, then the soxr resampler training uses), block by block and frame by frame, so
    memory stays bounded.

    A file without an audio stream, or one that is cut or corrupt, raises
    :class:`MediaFileError` (= :class:`mmer.media.MediaError`) naming it: at ``open()`` when
    the container shows it, else from ``read()`` where the decoding stops.
    """

    def __init__(self, path: str | Path, realtime: bool = False, block_ms: int = DEFAULT_BLOCK_MS,
                 include_video: bool = True):
        self.path, self.realtime, self.block_ms = Path(path), realtime, block_ms
        self.paced = realtime
        self.block_samples = SAMPLE_RATE_HZ * block_ms // 1000
        self.include_video = include_video
        self.has_audio = self.has_video = False
        self.duration_s = 0.0
        self.finished = False
        self._events: Iterator[AudioChunk | VideoFrame] | None = None
        self._reader: MediaReader | None = None

    def open(self) -> FileSource:
        """Check the file and start decoding; :class:`MediaFileError` naming the file if unreadable."""
        self.close()  # re-opening replays from the start
        reader = MediaReader(self.path, audio=True, video=self.include_video, rate_hz=SAMPLE_RATE_HZ,
                             block_samples=self.block_samples, pixel_format="bgr24", sample_format="int16").open()
        self._reader = reader
        self.has_audio, self.has_video = reader.has_audio, reader.has_video
        self.duration_s = reader.info.duration_s or 0.0
        self._events = self._frames(reader)
        self._pending = None
        self._t0_wall_s: float | None = None
        self.finished = False
        return self

    @staticmethod
    def _frames(reader: MediaReader) -> Iterator[AudioChunk | VideoFrame]:
        """The reader's events as pipeline frames (int16 audio, BGR images)."""
        for item in reader.events():
            if isinstance(item, VideoImage):
                yield VideoFrame(item.image, item.time_s, item.index)
            else:
                yield AudioChunk(item.samples, item.start_s, item.rate_hz)

    def read(self, timeout_s: float | None = None) -> AudioChunk | VideoFrame | None:
        """The next event in availability order; ``None`` at the end (``finished`` becomes True)
        or, when pacing in real time, if the next event is not due within ``timeout_s``."""
        if self._events is None:
            raise SourceError("FileSource.read() before open()")
        if self._pending is None:
            self._pending = next(self._events, None)
            if self._pending is None:
                self.finished = True
                return None
        event = self._pending
        if self.realtime:
            due_s = event.end_s if isinstance(event, AudioChunk) else event.time_s
            if self._t0_wall_s is None:
                self._t0_wall_s = time.perf_counter()
            wait_s = self._t0_wall_s + due_s - time.perf_counter()
            if timeout_s is not None and wait_s > timeout_s:
                time.sleep(max(timeout_s, 0.0))
                return None
            if wait_s > 0:
                time.sleep(wait_s)
        self._pending = None
        return event

    def events(self) -> Iterator[AudioChunk | VideoFrame]:
        """Iterate over all events (opens the file if needed, closes it at the end)."""
        if self._events is None:
            self.open()
        try:
            while (event := self.read()) is not None:
                yield event
        finally:
            self.close()

    __iter__ = events

    def close(self) -> None:
        """Stop decoding and release the file (idempotent)."""
        if self._events is not None:
            self._events.close()
        if self._reader is not None:
            self._reader.close()
        self._reader = None
        self._events = None



def list_devices() -> str:
    """A readable list of audio input devices and cameras; never raises on a machine with none."""
    lines = ["Audio input devices (sounddevice / PortAudio):"]
    try:
        sd = _sounddevice()
        devices = sd.query_devices()
        default_in = sd.default.device[0]
        inputs = [(i, d) for i, d in enumerate(devices) if d["max_input_channels"] > 0]
        lines += [f"  [{i}] {d['name']} ({d['max_input_channels']} ch, {d['default_samplerate']:.0f} Hz)"
                  + (" (default)" if i == default_in else "") for i, d in inputs]
        if not inputs:
            lines.append("  no audio input devices")
    except Exception as e:  # PortAudio missing or failing: report, never crash a listing
        lines.append(f"  unavailable: {e}")
    lines.append(f"Cameras (OpenCV, indices 0-{MAX_CAMERA_PROBE - 1} probed):")
    try:
        cv2 = require("cv2")
        found = []
        with _quiet_opencv(cv2):
            for index in range(MAX_CAMERA_PROBE):
                cap = cv2.VideoCapture(index)
                if cap.isOpened():
                    found.append(f"  [{index}] {int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))}x"
                                 f"{int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))}")
                cap.release()
        lines += found or ["  no cameras"]
    except Exception as e:
        lines.append(f"  unavailable: {e}")
    return "\n".join(lines)
