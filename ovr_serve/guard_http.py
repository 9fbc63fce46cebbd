"""The guard's HTTP layer: limits on a request's head before anything else reads it, the Host and
Origin rule, one reading of each header, and a bounded number of requests per client.

Why a protocol class: vLLM 0.32 starts uvicorn with ``http="auto"``, which picks httptools when it
is installed, and httptools' parser has no limit on header size or count (vLLM's
``--h11-max-header-count`` is never read by uvicorn 0.55; ``--h11-max-incomplete-event-size``
binds only h11); no uvicorn setting bounds the time a client may take to send its headers
(slowloris: one byte a second keeps a connection forever). ``BoundedHttpToolsProtocol`` is
uvicorn's own httptools protocol with those three limits, installed by ``install_http_limits``
(``ovr_serve.vllm_entry`` calls it in the server process). Remove it when uvicorn has a header
timeout and limits for httptools (check ``uvicorn --help`` for ``--h11-max-header-count``-like
options that name httptools too).
"""

from __future__ import annotations

import json
import os
from collections import Counter

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ovr_core.hosts import host_allowed, listen_names, origin_allowed
from ovr_serve.config import GUARD_ENV, GuardSettings

_ONE_VALUE_HEADERS = (b"content-type", b"content-length", b"transfer-encoding", b"authorization")
_ONE_VALUE_HEADERS += (b"x-api-key", b"content-encoding", b"host", b"origin")


