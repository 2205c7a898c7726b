"""``mmer-bench soak``: a long looped replay through the live pipeline; nothing lost, memory flat.

    mmer-bench soak --minutes 60 --json soak.json            # the shipped sample, looped
    mmer-bench soak --minutes 60 --input talk.mp4 --asr shared-encoder

The recording (default: the shipped two-voice sample) is replayed pass after pass, as fast as
possible and in lockstep (each utterance's prediction is awaited before the replay reads on),
on one stream clock that only goes forward, until ``--minutes`` of stream time have gone
through one pipeline that is never reset. Two checks:

(a) every utterance gets exactly one prediction: utterance-end events and predictions are
    counted by utterance id (lost = ended without a prediction, duplicated = more than one);
(b) resident memory stays flat: RSS (/proc/self/status VmRSS, else psutil) is sampled at every
    whole stream-minute; its growth from minute ``--baseline-minute`` (10; the first minute in
    shorter runs) to the last minute must stay under ``--max-growth-pct`` (5).

It prints one table (minute, utterances, predictions, RSS MiB), a progress line per stream-minute
on stderr, writes ``--json``, and exits with ``EXIT_GATE`` (3) when a check fails. Without
speech-to-text (``--asr none``, the default: the fastest path that still runs every other
stage) each utterance gets the words of the transcript turn it overlaps (the recording's
``.json`` next to it), as a host with its own ASR would supply them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mmer.cli import add_version
from mmer.errors import EXIT_GATE, EXIT_OK, MmerError, UsageError, setup_logging
from mmer.realtime.frames import AudioChunk, UtteranceEnded, VideoFrame

PROG = "mmer-bench soak"
DEFAULT_MINUTES = 60
DEFAULT_BASELINE_MINUTE = 10     # warm-up allocations (arenas, caches) are done by then
DEFAULT_MAX_GROWTH_PCT = 5.0
SECONDS_PER_MINUTE = 60.0
MIB = 1024 * 1024
KIB = 1024
PASS_STARTS_KEPT = 4             # pass offsets remembered to map an utterance back into its pass
IDS_LISTED = 20                  # lost / duplicated ids listed in the report (the counts are complete)


# -- measuring ----------------------------------------------------------------------------------
def _proc_status_mib(field: str) -> float | None:
    """A ``/proc/self/status`` memory field (reported in kB) in MiB; None where there is none."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * KIB / MIB
    except OSError:
        pass
    return None


def rss_mib() -> float | None:
    """This process's resident set size in MiB now (VmRSS, else psutil), None if neither works."""
    rss = _proc_status_mib("VmRSS")
    if rss is not None:
        return rss
    try:
        import psutil
    except ImportError:
        return None
    return psutil.Process().memory_info().rss / MIB


def peak_rss_mib() -> float:
    """The highest RSS this process has had, in MiB (VmHWM, else ru_maxrss: KiB on Linux)."""
    peak = _proc_status_mib("VmHWM")
    if peak is not None:
        return peak
    import resource  # Unix only

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * KIB / MIB


def growth_pct(baseline: float, last: float) -> float:
    """Relative growth in percent: ``100 * (last - baseline) / baseline``."""
    if baseline <= 0:
        raise ValueError(f"baseline must be > 0, got {baseline}")
    return 100.0 * (last - baseline) / baseline


def memory_report(samples: list[dict], baseline_minute: int = DEFAULT_BASELINE_MINUTE) -> dict:
    """RSS at the baseline minute (``baseline_minute``, or the first sampled minute when the run
    did not go past it) and at the last minute, and the growth between them in percent.
    ``samples``: one dict per stream-minute with "minute" and "rss_mib" (None: not measurable)."""
    sampled = [s for s in samples if s.get("rss_mib") is not None]
    if not sampled:
        return {"available": False}
    later = [s for s in sampled if s["minute"] >= baseline_minute]
    base = later[0] if len(later) > 1 else sampled[0]
    last = sampled[-1]
    return {"available": True, "baseline_minute": base["minute"], "baseline_mib": round(base["rss_mib"], 1),
            "last_minute": last["minute"], "last_mib": round(last["rss_mib"], 1),
            "growth_pct": round(growth_pct(base["rss_mib"], last["rss_mib"]), 2),
            "max_mib": round(max(s["rss_mib"] for s in sampled), 1)}


