"""One encoder pass for speech-to-text and voice: WER and latency of Whisper tiny.en decoding paths.

    HF_HUB_OFFLINE=1 python scripts/bench_shared_encoder.py --eval-root ../shared/eval \
        --out runs/bench_shared_encoder.json [--limit N] [--threads 2]

Every path decodes greedily with the int8 CTranslate2 Whisper tiny.en that faster-whisper holds
(no timestamps, faster-whisper's suppressed tokens and no-speech rule); they differ in what the
decoder attends to:

- ``current``: ``FasterWhisperASR.transcribe``; faster-whisper pads the log-mel to 30 s.
- ``shared``: ``SharedEncoderASR`` (its ``encode`` then ``transcribe_states``, which is what its
  ``transcribe`` does): the torch ``WhisperEncoder`` on the unpadded utterance scaled to the
  voice model's peak level, followed by the states of a silent 30 s window.
- ``shared-unscaled``: the same without the peak scaling (what the scaling costs speech-to-text).
- ``shared-raw``: the torch encoder's (1, L, 384) states of the unpadded utterance, nothing added.
- ``ct2-raw``: CTranslate2's own ``encode`` of the unpadded log-mel, nothing added.
- ``ct2-tail``: that, with the silent tail and the 2 s minimum of ``shared``.

Sets: ``ravdess`` (336 clips, reference = labels.csv ``statement``); ``asr-short`` (speech_asr
files up to 15 s); ``asr-long`` (the longer speech_asr recordings cut by the project's
VadSegmenter with the default SegmenterConfig, WER of the joined text per recording); ``words``
(espeak-ng single words with the segmenter's 0.3 s pre-roll and 0.15 s post-roll of faint noise,
all < 1 s); ``silence`` (faint brown/white noise, digital zeros, and the first 0.5 s of RAVDESS
clips, before the actor speaks): every non-empty output there is a hallucination.

WER: word edits / reference words, pooled over a set, after lower-casing and replacing every
character other than letters, digits and apostrophes by a space ("10" against "ten" counts as an
error, for every path alike). Latency: wall time per utterance from the waveform to the text,
median and p95; paths run one after the other on each utterance (so load changes hit all);
"encode ms" is the encoder's share, "fallback" counts utterances ``SharedEncoderASR`` decoded
again padded to 30 s because its first text looked like a loop, "runaway" hypotheses more than
3x as long as their reference.
Prints one table; writes the per-utterance results and the table as JSON.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mmer.audio import load_waveform
from mmer.media import INT16_FULL_SCALE
from mmer.realtime.asr import (LOG_PROB_THRESHOLD, NO_SPEECH_THRESHOLD, WHISPER_MAX_LENGTH, FasterWhisperASR,
                               SharedEncoderASR)
from mmer.realtime.frames import SAMPLE_RATE_HZ, AudioChunk, Utterance
from mmer.realtime.vad import SegmenterConfig, VadSegmenter

REPO_ROOT = Path(__file__).resolve().parents[1]
PATHS = ("current", "shared", "shared-unscaled", "shared-raw", "ct2-raw", "ct2-tail")
SHORT_FILE_S = 15.0  # speech_asr files up to this long are one utterance (the segmenter's max_utterance_s)
BLOCK_MS = 30  # audio block pushed into the segmenter
WORDS = ("yes", "no", "okay", "stop", "hi", "thanks", "right", "sure", "what", "hello")
VOICES = ("en-us", "en-gb")
PRE_ROLL_S, POST_ROLL_S = 0.3, 0.15  # SegmenterConfig.pre_roll_ms / post_roll_ms
NOISE_DBFS = (-70, -60, -50, -40)
SILENCE_S = (0.5, 1.0, 3.0)
LEAD_IN_S = 0.5  # RAVDESS clips start with ~1 s of room tone before the actor speaks
LEAD_IN_EVERY = 7  # every 7th RAVDESS clip gives a lead-in
WARMUP_RUNS = 2
RUNAWAY_WORDS = 3  # a hypothesis with more than 3x the reference's words (at least 4) is a runaway
MIN_REF_WORDS = 4


def words_of(text: str) -> list[str]:
    """Lower-cased words; every character but letters, digits and apostrophes separates words."""
    return re.sub(r"[^a-z0-9']+", " ", text.lower()).split()


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(Levenshtein distance in words, reference words)."""
    ref, hyp = words_of(reference), words_of(hypothesis)
    row = list(range(len(hyp) + 1))
    for i in range(1, len(ref) + 1):
        diagonal, row[0] = row[0], i
        for j in range(1, len(hyp) + 1):
            diagonal, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diagonal + (ref[i - 1] != hyp[j - 1]))
    return row[len(hyp)], len(ref)


