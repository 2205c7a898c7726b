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
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from mmer.config import ConfigError
from mmer.runtime import RuntimeUnavailable
from mmer.realtime.config import LiveConfig, load_live_config

EXIT_USAGE = 2        # bad arguments, missing device, file or model: nothing ran
MODEL_FLAGS = ("text", "voice", "face", "fusion")
NONE_WORDS = ("none", "off", "null")
AUDIO_ONLY_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg")
PROG = "mmer-live"


def _err(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr)


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
    src = p.add_argument_group("input")
    src.add_argument("--camera", type=int, metavar="INDEX", help="camera index (default 0)")
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
                     "host messages (turn / text / reset)")
    out.add_argument("--show", action="store_true", help="OpenCV window: face box, label, probability bars")
    return p


def resolve_config(args: argparse.Namespace) -> LiveConfig:
    """Config file + overrides, then the command-line flags on top."""
    cfg = load_live_config(args.config, args.overrides)
    rep = dataclasses.replace
    sources, models, asr, outputs = cfg.sources, cfg.models, cfg.asr, cfg.outputs
    if getattr(args, "camera", None) is not None:
        sources = rep(sources, camera=args.camera)
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
    if getattr(args, "show", False):
        outputs = rep(outputs, show=True)
    return rep(cfg, sources=sources, models=models, asr=asr, outputs=outputs)


def open_sources(cfg: LiveConfig) -> tuple[Any, Any]:
    """Open (and so check) the input: a FileSource, or microphone + camera; raises on failure."""
    from mmer.realtime.sources import CameraSource, FileSource, MicrophoneSource

    s = cfg.sources
    if s.input:
        return FileSource(s.input, realtime=s.realtime, block_ms=s.audio_block_ms,
                          include_video=s.camera is not None and cfg.models.face is not None).open(), None
    origin = time.perf_counter()  # one clock for both devices
    cam = None
    if s.camera is not None and cfg.models.face is not None:  # the camera first: the device most often missing
        cam = CameraSource(s.camera, s.camera_width_px, s.camera_height_px, s.camera_fps,
                           clock_origin_s=origin).open()
    try:
        mic = MicrophoneSource(_device(s.mic), block_ms=s.audio_block_ms, clock_origin_s=origin).open()
    except Exception:
        if cam is not None:
            cam.close()
        raise
    return mic, cam


def _device(value: str | None) -> int | str | None:
    return int(value) if value is not None and value.isdigit() else value


def describe(pipeline: Any, cfg: LiveConfig) -> list[str]:
    """Lines for stderr: active modalities, the models and where they came from, ASR, outputs."""
    from mmer.realtime.predictor import model_summary

    pred = pipeline.predictor
    sources = getattr(pred, "sources", {})
    active = pred.modalities
    lines = [f"modalities: {', '.join(active) or 'none'}; fusion: {pred.fusion_name}"]
    if pred.text is not None:
        lines.append("  text:   " + model_summary(pred.text, sources.get("text")))
    if pred.voice is not None:
        lines.append("  voice:  " + model_summary(pred.voice, sources.get("voice")))
    if pipeline.face_path is not None:
        face = pipeline.face_path.face_model
        lines.append("  face:   " + model_summary(getattr(face, "model", face), sources.get("face"))
                     + f", Haar detector, <= {cfg.face.max_fps:g} fps")
    fusion = pred.asf if pred.asf is not None else pred.late_fusion
    lines.append("  fusion: " + model_summary(fusion, sources.get("fusion") or "built-in late fusion"))
    asr = pipeline.asr
    lines.append(f"speech-to-text: {asr.name}" + (f" ({getattr(asr, 'model_dir', '')})" if asr.name != "none" else
                                                 " (text from the host, if any)"))
    out = cfg.outputs
    outs = [f"json -> {'stdout' if out.json == '-' else out.json}"] if out.json else []
    if pipeline.websocket is not None:
        outs.append(f"websocket ws://{out.ws_host}:{pipeline.websocket.port}")
    if out.show:
        outs.append("overlay" if pipeline.overlay.enabled else f"overlay off: {pipeline.overlay.reason}")
    lines.append("outputs: " + (", ".join(outs) or "none"))
    return lines


def _install_sigint(pipeline: Any) -> Any:
    """First Ctrl-C: stop reading, flush, exit 0. Second: abort at once."""
    def handler(signum, frame):
        if pipeline.stopping:
            raise KeyboardInterrupt
        print(f"\n{PROG}: stopping (Ctrl-C again to abort)", file=sys.stderr)
        pipeline.stop()

    try:
        return signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread (embedded): leave signals alone
        return None


