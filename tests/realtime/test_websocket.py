"""The websocket's guards on a real server and real clients: Origin allow-list, token, caps on
connections, message size and rate, slow readers dropped, host messages checked field by field."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

pytest.importorskip("websockets")
from websockets.exceptions import ConnectionClosed, InvalidStatus  # noqa: E402
from websockets.sync.client import connect  # noqa: E402

from mmer.realtime.schema import SCHEMA_VERSION  # noqa: E402
from mmer.realtime.websocket import (MAX_TEXT_CHARS, PortError, WebSocketServer,  # noqa: E402
                                     apply_host_message, check_port)

TIMEOUT_S = 10


class Host:
    """What the host protocol drives: records the calls a LivePipeline would get."""

    def __init__(self):
        self.calls = []

    def push_turn(self, speaker, text):
        self.calls.append(("turn", speaker, text))

    def push_text(self, utterance_id, text, speaker=None):
        self.calls.append(("text", utterance_id, text, speaker))

    def reset_context(self):
        self.calls.append(("reset",))


@pytest.fixture
def serve():
    servers = []

    def start(**kwargs):
        host = Host()
        server = WebSocketServer(0, on_message=lambda m: apply_host_message(host, m, "robot"), **kwargs).start()
        servers.append(server)
        return server, host

    yield start
    for server in servers:
        server.close()


def client(server, path="", **kwargs):
    return connect(f"ws://127.0.0.1:{server.port}{path}", open_timeout=TIMEOUT_S, proxy=None, **kwargs)


def refused_status(server, **kwargs) -> int:
    with pytest.raises(InvalidStatus) as refused:
        client(server, **kwargs).close()
    return refused.value.response.status_code


def test_a_foreign_origin_is_refused_and_a_native_client_served(serve):
    server, host = serve(origins=("http://kiosk.local:8080",))
    assert refused_status(server, origin="https://evil.example") == 403
    assert server.stats["refused_origin"] == 1
    for origin in (None, f"http://localhost:{server.port}", "http://kiosk.local:8080"):
        with client(server, origin=origin) as ws:
            ws.send(json.dumps({"type": "turn", "text": "Hello there."}))
            assert json.loads(ws.recv(timeout=TIMEOUT_S)) == {"type": "ack", "schema_version": SCHEMA_VERSION,
                                                              "of": "turn"}
            server.emit({"type": "prediction", "utterance_id": 0})
            assert json.loads(ws.recv(timeout=TIMEOUT_S))["type"] == "prediction"
    assert host.calls == [("turn", "robot", "Hello there.")] * 3


def test_the_token_is_required_when_set(serve):
    server, _ = serve(token="s3cret")
    assert refused_status(server) == 401
    assert refused_status(server, path="?token=wrong") == 401
    with client(server, path="?token=s3cret") as ws:
        ws.send(json.dumps({"type": "reset"}))
        assert json.loads(ws.recv(timeout=TIMEOUT_S))["type"] == "ack"
    with client(server, additional_headers={"Authorization": "Bearer s3cret"}) as ws:
        ws.send(json.dumps({"type": "reset"}))
        assert json.loads(ws.recv(timeout=TIMEOUT_S))["type"] == "ack"
    assert server.stats["refused_token"] == 2


def test_connections_are_capped(serve):
    server, _ = serve(max_clients=2)
    first, second = client(server), client(server)
    try:
        assert refused_status(server) == 503
    finally:
        first.close()
        second.close()
    deadline = time.monotonic() + TIMEOUT_S
    while server.stats["clients"] and time.monotonic() < deadline and len(server._clients):
        time.sleep(0.05)
    with client(server) as ws:  # a freed place can be taken again
        ws.send(json.dumps({"type": "reset"}))
        assert json.loads(ws.recv(timeout=TIMEOUT_S))["type"] == "ack"


def test_a_message_over_the_size_cap_closes_the_connection(serve):
    server, host = serve(max_message_bytes=1024)
    with client(server) as ws:
        ws.send(json.dumps({"type": "turn", "text": "x" * 4096}))
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=TIMEOUT_S)
    assert closed.value.rcvd.code == 1009 and host.calls == []


def test_a_flooding_client_is_closed_and_little_gets_through(serve):
    server, host = serve(max_messages_per_s=5)
    sent = 0
    with client(server) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            for _ in range(500):
                ws.send(json.dumps({"type": "turn", "text": "injected"}))
                sent += 1
            while True:
                ws.recv(timeout=TIMEOUT_S)
    assert closed.value.rcvd.code == 1008 and server.stats["rate_closed"] == 1
    # A burst of 5 (plus a token refilled meanwhile) gets through; the client may see the close on
    # its next send, so `sent` can be as low as that burst plus the one refused message.
    assert len(host.calls) <= 6 and len(host.calls) < sent


def test_a_client_that_does_not_read_is_dropped_not_buffered(serve):
    server, _ = serve()
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT_S)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    assert b"101" in raw.recv(1024)
    payload = {"type": "prediction", "text": "y" * 4096}
    deadline = time.monotonic() + 30
    while not server.stats["slow_closed"] and time.monotonic() < deadline:
        server.emit(payload)
        time.sleep(0.002)
    raw.close()
    assert server.stats["slow_closed"] == 1 and not server._clients


@pytest.mark.parametrize("message, problem", [
    ({"type": "turn", "text": "hi", "extra": 1}, "unknown field"),
    ({"type": "turn", "text": 5}, "string"),
    ({"type": "turn", "text": "   "}, "non-empty"),
    ({"type": "turn", "text": "x" * (MAX_TEXT_CHARS + 1)}, "at most"),
    ({"type": "turn", "speaker": "<s_1>", "text": "hi"}, "angle brackets"),
    ({"type": "turn", "speaker": "bob\n", "text": "hi"}, "control"),
    ({"type": "turn", "speaker": "b" * 65, "text": "hi"}, "at most"),
    ({"type": "text", "utterance_id": True, "text": "hi"}, "integer"),
    ({"type": "text", "utterance_id": -1, "text": "hi"}, "non-negative"),
    ({"type": "text", "utterance_id": 3, "text": None}, "string"),
    ({"type": "reset", "all": True}, "unknown field"),
    ({"type": "dance"}, "unknown message type"),
])
def test_host_messages_are_checked_field_by_field(message, problem):
    host = Host()
    with pytest.raises(ValueError, match=problem):
        apply_host_message(host, message, "robot")
    assert host.calls == []


def test_valid_host_messages_are_applied():
    host = Host()
    apply_host_message(host, {"type": "turn", "speaker": "Ana María", "text": "Hi!"}, "robot")
    apply_host_message(host, {"type": "text", "utterance_id": 0, "text": ""}, "robot")
    apply_host_message(host, {"type": "text", "utterance_id": 2, "text": "ok", "speaker": "user"}, "robot")
    apply_host_message(host, {"type": "reset"}, "robot")
    assert host.calls == [("turn", "Ana María", "Hi!"), ("text", 0, "", None), ("text", 2, "ok", "user"),
                          ("reset",)]


def test_bad_and_busy_ports_are_usage_errors():
    for port in (99999, -1, "80"):
        with pytest.raises(PortError, match="--ws"):
            check_port(port)
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        busy = held.getsockname()[1]
        with pytest.raises(PortError, match=f"127.0.0.1:{busy}"):
            WebSocketServer(busy).start()
    assert not [t for t in threading.enumerate() if t.name == "mmer-websocket"]
