"""Sources: file replay (fast and real-time pacing, wav and mp4), clear errors for bad files,
the device error path of microphone and camera on a machine without devices, and the
microphone's capture path driven through a fake PortAudio (a 44.1 kHz stereo USB device), which
must produce the numbers training decodes from the same samples."""

from __future__ import annotations

import itertools
import subprocess
import time
import wave
from types import SimpleNamespace

import numpy as np
import pytest

from mmer import media as mmer_media
from mmer.extras import MissingExtra
from mmer.realtime import sources
from mmer.realtime.frames import AudioChunk, VideoFrame
from mmer.realtime.sources import (CAMERA_FIRST_FRAME_TIMEOUT_S, LIST_DEVICES_HINT, CameraSource, DeviceError,
                                   FileSource, MediaFileError, MicrophoneSource, SourceError, list_devices)
from mmer.training import media as training_media
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


def test_error_kinds():
    assert issubclass(DeviceError, SourceError) and DeviceError("x").exit_code == 4   # environment
    assert SourceError("x").exit_code == 2 and issubclass(SourceError, RuntimeError)
    assert MediaFileError is mmer_media.MediaError and MediaFileError("x").exit_code == 2


# -- broken files ------------------------------------------------------------------------------
def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args], check=True, capture_output=True)


@needs_media
def test_file_source_truncated_mp4_fails_at_open_naming_it(tmp_path):
    whole = tmp_path / "whole.mp4"
    _ffmpeg("-f", "lavfi", "-i", "testsrc2=size=64x48:rate=10:d=10", "-f", "lavfi", "-i", "sine=f=440:d=10",
            "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac", "-movflags", "+faststart",
            str(whole))
    cut = tmp_path / "half_copied.mp4"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(MediaFileError, match=r"half_copied\.mp4: truncated or corrupt at \d+\.\d s of 10\.0 s"):
        FileSource(cut).open()


@needs_media
def test_file_source_without_audio_says_why(tmp_path):
    film = tmp_path / "no_sound.mp4"
    _ffmpeg("-f", "lavfi", "-i", "testsrc2=size=64x48:rate=10:d=1", "-c:v", "libx264", "-preset", "ultrafast",
            "-pix_fmt", "yuv420p", str(film))
    with pytest.raises(MediaFileError, match=r"no_sound\.mp4: no audio stream; mmer needs the speech"):
        FileSource(film).open()


def test_file_source_empty_and_text_files_name_them(tmp_path):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    text = tmp_path / "readme.wav"
    text.write_text("not audio at all\n" * 10)
    for path in (empty, text):
        with pytest.raises(MediaFileError, match=path.name):
            FileSource(path).open()


# -- camera targets ----------------------------------------------------------------------------
def test_camera_missing_path_names_it_without_waiting():
    t0 = time.perf_counter()
    with pytest.raises(DeviceError, match="camera '/nonexistent': no such device or file.*mmer-live --list-devices"):
        CameraSource("/nonexistent").open()
    assert time.perf_counter() - t0 < 1.0


def test_camera_target_forms():
    assert CameraSource("2").index == 2 and CameraSource(1).index == 1
    assert CameraSource("/dev/video2").index == "/dev/video2"
    assert CameraSource("rtsp://10.0.0.5/stream").index == "rtsp://10.0.0.5/stream"
    pipeline = "v4l2src device=/dev/video0 ! videoconvert ! appsink"
    assert CameraSource(pipeline).index == pipeline
    with pytest.raises(DeviceError, match="camera ''"):
        CameraSource("")


# -- microphone through a fake PortAudio ---------------------------------------------------------
class FakeStream:
    """What sounddevice.InputStream would be; ``feed`` plays PortAudio calling the callback."""

    def __init__(self, samplerate, blocksize, device, channels, dtype, callback, finished_callback):
        self.samplerate, self.blocksize, self.channels, self.dtype = samplerate, blocksize, channels, dtype
        self.callback, self.active = callback, False

    def start(self):
        self.active = True

    def abort(self):
        self.active = False

    def close(self):
        self.active = False

    def feed(self, block: np.ndarray) -> None:
        self.callback(block, len(block), None, SimpleNamespace(input_overflow=False))


class FakeSoundDevice:
    """A PortAudio with one input device that accepts only ``rates_hz`` x ``channels``."""

    class PortAudioError(Exception):
        pass

    def __init__(self, rates_hz=(44_100,), channels=(2,), default_hz=44_100, name="USB Audio CODEC"):
        self.rates_hz, self.channels, self.default_hz, self.name = rates_hz, channels, default_hz, name
        self.stream: FakeStream | None = None

    def query_devices(self, device=None, kind=None):
        return {"name": self.name, "default_samplerate": float(self.default_hz), "max_input_channels": 2}

    def check_input_settings(self, device=None, channels=None, dtype=None, samplerate=None):
        if samplerate not in self.rates_hz or channels not in self.channels:
            raise self.PortAudioError(f"Invalid sample rate or channel count ({samplerate} Hz, {channels} ch)")

    def InputStream(self, **kwargs):  # noqa: N802  (sounddevice's name)
        self.stream = FakeStream(**kwargs)
        return self.stream