def reconcile(ended: Counter, predicted: Counter) -> dict[str, list[int]]:
    """Utterance ids that ended without a prediction (``lost``), that were predicted or ended more
    than once (``duplicated``), and that were predicted but never ended (``unexpected``)."""
    return {"lost": sorted(i for i in ended if predicted[i] == 0),
            "duplicated": sorted(i for i in set(ended) | set(predicted) if ended[i] > 1 or predicted[i] > 1),
            "unexpected": sorted(i for i in predicted if ended[i] == 0)}


def gate_failures(check: dict[str, list[int]], memory: dict, max_growth_pct: float, errors: int = 0) -> list[str]:
    """Why the soak failed (empty: it passed): any lost / duplicated / unexpected utterance, a
    prediction that raised, or memory growth >= ``max_growth_pct``."""
    failures = [f"{len(ids)} {kind} utterance(s): {ids[:IDS_LISTED]}" for kind, ids in check.items() if ids]
    if errors:
        failures.append(f"{errors} prediction(s) failed (see the log)")
    if memory.get("available") and memory["growth_pct"] >= max_growth_pct:
        failures.append(f"RSS grew {memory['growth_pct']:.2f} % from minute {memory['baseline_minute']} to "
                        f"minute {memory['last_minute']} (limit {max_growth_pct:g} %)")
    return failures


class Ledger:
    """Utterance-end events and predictions counted by utterance id (check (a)). ``on_event``
    runs in the reader's thread, ``on_prediction`` in ``mmer-predict``."""

    def __init__(self) -> None:
        self.ended: Counter = Counter()
        self.predicted: Counter = Counter()
        self._lock = threading.Lock()

    def on_event(self, event: Any) -> None:
        if isinstance(event, UtteranceEnded):
            with self._lock:
                self.ended[event.utterance_id] += 1

    def on_prediction(self, prediction: Any) -> None:
        with self._lock:
            self.predicted[prediction.utterance_id] += 1

    def totals(self) -> tuple[int, int]:
        """(utterance-end events, predictions) so far."""
        with self._lock:
            return sum(self.ended.values()), sum(self.predicted.values())

    def check(self) -> dict[str, list[int]]:
        with self._lock:
            return reconcile(self.ended, self.predicted)


