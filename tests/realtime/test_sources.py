"""Sources: file replay (fast and real-time pacing, wav and mp4), clear errors for bad files,
and the device error path of microphone and camera on a machine without devices."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest

from mmer.extras import MissingExtra
from mmer.realtime.frames import AudioChunk, VideoFrame
from mmer.realtime.sources import (CAMERA_FIRST_FRAME_TIMEOUT_S, LIST_DEVICES_HINT, CameraSource, DeviceError,
                                   FileSource, MediaFileError, MicrophoneSource, _Decimator, list_devices)
from tests.realtime import media

needs_media = pytest.mark.skipif(bool(media.missing_tools()), reason=f"needs {media.missing_tools()} for test media")

SR = media.SAMPLE_RATE_HZ
NO_SUCH_MIC = 4096  # a PortAudio device index no machine has
NO_SUCH_CAMERA = 97


@pytest.fixture(scope="module")
def one_second_wav(tmp_path_factory):
    def build(p):
        t = np.arange(SR) / SR
        media.write_wav(p, 0.3 * np.sin(2 * np.pi * 440 * t))
    return media.cached(tmp_path_factory, "tone_1s.wav", build)[0]


@pytest.fixture(scope="module")
def talking_mp4(tmp_path_factory):
    def build(p):
        wav = p.with_suffix(".wav")
        bounds = media.make_conversation_wav(wav, ["hello there", "how are you"], silence_s=0.5, lead_s=0.3,
                                             tail_s=0.5)
        media.make_mp4(p, wav, fps=media.DEFAULT_FPS)
        return bounds
    return media.cached(tmp_path_factory, "talk.mp4", build)[0]


def test_file_source_fast_replay(one_second_wav):
    t0 = time.perf_counter()
    with FileSource(one_second_wav) as src:
        assert src.has_audio and not src.has_video and src.duration_s == pytest.approx(1.0)
        chunks = list(iter(src.read, None))
        assert src.finished
    elapsed = time.perf_counter() - t0
    assert elapsed < 0.5
    assert all(isinstance(c, AudioChunk) and c.samples.dtype == np.int16 for c in chunks)
    assert all(len(c.samples) == SR * 30 // 1000 for c in chunks[:-1])
    # contiguous on the stream clock, covering the whole file
    assert all(b.start_s == pytest.approx(a.end_s) for a, b in itertools.pairwise(chunks))
    assert chunks[0].start_s == 0.0 and chunks[-1].end_s == pytest.approx(1.0)
    original, _ = media.read_wav(one_second_wav)
    replayed = np.concatenate([c.samples for c in chunks]).astype(np.float32) / 32768
    np.testing.assert_allclose(replayed, original, atol=1e-6)


def test_file_source_realtime_pacing(one_second_wav):
    t0 = time.perf_counter()
    arrivals = []
    for chunk in FileSource(one_second_wav, realtime=True).events():
        arrivals.append((time.perf_counter() - t0, chunk.end_s))
    elapsed = time.perf_counter() - t0
    assert 0.95 <= elapsed < 1.4
    # each chunk arrives no earlier than a microphone could have delivered it
    assert all(wall >= end_s - 0.005 for wall, end_s in arrivals)


def test_file_source_realtime_read_timeout(one_second_wav):
    with FileSource(one_second_wav, realtime=True) as src:
        assert src.read(timeout_s=0.0) is None and not src.finished  # first chunk due at 30 ms
        assert isinstance(src.read(timeout_s=0.1), AudioChunk)


@needs_media
def test_file_source_mp4_audio_and_video_in_order(talking_mp4):
    with FileSource(talking_mp4) as src:
        assert src.has_audio and src.has_video
        duration_s = src.duration_s
        events = list(iter(src.read, None))
    frames = [e for e in events if isinstance(e, VideoFrame)]
    chunks = [e for e in events if isinstance(e, AudioChunk)]
    assert abs(len(frames) - duration_s * media.DEFAULT_FPS) <= 2
    assert [f.index for f in frames] == list(range(len(frames)))
    assert frames[0].time_s == 0.0
    assert np.allclose(np.diff([f.time_s for f in frames]), 1 / media.DEFAULT_FPS, atol=2e-3)
    assert frames[0].image.shape == (media.DEFAULT_FRAME_SIZE[1], media.DEFAULT_FRAME_SIZE[0], 3)
    assert abs(sum(len(c.samples) for c in chunks) / SR - duration_s) < 0.1
    # availability order: an audio chunk when its last sample is captured, a frame at its time
    due = [e.end_s if isinstance(e, AudioChunk) else e.time_s for e in events]
    assert due == sorted(due)
    assert not FileSource(talking_mp4, include_video=False).open().has_video


def test_file_source_missing_file_names_it(tmp_path):
    path = tmp_path / "nowhere.wav"
    with pytest.raises(MediaFileError, match="nowhere.wav"):
        FileSource(path).open()


@needs_media
def test_file_source_corrupt_file_names_it(tmp_path):
    for name in ("broken.wav", "broken.mp4"):
        path = tmp_path / name
        path.write_bytes(b"RIFF\x00\x00\x00\x00garbage" * 20)
        with pytest.raises(MediaFileError, match=name):
            FileSource(path).open()


def _no_input_devices() -> bool:
    audio_part = list_devices().split("Cameras")[0]
    return "no audio input devices" in audio_part or "unavailable" in audio_part


def test_microphone_missing_device_raises_device_error_quickly():
    t0 = time.perf_counter()
    try:
        with pytest.raises(DeviceError, match="mmer-live --list-devices") as err:
            MicrophoneSource(device=NO_SUCH_MIC).open()
    except MissingExtra as e:  # no PortAudio library at all: that error says how to install it
        pytest.skip(str(e))
    assert str(NO_SUCH_MIC) in str(err.value)
    assert time.perf_counter() - t0 < 5.0


@pytest.mark.skipif(not _no_input_devices(), reason="this machine has a microphone")
def test_default_microphone_on_machine_without_one():
    try:
        with pytest.raises(DeviceError, match=LIST_DEVICES_HINT):
            MicrophoneSource().open()
    except MissingExtra as e:
        pytest.skip(str(e))


def test_camera_missing_device_raises_device_error_quickly():
    t0 = time.perf_counter()
    with pytest.raises(DeviceError, match=f"camera {NO_SUCH_CAMERA}.*mmer-live --list-devices"):
        CameraSource(NO_SUCH_CAMERA).open()
    assert time.perf_counter() - t0 < CAMERA_FIRST_FRAME_TIMEOUT_S + 1.0  # never hangs


@needs_media
def test_camera_thread_keeps_latest_frame_and_reports_loss(talking_mp4):
    # OpenCV opens a file like a camera: the capture thread runs for real, decoding faster than
    # we read, so the one-frame buffer must drop; at the end of the file the "camera" is lost.
    camera = CameraSource(str(talking_mp4)).open()
    try:
        got = []
        with pytest.raises(DeviceError, match="stopped delivering frames"):
            while True:
                frame = camera.read(timeout_s=2.0)
                assert frame is not None
                got.append(frame)
                time.sleep(0.01)
    finally:
        camera.close()
    assert got and all(isinstance(f, VideoFrame) for f in got)
    assert [f.index for f in got] == sorted({f.index for f in got})  # increasing, never repeated
    assert camera.frames_captured == len(got) + camera.dropped_frames
    assert camera.dropped_frames > 0


def test_list_devices_reports_without_raising():
    text = list_devices()
    assert "Audio input devices" in text and "Cameras" in text
    assert text.count("\n") >= 3


def test_decimator_keeps_speech_band_and_rejects_alias():
    # 48 kHz capture -> 16 kHz, as used for microphones that refuse 16 kHz.
    rate_in = 48_000
    t = np.arange(rate_in) / rate_in
    dec = _Decimator(3)
    for freq_hz, expected_gain in ((1000, 1.0), (12_000, 0.0)):  # 12 kHz would alias to 4 kHz
        x = np.round(10_000 * np.sin(2 * np.pi * freq_hz * t)).astype(np.int16)
        y = np.concatenate([dec.process(x[i:i + 1440]) for i in range(0, len(x), 1440)])  # 30 ms blocks
        assert len(y) == len(x) // 3
        gain = np.abs(y[200:-200]).max() / 10_000
        assert gain == pytest.approx(expected_gain, abs=0.05), freq_hz
