"""``mmer-live`` and ``mmer-predict``: argparse fronts over :class:`LivePipeline`.

``mmer-live`` opens and checks the devices first (a missing camera is reported, with the fix,
before any model loads), then loads the models, says on stderr which modalities and models are
active, and streams one JSON object per utterance until the input ends or Ctrl-C.
``mmer-predict`` runs the same pipeline on recorded files as fast as possible, or the text
model alone over the dialogues of a MELD-style transcript CSV.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import logging
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from mmer.cli import add_version
from mmer.config import ConfigError, check_ranges
from mmer.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, MmerError, UsageError, setup_logging
from mmer.realtime.config import LiveConfig, load_live_config

log = logging.getLogger(__name__)

MODEL_FLAGS = ("text", "voice", "face", "fusion")
NONE_WORDS = ("none", "off", "null")
AUDIO_ONLY_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg")
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)   # Ctrl-C; what systemctl stop and docker stop send
PROG = "mmer-live"


def _err(message: str, prog: str = PROG) -> None:
    print(f"{prog}: {message}", file=sys.stderr)


def add_common_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by mmer-live and mmer-predict: config, ASR, models, outputs."""
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides, e.g. segmenter.end_silence_ms=400 (see configs/live.yaml)")
    parser.add_argument("--config", metavar="FILE", help="a live.yaml with settings (defaults <- FILE <- overrides)")
    parser.add_argument("--asr", choices=("shared-encoder", "faster-whisper", "hf-whisper", "none"),
                        help="speech-to-text backend (default shared-encoder: the packaged Whisper tiny.en on one "
                             "encoder pass shared with the voice model; faster-whisper: the same model padded to "
                             "30 s); 'none': no transcription, the host supplies text")
    parser.add_argument("--asr-model", metavar="DIR", help="speech-to-text model folder (hf-whisper needs one)")
    for name, what in (("text", "text teacher"), ("voice", "voice model"), ("face", "face-expression model")):
        parser.add_argument(f"--{name}-model", metavar="PATH|NAME",
                            help=f"{what}: checkpoint folder, embedded name (default default-{name}) or an "
                                 "export folder from mmer-export; 'none' turns the modality off")
    parser.add_argument("--runtime", metavar="NAME",
                        help="what serves the text, voice and face models: auto (default: an export folder's own "
                             "runtime; checkpoints on onnxruntime on the CPU, built once into ~/.cache/mmer), torch, "
                             "onnxruntime, tensorrt, tensorrt-rtx; per modality: models.text_runtime=... overrides")
    parser.add_argument("--fusion-model", metavar="PATH", help="a late_fusion or asf checkpoint folder (default: "
                        "late fusion built from the three models' label sets)")
    parser.add_argument("--device", help="torch device for the models, e.g. cpu or cuda (default cpu)")
    parser.add_argument("--json", metavar="FILE", help="write JSON lines to FILE ('-' = stdout, the default)")


def build_live_parser() -> argparse.ArgumentParser:
    """The ``mmer-live`` argument parser (every option documented in --help)."""
    p = argparse.ArgumentParser(
        prog=PROG, description="Live multimodal emotion recognition: microphone + camera in, one JSON "
        "prediction per utterance out (stdout, --json FILE, --ws PORT, --show).",
        epilog="No camera or microphone here? Try the shipped sample: mmer-live --demo")
    add_version(p)
    src = p.add_argument_group("input")
    src.add_argument("--camera", metavar="INDEX|PATH|URL", help="camera: an index (default 0), a device path "
                     "(/dev/video2), or a URL / GStreamer pipeline OpenCV can open")
    src.add_argument("--no-camera", action="store_true", help="audio only: no camera, no face modality")
    src.add_argument("--mic", metavar="DEVICE", help="microphone: sounddevice index or name (default: system default)")
    src.add_argument("--input", metavar="FILE", help="replay a wav/mp4 recording instead of the devices")
    pace = src.add_mutually_exclusive_group()
    pace.add_argument("--realtime", dest="realtime", action="store_true", default=None,
                      help="replay --input at the recording's pace (default)")
    pace.add_argument("--fast", dest="realtime", action="store_false", help="replay --input as fast as possible")
    src.add_argument("--demo", action="store_true",
                     help="replay the shipped sample conversation (a face + espeak-ng voices)")
    src.add_argument("--list-devices", action="store_true", help="list microphones and cameras, then exit")
    add_common_options(p)
    out = p.add_argument_group("outputs")
    out.add_argument("--ws", type=int, metavar="PORT", help="serve predictions on ws://127.0.0.1:PORT and accept "
                     "host messages (turn / text / reset); 0 picks a free port")
    out.add_argument("--ws-origin", action="append", metavar="ORIGIN", default=None,
                     help="a web page allowed to connect (e.g. http://localhost:3000; repeatable). Native "
                     "clients (no Origin header) and mmer's own page are always allowed, other sites refused")
    out.add_argument("--ws-token", metavar="SECRET", help="clients must present SECRET (?token=SECRET or "
                     "Authorization: Bearer SECRET)")
    out.add_argument("--web", type=int, metavar="PORT", help="serve the live page on http://127.0.0.1:PORT/ (label, "
                     "probability bars, valence/arousal, transcript, face box, latency), from the websocket on "
                     "the same port (opened there when --ws is not given); 0 picks a free port")
    out.add_argument("--show", action="store_true", help="OpenCV window: face box, label, probability bars")
    return p