def _capture(monkeypatch, device: FakeSoundDevice, samples: np.ndarray) -> tuple[MicrophoneSource, list[AudioChunk]]:
    """Open a MicrophoneSource on ``device`` and feed ``samples`` (n, ch) int16 in 30 ms blocks."""
    monkeypatch.setattr(sources, "_sounddevice", lambda: device)
    mic = MicrophoneSource().open()
    block = device.stream.blocksize
    chunks = []
    for i in range(0, len(samples), block):
        device.stream.feed(samples[i:i + block])
        while (chunk := mic.read(timeout_s=0)) is not None:
            chunks.append(chunk)
    mic.close()
    return mic, chunks


def _stereo_tone(rate_hz: int, seconds: float, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate_hz)) / rate_hz
    left = 0.5 * np.sin(2 * np.pi * hz * t)
    return np.round(np.stack([left, 0.6 * left], axis=1) * 32767).astype(np.int16)


def test_44k1_stereo_microphone_training_and_replay_hear_the_same(monkeypatch, tmp_path):
    # A USB / macOS device that only does 44.1 kHz stereo: refused before, now opened and resampled.
    tone = _stereo_tone(44_100, 1.0)
    mic, chunks = _capture(monkeypatch, FakeSoundDevice(), tone)
    assert (mic.capture_rate_hz, mic.capture_channels) == (44_100, 2)
    assert mic.device_name == "'USB Audio CODEC'"
    assert all(c.sample_rate_hz == SR and c.samples.dtype == np.int16 for c in chunks)
    assert all(b.start_s == pytest.approx(a.end_s) for a, b in itertools.pairwise(chunks))
    heard = np.concatenate([c.samples for c in chunks]).astype(np.float32) / 32768
    wav = tmp_path / "tone_44k1_stereo.wav"
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(44_100)
        w.writeframes(tone.tobytes())
    trained = training_media.decode_audio(wav)        # what a training clip decodes to
    with FileSource(wav) as src:                      # what mmer-predict replays
        replayed = np.concatenate([c.samples for c in iter(src.read, None)]).astype(np.float32) / 32768
    assert len(trained) == len(replayed) == SR
    assert SR - len(heard) < 0.03 * SR  # a live stream never flushes: the filter's ~22 ms (soxr HQ) stay inside
    peak = np.abs(trained).max()
    n = len(heard)
    assert np.abs(replayed - trained).max() < 1e-3 * peak
    assert np.abs(heard - trained[:n]).max() < 1e-3 * peak


def test_16k_mono_microphone_passes_samples_through(monkeypatch):
    device = FakeSoundDevice(rates_hz=(16_000, 48_000), channels=(1, 2), default_hz=48_000)
    x = np.arange(-4800, 4800, dtype=np.int16).reshape(-1, 1)
    mic, chunks = _capture(monkeypatch, device, x)
    assert (mic.capture_rate_hz, mic.capture_channels) == (16_000, 1)
    assert all(len(c.samples) == 480 for c in chunks)
    np.testing.assert_array_equal(np.concatenate([c.samples for c in chunks]), x[:, 0])


def test_48k_microphone_keeps_speech_band_and_rejects_alias(monkeypatch):
    # 12 kHz captured at 48 kHz would alias to 4 kHz at 16 kHz without the anti-alias filter.
    rate = 48_000
    t = np.arange(rate) / rate
    for freq_hz, expected_gain in ((1000, 1.0), (12_000, 0.0)):
        x = np.round(10_000 * np.sin(2 * np.pi * freq_hz * t)).astype(np.int16).reshape(-1, 1)
        mic, chunks = _capture(monkeypatch, FakeSoundDevice(rates_hz=(rate,), channels=(1,), default_hz=rate), x)
        y = np.concatenate([c.samples for c in chunks])
        assert mic.capture_rate_hz == rate and 0 <= len(x) // 3 - len(y) < 0.03 * SR  # less the filter delay
        gain = np.abs(y[200:-200]).max() / 10_000
        assert gain == pytest.approx(expected_gain, abs=0.05), freq_hz


def test_microphone_accepting_nothing_usable_names_the_rates(monkeypatch):
    device = FakeSoundDevice(rates_hz=(96_000,), channels=(1,), default_hz=96_000)
    device.check_input_settings = lambda **kw: (_ for _ in ()).throw(device.PortAudioError("refused"))
    monkeypatch.setattr(sources, "_sounddevice", lambda: device)
    with pytest.raises(DeviceError, match=r"accepts none of \[16000, 96000, 48000, 44100\] Hz.*--list-devices"):
        MicrophoneSource().open()
