"""Media in: the one place mmer probes, decodes and streams audio and video files.

Training (:mod:`mmer.training.media`, :func:`mmer.audio.load_waveform`), the file replay
(:class:`mmer.realtime.sources.FileSource`) and the microphone all go through here, so every
path turns a recording into the same 16 kHz mono numbers: channels are averaged
(:func:`downmix`), then resampled by soxr, one-shot (:func:`resample`) or block by block
(:class:`StreamResampler`), which give identical samples for the same input. Files are read
with PyAV (FFmpeg's libraries in-process, no subprocess), which reads every container the
corpora and cameras produce (wav, flac, mp3, mp4/AAC, avi, mkv).

A file that cannot be read completely is an error, never half a result: a truncated or
corrupt file raises :class:`MediaError` naming it, where it stops and how to fix it, and so
does a recording without the sound track mmer needs (unless only its video was asked for).
"""

from __future__ import annotations

import functools
import heapq
import logging
import math
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from mmer.errors import UsageError
from mmer.extras import MissingExtra

log = logging.getLogger(__name__)

SAMPLE_RATE_HZ = 16_000          # Hz; every mmer audio model and the live pipeline take 16 kHz mono
INT16_FULL_SCALE = 32768.0       # int16 full scale: float = int16 / 32768, in [-1, 1)
RESAMPLE_QUALITY = "HQ"          # soxr quality; one setting for training, replay and microphone
DEFAULT_BLOCK_MS = 30            # ms per audio block of the streaming reader (one webrtcvad frame)
AUDIO_BATCH_S = 0.1              # s of decoded frames down-mixed and resampled at once (less per-frame overhead)
MS_PER_S = 1000
TRUNCATION_SLACK_S = 0.5         # s; decoded audio may end this much before the declared end (codec padding)
TRUNCATION_SLACK_FRACTION = 0.02  # ... or this fraction of the declared duration, whichever is larger
END_PROBE_S = 1.0                # s before the declared end where probe() looks for data
TRUNCATION_SEARCH_S = 0.1        # s; precision of the "truncated at" time found by seeking
# Containers whose declared duration comes from an index or header, not from a bitrate estimate
# (an mp3 or ADTS stream's estimate can be off by seconds): only these are checked for truncation.
INDEXED_FORMATS = frozenset({"mov", "mp4", "m4a", "3gp", "3g2", "mj2", "matroska", "webm", "avi",
                             "wav", "w64", "flac", "aiff", "caf"})
FIX_CORRUPT = "fix: re-copy it from the original, or re-encode it (ffmpeg -i IN OUT)"
FIX_NO_AUDIO = "fix: give the recording with its sound track (ffprobe FILE lists its streams)"
INSTALL_AV = "pip install 'mmer[live]' (or 'mmer[train]')"
_INT_FULL_SCALE = {"s16": INT16_FULL_SCALE, "s32": 2.0**31, "s64": 2.0**63}  # PyAV integer sample formats
_U8_OFFSET = 128.0               # 8-bit PCM is unsigned around 128
_PCM24_BYTES = 3                 # 24-bit PCM sample width, bytes (stdlib-wave fallback)
PYAV_THREADED_REFORMAT = 17      # the first PyAV major version whose reformat() takes ``threads``


class MediaError(UsageError):
    """A media file is missing, unreadable, truncated, or lacks the stream asked for.

    The message names the file, what is wrong and the fix; ``path`` holds the file when known.
    """

    path: Path | None = None


class MediaNotFoundError(MediaError, FileNotFoundError):
    """The media file does not exist (a :class:`FileNotFoundError` too)."""


def _error(path: str | Path, problem: str, fix: str, cls: type[MediaError] = MediaError) -> MediaError:
    err = cls(f"{path}: {problem}. {fix}")
    err.path = Path(path)
    return err


def _truncated(path: Path, at_s: float, declared_s: float, detail: str = "") -> MediaError:
    more = f": {detail}" if detail else ""
    return _error(path, f"truncated or corrupt at {at_s:.1f} s of {declared_s:.1f} s{more}", FIX_CORRUPT)


