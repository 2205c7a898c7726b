"""Join recordings into one multi-turn wav, a pause of faint noise between them (a benchmark input).

    python scripts/concat_turns.py --data ../shared/eval/speech_asr --max-s 15 --out turns.wav

Takes the recordings of ``transcripts.csv`` shorter than ``--max-s`` in its order (in
speech_asr: 12 recordings of real read speech, 62.6 s with the pauses), decodes each to 16 kHz
mono and writes them one after another with ``--gap-s`` of noise at -60 dBFS between them, so
that every recording is one turn that ends in silence. For ``mmer-bench live --input turns.wav``.
"""

from __future__ import annotations

import argparse
import csv
import wave
from pathlib import Path

import numpy as np

from mmer.media import INT16_FULL_SCALE, SAMPLE_RATE_HZ, decode_audio

NOISE_RMS = 0.001   # -60 dBFS: a quiet room, below webrtcvad's speech


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="folder with transcripts.csv (columns file, duration_s)")
    p.add_argument("--max-s", type=float, default=15.0, help="recordings shorter than this")
    p.add_argument("--gap-s", type=float, default=1.2, help="noise between two recordings")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    folder = Path(args.data)
    rows = [r for r in csv.DictReader(open(folder / "transcripts.csv", encoding="utf-8"))
            if float(r["duration_s"]) < args.max_s]
    rng = np.random.default_rng(0)
    parts = []
    for r in rows:
        parts += [decode_audio(folder / r["file"]),
                  (rng.standard_normal(int(args.gap_s * SAMPLE_RATE_HZ)) * NOISE_RMS).astype(np.float32)]
    audio = np.concatenate(parts)
    pcm = (np.clip(audio, -1, 1) * (INT16_FULL_SCALE - 1)).astype(np.int16)
    with wave.open(args.out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE_HZ)
        w.writeframes(pcm.tobytes())
    print(f"{len(rows)} recordings, {len(audio) / SAMPLE_RATE_HZ:.1f} s -> {args.out}")


if __name__ == "__main__":
    main()
