"""Where predictions go: JSON lines, a local websocket, a Python callback, an OpenCV overlay.

Every sink takes the same message, a JSON-ready dict (``Prediction.to_dict()`` or a pipeline
event), through ``emit(message)`` and is closed with ``close()``. None of them may block the
prediction thread for long: the JSON writer flushes one line, the websocket server hands the
message to its own event-loop thread, and each websocket client has a bounded queue whose
oldest message is dropped (and counted) when that client reads too slowly.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
from collections import deque
from pathlib import Path
from typing import Any, Callable, TextIO

import numpy as np

from mmer.extras import require

LOCALHOST = "127.0.0.1"          # the websocket binds here unless told otherwise: no remote access
CLIENT_QUEUE_MESSAGES = 64       # per websocket client; the oldest message is dropped beyond this
SERVER_START_TIMEOUT_S = 5.0     # how long start() waits for the socket to be bound
SERVER_STOP_TIMEOUT_S = 5.0      # how long close() waits for the event-loop thread to end
MAX_INCOMING_BYTES = 64 * 1024   # a host message (a turn, a text) is small; refuse anything larger


def to_json_line(message: dict) -> str:
    """One compact JSON object without a newline (numpy scalars converted)."""
    return json.dumps(message, ensure_ascii=False, separators=(",", ":"), default=_json_default)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


class JsonLinesSink:
    """Writes each message as one JSON line to stdout (``"-"``), a file path, or a text stream."""

    def __init__(self, target: str | Path | TextIO = "-") -> None:
        if isinstance(target, (str, Path)):
            if str(target) == "-":
                self._stream, self._owned = sys.stdout, False
            else:
                Path(target).parent.mkdir(parents=True, exist_ok=True)
                self._stream, self._owned = open(target, "w", encoding="utf-8"), True
        else:
            self._stream, self._owned = target, False
        self._lock = threading.Lock()
        self.written = 0

    def emit(self, message: dict) -> None:
        line = to_json_line(message)
        with self._lock:
            self._stream.write(line + "\n")
            self._stream.flush()  # a reader tailing the file sees each prediction at once
            self.written += 1

    def close(self) -> None:
        with self._lock:
            if self._owned and not self._stream.closed:
                self._stream.close()


class CallbackSink:
    """Calls ``fn(message)`` in the prediction thread; keep it quick."""

    def __init__(self, fn: Callable[[dict], Any]) -> None:
        self.fn = fn

    def emit(self, message: dict) -> None:
        self.fn(message)

    def close(self) -> None:
        pass


def _serve_function() -> Callable:
    """``serve`` of the asyncio implementation (websockets >= 13), else the legacy one (12)."""
    require("websockets")
    try:
        from websockets.asyncio.server import serve
    except ImportError:  # websockets 12
        from websockets.server import serve  # type: ignore[no-redef]
    return serve


class WebSocketServer:
    """A websocket server that broadcasts every message and hands host messages to a handler.

    Host -> mmer messages are JSON objects; ``on_message(obj)`` decides what they mean (the
    pipeline accepts ``{"type": "turn", "speaker", "text"}``, ``{"type": "text",
    "utterance_id", "text"}`` and ``{"type": "reset"}``) and returns a reply dict (sent back to
    that client only) or ``None``. A message that is not a JSON object, or that the handler
    refuses with ``ValueError``, gets ``{"type": "error", "error": ...}``.

    Args:
        port: TCP port; 0 picks a free one (read ``.port`` after ``start()``).
        host: interface to bind; 127.0.0.1 by default so only local processes can connect.
    """

    def __init__(self, port: int = 0, host: str = LOCALHOST,
                 on_message: Callable[[dict], dict | None] | None = None) -> None:
        self.host, self.port = host, port
        self.on_message = on_message
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._clients: dict[Any, tuple[asyncio.Queue, asyncio.Event]] = {}
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.stats = {"clients": 0, "sent": 0, "dropped": 0, "received": 0, "rejected": 0}

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> "WebSocketServer":
        """Bind and serve in a daemon thread; raises if the port cannot be bound."""
        serve = _serve_function()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main(serve)),
                                        name="mmer-websocket", daemon=True)
        self._thread.start()
        if not self._ready.wait(SERVER_START_TIMEOUT_S):
            raise RuntimeError(f"websocket server on {self.host}:{self.port} did not start "
                               f"within {SERVER_START_TIMEOUT_S} s")
        if self._error is not None:
            raise OSError(f"websocket server could not listen on {self.host}:{self.port}: {self._error}")
        return self

    async def _main(self, serve: Callable) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            server = await serve(self._handle, self.host, self.port, max_size=MAX_INCOMING_BYTES)
        except OSError as e:
            self._error = e
            self._ready.set()
            return
        self.port = next(iter(server.sockets)).getsockname()[1]
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            server.close()
            await server.wait_closed()

    def close(self) -> None:
        """Stop serving, disconnect every client and join the thread."""
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(self._stop.set)
            except RuntimeError:  # loop already closed
                pass
        if self._thread is not None:
            self._thread.join(SERVER_STOP_TIMEOUT_S)
            self._thread = None

    # -- outgoing ---------------------------------------------------------------------------
    def emit(self, message: dict) -> None:
        """Broadcast ``message`` to every connected client (thread-safe, never blocks)."""
        if self._loop is None or self._loop.is_closed():
            return
        text = to_json_line(message)
        try:
            self._loop.call_soon_threadsafe(self._broadcast, text)
        except RuntimeError:  # the loop stopped between the check and the call
            pass

    def _broadcast(self, text: str) -> None:
        for queue, wake in self._clients.values():
            if queue.full():
                queue.get_nowait()  # a slow client loses its oldest message, not the pipeline
                self.stats["dropped"] += 1
            queue.put_nowait(text)
            wake.set()

    # -- per client -------------------------------------------------------------------------
    async def _handle(self, connection: Any, *_legacy_path: Any) -> None:
        queue: asyncio.Queue = asyncio.Queue(maxsize=CLIENT_QUEUE_MESSAGES)
        wake = asyncio.Event()
        self._clients[connection] = (queue, wake)
        self.stats["clients"] += 1
        sender = asyncio.ensure_future(self._send_loop(connection, queue, wake))
        try:
            async for raw in connection:
                reply = self._answer(raw)
                if reply is not None:
                    await connection.send(to_json_line(reply))
        except Exception:  # a client that vanishes mid-message is not the server's problem
            pass
        finally:
            self._clients.pop(connection, None)
            sender.cancel()

    async def _send_loop(self, connection: Any, queue: asyncio.Queue, wake: asyncio.Event) -> None:
        while True:
            await wake.wait()
            wake.clear()
            while not queue.empty():
                await connection.send(queue.get_nowait())
                self.stats["sent"] += 1

    def _answer(self, raw: str | bytes) -> dict | None:
        self.stats["received"] += 1
        try:
            message = json.loads(raw)
            if not isinstance(message, dict):
                raise ValueError("expected a JSON object")
            return self.on_message(message) if self.on_message else None
        except ValueError as e:  # json.JSONDecodeError is a ValueError too
            self.stats["rejected"] += 1
            return {"type": "error", "error": str(e)}


def apply_host_message(host: Any, message: dict, default_speaker: str) -> dict:
    """Apply one host -> mmer message to ``host`` (a LivePipeline); returns the acknowledgement.

    ``{"type": "turn", "speaker", "text"}`` -> ``host.push_turn`` (speaker defaults to
    ``default_speaker``); ``{"type": "text", "utterance_id", "text", "speaker"?}`` ->
    ``host.push_text``; ``{"type": "reset"}`` -> ``host.reset_context``. Anything else raises
    ``ValueError``, which the server answers as an error.
    """
    kind = message.get("type")
    if kind == "turn":
        speaker, text = message.get("speaker", default_speaker), message.get("text")
        if not isinstance(speaker, str) or not isinstance(text, str):
            raise ValueError('a "turn" needs a string "text" (and "speaker", default the host\'s name)')
        host.push_turn(speaker, text)
    elif kind == "text":
        uid, text, speaker = message.get("utterance_id"), message.get("text"), message.get("speaker")
        if not isinstance(uid, int) or isinstance(uid, bool) or not isinstance(text, str):
            raise ValueError('a "text" message needs an integer "utterance_id" and a string "text"')
        if speaker is not None and not isinstance(speaker, str):
            raise ValueError('"speaker" of a "text" message must be a string')
        host.push_text(uid, text, speaker)
    elif kind == "reset":
        host.reset_context()
    else:
        raise ValueError(f'unknown message type {kind!r}; expected "turn", "text" or "reset"')
    return {"type": "ack", "of": kind}


# -- overlay ------------------------------------------------------------------------------------
OVERLAY_FONT_SCALE = 0.5
OVERLAY_BAR_WIDTH_PX = 120       # width of a probability bar at p = 1
OVERLAY_ROW_PX = 18              # height of one label row
OVERLAY_MARGIN_PX = 8
BOX_COLOR_BGR = (0, 220, 0)
BAR_COLOR_BGR = (0, 170, 255)
TEXT_COLOR_BGR = (255, 255, 255)


def render_overlay(image_bgr: np.ndarray, box: tuple[int, int, int, int] | None = None,
                   prediction: dict | None = None) -> np.ndarray:
    """Draw the face box, the predicted label and one probability bar per class on a copy.

    image_bgr: (H, W, 3) uint8. box: (x, y, w, h) of the tracked face, or None.
    prediction: a prediction message (``label``, ``probs``, ``modalities``), or None.
    Returns the annotated (H, W, 3) uint8 image; the input is left untouched.
    """
    cv2 = require("cv2")
    out = np.ascontiguousarray(image_bgr).copy()
    if box is not None:
        x, y, w, h = (int(v) for v in box)
        cv2.rectangle(out, (x, y), (x + w, y + h), BOX_COLOR_BGR, 2)
    if prediction is None:
        return out
    title = f"{prediction.get('label', '?')}  [{'+'.join(prediction.get('modalities', [])) or 'none'}]"
    cv2.putText(out, title, (OVERLAY_MARGIN_PX, OVERLAY_ROW_PX), cv2.FONT_HERSHEY_SIMPLEX,
                OVERLAY_FONT_SCALE, TEXT_COLOR_BGR, 1, cv2.LINE_AA)
    for row, (label, p) in enumerate(prediction.get("probs", {}).items(), start=2):
        y0 = row * OVERLAY_ROW_PX
        x0 = OVERLAY_MARGIN_PX
        cv2.rectangle(out, (x0, y0 - OVERLAY_ROW_PX + 4), (x0 + int(OVERLAY_BAR_WIDTH_PX * float(p)), y0),
                      BAR_COLOR_BGR, -1)
        cv2.putText(out, f"{label} {float(p):.2f}", (x0 + 2, y0 - 3), cv2.FONT_HERSHEY_SIMPLEX,
                    OVERLAY_FONT_SCALE * 0.8, TEXT_COLOR_BGR, 1, cv2.LINE_AA)
    return out


def display_available() -> bool:
    """Whether an OpenCV window can be opened (a display server on Linux; assumed elsewhere)."""
    if sys.platform.startswith("linux"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


class OverlaySink:
    """``--show``: an OpenCV window with the latest frame, face box and prediction.

    ``emit`` only stores the latest prediction (from the prediction thread); ``show`` draws and
    displays (from the thread that owns the window, the source loop). Without a display, or
    with a headless OpenCV build, it says so once and stays silent.
    """

    WINDOW = "mmer-live"

    def __init__(self) -> None:
        self._latest: deque[dict] = deque(maxlen=1)
        self.enabled = display_available()
        self.reason = "" if self.enabled else "no display (DISPLAY/WAYLAND_DISPLAY unset)"
        self.quit_requested = False

    def emit(self, message: dict) -> None:
        if message.get("type") == "prediction":
            self._latest.append(message)

    def show(self, image_bgr: np.ndarray, box: tuple[int, int, int, int] | None) -> None:
        """Render and display one frame; sets ``quit_requested`` when the user presses q/Esc."""
        if not self.enabled:
            return
        cv2 = require("cv2")
        frame = render_overlay(image_bgr, box, self._latest[-1] if self._latest else None)
        try:
            cv2.imshow(self.WINDOW, frame)
            key = cv2.waitKey(1) & 0xFF
        except cv2.error as e:  # opencv-python-headless has no GUI
            self.enabled, self.reason = False, f"OpenCV cannot open a window ({e.msg if hasattr(e, 'msg') else e})"
            print(f"mmer-live: --show disabled: {self.reason}", file=sys.stderr)
            return
        if key in (ord("q"), 27):
            self.quit_requested = True

    def close(self) -> None:
        if self.enabled:
            cv2 = require("cv2")
            try:
                cv2.destroyWindow(self.WINDOW)
            except cv2.error:
                pass