def _av() -> Any:
    try:
        import av
    except ImportError as e:
        raise MissingExtra(f"decoding media files needs PyAV (module 'av'), which is not installed ({e}). "
                           f"Install it with: {INSTALL_AV}") from None
    return av


def _soxr() -> Any:
    try:
        import soxr
    except ImportError as e:
        raise MissingExtra(f"resampling audio needs soxr, which is not installed ({e}). "
                           "Install it with: pip install 'soxr>=0.3'") from None
    return soxr


# -- sample conversions -----------------------------------------------------------------------
def to_float32(samples: np.ndarray) -> np.ndarray:
    """int16 samples (any shape) -> float32 in [-1, 1); float input is only cast."""
    samples = np.asarray(samples)
    if samples.dtype == np.int16:
        return samples.astype(np.float32) / INT16_FULL_SCALE
    return samples.astype(np.float32, copy=False)


def to_int16(samples: np.ndarray) -> np.ndarray:
    """float samples in [-1, 1] (any shape) -> int16, rounded and clipped; int16 input is returned as is."""
    samples = np.asarray(samples)
    if samples.dtype == np.int16:
        return samples
    scaled = np.round(samples * INT16_FULL_SCALE)
    return np.clip(scaled, np.iinfo(np.int16).min, np.iinfo(np.int16).max).astype(np.int16)


def downmix(samples: np.ndarray, channel_axis: int | None = None) -> np.ndarray:
    """Mono (n,) from (n,), (n, channels) or (channels, n) samples: the mean of the channels.

    ``channel_axis`` None takes the shorter axis as the channels ((n, channels) on a tie, the
    layout PortAudio delivers). Float input gives float32; integer input keeps its dtype (rounded).
    """
    samples = np.asarray(samples)
    if samples.ndim == 1:
        return samples
    if samples.ndim != 2:
        raise UsageError(f"downmix: expected (n,), (n, channels) or (channels, n) samples, got shape {samples.shape}")
    if channel_axis is None:
        channel_axis = 1 if samples.shape[1] <= samples.shape[0] else 0
    if samples.shape[channel_axis] == 1:
        return samples.reshape(-1)
    mixed = samples.astype(np.float32).mean(axis=channel_axis)
    if np.issubdtype(samples.dtype, np.integer):
        return np.round(mixed).astype(samples.dtype)
    return mixed


# -- resampling -------------------------------------------------------------------------------
def resample(samples: np.ndarray, from_hz: int, to_hz: int) -> np.ndarray:
    """Resample (n,) or (n, channels) float samples from ``from_hz`` to ``to_hz`` (soxr, one shot).

    Returns float32 with round(n * to_hz / from_hz) samples; the same numbers as a
    :class:`StreamResampler` fed the signal in any block sizes and flushed.
    """
    x = to_float32(samples)
    if int(from_hz) == int(to_hz) or x.shape[0] == 0:
        return np.array(x, dtype=np.float32, copy=True)
    return _soxr().resample(np.ascontiguousarray(x), int(from_hz), int(to_hz), quality=RESAMPLE_QUALITY)