# -- the long recording ---------------------------------------------------------------------------
class LoopingSource:
    """One recording replayed pass after pass until ``duration_s`` of stream time, on one clock.

    ``open_pass()`` returns an opened source (a non-paced FileSource); each new pass is shifted to
    start where the previous one's audio ended (or its last frame, if later), so the clock only
    goes forward, as the pipeline requires. The last pass is the one that reaches ``duration_s``
    (whole passes: no utterance is cut by the end). ``on_minute(minute)`` is called in the
    reader's thread when the audio clock reaches each whole stream minute, before the chunk that
    crosses it is handed on: in a lockstep replay every utterance that ended earlier has its
    prediction by then.
    """

    paced = False

    def __init__(self, open_pass: Callable[[], Any], duration_s: float,
                 on_minute: Callable[[int], Any] | None = None) -> None:
        if duration_s <= 0:
            raise UsageError(f"the soak needs a positive duration, got {duration_s} s")
        self.open_pass, self.duration_s, self.on_minute = open_pass, duration_s, on_minute
        self.source = open_pass()
        self.passes = 1
        self.offset_s = 0.0
        self.pass_starts_s: deque[float] = deque([0.0], maxlen=PASS_STARTS_KEPT)
        self.finished = False
        self._audio_end_s = 0.0
        self._last_frame_s = 0.0
        self._minutes_done = 0

    @property
    def stream_s(self) -> float:
        """Stream time reached by the audio handed on so far."""
        return self._audio_end_s

    def pass_start_s(self, time_s: float) -> float:
        """The shifted start of the pass that stream time ``time_s`` belongs to."""
        return max((s for s in self.pass_starts_s if s <= time_s), default=self.pass_starts_s[0])

    def _next_pass(self) -> bool:
        self.source.close()
        if self._audio_end_s >= self.duration_s:
            self.finished = True
            return False
        if self._audio_end_s <= self.offset_s:
            raise UsageError("the soak input gave no audio in a whole pass; it needs a recording with speech")
        self.offset_s = max(self._audio_end_s, self._last_frame_s)
        self.source = self.open_pass()
        self.passes += 1
        self.pass_starts_s.append(self.offset_s)
        return True

    def read(self, timeout_s: float | None = None) -> AudioChunk | VideoFrame | None:
        """The next item of the current pass with its time shifted; None at the end."""
        while not self.finished:
            item = self.source.read(timeout_s)
            if isinstance(item, AudioChunk):
                item = AudioChunk(item.samples, item.start_s + self.offset_s, item.sample_rate_hz)
                self._audio_end_s = item.end_s
                while self.on_minute is not None and self._audio_end_s >= (self._minutes_done + 1) * SECONDS_PER_MINUTE:
                    self._minutes_done += 1
                    self.on_minute(self._minutes_done)
                return item
            if isinstance(item, VideoFrame):
                item = VideoFrame(item.image, item.time_s + self.offset_s, item.index)
                self._last_frame_s = max(self._last_frame_s, item.time_s)
                return item
            if item is not None or not self.source.finished:
                return item                   # something else, or nothing due yet
            if not self._next_pass():
                return None
        return None

    def close(self) -> None:
        self.source.close()


def feed_looped_transcript(pipeline: Any, turns: list[dict], source: LoopingSource) -> None:
    """With ASR "none": give each utterance the words (and speaker) of the transcript turn it
    overlaps most in its own pass (make_sample.feed_transcript, on the looped clock)."""

    def on_event(event: Any) -> None:
        if not isinstance(event, UtteranceEnded):
            return
        offset = source.pass_start_s(event.start_s)
        start, end = event.start_s - offset, event.end_s - offset
        overlap = [min(end, t["end_s"]) - max(start, t["start_s"]) for t in turns]
        best = max(range(len(turns)), key=overlap.__getitem__)
        if overlap[best] > 0:
            pipeline.push_text(event.utterance_id, turns[best]["text"], turns[best]["speaker"])

    pipeline.on_event(on_event)


# -- the run ----------------------------------------------------------------------------------------
def _machine() -> dict:
    cpu = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu": cpu, "load_avg_1min": round(os.getloadavg()[0], 2)}