def resolve_config(args: argparse.Namespace) -> LiveConfig:
    """Config file + overrides, then the command-line flags on top."""
    cfg = load_live_config(args.config, args.overrides)
    rep = dataclasses.replace
    sources, models, asr, outputs = cfg.sources, cfg.models, cfg.asr, cfg.outputs
    if getattr(args, "camera", None) is not None:
        sources = rep(sources, camera=int(args.camera) if args.camera.isdigit() else args.camera)
    if getattr(args, "no_camera", False):
        sources = rep(sources, camera=None)
    if getattr(args, "mic", None) is not None:
        sources = rep(sources, mic=args.mic)
    if getattr(args, "input", None):
        sources = rep(sources, input=args.input)
    if getattr(args, "realtime", None) is not None:
        sources = rep(sources, realtime=args.realtime)
    for name in MODEL_FLAGS:
        value = getattr(args, f"{name}_model", None)
        if value is not None:
            models = rep(models, **{name: None if value.lower() in NONE_WORDS else value})
    if args.device:
        models = rep(models, device=args.device)
    if getattr(args, "runtime", None):
        from mmer.runtime import RUNTIMES
        if args.runtime != "auto":
            try:
                RUNTIMES.get(args.runtime)
            except KeyError as e:        # names the closest registered runtime
                raise ConfigError(f"--runtime: {e.args[0]}") from None
        models = rep(models, runtime=args.runtime)
    if args.asr:
        asr = rep(asr, backend=args.asr)
    if args.asr_model:
        asr = rep(asr, model_dir=args.asr_model)
    if args.json:
        outputs = rep(outputs, json=args.json)
    if getattr(args, "ws", None) is not None:
        outputs = rep(outputs, ws_port=args.ws)
    if getattr(args, "web", None) is not None:
        outputs = rep(outputs, web_port=args.web)
    if getattr(args, "ws_origin", None):
        outputs = rep(outputs, ws_origins=tuple(outputs.ws_origins) + tuple(args.ws_origin))
    if getattr(args, "ws_token", None):
        outputs = rep(outputs, ws_token=args.ws_token)
    if getattr(args, "show", False):
        outputs = rep(outputs, show=True)
    cfg = rep(cfg, sources=sources, models=models, asr=asr, outputs=outputs)
    check_ranges(cfg, "the command line")  # the flags' values range-checked like the file's
    return cfg