def segment(audio: np.ndarray) -> list[np.ndarray]:
    """The utterances the live segmenter (default SegmenterConfig) cuts from ``audio``."""
    segmenter = VadSegmenter.from_config(SegmenterConfig())
    block = SAMPLE_RATE_HZ * BLOCK_MS // 1000
    pcm = np.clip(np.round(audio * INT16_FULL_SCALE), -32768, 32767).astype(np.int16)
    out = []
    for start in range(0, len(pcm), block):
        segmenter.push(AudioChunk(pcm[start:start + block], start / SAMPLE_RATE_HZ))
        out += segmenter.poll()
    out += segmenter.flush()
    return [u.audio for u in out if isinstance(u, Utterance)]


def load_sets(eval_root: Path, limit: int | None) -> dict[str, list[dict]]:
    """{set name: [{"name", "audio", "reference", "group"}]}; ``group`` pools asr-long per recording."""
    sys.path.insert(0, str(REPO_ROOT))
    from tests.realtime import media  # espeak-ng speech and noise floors, as the tests make them

    sets: dict[str, list[dict]] = {name: [] for name in ("ravdess", "asr-short", "asr-long", "words", "silence")}
    ravdess = eval_root / "ravdess_speech"
    rows = list(csv.DictReader(open(ravdess / "labels.csv", encoding="utf-8")))[:limit]
    for i, row in enumerate(rows):
        audio = load_waveform(ravdess / row["file"])
        sets["ravdess"].append({"name": row["file"], "audio": audio, "reference": row["statement"]})
        if i % LEAD_IN_EVERY == 0:
            sets["silence"].append({"name": f"lead-in {row['file']}", "audio": audio[:int(LEAD_IN_S * SAMPLE_RATE_HZ)],
                                    "reference": ""})
    speech_asr = eval_root / "speech_asr"
    for row in csv.DictReader(open(speech_asr / "transcripts.csv", encoding="utf-8")):
        audio = load_waveform(speech_asr / row["file"])
        if len(audio) <= SHORT_FILE_S * SAMPLE_RATE_HZ:
            sets["asr-short"].append({"name": row["file"], "audio": audio, "reference": row["reference"]})
        else:
            for k, piece in enumerate(segment(audio)):
                sets["asr-long"].append({"name": f"{row['file']}#{k}", "audio": piece, "group": row["file"],
                                         "reference": row["reference"] if k == 0 else ""})
    if not media.missing_tools("espeak-ng", "sox"):
        for voice in VOICES:
            for k, word in enumerate(WORDS):
                audio = np.concatenate([media.noise_floor(PRE_ROLL_S, seed=2 * k), media.speech(word, voice),
                                        media.noise_floor(POST_ROLL_S, seed=2 * k + 1)])
                sets["words"].append({"name": f"{voice} {word}", "audio": audio, "reference": word})
    for seconds in SILENCE_S:
        n = int(seconds * SAMPLE_RATE_HZ)
        sets["silence"].append({"name": f"zeros {seconds} s", "audio": np.zeros(n, np.float32), "reference": ""})
        for level in NOISE_DBFS:
            for color in ("brown", "white"):
                sets["silence"].append({"name": f"{color} {level} dBFS {seconds} s", "reference": "",
                                        "audio": media.noise_floor(seconds, seed=-level, level_dbfs=level, color=color)})
    return {k: v for k, v in sets.items() if v}


