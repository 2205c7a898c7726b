"""mmer-bench soak: the looping source's clock, the loss / growth arithmetic and the gate (fast),
then a few stream-minutes of the shipped sample through the real pipeline (slow)."""

from __future__ import annotations

import json
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest

from mmer.errors import EXIT_GATE, EXIT_OK, EXIT_USAGE, UsageError
from mmer.realtime.frames import SAMPLE_RATE_HZ, AudioChunk, UtteranceEnded, VideoFrame
from mmer.realtime.soak import (Ledger, LoopingSource, feed_looped_transcript, gate_failures, growth_pct,
                                memory_report, reconcile, rss_mib, soak, soak_main)

CHUNK_S = 0.5
PASS_S = 25.0                  # one fake pass: 50 audio chunks and a frame every second
FRAME_EVERY_S = 1.0


class FakePass:
    """A non-paced file source: audio chunks and frames of one ``PASS_S`` pass, clock from 0."""

    paced = False

    def __init__(self, audio: bool = True) -> None:
        n = int(PASS_S / CHUNK_S)
        chunks = [AudioChunk(np.zeros(int(CHUNK_S * SAMPLE_RATE_HZ), np.int16), i * CHUNK_S) for i in range(n)]
        frames = [VideoFrame(np.zeros((2, 2, 3), np.uint8), i * FRAME_EVERY_S, i) for i in range(int(PASS_S))]
        items = [(c.end_s, 1, c) for c in chunks] if audio else []
        items += [(f.time_s, 0, f) for f in frames]
        self.items = [item for _, _, item in sorted(items, key=lambda x: x[:2])]
        self.finished = False
        self.closed = False

    def read(self, timeout_s=None):
        if not self.items:
            self.finished = True
            return None
        return self.items.pop(0)

    def close(self) -> None:
        self.closed = True


def drain(source: LoopingSource) -> list:
    items = []
    while (item := source.read(0.1)) is not None:
        items.append(item)
    assert source.finished
    return items


def test_looping_source_keeps_one_forward_clock_and_ticks_every_minute():
    opened: list[FakePass] = []
    ticks: list[tuple[int, float]] = []

    def open_pass() -> FakePass:
        opened.append(FakePass())
        return opened[-1]

    source = LoopingSource(open_pass, duration_s=130.0, on_minute=lambda m: ticks.append((m, source.stream_s)))
    items = drain(source)
    assert source.passes == len(opened) == 6 and all(p.closed for p in opened[:-1])  # 6 x 25 s >= 130 s
    audio = [i for i in items if isinstance(i, AudioChunk)]
    frames = [i for i in items if isinstance(i, VideoFrame)]
    assert len(audio) == 6 * 50 and len(frames) == 6 * 25
    starts = np.array([c.start_s for c in audio])
    np.testing.assert_allclose(starts, np.arange(len(audio)) * CHUNK_S)       # contiguous, no gap at a seam
    assert np.all(np.diff([f.time_s for f in frames]) > 0)
    assert source.stream_s == pytest.approx(150.0)
    # minute m is reported by the chunk that reaches m * 60 s, before it is handed on
    assert [m for m, _ in ticks] == [1, 2] and [t for _, t in ticks] == pytest.approx([60.0, 120.0])
    assert source.pass_start_s(60.2) == pytest.approx(50.0) and source.pass_start_s(149.0) == pytest.approx(125.0)
    assert source.read() is None


def test_looping_source_refuses_a_pass_without_audio_and_a_bad_duration():
    with pytest.raises(UsageError, match="no audio"):
        drain(LoopingSource(lambda: FakePass(audio=False), duration_s=60.0))
    with pytest.raises(UsageError):
        LoopingSource(FakePass, duration_s=0.0)


def test_growth_and_memory_report_pick_minute_10_or_the_first():
    assert growth_pct(400.0, 420.0) == pytest.approx(5.0)
    assert growth_pct(400.0, 390.0) == pytest.approx(-2.5)
    with pytest.raises(ValueError):
        growth_pct(0.0, 1.0)
    samples = [{"minute": m, "rss_mib": 400.0 + m} for m in range(1, 61)]
    rep = memory_report(samples, baseline_minute=10)
    assert (rep["baseline_minute"], rep["baseline_mib"], rep["last_minute"], rep["last_mib"]) == (10, 410.0, 60, 460.0)
    assert rep["growth_pct"] == pytest.approx(100 * 50 / 410, abs=0.01) and rep["max_mib"] == 460.0
    short = memory_report(samples[:3], baseline_minute=10)                     # a 3-minute run: from minute 1
    assert (short["baseline_minute"], short["last_minute"]) == (1, 3)
    assert short["growth_pct"] == pytest.approx(100 * 2 / 401, abs=0.01)
    assert memory_report(samples[:10], baseline_minute=10)["baseline_minute"] == 1   # minute 10 is the last
    assert memory_report([{"minute": 1, "rss_mib": None}]) == {"available": False}


