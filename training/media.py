"""Clip decoding for the training datasets, through :mod:`mmer.media` (PyAV).

:mod:`mmer.media` reads every container the corpora ship (MELD mp4/AAC, IEMOCAP DivX avi and
wav, EmoDB wav) and is the decoder inference uses too: whole files and spans of long
recordings alike reach the encoders as 16 kHz mono float32, down-mixed and resampled by the
soxr resampler the live microphone and the file replay use (defect 2: the authors decoded
MELD at 22.05 kHz for a 16 kHz model). Frames are decoded as rgb24, so they are RGB by
construction (defect 4: the authors fed OpenCV's BGR to an RGB model), sampled uniformly over
the whole clip.

Every failure raises :class:`MediaError` (= :class:`mmer.media.MediaError`) naming the clip;
the datasets turn it into a logged skip.
"""

from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from tqdm import tqdm

from mmer import media as core
from mmer.extras import require
from mmer.media import SAMPLE_RATE_HZ, MediaError

log = logging.getLogger(__name__)

RGB_CHANNELS = 3
MAX_PIXEL = 255.0                 # uint8 frames
PROBE_WORKERS = 2                 # probing threads at once (the developer machines have 2 cores)

__all__ = ["ClipInfo", "MediaError", "decode_audio", "face_crop_frames", "probe", "probe_many", "read_frames",
           "square_resize"]


# -- probing ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClipInfo:
    """What :func:`mmer.media.probe` reports about a clip, in the form the probe cache stores."""

    duration_s: float
    has_audio: bool
    has_video: bool
    width: int = 0
    height: int = 0


def probe(path: str | Path) -> ClipInfo:
    """Duration and streams of ``path``; raises :class:`MediaError` if it cannot be read (or is cut)."""
    info = core.probe(path)
    if info.duration_s is None or not np.isfinite(info.duration_s):
        raise MediaError(f"{path}: no duration in the container. {core.FIX_CORRUPT}")
    video = info.video
    return ClipInfo(float(info.duration_s), info.has_audio, video is not None,
                    video.width_px if video else 0, video.height_px if video else 0)


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


def _span(span_s: tuple[float, float] | None, max_s: float | None) -> tuple[float, float | None]:
    """(start_s, length_s or None) that read [start, end) of a file, at most ``max_s`` seconds."""
    start, length = 0.0, None
    if span_s is not None:
        start, end = float(span_s[0]), float(span_s[1])
        if end <= start:
            raise MediaError(f"empty span {span_s}")
        length = end - start
    if max_s is not None:
        length = max_s if length is None else min(length, max_s)
    return start, length


# -- audio --------------------------------------------------------------------------------
def decode_audio(path: str | Path, sample_rate_hz: int = SAMPLE_RATE_HZ, span_s: tuple[float, float] | None = None,
                 max_audio_s: float | None = None) -> np.ndarray:
    """Decode audio to mono float32 (T,) in [-1, 1) at ``sample_rate_hz``, T <= cap.

    :func:`mmer.media.decode_audio`, the decoder the rest of mmer uses, so training and
    inference read files identically, whole or a span of a longer recording.

    Args:
        path: any file FFmpeg reads (wav, mp4, avi).
        span_s: (start, end) seconds to read; None reads the whole file.
        max_audio_s: keep at most this many seconds from the start of the span (the cap).

    Raises:
        MediaError: missing, undecodable, truncated or corrupt file, or no audio stream.
    """
    start_s, length_s = _span(span_s, max_audio_s)
    return core.decode_audio(path, sample_rate_hz, start_s=start_s, duration_s=length_s)


# -- frames -------------------------------------------------------------------------------
def _cover_size(width: int, height: int, side_px: int) -> tuple[int, int]:
    """(w, h) with the shorter side ``side_px`` and the aspect kept (both >= ``side_px``)."""
    scale = side_px / min(width, height)
    return max(side_px, round(width * scale)), max(side_px, round(height * scale))


def read_frames(path: str | Path, n_frames: int, span_s: tuple[float, float] | None = None,
                size_px: int | None = None) -> np.ndarray:
    """Decode ``n_frames`` RGB frames spread uniformly over the clip (or ``span_s`` of it).

    Frame k is the one shown nearest to ``start + k * duration / n_frames``, i.e. evenly over
    the whole clip (the authors took every (N//8)-th frame, so long clips lost their end).
    Clips with fewer frames than asked repeat frames evenly. Frames are decoded one by one;
    only the chosen ones are kept.

    Args:
        size_px: resize the shorter side to this and centre-crop a square; None keeps the size.

    Returns:
        uint8 (n_frames, H, W, 3), channels in RGB order.
    """
    info = core.probe(path)
    video = info.video
    if video is None or video.width_px <= 0 or video.height_px <= 0:
        raise MediaError(f"{path}: no video stream. fix: give the clip with its pictures")
    clip_s = video.duration_s if video.duration_s is not None else info.duration_s or 0.0
    start_s, length_s = _span(span_s, None)
    duration = clip_s if length_s is None else min(length_s, max(clip_s - start_s, 0.0))
    if duration <= 0:
        raise MediaError(f"{path}: span {span_s} lies outside the {clip_s:.2f} s clip")
    size = _cover_size(video.width_px, video.height_px, int(size_px)) if size_px else None
    targets = [start_s + k * duration / n_frames for k in range(n_frames)]
    chosen: list[np.ndarray] = []
    previous = None  # (time_s, image) of the frame before the current one
    with core.MediaReader(path, audio=False, video=True, pixel_format="rgb24", frame_size=size,
                          start_s=start_s, duration_s=duration if span_s is not None else None) as reader:
        for frame in reader.video_frames():
            while len(chosen) < n_frames and targets[len(chosen)] <= frame.time_s:
                t = targets[len(chosen)]
                near_previous = previous is not None and t - previous[0] < frame.time_s - t
                chosen.append(previous[1] if near_previous else frame.image)
            if len(chosen) == n_frames:
                break
            previous = (frame.time_s, frame.image)
    if previous is None and not chosen:
        raise MediaError(f"{path}: no frame decoded. {core.FIX_CORRUPT}")
    while len(chosen) < n_frames:  # targets after the last frame: the clip's last frame
        chosen.append(previous[1])
    frames = np.stack(chosen)
    if size_px:
        h, w = frames.shape[1:3]
        top, left = (h - int(size_px)) // 2, (w - int(size_px)) // 2
        frames = frames[:, top:top + int(size_px), left:left + int(size_px)]
    return np.ascontiguousarray(frames)


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