def open_sources(cfg: LiveConfig, clock_origin_s: float | None = None) -> tuple[Any, Any]:
    """Open (and so check) the input: a FileSource, or microphone + camera; raises on failure.

    With ``sources.reconnect``, each device is wrapped to reopen itself when lost
    (:class:`mmer.realtime.reading.ReconnectingSource`), on one stream clock.
    """
    from mmer.realtime.reading import ReconnectingSource
    from mmer.realtime.sources import CameraSource, FileSource, MicrophoneSource

    s = cfg.sources
    if s.input:
        return FileSource(s.input, realtime=s.realtime, block_ms=s.audio_block_ms,
                          include_video=s.camera is not None and cfg.models.face is not None).open(), None
    origin = time.perf_counter() if clock_origin_s is None else clock_origin_s  # one clock for both devices

    def camera() -> Any:
        return CameraSource(s.camera, s.camera_width_px, s.camera_height_px, s.camera_fps,
                            clock_origin_s=origin).open()

    def mic() -> Any:
        return MicrophoneSource(_device(s.mic), block_ms=s.audio_block_ms, clock_origin_s=origin).open()

    if s.reconnect:
        camera_opener, mic_opener = camera, mic
        camera = lambda: ReconnectingSource(camera_opener, s.reconnect_attempts, s.reconnect_wait_s)  # noqa: E731
        mic = lambda: ReconnectingSource(mic_opener, s.reconnect_attempts, s.reconnect_wait_s)  # noqa: E731
    cam = camera() if s.camera is not None and cfg.models.face is not None else None  # the device most often missing
    try:
        return mic(), cam
    except BaseException:
        if cam is not None:
            cam.close()
        raise


def _device(value: str | None) -> int | str | None:
    return int(value) if value is not None and value.isdigit() else value


def describe(pipeline: Any, cfg: LiveConfig) -> list[str]:
    """Lines for stderr: active modalities, the models and where they came from, ASR, outputs."""
    from mmer.realtime.predictor import model_summary

    pred = pipeline.predictor
    sources = pred.sources
    active = [m for m in pred.modalities if m != "visual" or pipeline.face_path is not None]
    lines = [f"modalities: {', '.join(active) or 'none'}; fusion: {pred.fusion_name}"]
    if pred.text is not None:
        lines.append("  text:   " + model_summary(pred.text, sources.get("text")))
    if pred.voice is not None:
        lines.append("  voice:  " + model_summary(pred.voice, sources.get("voice")))
    if pipeline.face_path is not None:
        lines.append("  face:   " + model_summary(pipeline.face_path.face_model.model, sources.get("face"))
                     + f", Haar detector, <= {cfg.face.max_fps:g} fps")
    fusion = pred.asf if pred.asf is not None else pred.late_fusion
    lines.append("  fusion: " + model_summary(fusion, sources.get("fusion") or "built-in late fusion"))
    asr = pipeline.asr
    lines.append(f"speech-to-text: {asr.name}" + (f" ({asr.model_dir}, {cfg.asr.device})" if asr.name != "none"
                                                 else " (text from the host, if any)"))
    out = cfg.outputs
    outs = [f"json -> {'stdout' if out.json == '-' else out.json}"] if out.json else []
    if pipeline.websocket is not None:
        guard = "token required" if out.ws_token else "no token"
        outs.append(f"websocket ws://{out.ws_host}:{pipeline.websocket.port} ({guard}; origins: native, own page"
                    + "".join(f", {o}" for o in out.ws_origins) + ")")
    if pipeline.overlay is not None:
        outs.append("overlay" if pipeline.overlay.enabled else f"overlay off: {pipeline.overlay.reason}")
    lines.append("outputs: " + (", ".join(outs) or "none"))
    page = pipeline.websocket.page_url() if pipeline.websocket is not None else None
    if page is not None:  # the secret is not printed: the user knows it
        lines.append(f"live page: {page}" + ("?token=<your --ws-token>" if out.ws_token else "")
                     + " (open it in a browser on this machine)")
    return lines


@contextmanager
def stop_on_signals(pipeline: Any, prog: str, stopped: list | None = None) -> Iterator[None]:
    """Ctrl-C or SIGTERM once: ``pipeline.stop()`` (the run flushes and returns); twice: abort
    (KeyboardInterrupt, once); more are ignored, so the stats line is still printed. Each signal
    is appended to ``stopped``. Once a signal came, the process is ending: later signals stay
    ignored after the block. Outside the main thread (embedded) signals are left alone."""
    seen: list[str] = []

    def handler(signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        seen.append(name)
        if stopped is not None:
            stopped.append(name)
        if len(seen) == 1:
            print(f"\n{prog}: {name}: stopping after the current utterance (again to abort)", file=sys.stderr)
            pipeline.stop()
        elif len(seen) == 2:
            raise KeyboardInterrupt

    previous = {}
    try:
        for sig in STOP_SIGNALS:
            previous[sig] = signal.signal(sig, handler)
    except ValueError:  # not the main thread
        pass
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, signal.SIG_IGN if seen else old)


