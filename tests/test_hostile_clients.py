"""Hostile clients against the real server: generated request shapes, and a mixed load.

Not a replay of known attacks: hypothesis builds requests from routes × content shapes × media
values × body encodings × headers and sends each to the session's real ovr-serve endpoint, with a
loopback canary HTTP server standing in for an internal address. Whatever the shape: never a 5xx,
never a request to the canary, and the server still healthy and answering afterwards.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from tests.test_guard import corrupt_pixels

pytestmark = pytest.mark.slow

QUESTION = "What is 3 + 4?"


class _Canary(BaseHTTPRequestHandler):
    hits: list[str] = []

    def _hit(self):
        _Canary.hits.append(f"{self.command} {self.path}")
        self.send_response(302)  # a redirect too: an allowed fetch must not follow it
        self.send_header("Location", f"http://127.0.0.1:{self.server.server_port}/again")
        self.end_headers()

    do_GET = do_POST = do_HEAD = _hit  # noqa: N815

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def canary():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Canary)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()


def _png(size=(48, 32), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, 0).save(buf, "PNG")
    return buf.getvalue()


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


GOOD_PNG = _b64(_png())
SVG = b'<svg xmlns="http://www.w3.org/2000/svg"><image href="http://127.0.0.1:9/x"/></svg>'
MEDIA_VALUES = {  # name -> (value for a URL field, raw base64 for a source's "data" field)
    "good png": (f"data:image/png;base64,{GOOD_PNG}", GOOD_PNG),
    "corrupt pixels": (
        f"data:image/png;base64,{_b64(corrupt_pixels(_png()))}",
        _b64(corrupt_pixels(_png())),
    ),
    "8200x8200": (
        f"data:image/png;base64,{_b64(_png((8200, 8200), '1'))}",
        _b64(_png((8200, 8200), "1")),
    ),
    "base64 with a parameter": (f"data:image/png;base64;x=1,{GOOD_PNG}", GOOD_PNG),
    "no base64": (f"data:image/png,{GOOD_PNG}", "%%%"),
    "svg": ("data:image/svg+xml;base64," + _b64(SVG), _b64(SVG)),
    "not an image": (f"data:image/png;base64,{_b64(b'hello')}", _b64(b"hello")),
}
CANARY_FORMS = (
    "http://127.0.0.1:{port}/c.png",
    "HTTP://localhost:{port}/c.png",
    "http://user@127.0.0.1:{port}/c.png",
    " http://127.0.0.1:{port}/c.png",
    "https://127.0.0.1:{port}/c.png",
    "http://127.0.0.1:{port}/c.png#@images.example.org",
    "file:///etc/passwd",
)


def _containers(value: str, data: str) -> dict:
    """Every place a media reference can sit in a request, by name."""
    return {
        "image_url": {"type": "image_url", "image_url": {"url": value}},
        "image_url string": {"type": "image_url", "image_url": value},
        "untyped with uuid": {"image_url": value, "uuid": "shared-uuid"},
        "input_image": {"type": "input_image", "image_url": value},
        "source url": {"type": "image", "source": {"type": "url", "url": value}},
        "source base64": {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/png", "data": data},
        },
        "source no type": {"type": "image", "source": {"media_type": "image/png", "data": data}},
        "under type base64": {"type": "base64", "data": "AAAA", "image_url": {"url": value}},
        "audio_url": {"type": "audio_url", "audio_url": {"url": value}},
        "video_url": {"video_url": {"url": value}},
        "input_audio": {"type": "input_audio", "input_audio": {"data": data, "format": "wav"}},
        "file": {"type": "file", "file": {"file_data": value}},
        "uuid only": {"type": "image_url", "image_url": None, "uuid": "shared-uuid"},
        "text": {"type": "text", "text": value},
    }


ROUTES = [
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/completions"),
    ("POST", "/tokenize"),
    ("POST", "/detokenize"),
    ("GET", "/v1/models"),
    ("GET", "/health"),
    ("POST", "/health"),
    ("POST", "/v1/messages"),
    ("POST", "/v1/responses"),
    ("POST", "/invocations"),
    ("POST", "/scale_elastic_ep"),
    ("POST", "/pooling"),
    ("GET", "/openapi.json"),
]


def _body(route: str, part: dict, wrap: str) -> dict:
    chat = {"role": "user", "content": [part, {"type": "text", "text": QUESTION}]}
    body = {"model": "ovr", "max_tokens": 1, "messages": [chat]}
    if route == "/v1/completions":
        body = {"model": "ovr", "max_tokens": 1, "prompt": QUESTION, "extra": [part]}
    elif route == "/detokenize":
        body = {"model": "ovr", "tokens": [1, 2, 3], "extra": part}
    elif route in ("/v1/messages",):
        body["system"] = [part]
    elif route == "/v1/responses":
        body = {"model": "ovr", "input": [{"role": "user", "content": [part]}]}
    if wrap == "nested list":
        body["metadata"] = [[part]]
    elif wrap == "deep":
        deep: object = part
        for _ in range(200):
            deep = [deep]
        body["metadata"] = deep
    elif wrap == "media override":
        body["mm_processor_kwargs"] = {"max_pixels": 10**9}
    return body


def _encode(body: dict, encoding: str) -> bytes:
    if encoding == "utf-8":
        return json.dumps(body).encode()
    if encoding == "escaped":  # every character a \u escape inside strings
        return json.dumps(body, ensure_ascii=True).replace("http", "\\u0068ttp").encode()
    if encoding == "utf-16":
        return json.dumps(body).encode("utf-16")
    if encoding == "duplicate keys":  # the last "messages" wins in every JSON parser we use
        good = {"role": "user", "content": QUESTION}
        return ('{"messages": [' + json.dumps(good) + "], " + json.dumps(body)[1:]).encode()
    if encoding == "huge number":  # over Python's 4300-digit int limit: json.loads raises
        return (
            json.dumps(body)
            .replace('"model": "ovr"', '"seed": ' + "9" * 5000 + ', "model": "ovr"')
            .encode()
        )
    raise AssertionError(encoding)


def _headers(kind: str, key: str) -> list[tuple[str, str]]:
    auth = ("authorization", f"Bearer {key}")
    json_type = ("content-type", "application/json")
    return {
        "plain": [auth, json_type],
        "two content types, json first": [auth, json_type, ("content-type", "text/plain")],
        "two content types, json last": [auth, ("content-type", "text/plain"), json_type],
        "no content type": [auth],
        "text/plain": [auth, ("content-type", "text/plain")],
        "+json": [auth, ("content-type", "application/vnd.api+json")],
        "x-api-key": [("x-api-key", key), json_type],
        "two keys": [auth, ("authorization", "Bearer wrong"), json_type],
        "anonymous": [json_type],
        "gzip": [auth, json_type, ("content-encoding", "gzip")],
    }[kind]


@st.composite
def hostile_requests(draw, port: int, key: str):
    method, route = draw(st.sampled_from(ROUTES))
    name = draw(st.sampled_from(sorted(MEDIA_VALUES) + ["canary"]))
    if name == "canary":
        value = draw(st.sampled_from(CANARY_FORMS)).format(port=port)
        data = value
    else:
        value, data = MEDIA_VALUES[name]
    shape = draw(st.sampled_from(sorted(_containers(value, data))))
    wrap = draw(st.sampled_from(["none", "nested list", "deep", "media override"]))
    encoding = draw(
        st.sampled_from(["utf-8", "escaped", "utf-16", "duplicate keys", "huge number"])
    )
    headers = draw(st.sampled_from(["plain"] * 4 + [k for k in _headers_kinds() if k != "plain"]))
    body = _encode(_body(route, _containers(value, data)[shape], wrap), encoding)
    return method, route, body, _headers(headers, key), (name, shape, wrap, encoding, headers)


def _headers_kinds() -> list[str]:
    return [
        "plain",
        "two content types, json first",
        "two content types, json last",
        "no content type",
        "text/plain",
        "+json",
        "x-api-key",
        "two keys",
        "anonymous",
        "gzip",
    ]


def _good_chat(endpoint, timeout=120) -> httpx.Response:
    return httpx.post(
        endpoint.base_url + "/chat/completions",
        headers={"Authorization": f"Bearer {endpoint.api_key}"},
        json={"model": "ovr", "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 4},
        timeout=timeout,
    )


def test_generated_hostile_requests_never_5xx_never_fetch(ovr_server, canary):
    _Canary.hits.clear()
    seen: dict[int, int] = {}

    @settings(
        max_examples=120,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(hostile_requests(canary, ovr_server.api_key))
    def one(request):
        method, route, body, headers, what = request
        content = None if method == "GET" else body
        resp = httpx.request(
            method, ovr_server.root + route, content=content, headers=headers, timeout=120
        )
        seen[resp.status_code] = seen.get(resp.status_code, 0) + 1
        assert resp.status_code < 500, (what, route, resp.status_code, resp.text[:300])
        assert _Canary.hits == [], (what, route)

    one()
    print("status counts:", dict(sorted(seen.items())))
    assert httpx.get(ovr_server.root + "/health").status_code == 200
    assert _good_chat(ovr_server).status_code == 200
    assert _Canary.hits == []
    assert 404 in seen and 400 in seen and 200 in seen  # the search reached every outcome


def test_known_escapes_of_the_old_guard_are_closed(ovr_server, canary):
    """The issue's reproductions, each a shape the generator also reaches."""
    _Canary.hits.clear()
    key = {"Authorization": f"Bearer {ovr_server.api_key}"}
    url = f"http://127.0.0.1:{canary}/c.png"
    part = {"type": "image_url", "image_url": {"url": url}}
    body = json.dumps(
        {"model": "ovr", "max_tokens": 1, "messages": [{"role": "user", "content": [part]}]}
    )
    two_types = [*key.items(), ("content-type", "text/plain"), ("content-type", "application/json")]
    resp = httpx.post(ovr_server.base_url + "/chat/completions", content=body, headers=two_types)
    assert resp.status_code == 400
    resp = httpx.post(
        ovr_server.root + "/scale_elastic_ep", headers=key, json={"new_data_parallel_size": 2}
    )
    assert resp.status_code == 404
    assert _status_before_body(ovr_server.root, "/health", 48 << 20) in (400, 405)
    assert _status_before_body(ovr_server.base_url, "/chat/completions", 48 << 20) == 401
    deep = b'{"model": "ovr", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    resp = httpx.post(ovr_server.base_url + "/chat/completions", content=deep, headers=key)
    assert resp.status_code == 400
    assert _Canary.hits == []


