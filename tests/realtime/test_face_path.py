"""The camera path with the real Haar detector and the shipped fer mini-XCEPTION (default-face).

Frames show a real face (scikit-image's astronaut portrait) or noise (no face); nothing is mocked.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from mmer.realtime.face_path import FacePath, pool_observations
from mmer.realtime.frames import FaceObservation, VideoFrame

FRAME_W, FRAME_H = 160, 120          # small frames keep the detector fast; the face is ~53 px
FACE_CROP = (10, 250, 90, 410)       # (y0, y1, x0, x1) of the portrait: head and shoulders, 4:3


def astronaut_frame(shift_px: int = 0, width: int = FRAME_W, height: int = FRAME_H) -> np.ndarray:
    """(H, W, 3) uint8 BGR frame of the astronaut's face, shifted sideways by ``shift_px``."""
    cv2 = pytest.importorskip("cv2")
    astronaut = pytest.importorskip("skimage.data", reason="scikit-image (the dev extra) gives the face").astronaut
    y0, y1, x0, x1 = FACE_CROP
    img = np.ascontiguousarray(astronaut()[y0:y1, x0 + shift_px:x1 + shift_px, ::-1])
    return cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA)


def noise_frame(seed: int = 0, width: int = FRAME_W, height: int = FRAME_H) -> np.ndarray:
    """(H, W, 3) uint8 uniform noise: no face anywhere."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.fixture(scope="session")
def face_model():
    """The shipped default face model behind the real Haar detector."""
    from mmer.face import FaceExpressionModel

    try:
        return FaceExpressionModel("default-face")
    except Exception as e:  # the embedded default is built by mmer.training.convert_fer
        pytest.skip(f"embedded default-face not available: {e}")


def _frames(times_s, make=astronaut_frame):
    return [VideoFrame(make(), t, i) for i, t in enumerate(times_s)]


def test_window_returns_exactly_the_frames_of_the_utterance(face_model):
    path = FacePath(face_model, max_fps=100, block_when_behind=True).start()
    try:
        for frame in _frames([0.0, 0.1, 0.2, 0.3, 0.4, 0.5]):
            path.push(frame)
        assert path.wait_until(0.5, timeout_s=30)
        window = path.window(0.1, 0.4)
        assert [round(o.time_s, 3) for o in window] == [0.1, 0.2, 0.3, 0.4]
        assert all(o.box is not None and o.probs is not None and o.feature is not None for o in window)
        assert path.window(0.55, 2.0) == []
        evidence = pool_observations(window)
        assert evidence.faces == evidence.frames == 4
        assert evidence.probs.shape == (7,) and abs(float(evidence.probs.sum()) - 1) < 1e-5
        assert evidence.feature.shape == (face_model.model.dims.kd_dim,)
        assert path.stats["frames_processed"] == 6 and path.stats["faces_found"] == 6
        assert len(path.poll()) == 6 and path.poll() == []
    finally:
        path.close()
    assert not path.running


def test_pooling_equals_the_student_on_the_same_crops(face_model):
    """Per-frame results pooled by the face path == the edge student run on all crops at once."""
    from mmer.face import crop_face

    path = FacePath(face_model, max_fps=100)
    frames = [VideoFrame(astronaut_frame(shift), 0.1 * i, i) for i, shift in enumerate((0, 8, 16))]
    obs = [path.observe(f) for f in frames]
    evidence = pool_observations(obs)
    crops = np.stack([crop_face(f.image, o.box, size=face_model.crop_px) for f, o in zip(frames, obs)])
    out = face_model.model.predict(crops)          # every crop in one call of the student's runtime
    np.testing.assert_allclose(evidence.probs, out["probs"][0], atol=1e-5)
    np.testing.assert_allclose(evidence.feature, out["feature"][0], atol=1e-4)


def test_no_face_means_no_visual_evidence(face_model):
    path = FacePath(face_model, max_fps=100, block_when_behind=True).start()
    try:
        for frame in _frames([0.0, 0.1, 0.2], make=lambda: noise_frame(3)):
            path.push(frame)
        path.flush()
        window = path.window(0.0, 0.2)
    finally:
        path.close()
    assert len(window) == 3 and all(o.box is None and o.probs is None for o in window)
    assert pool_observations(window) is None
    assert pool_observations([]) is None


def test_latest_frame_slot_drops_and_counts_when_behind(face_model):
    path = FacePath(face_model, max_fps=1000).start()
    image = astronaut_frame()
    try:
        for i in range(40):  # far faster than detection + expression
            path.push(VideoFrame(image, i / 1000, i))
        path.flush(timeout_s=30)
    finally:
        path.close()
    s = path.stats
    assert s["frames_in"] == 40 and s["frames_dropped"] > 0
    assert s["frames_processed"] + s["frames_dropped"] + s["frames_skipped"] == s["frames_in"]
    times = [o.time_s for o in path.window(0, 1)]
    assert times == sorted(times) and times[-1] == pytest.approx(0.039)  # the newest frame always survives


def test_rate_cap_skips_frames_and_ring_is_bounded(face_model):
    path = FacePath(face_model, max_fps=5, history_s=1.0, block_when_behind=True).start()
    image = noise_frame()
    try:
        for i in range(60):  # 2 s of a 30 fps camera
            path.push(VideoFrame(image, i / 30, i))
        path.flush()
    finally:
        path.close()
    assert path.stats["frames_processed"] == 10 and path.stats["frames_skipped"] == 50
    assert len(path.window(-1, 10)) <= path._ring.maxlen == 6  # 1 s at 5 fps, + 1


def test_follow_keeps_the_tracked_face_when_a_bigger_one_appears(face_model):
    cv2 = pytest.importorskip("cv2")
    astronaut = pytest.importorskip("skimage.data").astronaut
    face = np.ascontiguousarray(astronaut()[30:230, 120:330, ::-1])
    canvas = np.full((180, 320, 3), 90, np.uint8)
    canvas[40:140, 200:300] = cv2.resize(face, (100, 100))
    small_only = canvas.copy()
    canvas[10:160, 10:160] = cv2.resize(face, (150, 150))
    from mmer.face import REDETECT_EVERY_FRAMES

    largest = FacePath(face_model, track="largest")
    assert largest.observe(VideoFrame(canvas, 0.1, 1)).box[0] < 160  # the big face
    follow = FacePath(face_model, max_fps=100, track="follow", block_when_behind=True).start()
    try:
        follow.push(VideoFrame(small_only, 0.0, 0))
        for i in range(REDETECT_EVERY_FRAMES + 2):  # cheap window searches, then a full detection
            follow.push(VideoFrame(canvas, 0.1 * (i + 1), i + 1))
        follow.push(VideoFrame(noise_frame(width=320, height=180), 5.0, 99))
        follow.flush()
    finally:
        follow.close()
    boxes = [o.box for o in follow.window(0, 5)]
    assert len(boxes) == REDETECT_EVERY_FRAMES + 4 and boxes[-1] is None
    assert all(b is not None and b[0] > 160 for b in boxes[:-1])  # stayed on the small face throughout
    assert face_model.tracker.last is None  # lost: the next frame gets a full search


class FakeFaceModel:
    """The face model's declared API (labels, label_set, reset, observe), without cv2 or torch."""

    labels = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
    label_set = "fer2013"

    def __init__(self, read_s: float = 0.0, error: BaseException | None = None) -> None:
        self.read_s, self.error = read_s, error
        self.calls: list[tuple[tuple[int, ...], str | None]] = []
        self.resets = 0

    def reset(self) -> None:
        self.resets += 1

    def observe(self, image, track=None):
        from mmer.face import FaceBox, FaceReading

        self.calls.append((image.shape, track))
        if self.error is not None:
            raise self.error
        time.sleep(self.read_s)
        return FaceReading(FaceBox(1, 2, 3, 4), np.full(7, 1 / 7, np.float32))


