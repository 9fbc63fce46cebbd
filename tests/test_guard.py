"""The request guard on its own (no server): routes, headers, key before body, the whole-payload walk.

The live tests (tests/test_serve_live.py, tests/test_hostile_clients.py) drive the same guard inside
a real vLLM server; these pin down each rule of the policy one request shape at a time.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import struct
import zlib

import pytest
from PIL import Image

from ovr_serve.config import NO_MEDIA_DOMAIN, GuardSettings, ServeConfig, child_env, vllm_command
from ovr_serve.guard import GuardError, RequestGuard

KEY = "guard-test-key"
CHAT = "/v1/chat/completions"


def png(size=(32, 24)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, "red").save(buf, "PNG")
    return buf.getvalue()


def data_url(raw: bytes, header: str = "data:image/png;base64") -> str:
    return f"{header},{base64.b64encode(raw).decode()}"


def corrupt_pixels(raw: bytes) -> bytes:
    """A PNG whose header and chunk checksums are fine but whose pixel stream is broken."""
    raw = bytearray(raw)
    at = raw.index(b"IDAT")
    size = struct.unpack(">I", raw[at - 4 : at])[0]
    raw[at + 4 + size // 2] ^= 0xFF
    raw[at + 4 + size : at + 8 + size] = struct.pack(">I", zlib.crc32(raw[at : at + 4 + size]))
    return bytes(raw)


def chat(*parts) -> dict:
    return {"model": "ovr", "messages": [{"role": "user", "content": [*parts]}]}


def image_part(url) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


@pytest.fixture
def guard(monkeypatch) -> RequestGuard:
    monkeypatch.setenv("OVR_GUARD_TEST_KEY", KEY)
    return RequestGuard(
        app=None, settings=ServeConfig(api_key_env="OVR_GUARD_TEST_KEY").guard_settings()
    )


def refused(guard: RequestGuard, payload) -> GuardError:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    with pytest.raises(GuardError) as err:
        guard.check_json_body(body, CHAT)
    return err.value


def scope(path=CHAT, method="POST", headers=()) -> dict:
    base = [(b"content-type", b"application/json"), (b"authorization", f"Bearer {KEY}".encode())]
    base.append((b"host", b"127.0.0.1:8000"))
    given = {name for name, _ in headers}
    return {
        "type": "http",
        "path": path,
        "method": method,
        "headers": [h for h in base if h[0] not in given] + list(headers),
    }


# --- settings: typed, from ServeConfig, through the environment ---------------------------------
def test_guard_settings_travel_as_json_and_come_back_the_same(monkeypatch):
    cfg = ServeConfig(api_key_env="MY_KEY_VAR", max_images=2, allowed_media_domains=["a.org"])
    env = child_env(cfg, "cpu", False)
    monkeypatch.setattr("os.environ", {**env, "MY_KEY_VAR": "k"})
    guard = RequestGuard(app=None)
    assert guard.settings == cfg.guard_settings() and guard.api_key == "k"
    with pytest.raises(ValueError, match="max_images"):
        GuardSettings.from_json(json.dumps({"api_key_env": "X"}))


def test_vllm_itself_fetches_no_url_and_reads_no_file_by_default():
    cfg = ServeConfig()
    cmd = vllm_command(cfg, "cpu", False, 8192)
    assert cmd[cmd.index("--allowed-media-domains") + 1] == NO_MEDIA_DOMAIN
    assert "--allowed-local-media-path" not in cmd
    env = child_env(cfg, "cpu", False)
    assert env["VLLM_MEDIA_URL_ALLOW_REDIRECTS"] == "0" and env["VLLM_MEDIA_CACHE"] == ""
    assert env["VLLM_MAX_IMAGE_PIXELS"] == str(cfg.max_image_input_pixels)
    opened = vllm_command(
        ServeConfig(allowed_media_domains=["img.example.org"]), "cpu", False, 8192
    )
    assert opened[opened.index("--allowed-media-domains") + 1] == "img.example.org"


# --- routes, headers and the key: decided before the body is read --------------------------------
@pytest.mark.parametrize(
    "path,method",
    [
        ("/scale_elastic_ep", "POST"),
        ("/invocations", "POST"),
        ("/v1/messages", "POST"),
        ("/v1/responses", "POST"),
        ("/v1/embeddings", "POST"),
        ("/reset_prefix_cache", "POST"),
        ("/openapi.json", "GET"),
        ("/v1/models/", "GET"),
        ("//v1/chat/completions", "POST"),
    ],
)
def test_routes_outside_the_allowlist_are_404_even_with_the_key(guard, path, method):
    with pytest.raises(GuardError) as err:
        guard.check_head(scope(path, method))
    assert err.value.status == 404


def test_extra_routes_open_deliberately_with_the_key(monkeypatch):
    monkeypatch.setenv("OVR_GUARD_TEST_KEY", KEY)
    cfg = ServeConfig(api_key_env="OVR_GUARD_TEST_KEY", extra_routes=["/v1/embeddings"])
    guard = RequestGuard(app=None, settings=cfg.guard_settings())
    assert guard.check_head(scope("/v1/embeddings")) is True
    with pytest.raises(GuardError) as err:
        guard.check_head(scope("/v1/embeddings", headers=[(b"authorization", b"Bearer no")]))
    assert err.value.status == 401


@pytest.mark.parametrize(
    "headers,status",
    [
        ([(b"content-type", b"application/json"), (b"content-type", b"text/plain")], 400),
        ([(b"authorization", f"Bearer {KEY}".encode()), (b"authorization", b"Bearer x")], 400),
        ([(b"content-length", b"10"), (b"content-length", b"20")], 400),
        ([(b"transfer-encoding", b"gzip, chunked")], 400),
        ([(b"transfer-encoding", b"chunked"), (b"content-length", b"5")], 400),
        ([(b"content-length", b"-1")], 400),
        ([(b"content-type", b"text/plain")], 415),
        ([(b"content-type", b"application/x-www-form-urlencoded")], 415),
        ([(b"content-type", b"application/json; charset=utf-16")], 415),
        ([(b"content-encoding", b"gzip")], 415),
        ([(b"content-length", str(1 << 30).encode())], 413),
    ],
)
def test_ambiguous_or_non_json_requests_are_refused_before_the_body(guard, headers, status):
    with pytest.raises(GuardError) as err:
        guard.check_head(scope(headers=headers))
    assert err.value.status == status


def test_open_routes_take_no_body_and_no_key(guard):
    anonymous = [(b"authorization", b"")]
    assert guard.check_head(scope("/health", "GET", anonymous)) is False
    with pytest.raises(GuardError) as err:
        guard.check_head(scope("/health", "GET", [*anonymous, (b"content-length", b"50000000")]))
    assert err.value.status == 400
    with pytest.raises(GuardError) as err:
        guard.check_head(scope("/health", "POST", anonymous))
    assert err.value.status == 405


def test_anonymous_request_is_refused_without_reading_its_body(guard):
    """A 48 MB anonymous upload costs the server nothing: 401 before the first chunk is read."""
    reads, sent = [], []

    async def receive():
        reads.append(1)
        return {"type": "http.request", "body": b"x" * (1 << 20), "more_body": True}

    async def send(message):
        sent.append(message)

    anonymous = scope(headers=[(b"authorization", b"Bearer wrong")])
    anonymous["headers"].append((b"content-length", str(48 << 20).encode()))
    asyncio.run(guard(anonymous, receive, send))
    assert sent[0]["status"] == 401 and reads == []


# --- the body: one parse, depth cap, every media reference wherever it sits ----------------------
def test_deep_json_is_a_400_not_a_500(guard):
    assert refused(guard, b"[" * 100_000 + b"]" * 100_000).status == 400
    nested: dict = {"x": 1}
    for _ in range(200):
        nested = {"x": nested}
    assert (
        refused(guard, {**chat({"type": "text", "text": "hi"}), "metadata": nested}).status == 400
    )
    assert refused(guard, b'"just a string"').status == 400
    assert refused(guard, b'{"model": "ovr", "seed": ' + b"9" * 5000 + b"}").status == 400
    assert refused(guard, '{"a": 1}'.encode("utf-32")[:7]).status == 400


@pytest.mark.parametrize(
    "payload",
    [
        # the old walk stopped at a dict marked "type": "base64"
        chat({"type": "base64", "data": "x", "image_url": {"url": "http://127.0.0.1:9/c.png"}}),
        # an untyped part, as vLLM reads it when a uuid is given
        chat({"image_url": "http://127.0.0.1:9/c.png", "uuid": "u1"}),
        chat({"type": "input_image", "image_url": "HTTP://127.0.0.1:9/c.png"}),
        chat({"type": "image_url", "image_url": {"url": " http://127.0.0.1:9/c.png"}}),
        chat({"type": "image", "source": {"type": "url", "url": "https://127.0.0.1:9/c.png"}}),
        chat({"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}),
        chat({"type": "image_url", "image_url": {"url": "gopher://127.0.0.1:9/"}}),
        {"model": "ovr", "prompt": "hi", "extra": [["http://127.0.0.1:9/c.png"]]},
    ],
)
def test_urls_anywhere_outside_text_are_refused(guard, payload):
    assert refused(guard, payload).status == 400


def test_urls_inside_text_are_just_text(guard):
    payload = chat({"type": "text", "text": "what is at https://example.org/x.png ?"})
    payload["response_format"] = {
        "type": "json_schema",
        "json_schema": {
            "name": "a",
            "schema": {"$schema": "http://json-schema.org/draft-07/schema#"},
        },
    }
    assert guard.check_json_body(json.dumps(payload).encode(), CHAT)


def test_anthropic_source_without_type_is_checked_like_any_image(guard):
    big = Image.new("1", (8200, 8200), 0)
    buf = io.BytesIO()
    big.save(buf, "PNG")
    source = {"media_type": "image/png", "data": base64.b64encode(buf.getvalue()).decode()}
    assert refused(guard, chat({"type": "image", "source": source})).status == 413


@pytest.mark.parametrize(
    "part",
    [
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
        {"type": "audio_url", "audio_url": {"url": "data:audio/wav;base64,AAAA"}},
        {"video_url": {"url": "data:video/mp4;base64,AAAA"}},
        {"type": "image_embeds", "image_embeds": "AAAA"},
        {"type": "file", "file": {"file_data": "AAAA"}},
    ],
)
def test_media_other_than_images_is_refused(guard, part):
    assert "images only" in refused(guard, chat(part)).message


@pytest.mark.parametrize(
    "url,status",
    [
        (data_url(png()[:40]), 400),  # cut in the header
        (data_url(b"\x89PNG\r\n\x1a\n" + b"\0" * 64), 400),
        (data_url(png(), "data:image/png;base64;charset=utf-8"), 400),
        (data_url(png(), "data:image/png;charset=utf-8"), 400),
        (data_url(b"<svg xmlns='http://www.w3.org/2000/svg'/>", "data:image/svg+xml;base64"), 400),
    ],
)
def test_every_image_header_is_read_before_vllm_sees_it(guard, url, status):
    """The header only: pixels are decoded once, by vLLM (its failures are 400s, shown live in
    tests/test_hostile_http.py), not twice."""
    assert refused(guard, chat(image_part(url))).status == status


def test_good_image_passes_unchanged_and_media_overrides_are_refused(guard):
    body = json.dumps(chat(image_part(data_url(png())), {"type": "text", "text": "hi"})).encode()
    assert guard.check_json_body(body, CHAT) is body
    payload = {**chat(image_part(data_url(png()))), "mm_processor_kwargs": {"max_pixels": 10**9}}
    assert "mm_processor_kwargs" in refused(guard, payload).message


def test_client_media_uuids_are_removed(guard):
    payload = chat(
        {"type": "image_url", "image_url": {"url": data_url(png())}, "uuid": "shared"},
        {"type": "text", "text": "hi"},
    )
    forwarded = json.loads(guard.check_json_body(json.dumps(payload).encode(), CHAT))
    parts = forwarded["messages"][0]["content"]
    assert "uuid" not in json.dumps(forwarded) and parts[0]["image_url"]["url"].startswith("data:")


def test_image_count_spans_every_shape(guard):
    url = data_url(png())
    parts = [image_part(url), {"type": "input_image", "image_url": url}, {"image_url": url}]
    parts += [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": url[22:]}}
    ]
    parts += [image_part(url)]
    assert "too many images" in refused(guard, chat(*parts)).message


def test_image_part_without_its_image_is_refused(guard):
    """With its uuid removed, a part that named only a uuid would reach no image, or a cached one."""
    for part in (
        {"type": "image_url", "image_url": None, "uuid": "abc"},
        {"image_url": {"uuid": "x"}},
    ):
        assert refused(guard, chat(part)).status == 400


# --- round three: Host and Origin, head limits, the key's whitespace, free text, prompt size ----


def guard_with(monkeypatch, key: str | None = KEY, **overrides) -> RequestGuard:
    """A guard for a ServeConfig with ``overrides``; ``key=None``: a keyless server."""
    if key is None:
        monkeypatch.delenv("OVR_GUARD_TEST_KEY", raising=False)
    else:
        monkeypatch.setenv("OVR_GUARD_TEST_KEY", key)
    cfg = ServeConfig(api_key_env="OVR_GUARD_TEST_KEY", **overrides)
    return RequestGuard(app=None, settings=cfg.guard_settings())


def status_of(guard: RequestGuard, *headers: tuple[bytes, bytes], path=CHAT, method="POST"):
    try:
        guard.check_head(scope(path, method, headers))
    except GuardError as err:
        return err.status
    return 200


@pytest.mark.parametrize(
    "host, status",
    [
        (b"127.0.0.1:8000", 200),
        (b"localhost:8000", 200),
        (b"LOCALHOST", 200),
        (b"localhost.:8000", 200),
        (b"app.localhost:8000", 200),
        (b"[::1]:8000", 200),
        (b"127.8.9.10", 200),
        (b"evil.example:8000", 403),  # DNS rebinding: evil.example resolves to 127.0.0.1
        (b"EVIL.example", 403),
        (b"localhost.evil.example", 403),
        (b"127.0.0.1.evil.example", 403),
        (b"", 403),
        (b"evil.example@127.0.0.1", 200),  # userinfo is no host; the host is 127.0.0.1
        (b"[::1]evil", 403),
    ],
)
def test_a_loopback_server_answers_loopback_hosts_only(monkeypatch, host, status):
    for key in (KEY, None):
        guard = guard_with(monkeypatch, key)
        assert status_of(guard, (b"host", host)) == status, (host, key)
        assert status_of(guard, (b"host", host), path="/health", method="GET") == status


def test_allowed_hosts_open_more_names_and_a_keyed_public_server_needs_none(monkeypatch):
    guard = guard_with(monkeypatch, allowed_hosts=["ovr.lan"])
    assert status_of(guard, (b"host", b"OVR.lan:8000")) == 200
    assert status_of(guard, (b"host", b"other.lan")) == 403
    assert status_of(guard_with(monkeypatch, allowed_hosts=["*"]), (b"host", b"x.y")) == 200
    public = guard_with(monkeypatch, host="0.0.0.0")  # a key is required there: no rebinding gain
    assert status_of(public, (b"host", b"ovr.example.com")) == 200
    assert status_of(public, (b"host", b"x"), (b"origin", b"http://evil.example")) == 200


@pytest.mark.parametrize(
    "origin, status",
    [
        (b"http://127.0.0.1:8000", 200),  # the server's own origin
        (b"http://localhost:5173", 200),  # a page served from this machine
        (b"HTTP://LOCALHOST:5173", 200),
        (b"http://evil.example", 403),
        (b"https://evil.example:8000", 403),
        (b"null", 403),  # a sandboxed frame, a file:// page
        (b"file://", 403),
        (b"http://localhost.evil.example", 403),
    ],
)
def test_browser_pages_from_other_origins_are_refused(monkeypatch, origin, status):
    guard = guard_with(monkeypatch, None)
    assert status_of(guard, (b"origin", origin)) == status, origin


def test_cross_site_fetch_metadata_and_allowed_origins(monkeypatch):
    guard = guard_with(monkeypatch, None)
    assert status_of(guard, (b"sec-fetch-site", b"Cross-Site")) == 403
    assert status_of(guard, (b"sec-fetch-site", b"same-origin")) == 200
    opened = guard_with(monkeypatch, None, allowed_origins=["https://app.example.com/", "null"])
    assert status_of(opened, (b"origin", b"https://APP.example.com")) == 200
    assert status_of(opened, (b"origin", b"null")) == 200
    assert status_of(opened, (b"origin", b"https://app.example.com:444")) == 403
    # an allowed page's CORS preflight goes through to vLLM's CORS middleware, others are refused
    pre = [(b"origin", b"https://app.example.com")]
    assert status_of(opened, *pre, method="OPTIONS") == 200
    assert status_of(guard, (b"origin", b"https://app.example.com"), method="OPTIONS") == 403


def test_behind_a_reverse_proxy_the_browsers_same_origin_word_is_enough(monkeypatch):
    """nginx rewrites Host to the upstream address by default: the page's Origin is the public
    one, and the browser's ``Sec-Fetch-Site: same-origin`` (no page can forge it) lets it in."""
    guard = guard_with(monkeypatch, None)
    public = (b"origin", b"https://ovr.example.com")
    assert status_of(guard, public, (b"sec-fetch-site", b"same-origin")) == 200
    assert status_of(guard, public) == 403
    assert status_of(guard, public, (b"sec-fetch-site", b"same-site")) == 403