def check_ws_port(cfg: LiveConfig) -> None:
    """A websocket (or live page) port that cannot be used fails now, before devices or models
    (PortError; ConfigError when --ws and --web name different ports)."""
    port = cfg.outputs.websocket_port()
    if port is not None:
        from mmer.realtime.websocket import check_port

        check_port(port, cfg.outputs.ws_host)


def live_main(argv: list[str] | None = None) -> int:
    """``mmer-live``; returns the process exit code (mmer.errors)."""
    setup_logging(PROG)
    args = build_live_parser().parse_args(argv)
    try:
        return _live(args)
    except MmerError as e:
        _err(str(e))
        return e.exit_code
    except KeyboardInterrupt:
        _err("aborted")
        return EXIT_INTERRUPTED
    except Exception:  # a bug: say so with the traceback, and exit 1
        log.exception("unexpected error")
        return EXIT_FAILED


def _live(args: argparse.Namespace) -> int:
    from mmer.extras import MissingExtra
    from mmer.realtime.build import build_pipeline, open_websocket
    from mmer.realtime.make_sample import feed_transcript, sample_path
    from mmer.realtime.sources import DeviceError, list_devices

    if args.list_devices:
        print(list_devices())
        return EXIT_OK
    if args.demo:
        args.input = args.input or str(sample_path())
    cfg = resolve_config(args)
    check_ws_port(cfg)
    demo_transcript = Path(cfg.sources.input).with_suffix(".json") if args.demo else None
    if cfg.sources.input and not _has_pictures(Path(cfg.sources.input)):
        cfg = dataclasses.replace(cfg, sources=dataclasses.replace(cfg.sources, camera=None))
    # 1. Devices first: a missing camera must not cost a model load to find out.
    try:
        source, camera = open_sources(cfg)
    except (DeviceError, MissingExtra) as e:
        _err(f"{e}")
        if cfg.sources.camera is not None and "camera" in str(e):
            _err("fix: plug in a camera, pick another one with --camera INDEX, or run audio-only with --no-camera")
        _err("no devices here? replay the shipped sample: mmer-live --demo "
             f"(= mmer-live --input {sample_path()})")
        return EXIT_USAGE
    _close(source, camera)  # checked; reopened once the models are loaded, so nothing overflows meanwhile
    source = camera = None
    # 2. The port, then the models.
    if cfg.asr.backend == "none" and cfg.outputs.websocket_port() is None and demo_transcript is None:
        cfg = dataclasses.replace(cfg, asr=dataclasses.replace(cfg.asr, text_wait_s=0.0))
    websocket = open_websocket(cfg)
    try:
        pipeline = build_pipeline(cfg, asr=_demo_asr(cfg, demo_transcript), websocket=websocket)
    except (FileNotFoundError, ValueError, OSError, KeyError) as e:  # a model folder or name that is wrong
        if websocket is not None:
            websocket.close()
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        raise UsageError(f"could not load the models: {message}") from e
    if demo_transcript is not None and pipeline.asr.name == "none" and demo_transcript.is_file():
        feed_transcript(pipeline, demo_transcript)
    for line in describe(pipeline, cfg):
        _err(line)
    # 3. Run.
    code = EXIT_OK
    abort = False
    with stop_on_signals(pipeline, PROG):
        try:
            pipeline.warmup()
            source, camera = open_sources(cfg)
            code = pipeline.run(source, camera)
        except KeyboardInterrupt:
            abort = True
            code = EXIT_INTERRUPTED
        finally:
            try:
                pipeline.close(abort=abort, timeout_s=2.0 if abort else 10.0)
            except KeyboardInterrupt:  # the abort signal came during the flush of close()
                code = EXIT_INTERRUPTED
                pipeline.close(abort=True, timeout_s=2.0)
            _close(source, camera)
            print(f"{PROG} {pipeline.stats_line()}", file=sys.stderr)
    return code


def _has_pictures(path: Path) -> bool:
    """Whether a recording has a video stream (a wav, or an mp4 of audio only, has none)."""
    if path.suffix.lower() in AUDIO_ONLY_SUFFIXES:
        return False
    from mmer.media import probe

    return probe(path).video is not None


def _close(*sources: Any) -> None:
    for src in sources:
        if src is not None:
            src.close()


