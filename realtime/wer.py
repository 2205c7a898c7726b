"""``mmer-bench wer``: word error rate of the live speech-to-text on real recordings, through ``mmer-predict``.

    mmer-bench wer --data ../shared/eval/speech_asr --json wer.json

The folder holds the recordings and ``transcripts.csv`` (columns ``file`` and ``reference`` at
least; ``duration_s`` and ``style`` are reported when present). Every recording is run through
``mmer-predict`` in one process (the live pipeline's file replay: segmenter, speech-to-text,
models), the texts of its predictions are joined in order, and both sides are normalised the
same way (:func:`normalize`) before the word-level edit distance. The pooled WER is the errors
of every file over the reference words of every file, so the long recordings weigh most. The
CPU time of the whole run and the wall time are reported next to it.

Evaluation only: a score here must never choose a setting it then reports (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from mmer.cli import add_version
from mmer.errors import EXIT_OK, EXIT_USAGE, UsageError

TRANSCRIPTS = "transcripts.csv"
ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
        "sixteen seventeen eighteen nineteen").split()
TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
ABBREVIATIONS = {"mr": "mister", "mrs": "missus", "dr": "doctor", "st": "saint", "ok": "okay"}
MAX_SPELLED = 9999   # numbers up to this are spelled out; larger ones stay digits


def spell_number(n: int) -> str:
    """0 <= n <= 9999 in words ("forty two", "one thousand two hundred"); larger as digits."""
    if n > MAX_SPELLED:
        return str(n)
    if n < 20:
        return ONES[n]
    if n < 100:
        return TENS[n // 10] + ("" if n % 10 == 0 else " " + ONES[n % 10])
    if n < 1000:
        return ONES[n // 100] + " hundred" + ("" if n % 100 == 0 else " " + spell_number(n % 100))
    return spell_number(n // 1000) + " thousand" + ("" if n % 1000 == 0 else " " + spell_number(n % 1000))


def normalize(text: str) -> list[str]:
    """Lower case, numbers spelled out, a few abbreviations expanded, punctuation dropped
    (hyphens split words; apostrophes inside words stay): the same for reference and hypothesis."""
    text = text.lower().replace("%", " percent ")
    text = re.sub(r"(?<=\d),(?=\d{3})", "", text)            # 1,000 -> 1000
    text = re.sub(r"\d+", lambda m: " " + spell_number(int(m.group())) + " ", text)
    text = re.sub(r"[-\u2013\u2014/]", " ", text)
    words = []
    for word in text.split():
        word = re.sub(r"[^a-z0-9']", "", word).strip("'")
        if word:
            words.append(ABBREVIATIONS.get(word, word))
    return words


def word_errors(reference: Sequence[str], hypothesis: Sequence[str]) -> int:
    """Substitutions + deletions + insertions of the best alignment (Levenshtein over words)."""
    previous = list(range(len(hypothesis) + 1))
    for i, ref in enumerate(reference, 1):
        current = [i]
        for j, hyp in enumerate(hypothesis, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ref != hyp)))
        previous = current
    return previous[-1]


def read_transcripts(folder: Path) -> list[dict]:
    """The rows of ``folder/transcripts.csv`` whose recording exists (a missing one is a UsageError)."""
    path = folder / TRANSCRIPTS
    if not path.is_file():
        raise UsageError(f"{path}: not found. fix: --data names a folder with {TRANSCRIPTS} "
                         f"(columns file, reference) and the recordings it lists")
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    for key in ("file", "reference"):
        if rows and key not in rows[0]:
            raise UsageError(f"{path}: no '{key}' column (columns: {', '.join(rows[0])})")
    missing = [r["file"] for r in rows if not (folder / r["file"]).is_file()]
    if missing:
        raise UsageError(f"{path}: recordings not found under {folder}: {', '.join(missing[:5])}")
    return rows


def run_predict(files: list[Path], extra_args: Sequence[str]) -> tuple[dict[str, list[str]], float, float, int]:
    """``mmer-predict FILES --json TMP`` in this process -> ({file: texts in order}, wall s, CPU s, exit code)."""
    from mmer.realtime.cli import predict_main

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "predictions.jsonl"
        t0, cpu0 = time.perf_counter(), time.process_time()
        code = predict_main([*map(str, files), "--json", str(out), *extra_args])
        wall_s, cpu_s = time.perf_counter() - t0, time.process_time() - cpu0
        texts: dict[str, list[str]] = {str(f): [] for f in files}
        for line in out.read_text(encoding="utf-8").splitlines() if out.is_file() else []:
            row = json.loads(line)
            if row.get("type") == "prediction" and row.get("file") in texts:
                texts[row["file"]].append(row.get("text") or "")
    return texts, wall_s, cpu_s, code


def score(rows: list[dict], folder: Path, texts: dict[str, list[str]]) -> dict[str, Any]:
    """Per-file and pooled WER of the joined hypothesis texts against the references."""
    per_file, errors, words = [], 0, 0
    for r in rows:
        ref = normalize(r["reference"])
        hyp = normalize(" ".join(texts.get(str(folder / r["file"]), [])))
        e = word_errors(ref, hyp)
        errors, words = errors + e, words + len(ref)
        per_file.append({"file": r["file"], "style": r.get("style", ""), "duration_s": float(r.get("duration_s") or 0),
                         "reference_words": len(ref), "errors": e, "wer": round(e / max(len(ref), 1), 4),
                         "hypothesis": " ".join(hyp)})
    return {"pooled_wer": round(errors / max(words, 1), 4), "errors": errors, "reference_words": words,
            "files": per_file}


def format_table(result: dict) -> str:
    lines = [f"mmer-bench wer: {result['data']} ({len(result['files'])} recordings, {result['reference_words']} "
             f"reference words; asr {result['asr']})",
             f"{'file':<58}{'words':>6}{'errors':>7}{'WER':>7}", "-" * 78]
    for f in result["files"]:
        lines.append(f"{f['file'][-57:]:<58}{f['reference_words']:>6}{f['errors']:>7}{f['wer']:>7.3f}")
    lines.append(f"{'pooled':<58}{result['reference_words']:>6}{result['errors']:>7}{result['pooled_wer']:>7.3f}")
    lines.append(f"wall {result['wall_s']:.1f} s, CPU {result['cpu_s']:.1f} s for {result['audio_s']:.1f} s of audio "
                 f"({result['cpu_s_per_audio_s']:.2f} CPU s per s)")
    return "\n".join(lines)


def wer_main(argv: list[str] | None = None) -> int:
    """``mmer-bench wer``; a leading "wer" argument is accepted and skipped."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["wer"]:
        argv = argv[1:]
    p = argparse.ArgumentParser(prog="mmer-bench wer", description=__doc__.split("\n")[0])
    add_version(p)
    p.add_argument("--data", required=True, metavar="DIR", help=f"folder with {TRANSCRIPTS} and the recordings")
    p.add_argument("--json", metavar="OUT", help="write the per-file and pooled results here")
    p.add_argument("--asr", default=None, help="speech-to-text backend for mmer-predict (default: the config's)")
    p.epilog = ("Anything else goes to mmer-predict as it is: config overrides (KEY=VALUE) and its options "
                "(--text-model, --voice-model, --config, ...).")
    args, passthrough = p.parse_known_args(argv)
    folder = Path(args.data)
    try:
        rows = read_transcripts(folder)
    except UsageError as e:
        print(f"mmer-bench: {e}", file=sys.stderr)
        return EXIT_USAGE
    files = [folder / r["file"] for r in rows]
    extra = (["--asr", args.asr] if args.asr else []) + passthrough
    texts, wall_s, cpu_s, code = run_predict(files, extra)
    audio_s = sum(float(r.get("duration_s") or 0) for r in rows)
    result = {"data": str(folder), "asr": args.asr or "config default", "mmer_predict_options": passthrough,
              **score(rows, folder, texts), "wall_s": round(wall_s, 2), "cpu_s": round(cpu_s, 2),
              "audio_s": round(audio_s, 2), "cpu_s_per_audio_s": round(cpu_s / max(audio_s, 1e-9), 3),
              "mmer_predict_exit": code}
    print(format_table(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"mmer-bench: results -> {args.json}", file=sys.stderr)
    return EXIT_OK if code == EXIT_OK else code
