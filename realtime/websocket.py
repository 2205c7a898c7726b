"""The local websocket: predictions and pipeline events out, host messages in, and who may connect.

What a connection may do is decided before the upgrade, in this order:

1. ``Origin``: a browser always sends the page's origin, a native client (Python, a robot's
   own process) sends none. Allowed: no ``Origin`` at all, the origin of this server itself
   (``http://127.0.0.1:PORT`` / ``http://localhost:PORT``, the page mmer serves), and the
   ``origins`` the user adds (``--ws-origin``). Any other origin gets HTTP 403: binding to
   127.0.0.1 does not stop a web page open in the kiosk's own browser from connecting, this does.
2. ``token`` (optional, ``--ws-token``): the client presents it as ``?token=...`` or an
   ``Authorization: Bearer ...`` header; compared in constant time; else HTTP 401.
3. ``max_clients``: one more gets HTTP 503.

With ``page`` settings given (``--web PORT``), a plain HTTP GET of ``/`` that passes 1. and 2.
(a browser opening ``http://127.0.0.1:PORT/``, with ``?token=...`` when one is set) is answered
with the live page (mmer/assets/web/live.html, the settings templated in); the page opens its
websocket back to the same origin, passing on its own ``?token=``. Any other plain GET is 404.

Once connected, a client may send at most ``max_message_bytes`` per message (larger closes the
connection, code 1009) and ``max_messages_per_s`` on average (a burst of as many is allowed;
beyond, the connection is closed with code 1008). A client that does not read what is
broadcast to it falls behind; once ``CLIENT_QUEUE_MESSAGES`` are waiting it is disconnected
(code 1008) instead of holding memory, and counted in ``stats["slow_closed"]``.

Host messages (:func:`apply_host_message`) are checked field by field: unknown fields, wrong
types, negative or boolean ids, text over ``MAX_TEXT_CHARS`` and speaker names with control
characters or angle brackets (which could forge the text model's speaker tokens) are refused
with ``{"type": "error", "schema_version": ..., "error": ...}`` and nothing is applied.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import socket
import threading
import time
import unicodedata
from http import HTTPStatus
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

from mmer.errors import UsageError
from mmer.extras import require
from mmer.realtime.schema import SCHEMA_VERSION
from mmer.realtime.sinks import to_json_line

log = logging.getLogger(__name__)

LOCALHOST = "127.0.0.1"          # bound here unless told otherwise: no remote access
CLIENT_QUEUE_MESSAGES = 64       # broadcasts waiting for one client; beyond, the client is dropped
SERVER_START_TIMEOUT_S = 5.0     # how long start() waits for the socket to be bound
SERVER_STOP_TIMEOUT_S = 5.0      # how long close() waits for the event-loop thread to end
CLOSE_POLICY = 1008              # websocket close code: policy violation (rate, slow client)
CLOSE_TRY_AGAIN = 1013           # websocket close code: try again later (server full)
DROP_CLOSE_TIMEOUT_S = 1.0       # a dropped client's socket is cut this long after the close frame:
                                 # a flood fills the read queue, so its close reply is never read
MAX_TEXT_CHARS = 2000            # a turn or transcript longer than this is not a dialogue turn
MAX_SPEAKER_CHARS = 64
FORBIDDEN_SPEAKER_CHARS = "<>"   # the text model's speaker tokens look like <s_k>
MESSAGE_FIELDS = {"turn": {"type", "speaker", "text"},
                  "text": {"type", "utterance_id", "text", "speaker"},
                  "reset": {"type"}}
FIX_PORT = "fix: pick another port (--ws PORT or --web PORT, 1024-65535) or 0 for any free one"
PAGE_FILE = "assets/web/live.html"  # package data of mmer: one self-contained page, no build step
PAGE_SETTINGS = '<script id="settings" type="application/json">{}</script>'  # filled by render_page
PAGE_PATHS = ("/", "/index.html")
WILDCARD_HOSTS = ("", "0.0.0.0", "::")  # every interface: the page is still opened via loopback


class PortError(UsageError):
    """The websocket cannot listen where asked: a port out of range, in use, or not allowed."""


def check_port(port: int, host: str = LOCALHOST) -> None:
    """Raise :class:`PortError` unless ``host:port`` can be bound now (0: any free port)."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise PortError(f"websocket port {port!r} is not a TCP port (0-65535). {FIX_PORT}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise PortError(f"websocket host {host!r} is not an address of this machine ({e}). "
                        "fix: outputs.ws_host=127.0.0.1") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio's server does
        try:
            probe.bind(address)
        except OSError as e:
            raise PortError(f"websocket cannot listen on {host}:{port}: {e.strerror or e}. {FIX_PORT}") from None