def _demo_asr(cfg: LiveConfig, demo_transcript: Path | None) -> Any:
    """None (build it from the config), or for a demo without an installed ASR model: no ASR,
    so the demo reads the sample's transcript."""
    from mmer.extras import MissingExtra
    from mmer.realtime.asr import make_asr

    if demo_transcript is None or cfg.asr.backend == "none":
        return None
    try:
        return make_asr(cfg.asr.backend, cfg.asr.model_dir, device=cfg.asr.device, language=cfg.asr.language)
    except (MissingExtra, FileNotFoundError) as e:
        _err(f"speech-to-text unavailable ({e}); the demo reads the sample's transcript instead")
        return make_asr("none")


# -- mmer-predict ---------------------------------------------------------------------------------
PREDICT_PROG = "mmer-predict"


def build_predict_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PREDICT_PROG, description="Run the live pipeline on recorded wav/mp4 files as fast as possible "
        "(one JSON object per utterance, written as each file finishes), or the text model over the dialogues of "
        "a transcript CSV in MELD's columns (Utterance, Speaker, Dialogue_ID, Utterance_ID). A file that cannot "
        "be read is reported and skipped; the others' results are kept. Exit codes: 0 all done, 2 some file "
        "failed, 130 stopped by Ctrl-C or SIGTERM (finished files kept).")
    add_version(p)
    p.add_argument("files", nargs="+", metavar="FILE", help="wav/mp4 recordings, or .csv transcripts")
    add_common_options(p)
    p.add_argument("--csv", metavar="OUT", help="write a CSV table instead of JSON lines")
    return p


def predict_transcript(path: Path, cfg: LiveConfig, predictor: Any) -> Iterator[Any]:
    """Text-only predictions over every dialogue of a MELD-style CSV, each turn in its context:
    yields (dialogue id, Prediction) as each is made."""
    import numpy as np

    from mmer.dialogue import Turn
    from mmer.meld import read_meld_csv
    from mmer.realtime.frames import Utterance

    for dialogue in read_meld_csv(path):
        turns: list[Turn] = []
        for row in dialogue.rows:
            turns = (turns + [Turn(row.speaker, row.text)])[-cfg.context.max_turns:]
            utt = Utterance(row.utterance_id, row.start_s or 0.0, row.end_s or 0.0, audio=np.zeros(0, np.float32),
                            speaker=row.speaker, text=row.text)
            pred = predictor.predict(utt, turns)
            pred.latency_ms = dict(utt.timings_ms)
            yield str(dialogue.dialogue_id), pred


class CsvSink:
    """mmer-predict --csv: one row per prediction, written (and flushed) as it comes."""

    events = False
    name = "csv"
    HEAD = ["file", "dialogue_id", "utterance_id", "start_s", "end_s", "speaker", "text", "label", "expression",
            "confidence", "valence", "arousal", "modalities"]

    def __init__(self, path: str) -> None:
        from mmer.labels import get_label_set

        self.labels = get_label_set("meld7").labels
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._f = open(path, "w", encoding="utf-8", newline="")
        self._w = csv.writer(self._f)
        self._w.writerow(self.HEAD + [f"p_{lab}" for lab in self.labels])
        self.extra: dict = {}

    def emit(self, prediction: Any) -> None:
        p = prediction.to_dict()
        self._w.writerow([self.extra.get("file", ""), self.extra.get("dialogue_id", ""), p["utterance_id"],
                          p["start_s"], p["end_s"], p["speaker"], p["text"] or "", p["label"], p["expression"],
                          p["confidence"], p["valence"], p["arousal"], "+".join(p["modalities"])]
                         + [p["probs"][lab] for lab in self.labels])
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def predict_main(argv: list[str] | None = None) -> int:
    """``mmer-predict``; returns the process exit code (mmer.errors)."""
    setup_logging(PREDICT_PROG)
    args = build_predict_parser().parse_intermixed_args(argv)
    # Both positionals are variadic, so argparse gives them all to FILE: split off KEY=VALUE.
    args.overrides = [f for f in args.files if "=" in f and not Path(f).exists()]
    args.files = [f for f in args.files if f not in args.overrides]
    try:
        return _predict(args)
    except MmerError as e:
        _err(str(e), PREDICT_PROG)
        return e.exit_code
    except KeyboardInterrupt:
        _err("aborted; the files finished before are written", PREDICT_PROG)
        return EXIT_INTERRUPTED
    except Exception:
        log.exception("unexpected error")
        return EXIT_FAILED