def soak(input: str | Path, minutes: int = DEFAULT_MINUTES, json_out: str | Path | None = None,
         config: Any = None, max_growth_pct: float = DEFAULT_MAX_GROWTH_PCT,
         baseline_minute: int = DEFAULT_BASELINE_MINUTE, transcript: str | Path | None = None,
         progress: Any = sys.stderr) -> dict:
    """Replay ``input`` looped for ``minutes`` stream-minutes; print the table, write ``json_out``,
    return the report (``report["passed"]``, ``report["failures"]``). ``config``: a LiveConfig
    (outputs, pacing and input are set here); ``progress``: where the per-minute lines go (None: off)."""
    from mmer.media import probe
    from mmer.realtime.build import build_pipeline
    from mmer.realtime.config import load_live_config
    from mmer.realtime.sources import FileSource

    machine = _machine()     # the load before the soak, not the load it makes
    input_path = Path(input)
    if minutes < 1:
        raise UsageError(f"--minutes must be >= 1, got {minutes}")
    cfg = config or load_live_config(overrides=["asr.backend=none"])
    rep = dataclasses.replace
    sources = rep(cfg.sources, input=str(input_path), realtime=False)
    if probe(input_path).video is None:
        sources = rep(sources, camera=None)           # no pictures: no face path
    cfg = rep(cfg, sources=sources, outputs=rep(cfg.outputs, json=None, ws_port=None, web_port=None, show=False))
    if transcript is not None and not Path(transcript).is_file():
        raise UsageError(f"{transcript}: transcript file not found")
    transcript = Path(transcript) if transcript else input_path.with_suffix(".json")
    turns = json.loads(transcript.read_text(encoding="utf-8"))["turns"] if transcript.is_file() else None
    if cfg.asr.backend == "none" and not turns:   # no words will come: do not wait for them
        cfg = rep(cfg, asr=rep(cfg.asr, text_wait_s=0.0))

    pipeline = build_pipeline(cfg, lockstep=True)
    faces = pipeline.face_path is not None
    ledger = Ledger()
    pipeline.on_event(ledger.on_event)
    pipeline.on_prediction(ledger.on_prediction)
    samples: list[dict] = []
    t0 = time.perf_counter()

    def on_minute(minute: int) -> None:
        ended, predicted = ledger.totals()
        sample = {"minute": minute, "utterances": ended, "predictions": predicted, "rss_mib": rss_mib(),
                  "wall_s": round(time.perf_counter() - t0, 1)}
        samples.append(sample)
        if progress is not None:
            rss = "?" if sample["rss_mib"] is None else f"{sample['rss_mib']:.1f}"
            print(f"soak: minute {minute}/{minutes} ({sample['wall_s']:.0f} s): {ended} utterances, "
                  f"{predicted} predictions, RSS {rss} MiB", file=progress, flush=True)

    source = None
    try:
        pipeline.warmup()
        rss_warm = rss_mib()
        t0 = time.perf_counter()
        source = LoopingSource(lambda: FileSource(input_path, realtime=False, include_video=faces).open(),
                               minutes * SECONDS_PER_MINUTE, on_minute)
        if pipeline.asr.name == "none" and turns:
            feed_looped_transcript(pipeline, turns, source)
        code = pipeline.run(source)
        wall_s = time.perf_counter() - t0
        stats = pipeline.stats_line()
        errors = pipeline.stats["errors"]
    finally:
        if source is not None:
            source.close()
        pipeline.close()
    check = ledger.check()
    ended, predicted = ledger.totals()
    memory = memory_report(samples, baseline_minute)
    memory.update(source="/proc/self/status VmRSS" if os.path.exists("/proc/self/status") else "psutil",
                  after_warmup_mib=None if rss_warm is None else round(rss_warm, 1),
                  # VmHWM is kept lazily by the kernel and can trail the last VmRSS sample
                  peak_mib=round(max(peak_rss_mib(), memory.get("max_mib", 0.0)), 1))
    failures = gate_failures(check, memory, max_growth_pct, errors)
    if code != EXIT_OK:
        failures.append(f"the replay ended with exit code {code}")
    report = {
        "input": str(input_path), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "minutes": minutes, "stream_minutes": round(source.stream_s / SECONDS_PER_MINUTE, 2),
        "passes": source.passes, "asr": pipeline.asr.name, "faces": faces,
        "transcript": str(transcript) if turns else None,
        "utterances": ended, "predictions": predicted, "errors": errors,
        "lost": len(check["lost"]), "duplicated": len(check["duplicated"]), "unexpected": len(check["unexpected"]),
        "ids": {k: v[:IDS_LISTED] for k, v in check.items()},
        "memory": memory, "max_growth_pct": max_growth_pct, "wall_s": round(wall_s, 1),
        "realtime_factor": round(source.stream_s / wall_s, 1) if wall_s > 0 else None,
        "machine": machine, "stats": stats, "samples": samples,
        "passed": not failures, "failures": failures,
    }
    print(format_table(report))
    if json_out is not None:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


