"""mmer.media: one decoder and one resampler for training, file replay and microphone.

Stereo files at 8 / 44.1 / 48 kHz decode to the right 16 kHz mono tone; the one-shot and the
streaming resampler give the same numbers; a cut, empty, fake or silent-film file raises a
MediaError naming it. Every test file is generated here (numpy, stdlib wave, ffmpeg).
"""

from __future__ import annotations

import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest

from mmer import media
from mmer.errors import MmerError, UsageError
from mmer.extras import MissingExtra
from mmer.media import SAMPLE_RATE_HZ as SR

pytest.importorskip("av")
needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg to make test media")

TONE_HZ = 440.0
AMPLITUDE = 0.5
FREQ_TOL_HZ = 1.0


def stereo_tone(rate_hz: int, seconds: float, hz: float = TONE_HZ) -> np.ndarray:
    """(n, 2) int16: the tone on the left, the same tone at half level on the right."""
    t = np.arange(int(round(seconds * rate_hz))) / rate_hz
    left = AMPLITUDE * np.sin(2 * np.pi * hz * t)
    return np.round(np.stack([left, 0.5 * left], axis=1) * 32767).astype(np.int16)


def write_wav(path: Path, samples: np.ndarray, rate_hz: int) -> Path:
    """(n, channels) int16 -> a PCM wav."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(samples.shape[1])
        w.setsampwidth(2)
        w.setframerate(rate_hz)
        w.writeframes(np.ascontiguousarray(samples).tobytes())
    return path


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args], check=True, capture_output=True)


def make_mp4(path: Path, seconds: float, audio_rate_hz: int | None = 48_000, faststart: bool = False) -> Path:
    """An H.264 mp4 with a stereo AAC tone at ``audio_rate_hz`` (None: no audio stream)."""
    video = ["-f", "lavfi", "-i", f"testsrc2=size=64x48:rate=10:d={seconds}"]
    audio = [] if audio_rate_hz is None else \
        ["-f", "lavfi", "-i", f"sine=f={TONE_HZ}:r={audio_rate_hz}:d={seconds}", "-ac", "2", "-c:a", "aac"]
    flags = ["-movflags", "+faststart"] if faststart else []
    ffmpeg(*video, *audio, "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", *flags, str(path))
    return path


def cut_in_half(src: Path, dst: Path) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])
    return dst


def peak_hz(x: np.ndarray, rate_hz: int = SR) -> float:
    return float(np.argmax(np.abs(np.fft.rfft(x))) * rate_hz / len(x))


# -- decoding ----------------------------------------------------------------------------------
@pytest.mark.parametrize("rate_hz", [8_000, 44_100, 48_000])
def test_stereo_wav_decodes_to_16k_mono_tone(tmp_path, rate_hz):
    seconds = 1.5
    path = write_wav(tmp_path / f"tone_{rate_hz}.wav", stereo_tone(rate_hz, seconds), rate_hz)
    x = media.decode_audio(path)
    assert x.dtype == np.float32 and x.shape == (round(seconds * SR),)
    assert abs(peak_hz(x) - TONE_HZ) < FREQ_TOL_HZ
    middle = x[SR // 10: -SR // 10]
    assert np.abs(middle).max() == pytest.approx(0.75 * AMPLITUDE, rel=0.01)  # mean of 1 and 0.5 of the tone
    info = media.probe(path)
    assert info.audio[0].rate_hz == rate_hz and info.audio[0].channels == 2 and info.video is None
    assert info.duration_s == pytest.approx(seconds)


@needs_ffmpeg
def test_mp4_48k_stereo_decodes_and_probes(tmp_path):
    path = make_mp4(tmp_path / "clip.mp4", 2.0)
    info = media.probe(path)
    assert info.has_audio and info.audio[0].rate_hz == 48_000 and info.audio[0].channels == 2
    assert info.video is not None and (info.video.width_px, info.video.height_px) == (64, 48)
    assert info.video.fps == pytest.approx(10.0)
    x = media.decode_audio(path)
    assert abs(len(x) / SR - 2.0) < 0.05
    assert abs(peak_hz(x) - TONE_HZ) < FREQ_TOL_HZ
    span = media.decode_audio(path, start_s=0.5, duration_s=1.0)
    assert span.shape == (SR,)
    assert abs(peak_hz(span) - TONE_HZ) < FREQ_TOL_HZ


def test_decode_span_matches_whole_file(tmp_path):
    path = write_wav(tmp_path / "tone.wav", stereo_tone(44_100, 2.0), 44_100)
    whole = media.decode_audio(path)
    span = media.decode_audio(path, start_s=0.5, duration_s=1.0)
    assert span.shape == (SR,)
    inner = slice(SR // 20, -SR // 20)  # the span's resampler starts cold at its own edges
    np.testing.assert_allclose(span[inner], whole[SR // 2:SR // 2 + SR][inner], atol=1e-3)


# -- resampling --------------------------------------------------------------------------------
def test_stream_resampler_equals_one_shot_in_any_blocks():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(44_100).astype(np.float32) * 0.1
    whole = media.resample(x, 44_100, SR)
    assert whole.shape == (16_000,)
    stream = media.StreamResampler(44_100, SR)
    sizes = rng.integers(1, 3000, 100)
    edges = np.concatenate([[0], np.cumsum(sizes)])
    pieces = [stream.push(x[a:b]) for a, b in zip(edges[:-1], edges[1:]) if a < len(x)]
    pieces.append(stream.flush())
    np.testing.assert_allclose(np.concatenate(pieces), whole, atol=1e-6)


def test_equal_rates_pass_through():
    x = np.linspace(-1, 1, 480, dtype=np.float32)
    np.testing.assert_array_equal(media.resample(x, SR, SR), x)
    stream = media.StreamResampler(SR, SR)
    np.testing.assert_array_equal(stream.push(x), x)
    assert stream.flush().size == 0


def test_downmix_either_layout():
    x = np.stack([np.ones(100), np.zeros(100)], axis=1).astype(np.float32)  # (n, 2)
    np.testing.assert_allclose(media.downmix(x), 0.5)
    np.testing.assert_allclose(media.downmix(x.T), 0.5)  # (2, n)
    ints = (x * 1000).astype(np.int16)
    assert media.downmix(ints).dtype == np.int16 and media.downmix(ints)[0] == 500
    assert media.downmix(np.zeros(7)).shape == (7,)
    with pytest.raises(UsageError):
        media.downmix(np.zeros((2, 3, 4)))


def test_int16_float_round_trip_is_exact():
    x = np.arange(-32768, 32768, 7, dtype=np.int16)
    np.testing.assert_array_equal(media.to_int16(media.to_float32(x)), x)
    assert media.to_int16(np.array([2.0, -2.0])).tolist() == [32767, -32768]


# -- broken files ------------------------------------------------------------------------------
@needs_ffmpeg
def test_truncated_mp4_raises_naming_the_file(tmp_path):
    whole = make_mp4(tmp_path / "whole.mp4", 12.0, faststart=True)
    cut = cut_in_half(whole, tmp_path / "cut_faststart.mp4")   # index first: plays, then stops
    with pytest.raises(media.MediaError, match=r"cut_faststart\.mp4: truncated or corrupt at \d+\.\d s of 12\.0 s"):
        media.probe(cut)
    with pytest.raises(media.MediaError, match="cut_faststart.mp4.*fix: re-copy"):
        media.decode_audio(cut)
    plain = cut_in_half(make_mp4(tmp_path / "plain.mp4", 12.0), tmp_path / "cut_plain.mp4")  # index last: lost
    with pytest.raises(media.MediaError, match=r"cut_plain\.mp4: .*truncated or corrupt"):
        media.decode_audio(plain)


def test_truncated_wav_raises_naming_the_file(tmp_path):
    whole = write_wav(tmp_path / "long.wav", stereo_tone(16_000, 6.0), 16_000)
    cut = cut_in_half(whole, tmp_path / "cut.wav")
    with pytest.raises(media.MediaError, match=r"cut\.wav: truncated or corrupt at 3\.0 s of 6\.0 s"):
        media.decode_audio(cut)


def test_empty_and_fake_files_raise_naming_them(tmp_path):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(media.MediaError, match=r"empty\.wav: empty file \(0 bytes\)"):
        media.decode_audio(empty)
    text = tmp_path / "notes.wav"
    text.write_text("these are meeting notes, not audio\n" * 20)
    with pytest.raises(media.MediaError, match=r"notes\.wav: not a media file"):
        media.probe(text)
    with pytest.raises(media.MediaNotFoundError, match="nowhere.wav") as err:
        media.decode_audio(tmp_path / "nowhere.wav")
    assert isinstance(err.value, FileNotFoundError) and isinstance(err.value, MmerError)
    assert err.value.exit_code == 2 and err.value.path == tmp_path / "nowhere.wav"


@needs_ffmpeg
def test_video_only_mp4_needs_audio_unless_video_is_asked(tmp_path):
    silent_film = make_mp4(tmp_path / "silent_film.mp4", 1.0, audio_rate_hz=None)
    with pytest.raises(media.MediaError, match=r"silent_film\.mp4: no audio stream; mmer needs the speech"):
        media.decode_audio(silent_film)
    with pytest.raises(media.MediaError, match="no audio stream"):
        media.MediaReader(silent_film).open()
    with media.MediaReader(silent_film, audio=False, pixel_format="rgb24") as reader:
        frames = list(reader.video_frames())
    assert len(frames) == 10 and frames[0].image.shape == (48, 64, 3) and frames[0].time_s == 0.0
    assert [f.index for f in frames] == list(range(10))


# -- streaming ---------------------------------------------------------------------------------
@needs_ffmpeg
def test_reader_events_are_in_availability_order(tmp_path):
    path = make_mp4(tmp_path / "clip.mp4", 2.0, audio_rate_hz=44_100)
    with media.MediaReader(path, block_samples=480) as reader:
        events = list(reader.events())
    blocks = [e for e in events if isinstance(e, media.AudioBlock)]
    images = [e for e in events if isinstance(e, media.VideoImage)]
    assert [e.available_s for e in events] == sorted(e.available_s for e in events)
    assert all(len(b.samples) == 480 for b in blocks[:-1])
    assert all(b.start_s == pytest.approx(a.end_s) for a, b in zip(blocks, blocks[1:]))
    assert len(images) == 20 and images[0].image.shape == (48, 64, 3)
    whole = media.decode_audio(path)
    np.testing.assert_array_equal(np.concatenate([b.samples for b in blocks]), whole)  # one code path


def test_without_pyav_pcm_wav_still_decodes(tmp_path, monkeypatch):
    path = write_wav(tmp_path / "tone.wav", stereo_tone(44_100, 1.0), 44_100)
    expected = media.decode_audio(path)

    def no_av():
        raise MissingExtra("decoding media files needs PyAV. Install it with: pip install 'mmer[live]'")

    monkeypatch.setattr(media, "_av", no_av)
    np.testing.assert_allclose(media.decode_audio(path), expected, atol=1e-6)
    other = tmp_path / "tone.mp3"
    other.write_bytes(b"ID3")
    with pytest.raises(MissingExtra, match=r"pip install 'mmer\[live\]'"):
        media.decode_audio(other)
