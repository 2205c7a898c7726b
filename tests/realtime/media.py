"""Test media made by the tests themselves: espeak-ng speech, silence, and mp4 files.

Everything is 16 kHz mono 16-bit. ``make_conversation_wav`` returns the true start/end of
each spoken turn, measured on the synthesized samples (espeak-ng's own leading/trailing
silence trimmed), so segmentation tests compare against ground truth rather than against
the lengths we asked for. Use :func:`cached` with pytest's ``tmp_path_factory`` to build each
file once per test session, shared by every test module.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
import wave
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from mmer.media import INT16_FULL_SCALE, SAMPLE_RATE_HZ
SPEECH_LEVEL = 0.005  # |x| above this (about -46 dBFS) counts as sound when trimming espeak-ng output
NOISE_FLOOR_DBFS = -60.0  # faint room noise (RMS) added to "silence" so it is not digital zero
DEFAULT_FPS = 15
DEFAULT_FRAME_SIZE = (160, 120)  # (width, height) of generated video frames
TOOLS = ("espeak-ng", "sox", "ffmpeg")


def missing_tools(*names: str) -> list[str]:
    """The command-line tools among ``names`` (default: all media tools) not on PATH."""
    return [n for n in (names or TOOLS) if shutil.which(n) is None]


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}): {proc.stderr.strip()[-400:]}")


def write_wav(path: str | Path, audio: np.ndarray, sample_rate_hz: int = SAMPLE_RATE_HZ) -> Path:
    """Write ``audio`` (n,) float in [-1, 1] or int16 as a mono 16-bit wav."""
    audio = np.asarray(audio)
    if audio.dtype != np.int16:
        audio = np.clip(np.round(audio * INT16_FULL_SCALE), -32768, 32767).astype(np.int16)
    path = Path(path)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate_hz)
        w.writeframes(audio.tobytes())
    return path


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """Read a mono 16-bit wav -> ((n,) float32 in [-1, 1], sample rate in Hz)."""
    with wave.open(str(path), "rb") as w:
        if w.getnchannels() != 1 or w.getsampwidth() != 2:
            raise ValueError(f"{path}: expected mono 16-bit wav")
        x = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
        return x.astype(np.float32) / INT16_FULL_SCALE, w.getframerate()


def speak(text: str, path: str | Path, voice: str = "en-us", words_per_minute: int = 175,
          word_gap_10ms: int = 0) -> Path:
    """Synthesize ``text`` with espeak-ng into a 16 kHz mono 16-bit wav at ``path``."""
    path = Path(path)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "espeak.wav"  # espeak-ng writes 22.05 kHz
        _run(["espeak-ng", "-v", voice, "-s", str(words_per_minute), "-g", str(word_gap_10ms),
              "-w", str(raw), text])
        _run(["sox", str(raw), "-r", str(SAMPLE_RATE_HZ), "-c", "1", "-b", "16", str(path)])
    return path


def speech(text: str, voice: str = "en-us", trim: bool = True, **kwargs) -> np.ndarray:
    """``text`` spoken by espeak-ng as (n,) float32 at 16 kHz, its own edge silence trimmed."""
    with tempfile.TemporaryDirectory() as tmp:
        audio, _ = read_wav(speak(text, Path(tmp) / "s.wav", voice, **kwargs))
    if trim:
        loud = np.nonzero(np.abs(audio) > SPEECH_LEVEL)[0]
        audio = audio[loud[0]:loud[-1] + 1] if len(loud) else audio[:0]
    return audio


def noise_floor(duration_s: float, seed: int = 0, level_dbfs: float = NOISE_FLOOR_DBFS,
                color: str = "brown") -> np.ndarray:
    """Faint noise, (n,) float32 at 16 kHz with RMS ``level_dbfs``.

    "brown" (power ~ 1/f^2, like room rumble) is the default: webrtcvad keeps calling broadband
    "white" noise speech after an utterance (see tests/realtime/test_vad.py), which is
    webrtcvad's own weakness in noisy rooms, not what most segmentation tests are about.
    """
    rng = np.random.default_rng(seed)
    n = int(round(duration_s * SAMPLE_RATE_HZ))
    x = rng.standard_normal(n)
    if color == "brown" and n > 1:
        spec = np.fft.rfft(x)
        spec /= np.maximum(np.arange(len(spec)), 1)
        x = np.fft.irfft(spec, n)
    elif color != "white":
        raise ValueError(f"noise color must be 'brown' or 'white', got {color!r}")
    x = x / max(float(x.std()), 1e-12)
    return (x * 10 ** (level_dbfs / 20)).astype(np.float32)


def make_silence_wav(path: str | Path, duration_s: float = 3.0, noise_dbfs: float | None = NOISE_FLOOR_DBFS) -> Path:
    """A wav of silence (with a faint noise floor unless ``noise_dbfs`` is None)."""
    n = int(round(duration_s * SAMPLE_RATE_HZ))
    audio = np.zeros(n, np.float32) if noise_dbfs is None else noise_floor(duration_s, level_dbfs=noise_dbfs)
    return write_wav(path, audio)


def make_conversation_wav(path: str | Path, turns: Sequence[str], silence_s: float = 1.0, lead_s: float = 0.5,
                          tail_s: float = 1.0, voices: Sequence[str] = ("en-us", "en-gb")) -> list[tuple[float, float]]:
    """Write the ``turns`` spoken one after another (voices alternate) with ``silence_s`` of
    silence between them, ``lead_s`` before the first and ``tail_s`` after the last.

    Returns the true (start_s, end_s) of every turn in the file.
    """
    pieces = [noise_floor(lead_s, seed=0)]
    bounds = []
    t = lead_s
    for i, text in enumerate(turns):
        s = speech(text, voices[i % len(voices)])
        bounds.append((t, t + len(s) / SAMPLE_RATE_HZ))
        t += len(s) / SAMPLE_RATE_HZ
        gap = silence_s if i < len(turns) - 1 else tail_s
        pieces += [s, noise_floor(gap, seed=i + 1)]
        t += len(pieces[-1]) / SAMPLE_RATE_HZ
    write_wav(path, np.concatenate(pieces))
    return bounds


def make_mp4(path: str | Path, wav: str | Path, frame_fn: Callable[[int], np.ndarray] | None = None,
             fps: int = DEFAULT_FPS, size: tuple[int, int] = DEFAULT_FRAME_SIZE) -> Path:
    """Mux ``wav`` with generated video frames into an H.264/AAC mp4 as long as the audio.

    ``frame_fn(index)`` returns frame ``index`` as (H, W, 3) uint8 BGR of ``size`` (W, H);
    the default draws a moving gray bar so consecutive frames differ.
    """
    audio, sr = read_wav(wav)
    n_frames = max(1, int(round(len(audio) / sr * fps)))
    width, height = size

    def default_frame(i: int) -> np.ndarray:
        img = np.full((height, width, 3), 32, np.uint8)
        x = (i * 4) % width
        img[:, x:x + 8] = 200
        return img

    frame_fn = frame_fn or default_frame
    cmd = ["ffmpeg", "-y", "-v", "error", "-f", "rawvideo", "-pix_fmt", "bgr24", "-s", f"{width}x{height}",
           "-r", str(fps), "-i", "-", "-i", str(wav), "-c:v", "libx264", "-preset", "ultrafast",
           "-pix_fmt", "yuv420p", "-c:a", "aac", "-ar", str(SAMPLE_RATE_HZ), "-shortest", str(path)]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        for i in range(n_frames):
            img = np.ascontiguousarray(frame_fn(i), dtype=np.uint8)
            if img.shape != (height, width, 3):
                raise ValueError(f"frame_fn({i}) returned shape {img.shape}, expected {(height, width, 3)}")
            proc.stdin.write(img.tobytes())
    finally:
        proc.stdin.close()
        err = proc.stderr.read().decode(errors="replace")
        proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg failed ({proc.returncode}): {err.strip()[-400:]}")
    return Path(path)


def cached(tmp_path_factory, name: str, build: Callable[[Path], object], *key) -> tuple[Path, object]:
    """Build a media file once per test session: ``build(path)`` runs only if no file for
    (``name``, ``key``) exists yet; its JSON-able return value (e.g. turn boundaries) is kept
    next to the file. Returns (path, build's return value)."""
    digest = hashlib.sha1(json.dumps([name, *key], default=str).encode()).hexdigest()[:10]
    folder = tmp_path_factory.getbasetemp() / "mmer-media"
    folder.mkdir(exist_ok=True)
    path = folder / f"{digest}-{name}"
    meta = path.with_name(path.name + ".json")
    if not (path.exists() and meta.exists()):
        result = build(path)
        meta.write_text(json.dumps(result, default=str))
    return path, json.loads(meta.read_text())


PUSH_SAMPLES = 480   # 30 ms pushes, as a microphone gives


def segment(audio: np.ndarray, rate: int, **config) -> list:
    """Everything a real VadSegmenter with ``SegmenterConfig(**config)`` emits for ``audio``
    pushed in 30 ms chunks, then flushed, in order."""
    from mmer.realtime.frames import AudioChunk
    from mmer.realtime.vad import SegmenterConfig, VadSegmenter

    seg = VadSegmenter.from_config(SegmenterConfig(**config))
    items = []
    for start in range(0, len(audio), PUSH_SAMPLES):
        seg.push(AudioChunk(audio[start:start + PUSH_SAMPLES], start / rate))
        items += seg.poll()
    return items + seg.flush()


MELD_COLUMNS = ["Sr No.", "Utterance", "Speaker", "Emotion", "Dialogue_ID", "Utterance_ID", "StartTime", "EndTime"]


def write_meld_csv(path: str | Path, rows: Sequence[Sequence]) -> Path:
    """A transcript CSV in MELD's layout (``MELD_COLUMNS``, one row per utterance), for mmer-predict."""
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(MELD_COLUMNS)
        w.writerows(rows)
    return Path(path)
