"""The web UI's HTTP rules, in one ASGI middleware in front of Gradio: which Host and Origin it
answers, how large an upload may be, which cookies a browser may send across sites, and a
Content-Security-Policy on every page.

Why: the UI holds the upstream API key. On loopback without a login, a page that reaches it after
DNS rebinding (``Host: evil.example``) or from another site would chat, read and upload as the
user does; an upload of any size would be stored. Gradio 6.31 sets its login cookie
``SameSite=None`` (for iframes on other sites), so it would ride along on cross-site requests.
"""

from __future__ import annotations

from ovr_core.hosts import host_allowed, listen_names, origin_allowed
from ovr_core.ports import is_loopback
from webui.settings import MAX_UPLOAD_BYTES

_UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})

# Pages load nothing from elsewhere, whatever a message contains: model text, imported chats and
# example files can name remote images, stylesheets or frames, and the browser fetches none of
# them. Scripts stay as Gradio needs them (inline); DOMPurify and escape_html keep HTML out.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self' 'unsafe-inline' 'unsafe-eval'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data: blob:",
        "media-src 'self' data: blob:",
        "font-src 'self' data:",
        "connect-src 'self'",
        "frame-src 'self'",
        "object-src 'none'",
        "base-uri 'self'",
        "form-action 'self'",
    ]
)


def security_options(settings) -> dict:
    """``UISecurity``'s options from the UI's settings (``webui.settings.UISettings``)."""
    return {
        "listen_host": settings.host,
        "has_login": bool(settings.auth),
        "allowed_hosts": tuple(settings.allowed_hosts),
        "allowed_origins": tuple(settings.allowed_origins),
        "max_body": settings.max_upload_bytes,
    }


class UISecurity:
    """ASGI middleware: Host check (on loopback or without a login), same-origin for every request
    that changes something, a byte cap on request bodies, ``SameSite=Lax`` cookies and the CSP.

    ``allowed_hosts``/``allowed_origins`` open more (``*``: any); ``max_body`` caps one request's
    body (all its files together; Gradio's ``max_file_size`` caps each file)."""

    def __init__(
        self,
        app,
        listen_host: str = "127.0.0.1",
        has_login: bool = False,
        allowed_hosts: tuple[str, ...] = (),
        allowed_origins: tuple[str, ...] = (),
        max_body: int = MAX_UPLOAD_BYTES,
    ):
        self.app = app
        self.check_host = is_loopback(listen_host) or not has_login
        self.hosts = (*listen_names(listen_host), *allowed_hosts)
        self.origins = tuple(allowed_origins)
        self.max_body = max_body

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = {}
        for name, value in scope.get("headers") or []:
            headers.setdefault(name.lower(), value.decode("latin-1"))
        problem = self.refusal(scope.get("method", "GET"), headers)
        if problem:
            return await _refuse(scope, send, *problem)
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        cut = _Cut(send)
        if scope.get("method") in _UNSAFE:
            receive = cut.capped(receive, self.max_body)
        try:
            return await self.app(scope, receive, _with_policy(cut.send))
        except Exception:
            if not cut.done:  # the app's own error, not the cut body's
                raise

    def refusal(self, method: str, headers: dict[bytes, str]) -> tuple[int, str] | None:
        """(status, message) for a request the UI does not answer; None for one it does."""
        host = headers.get(b"host")
        if self.check_host and host is not None and not host_allowed(host, self.hosts):
            return 403, (
                f"this web UI does not answer for host {host!r}: open it at http://127.0.0.1 or"
                " http://localhost, or start it with --allowed-hosts"
            )
        if method not in _UNSAFE:
            return None
        origin = headers.get(b"origin")
        fetch_site = headers.get(b"sec-fetch-site", "").strip().lower()
        allowed = origin is not None and origin_allowed(origin, None, self.origins)
        if fetch_site in ("cross-site", "same-site") and not allowed:
            # the browser's own word (no page can forge it), behind a reverse proxy too
            return 403, "requests from other sites are refused: start the UI with --allowed-origins"
        if not fetch_site and self.check_host and origin is not None and not allowed:
            if not origin_allowed(origin, host, self.origins):  # an older browser: its Origin
                return 403, (
                    f"requests from pages of {origin!r} are refused: use the UI itself, or start"
                    " it with --allowed-origins"
                )
        length = headers.get(b"content-length", "0").strip()
        if length.isdigit() and int(length) > self.max_body:
            return 413, f"upload over {self.max_body >> 20} MB: send a smaller file"
        return None


class _Cut:
    """Stops a request body (chunked, or longer than it said) once it passes the cap: answers
    413 itself, tells the app the client left, and drops what the app sends after that."""

    def __init__(self, send):
        self.raw_send = send
        self.started = self.done = False

    def capped(self, receive, limit: int):
        """``receive`` with the cap applied."""
        seen = 0

        async def capped():
            nonlocal seen
            if self.done:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    self.done = True
                    if not self.started:
                        msg = f"upload over {limit >> 20} MB: send a smaller file"
                        await _refuse({"type": "http"}, self.raw_send, 413, msg)
                    return {"type": "http.disconnect"}
            return message

        return capped

    async def send(self, message):
        """The app's ``send``, silenced once the body was cut."""
        if self.done:
            return
        self.started = True
        await self.raw_send(message)


def _with_policy(send):
    """``send`` that adds the CSP and makes every cookie ``SameSite=Lax`` (Gradio's login cookie
    is ``SameSite=None``: a cross-site request would carry it)."""

    async def sending(message):
        if message["type"] == "http.response.start":
            headers = []
            for name, value in message.get("headers", []):
                low = name.lower()
                if low == b"content-security-policy":
                    continue
                if low == b"set-cookie":
                    value = _lax(value)
                headers.append((name, value))
            headers.append((b"content-security-policy", CONTENT_SECURITY_POLICY.encode()))
            message = {**message, "headers": headers}
        await send(message)

    return sending


def _lax(cookie: bytes) -> bytes:
    parts = [p.strip() for p in cookie.split(b";")]
    kept = [p for p in parts if not p.lower().startswith(b"samesite")]
    return b"; ".join([*kept, b"SameSite=Lax"])


async def _refuse(scope, send, status: int, message: str) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 4000 + status})
        return
    body = message.encode() + b"\n"
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