def _status_before_body(base: str, path: str, length: int) -> int:
    """Announce a body of ``length`` bytes, send none of it, and read the answer: a server that
    waited for the body would time out instead."""
    import socket

    url = httpx.URL(base + path)
    with socket.create_connection((url.host, url.port), timeout=30) as sock:
        head = f"POST {url.path} HTTP/1.1\r\nHost: {url.host}\r\nContent-Type: application/json\r\n"
        sock.sendall(f"{head}Content-Length: {length}\r\n\r\n".encode())
        status_line = sock.makefile("rb").readline().decode()
    return int(status_line.split()[1])


def test_a_client_uuid_never_reaches_another_requests_image(ovr_server):
    key = {"Authorization": f"Bearer {ovr_server.api_key}"}
    image = {"type": "image_url", "image_url": {"url": MEDIA_VALUES["good png"][0]}, "uuid": "u-1"}
    first = {
        "model": "ovr",
        "messages": [{"role": "user", "content": [image, {"type": "text", "text": "hi"}]}],
    }
    assert httpx.post(ovr_server.root + "/tokenize", headers=key, json=first).status_code == 200
    later = {"type": "image_url", "image_url": None, "uuid": "u-1"}
    second = {
        "model": "ovr",
        "messages": [{"role": "user", "content": [later, {"type": "text", "text": "hi"}]}],
    }
    resp = httpx.post(ovr_server.root + "/tokenize", headers=key, json=second)
    assert resp.status_code == 400, resp.text[:300]


