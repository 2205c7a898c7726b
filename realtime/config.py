"""Settings of the live job, as frozen dataclasses (YAML: configs/live.yaml, installed as mmer/configs/live.yaml).

Resolved like every mmer config: ``defaults <- --config FILE <- key=value overrides``
(:func:`mmer.config.load_config`), unknown keys refused with the closest valid one. The
defaults here equal the shipped ``live.yaml``, whose comments say why each value was chosen.

    cfg = load_live_config("my_live.yaml", ["segmenter.end_silence_ms=400", "asr.backend=none"])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from mmer.config import ConfigError, bounded, load_config
from mmer.realtime.vad import SegmenterConfig



def default_config_file() -> Path:
    """The shipped live.yaml (package ``mmer.configs``)."""
    from importlib.resources import files

    return Path(str(files("mmer.configs") / "live.yaml"))


@dataclass(frozen=True)
class SourceConfig:
    """Where audio and video come from.

    camera: camera index, a device path (/dev/video2) or a URL / GStreamer pipeline OpenCV can
    open, or None for no camera. mic: sounddevice input (index or name
    substring), None for the system default. input: a wav/mp4 file to replay instead of the
    devices; realtime: replay at the recording's pace (False: as fast as possible).
    reconnect: on a lost device, try to reopen it ``reconnect_attempts`` times,
    ``reconnect_wait_s`` apart, instead of exiting.
    """

    camera: int | str | None = bounded(0, ge=0, le=255)   # an index; device paths and URLs are strings
    mic: str | None = None
    input: str | None = None
    realtime: bool = True
    camera_width_px: int = bounded(640, ge=16, le=7680)
    camera_height_px: int = bounded(480, ge=16, le=4320)
    camera_fps: int = bounded(30, ge=1, le=240)
    audio_block_ms: int = bounded(30, ge=10, le=1000)
    reconnect: bool = False
    reconnect_attempts: int = bounded(3, ge=0, le=100)
    reconnect_wait_s: float = bounded(2.0, ge=0, le=600)


@dataclass(frozen=True)
class AsrConfig:
    """Speech-to-text. backend "none": the host supplies each utterance's text (``push_text``),
    waiting at most ``text_wait_s`` per utterance before it is classified without words.
    model_dir: the ASR model folder; None picks the backend's packaged default. "shared-encoder"
    (default): Whisper tiny.en on one unpadded torch encoder pass whose states the whisper voice
    model reuses (realtime/asr.py SharedEncoderASR; 4-5x faster than "faster-whisper", which pads
    every utterance to 30 s, at the same word error rate). device: where the ASR runs ("cpu",
    "cuda"); language: what is spoken ("en"; None lets a multilingual model detect it, where the
    backend can)."""

    backend: Literal["shared-encoder", "faster-whisper", "hf-whisper", "none"] = "shared-encoder"
    model_dir: str | None = None
    text_wait_s: float = bounded(2.0, ge=0, le=60)
    device: str = "cpu"
    language: str | None = "en"


@dataclass(frozen=True)
class ModelsConfig:
    """Checkpoint folders or embedded default names per modality; None turns a modality off.

    fusion: None = late fusion built from the three models' label sets; otherwise a
    ``late_fusion`` checkpoint, or an ``asf`` checkpoint for a full TelME stack (teacher +
    students distilled to the same width). Each of text, voice and face may also be an export
    folder (mmer-export). runtime: what serves the three (``auto``, ``torch``, ``onnxruntime``,
    ``tensorrt``, ``tensorrt-rtx``; mmer.serving), overridden per modality by ``*_runtime``;
    ``*_precision``: the graph built (once, cached) when a checkpoint is served by ONNX Runtime.
    torch_threads / ort_threads: intra-op threads of the prediction thread (0: the library's default).
    parallel: run the voice model beside the text model (a worker thread) instead of after it.
    """

    text: str | None = "default-text"
    voice: str | None = "default-voice"
    face: str | None = "default-face"
    fusion: str | None = None
    device: str = "cpu"
    torch_threads: int = bounded(0, ge=0, le=256)
    runtime: str = "auto"
    text_runtime: str = "auto"
    voice_runtime: str = "auto"
    face_runtime: str = "auto"
    text_precision: Literal["fp32", "fp16", "int8", "int8-static"] = "int8"
    voice_precision: Literal["fp32", "fp16", "int8", "int8-static"] = "int8"
    face_precision: Literal["fp32", "fp16", "int8", "int8-static"] = "fp32"
    ort_threads: int = bounded(1, ge=0, le=256)
    parallel: bool = True


@dataclass(frozen=True)
class FacePathConfig:
    """The camera path: frame-rate cap, history kept, which face to follow, and how long a
    prediction waits for the path to finish the frames of its utterance."""

    max_fps: float = bounded(15.0, gt=0, le=120)
    history_s: float = bounded(30.0, gt=0, le=3600)
    track: Literal["largest", "follow"] = "follow"
    wait_ms: float = bounded(100.0, ge=0, le=5000)
    torch_threads: int = bounded(1, ge=0, le=256)
    nice: int = bounded(10, ge=0, le=19)   # Linux niceness steps; lowering it needs root


@dataclass(frozen=True)
class ContextConfig:
    """The rolling dialogue window the text model reads."""

    max_turns: int = bounded(20, ge=1, le=1000)
    max_tokens: int = bounded(512, ge=16, le=8192)
    user_speaker: str = "user"
    host_speaker: str = "robot"


@dataclass(frozen=True)
class OutputConfig:
    """json: "-" for stdout, a file path, or None. ws_port: serve predictions on this port
    (0 = any free port), None for no websocket. show: the OpenCV overlay window.

    The websocket refuses browsers from other sites: a client that sends an ``Origin`` header
    must send one of ``ws_origins`` (besides the page mmer serves itself); native clients send
    none. ``ws_token``: when set, clients must present it (``?token=`` or the
    ``Authorization: Bearer`` header). ``ws_max_clients`` / ``ws_max_message_bytes`` /
    ``ws_max_messages_per_s`` cap connections and what each client may send.

    web_port: serve the live page (mmer/assets/web/live.html) at ``http://ws_host:web_port/``.
    The websocket server itself answers the page's plain GET, so the page's origin is the
    server's own and needs no allow-listing: the websocket listens on ``web_port`` too
    (:meth:`websocket_port`), and a ``ws_port`` that differs is refused."""

    json: str | None = "-"
    ws_port: int | None = bounded(None, ge=0, le=65535)
    web_port: int | None = bounded(None, ge=0, le=65535)
    ws_host: str = "127.0.0.1"
    ws_origins: tuple[str, ...] = ()
    ws_token: str | None = None
    ws_max_clients: int = bounded(8, ge=1, le=1024)
    ws_max_message_bytes: int = bounded(64 * 1024, ge=1024, le=16 * 1024 * 1024)
    ws_max_messages_per_s: float = bounded(20.0, gt=0, le=10_000)
    show: bool = False

    def websocket_port(self) -> int | None:
        """The websocket's port: ``ws_port``, else ``web_port`` (the page is served on the websocket's
        own port), else None; a ConfigError when both are set and differ."""
        if self.web_port is not None and self.ws_port is not None and self.web_port != self.ws_port:
            raise ConfigError(f"outputs.web_port={self.web_port} and outputs.ws_port={self.ws_port} differ: the "
                              "live page is served by the websocket on its own port. fix: give one port "
                              "(--web PORT alone also opens the websocket there)")
        return self.ws_port if self.ws_port is not None else self.web_port


@dataclass(frozen=True)
class QueueConfig:
    """Bounds of the pipeline's queues. Utterances are never dropped: when ``utterances`` are
    waiting, the audio loop blocks (and the source counts its own overflows)."""

    utterances: int = bounded(8, ge=1, le=1024)
    host_texts: int = bounded(64, ge=1, le=4096)


@dataclass(frozen=True)
class LiveConfig:
    """Everything ``mmer-live`` needs; see configs/live.yaml for the reasons."""

    sources: SourceConfig = field(default_factory=SourceConfig)
    segmenter: SegmenterConfig = field(default_factory=SegmenterConfig)
    asr: AsrConfig = field(default_factory=AsrConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)
    face: FacePathConfig = field(default_factory=FacePathConfig)
    context: ContextConfig = field(default_factory=ContextConfig)
    outputs: OutputConfig = field(default_factory=OutputConfig)
    queues: QueueConfig = field(default_factory=QueueConfig)


def load_live_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> LiveConfig:
    """Defaults <- ``path`` (YAML) <- ``key=value`` overrides."""
    return load_config(LiveConfig, path, list(overrides))
