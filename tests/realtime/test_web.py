"""The live page (``mmer-live --web PORT``): served by the websocket on its own port, wired from the
config and the command line, and rendered by a real headless Chromium during a real replay."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("websockets")
from websockets.sync.client import connect  # noqa: E402

from mmer.realtime.cli import EXIT_USAGE, build_live_parser, live_main, resolve_config  # noqa: E402
from mmer.realtime.make_sample import sample_path  # noqa: E402
from mmer.realtime.websocket import WebSocketServer, render_page  # noqa: E402
from tests.realtime.test_cli import STARTUP_DEADLINE_S, _run_cli, models  # noqa: E402,F401  (fixture)
from tests.realtime.test_face_path import face_model  # noqa: E402,F401
from tests.realtime.test_predictor import tiny_asf, tiny_checkpoints, tiny_face_student  # noqa: E402,F401
from tests.realtime.test_predictor import tiny_teacher, tiny_voice  # noqa: E402,F401

TIMEOUT_S = 10
CHROMIUM_NAMES = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
WINDOW_PX = (1280, 900)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MIN_SCREENSHOT_BYTES = 20_000      # a blank 1280x900 page compresses to a few kB
BROWSER_DEADLINE_S = 60            # Chromium start + the page's first live prediction, on a busy box


def http_get(url: str, headers: dict | None = None) -> tuple[int, dict, str]:
    """Status, headers and body of a GET (errors included), with no proxy in the way."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(urllib.request.Request(url, headers=headers or {}), timeout=TIMEOUT_S) as r:
            return r.status, dict(r.headers), r.read().decode("utf-8")
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode("utf-8")


@pytest.fixture
def serve():
    servers = []

    def start(**kwargs):
        server = WebSocketServer(0, **kwargs).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


# -- the page on the websocket's port ---------------------------------------------------------------
def test_page_is_served_where_the_websocket_listens(serve):
    server = serve(page={"frame_px": [320, 240]})
    base = f"http://127.0.0.1:{server.port}"
    assert server.page_url() == base + "/"
    status, headers, body = http_get(base + "/")
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    assert "connect-src 'self'" in headers["Content-Security-Policy"] and 'id="label"' in body
    assert '{"frame_px": [320, 240]}' in body
    assert not re.search(r"<script[^>]+src|<link|@import|url\(", body)   # self-contained: nothing to fetch
    assert http_get(base + "/index.html")[0] == 200 and http_get(base + "/favicon.ico")[0] == 404
    assert http_get(base + "/", {"Origin": "http://evil.example"})[0] == 403
    with connect(f"ws://127.0.0.1:{server.port}/", origin=base, open_timeout=TIMEOUT_S, proxy=None) as ws:
        server.emit({"type": "vad", "kind": "start", "time_s": 1.0})
        assert json.loads(ws.recv(timeout=TIMEOUT_S))["kind"] == "start"   # the page's own origin is let in
    assert server.stats["pages_served"] == 2


def test_with_a_token_the_page_needs_it_too_and_holds_no_secret(serve):
    server = serve(page={}, token="s3cret")
    base = f"http://127.0.0.1:{server.port}/"
    status, _, body = http_get(base)
    assert status == 401 and "token" in body
    status, _, body = http_get(base + "?token=s3cret")
    assert status == 200 and "s3cret" not in body    # the page passes on its own ?token= to the websocket


def test_without_a_page_a_plain_get_is_refused(serve):
    server = serve()
    assert server.page_url() is None and http_get(f"http://127.0.0.1:{server.port}/")[0] == 426


def test_settings_cannot_end_their_script_element():
    html = render_page({"frame_px": None, "note": "</script><script>alert(1)</script>"})
    assert html.count("</script>") == render_page({}).count("</script>")