def _tree_rss(pid: int) -> int:
    proc = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])


def test_mixed_load_good_clients_all_answered_and_no_memory_growth(ovr_server, canary):
    """~40 s of two good clients beside three hostile ones: every good request answered, the
    server's memory back where it was after warm-up."""
    import random
    from concurrent.futures import ThreadPoolExecutor

    key = {"Authorization": f"Bearer {ovr_server.api_key}"}
    hostile = [
        (
            "POST",
            "/v1/chat/completions",
            _encode(_body("/v1/chat/completions", _containers(v, d)[s], "none"), "utf-8"),
        )
        for v, d in MEDIA_VALUES.values()
        for s in ("image_url", "source no type", "uuid only")
    ]
    hostile += [("POST", "/health", b"x" * (64 << 10)), ("POST", "/scale_elastic_ep", b"{}")]
    hostile += [("POST", "/v1/chat/completions", b"[" * 50_000)]
    canary_part = _containers(f"http://127.0.0.1:{canary}/c.png", "")["image_url"]
    hostile += [
        (
            "POST",
            "/v1/chat/completions",
            _encode(_body("/v1/chat/completions", canary_part, "none"), "utf-8"),
        )
    ]
    pid = ovr_server.handle.processes[0].pid
    failures: list[str] = []
    counts = {"good": 0, "hostile": 0}

    def good_client(until: float):
        while time.monotonic() < until:
            resp = _good_chat(ovr_server)
            counts["good"] += 1
            if resp.status_code != 200:
                failures.append(f"{resp.status_code} {resp.text[:200]}")

    def hostile_client(until: float, seed: int):
        rng = random.Random(seed)
        with httpx.Client(timeout=120) as client:
            while time.monotonic() < until:
                method, route, body = rng.choice(hostile)
                headers = {**key, "content-type": "application/json"} if rng.random() < 0.8 else {}
                try:
                    resp = client.request(
                        method, ovr_server.root + route, content=body, headers=headers
                    )
                except httpx.TransportError:  # the server may close on a refused upload
                    continue
                counts["hostile"] += 1
                if resp.status_code >= 500:
                    failures.append(f"hostile {route}: {resp.status_code}")

    def run(seconds: float):
        until = time.monotonic() + seconds
        with ThreadPoolExecutor(5) as pool:
            jobs = [pool.submit(good_client, until) for _ in range(2)]
            jobs += [pool.submit(hostile_client, until, s) for s in range(3)]
            for job in jobs:
                job.result()

    run(10)  # warm-up: caches and allocator pools reach their working size
    before = _tree_rss(pid)
    run(40)
    after = _tree_rss(pid)
    print(f"load: {counts}, rss {before / 2**20:.0f} MiB -> {after / 2**20:.0f} MiB")
    assert failures == []
    assert counts["good"] >= 10
    assert after - before < 150 * 2**20, f"server memory grew {(after - before) / 2**20:.0f} MiB"
    assert _Canary.hits == []
