"""Clip decoding for the training datasets, through the ffmpeg / ffprobe command-line tools.

ffmpeg reads every container the corpora ship (MELD mp4/AAC, IEMOCAP DivX avi and wav, EmoDB
wav). Whole audio files go through :func:`mmer.audio.load_waveform` (the decoder inference
uses too), spans of long recordings through an ffmpeg seek; either way audio reaches the
encoders as 16 kHz mono float32 (defect 2: the authors decoded MELD at 22.05 kHz for a 16 kHz
model). Frames come out of ffmpeg as rgb24, so they are RGB by construction (defect 4: the
authors fed OpenCV's BGR to an RGB model), sampled uniformly over the whole clip.

Every failure raises :class:`MediaError` with ffmpeg's own message; the datasets turn it into
a logged skip.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from tqdm import tqdm

from mmer.extras import require

log = logging.getLogger(__name__)

FFMPEG_TIMEOUT_S = 300            # s; a minutes-long mis-cut MELD clip still decodes well inside this
STDERR_CHARS = 300                # characters of ffmpeg's message kept in an error
RGB_CHANNELS = 3
MAX_PIXEL = 255.0                 # uint8 frames
PROBE_WORKERS = 2                 # ffprobe processes at once (the developer machines have 2 cores)


class MediaError(RuntimeError):
    """A clip is missing, unreadable, or holds no stream of the kind asked for."""


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise MediaError(f"'{name}' is not on PATH; install FFmpeg (Debian: apt-get install ffmpeg)")
    return path


def _run(args: list[str], path: Path) -> bytes:
    if not Path(path).is_file():
        raise MediaError(f"{path}: file not found")
    try:
        done = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                              timeout=FFMPEG_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise MediaError(f"{path}: {args[0]} took longer than {FFMPEG_TIMEOUT_S} s") from None
    if done.returncode != 0:
        msg = done.stderr.decode("utf-8", "replace").strip().replace("\n", " | ")[-STDERR_CHARS:]
        raise MediaError(f"{Path(path).name}: {Path(args[0]).name} failed ({msg or f'exit {done.returncode}'})")
    return done.stdout


# -- probing ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClipInfo:
    """What ffprobe reports about a media file."""

    duration_s: float
    has_audio: bool
    has_video: bool
    width: int = 0
    height: int = 0


def probe(path: str | Path) -> ClipInfo:
    """Duration and streams of ``path``; raises :class:`MediaError` if ffprobe cannot read it."""
    out = _run([_tool("ffprobe"), "-v", "error", "-show_entries",
                "format=duration:stream=codec_type,width,height", "-of", "json", str(path)], Path(path))
    info = json.loads(out or b"{}")
    streams = info.get("streams", [])
    video = [s for s in streams if s.get("codec_type") == "video"]
    try:
        duration = float(info.get("format", {}).get("duration", "nan"))
    except ValueError:
        duration = float("nan")
    if not streams or not np.isfinite(duration):
        raise MediaError(f"{Path(path).name}: no readable stream or duration")
    return ClipInfo(duration, any(s.get("codec_type") == "audio" for s in streams), bool(video),
                    int(video[0].get("width", 0)) if video else 0, int(video[0].get("height", 0)) if video else 0)


def probe_many(paths: Iterable[Path], cache_file: Path | None = None, workers: int = PROBE_WORKERS,
               progress: bool = True, desc: str = "probing clips") -> dict[Path, ClipInfo | MediaError]:
    """Probe many clips in parallel, with a progress bar; errors are returned, not raised.

    ``cache_file`` (JSON) remembers results keyed by absolute path, size and mtime, so a
    second scan of the same 10,000 MELD clips costs nothing.
    """
    paths = list(paths)
    cached: dict[str, dict] = {}
    if cache_file is not None and Path(cache_file).is_file():
        try:
            cached = json.loads(Path(cache_file).read_text())
        except (OSError, ValueError):
            log.warning("ignoring unreadable probe cache %s", cache_file)

    def key(p: Path) -> str:
        st = p.stat()
        return f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}"

    results: dict[Path, ClipInfo | MediaError] = {}
    todo = []
    for p in paths:
        k = key(p)
        if k in cached:  # keyed by size and mtime: a replaced file is probed again
            entry = cached[k]
            results[p] = MediaError(entry["error"]) if "error" in entry else ClipInfo(**entry)
        else:
            todo.append(p)

    def one(p: Path) -> ClipInfo | MediaError:
        try:
            return probe(p)
        except MediaError as e:
            return e

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for p, res in tqdm(zip(todo, pool.map(one, todo)), total=len(todo), desc=desc,
                           disable=not progress or not todo, leave=False):
            results[p] = res
            cached[key(p)] = asdict(res) if isinstance(res, ClipInfo) else {"error": str(res)}
    if cache_file is not None and todo:
        Path(cache_file).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(f"{cache_file}.tmp{os.getpid()}")
        tmp.write_text(json.dumps(cached))
        os.replace(tmp, cache_file)
    return results


def _seek_args(span_s: tuple[float, float] | None, max_s: float | None) -> list[str]:
    """ffmpeg input options that read [start, end) of a file, at most ``max_s`` seconds."""
    start, length = 0.0, None
    if span_s is not None:
        start, end = float(span_s[0]), float(span_s[1])
        if end <= start:
            raise MediaError(f"empty span {span_s}")
        length = end - start
    if max_s is not None:
        length = max_s if length is None else min(length, max_s)
    args = ["-ss", f"{start:.4f}"] if start > 0 else []
    return args + (["-t", f"{length:.4f}"] if length is not None else [])


# -- audio --------------------------------------------------------------------------------
def decode_audio(path: str | Path, sample_rate_hz: int = 16_000, span_s: tuple[float, float] | None = None,
                 max_audio_s: float | None = None) -> np.ndarray:
    """Decode audio to mono float32 (T,) in [-1, 1] at ``sample_rate_hz``, T <= cap.

    A whole file goes through :func:`mmer.audio.load_waveform`, the decoder the rest of mmer
    uses, so training and inference read files identically; a span of a longer recording is
    cut by ffmpeg (a seek), then capped the same way.

    Args:
        path: any file ffmpeg reads (wav, mp4, avi).
        span_s: (start, end) seconds to read; None reads the whole file.
        max_audio_s: keep at most this many seconds from the start of the span (the cap).

    Raises:
        MediaError: missing or undecodable file, or no audio stream.
    """
    if span_s is None:
        from mmer.audio import AudioDecodeError, load_waveform

        try:
            return load_waveform(path, sample_rate_hz, max_audio_s=max_audio_s)
        except (FileNotFoundError, AudioDecodeError) as e:
            raise MediaError(str(e)) from None
    args = [_tool("ffmpeg"), "-nostdin", "-v", "error", *_seek_args(span_s, max_audio_s), "-i", str(path),
            "-vn", "-map", "0:a:0", "-ac", "1", "-ar", str(int(sample_rate_hz)), "-f", "f32le", "-"]
    wav = np.frombuffer(_run(args, Path(path)), dtype="<f4").astype(np.float32)
    if max_audio_s is not None:
        wav = wav[:int(round(max_audio_s * sample_rate_hz))]  # ffmpeg's -t may overshoot by a packet
    return wav


# -- frames -------------------------------------------------------------------------------
def read_frames(path: str | Path, n_frames: int, span_s: tuple[float, float] | None = None,
                size_px: int | None = None) -> np.ndarray:
    """Decode ``n_frames`` RGB frames spread uniformly over the clip (or ``span_s`` of it).

    ffmpeg's ``fps`` filter picks frames at ``n_frames / duration`` per second, i.e. evenly over
    the whole clip (the authors took every (N//8)-th frame, so long clips lost their end).
    Clips with fewer frames than asked repeat frames evenly.

    Args:
        size_px: resize the shorter side to this and centre-crop a square; None keeps the size.

    Returns:
        uint8 (n_frames, H, W, 3), channels in RGB order.
    """
    info = probe(path)
    if not info.has_video or info.width <= 0 or info.height <= 0:
        raise MediaError(f"{Path(path).name}: no video stream")
    duration = info.duration_s if span_s is None else float(span_s[1]) - float(span_s[0])
    if span_s is not None:
        duration = min(duration, max(info.duration_s - float(span_s[0]), 0.0))
    if duration <= 0:
        raise MediaError(f"{Path(path).name}: span {span_s} lies outside the {info.duration_s:.2f} s clip")
    if size_px:
        w = h = int(size_px)
        scale = f"scale={w}:{h}:force_original_aspect_ratio=increase,crop={w}:{h}"
    else:
        w, h = info.width, info.height
        scale = f"scale={w}:{h}"  # pins the output size the raw bytes are parsed with
    rate = n_frames / duration
    args = [_tool("ffmpeg"), "-nostdin", "-v", "error", *_seek_args(span_s, None), "-i", str(path), "-an",
            "-vf", f"fps={rate:.6f},{scale}", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    raw = _run(args, Path(path))
    frame_bytes = w * h * RGB_CHANNELS
    got = len(raw) // frame_bytes
    if got == 0:
        raise MediaError(f"{Path(path).name}: no frame decoded")
    frames = np.frombuffer(raw[:got * frame_bytes], dtype=np.uint8).reshape(got, h, w, RGB_CHANNELS)
    index = np.linspace(0, got - 1, n_frames).round().astype(int)
    return np.ascontiguousarray(frames[index])


def square_resize(frames: Sequence[np.ndarray], size_px: int) -> np.ndarray:
    """Resize each frame's shorter side to ``size_px`` and centre-crop: list of (H, W, 3) -> (N, S, S, 3)."""
    cv2 = require("cv2")
    out = []
    for frame in frames:
        h, w = frame.shape[:2]
        scale = size_px / min(h, w)
        nh, nw = max(size_px, round(h * scale)), max(size_px, round(w * scale))
        resized = cv2.resize(frame, (nw, nh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        top, left = (nh - size_px) // 2, (nw - size_px) // 2
        out.append(resized[top:top + size_px, left:left + size_px])
    return np.stack(out)


_DETECTOR: list = []  # one lazily built mmer.face.FaceDetector per process (loading the cascade costs ms)


def face_crop_frames(frames: np.ndarray, size_px: int) -> np.ndarray:
    """Crop RGB frames (N, H, W, 3) uint8 around the largest face: (N, S, S, 3) uint8 RGB.

    Each frame uses its own largest face (:class:`mmer.face.FaceDetector`, Haar cascade); a
    frame where none is found borrows the box of the nearest frame that has one, so a blink or
    a turned head does not make the crop jump to the whole scene. With no face in any frame the
    frames stay whole (resized), so the visual student still sees the scene. In MELD's
    multi-person shots the largest face is usually, not always, the speaker's.
    """
    from mmer import face

    if not _DETECTOR:
        _DETECTOR.append(face.FaceDetector())
    boxes = [face.largest_face(_DETECTOR[0].detect(f, bgr=False)) for f in frames]
    found = [i for i, b in enumerate(boxes) if b is not None]
    if not found:
        return square_resize(list(frames), size_px)
    out = []
    for i, frame in enumerate(frames):
        box = boxes[min(found, key=lambda j: abs(j - i))]
        crop = face.crop_face(frame, box, size=size_px, gray=False, bgr=False)  # float32 [0, 1] RGB
        out.append(np.round(crop * MAX_PIXEL).astype(np.uint8))
    return np.stack(out)
