"""How long a short utterance is padded before the shared Whisper encoder (``MIN_ENCODER_S``), and
how a looping one is decoded again (``FALLBACK_ENCODER_S``), chosen on TESS (training data, never
the evaluation sets).

    HF_HUB_OFFLINE=1 python scripts/tune_min_encoder.py --tess ../shared/data/TESS --out runs/min_encoder.json

TESS clips are 1.5-2 s of "Say the word X": the short utterances on which the decoder, given only
the utterance's frames, repeats itself. For each padding length it runs ``SharedEncoderASR.transcribe``
(with its padded 30 s fallback when a text looks like a loop) on the same random clips and reports
the fallbacks, the WER (mmer.realtime.wer.normalize on both sides) and the time per clip. Then,
on the clips whose text loops when padded to 2 s, it compares the ways to decode them again:
faster-whisper's padded 30 s window against the shared encoder padded to 3, 6 or 10 s.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np

from mmer.media import decode_audio
from mmer.progress import progress
from mmer.realtime.asr import FasterWhisperASR, SharedEncoderASR, cut_repetition
from mmer.realtime.wer import normalize, word_errors


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tess", default="../shared/data/TESS", help="folder with labels.csv and audio/")
    p.add_argument("--clips", type=int, default=300, help="random clips (seed 1)")
    p.add_argument("--pads", default="2,3,4", help="padding lengths to compare, in s")
    p.add_argument("--out", default="runs/min_encoder.json")
    args = p.parse_args()
    root = Path(args.tess)
    rows = list(csv.DictReader(open(root / "labels.csv", encoding="utf-8")))
    pick = np.random.default_rng(1).choice(len(rows), min(args.clips, len(rows)), replace=False)
    rows = [rows[i] for i in pick]
    clips = [decode_audio(root / r["file"]) for r in progress(rows, "decoding TESS", unit="clip")]
    asr = SharedEncoderASR(cpu_threads=2)
    asr.warmup()
    results = []
    for pad in (float(x) for x in args.pads.split(",")):
        asr.min_encoder_s, asr.fallbacks = pad, 0
        errors = words = 0
        times = []
        for r, clip in zip(rows, progress(clips, f"min_encoder_s={pad}", unit="clip")):
            t0 = time.perf_counter()
            text = cut_repetition(asr.transcribe(clip).text)
            times.append((time.perf_counter() - t0) * 1000)
            ref = normalize(r["text"])
            errors, words = errors + word_errors(ref, normalize(text)), words + len(ref)
        results.append({"min_encoder_s": pad, "fallbacks": asr.fallbacks, "wer": round(errors / words, 4),
                        "ms_p50": round(float(np.median(times)), 1), "ms_p95": round(float(np.percentile(times, 95)), 1),
                        "ms_max": round(max(times), 1)})
    print(f"{'min_encoder_s':>14}{'fallbacks':>10}{'WER':>8}{'p50 ms':>8}{'p95 ms':>8}{'max ms':>8}   ({len(rows)} TESS clips)")
    for r in results:
        print(f"{r['min_encoder_s']:>14}{r['fallbacks']:>10}{r['wer']:>8.4f}{r['ms_p50']:>8}{r['ms_p95']:>8}{r['ms_max']:>8}")
    fallbacks = compare_fallbacks(asr, rows, clips)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"clips": len(rows), "results": results, "fallbacks": fallbacks},
                                         indent=2) + "\n")


def compare_fallbacks(asr: SharedEncoderASR, rows: list, clips: list, pads=(3.0, 6.0, 10.0)) -> list[dict]:
    """WER and time of each way to decode again the clips that loop when padded to 2 s."""
    loopers = []
    for r, clip in zip(rows, clips):
        hidden, _ = asr.encode(clip, min_s=2.0)
        if asr.decode(hidden[-1], len(clip) / 16_000)[1]:
            loopers.append((r, clip))
    ways = {"faster-whisper padded 30 s": lambda c: FasterWhisperASR.transcribe(asr, c).text}
    for pad in pads:
        ways[f"shared encoder padded {pad:g} s"] = \
            lambda c, pad=pad: asr.decode(asr.encode(c, min_s=pad)[0][-1], len(c) / 16_000)[0]
    out = []
    for name, way in ways.items():
        errors = words = 0
        times = []
        for r, clip in loopers:
            t0 = time.perf_counter()
            text = cut_repetition(way(clip))
            times.append((time.perf_counter() - t0) * 1000)
            ref = normalize(r["text"])
            errors, words = errors + word_errors(ref, normalize(text)), words + len(ref)
        out.append({"way": name, "wer": round(errors / max(words, 1), 4), "ms_p50": round(float(np.median(times)), 1)
                    if times else None})
    print(f"decoding again the {len(loopers)} clips that loop when padded to 2 s:")
    for r in out:
        print(f"  {r['way']:<32} WER {r['wer']:.4f}  p50 {r['ms_p50']} ms")
    return out


if __name__ == "__main__":
    main()