def test_too_many_header_lines_are_refused_before_the_key(monkeypatch):
    guard = guard_with(monkeypatch, max_headers=20)
    many = [(b"x-h%d" % i, b"v") for i in range(21)]
    err = pytest.raises(GuardError, guard.check_head, {**scope(), "headers": many})
    assert err.value.status == 431
    assert status_of(guard, *many[:10]) == 200


@pytest.mark.parametrize(
    "value, ok",
    [
        (f"Bearer {KEY}", True),
        (f"bearer {KEY}", True),
        (f"BEARER  {KEY}\t", True),
        (f"Bearer {KEY}\xa0", False),  # RFC 9110: only spaces and tabs around the token
        (f"Bearer\xa0{KEY}", False),
        (f"Bearer {KEY}\u2003", False),
        (f"Bearer {KEY}\n", False),
        (f"Basic {KEY}", False),
        (KEY, False),
    ],
)
def test_the_key_check_allows_only_spaces_and_tabs(guard, value, ok):
    status = status_of(guard, (b"authorization", value.encode("latin-1", "replace")))
    if "\u2003" in value:
        status = status_of(guard, (b"authorization", value.encode("utf-8")))
    assert (status == 200) == ok, value


@pytest.mark.parametrize(
    "header",
    [
        "DATA:image/png;base64",
        "Data:Image/PNG;base64",
        "data:IMAGE/png;base64",
        "data:image/png;charset=x;base64",
    ],
)
def test_case_variants_of_a_data_url_are_checked_like_the_lower_case_one(guard, header):
    """vLLM lower-cases the scheme (urllib3's parse_url) and ignores the MIME type's case: the
    guard checks every spelling it would load, and refuses one it would not ('BASE64')."""
    assert refused(guard, chat(image_part(data_url(png()[:40], header)))).status == 400
    assert guard.check_json_body(json.dumps(chat(image_part(data_url(png(), header)))).encode())
    assert refused(guard, chat(image_part(data_url(png(), "data:image/png;BASE64")))).status == 400