def format_table(report: dict) -> str:
    """The minute table, then the two checks and the verdict."""
    m = report["memory"]
    head = f"{'minute':>6} {'utterances':>11} {'predictions':>12} {'RSS MiB':>9}"
    lines = [(f"{PROG}: {report['input']} x{report['passes']} = {report['stream_minutes']} stream-min in "
              f"{report['wall_s']:.0f} s (asr {report['asr']}, faces {'on' if report['faces'] else 'off'}; "
              f"{report['machine']['cpus']} CPUs)"), head, "-" * len(head)]
    for s in report["samples"]:
        rss = "-" if s["rss_mib"] is None else f"{s['rss_mib']:.1f}"
        lines.append(f"{s['minute']:>6} {s['utterances']:>11} {s['predictions']:>12} {rss:>9}")
    lines.append(f"utterances {report['utterances']}, predictions {report['predictions']}: lost {report['lost']}, "
                 f"duplicated {report['duplicated']}, unexpected {report['unexpected']}, errors {report['errors']}")
    if m.get("available"):
        lines.append(f"RSS minute {m['baseline_minute']} {m['baseline_mib']:.1f} MiB -> minute {m['last_minute']} "
                     f"{m['last_mib']:.1f} MiB: {m['growth_pct']:+.2f} % (limit {report['max_growth_pct']:g} %), "
                     f"peak {m['peak_mib']:.1f} MiB")
    else:
        lines.append("RSS: not measurable here (no /proc/self/status, no psutil)")
    lines.append("PASS" if report["passed"] else "FAIL: " + "; ".join(report["failures"]))
    return "\n".join(lines)


def soak_main(argv: list[str] | None = None) -> int:
    """``mmer-bench soak``; a leading "soak" argument is accepted and skipped. Exit code: 0 passed,
    3 (EXIT_GATE) a check failed, 2 usage, 4 environment (mmer.errors)."""
    from mmer.realtime.cli import add_common_options, resolve_config
    from mmer.realtime.make_sample import sample_path

    setup_logging(PROG)
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["soak"]:
        argv = argv[1:]
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    add_version(p)
    p.add_argument("--minutes", type=int, default=DEFAULT_MINUTES,
                   help="stream-minutes to replay (default %(default)s)")
    p.add_argument("--input", metavar="FILE", help="wav/mp4 recording to loop (default: the shipped sample)")
    p.add_argument("--transcript", metavar="FILE", help="turns JSON giving the words with --asr none "
                   "(default: the input's .json next to it, as make_sample writes)")
    p.add_argument("--no-face", action="store_true", help="no face path even when the input has video")
    p.add_argument("--max-growth-pct", type=float, default=DEFAULT_MAX_GROWTH_PCT,
                   help="RSS growth limit from the baseline minute to the last (default %(default)s)")
    p.add_argument("--baseline-minute", type=int, default=DEFAULT_BASELINE_MINUTE,
                   help="the minute RSS growth is measured from (default %(default)s; the first minute in "
                        "shorter runs)")
    add_common_options(p)  # its --json is the JSON report here
    p.set_defaults(asr="none")          # the fastest path that still runs every other stage
    p._option_string_actions["--asr"].help = ("speech-to-text backend (default none: each utterance gets the "
                                              "words of its transcript turn; shared-encoder: Whisper tiny.en)")
    args = p.parse_args(argv)
    json_out, args.json = args.json, None
    if args.no_face:
        args.face_model = "none"
    input_path = Path(args.input) if args.input else sample_path()
    try:
        cfg = resolve_config(args)
        if not input_path.is_file():
            raise UsageError(f"{input_path}: file not found")
        report = soak(input_path, args.minutes, json_out, cfg, args.max_growth_pct, args.baseline_minute,
                      args.transcript)
    except MmerError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return e.exit_code
    return EXIT_OK if report["passed"] else EXIT_GATE


if __name__ == "__main__":
    sys.exit(soak_main())