def live_main(argv: list[str] | None = None) -> int:
    """``mmer-live``; returns the process exit code."""
    from mmer.extras import MissingExtra
    from mmer.realtime.make_sample import feed_transcript, sample_path
    from mmer.realtime.sources import DeviceError, SourceError, list_devices

    args = build_live_parser().parse_args(argv)
    if args.list_devices:
        print(list_devices())
        return 0
    if args.demo:
        args.input = args.input or str(sample_path())
    try:
        cfg = resolve_config(args)
    except ConfigError as e:
        _err(str(e))
        return EXIT_USAGE
    demo_transcript = Path(cfg.sources.input).with_suffix(".json") if args.demo else None
    if cfg.sources.input and Path(cfg.sources.input).suffix.lower() in AUDIO_ONLY_SUFFIXES:
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
    except SourceError as e:
        _err(str(e))
        return EXIT_USAGE
    devices = not cfg.sources.input
    if devices:  # checked; reopened once the models are loaded, so nothing overflows meanwhile
        for opened in (source, camera):
            if opened is not None:
                opened.close()
    # 2. Models.
    if cfg.asr.backend == "none" and cfg.outputs.ws_port is None and demo_transcript is None:
        cfg = dataclasses.replace(cfg, asr=dataclasses.replace(cfg.asr, text_wait_s=0.0))
    try:
        # A replay faster than real time must not drop camera frames: the face path waits instead.
        fast_replay = bool(cfg.sources.input) and not cfg.sources.realtime
        pipeline = _build_pipeline(cfg, demo_transcript, block_frames=fast_replay)
    except KeyError as e:                # an unknown runtime name in the config, with the closest one
        source.close()
        _err(f"could not load the models: {e.args[0]}")
        return EXIT_USAGE
    except (FileNotFoundError, ValueError, MissingExtra, OSError, RuntimeUnavailable) as e:
        source.close()
        _err(f"could not load the models: {e}")
        return EXIT_USAGE
    if demo_transcript is not None and pipeline.asr.name == "none" and demo_transcript.is_file():
        feed_transcript(pipeline, demo_transcript)
    for line in describe(pipeline, cfg):
        print(f"{PROG}: {line}", file=sys.stderr)
    # 3. Run.
    previous = _install_sigint(pipeline)
    code = 0
    try:
        pipeline.warmup()
        if devices:
            source, camera = open_sources(cfg)
        reopen = (lambda: open_sources(cfg)) if cfg.sources.reconnect and devices else None
        code = pipeline.run(source, camera, reopen)
    except DeviceError as e:
        _err(str(e))
        code = EXIT_USAGE
    finally:
        pipeline.close()
        for opened in (source, camera):
            if opened is not None:
                opened.close()
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
        print(pipeline.stats_line(), file=sys.stderr)
    return code


def _build_pipeline(cfg: LiveConfig, demo_transcript: Path | None, **kwargs: Any) -> Any:
    """A LivePipeline; a demo without an installed ASR model falls back to the transcript."""
    from mmer.extras import MissingExtra
    from mmer.realtime.asr import make_asr
    from mmer.realtime.pipeline import LivePipeline

    asr = None
    if demo_transcript is not None and cfg.asr.backend != "none":
        try:
            asr = make_asr(cfg.asr.backend, cfg.asr.model_dir)
        except (MissingExtra, FileNotFoundError) as e:
            _err(f"speech-to-text unavailable ({e}); the demo reads the sample's transcript instead")
            asr = make_asr("none")
    return LivePipeline(cfg, asr=asr, **kwargs)


# -- mmer-predict ---------------------------------------------------------------------------------
MELD_COLUMNS = ("Utterance", "Speaker", "Dialogue_ID", "Utterance_ID")


def build_predict_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mmer-predict", description="Run the live pipeline on recorded wav/mp4 files as fast as possible "
        "(one JSON object per utterance), or the text model over the dialogues of a transcript CSV in MELD's "
        "columns (Utterance, Speaker, Dialogue_ID, Utterance_ID).")
    p.add_argument("files", nargs="+", metavar="FILE", help="wav/mp4 recordings, or one .csv transcript")
    add_common_options(p)
    p.add_argument("--csv", metavar="OUT", help="write a CSV table instead of JSON lines")
    return p


def _parse_time_s(text: str) -> float:
    """MELD's 'hh:mm:ss,mmm' -> seconds (0.0 when empty)."""
    if not text:
        return 0.0
    hms, _, ms = text.replace(".", ",").partition(",")
    h, m, s = (int(x) for x in hms.split(":"))
    return h * 3600 + m * 60 + s + (int(ms) / 1000 if ms else 0.0)