class StreamResampler:
    """Resample a stream block by block (soxr.ResampleStream), e.g. a 44.1 kHz microphone to 16 kHz.

    ``push(x)`` takes (n,) (or (n, channels)) float32 samples and returns the resampled samples
    available so far; ``flush()`` returns the rest at the end of the stream; ``reset()`` starts
    a new stream. Concatenated, the outputs equal :func:`resample` of the whole signal. Equal
    rates pass the samples through unchanged.
    """

    def __init__(self, from_hz: int, to_hz: int = SAMPLE_RATE_HZ, channels: int = 1):
        self.from_hz, self.to_hz, self.channels = int(from_hz), int(to_hz), int(channels)
        self._stream = None
        self.reset()

    def reset(self) -> None:
        """Forget the signal so far (the next push starts a new stream)."""
        if self.from_hz != self.to_hz:
            self._stream = _soxr().ResampleStream(self.from_hz, self.to_hz, self.channels, dtype="float32",
                                                  quality=RESAMPLE_QUALITY)

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Resample the next block: float32 (m,) (or (m, channels)), m about n * to_hz / from_hz."""
        x = to_float32(samples)
        if self._stream is None:
            return np.array(x, dtype=np.float32, copy=True)
        return self._stream.resample_chunk(np.ascontiguousarray(x), last=False)

    def flush(self) -> np.ndarray:
        """The samples still inside the filter, at the end of the stream; then ``reset()``."""
        empty = np.zeros((0,) if self.channels == 1 else (0, self.channels), np.float32)
        if self._stream is None:
            return empty
        tail = self._stream.resample_chunk(empty, last=True)
        self.reset()
        return tail


# -- probing ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class AudioStreamInfo:
    """One audio stream: its rate, channels, codec and where it lies in the file (s)."""

    rate_hz: int
    channels: int
    codec: str
    start_s: float
    duration_s: float | None  # None: the container does not declare it


@dataclass(frozen=True)
class VideoStreamInfo:
    """The (first) video stream: frame rate, size in pixels, codec, place in the file (s)."""

    fps: float
    width_px: int
    height_px: int
    codec: str
    start_s: float
    duration_s: float | None


@dataclass(frozen=True)
class MediaInfo:
    """What :func:`probe` finds in a file; ``video`` is None when there is no video stream."""

    path: Path
    container: str
    duration_s: float | None
    audio: tuple[AudioStreamInfo, ...]
    video: VideoStreamInfo | None

    @property
    def has_audio(self) -> bool:
        return bool(self.audio)


def _open_container(path: str | Path) -> Any:
    """An opened PyAV input container; :class:`MediaError` naming ``path`` if it cannot be."""
    av = _av()
    path = Path(path)
    if not path.exists():
        raise _error(path, "file not found", "fix: check the path", MediaNotFoundError)
    if not path.is_file():
        raise _error(path, "not a file", "fix: give a wav, mp3, mp4... file")
    if path.stat().st_size == 0:
        raise _error(path, "empty file (0 bytes)", "fix: re-copy it; the copy or the recording was interrupted")
    try:
        return av.open(str(path), metadata_errors="ignore")
    except av.error.FFmpegError as e:
        reason = getattr(e, "strerror", None) or str(e)
        raise _error(path, f"not a media file FFmpeg can read, or truncated or corrupt ({reason})",
                     FIX_CORRUPT) from None


def _seconds(value: int | None, time_base: Fraction | None) -> float | None:
    if value is None or time_base is None:
        return None
    return float(value * time_base)


def _format_names(container: Any) -> set[str]:
    return set(container.format.name.split(","))


def _has_data_at(container: Any, stream: Any, t_s: float) -> bool | None:
    """Whether a seek to ``t_s`` (stream time) finds a packet; None if the seek itself fails."""
    av = _av()
    try:
        container.seek(int(t_s / stream.time_base), stream=stream, backward=True)
        for packet in container.demux(stream):
            return packet.size > 0 and packet.pts is not None  # the flush packet at EOF has neither
    except av.error.FFmpegError:
        return None
    return False


def _check_complete(container: Any, stream: Any, path: Path, start_s: float, duration_s: float | None) -> None:
    """Raise if the data of an indexed file ends well before its declared end (a cut copy).

    One seek near the end (a few ms); when it finds nothing, a bisection of seeks finds
    where the data stops, for the message.
    """
    if duration_s is None or duration_s < 2 * END_PROBE_S or not _format_names(container) & INDEXED_FORMATS:
        return
    end_s = start_s + duration_s
    if _has_data_at(container, stream, end_s - END_PROBE_S) is not False:
        return
    lo_s, hi_s = start_s, end_s - END_PROBE_S
    if _has_data_at(container, stream, lo_s) is False:
        raise _truncated(path, 0.0, duration_s, "no data where the index points")
    while hi_s - lo_s > TRUNCATION_SEARCH_S:
        mid_s = (lo_s + hi_s) / 2
        lo_s, hi_s = (mid_s, hi_s) if _has_data_at(container, stream, mid_s) else (lo_s, mid_s)
    raise _truncated(path, lo_s - start_s, duration_s, "the file ends before the duration its index declares")


def _check_wav_length(path: Path) -> None:
    """Raise if a RIFF wav's data chunk declares more bytes than the file holds (a cut copy).

    FFmpeg sizes such a wav by the file, so the cut would go unnoticed; the header knows.
    Streamed wavs that never wrote their size (0 or 0xFFFFFFFF) are not checked.
    """
    unknown_sizes = (0, 0xFFFFFFFF)
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return
        byte_rate = 0
        while len(chunk := f.read(8)) == 8:
            cid, size = chunk[:4], int.from_bytes(chunk[4:], "little")
            if cid == b"fmt ":
                fmt = f.read(size + size % 2)
                byte_rate = int.from_bytes(fmt[8:12], "little") if len(fmt) >= 12 else 0
                continue
            if cid == b"data":
                held = path.stat().st_size - f.tell()
                if size in unknown_sizes or byte_rate <= 0 or held >= size:
                    return
                declared_s, held_s = size / byte_rate, held / byte_rate
                if declared_s - held_s > max(TRUNCATION_SLACK_S, TRUNCATION_SLACK_FRACTION * declared_s):
                    raise _truncated(path, held_s, declared_s, "the file holds less data than its header declares")
                return
            f.seek(size + size % 2, 1)


def probe(path: str | Path) -> MediaInfo:
    """Streams and duration of ``path``.

    Raises :class:`MediaError` naming the file when it is missing, empty, not media, or an
    indexed container (mp4, mkv, avi, wav...) whose data ends well before its declared end.
    A file without audio is not an error here (see :func:`decode_audio`).
    """
    path = Path(path)
    container = _open_container(path)
    try:
        audio = []
        for s in container.streams.audio:
            cc = s.codec_context
            audio.append(AudioStreamInfo(int(cc.sample_rate or s.rate or 0), int(cc.channels or 0), cc.name,
                                         _seconds(s.start_time, s.time_base) or 0.0,
                                         _seconds(s.duration, s.time_base)))
        video = None
        if container.streams.video:
            s = container.streams.video[0]
            rate = s.average_rate or s.guessed_rate or s.base_rate
            video = VideoStreamInfo(float(rate) if rate else 0.0, int(s.codec_context.width),
                                    int(s.codec_context.height), s.codec_context.name,
                                    _seconds(s.start_time, s.time_base) or 0.0, _seconds(s.duration, s.time_base))
        declared = container.duration / 1_000_000 if container.duration is not None else None  # AV_TIME_BASE µs
        if declared is None:
            known = [x.duration_s for x in (*audio, video) if x is not None and x.duration_s is not None]
            declared = max(known) if known else None
        if not audio and video is None:
            raise _error(path, "holds no audio or video stream", FIX_NO_AUDIO)
        checked = container.streams.audio[0] if audio else container.streams.video[0]
        first = audio[0] if audio else video
        _check_complete(container, checked, path, first.start_s,
                        first.duration_s if first.duration_s is not None else declared)
        if "wav" in _format_names(container):
            _check_wav_length(path)
        return MediaInfo(path, container.format.name, declared, tuple(audio), video)
    finally:
        container.close()


# -- streaming --------------------------------------------------------------------------------
@dataclass(frozen=True)
class AudioBlock:
    """Decoded audio: ``samples`` (n,) mono at ``rate_hz`` (float32 in [-1, 1), or int16), first at ``start_s``."""

    samples: np.ndarray
    start_s: float
    rate_hz: int = SAMPLE_RATE_HZ

    @property
    def end_s(self) -> float:
        return self.start_s + len(self.samples) / self.rate_hz

    @property
    def available_s(self) -> float:
        """When a live source could hand it on: once its last sample is captured."""
        return self.end_s


@dataclass(frozen=True)
class VideoImage:
    """A decoded frame: ``image`` (H, W, 3) uint8 in the reader's pixel format, shown at ``time_s``."""

    image: np.ndarray
    time_s: float
    index: int

    @property
    def available_s(self) -> float:
        return self.time_s


