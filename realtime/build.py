"""Loading and wiring the live pipeline: :func:`build_pipeline` makes every part, starts nothing
that can fail late, and hands the parts to :class:`LivePipeline`, which only moves frames.

Order matters for the user: what is cheap to check and likely wrong comes first. The config's
ranges are checked when it loads; then the websocket port is bound (a busy port fails in
milliseconds, not after the models load); then the models, the speech-to-text and the face
path are loaded; the threads start last.

    pipe = build_pipeline(load_live_config(overrides=["outputs.ws_port=8765"]))
    pipe = build_pipeline(cfg, predictor=my_predictor, face_model=None)   # parts already held
"""

from __future__ import annotations

import logging
from typing import Any

from mmer.realtime.config import LiveConfig
from mmer.realtime.pipeline import LivePipeline

log = logging.getLogger(__name__)

_LOAD = object()   # the default of build_pipeline's parts: load it from the config


def open_websocket(config: LiveConfig, on_message: Any = None) -> Any:
    """Bind the websocket of ``config.outputs`` now (raises PortError when it cannot), or None.

    With ``outputs.web_port`` it also serves the live page, on the same port."""
    out = config.outputs
    port = out.websocket_port()
    if port is None:
        return None
    from mmer.realtime.websocket import WebSocketServer

    page = page_settings(config) if out.web_port is not None else None
    return WebSocketServer(port, out.ws_host, on_message, origins=out.ws_origins, token=out.ws_token,
                           max_clients=out.ws_max_clients, max_message_bytes=out.ws_max_message_bytes,
                           max_messages_per_s=out.ws_max_messages_per_s, page=page).start()


def page_settings(config: LiveConfig) -> dict:
    """What the live page needs besides the stream: the camera frame's size, so that it can draw
    the face box (``box`` is in frame pixels); None when unknown (the page then scales to the box)."""
    s = config.sources
    frame_px = None
    if s.input:
        from mmer.media import MediaError, probe

        try:
            video = probe(s.input).video
        except (MediaError, OSError):   # reported when the source opens
            video = None
        frame_px = None if video is None else [video.width_px, video.height_px]
    elif s.camera is not None:
        frame_px = [s.camera_width_px, s.camera_height_px]   # asked of the camera; most give it
    return {"frame_px": frame_px}


def build_pipeline(config: LiveConfig, *, predictor: Any = None, face_model: Any = _LOAD, asr: Any = None,
                   websocket: Any = None, lockstep: bool = False) -> LivePipeline:
    """A ready :class:`LivePipeline` for ``config``.

    predictor / face_model / asr: parts the caller already holds (tests, hosts that embed the
    models); ``face_model=None`` turns the face path off, as does a config without a camera
    (``sources.camera`` None: the input has no pictures). websocket: a server the caller bound
    already (:func:`open_websocket`); otherwise one is bound here first when the config asks.
    lockstep: see :class:`LivePipeline`.
    """
    from mmer.realtime.asr import make_asr
    from mmer.realtime.assembler import UtteranceAssembler
    from mmer.realtime.context import DialogueContext
    from mmer.realtime.face_path import FacePath
    from mmer.realtime.predictor import load_stack
    from mmer.realtime.sinks import JsonLinesSink, OverlaySink, Outputs
    from mmer.realtime.vad import VadSegmenter

    late: dict[str, LivePipeline] = {}   # the host protocol needs the pipeline made below
    speaker = config.context.host_speaker

    def on_message(message: dict) -> dict:
        from mmer.realtime.websocket import apply_host_message

        return apply_host_message(late["pipeline"], message, speaker)

    if websocket is None:
        websocket = open_websocket(config, on_message)
    else:
        websocket.on_message = on_message
    try:
        no_pictures = config.sources.camera is None or config.models.face is None
        if face_model is _LOAD:
            face_model = False if no_pictures else None       # load_stack: None = load it
        elif face_model is None:
            face_model = False
        predictor, face_model = load_stack(config.models, predictor, face_model)
        if asr is None:
            asr = make_asr(config.asr.backend, config.asr.model_dir, **_asr_options(config))
    except BaseException:
        if websocket is not None:
            websocket.close()
        raise
    text = predictor.text
    tokenizer = text.processor.tokenizer if text is not None and text.processor is not None else None
    count = (lambda s: len(tokenizer.encode(s, add_special_tokens=False))) if tokenizer is not None else None
    ctx = config.context
    assembler = UtteranceAssembler(DialogueContext(ctx.max_turns, ctx.max_tokens, count), config.queues.host_texts,
                                   config.asr.text_wait_s, config.face.wait_ms / 1000)
    outputs = Outputs()
    if config.outputs.json is not None:
        outputs.add(JsonLinesSink(config.outputs.json))
    frame_sinks = []
    if config.outputs.show:
        overlay = OverlaySink()
        outputs.add(overlay)
        frame_sinks.append(overlay)
    if websocket is not None:
        outputs.add(websocket)
    faces = None
    if face_model:
        f = config.face
        faces = FacePath(face_model, f.max_fps, f.history_s, track=f.track, torch_threads=f.torch_threads,
                         nice=f.nice)
    seg = config.segmenter
    pipeline = LivePipeline(VadSegmenter.from_config(seg), asr, assembler, predictor, outputs, faces=faces,
                            frame_sinks=frame_sinks, queue_size=config.queues.utterances,
                            user_speaker=ctx.user_speaker, torch_threads=config.models.torch_threads,
                            lockstep=lockstep, end_silence_s=max(0.0, seg.end_silence_ms - seg.post_roll_ms) / 1000,
                            interim_stride_s=seg.interim_stride_ms / 1000)
    for overlay in frame_sinks:
        overlay.on_quit = pipeline.stop
    pipeline.websocket = websocket
    pipeline.overlay = frame_sinks[0] if frame_sinks else None
    late["pipeline"] = pipeline
    return pipeline


def _asr_options(config: LiveConfig) -> dict:
    """The constructor options of ``config.asr``'s backend: where it runs, what language."""
    if config.asr.backend == "none":
        return {}
    return {"device": config.asr.device, "language": config.asr.language}
