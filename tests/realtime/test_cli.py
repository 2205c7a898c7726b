"""mmer-live / mmer-predict / mmer-bench live as a user runs them (functions and one real process)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mmer.realtime.bench import bench_live_main
from mmer.realtime.cli import EXIT_USAGE, build_live_parser, live_main, predict_main
from mmer.realtime.make_sample import sample_path
from tests.realtime import media
from tests.realtime.test_face_path import face_model  # noqa: F401  (skips without default-face)
from tests.realtime.test_predictor import tiny_checkpoints, tiny_teacher, tiny_voice  # noqa: F401
from tests.realtime.test_predictor import tiny_asf, tiny_face_student  # noqa: F401

REPO = Path(__file__).resolve().parents[2]
STARTUP_DEADLINE_S = 300  # imports + model loading + the first utterance; generous for a busy shared CI box


@pytest.fixture(scope="module")
def models(tiny_checkpoints, face_model):  # noqa: F811
    """Flags selecting the tiny text and voice models (the face model is the shipped default)."""
    return ["--text-model", str(tiny_checkpoints["text"]), "--voice-model", str(tiny_checkpoints["voice"])]


def sample_turns() -> list[dict]:
    return json.loads(sample_path().with_suffix(".json").read_text())["turns"]


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit) as stop:
        live_main(["--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    for action in build_live_parser()._actions:
        assert action.help, f"{action.option_strings or action.dest} has no help"
        for option in action.option_strings:
            assert option in text
    for option in ("--camera", "--mic", "--input", "--realtime", "--fast", "--list-devices", "--config", "--json",
                   "--ws", "--show", "--asr", "--text-model", "--voice-model", "--face-model", "--fusion-model",
                   "--no-camera", "--demo"):
        assert option in text


def test_missing_camera_is_reported_before_any_model_loads(capsys):
    t0 = time.perf_counter()
    assert live_main(["--camera", "9", "--text-model", "/nonexistent/model"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "camera 9" in err and "--no-camera" in err and "--demo" in err
    assert "could not load the models" not in err and "modalities:" not in err
    assert time.perf_counter() - t0 < 30


def test_shipped_yaml_equals_the_defaults_and_flags_override_it(tmp_path):
    from mmer.realtime.cli import resolve_config
    from mmer.realtime.config import LiveConfig, default_config_file, load_live_config

    assert load_live_config(default_config_file()) == LiveConfig()
    args = build_live_parser().parse_args(["--no-camera", "--fast", "--asr", "none", "--voice-model", "none",
                                           "--ws", "0", "segmenter.end_silence_ms=400"])
    cfg = resolve_config(args)
    assert cfg.sources.camera is None and not cfg.sources.realtime and cfg.asr.backend == "none"
    assert cfg.models.voice is None and cfg.models.text == "default-text" and cfg.outputs.ws_port == 0
    assert cfg.segmenter.end_silence_ms == 400.0


def test_list_devices_never_fails(capsys):
    assert live_main(["--list-devices"]) == 0
    out = capsys.readouterr().out
    assert "Audio input devices" in out and "Cameras" in out


def test_bad_config_key_and_missing_model(capsys, models):
    assert live_main(["--demo", "segmenter.end_silence_msec=300"]) == EXIT_USAGE
    assert "closest valid key: 'end_silence_ms'" in capsys.readouterr().err
    assert live_main(["--demo", "--fast", "--asr", "none", "--text-model", "/nonexistent/model"]) == EXIT_USAGE
    assert "could not load the models" in capsys.readouterr().err


def test_demo_replays_the_shipped_sample(models, tmp_path, capsys):
    assert sample_path().is_file() and sample_path().stat().st_size < 1.5e6
    out = tmp_path / "demo.jsonl"
    assert live_main(["--demo", "--fast", "--asr", "none", "--json", str(out), *models, "face.max_fps=3"]) == 0
    err = capsys.readouterr().err
    assert "modalities: text, audio, visual; fusion: late" in err and "provenance: recipe=tiny random" in err
    assert "face:   visual_student 'default-face'" in err and "mmer-live stats: utterances=4" in err
    got = [json.loads(line) for line in out.read_text().splitlines()]
    turns = sample_turns()
    assert [p["text"] for p in got] == [t["text"] for t in turns]
    assert [p["speaker"] for p in got] == [t["speaker"] for t in turns]
    assert all(p["modalities"] == ["text", "audio", "visual"] for p in got)
    assert all(abs(p["start_s"] - t["start_s"]) < 0.2 for p, t in zip(got, turns))


def test_predict_files_and_transcript_csv(models, tmp_path, capsys):
    if media.missing_tools():
        pytest.skip(f"needs {media.missing_tools()}")
    wav = tmp_path / "two.wav"
    media.make_conversation_wav(wav, ["Good morning to you.", "I cannot believe it!"])
    transcript = tmp_path / "dialogues.csv"
    media.write_meld_csv(transcript, [[1, "Where were you?", "Monica", "anger", 0, 0, "00:00:01,000", "00:00:02,500"],
                                      [2, "Sorry, traffic.", "Joey", "sadness", 0, 1, "00:00:03,000", "00:00:04,000"],
                                      [3, "Hi!", "Rachel", "joy", 1, 0, "", ""]])
    out = tmp_path / "pred.jsonl"
    assert predict_main([str(wav), str(transcript), "--asr", "none", "--face-model", "none", "--json", str(out),
                         *models, "segmenter.end_silence_ms=500"]) == 0
    got = [json.loads(line) for line in out.read_text().splitlines()]
    text_rows = [p for p in got if p["file"].endswith(".csv")]
    audio_rows = [p for p in got if p["file"].endswith(".wav")]
    assert [(p["dialogue_id"], p["utterance_id"], p["speaker"]) for p in text_rows] == [
        ("0", 0, "Monica"), ("0", 1, "Joey"), ("1", 0, "Rachel")]
    assert all(p["modalities"] == ["text"] for p in text_rows) and text_rows[0]["end_s"] == 2.5
    assert len(audio_rows) == 2 and all(p["modalities"] == ["audio"] for p in audio_rows)
    table = tmp_path / "pred.csv"
    assert predict_main([str(transcript), "--csv", str(table), *models]) == 0
    rows = list(csv.DictReader(open(table, encoding="utf-8")))
    assert len(rows) == 3 and rows[0]["speaker"] == "Monica" and float(rows[0]["p_neutral"]) >= 0
    assert "3 predictions" in capsys.readouterr().err


def test_bench_live_reports_every_stage(models, tmp_path, capsys):
    if media.missing_tools():
        pytest.skip(f"needs {media.missing_tools()}")
    from tests.realtime.test_face_path import astronaut_frame

    turns = ["Good morning, I am glad you are here.", "Thank you so much."]
    wav, mp4 = tmp_path / "two.wav", tmp_path / "two.mp4"
    bounds = media.make_conversation_wav(wav, turns)
    media.make_mp4(mp4, wav, lambda i: astronaut_frame(i % 6), fps=5)
    mp4.with_suffix(".json").write_text(json.dumps({"turns": [
        {"speaker": "user", "text": t, "start_s": s, "end_s": e} for t, (s, e) in zip(turns, bounds)]}))
    report = tmp_path / "bench.json"
    assert bench_live_main(["live", "--input", str(mp4), "--json", str(report), "--repeats", "2",
                            "--no-asr-run", *models]) == 0
    result = json.loads(report.read_text())
    stages = result["runs"]["without_asr"]["stages_ms"]
    for stage in ("capture_to_end_of_speech", "text", "voice", "face", "fusion", "end_of_speech_to_emit"):
        assert stages[stage]["n"] == 4 and stages[stage]["p95"] >= stages[stage]["p50"] >= 0
        assert len(stages[stage]["samples_ms"]) == 4
    assert result["camera_path"]["fps"] > 0 and result["camera_path"]["faces_found"] > 0
    out = capsys.readouterr()
    assert "end_of_speech_to_emit" in out.out
    # The per-stage histogram next to the JSON: one panel per stage that was timed, no empty one.
    assert report.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"latency histogram -> {report.with_suffix('.png')}" in out.err
    from mmer.realtime.bench import STAGES, histogram_figure
    fig = histogram_figure(result)
    assert [ax.get_title() for ax in fig.axes] == [f"{s} (per utterance)" for s in STAGES if s in stages]
    assert {ax.get_xscale() for ax in fig.axes} == {"log"}


def test_ctrl_c_flushes_and_exits_cleanly(models, tmp_path):
    out = tmp_path / "live.jsonl"
    main = "import sys; from mmer.realtime.cli import live_main; sys.exit(live_main(sys.argv[1:]))"
    cmd = [sys.executable, "-c", main, "--demo", "--realtime", "--asr", "none", "--json", str(out), *models,
           "face.max_fps=3"]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.perf_counter() + STARTUP_DEADLINE_S
        while time.perf_counter() < deadline and proc.poll() is None:
            if out.is_file() and out.read_text().count("\n") >= 1:  # the first utterance was emitted
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.stderr.read()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "stopping" in err and "mmer-live stats:" in err and "Traceback" not in err
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert 1 <= len(got) < len(sample_turns()) and [p["utterance_id"] for p in got] == list(range(len(got)))


def _run_cli(command: str, args: list[str]) -> subprocess.Popen:
    main = f"import sys; from mmer.realtime.cli import {command} as main; sys.exit(main(sys.argv[1:]))"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.Popen([sys.executable, "-c", main, *args], cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)


def _wait_for_lines(proc: subprocess.Popen, out: Path, lines: int) -> None:
    deadline = time.perf_counter() + STARTUP_DEADLINE_S
    while time.perf_counter() < deadline and proc.poll() is None:
        if out.is_file() and out.read_text().count("\n") >= lines:
            return
        time.sleep(0.1)
    assert proc.poll() is None, proc.stderr.read()


def test_bad_or_busy_websocket_port_exits_2_before_models_load(models, capsys):
    import socket

    t0 = time.perf_counter()
    assert live_main(["--demo", "--ws", "99999", *models]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "99999" in err and "modalities:" not in err and "Traceback" not in err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert live_main(["--demo", "--ws", str(port), *models]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert str(port) in err and "--ws" in err and "modalities:" not in err and "could not load" not in err
    assert time.perf_counter() - t0 < 10  # well under the model-loading time


def test_banner_names_only_what_the_input_gives(models, tmp_path, capsys):
    if media.missing_tools():
        pytest.skip(f"needs {media.missing_tools()}")
    wav = tmp_path / "one.wav"
    media.make_conversation_wav(wav, ["Good morning to you."])
    assert live_main(["--input", str(wav), "--fast", "--asr", "none", "--json", str(tmp_path / "o.jsonl"),
                      *models]) == 0
    err = capsys.readouterr().err
    assert "modalities: text, audio; fusion" in err and "face:" not in err


def test_sigterm_during_a_replay_flushes_and_prints_the_stats(models, tmp_path):
    out = tmp_path / "live.jsonl"
    proc = _run_cli("live_main", ["--demo", "--realtime", "--asr", "none", "--json", str(out), *models,
                                  "face.max_fps=3"])
    try:
        _wait_for_lines(proc, out, 1)
        time.sleep(1.0)  # inside the next turn: a pending utterance to flush
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err  # docs/errors.md: a stop asked by a signal, after the flush, is 0
    assert "SIGTERM" in err and "mmer-live stats:" in err and "Traceback" not in err
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert 2 <= len(got) <= len(sample_turns()) and [p["utterance_id"] for p in got] == list(range(len(got)))
    assert f"predictions={len(got)}" in err and "pending=0" in err


def test_a_second_signal_aborts_at_once(models, tmp_path):
    # Issue #12: the second, "abort" Ctrl-C hung 1 run in 3. Now it ends the process within seconds.
    out = tmp_path / "live.jsonl"
    proc = _run_cli("live_main", ["--demo", "--realtime", "--asr", "none", "--json", str(out), *models,
                                  "face.max_fps=3"])
    try:
        _wait_for_lines(proc, out, 1)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        t0 = time.perf_counter()
        _, err = proc.communicate(timeout=30)
        took_s = time.perf_counter() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode in (0, 130), err  # 0 when the flush finished before the second signal
    assert took_s < 10 and "mmer-live stats:" in err and "Traceback" not in err


@pytest.fixture(scope="module")
def recordings(tmp_path_factory):
    """Two good wavs and a corrupt mp4 (the first half of a real one)."""
    if media.missing_tools():
        pytest.skip(f"needs {media.missing_tools()}")
    from tests.realtime.test_face_path import astronaut_frame

    folder = tmp_path_factory.mktemp("recordings")
    good, good2, whole = folder / "good.wav", folder / "good2.wav", folder / "whole.mp4"
    media.make_conversation_wav(good, ["Good morning to you.", "I cannot believe it!"])
    media.make_conversation_wav(good2, ["Where were you last night?"])
    media.make_mp4(whole, good, lambda i: astronaut_frame(i % 6), fps=5)
    corrupt = folder / "corrupt.mp4"
    data = whole.read_bytes()
    corrupt.write_bytes(data[: len(data) // 2])
    return good, corrupt, good2


def test_predict_keeps_the_good_files_and_names_the_bad_one(models, recordings, tmp_path, capsys):
    good, corrupt, good2 = recordings
    out = tmp_path / "pred.jsonl"
    code = predict_main([str(good), str(corrupt), str(good2), "--asr", "none", "--json", str(out), *models])
    err = capsys.readouterr().err
    assert code == EXIT_USAGE and str(corrupt) in err and "skipped" in err and "Traceback" not in err
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [p["file"] for p in got if p["file"] != str(corrupt)] == [str(good)] * 2 + [str(good2)]
    assert "2 of 3 file(s)" in err and "1 failed" in err


def test_ctrl_c_during_predict_exits_fast_and_keeps_the_finished_files(models, recordings, tmp_path):
    good, _, good2 = recordings
    out = tmp_path / "pred.jsonl"
    files = [str(good)] + [str(good2)] * 30  # far more than finishes before the Ctrl-C
    proc = _run_cli("predict_main", [*files, "--asr", "none", "--json", str(out), *models])
    try:
        _wait_for_lines(proc, out, 3)  # the first file and a bit
        t0 = time.perf_counter()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        stopped_in_s = time.perf_counter() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert stopped_in_s < 15 and "SIGINT" in err and "Traceback" not in err and "mmer-live" not in err
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [p["file"] for p in got[:2]] == [str(good)] * 2 and 3 <= len(got) < 2 + 30