@functools.cache
def _reformat_options() -> dict:
    """PyAV >= 17 converts pixels in a thread pool by default; one thread is faster for a
    same-size colour conversion (measured 0.24 vs 0.28 ms per 640x480 frame) and leaves the
    cores to the frame-threaded decoder."""
    return {"threads": 1} if int(_av().__version__.split(".")[0]) >= PYAV_THREADED_REFORMAT else {}


def _frame_samples(frame: Any) -> np.ndarray:
    """(n, channels) float32 in [-1, 1) from a PyAV audio frame of any sample format."""
    x = frame.to_ndarray()
    channels = len(frame.layout.channels)
    x = x.T if frame.format.is_planar else x.reshape(-1, channels)
    kind = frame.format.name.rstrip("p")
    if kind in ("flt", "dbl"):
        return x.astype(np.float32, copy=False)
    if kind == "u8":
        return (x.astype(np.float32) - _U8_OFFSET) / _U8_OFFSET
    return (x.astype(np.float64) / _INT_FULL_SCALE[kind]).astype(np.float32)


SAMPLE_FORMATS = {"float32": to_float32, "int16": to_int16}  # audio sample formats a MediaReader hands on


class MediaReader:
    """Stream a file's audio blocks and video frames in presentation order, with timestamps.

    Audio leaves as :class:`AudioBlock`\\ s of ``block_samples`` (the last may be shorter),
    down-mixed and resampled to ``rate_hz``, as float32 or ``sample_format="int16"``; video as :class:`VideoImage`\\ s in
    ``pixel_format`` ("bgr24" as OpenCV delivers, "rgb24"), resized to ``frame_size``
    (width, height) px when given. Times are seconds from the start of the file; ``start_s``
    and ``duration_s`` read a span of it. Each stream has its own decoder, so memory stays at
    a block and a frame whatever the interleaving. ``audio=True`` requires an audio stream;
    ``video=True`` takes the video if there is one.

        with MediaReader("talk.mp4").open() as reader:
            for item in reader.events():      # AudioBlock / VideoImage, by availability time
                ...

    Errors (:class:`MediaError`, naming the file): at ``open()`` for a missing, unreadable or
    cut file, or no audio stream; while reading, when the decoder fails or the data ends
    well before the declared duration ("truncated or corrupt at 12.3 s of 30.0 s").
    """

    def __init__(self, path: str | Path, *, audio: bool = True, video: bool = True, rate_hz: int = SAMPLE_RATE_HZ,
                 block_samples: int = SAMPLE_RATE_HZ * DEFAULT_BLOCK_MS // MS_PER_S, pixel_format: str = "bgr24",
                 frame_size: tuple[int, int] | None = None, start_s: float = 0.0, duration_s: float | None = None,
                 sample_format: str = "float32"):
        if not (audio or video):
            raise UsageError("MediaReader: ask for audio, video or both")
        if sample_format not in SAMPLE_FORMATS:
            raise UsageError(f"MediaReader: sample_format must be one of {sorted(SAMPLE_FORMATS)}, got {sample_format!r}")
        if start_s < 0 or (duration_s is not None and duration_s <= 0):
            raise UsageError(f"MediaReader: bad span start_s={start_s}, duration_s={duration_s}")
        self.path = Path(path)
        self.want_audio, self.want_video = audio, video
        self.rate_hz, self.block_samples = int(rate_hz), max(1, int(block_samples))
        self.pixel_format, self.frame_size = pixel_format, frame_size
        self.start_s, self.duration_s = float(start_s), duration_s
        self.sample_format = sample_format
        self.info: MediaInfo | None = None
        self.has_audio = self.has_video = False
        self._origin_s = 0.0
        self._iterators: list[Iterator] = []

    def open(self) -> MediaReader:
        """Probe and check the file (see :func:`probe`); raises :class:`MediaError`."""
        self.close()
        info = probe(self.path)
        if self.want_audio and not info.audio:
            raise _error(self.path, "no audio stream; mmer needs the speech", FIX_NO_AUDIO)
        self.info = info
        self.has_audio = self.want_audio
        self.has_video = self.want_video and info.video is not None
        if not (self.has_audio or self.has_video):
            raise _error(self.path, "no video stream", "fix: give a recording with pictures, or ask for audio")
        # One clock for both streams: the earliest stream start is 0 (a negative start is codec
        # priming, which the decoder drops).
        starts = ([max(0.0, info.audio[0].start_s)] if self.has_audio else []) + \
                 ([max(0.0, info.video.start_s)] if self.has_video else [])
        self._origin_s = min(starts)
        log.debug("%s: %s, %.2f s, audio %s, video %s", self.path, info.container, info.duration_s or 0.0,
                  info.audio[:1], info.video)
        return self

    def __enter__(self) -> MediaReader:
        return self if self.info is not None else self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop decoding and close the file (idempotent)."""
        for it in reversed(self._iterators):
            it.close()
        self._iterators = []

    def _opened(self) -> MediaInfo:
        if self.info is None:
            raise UsageError("MediaReader: call open() first")
        return self.info

    def _seek_start(self, av: Any, container: Any, stream: Any) -> None:
        """Seek ``container`` to ``start_s`` on ``stream`` (the keyframe at or before it)."""
        if self.start_s <= 0:
            return
        try:
            container.seek(int((self.start_s + self._origin_s) / stream.time_base), stream=stream, backward=True)
        except av.error.FFmpegError as e:
            raise _error(self.path, f"cannot seek to {self.start_s:.2f} s ({e})", FIX_CORRUPT) from None

    def _end_s(self) -> float | None:
        return None if self.duration_s is None else self.start_s + self.duration_s

    def _decode(self, container: Any, stream: Any, last_s: list[float], declared_s: float) -> Iterator[Any]:
        """Decoded frames of ``stream``; a decoder error becomes a MediaError (``last_s[0]``: progress)."""
        av = _av()
        try:
            for packet in container.demux(stream):
                yield from packet.decode()
        except av.error.FFmpegError as e:
            raise _truncated(self.path, last_s[0], declared_s, getattr(e, "strerror", None) or str(e)) from None

    def _check_full_length(self, stream_info: AudioStreamInfo | VideoStreamInfo, reached_s: float) -> None:
        """At the end of a stream read to its end: raise if it stopped well short of its declared end."""
        info = self._opened()
        declared = stream_info.duration_s if stream_info.duration_s is not None else info.duration_s
        if declared is None or not set(info.container.split(",")) & INDEXED_FORMATS:
            return
        declared_end_s = max(0.0, stream_info.start_s) - self._origin_s + declared
        end_s = self._end_s()
        if end_s is not None and end_s <= reached_s:
            return
        expected_s = declared_end_s if end_s is None else min(end_s, declared_end_s)
        if expected_s - reached_s > max(TRUNCATION_SLACK_S, TRUNCATION_SLACK_FRACTION * declared):
            raise _truncated(self.path, reached_s, declared_end_s, "the decoded data ends early")

    def audio_pieces(self) -> Iterator[AudioBlock]:
        """Audio as the resampler hands it on (blocks of varying length, contiguous)."""
        convert = SAMPLE_FORMATS[self.sample_format]
        for piece in self._resampled():
            yield AudioBlock(convert(piece.samples), piece.start_s, piece.rate_hz)

    def _resampled(self) -> Iterator[AudioBlock]:
        """float32 audio pieces, down-mixed and resampled, in the order decoded."""
        info = self._opened()
        if not self.has_audio:
            return
        av = _av()
        container = _open_container(self.path)
        try:
            stream = container.streams.audio[0]
            a = info.audio[0]
            in_rate = a.rate_hz
            offset_s = max(0.0, a.start_s) - self._origin_s
            self._seek_start(av, container, stream)
            end_s = self._end_s()
            need_in = None if self.duration_s is None else math.ceil(self.duration_s * in_rate)
            resampler = StreamResampler(in_rate, self.rate_hz)
            consumed, emitted = 0, 0
            base_s: float | None = None
            progress = [offset_s]
            declared = a.duration_s if a.duration_s is not None else info.duration_s or 0.0
            reached_end = True
            batch: list[np.ndarray] = []  # decoded frames (n, channels) waiting for one down-mix + resample
            batch_samples = 0
            for frame in self._decode(container, stream, progress, declared):
                x = _frame_samples(frame)
                if base_s is None:
                    start = float(frame.time) - self._origin_s if frame.time is not None else offset_s
                    if self.start_s > start:  # the seek lands on the packet before the span
                        skip = min(len(x), round((self.start_s - start) * in_rate))
                        x = x[skip:]
                        start += skip / in_rate
                    if len(x) == 0:
                        continue
                    base_s = start
                if need_in is not None:
                    x = x[:need_in - consumed]
                consumed += len(x)
                progress[0] = base_s + consumed / in_rate
                batch.append(x)
                batch_samples += len(x)
                done = need_in is not None and consumed >= need_in
                if batch_samples >= AUDIO_BATCH_S * in_rate or done:
                    y = resampler.push(downmix(np.concatenate(batch), channel_axis=1))
                    batch, batch_samples = [], 0
                    if len(y):
                        yield AudioBlock(y, base_s + emitted / self.rate_hz, self.rate_hz)
                        emitted += len(y)
                if done:
                    reached_end = False
                    break
            if batch:
                y = resampler.push(downmix(np.concatenate(batch), channel_axis=1))
                if len(y):
                    yield AudioBlock(y, base_s + emitted / self.rate_hz, self.rate_hz)
                    emitted += len(y)
            if base_s is None:
                base_s = max(self.start_s, offset_s)
            if reached_end:
                self._check_full_length(a, base_s + consumed / in_rate)
            tail = resampler.flush()
            limit = None if end_s is None else round(self.duration_s * self.rate_hz)
            if limit is not None:
                tail = tail[:max(0, limit - emitted)]
            if len(tail):
                yield AudioBlock(tail, base_s + emitted / self.rate_hz, self.rate_hz)
        finally:
            container.close()

    def audio_blocks(self) -> Iterator[AudioBlock]:
        """Audio in blocks of exactly ``block_samples`` (the last may be shorter), contiguous."""
        n = self.block_samples
        pending = np.zeros(0, np.int16 if self.sample_format == "int16" else np.float32)  # < n samples carried on
        start_s = 0.0
        pieces = self.audio_pieces()
        try:
            for piece in pieces:
                if not len(pending):
                    start_s = piece.start_s
                buf = np.concatenate([pending, piece.samples]) if len(pending) else piece.samples
                full = len(buf) // n * n
                for i in range(0, full, n):
                    yield AudioBlock(buf[i:i + n], start_s + i / self.rate_hz, self.rate_hz)
                start_s += full / self.rate_hz
                pending = buf[full:]
            if len(pending):
                yield AudioBlock(pending, start_s, self.rate_hz)
        finally:
            pieces.close()

    def video_frames(self) -> Iterator[VideoImage]:
        """Video frames in presentation order, converted to ``pixel_format`` (and ``frame_size``)."""
        info = self._opened()
        if not self.has_video:
            return
        av = _av()
        from av.video.reformatter import VideoReformatter

        v = info.video
        container = _open_container(self.path)
        try:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"  # frame and slice threads: decoding is most of the replay's time
            self._seek_start(av, container, stream)
            fps = v.fps or 30.0
            half_frame_s = 0.5 / fps
            offset_s = max(0.0, v.start_s) - self._origin_s
            end_s = self._end_s()
            width, height = self.frame_size if self.frame_size else (None, None)
            reformatter = VideoReformatter()  # one scaler context for the whole stream
            index = 0
            progress = [max(self.start_s, offset_s)]
            declared = v.duration_s if v.duration_s is not None else info.duration_s or 0.0
            reached_end = True
            for frame in self._decode(container, stream, progress, declared):
                t_s = float(frame.time) - self._origin_s if frame.time is not None else offset_s + index / fps
                if t_s < self.start_s - half_frame_s:
                    continue
                if end_s is not None and t_s >= end_s - half_frame_s:
                    reached_end = False
                    break
                progress[0] = t_s
                image = reformatter.reformat(frame, width, height, format=self.pixel_format,
                                             **_reformat_options()).to_ndarray()
                yield VideoImage(image, t_s, index)
                index += 1
            if reached_end:
                self._check_full_length(v, progress[0] + 1.0 / fps if index else progress[0])
        finally:
            container.close()

    def events(self) -> Iterator[AudioBlock | VideoImage]:
        """Audio blocks and video frames merged in the order a live source would deliver them:
        a block once its last sample is captured, a frame at its time."""
        audio, video = self.audio_blocks(), self.video_frames()
        self._iterators += [audio, video]
        return heapq.merge(audio, video, key=lambda item: item.available_s)


# -- whole files ------------------------------------------------------------------------------
def decode_audio(path: str | Path, rate_hz: int = SAMPLE_RATE_HZ, start_s: float = 0.0,
                 duration_s: float | None = None) -> np.ndarray:
    """Decode ``path``'s (first) audio stream to mono float32 (n,) in [-1, 1) at ``rate_hz``.

    Channels are averaged, then resampled with soxr: the same numbers the file replay and the
    microphone produce. ``start_s`` / ``duration_s`` read a span (n = round(duration_s * rate_hz)
    when the file is long enough). Raises :class:`MediaError` naming the file: missing
    (:class:`MediaNotFoundError`, a FileNotFoundError too), not media, truncated or corrupt,
    or without an audio stream. Without PyAV installed, only PCM wav files decode.
    """
    try:
        _av()
    except MissingExtra:
        if Path(path).suffix.lower() in (".wav", ".wave"):
            return _decode_wav_stdlib(Path(path), rate_hz, start_s, duration_s)
        raise
    reader = MediaReader(path, audio=True, video=False, rate_hz=rate_hz, start_s=start_s, duration_s=duration_s)
    with reader.open():
        pieces = [p.samples for p in reader.audio_pieces()]
    mono = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
    return mono if duration_s is None else mono[:round(duration_s * rate_hz)]


def _decode_wav_stdlib(path: Path, rate_hz: int, start_s: float, duration_s: float | None) -> np.ndarray:
    """PCM wav through the stdlib when PyAV is not installed (a base install reading its own wavs)."""
    if not path.is_file():
        raise _error(path, "file not found", "fix: check the path", MediaNotFoundError)
    try:
        with wave.open(str(path), "rb") as w:
            channels, width, rate, n = w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()
            w.setpos(min(n, round(start_s * rate)))
            want = n if duration_s is None else math.ceil(duration_s * rate)
            raw = w.readframes(want)
    except (wave.Error, EOFError, OSError) as e:
        raise _error(path, f"not a PCM wav the stdlib reads ({e}), and PyAV is not installed",
                     f"fix: {INSTALL_AV}") from None
    if width == 1:
        x = (np.frombuffer(raw, np.uint8).astype(np.float32) - _U8_OFFSET) / _U8_OFFSET
    elif width == 2:
        x = np.frombuffer(raw, "<i2").astype(np.float32) / INT16_FULL_SCALE
    elif width == _PCM24_BYTES:
        b = np.frombuffer(raw, np.uint8).reshape(-1, _PCM24_BYTES).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        x = np.where(v >= 2**23, v - 2**24, v).astype(np.float32) / 2.0**23
    elif width == 4:
        x = (np.frombuffer(raw, "<i4").astype(np.float64) / 2.0**31).astype(np.float32)
    else:
        raise _error(path, f"unsupported PCM sample width {width} bytes", f"fix: {INSTALL_AV}")
    x = downmix(x[: len(x) // channels * channels].reshape(-1, channels), channel_axis=1)
    y = resample(x, rate, rate_hz)
    return y if duration_s is None else y[:round(duration_s * rate_hz)]
