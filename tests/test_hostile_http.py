"""Hostile clients, third round, against the session's real server: browsers that reach a local
server (DNS rebinding, cross-site pages), the HTTP layer before authentication (header count,
size, slow heads), text beyond the context, and one client holding many requests open.
"""

from __future__ import annotations

import time

import httpx
import pytest

from tests.test_hostile_clients import QUESTION, _good_chat

pytestmark = pytest.mark.slow


def _raw_status(root: str, head: bytes, timeout: float = 30) -> tuple[int | None, float]:
    """Send ``head`` on a fresh connection; (status of the answer or None if closed, seconds)."""
    import socket

    url = httpx.URL(root)
    start = time.monotonic()
    with socket.create_connection((url.host, url.port), timeout=timeout) as sock:
        try:
            sock.sendall(head)
        except OSError:  # the server cut us off mid-send: read what it answered
            pass
        line = sock.makefile("rb").readline().decode("latin-1")
    return (int(line.split()[1]) if line else None), time.monotonic() - start


def test_dns_rebinding_and_foreign_pages_get_nothing(ovr_server):
    """A page after DNS rebinding sends the key-free loopback server ``Host: evil.example``; a
    cross-site page sends its Origin. Neither reads models, tokenizes or chats."""
    key = {"Authorization": f"Bearer {ovr_server.api_key}"}
    chat = {"model": "ovr", "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 2}
    for extra in (
        {"Host": "evil.example:8000"},
        {"Host": "localhost.evil.example"},
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
    ):
        for method, path, body in (
            ("GET", "/v1/models", None),
            ("POST", "/tokenize", {"model": "ovr", "prompt": "hi"}),
            ("POST", "/v1/chat/completions", chat),
            ("GET", "/metrics", None),
        ):
            resp = httpx.request(
                method, ovr_server.root + path, json=body, headers={**key, **extra}, timeout=60
            )
            assert resp.status_code == 403, (extra, path, resp.status_code)
            assert resp.headers["x-ovr-guard"] == "refused"
            assert "--allowed_" in resp.json()["error"]["message"]
    for good in ({"Host": f"localhost:{ovr_server.handle.cfg.port}"}, {"Origin": "http://[::1]"}):
        resp = httpx.get(ovr_server.base_url + "/models", headers={**key, **good}, timeout=60)
        assert resp.status_code == 200, (good, resp.text[:200])


def test_request_heads_are_bounded_before_the_key(ovr_server):
    """Anonymous heads: too many lines, one huge line, a huge total: refused at once (httptools
    alone would read them all and answer 200)."""
    base = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    many = base + b"".join(b"X-%d: a\r\n" % i for i in range(2000)) + b"\r\n"
    huge_line = base + b"X-Big: " + b"a" * (1 << 20) + b"\r\n\r\n"
    huge_total = base + b"".join(b"X-%d: %s\r\n" % (i, b"b" * 8000) for i in range(60)) + b"\r\n"
    for head in (many, huge_line, huge_total):
        status, seconds = _raw_status(ovr_server.root, head)
        assert status in (431, 400, None), status
        assert seconds < 10
    assert _raw_status(ovr_server.root, base + b"X-A: b\r\n\r\n")[0] == 200


def test_slow_headers_are_cut_off_and_others_are_served(ovr_server):
    """Slowloris: 16 connections sending their head a byte a second are answered 408 and closed
    after the header timeout; a normal client is served meanwhile."""
    import socket

    timeout = ovr_server.handle.cfg.header_timeout
    url = httpx.URL(ovr_server.root)
    socks = [socket.create_connection((url.host, url.port), timeout=5) for _ in range(16)]
    head = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 100
    closed_after: dict[int, float] = {}
    start = time.monotonic()
    try:
        for i in range(len(head)):
            for n, sock in enumerate(socks):
                if n in closed_after:
                    continue
                try:
                    sock.sendall(head[i : i + 1])
                except OSError:
                    closed_after[n] = time.monotonic() - start
            if len(closed_after) == len(socks) or time.monotonic() - start > timeout + 15:
                break
            if i == 2:
                assert _good_chat(ovr_server).status_code == 200
            time.sleep(1.0)
        for n, sock in enumerate(socks):
            if n not in closed_after:
                sock.settimeout(0.5)
                try:
                    data = sock.recv(100)
                except OSError:
                    data = b"-"
                if data.startswith(b"HTTP/1.1 408") or data == b"":
                    closed_after[n] = time.monotonic() - start
    finally:
        for sock in socks:
            sock.close()
    assert len(closed_after) == len(socks), f"{len(closed_after)} of {len(socks)} closed"
    assert max(closed_after.values()) < timeout + 15


def test_text_beyond_the_context_is_refused_at_once_and_others_keep_their_answers(ovr_server):
    """An 8 MB prompt to /tokenize (plain and chat form) and to the chat route: 400 in seconds
    (vLLM alone tokenizes it for most of a minute), while a good chat is answered."""
    from concurrent.futures import ThreadPoolExecutor

    key = {"Authorization": f"Bearer {ovr_server.api_key}"}
    text = "ab " * ((8 << 20) // 3)
    bodies = [
        ("/tokenize", {"model": "ovr", "prompt": text}),
        ("/tokenize", {"model": "ovr", "messages": [{"role": "user", "content": text}]}),
        ("/v1/chat/completions", {"model": "ovr", "messages": [{"role": "user", "content": text}]}),
        ("/detokenize", {"model": "ovr", "tokens": [1] * 100_000}),
    ]
    with ThreadPoolExecutor(2) as pool:
        good = pool.submit(_good_chat, ovr_server)
        for path, body in bodies:
            start = time.monotonic()
            resp = httpx.post(ovr_server.root + path, json=body, headers=key, timeout=120)
            assert resp.status_code == 400, (path, resp.status_code, resp.text[:200])
            assert "context" in resp.json()["error"]["message"]
            assert time.monotonic() - start < 15
        assert good.result().status_code == 200


def test_one_client_holding_many_requests_gets_429_and_others_are_served(ovr_server):
    """A client that holds its per-client quota of requests open (bodies never sent) gets a 429
    for the next; a client from another address is answered."""
    import socket

    limit = ovr_server.handle.cfg.max_requests_per_client
    url = httpx.URL(ovr_server.base_url)
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {ovr_server.api_key}\r\nContent-Type: application/json\r\n"
        "Content-Length: 1000\r\n\r\n{"
    ).encode()
    held = []
    try:
        for _ in range(limit):
            sock = socket.create_connection((url.host, url.port), timeout=30)
            sock.sendall(head)
            held.append(sock)
        time.sleep(1.0)
        resp = _good_chat(ovr_server)
        assert resp.status_code == 429, resp.text[:200]
        assert "--max_requests_per_client" in resp.json()["error"]["message"]
        assert resp.headers["retry-after"] == "1"
        other = httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2"))
        with other:
            resp = other.post(
                ovr_server.base_url + "/chat/completions",
                headers={"Authorization": f"Bearer {ovr_server.api_key}"},
                json={"model": "ovr", "messages": [{"role": "user", "content": "hi"}]},
                timeout=120,
            )
        assert resp.status_code == 200
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 30  # the slots come back once the held requests end
    while (resp := _good_chat(ovr_server)).status_code == 429 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert resp.status_code == 200


def _qoi_breaking_pillow() -> bytes:
    """A QOI image with a sound header whose pixel data makes Pillow's decoder raise IndexError
    (not the OSError vLLM 0.32 turns into a 400)."""
    import io
    import random

    from PIL import Image

    buf = io.BytesIO()
    Image.linear_gradient("L").convert("RGB").resize((64, 48)).save(buf, "QOI")
    raw, rng = buf.getvalue(), random.Random(0)
    for _ in range(5000):
        data = bytearray(raw)
        for _ in range(rng.randint(1, 6)):
            data[rng.randrange(14, len(data))] = rng.randrange(256)
        try:
            Image.open(io.BytesIO(bytes(data))).load()
        except IndexError:
            return bytes(data)
        except Exception:
            continue
    raise AssertionError("no such QOI found: has Pillow's QOI decoder changed?")


def test_images_whose_pixels_do_not_decode_get_vllms_400(ovr_server):
    """The guard reads only the header; the pixels are decoded once, by vLLM, and every image it
    cannot decode is a 400 (an IndexError from Pillow was a 500 in vLLM 0.32)."""
    import base64

    from tests.test_guard import corrupt_pixels, png

    key = {"Authorization": f"Bearer {ovr_server.api_key}"}
    for mime, raw in (("png", corrupt_pixels(png((64, 64)))), ("qoi", _qoi_breaking_pillow())):
        url = f"data:image/{mime};base64,{base64.b64encode(raw).decode()}"
        part = {"type": "image_url", "image_url": {"url": url}}
        body = {"model": "ovr", "max_tokens": 1, "messages": [{"role": "user", "content": [part]}]}
        for path in ("/v1/chat/completions", "/tokenize"):
            resp = httpx.post(ovr_server.root + path, json=body, headers=key, timeout=120)
            assert resp.status_code == 400, (mime, path, resp.status_code, resp.text[:300])
            assert "x-ovr-guard" not in resp.headers  # vLLM's own refusal
    assert _good_chat(ovr_server).status_code == 200
