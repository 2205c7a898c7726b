"""Where audio and video come from: microphone, camera, or a replayed file.

The only module that touches hardware (STYLE.md habit 8): sounddevice and cv2.VideoCapture
are imported here, lazily, inside the functions that need them. Every source has the same
shape: ``open()`` (fails early with a clear :class:`DeviceError` / :class:`MediaFileError`),
``read(timeout_s) -> AudioChunk | VideoFrame | None``, ``close()``, and a context manager.
Audio leaves every source as 16 kHz mono int16 ``AudioChunk``\\ s stamped on the stream clock,
so a replayed file and a live microphone feed the pipeline identically.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import operator
import queue
import shutil
import subprocess
import tempfile
import threading
import time
import wave
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from mmer.extras import MissingExtra, require
from mmer.realtime.frames import SAMPLE_RATE_HZ, AudioChunk, VideoFrame

LIST_DEVICES_HINT = "List the available devices with: mmer-live --list-devices"
DEFAULT_BLOCK_MS = 30  # one webrtcvad frame per block
MIC_QUEUE_S = 2.0  # audio the microphone queue holds before it drops blocks
MIC_STALL_S = 2.0  # no block for this long while the stream claims to run: the device is gone
MIC_START_S = 5.0  # ... before the first block (Bluetooth headsets take seconds to start)
FALLBACK_CAPTURE_RATES_HZ = (48_000, 32_000)  # integer multiples of 16 kHz, decimated in the callback
DECIMATOR_TAPS = 63  # windowed-sinc low-pass before decimation
DECIMATOR_CUTOFF = 0.45  # of the output Nyquist band: keeps speech, rejects aliasing
CAMERA_FIRST_FRAME_TIMEOUT_S = 5.0
CAMERA_MAX_READ_FAILURES = 30  # consecutive failed reads (~1 s at 30 fps) = camera lost
MAX_CAMERA_PROBE = 5  # list_devices tries camera indices 0..4
INT16_FULL_SCALE = 32768.0


class SourceError(RuntimeError):
    """A capture source failed."""


class DeviceError(SourceError):
    """A microphone or camera is missing, cannot be opened, or was lost while running."""


class MediaFileError(SourceError):
    """A media file is missing or cannot be decoded; the message names the file."""


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


class _Decimator:
    """Stateful integer-factor downsampler (FIR low-pass + keep every ``factor``-th sample)."""

    def __init__(self, factor: int, taps: int = DECIMATOR_TAPS):
        n = np.arange(taps) - (taps - 1) / 2
        cutoff = DECIMATOR_CUTOFF / factor  # cycles per input sample
        h = np.sinc(2 * cutoff * n) * np.hamming(taps)
        self._h = (h / h.sum()).astype(np.float32)
        self._history = np.zeros(taps - 1, np.float32)
        self._factor = factor
        self._index = 0  # absolute index of the next input sample

    def process(self, x: np.ndarray) -> np.ndarray:
        """``x`` (n,) int16 at the input rate -> int16 at the input rate / factor."""
        xf = np.concatenate([self._history, x.astype(np.float32)])
        y = np.convolve(xf, self._h, mode="valid")  # y[j] is the filtered input sample index + j
        self._history = xf[len(xf) - len(self._history):]
        first = (-self._index) % self._factor
        self._index += len(x)
        return np.clip(np.round(y[first::self._factor]), -32768, 32767).astype(np.int16)


class _Source:
    """``with source:`` opens and closes it (subclasses define ``open`` and ``close``)."""

    def __enter__(self):
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()


class MicrophoneSource(_Source):
    """Microphone capture via sounddevice: int16 mono blocks of ``block_ms`` into a bounded queue.

    The PortAudio callback never blocks: when the queue (``MIC_QUEUE_S`` of audio) is full the
    block is dropped and counted in ``dropped_blocks``; driver-side overruns are counted in
    ``input_overflows``. ``start_s`` of a chunk is its first sample's time in seconds since
    ``clock_origin_s`` (a ``time.perf_counter()`` value; default: when ``open()`` ran), so
    microphone and camera share one clock when given the same origin.
    """

    def __init__(self, device: int | str | None = None, sample_rate_hz: int = SAMPLE_RATE_HZ,
                 block_ms: int = DEFAULT_BLOCK_MS, clock_origin_s: float | None = None):
        self.device, self.sample_rate_hz, self.block_ms = device, sample_rate_hz, block_ms
        self.block_samples = sample_rate_hz * block_ms // 1000
        self.clock_origin_s = clock_origin_s
        self._queue: queue.Queue[AudioChunk] = queue.Queue(maxsize=max(1, int(MIC_QUEUE_S * 1000 / block_ms)))
        self._stream = None
        self.input_overflows = 0
        self.dropped_blocks = 0
        self.device_name = "default input" if device is None else f"'{device}'"

    def _describe(self) -> str:
        return f"microphone {self.device_name}"

    def open(self) -> MicrophoneSource:
        """Check the device, then start capturing. Raises :class:`DeviceError` if it is missing."""
        sd = _sounddevice()
        try:
            info = sd.query_devices(self.device, kind="input")
        except (ValueError, sd.PortAudioError) as e:
            raise DeviceError(f"{self._describe()} not found ({e}). {LIST_DEVICES_HINT}") from None
        self.device_name = f"'{info['name']}'"
        capture_rate = None
        for rate in (self.sample_rate_hz, *FALLBACK_CAPTURE_RATES_HZ):
            try:
                sd.check_input_settings(device=self.device, channels=1, dtype="int16", samplerate=rate)
            except (ValueError, sd.PortAudioError):
                continue
            if rate % self.sample_rate_hz == 0:
                capture_rate = rate
                break
        if capture_rate is None:
            raise DeviceError(f"{self._describe()} supports none of {(self.sample_rate_hz, *FALLBACK_CAPTURE_RATES_HZ)}"
                              f" Hz mono int16. {LIST_DEVICES_HINT}")
        factor = capture_rate // self.sample_rate_hz
        self._decimator = _Decimator(factor) if factor > 1 else None
        self._samples_out = 0
        self._clock_offset_s: float | None = None
        self._error: BaseException | None = None
        self._finished = False
        self._last_block_wall_s = time.perf_counter()
        if self.clock_origin_s is None:
            self.clock_origin_s = time.perf_counter()
        try:
            self._stream = sd.InputStream(samplerate=capture_rate, blocksize=self.block_samples * factor,
                                          device=self.device, channels=1, dtype="int16",
                                          callback=self._callback, finished_callback=self._on_finished)
            self._stream.start()
        except sd.PortAudioError as e:
            self._stream = None
            raise DeviceError(f"{self._describe()} could not be started ({e}). {LIST_DEVICES_HINT}") from None
        return self

    def _on_finished(self) -> None:
        self._finished = True

    def _callback(self, indata, frames, time_info, status) -> None:  # PortAudio's thread
        try:
            now = time.perf_counter()
            if status.input_overflow:
                self.input_overflows += 1
            samples = indata[:, 0].copy()
            if self._decimator is not None:
                samples = self._decimator.process(samples)
            if self._clock_offset_s is None:  # the first block was captured over its own length
                self._clock_offset_s = now - self.clock_origin_s - len(samples) / self.sample_rate_hz
            chunk = AudioChunk(samples, self._clock_offset_s + self._samples_out / self.sample_rate_hz,
                               self.sample_rate_hz)
            self._samples_out += len(samples)
            self._last_block_wall_s = now
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



class CameraSource(_Source):
    """Camera capture via cv2.VideoCapture in a thread that keeps only the newest frames.

    ``index`` is a camera number, or a string OpenCV opens the same way (a device path such as
    ``/dev/video2``, an ``rtsp://`` stream of an IP camera, a video file).

    The buffer holds ``max_buffered_frames`` (default 1: the face path always wants the latest
    frame); older unread frames are dropped and counted in ``dropped_frames``.
    ``VideoFrame.time_s`` is seconds since ``clock_origin_s`` (``time.perf_counter()``).
    """

    def __init__(self, index: int | str = 0, width: int = 640, height: int = 480, fps: int = 30,
                 max_buffered_frames: int = 1, clock_origin_s: float | None = None):
        self.index, self.width, self.height, self.fps = index, width, height, fps
        self.clock_origin_s = clock_origin_s
        self._buffer: deque[VideoFrame] = deque(maxlen=max_buffered_frames)
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._cap = None
        self._error: DeviceError | None = None
        self.frames_captured = 0
        self.dropped_frames = 0

    def open(self) -> CameraSource:
        """Open the camera and wait for its first frame; :class:`DeviceError` if either fails."""
        cv2 = require("cv2")
        with _quiet_opencv(cv2):
            cap = cv2.VideoCapture(self.index)
        if not cap.isOpened():
            cap.release()
            raise DeviceError(f"camera {self.index} could not be opened. {LIST_DEVICES_HINT}")
        cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
        cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
        cap.set(cv2.CAP_PROP_FPS, self.fps)
        self._cap = cap
        if self.clock_origin_s is None:
            self.clock_origin_s = time.perf_counter()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"camera-{self.index}", daemon=True)
        self._thread.start()
        with self._cond:  # the first read runs in the thread, so a stuck driver cannot hang us
            got = self._cond.wait_for(lambda: self.frames_captured > 0 or self._error is not None,
                                      CAMERA_FIRST_FRAME_TIMEOUT_S)
        if not got or self._error is not None:
            self.close()
            raise DeviceError(f"camera {self.index} opened but delivered no frame within "
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
                        self._error = DeviceError(f"camera {self.index} stopped delivering frames "
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


def _probe(path: Path) -> dict:
    """Streams and duration of a media file: {"audio": bool, "video": bool, "duration_s": float, "wav": params}."""
    if path.suffix.lower() == ".wav":
        with contextlib.suppress(wave.Error, EOFError):
            with wave.open(str(path), "rb") as w:
                if w.getsampwidth() == 2:
                    return {"audio": True, "video": False, "duration_s": w.getnframes() / w.getframerate(),
                            "wav": (w.getnchannels(), w.getframerate())}
    if shutil.which("ffprobe") is None:
        raise MediaFileError(f"cannot read media file {path}: not a 16-bit PCM wav, and ffprobe/ffmpeg "
                             "(needed for other formats) is not installed")
    proc = subprocess.run(["ffprobe", "-v", "error", "-print_format", "json", "-show_format", "-show_streams",
                           str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise MediaFileError(f"cannot read media file {path}: {proc.stderr.strip()[-300:] or 'ffprobe failed'}")
    info = json.loads(proc.stdout or "{}")
    kinds = {s.get("codec_type") for s in info.get("streams", [])}
    if not kinds & {"audio", "video"}:
        raise MediaFileError(f"cannot read media file {path}: no audio or video stream")
    return {"audio": "audio" in kinds, "video": "video" in kinds,
            "duration_s": float(info.get("format", {}).get("duration", 0.0)), "wav": None}


class FileSource(_Source):
    """Replays a wav/mp3/mp4 as the live sources would deliver it: 16 kHz mono int16 audio
    chunks of ``block_ms`` and video frames, in the order they would become available
    (an audio chunk at its end time, a frame at its time), as fast as possible or paced in
    real time (``realtime=True``). Memory stays bounded: audio streams out of ffmpeg (or the
    wav file) block by block, frames out of cv2.VideoCapture one by one.
    """

    def __init__(self, path: str | Path, realtime: bool = False, block_ms: int = DEFAULT_BLOCK_MS,
                 include_video: bool = True):
        self.path, self.realtime, self.block_ms = Path(path), realtime, block_ms
        self.block_samples = SAMPLE_RATE_HZ * block_ms // 1000
        self.include_video = include_video
        self.has_audio = self.has_video = False
        self.duration_s = 0.0
        self.finished = False
        self._events: Iterator[tuple[float, AudioChunk | VideoFrame]] | None = None
        self._closers: list = []

    def open(self) -> FileSource:
        """Check the file and start decoding; :class:`MediaFileError` naming the file if unreadable."""
        self.close()  # re-opening replays from the start
        if not self.path.is_file():
            raise MediaFileError(f"media file not found: {self.path}")
        info = _probe(self.path)
        self.has_audio, self.duration_s = info["audio"], info["duration_s"]
        self.has_video = info["video"] and self.include_video
        audio = self._audio_blocks(info["wav"]) if self.has_audio else iter(())
        video = self._video_frames() if self.has_video else iter(())
        # Both streams are sorted by availability time (a chunk at its end, a frame at its time).
        self._events = heapq.merge(audio, video, key=operator.itemgetter(0))
        self._pending = None
        self._t0_wall_s: float | None = None
        self.finished = False
        return self

    def _audio_blocks(self, wav_params) -> Iterator[tuple[float, AudioChunk]]:
        n = 0
        for samples in self._decoded_audio(wav_params):
            n += len(samples)
            yield n / SAMPLE_RATE_HZ, AudioChunk(samples, (n - len(samples)) / SAMPLE_RATE_HZ)

    def _decoded_audio(self, wav_params) -> Iterator[np.ndarray]:
        """(block_samples,) int16 blocks at 16 kHz mono (the last one may be shorter)."""
        if wav_params == (1, SAMPLE_RATE_HZ):  # the common case needs no decoder at all
            w = wave.open(str(self.path), "rb")
            self._closers.append(w.close)
            while len(data := w.readframes(self.block_samples)):
                yield np.frombuffer(data, dtype="<i2").astype(np.int16)
            return
        if shutil.which("ffmpeg") is None:
            raise MediaFileError(f"cannot decode {self.path}: only 16 kHz mono 16-bit wav plays without ffmpeg, "
                                 "which is not installed (Debian: apt-get install ffmpeg)")
        err = tempfile.TemporaryFile()  # a file, not a pipe: a chatty ffmpeg cannot deadlock on it
        proc = subprocess.Popen(["ffmpeg", "-nostdin", "-v", "error", "-i", str(self.path), "-vn", "-ac", "1",
                                 "-ar", str(SAMPLE_RATE_HZ), "-f", "s16le", "-"],
                                stdout=subprocess.PIPE, stderr=err)

        def stop_ffmpeg() -> None:
            proc.kill()  # before wait: ffmpeg may be blocked writing to the pipe we stop reading
            proc.wait()
            proc.stdout.close()
            err.close()
        self._closers.append(stop_ffmpeg)
        total = 0
        while data := proc.stdout.read(2 * self.block_samples):
            total += len(data)
            yield np.frombuffer(data[: len(data) // 2 * 2], dtype="<i2").astype(np.int16)
        if proc.wait() != 0 and total == 0:
            err.seek(0)
            raise MediaFileError(f"cannot decode audio of {self.path}: {err.read().decode(errors='replace')[-300:]}")

    def _video_frames(self) -> Iterator[tuple[float, VideoFrame]]:
        cv2 = require("cv2")
        cap = cv2.VideoCapture(str(self.path))
        self._closers.append(cap.release)
        if not cap.isOpened():
            raise MediaFileError(f"cannot decode video of {self.path}")
        fps = cap.get(cv2.CAP_PROP_FPS) or 30.0
        index = 0
        while True:
            ok, image = cap.read()
            if not ok:
                return
            # POS_MSEC after a read is the presentation time of that frame; fall back to index / fps.
            pos_ms = cap.get(cv2.CAP_PROP_POS_MSEC)
            t = pos_ms / 1000 if pos_ms > 0 or index == 0 else index / fps
            yield t, VideoFrame(image, t, index)
            index += 1

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
        due_s, event = self._pending
        if self.realtime:
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
        for close in reversed(self._closers):
            with contextlib.suppress(Exception):
                close()
        self._closers = []
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