def test_path_reads_through_the_models_declared_api_and_errors_surface():
    model = FakeFaceModel()
    path = FacePath(model, max_fps=100, block_when_behind=True, track="follow").start()
    assert model.resets == 1 and path.labels == FakeFaceModel.labels and path.label_set == "fer2013"
    try:
        path.push(VideoFrame(noise_frame(), 0.0, 0))
        path.flush()
        obs = path.latest()
        assert isinstance(obs, FaceObservation) and obs.box == (1, 2, 3, 4) and obs.feature is None
        assert model.calls == [((FRAME_H, FRAME_W, 3), "follow")]  # the path's track reaches the model
        path.reset()
        assert model.resets == 2 and path.latest() is None
    finally:
        path.close()

    path = FacePath(FakeFaceModel(error=RuntimeError("camera model exploded")), max_fps=100).start()
    try:
        path.push(VideoFrame(noise_frame(), 0.0, 0))
        deadline = time.perf_counter() + 10
        while path.running and time.perf_counter() < deadline:
            time.sleep(0.01)
        with pytest.raises(RuntimeError, match="exploded"):
            path.push(VideoFrame(noise_frame(), 1.0, 1))
    finally:
        path.close()
    s = path.stats
    assert s["frames_in"] == 1 and s["frames_failed"] == 1 and s["frames_pending"] == 0


def _counted(stats: dict) -> int:
    return sum(stats[k] for k in ("frames_skipped", "frames_dropped", "frames_pending", "frames_processed",
                                  "frames_failed"))


@pytest.mark.parametrize("block_when_behind", [False, True])
def test_every_pushed_frame_is_in_exactly_one_counter(block_when_behind):
    n = 186
    path = FacePath(FakeFaceModel(read_s=0.002), max_fps=60, block_when_behind=block_when_behind).start()
    image = noise_frame()
    try:
        for i in range(n):  # 90 fps stamps under a 60 fps cap: every other frame is skipped
            path.push(VideoFrame(image, i / 90, i))
            assert _counted(path.stats) == path.stats["frames_in"] == i + 1
        assert path.flush(timeout_s=30)
        s = dict(path.stats)
    finally:
        path.close()
    assert s["frames_in"] == n and s["frames_pending"] == 0 and _counted(s) == n
    assert s["frames_skipped"] == n // 2
    if block_when_behind:
        assert s["frames_dropped"] == 0 and s["frames_processed"] == n - n // 2
    assert path.stats == s  # nothing was left to discard at close


def test_frames_left_in_the_slot_count_as_dropped():
    path = FacePath(FakeFaceModel(), max_fps=100, block_when_behind=True)  # never started
    for i in range(3):
        path.push(VideoFrame(noise_frame(), i / 10, i))
    assert path.stats["frames_pending"] == 1 and path.stats["frames_dropped"] == 2
    path.close()
    s = path.stats
    assert s["frames_in"] == 3 and s["frames_pending"] == 0 and s["frames_dropped"] == 3 and _counted(s) == 3