class Paths:
    """Runs one utterance through each path; returns {path: (text, encode_ms, total_ms)}."""

    def __init__(self, threads: int):
        torch.set_num_threads(threads)  # the torch encoder gets the cores CTranslate2 gets
        self.current = FasterWhisperASR(cpu_threads=threads)
        self.shared = SharedEncoderASR(cpu_threads=threads)
        self.fw = self.shared._model  # the WhisperModel: feature extractor and CTranslate2 model

    def _decode_raw(self, states) -> str:
        """Decode encoder states alone, with the settings and no-speech rule of the other paths."""
        s = self.shared
        result = s._ct2.generate(s._storage(np.ascontiguousarray(states, dtype=np.float32)), [s._prompt],
                                 beam_size=s.beam_size, max_length=WHISPER_MAX_LENGTH, return_scores=True,
                                 return_no_speech_prob=True, suppress_blank=True, suppress_tokens=s._suppress)[0]
        tokens = result.sequences_ids[0]
        avg_logprob = result.scores[0] * len(tokens) / (len(tokens) + 1)
        if result.no_speech_prob > NO_SPEECH_THRESHOLD and avg_logprob <= LOG_PROB_THRESHOLD:
            return ""
        return s._tokenizer.decode(tokens).strip()

    def _ct2_encode(self, audio: np.ndarray, min_s: float = 0.0) -> np.ndarray:
        """CTranslate2's encoder on the unpadded log-mel (zero-padded audio up to ``min_s``) -> (1, L, 384)."""
        n = max(len(audio), int(round(min_s * SAMPLE_RATE_HZ)))
        wav = np.zeros(n, np.float32)
        wav[:len(audio)] = audio
        mel = self.fw.feature_extractor(wav)[:, :-1]  # faster-whisper adds one 10 ms frame of padding
        return np.array(self.fw.model.encode(self.shared._storage(np.ascontiguousarray(mel[None])), to_cpu=True))

    def _timed_encode(self, audio: np.ndarray):
        t0 = time.perf_counter()
        out = SharedEncoderASR.encode(self.shared, audio)
        self.encode_ms = (time.perf_counter() - t0) * 1000
        return out

    def run(self, audio: np.ndarray, paths: tuple[str, ...]) -> dict[str, dict]:
        """{path: {"text", "encode_ms" (None where the encoder is not timed apart), "total_ms",
        "fallback" (shared paths: decoded again padded)}} for one utterance."""
        out = {}
        duration_s = len(audio) / SAMPLE_RATE_HZ
        shared = self.shared
        shared.encode = self._timed_encode  # times the encoder inside the real transcribe()
        for path in paths:
            t0 = time.perf_counter()
            encode_ms, fallback = None, None
            if path == "current":
                text = self.current.transcribe(audio).text
            elif path in ("shared", "shared-unscaled"):
                peak, before = shared.peak_level, shared.fallbacks
                shared.peak_level = None if path == "shared-unscaled" else peak
                try:
                    text = shared.transcribe(audio).text
                finally:
                    shared.peak_level = peak
                encode_ms, fallback = self.encode_ms, shared.fallbacks > before
            elif path == "shared-raw":
                min_s, shared.min_encoder_s = shared.min_encoder_s, 0.0
                try:
                    hidden, _ = shared.encode(audio)
                finally:
                    shared.min_encoder_s = min_s
                encode_ms = self.encode_ms
                text = self._decode_raw(hidden[-1].numpy())
            elif path == "ct2-raw":
                states = self._ct2_encode(audio)
                encode_ms = (time.perf_counter() - t0) * 1000
                text = self._decode_raw(states)
            elif path == "ct2-tail":
                states = self._ct2_encode(audio, shared.min_encoder_s)
                encode_ms = (time.perf_counter() - t0) * 1000
                text = shared.transcribe_states(states, duration_s).text
            else:
                raise ValueError(f"unknown path {path!r} (expected one of {', '.join(PATHS)})")
            out[path] = {"text": text, "encode_ms": encode_ms, "total_ms": (time.perf_counter() - t0) * 1000,
                         "fallback": fallback}
        return out