def render_page(settings: dict) -> str:
    """The live page's HTML with ``settings`` (JSON, e.g. ``{"frame_px": [640, 480]}``) templated in."""
    from importlib.resources import files

    html = (files("mmer") / PAGE_FILE).read_text(encoding="utf-8")
    if PAGE_SETTINGS not in html:
        raise RuntimeError(f"mmer/{PAGE_FILE} lacks its settings element {PAGE_SETTINGS}")
    data = json.dumps(settings).replace("<", "\\u003c")  # no "</script>" can end the element early
    return html.replace(PAGE_SETTINGS, PAGE_SETTINGS.replace("{}", data))


def _origin_host(host: str) -> str:
    return LOCALHOST if host in WILDCARD_HOSTS else f"[{host}]" if ":" in host else host


class _Bucket:
    """A token bucket: ``rate`` messages per second on average, bursts of ``rate`` (at least 1)."""

    def __init__(self, rate: float) -> None:
        self.rate, self.capacity = rate, max(1.0, rate)
        self.tokens, self.at = self.capacity, time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class WebSocketServer:
    """Broadcasts every frame it is given and hands host messages to ``on_message``.

    ``on_message(obj)`` gets each host message (a JSON object) and returns a reply dict for
    that client, or None; a ``ValueError`` from it is answered as ``{"type": "error"}``. As an
    output of the pipeline it takes predictions and events (``events = True``); ``emit`` is
    thread-safe and never blocks: the frame is serialised and handed to the server's own
    event-loop thread (``mmer-websocket``). ``stats`` counts clients, refusals and traffic.

    Args:
        port: TCP port; 0 picks a free one (read ``.port`` after ``start()``).
        host: interface to bind; 127.0.0.1 by default so only this machine can connect.
        origins: browser origins allowed besides none and this server's own.
        token: when set, every client must present it.
        max_clients / max_message_bytes / max_messages_per_s: the caps described above.
        page: settings of the live page; given, plain GETs of ``/`` are answered with the page.
    """

    name = "ws"
    events = True

    def __init__(self, port: int = 0, host: str = LOCALHOST, on_message: Callable[[dict], dict | None] | None = None,
                 *, origins: tuple[str, ...] | list[str] = (), token: str | None = None, max_clients: int = 8,
                 max_message_bytes: int = 64 * 1024, max_messages_per_s: float = 20.0,
                 page: dict | None = None) -> None:
        self.host, self.port, self.on_message = host, port, on_message
        self.origins = tuple(o.rstrip("/") for o in origins)
        self.token = token
        self.max_clients, self.max_message_bytes, self.max_messages_per_s = (
            max_clients, max_message_bytes, max_messages_per_s)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._clients: dict[Any, asyncio.Queue] = {}
        self.thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: OSError | None = None
        self.page = page
        self._page_html = None if page is None else render_page(page)  # a missing file fails here, not per GET
        self.stats = {"clients": 0, "sent": 0, "received": 0, "rejected": 0, "refused_origin": 0,
                      "refused_token": 0, "refused_full": 0, "rate_closed": 0, "slow_closed": 0,
                      "pages_served": 0}

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> "WebSocketServer":
        """Bind and serve in a daemon thread; raises :class:`PortError` if the port cannot be bound."""
        check_port(self.port, self.host)
        require("websockets")
        from websockets.asyncio.server import serve

        self.thread = threading.Thread(target=lambda: asyncio.run(self._main(serve)), name="mmer-websocket",
                                       daemon=True)
        self.thread.start()
        if not self._ready.wait(SERVER_START_TIMEOUT_S):
            raise PortError(f"websocket on {self.host}:{self.port} did not start within {SERVER_START_TIMEOUT_S} s")
        if self._error is not None:
            self.thread.join(SERVER_STOP_TIMEOUT_S)
            self.thread = None
            raise PortError(f"websocket cannot listen on {self.host}:{self.port}: "
                            f"{self._error.strerror or self._error}. {FIX_PORT}")
        return self

    async def _main(self, serve: Callable) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            server = await serve(self._handle, self.host, self.port, process_request=self._admit,
                                 max_size=self.max_message_bytes, max_queue=4)
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
        """Stop serving, disconnect every client and join the thread (idempotent)."""
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(self._stop.set)
            except RuntimeError:  # the loop closed between the check and the call
                pass
        if self.thread is not None:
            self.thread.join(SERVER_STOP_TIMEOUT_S)
            self.thread = None

    # -- who may connect --------------------------------------------------------------------
    def allowed_origins(self) -> tuple[str, ...]:
        """The browser origins accepted (a client without ``Origin`` is always accepted)."""
        own = (f"http://{LOCALHOST}:{self.port}", f"http://localhost:{self.port}")
        bound = f"http://{_origin_host(self.host)}:{self.port}"   # the page opened via the bind address
        return own + ((bound,) if bound not in own else ()) + self.origins

    def page_url(self) -> str | None:
        """Where a browser on this machine opens the live page (None: no page is served)."""
        return None if self.page is None else f"http://{_origin_host(self.host)}:{self.port}/"

    def _admit(self, connection: Any, request: Any) -> Any:
        origin = request.headers.get("Origin")
        if origin is not None and origin.rstrip("/") not in self.allowed_origins():
            self.stats["refused_origin"] += 1
            log.warning("websocket refused a client from origin %r (allowed: none, %s); add it with --ws-origin",
                        origin, ", ".join(self.allowed_origins()))
            return connection.respond(HTTPStatus.FORBIDDEN, f"origin {origin} is not allowed\n")
        if self.token is not None and not self._token_ok(request):
            self.stats["refused_token"] += 1
            return connection.respond(HTTPStatus.UNAUTHORIZED, "a token is needed: ?token=... or "
                                      "Authorization: Bearer ...\n")
        if self._page_html is not None and "websocket" not in request.headers.get("Upgrade", "").lower():
            return self._serve_page(connection, request)
        if len(self._clients) >= self.max_clients:
            self.stats["refused_full"] += 1
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE,
                                      f"{self.max_clients} clients are connected already\n")
        return None

    def _serve_page(self, connection: Any, request: Any) -> Any:
        """A plain GET: the live page at ``/``, 404 elsewhere (it holds no secret: the token stays in
        the address the user typed, which the page passes on to its websocket)."""
        if urlsplit(request.path).path not in PAGE_PATHS:
            return connection.respond(HTTPStatus.NOT_FOUND, "not found: the live page is /\n")
        response = connection.respond(HTTPStatus.OK, self._page_html)
        del response.headers["Content-Type"]
        response.headers["Content-Type"] = "text/html; charset=utf-8"
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Content-Type-Options"] = "nosniff"
        # Inline script and style only; the one connection allowed is back to this server.
        response.headers["Content-Security-Policy"] = ("default-src 'none'; script-src 'unsafe-inline'; "
                                                       "style-src 'unsafe-inline'; connect-src 'self'")
        self.stats["pages_served"] += 1
        return response

    def _token_ok(self, request: Any) -> bool:
        given = parse_qs(urlsplit(request.path).query).get("token", [""])[0]
        bearer = request.headers.get("Authorization", "")
        if bearer.lower().startswith("bearer "):
            given = given or bearer[len("bearer "):].strip()
        return hmac.compare_digest(given.encode("utf-8"), self.token.encode("utf-8"))

    # -- outgoing ---------------------------------------------------------------------------
    def emit(self, frame: Any) -> None:
        """Broadcast ``frame`` (a Prediction, an event or a dict) to every client; never blocks."""
        if self._loop is None or self._loop.is_closed():
            return
        text = to_json_line(frame)
        try:
            self._loop.call_soon_threadsafe(self._broadcast, text)
        except RuntimeError:  # the loop stopped between the check and the call
            pass

    def _broadcast(self, text: str) -> None:
        for connection, waiting in list(self._clients.items()):
            if waiting.full():
                self._drop(connection, "slow_closed", f"too slow: {CLIENT_QUEUE_MESSAGES} messages unread")
            else:
                waiting.put_nowait(text)

    def _drop(self, connection: Any, counter: str, reason: str) -> asyncio.Future | None:
        """Forget ``connection`` and close it with ``reason``; the closing future (None if gone)."""
        if self._clients.pop(connection, None) is None:
            return None
        self.stats[counter] += 1
        log.warning("websocket client %s disconnected: %s", connection.remote_address, reason)
        connection.close_timeout = DROP_CLOSE_TIMEOUT_S
        return asyncio.ensure_future(connection.close(CLOSE_POLICY, reason))

    # -- per client -------------------------------------------------------------------------
    async def _handle(self, connection: Any) -> None:
        if len(self._clients) >= self.max_clients:  # admitted together with others at the cap
            self.stats["refused_full"] += 1
            await connection.close(CLOSE_TRY_AGAIN, "server full")
            return
        waiting: asyncio.Queue = asyncio.Queue(maxsize=CLIENT_QUEUE_MESSAGES)
        self._clients[connection] = waiting
        self.stats["clients"] += 1
        sender = asyncio.ensure_future(self._send_loop(connection, waiting))
        bucket = _Bucket(self.max_messages_per_s)
        try:
            async for raw in connection:
                if not bucket.take():
                    closing = self._drop(connection, "rate_closed", f"more than {self.max_messages_per_s:g} messages/s")
                    if closing is not None:
                        await closing
                    break
                reply = self._answer(raw)
                if reply is not None:
                    await connection.send(to_json_line(reply))
        except Exception:  # a client that vanishes mid-message is not the server's problem
            log.debug("websocket client %s went away", connection.remote_address, exc_info=True)
        finally:
            self._clients.pop(connection, None)
            sender.cancel()

    async def _send_loop(self, connection: Any, waiting: asyncio.Queue) -> None:
        while True:
            await connection.send(await waiting.get())
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
            return {"type": "error", "schema_version": SCHEMA_VERSION, "error": str(e)}