def test_reconcile_and_the_gate():
    ended = Counter({0: 1, 1: 1, 2: 1, 3: 2})
    predicted = Counter({0: 1, 2: 2, 3: 1, 7: 1})
    assert reconcile(ended, predicted) == {"lost": [1], "duplicated": [2, 3], "unexpected": [7]}
    clean = reconcile(Counter({0: 1, 1: 1}), Counter({0: 1, 1: 1}))
    assert clean == {"lost": [], "duplicated": [], "unexpected": []}
    flat = {"available": True, "baseline_minute": 10, "last_minute": 60, "growth_pct": 4.99}
    assert gate_failures(clean, flat, max_growth_pct=5.0) == []
    grown = gate_failures(clean, dict(flat, growth_pct=5.0), max_growth_pct=5.0)
    assert len(grown) == 1 and "5.00 %" in grown[0]                           # >= the limit fails
    failures = gate_failures(reconcile(ended, predicted), flat, 5.0, errors=1)
    assert len(failures) == 4 and "1 lost" in failures[0] and "failed" in failures[-1]
    assert gate_failures(clean, {"available": False}, 5.0) == []


def test_ledger_and_the_looped_transcript():
    turns = [{"speaker": "alex", "text": "hi there", "start_s": 1.0, "end_s": 3.0},
             {"speaker": "sam", "text": "hello", "start_s": 5.0, "end_s": 7.0}]
    source = LoopingSource(FakePass, duration_s=60.0)
    drain(source)                                                            # passes start at 0, 25, 50 s
    calls, texts = [], []
    pipeline = SimpleNamespace(on_event=calls.append, push_text=lambda *a: texts.append(a))
    feed_looped_transcript(pipeline, turns, source)
    on_event = calls[0]
    on_event(UtteranceEnded(7, 55.1, 56.9))                                   # pass 3, second turn
    on_event(UtteranceEnded(8, 50.2, 50.5))                                   # overlaps no turn: no words
    assert texts == [(7, "hello", "sam")]
    ledger = Ledger()
    for i in range(3):
        ledger.on_event(UtteranceEnded(i, 0.0, 1.0))
    ledger.on_event(SimpleNamespace(kind="start"))                           # not an utterance end
    for i in (0, 1, 1):
        ledger.on_prediction(SimpleNamespace(utterance_id=i))
    assert ledger.totals() == (3, 3)
    assert ledger.check() == {"lost": [2], "duplicated": [1], "unexpected": []}


def test_rss_is_measurable_and_a_missing_input_is_a_usage_error(tmp_path, capsys):
    assert rss_mib() > 0
    assert soak_main(["soak", "--input", str(tmp_path / "none.mp4"), "--minutes", "1"]) == EXIT_USAGE
    assert "file not found" in capsys.readouterr().err


def _default_models_or_skip() -> None:
    from mmer.checkpoint import ASSETS_DIR, META

    missing = [n for n in ("default-text", "default-voice", "default-face") if not (ASSETS_DIR / n / META).is_file()]
    if missing:
        pytest.skip(f"embedded defaults not installed: {missing}")


@pytest.mark.slow
def test_three_stream_minutes_lose_nothing_and_report_memory(tmp_path, capsys):
    from mmer.realtime.config import load_live_config
    from mmer.realtime.make_sample import sample_path

    _default_models_or_skip()
    out = tmp_path / "soak.json"
    report = soak(sample_path(), minutes=3, json_out=out, config=load_live_config(overrides=["asr.backend=none"]),
                  max_growth_pct=50.0, progress=None)
    assert report == json.loads(out.read_text())
    assert (report["lost"], report["duplicated"], report["unexpected"], report["errors"]) == (0, 0, 0, 0)
    assert report["utterances"] == report["predictions"] == 4 * report["passes"]   # 4 turns per pass
    assert report["faces"] and report["passes"] * 18 >= 180 and report["stream_minutes"] >= 3
    assert [s["minute"] for s in report["samples"]] == [1, 2, 3]
    assert all(s["utterances"] == s["predictions"] > 0 and s["rss_mib"] > 100 for s in report["samples"])
    mem = report["memory"]
    assert (mem["baseline_minute"], mem["last_minute"]) == (1, 3)
    assert mem["growth_pct"] == pytest.approx(growth_pct(mem["baseline_mib"], mem["last_mib"]), abs=0.05)
    assert mem["peak_mib"] >= mem["max_mib"] - 0.1 and report["passed"]
    assert "utterances_without_text=0" in report["stats"]
    table = capsys.readouterr().out
    assert "RSS MiB" in table and "lost 0, duplicated 0" in table and table.rstrip().endswith("PASS")


@pytest.mark.slow
def test_a_failed_gate_exits_3(tmp_path, capsys):
    _default_models_or_skip()
    out = tmp_path / "soak.json"
    args = ["soak", "--minutes", "1", "--no-face", "--max-growth-pct", "-1000", "--json", str(out)]
    assert soak_main(args) == EXIT_GATE
    report = json.loads(out.read_text())
    assert not report["passed"] and not report["faces"] and report["lost"] == 0
    assert "RSS grew" in report["failures"][0] and "FAIL" in capsys.readouterr().out
    assert soak_main(args[:-4] + ["--json", str(out)]) == EXIT_OK
