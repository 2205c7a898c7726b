"""Build the sample recording shipped in mmer/assets/sample/ (run once; the output is committed).

    python -m mmer.realtime.make_sample            # writes mmer/assets/sample/conversation.{mp4,json}

A ~20 s conversation a new user can replay through the whole live pipeline without a camera or
a microphone (``mmer-live --demo``). The voices are espeak-ng's (two speakers taking turns, with
pauses between turns); the video shows a real face: the astronaut Eileen Collins, NASA's public
domain portrait that scikit-image ships as ``skimage.data.astronaut()``, gently moving so the
frames differ. ``conversation.json`` holds each turn's speaker, text and true start/end in the
file (measured on the synthesized samples), so a replay with ``--asr none`` can be fed the words
and tests can compare against ground truth.

Needs espeak-ng, sox and ffmpeg on PATH, and scikit-image.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import wave
from pathlib import Path
from typing import Any

import numpy as np

from mmer.media import SAMPLE_RATE_HZ
FPS = 10                          # frames per second of the sample video: expression changes slower
FRAME_SIZE_PX = (320, 240)        # (width, height): the face is ~70 px wide, above the detector's 48 px floor
LEAD_S, GAP_S, TAIL_S = 0.8, 1.4, 1.2   # silence before the first turn, between turns, after the last
SPEECH_LEVEL = 0.005              # |x| above this counts as sound when trimming espeak-ng's own silence
NOISE_DBFS = -60.0                # faint room noise in the pauses, so silence is not digital zero
WORDS_PER_MINUTE = 165
SWAY_PX = 6                       # amplitude of the slow sideways movement of the face
SWAY_PERIOD_S = 4.0
VIDEO_CRF = 30                    # x264 quality: the file stays well under 1.5 MB
AUDIO_KBPS = 48

TURNS = (  # (speaker, espeak-ng voice, text)
    ("alex", "en-us+f3", "Hi! I just got the results from the hospital."),
    ("sam", "en-gb", "Oh. And? What did they say?"),
    ("alex", "en-us+f3", "Everything is fine! I am completely healthy. I am so happy!"),
    ("sam", "en-gb", "That is wonderful news. I was really scared for you."),
)


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}): {proc.stderr.strip()[-400:]}")


def synthesize(text: str, voice: str) -> np.ndarray:
    """``text`` spoken by espeak-ng: (n,) float32 at 16 kHz, its own edge silence trimmed."""
    with tempfile.TemporaryDirectory() as tmp:
        raw, wav = Path(tmp) / "raw.wav", Path(tmp) / "s.wav"
        _run(["espeak-ng", "-v", voice, "-s", str(WORDS_PER_MINUTE), "-w", str(raw), text])
        _run(["sox", str(raw), "-r", str(SAMPLE_RATE_HZ), "-c", "1", "-b", "16", str(wav)])
        with wave.open(str(wav), "rb") as w:
            x = np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768.0
    loud = np.nonzero(np.abs(x) > SPEECH_LEVEL)[0]
    return x[loud[0]:loud[-1] + 1]


def room_noise(duration_s: float, rng: np.random.Generator) -> np.ndarray:
    """Brown (1/f^2) noise at ``NOISE_DBFS`` RMS, like room rumble."""
    n = int(round(duration_s * SAMPLE_RATE_HZ))
    spec = np.fft.rfft(rng.standard_normal(n))
    x = np.fft.irfft(spec / np.maximum(np.arange(len(spec)), 1), n)
    return (x / max(float(x.std()), 1e-12) * 10 ** (NOISE_DBFS / 20)).astype(np.float32)


def conversation_audio() -> tuple[np.ndarray, list[dict]]:
    """The whole track and the turns with their true start/end in seconds."""
    rng = np.random.default_rng(0)
    pieces, turns, t = [room_noise(LEAD_S, rng)], [], LEAD_S
    for i, (speaker, voice, text) in enumerate(TURNS):
        speech = synthesize(text, voice)
        turns.append({"speaker": speaker, "voice": voice, "text": text, "start_s": round(t, 3),
                      "end_s": round(t + len(speech) / SAMPLE_RATE_HZ, 3)})
        pause = room_noise(GAP_S if i < len(TURNS) - 1 else TAIL_S, rng)
        pieces += [speech, pause]
        t += (len(speech) + len(pause)) / SAMPLE_RATE_HZ
    return np.concatenate(pieces), turns


def face_frames(duration_s: float):
    """BGR frames of the astronaut portrait at ``FRAME_SIZE_PX``, swaying slowly."""
    import cv2
    from skimage.data import astronaut

    portrait = astronaut()[:, :, ::-1]  # RGB -> BGR, (512, 512, 3)
    head = portrait[0:384, 64:576]      # 4:3 window with the face in its upper middle
    width, height = FRAME_SIZE_PX
    base = cv2.resize(head, (width + 2 * SWAY_PX, height), interpolation=cv2.INTER_AREA)
    for i in range(int(round(duration_s * FPS))):
        dx = int(round(SWAY_PX * (1 + np.sin(2 * np.pi * i / FPS / SWAY_PERIOD_S))))
        yield np.ascontiguousarray(base[:, dx:dx + width])


def default_out_dir() -> Path:
    """mmer/assets/sample/ of the package this module belongs to."""
    import mmer

    return Path(mmer.__file__).resolve().parent / "assets" / "sample"


def build(out_dir: Path | None = None) -> Path:
    """Write ``conversation.mp4`` and ``conversation.json`` into ``out_dir``; returns the mp4."""
    out_dir = out_dir or default_out_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    audio, turns = conversation_audio()
    duration_s = len(audio) / SAMPLE_RATE_HZ
    mp4 = out_dir / "conversation.mp4"
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "a.wav"
        with wave.open(str(wav), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(SAMPLE_RATE_HZ)
            w.writeframes(np.clip(np.round(audio * 32768), -32768, 32767).astype(np.int16).tobytes())
        width, height = FRAME_SIZE_PX
        cmd = ["ffmpeg", "-y", "-v", "error", "-f", "rawvideo", "-pix_fmt", "bgr24", "-s", f"{width}x{height}",
               "-r", str(FPS), "-i", "-", "-i", str(wav), "-c:v", "libx264", "-preset", "veryslow",
               "-crf", str(VIDEO_CRF), "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", f"{AUDIO_KBPS}k",
               "-ar", str(SAMPLE_RATE_HZ), "-ac", "1", "-shortest", "-movflags", "+faststart", str(mp4)]
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            for frame in face_frames(duration_s):
                proc.stdin.write(frame.tobytes())
        finally:
            proc.stdin.close()
            err = proc.stderr.read().decode(errors="replace")
            proc.wait()
        if proc.returncode != 0:
            raise RuntimeError(f"ffmpeg failed: {err[-400:]}")
    meta = {"file": mp4.name, "duration_s": round(duration_s, 3), "sample_rate_hz": SAMPLE_RATE_HZ, "fps": FPS,
            "frame_size_px": list(FRAME_SIZE_PX), "turns": turns,
            "face": "skimage.data.astronaut(): Eileen Collins, NASA portrait, public domain",
            "voices": "espeak-ng", "made_by": "python -m mmer.realtime.make_sample"}
    (out_dir / "conversation.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return mp4


def sample_path() -> Path:
    """The shipped sample mp4 (inside the installed package)."""
    from importlib.resources import files

    return Path(str(files("mmer") / "assets" / "sample" / "conversation.mp4"))


def feed_transcript(pipeline: Any, transcript: Path) -> None:
    """With ASR "none": give each utterance the words (and speaker) of the transcript turn it
    overlaps most (the sample's conversation.json), as a host with its own ASR would."""
    from mmer.realtime.frames import UtteranceEnded

    turns = json.loads(Path(transcript).read_text(encoding="utf-8"))["turns"]

    def on_event(event: Any) -> None:
        if not isinstance(event, UtteranceEnded):
            return
        overlap = [min(event.end_s, t["end_s"]) - max(event.start_s, t["start_s"]) for t in turns]
        best = max(range(len(turns)), key=overlap.__getitem__)
        if overlap[best] > 0:
            pipeline.push_text(event.utterance_id, turns[best]["text"], turns[best]["speaker"])

    pipeline.on_event(on_event)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mmer.realtime.make_sample", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: mmer/assets/sample)")
    args = parser.parse_args(argv)
    mp4 = build(args.out)
    print(f"wrote {mp4} ({mp4.stat().st_size / 1e6:.2f} MB) and {mp4.with_suffix('.json').name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