# -- config and command line ------------------------------------------------------------------------
def test_web_flag_opens_the_websocket_on_its_port():
    cfg = resolve_config(build_live_parser().parse_args(["--web", "0"]))
    assert cfg.outputs.web_port == 0 and cfg.outputs.ws_port is None and cfg.outputs.websocket_port() == 0
    cfg = resolve_config(build_live_parser().parse_args(["--web", "8765", "--ws", "8765"]))
    assert cfg.outputs.websocket_port() == 8765


def test_page_settings_give_the_frame_size():
    from mmer.realtime.build import page_settings
    from mmer.realtime.config import load_live_config

    assert page_settings(load_live_config(overrides=[f"sources.input={sample_path()}"])) == {"frame_px": [320, 240]}
    assert page_settings(load_live_config()) == {"frame_px": [640, 480]}
    assert page_settings(load_live_config(overrides=["sources.camera=null"])) == {"frame_px": None}


def test_bad_busy_or_conflicting_web_port_exits_2_before_models_load(capsys):
    t0 = time.perf_counter()
    no_model = ["--text-model", "/nonexistent/model"]
    assert live_main(["--demo", "--web", "70000", *no_model]) == EXIT_USAGE
    assert "70000" in capsys.readouterr().err
    assert live_main(["--demo", "--web", "8001", "--ws", "8002", *no_model]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "web_port=8001" in err and "ws_port=8002" in err and "could not load" not in err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert live_main(["--demo", "--web", str(port), *no_model]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert str(port) in err and "--web" in err and "modalities:" not in err and "could not load" not in err
    assert time.perf_counter() - t0 < 10


# -- a real browser on a real replay ----------------------------------------------------------------
def find_chromium() -> str | None:
    """A Chromium or Chrome binary (env MMER_CHROMIUM first), or None."""
    given = os.environ.get("MMER_CHROMIUM")
    return given if given else next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)


class Chromium:
    """Headless Chromium driven over the DevTools protocol: waits on the live page's DOM, as a
    --dump-dom with a virtual-time budget cannot (it does not wait for websocket traffic)."""

    def __init__(self, binary: str, url: str, profile: Path) -> None:
        self.proc = subprocess.Popen(
            [binary, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run", "--no-proxy-server",
             "--remote-debugging-port=0", f"--user-data-dir={profile}", f"--window-size={WINDOW_PX[0]},{WINDOW_PX[1]}",
             url], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            start_new_session=True)         # its own process group: Debian's binary is a sh wrapper
        try:
            self._attach()
        except BaseException:
            self._end_group()
            raise

    def _attach(self) -> None:
        said = []
        for line in self.proc.stderr:      # Chromium names its DevTools socket on stderr
            said.append(line)
            found = re.search(r"DevTools listening on (ws://\S+)", line)
            if found:
                break
        else:
            raise RuntimeError("Chromium exited without DevTools: " + "".join(said[-20:]))
        threading.Thread(target=self.proc.stderr.read, daemon=True).start()   # keep its pipe drained
        self.ws = connect(found.group(1), max_size=None, open_timeout=TIMEOUT_S, proxy=None)
        self.calls = 0
        page = next(t for t in self.call("Target.getTargets")["targetInfos"] if t["type"] == "page")
        self.session = self.call("Target.attachToTarget", targetId=page["targetId"], flatten=True)["sessionId"]

    def call(self, method: str, session: str | None = None, **params) -> dict:
        self.calls += 1
        message = {"id": self.calls, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        self.ws.send(json.dumps(message))
        while True:
            reply = json.loads(self.ws.recv(timeout=TIMEOUT_S * 3))
            if reply.get("id") == self.calls:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def evaluate(self, expression: str):
        return self.call("Runtime.evaluate", self.session, expression=expression, returnByValue=True)["result"].get(
            "value")

    def screenshot(self, path: Path) -> bytes:
        data = base64.b64decode(self.call("Page.captureScreenshot", self.session, format="png")["data"])
        path.write_bytes(data)
        return data

    def close(self) -> None:
        """Close the browser itself (terminating a wrapper script would leave it running), then
        end whatever is left of its process group."""
        try:
            self.call("Browser.close")
        except Exception:  # it may be gone already; the group is ended below either way
            pass
        self.ws.close()
        try:
            self.proc.wait(TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pass
        self._end_group()

    def _end_group(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(TIMEOUT_S)


PAGE_STATE = """document.getElementById("latency") && JSON.stringify({state: document.body.dataset.state, n: +document.body.dataset.predictions,
  utterance: document.body.dataset.utterance, label: document.getElementById("label").textContent,
  valence: document.getElementById("valence").textContent, face: document.getElementById("face-info").textContent,
  rows: document.getElementById("transcript").children.length,
  latency: document.getElementById("latency").children.length,
  probs: document.getElementById("probs").children.length})"""


def test_live_page_in_headless_chromium_shows_what_was_emitted(models, tmp_path):  # noqa: F811
    binary = find_chromium()
    if binary is None:
        if os.environ.get("CI"):   # .ci/run installs it: a skip there would hide a broken install
            pytest.fail("CI has no Chromium: scripts/install.sh should have installed chromium-headless-shell")
        pytest.skip(f"no Chromium found ({', '.join(CHROMIUM_NAMES)} or MMER_CHROMIUM); "
                    "apt-get install chromium-headless-shell (scripts/install.sh does)")
    out = tmp_path / "live.jsonl"
    proc = _run_cli("live_main", ["--demo", "--realtime", "--asr", "none", "--web", "0", "--json", str(out), *models,
                                  "face.max_fps=3"])
    err_lines: list[str] = []

    def read_stderr() -> None:
        for line in proc.stderr:
            err_lines.append(line)

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    browser = None
    try:
        deadline = time.perf_counter() + STARTUP_DEADLINE_S
        url = None
        while url is None and time.perf_counter() < deadline and proc.poll() is None:
            found = re.search(r"live page: (http://127\.0\.0\.1:\d+/)", "".join(err_lines))
            url = found.group(1) if found else None
            time.sleep(0.1)
        assert url, "".join(err_lines)
        browser = Chromium(binary, url, Path(tempfile.mkdtemp(dir=tmp_path)))
        deadline = time.perf_counter() + BROWSER_DEADLINE_S
        state = {}
        while time.perf_counter() < deadline and proc.poll() is None:
            raw = browser.evaluate(PAGE_STATE)   # None while the page is still loading
            state = json.loads(raw) if raw else state
            if state.get("n", 0) >= 2:
                break
            time.sleep(0.2)
        assert state.get("n", 0) >= 1, (state, "".join(err_lines))
        shot = browser.screenshot(tmp_path / "live_page.png")
        proc.send_signal(signal.SIGINT)     # seen enough: the rest of the replay is flushed, exit 0
        proc.wait(STARTUP_DEADLINE_S)
    finally:
        if browser is not None:
            browser.close()
        if proc.poll() is None:
            proc.kill()
        reader.join(TIMEOUT_S)
    err = "".join(err_lines)
    assert proc.returncode == 0, err
    emitted = {p["utterance_id"]: p for p in map(json.loads, out.read_text().splitlines())}
    shown = emitted[int(state["utterance"])]
    assert state["state"] == "open" and state["label"] == shown["label"]
    assert abs(float(state["valence"]) - shown["valence"]) <= 0.005 + 1e-9 and f"box [{', '.join(map(str, shown['face']['box']))}]" in (
        state["face"])
    assert state["rows"] == state["n"] and state["latency"] == 3 * len(shown["latency_ms"])
    assert state["probs"] == (len(shown["probs"]) + 1) * (2 + len(shown["modality_probs"]))   # head + classes
    assert "ws_pages_served=1" in err and "ws_refused_origin=0" in err
    assert shot.startswith(PNG_SIGNATURE) and len(shot) > MIN_SCREENSHOT_BYTES
    assert struct.unpack(">II", shot[16:24]) == WINDOW_PX        # IHDR: width, height
