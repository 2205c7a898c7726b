"""``mmer-bench live``: replay a recording through the whole live pipeline and report latency.

    mmer-bench live --input mmer/assets/sample/conversation.mp4 --json bench_live.json   # + bench_live.png

The recording is replayed as fast as possible, in lockstep (each utterance is emitted before
the replay reads on, and work started before the end of speech gets the wall time it would
have live), so every utterance's latency is what it would be live, where utterances are
seconds apart, and never a queue behind the previous one. ``--paced`` replays in real time
instead, as a microphone delivers the audio. ``last_voiced_to_emit`` is the true end of speech
(the last voiced frame) -> emit: the end silence the segmenter waits plus end_of_speech_to_emit.
``end_of_speech_to_emit`` is split into ``turn_end_to_emit`` (utterances whose end was decided by
silence: the person stopped) and ``cut_to_emit`` (pieces cut while the person speaks on: a
monologue at ``segmenter.max_utterance_s``, or the recording's end).
The CPU time of the whole process per second of audio and of speech is reported with each run. Each model is warmed up first.
Two runs: without speech-to-text (the words come from the recording's transcript JSON next to
it when there is one, as a host with its own ASR would supply them) and with it. For every stage
of ``latency_ms`` it prints p50 / p95 over the utterances (``--repeats`` replays pool more of
them), and the camera path's own throughput: frames per second of face detection + expression
with nothing else running. With ``--json OUT.json`` it also writes OUT.png: one latency
histogram per stage (each run a curve, log x axis; mmer.plots).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from mmer.cli import add_version
from mmer.realtime.config import LiveConfig, load_live_config

STAGES = ("capture_to_end_of_speech", "asr_early", "asr_wait", "asr", "text_wait", "face_wait", "face", "text",
          "voice", "voice_wait", "fusion", "end_of_speech_to_emit", "last_voiced_to_emit", "turn_end_to_emit",
          "cut_to_emit")
DEFAULT_REPEATS = 3
HISTOGRAM_COLUMNS = 2      # eleven stages in one column would make a very tall picture
PERCENTILES = (50, 95)


def percentiles(values: list[float]) -> dict[str, float]:
    """{"p50", "p95", "n"} of ``values`` in ms (numpy's linear interpolation)."""
    if not values:
        return {"n": 0}
    out = {f"p{q}": round(float(np.percentile(values, q)), 3) for q in PERCENTILES}
    out["n"] = len(values)
    return out


def _replay(cfg: LiveConfig, input_path: Path, repeats: int, transcript: Path | None,
            name: str = "", paced: bool = False) -> tuple[dict, Any]:
    from mmer.progress import progress
    from mmer.realtime.make_sample import feed_transcript
    from mmer.realtime.build import build_pipeline
    from mmer.realtime.sources import FileSource

    pipeline = build_pipeline(cfg, lockstep=not paced)
    if pipeline.asr.name == "none" and transcript is not None:
        feed_transcript(pipeline, transcript)
    predictions: list[dict] = []
    pipeline.on_prediction(predictions.append)
    bar = progress(desc=f"mmer-bench live {name}".strip(), unit="utt")   # the total is known after one pass
    pipeline.on_prediction(lambda _: bar.update())
    try:
        pipeline.warmup()
        t0, cpu0 = time.perf_counter(), time.process_time()
        audio_s = 0.0
        for k in range(repeats):
            source = FileSource(input_path, realtime=paced, include_video=pipeline.face_path is not None).open()
            audio_s += source.duration_s
            try:
                pipeline.run(source)
            finally:
                source.close()
            pipeline.reset()
            if k == 0:
                bar.total = len(predictions) * repeats
                bar.refresh()
        wall_s, cpu_s = time.perf_counter() - t0, time.process_time() - cpu0
        stats = pipeline.stats_line()
    finally:
        pipeline.close()
        bar.close()
    silence_ms = cfg.segmenter.end_silence_ms - cfg.segmenter.frame_ms   # an end decided by silence
    for p in predictions:
        lat = p.latency_ms
        if "capture_to_end_of_speech" in lat and "end_of_speech_to_emit" in lat:
            # the true end of speech (the last voiced frame) -> emit: the silence too
            lat["last_voiced_to_emit"] = lat["capture_to_end_of_speech"] + lat["end_of_speech_to_emit"]
            # a turn that ended in silence, or a piece cut while the person speaks on (a monologue
            # at segmenter.max_utterance_s, or the recording's end)
            ended = lat["capture_to_end_of_speech"] >= silence_ms
            lat["turn_end_to_emit" if ended else "cut_to_emit"] = lat["end_of_speech_to_emit"]
    stages = {s: percentiles([p.latency_ms[s] for p in predictions if s in p.latency_ms]) for s in STAGES}
    for s, stage in stages.items():   # every utterance's value too, for the histogram
        if stage["n"]:
            stage["samples_ms"] = [round(p.latency_ms[s], 3) for p in predictions if s in p.latency_ms]
    speech_s = sum(p.end_s - p.start_s for p in predictions)
    result = {"utterances": len(predictions), "replay_wall_s": round(wall_s, 3),
              "paced": paced, "audio_s": round(audio_s, 3), "speech_s": round(speech_s, 3),
              # every thread of the process (capture, VAD, speech-to-text, models, face path)
              "cpu_s": round(cpu_s, 3), "cpu_s_per_audio_s": round(cpu_s / max(audio_s, 1e-9), 3),
              "cpu_s_per_speech_s": round(cpu_s / max(speech_s, 1e-9), 3),
              "modalities": sorted({m for p in predictions for m in p.modalities}),
              "stages_ms": {k: v for k, v in stages.items() if v["n"]}, "stats": stats}
    return result, pipeline


def camera_path_fps(face_model: Any, input_path: Path, track: str = "follow", torch_threads: int = 1) -> dict:
    """Face detection + expression over every frame of the file, nothing else running."""
    from mmer.progress import progress
    from mmer.realtime.face_path import FacePath
    from mmer.realtime.frames import VideoFrame
    from mmer.realtime.sources import FileSource

    path = FacePath(face_model, max_fps=1e9, block_when_behind=True, track=track, torch_threads=torch_threads)
    source = FileSource(input_path, realtime=False).open()
    frames = 0
    bar = progress(desc="mmer-bench live camera path", unit="frame")
    try:
        path.start()
        path.push(VideoFrame(np.zeros((240, 320, 3), np.uint8), -1.0, -1))  # warm-up, in the worker thread
        path.flush()
        path.frame_ms.clear()
        t0 = time.perf_counter()
        while (item := source.read()) is not None:
            if isinstance(item, VideoFrame):
                path.push(item)
                frames += 1
                bar.update()
        path.flush()
        wall_s = time.perf_counter() - t0
    finally:
        source.close()
        path.close()
        bar.close()
    times = list(path.frame_ms)
    return {"frames": frames, "fps": round(frames / wall_s, 1) if wall_s > 0 and frames else 0.0,
            "faces_found": path.stats["faces_found"], "frame_ms": percentiles(times)}


def bench_live(input: str | Path, json_out: str | Path | None = None, config: LiveConfig | None = None,
               repeats: int = DEFAULT_REPEATS, with_asr: bool = True, paced: bool = False) -> dict:
    """Run the benchmark on ``input``; print the table, write ``json_out``, return the results."""
    from mmer.extras import MissingExtra
    from mmer.realtime.cli import describe

    input_path = Path(input)
    cfg = config or load_live_config()
    cfg = dataclasses.replace(cfg, outputs=dataclasses.replace(cfg.outputs, json=None, ws_port=None, web_port=None,
                                                                    show=False),
                              sources=dataclasses.replace(cfg.sources, input=str(input_path), realtime=False))
    transcript = input_path.with_suffix(".json")
    transcript = transcript if transcript.is_file() else None
    results: dict[str, Any] = {"input": str(input_path), "repeats": repeats, "paced": paced, "runs": {},
                               "segmenter": dataclasses.asdict(cfg.segmenter), "asr_backend": cfg.asr.backend,
                               "machine": {"cpus": os.cpu_count(), "load_avg_1min": round(os.getloadavg()[0], 2)}}
    backend = cfg.asr.backend
    # Without speech-to-text the words come from the transcript; without one, nothing is waited for.
    runs = [("without_asr", dataclasses.replace(cfg, asr=dataclasses.replace(
        cfg.asr, backend="none", text_wait_s=cfg.asr.text_wait_s if transcript is not None else 0.0)))]
    if with_asr and backend != "none":
        runs.append(("with_asr", cfg))
    pipeline = None
    for name, run_cfg in runs:
        try:
            results["runs"][name], pipeline = _replay(run_cfg, input_path, repeats, transcript, name, paced)
        except (MissingExtra, FileNotFoundError) as e:
            results["runs"][name] = {"skipped": str(e)}
            continue
        if name == "without_asr":
            results["models"] = describe(pipeline, run_cfg)
    if pipeline is not None and pipeline.face_path is not None:
        results["camera_path"] = camera_path_fps(pipeline.face_path.face_model, input_path, cfg.face.track,
                                                 cfg.face.torch_threads)
    print(format_table(results))
    if json_out is not None:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        try:
            png = histogram_png(results, Path(json_out).with_suffix(".png"))
            said = f", latency histogram -> {png}" if png else "; no latency histogram: no utterance was timed"
        except MissingExtra as e:
            said = f"; no latency histogram: {e}"
        print(f"mmer-bench: results -> {json_out}{said}", file=sys.stderr)
    return results


def histogram_figure(results: dict) -> Any:
    """The per-stage latency histograms as a matplotlib Figure (:func:`mmer.plots.latency_histograms`):
    one panel per stage that has values, each run (without / with ASR) one curve, log x axis.
    None without matplotlib or without utterances."""
    from mmer.plots import latency_histograms

    runs = {name: run["stages_ms"] for name, run in results["runs"].items() if "stages_ms" in run}
    panels = {f"{stage} (per utterance)": {name: stages[stage].get("samples_ms", ())
                                           for name, stages in runs.items() if stage in stages}
              for stage in STAGES}
    return latency_histograms(panels, columns=HISTOGRAM_COLUMNS)


def histogram_png(results: dict, path: Path) -> Path | None:
    """Write :func:`histogram_figure` to ``path``; None when there is nothing to draw
    (MissingExtra without matplotlib, which the live extra does not install)."""
    from mmer.extras import require
    from mmer.plots import save_figure

    require("matplotlib")
    fig = histogram_figure(results)
    return None if fig is None else save_figure(fig, path)


def format_table(results: dict) -> str:
    """One table: stage x (p50, p95) per run, then the camera path."""
    runs = {k: v for k, v in results["runs"].items() if "stages_ms" in v}
    lines = [f"mmer-bench live: {results['input']} x{results['repeats']} "
             f"{'paced in real time' if results.get('paced') else 'lockstep'} "
             f"({results['machine']['cpus']} CPUs, load {results['machine']['load_avg_1min']})"]
    head = f"{'stage (ms)':<26}" + "".join(f"{name + ' p50':>20}{'p95':>9}" for name in runs)
    lines += [head, "-" * len(head)]
    for stage in STAGES:
        cells = [runs[r]["stages_ms"].get(stage) for r in runs]
        if not any(cells):
            continue
        lines.append(f"{stage:<26}" + "".join(f"{c['p50']:>20.1f}{c['p95']:>9.1f}" if c else f"{'-':>20}{'-':>9}"
                                              for c in cells))
    for name, run in results["runs"].items():
        if "skipped" in run:
            lines.append(f"{name}: skipped ({run['skipped']})")
        else:
            lines.append(f"{name}: {run['utterances']} utterances, modalities {run['modalities']}; CPU "
                         f"{run['cpu_s_per_audio_s']:.2f} s per s of audio, {run['cpu_s_per_speech_s']:.2f} s per s "
                         f"of speech (all threads)")
            lines.append(f"  {run['stats']}")
    cam = results.get("camera_path")
    if cam:
        fm = cam["frame_ms"]
        lines.append(f"camera path alone: {cam['frames']} frames, {cam['fps']} fps "
                     f"(per frame p50 {fm.get('p50', 0):.1f} ms, p95 {fm.get('p95', 0):.1f} ms; "
                     f"face in {cam['faces_found']} frames)")
    return "\n".join(lines)


def bench_live_main(argv: list[str] | None = None) -> int:
    """``mmer-bench live``; a leading "live" argument is accepted and skipped."""
    from mmer.config import ConfigError
    from mmer.realtime.cli import add_common_options, resolve_config

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["live"]:
        argv = argv[1:]
    p = argparse.ArgumentParser(prog="mmer-bench live", description=__doc__.split("\n")[0])
    add_version(p)
    p.add_argument("--input", required=True, metavar="FILE", help="wav/mp4 recording to replay")
    p.add_argument("--repeats", type=int, default=DEFAULT_REPEATS, help="replays pooled (default %(default)s)")
    p.add_argument("--no-asr-run", action="store_true", help="skip the run with speech-to-text")
    p.add_argument("--paced", action="store_true", help="replay in real time, as a microphone delivers it (no "
                   "lockstep): every wait and every CPU contention is the live one; takes the recording's length")
    add_common_options(p)  # its --json is the JSON report here
    args = p.parse_args(argv)
    json_out, args.json = args.json, None
    try:
        cfg = resolve_config(args)
    except ConfigError as e:
        print(f"mmer-bench: {e}", file=sys.stderr)
        return 2
    if not Path(args.input).is_file():
        print(f"mmer-bench: {args.input}: file not found", file=sys.stderr)
        return 2
    bench_live(args.input, json_out, cfg, args.repeats, with_asr=not args.no_asr_run, paced=args.paced)
    return 0


def bench_soak_main(argv: list[str] | None = None) -> int:
    """``mmer-bench soak``: the long-replay check of realtime/soak.py (a leading "soak" is skipped)."""
    from mmer.realtime.soak import soak_main

    return soak_main(argv)