# -- the host protocol ------------------------------------------------------------------------
def _text(message: dict, kind: str, empty_ok: bool = False) -> str:
    text = message.get("text")
    if not isinstance(text, str) or not (empty_ok or text.strip()):
        raise ValueError(f'a "{kind}" message needs a {"" if empty_ok else "non-empty "}string "text"')
    if len(text) > MAX_TEXT_CHARS:
        raise ValueError(f'"text" of a "{kind}" message is {len(text)} characters; at most {MAX_TEXT_CHARS}')
    return text


def _speaker(value: Any, kind: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f'"speaker" of a "{kind}" message must be a non-empty string')
    if len(value) > MAX_SPEAKER_CHARS:
        raise ValueError(f'"speaker" is {len(value)} characters; at most {MAX_SPEAKER_CHARS}')
    if any(ch in FORBIDDEN_SPEAKER_CHARS or unicodedata.category(ch).startswith("C") for ch in value):
        raise ValueError('"speaker" may not hold control characters or angle brackets')
    return value


def apply_host_message(host: Any, message: dict, default_speaker: str) -> dict:
    """Apply one host -> mmer message to ``host`` (a LivePipeline); returns the acknowledgement.

    ``{"type": "turn", "speaker"?, "text"}`` -> ``host.push_turn`` (speaker defaults to
    ``default_speaker``); ``{"type": "text", "utterance_id", "text", "speaker"?}`` ->
    ``host.push_text``; ``{"type": "reset"}`` -> ``host.reset_context``. A message that breaks
    any rule of the module docstring raises ``ValueError`` naming it, and nothing is applied.
    """
    kind = message.get("type")
    if kind not in MESSAGE_FIELDS:
        raise ValueError(f'unknown message type {kind!r}; expected "turn", "text" or "reset"')
    unknown = sorted(set(message) - MESSAGE_FIELDS[kind])
    if unknown:
        raise ValueError(f'unknown field(s) {", ".join(unknown)} in a "{kind}" message; '
                         f'it takes {", ".join(sorted(MESSAGE_FIELDS[kind]))}')
    if kind == "turn":
        host.push_turn(_speaker(message.get("speaker", default_speaker), kind), _text(message, kind))
    elif kind == "text":
        uid = message.get("utterance_id")
        if not isinstance(uid, int) or isinstance(uid, bool) or uid < 0:
            raise ValueError('a "text" message needs a non-negative integer "utterance_id"')
        speaker = message.get("speaker")
        host.push_text(uid, _text(message, kind, empty_ok=True), None if speaker is None else _speaker(speaker, kind))
    else:
        host.reset_context()
    return {"type": "ack", "schema_version": SCHEMA_VERSION, "of": kind}