def predict_transcript(path: Path, cfg: LiveConfig) -> list[dict]:
    """Text-only predictions over every dialogue of a MELD-style CSV, each turn in its context."""
    from mmer.dialogue import Turn
    from mmer.realtime.frames import Utterance
    from mmer.realtime.predictor import Predictor, serve_model

    if not cfg.models.text:
        raise ValueError("a transcript CSV needs a text model (--text-model)")
    predictor = Predictor(text_model=serve_model("text", cfg.models.text, cfg.models))
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    missing = [c for c in MELD_COLUMNS if rows and c not in rows[0]]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}; expected MELD's {list(MELD_COLUMNS)}")
    dialogues: dict[str, list[dict]] = {}
    for row in rows:
        dialogues.setdefault(row["Dialogue_ID"], []).append(row)
    out = []
    for dia_id, dia in dialogues.items():
        dia.sort(key=lambda r: int(r["Utterance_ID"]))
        turns: list[Turn] = []
        for row in dia:
            turns = (turns + [Turn(row["Speaker"], row["Utterance"])])[-cfg.context.max_turns:]
            utt = Utterance(int(row["Utterance_ID"]), _parse_time_s(row.get("StartTime", "")),
                            _parse_time_s(row.get("EndTime", "")), audio=np.zeros(0, np.float32),
                            speaker=row["Speaker"], text=row["Utterance"])
            pred = predictor.predict(utt, turns).to_dict()
            pred["latency_ms"] = {k: round(v, 3) for k, v in utt.timings_ms.items()}
            out.append({"file": str(path), "dialogue_id": dia_id, **pred})
    return out


def write_csv(predictions: list[dict], path: str) -> None:
    """One row per prediction: ids, times, speaker, text, label, scores, one column per class."""
    from mmer.labels import get_label_set

    labels = get_label_set("meld7").labels
    head = ["file", "dialogue_id", "utterance_id", "start_s", "end_s", "speaker", "text", "label", "expression",
            "confidence", "valence", "arousal", "modalities"] + [f"p_{lab}" for lab in labels]
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(head)
        for p in predictions:
            w.writerow([p.get("file", ""), p.get("dialogue_id", ""), p["utterance_id"], p["start_s"], p["end_s"],
                        p["speaker"], p["text"] or "", p["label"], p["expression"], p["confidence"], p["valence"],
                        p["arousal"], "+".join(p["modalities"])] + [p["probs"][lab] for lab in labels])


def predict_main(argv: list[str] | None = None) -> int:
    """``mmer-predict``; returns the process exit code."""
    from mmer.extras import MissingExtra
    from mmer.realtime.sinks import JsonLinesSink
    from mmer.realtime.sources import FileSource, SourceError

    args = build_predict_parser().parse_intermixed_args(argv)
    # Both positionals are variadic, so argparse gives them all to FILE: split off KEY=VALUE.
    args.overrides = [f for f in args.files if "=" in f and not Path(f).exists()]
    args.files = [f for f in args.files if f not in args.overrides]
    try:
        cfg = resolve_config(args)
    except ConfigError as e:
        print(f"mmer-predict: {e}", file=sys.stderr)
        return EXIT_USAGE
    json_target = cfg.outputs.json if cfg.outputs.json is not None else "-"
    cfg = dataclasses.replace(cfg, outputs=dataclasses.replace(cfg.outputs, json=None, ws_port=None, show=False),
                              asr=dataclasses.replace(cfg.asr, text_wait_s=0.0))
    files = [Path(f) for f in args.files]
    if not files:
        print("mmer-predict: no input file given", file=sys.stderr)
        return EXIT_USAGE
    for f in files:
        if not f.is_file():
            print(f"mmer-predict: {f}: file not found", file=sys.stderr)
            return EXIT_USAGE
    results: list[dict] = []
    try:
        csvs = [f for f in files if f.suffix.lower() == ".csv"]
        for f in csvs:
            results += predict_transcript(f, cfg)
        media = [f for f in files if f not in csvs]
        if media:
            pipeline = _build_pipeline(cfg, None, block_frames=True)
            current: dict = {}
            pipeline.on_prediction(lambda p: results.append({"file": current["file"], **p}))
            try:
                for f in media:
                    current["file"] = str(f)
                    source = FileSource(f, realtime=False, block_ms=cfg.sources.audio_block_ms,
                                        include_video=pipeline.face_path is not None).open()
                    try:
                        pipeline.run(source)
                    finally:
                        source.close()
                    pipeline.reset()
            finally:
                pipeline.close()
    except (SourceError, FileNotFoundError, ValueError, MissingExtra, OSError) as e:
        print(f"mmer-predict: {e}", file=sys.stderr)
        return EXIT_USAGE
    if args.csv:
        write_csv(results, args.csv)
    else:
        sink = JsonLinesSink(json_target)
        for p in results:
            sink.emit(p)
        sink.close()
    print(f"mmer-predict: {len(results)} predictions from {len(files)} file(s)", file=sys.stderr)
    return 0