def summarise(results: list[dict], paths: tuple[str, ...]) -> list[dict]:
    """One row per (set, path): n, WER (or hallucinations on silence), median / p95 ms."""
    rows = []
    for name in dict.fromkeys(r["set"] for r in results):
        items = [r for r in results if r["set"] == name]
        for path in paths:
            total = np.array([r["paths"][path]["total_ms"] for r in items])
            encode = [r["paths"][path]["encode_ms"] for r in items if r["paths"][path]["encode_ms"] is not None]
            row = {"set": name, "path": path, "n": len(items), "median_ms": float(np.median(total)),
                   "p95_ms": float(np.percentile(total, 95)),
                   "encode_median_ms": float(np.median(encode)) if encode else None,
                   "fallbacks": sum(bool(r["paths"][path]["fallback"]) for r in items)}
            if name == "silence":
                row["non_empty"] = sum(bool(words_of(r["paths"][path]["text"])) for r in items)
            else:
                groups: dict[str, list[dict]] = {}
                for r in items:
                    groups.setdefault(r.get("group") or r["name"], []).append(r)
                errors = words = 0
                for group in groups.values():
                    e, w = word_errors(" ".join(r["reference"] for r in group),
                                       " ".join(r["paths"][path]["text"] for r in group))
                    errors, words = errors + e, words + w
                row.update(wer=errors / max(words, 1), ref_words=words)
                if len(groups) == len(items):  # each utterance has its own reference
                    row["runaway"] = sum(len(words_of(r["paths"][path]["text"]))
                                         > RUNAWAY_WORDS * max(len(words_of(r["reference"])), MIN_REF_WORDS)
                                         for r in items)
            rows.append(row)
    return rows


def print_table(rows: list[dict]) -> None:
    print(f"{'set':10s} {'path':16s} {'n':>4s} {'WER':>7s} {'runaway':>7s} {'halluc.':>7s} "
          f"{'median ms':>9s} {'p95 ms':>8s} {'encode ms':>9s} {'fallback':>8s}")
    for r in rows:
        wer = f"{r['wer']:.3f}" if "wer" in r else "-"
        runaway = str(r.get("runaway", "-"))
        halluc = f"{r['non_empty']}/{r['n']}" if "non_empty" in r else "-"
        enc = f"{r['encode_median_ms']:.0f}" if r["encode_median_ms"] is not None else "-"
        print(f"{r['set']:10s} {r['path']:16s} {r['n']:4d} {wer:>7s} {runaway:>7s} {halluc:>7s} "
              f"{r['median_ms']:9.0f} {r['p95_ms']:8.0f} {enc:>9s} {r['fallbacks']:8d}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--eval-root", default="../shared/eval", help="folder with ravdess_speech/ and speech_asr/")
    parser.add_argument("--out", default="runs/bench_shared_encoder.json")
    parser.add_argument("--limit", type=int, default=None, help="RAVDESS clips used (default all 336)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads of CTranslate2 and of torch")
    parser.add_argument("--paths", default=",".join(PATHS), help=f"comma-separated subset of {','.join(PATHS)}")
    args = parser.parse_args(argv)
    paths = tuple(p for p in args.paths.split(",") if p)
    unknown = set(paths) - set(PATHS)
    if unknown:
        parser.error(f"unknown paths {sorted(unknown)} (expected some of {', '.join(PATHS)})")
    sets = load_sets(Path(args.eval_root), args.limit)
    runner = Paths(args.threads)
    warm = sets["ravdess"][0]["audio"] if "ravdess" in sets else next(iter(sets.values()))[0]["audio"]
    for _ in range(WARMUP_RUNS):
        runner.run(warm, paths)
    results = []
    started = time.perf_counter()
    for name, items in sets.items():
        for item in items:
            got = runner.run(item["audio"], paths)
            results.append({"set": name, "name": item["name"], "group": item.get("group"),
                            "reference": item["reference"], "duration_s": len(item["audio"]) / SAMPLE_RATE_HZ,
                            "paths": got})
        print(f"{name}: {len(items)} utterances done ({time.perf_counter() - started:.0f} s)", flush=True)
    rows = summarise(results, paths)
    print_table(rows)
    machine = {"cpus": os.cpu_count(), "threads": args.threads, "platform": platform.platform(),
               "processor": platform.processor() or platform.machine(), "load_average": os.getloadavg(),
               "torch": torch.__version__}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine, "table": rows, "results": results}, indent=1),
                   encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
