"""Where predictions go: JSON lines, a Python callback, an OpenCV overlay (the websocket is
mmer.realtime.websocket, with its host protocol).

Every sink takes typed frames through ``emit(frame)``: a :class:`Prediction`, or a pipeline
event (:class:`VadEvent`, :class:`UtteranceEnded`); only the JSON and websocket outputs
serialise them (``frame.to_dict()``). :class:`Outputs` fans a frame out to every sink in
turn, each isolated: a sink (a user's callback) that raises is logged with its name and
counted in ``callback_errors``, and every other sink still gets the frame. None of them may
block for long: the JSON writer flushes one line, the websocket hands the frame to its own
event-loop thread.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable, TextIO

import numpy as np

from mmer.extras import require

log = logging.getLogger(__name__)



def to_json_line(message: Any) -> str:
    """One compact JSON object without a newline: a dict, or a frame with ``to_dict()``
    (numpy scalars converted)."""
    if not isinstance(message, dict):
        message = message.to_dict()
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
    """Writes each frame as one JSON line to stdout (``"-"``), a file path, or a text stream.

    ``extra``: fields put first in every line (mmer-predict adds ``{"file": ...}``).
    """

    events = False   # predictions only: segmentation events go to the websocket and on_event

    def __init__(self, target: str | Path | TextIO = "-", extra: dict | None = None) -> None:
        if isinstance(target, (str, Path)):
            if str(target) == "-":
                self._stream, self._owned = sys.stdout, False
            else:
                Path(target).parent.mkdir(parents=True, exist_ok=True)
                self._stream, self._owned = open(target, "w", encoding="utf-8"), True
        else:
            self._stream, self._owned = target, False
        self._lock = threading.Lock()
        self.extra = dict(extra or {})
        self.written = 0

    def emit(self, message: Any) -> None:
        if not isinstance(message, dict):
            message = message.to_dict()
        line = to_json_line({**self.extra, **message} if self.extra else message)
        with self._lock:
            self._stream.write(line + "\n")
            self._stream.flush()  # a reader tailing the file sees each prediction at once
            self.written += 1

    def close(self) -> None:
        with self._lock:
            if self._owned and not self._stream.closed:
                self._stream.close()


class CallbackSink:
    """Calls ``fn(frame)`` with each typed frame, in the thread that emits it; keep it quick.

    ``events``: True for an ``on_event`` callback (segmentation events), False for an
    ``on_prediction`` one.
    """

    def __init__(self, fn: Callable[[Any], Any], events: bool = False) -> None:
        self.fn, self.events, self.predictions = fn, events, not events
        self.name = getattr(fn, "__qualname__", None) or repr(fn)

    def emit(self, frame: Any) -> None:
        self.fn(frame)

    def close(self) -> None:
        pass


class Outputs:
    """Every sink of a pipeline; ``emit`` hands a frame to each in turn, isolated.

    Predictions go to the sinks whose ``predictions`` attribute is true (the default), events
    to those whose ``events`` attribute is.
    A sink that raises is logged (with its name and the traceback) and counted in
    ``callback_errors``; the others still get the frame, and the pipeline goes on.
    """

    def __init__(self, sinks: list[Any] | None = None) -> None:
        self.sinks: list[Any] = list(sinks or [])
        self.callback_errors = 0
        self._lock = threading.Lock()

    def add(self, sink: Any) -> None:
        self.sinks.append(sink)

    def emit(self, frame: Any, event: bool = False) -> None:
        for sink in list(self.sinks):
            if not (getattr(sink, "events", False) if event else getattr(sink, "predictions", True)):
                continue
            try:
                sink.emit(frame)
            except Exception:
                with self._lock:
                    self.callback_errors += 1
                log.exception("output %s failed on %s; the other outputs still got it",
                              getattr(sink, "name", type(sink).__name__), type(frame).__name__)

    def counters(self) -> dict[str, int]:
        """The counters of the sinks that keep some (``stats``), prefixed by their ``name``."""
        out = {}
        for sink in self.sinks:
            stats = getattr(sink, "stats", None)
            if isinstance(stats, dict):
                out.update({f"{getattr(sink, 'name', type(sink).__name__)}_{k}": v for k, v in stats.items()})
        return out

    def close(self) -> None:
        for sink in self.sinks:
            try:
                sink.close()
            except Exception:
                log.exception("closing output %s failed", getattr(sink, "name", type(sink).__name__))


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


OVERLAY_MAX_FPS = 15.0           # the --show window redraws at most this often


class OverlaySink:
    """``--show``: an OpenCV window with the latest frame, face box and prediction.

    A sink like the others: ``emit`` stores the latest prediction (from the prediction
    thread); ``on_frame`` draws and displays at most ``OVERLAY_MAX_FPS`` times a second (from
    the thread that feeds camera frames, which owns the window). q or Esc in the window calls
    ``on_quit`` (the pipeline's ``stop``). Without a display, or with a headless OpenCV build,
    it says so once and stays silent.
    """

    WINDOW = "mmer-live"
    events = False
    name = "overlay"

    def __init__(self, on_quit: Callable[[], Any] | None = None) -> None:
        self._latest: deque[dict] = deque(maxlen=1)
        self.enabled = display_available()
        self.reason = "" if self.enabled else "no display (DISPLAY/WAYLAND_DISPLAY unset)"
        self.quit_requested = False
        self.on_quit = on_quit
        self._last_draw_s = 0.0

    def emit(self, frame: Any) -> None:
        message = frame if isinstance(frame, dict) else frame.to_dict()
        if message.get("type") == "prediction":
            self._latest.append(message)

    def on_frame(self, image_bgr: np.ndarray, box: tuple[int, int, int, int] | None) -> None:
        """A camera frame (and the tracked face box): redrawn when the rate cap allows."""
        now = time.perf_counter()
        if not self.enabled or now - self._last_draw_s < 1.0 / OVERLAY_MAX_FPS:
            return
        self._last_draw_s = now
        self.show(image_bgr, box)
        if self.quit_requested and self.on_quit is not None:
            self.on_quit()

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
            log.warning("--show disabled: %s", self.reason)
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