def test_media_words_in_free_text_fields_are_not_media(guard):
    """Legitimate OpenAI fields whose keys or values look like media: metadata tags, tool
    parameter names, schema defaults, a cache key that is a URL."""
    payload = chat({"type": "text", "text": "hi"})
    payload["metadata"] = {"file": "report.pdf", "image": "cat", "url": "https://example.org"}
    payload["tools"] = [
        {
            "type": "function",
            "function": {
                "name": "fetch",
                "parameters": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "default": "file:///tmp/a"}},
                },
            },
        }
    ]
    payload["response_format"] = {
        "type": "json_schema",
        "json_schema": {"name": "a", "schema": {"properties": {"input_audio": {"type": "string"}}}},
    }
    payload["prompt_cache_key"] = "https://myapp.example/session/1"
    body = json.dumps(payload).encode()
    assert guard.check_json_body(body, CHAT) == body


def test_text_longer_than_the_context_is_refused_before_any_work(guard):
    guard.prompt_limit = (1000, 10)  # context 1000 tokens, no token longer than 10 characters
    fits = {"model": "ovr", "prompt": "x" * 10_000}
    assert guard.check_json_body(json.dumps(fits).encode(), "/tokenize")
    assert refused(guard, {"model": "ovr", "prompt": "x" * 10_001}).status == 400
    assert refused(guard, chat({"type": "text", "text": "y" * 10_001})).status == 400
    assert refused(guard, {"model": "ovr", "tokens": list(range(1001))}).status == 400
    assert guard.check_json_body(json.dumps({"model": "ovr", "tokens": [1] * 1000}).encode())
    batch = {"model": "ovr", "prompt": ["x" * 9_000, "x" * 9_000]}  # one context per prompt
    assert guard.check_json_body(json.dumps(batch).encode(), "/v1/completions")


def test_each_client_gets_a_bounded_number_of_requests_in_progress(monkeypatch):
    guard = guard_with(monkeypatch, max_requests_per_client=2)
    one, other = {"client": ("10.0.0.1", 1)}, {"client": ("10.0.0.2", 1)}
    taken = [guard.slots.take(one), guard.slots.take(one)]
    with pytest.raises(GuardError) as err:
        guard.slots.take(one)
    assert err.value.status == 429 and "--max_requests_per_client" in err.value.message
    assert guard.slots.take(other) == "10.0.0.2"
    guard.slots.give_back(taken[0])
    assert guard.slots.take(one) == "10.0.0.1"
