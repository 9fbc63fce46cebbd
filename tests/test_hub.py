"""ovr_core.hub.hub_reachable, the one hub check of serving and evaluation: it answers False at
once when HF_HUB_OFFLINE is set (the hub's own reading of true), reads HF_ENDPOINT when called,
and is bounded in time even when an answer never completes (the hang httpx's timeout misses)."""

from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ovr_core.hub import hub_offline, hub_reachable
from tests.conftest import free_port


class _Answer(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_HEAD(self):
        self.send_response(200)
        self.end_headers()


@pytest.fixture
def local_hub():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture
def trickling_hub():
    """Accepts, then sends a status line one byte every 0.3 s: each read is within httpx's
    timeout, so only a deadline on the whole check ends it."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    stop = threading.Event()

    def trickle():
        conn, _ = listener.accept()
        with conn:
            for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"x" * 200:
                if stop.wait(0.3):
                    return
                conn.sendall(bytes([byte]))

    threading.Thread(target=trickle, daemon=True).start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    listener.close()


def test_a_hub_that_answers_is_reachable_and_offline_mode_says_no_at_once(local_hub, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", local_hub)  # read when called, not when imported
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert not hub_offline() and hub_reachable(timeout=2) is True
    for true in ("1", "yes", "ON"):
        monkeypatch.setenv("HF_HUB_OFFLINE", true)
        start = time.monotonic()
        assert hub_offline() and hub_reachable(timeout=2) is False
        assert time.monotonic() - start < 0.5  # no request is made


def test_a_closed_port_is_unreachable(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    assert hub_reachable(timeout=2) is False


def test_an_answer_that_never_completes_is_cut_off_by_the_deadline(trickling_hub, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", trickling_hub)
    start = time.monotonic()
    assert hub_reachable(timeout=1) is False
    assert time.monotonic() - start < 5  # 2 × timeout + 1 s, not the 60 s the trickle would take