def _predict(args: argparse.Namespace) -> int:
    from mmer.progress import progress
    from mmer.realtime.build import build_pipeline
    from mmer.realtime.predictor import Predictor, serve_model
    from mmer.realtime.sinks import JsonLinesSink
    from mmer.realtime.sources import FileSource

    cfg = resolve_config(args)
    files = [Path(f) for f in args.files]
    if not files:
        raise UsageError("no input file given")
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise UsageError(f"file not found: {', '.join(missing)}")
    cfg = dataclasses.replace(cfg, outputs=dataclasses.replace(cfg.outputs, json=None, ws_port=None, web_port=None,
                                                                    show=False),
                              asr=dataclasses.replace(cfg.asr, text_wait_s=0.0))
    sink = CsvSink(args.csv) if args.csv else JsonLinesSink(args.json or "-")
    counted = {"predictions": 0, "files_done": 0, "files_failed": 0}
    stopped: list[str] = []
    media = [f for f in files if f.suffix.lower() != ".csv"]
    pipeline = None
    try:
        if media:
            with_face = any(_may_have_pictures(f) for f in media)
            if not with_face:
                cfg = dataclasses.replace(cfg, sources=dataclasses.replace(cfg.sources, camera=None))
            pipeline = build_pipeline(cfg)
            pipeline.outputs.add(sink)
        text_predictor = None
        # A bar over the files on a terminal's stderr; not when the JSON lines scroll on that terminal.
        to_screen = not args.csv and (args.json or "-") == "-" and sys.stdout.isatty()
        bar = progress(files, PREDICT_PROG, enabled=len(files) > 1 and not to_screen, unit="file")
        with stop_on_signals(pipeline, PREDICT_PROG, stopped) if pipeline is not None else _nothing():
            for f in bar:
                if stopped:
                    break
                sink.extra = {"file": str(f)}
                before = pipeline.stats["predictions"] if pipeline is not None else 0
                try:
                    if f.suffix.lower() == ".csv":
                        if not cfg.models.text:
                            raise UsageError("a transcript CSV needs a text model (--text-model)")
                        text_predictor = text_predictor or Predictor(
                            text_model=serve_model("text", cfg.models.text, cfg.models))
                        for dia_id, pred in predict_transcript(f, cfg, text_predictor):
                            sink.extra = {"file": str(f), "dialogue_id": dia_id}
                            sink.emit(pred)
                            counted["predictions"] += 1
                    else:
                        source = FileSource(f, realtime=False, block_ms=cfg.sources.audio_block_ms,
                                            include_video=pipeline.face_path is not None).open()
                        try:
                            pipeline.run(source)
                        finally:
                            source.close()
                            pipeline.reset()
                        counted["predictions"] += pipeline.stats["predictions"] - before
                        if stopped:
                            bar.clear()
                            _err(f"{f}: stopped part way; its utterances so far are written", PREDICT_PROG)
                            break
                    counted["files_done"] += 1
                except (MmerError, OSError, ValueError) as e:
                    counted["files_failed"] += 1
                    if pipeline is not None:
                        counted["predictions"] += pipeline.stats["predictions"] - before
                    said = str(e)
                    bar.clear()   # the message on a line of its own; the bar redraws on the next file
                    _err(f"{said if said.startswith(str(f)) else f'{f}: {said}'}; skipped", PREDICT_PROG)
            bar.close()
    finally:
        if pipeline is not None:
            pipeline.close(timeout_s=5.0)
        else:
            sink.close()
    _err(f"{counted['predictions']} predictions from {counted['files_done']} of {len(files)} file(s)"
         + (f"; {counted['files_failed']} failed" if counted["files_failed"] else "")
         + (f"; stopped by {stopped[0]}" if stopped else ""), PREDICT_PROG)
    if stopped:
        return EXIT_INTERRUPTED
    return EXIT_USAGE if counted["files_failed"] else EXIT_OK


def _may_have_pictures(path: Path) -> bool:
    """Whether to load the face model for ``path``; a file that cannot be probed says so later."""
    try:
        return _has_pictures(path)
    except (MmerError, OSError):
        return False


@contextmanager
def _nothing() -> Iterator[None]:
    yield