class GuardError(Exception):
    """A request refused by the guard: HTTP status and a message that says what to do."""

    def __init__(self, status: int, message: str, code: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


def single_headers(scope, max_headers: int) -> dict[bytes, bytes]:
    """The headers as one value each (names compared in lower case); refuses more than
    ``max_headers`` lines, and a repeated one that parsers may read differently (Starlette takes
    the first ``Content-Type``, a dict the last)."""
    raw = scope.get("headers") or []
    if len(raw) > max_headers:
        raise GuardError(
            431,
            f"{len(raw)} header lines, at most {max_headers} allowed: send fewer (or start"
            " ovr-serve with --max_headers)",
            "request_header_fields_too_large",
        )
    headers: dict[bytes, bytes] = {}
    for raw_name, value in raw:
        name = raw_name.lower()
        if name in headers and name in _ONE_VALUE_HEADERS:
            raise GuardError(400, f"header {name.decode()!r} sent more than once: send it once")
        headers[name] = value
    return headers


class HostRule:
    """Which Host and Origin the API answers (DNS rebinding, cross-site pages), when it must."""

    def __init__(self, settings: GuardSettings, keyless: bool):
        from ovr_core.ports import is_loopback

        self.active = keyless or is_loopback(settings.listen_host)
        self.hosts = (*listen_names(settings.listen_host), *settings.allowed_hosts)
        self.origins = settings.allowed_origins

    def check(self, headers: dict[bytes, bytes]) -> bool:
        """Raise GuardError for a foreign Host or Origin; True when a browser's allowed page asks
        (its CORS preflight may pass)."""
        if not self.active:
            return False
        host = headers.get(b"host", b"").decode("latin-1")
        if b"host" in headers and not host_allowed(host, self.hosts):  # browsers always send it
            raise GuardError(
                403,
                f"requests for host {host or '(none)'!r} are not answered here: use"
                " http://127.0.0.1 or http://localhost, or start ovr-serve with --allowed_hosts",
                "forbidden_host",
            )
        origin = headers.get(b"origin")
        fetch_site = headers.get(b"sec-fetch-site", b"").strip().lower()
        if fetch_site == b"same-origin" or (origin is None and fetch_site != b"cross-site"):
            return False  # the browser's own word (no page can forge it), or no browser at all
        text = origin.decode("latin-1") if origin is not None else "(a cross-site page)"
        if origin is None or not origin_allowed(text, host, self.origins, self.hosts):
            raise GuardError(
                403,
                f"browser pages from {text!r} may not call this server: start ovr-serve with"
                " --allowed_origins to let them",
                "forbidden_origin",
            )
        return True


class ClientSlots:
    """At most ``limit`` requests in progress per client address (0: no limit); the rest get 429."""

    def __init__(self, limit: int):
        self.limit = limit
        self.busy: Counter[str] = Counter()

    def take(self, scope) -> str | None:
        """The client's name, its slot taken; raises GuardError (429) when it has none left."""
        if self.limit <= 0:
            return None
        client = (scope.get("client") or ("?", 0))[0]
        if self.busy[client] >= self.limit:
            raise GuardError(
                429,
                f"too many requests in progress from {client}: at most {self.limit} at once; wait"
                " for some to finish (or start ovr-serve with --max_requests_per_client)",
                "too_many_requests",
            )
        self.busy[client] += 1
        return client

    def give_back(self, client: str | None) -> None:
        """Free the slot ``take`` returned."""
        if client is not None:
            self.busy[client] -= 1
            if self.busy[client] <= 0:
                del self.busy[client]


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a cap on head bytes and header lines, and a deadline for
    the head of each request (a connection that dawdles is answered 408 and closed)."""

    max_headers = 100
    max_head_bytes = 64 * 1024
    head_timeout = 10.0

    def connection_made(self, transport) -> None:  # noqa: D102
        super().connection_made(transport)
        self._head_timer = None
        self._start_head()

    def _start_head(self) -> None:
        self._in_head, self._head_bytes, self._head_lines = True, 0, 0
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.head_timeout, self._head_too_slow)

    def _end_head(self) -> None:
        self._in_head = False
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def data_received(self, data: bytes) -> None:  # noqa: D102
        super().data_received(data)
        if self._in_head and not self.transport.is_closing():
            self._head_bytes += len(data)
            if self._head_bytes > self.max_head_bytes:
                self._refuse_head(431, f"request head over {self.max_head_bytes} bytes")

    def on_message_begin(self) -> None:  # noqa: D102
        super().on_message_begin()
        self._start_head()

    def on_header(self, name: bytes, value: bytes) -> None:  # noqa: D102
        self._head_lines += 1
        self._head_bytes += len(name) + len(value) + 4
        if self._head_lines > self.max_headers:
            self._refuse_head(431, f"more than {self.max_headers} header lines")
            raise ValueError("header lines over the limit")  # stops the parser
        if self._head_bytes > self.max_head_bytes:
            self._refuse_head(431, f"request head over {self.max_head_bytes} bytes")
            raise ValueError("request head over the limit")
        super().on_header(name, value)

    def on_headers_complete(self) -> None:  # noqa: D102
        self._end_head()
        super().on_headers_complete()

    def connection_lost(self, exc) -> None:  # noqa: D102
        self._end_head()
        super().connection_lost(exc)

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self._in_head and self._head_bytes == 0 and self.cycle is None:
            self.transport.close()  # an idle new connection: nothing to answer
        elif self._in_head:
            self._refuse_head(408, f"request headers not received within {self.head_timeout:g} s")

    def _refuse_head(self, status: int, why: str) -> None:
        if self.transport.is_closing():
            return
        reason = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}[status]
        body = why.encode() + b"\n"
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\n" % (status, reason)
            + b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body)
            + body
        )
        self.transport.close()
        self._end_head()


async def read_body(receive, limit: int) -> bytes:
    """The whole request body; GuardError (413) as soon as it passes ``limit`` bytes."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise GuardError(413, f"request body over {limit} bytes", "request_too_large")
        chunks.append(chunk)
        if not message.get("more_body"):
            break
    return b"".join(chunks)


def replay(body: bytes, receive):
    """A ``receive`` that hands the app the body already read, then the client's own messages."""
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def refuse(scope, send, err: GuardError) -> None:
    """Answer ``err`` as vLLM answers errors (OpenAI's error JSON), marked as the guard's."""
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 4000 + err.status})
        return
    payload = json.dumps(
        {"error": {"message": err.message, "type": err.code, "code": err.status}}
    ).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        (b"x-ovr-guard", b"refused"),  # tells a refusal of ours from one of vLLM's
    ]
    if err.status == 429:
        headers.append((b"retry-after", b"1"))
    if err.status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def install_http_limits() -> bool:
    """In the server process (``GUARD_ENV`` set): make uvicorn serve with
    ``BoundedHttpToolsProtocol`` under the guard's limits; True when installed."""
    if GUARD_ENV not in os.environ:
        return False
    import uvicorn

    settings = GuardSettings.from_json(os.environ[GUARD_ENV])
    BoundedHttpToolsProtocol.max_headers = settings.max_headers
    BoundedHttpToolsProtocol.max_head_bytes = settings.max_header_bytes
    BoundedHttpToolsProtocol.head_timeout = settings.header_timeout
    original = uvicorn.Config.__init__
    if getattr(original, "ovr_bounded", False):
        return True

    def __init__(self, app, *args, **kwargs):  # noqa: N807 - replaces Config.__init__
        if kwargs.get("http", "auto") == "auto":
            kwargs["http"] = BoundedHttpToolsProtocol
        original(self, app, *args, **kwargs)

    __init__.ovr_bounded = True
    uvicorn.Config.__init__ = __init__
    return True
