"""One compact line per request, written by the server into its log (ovr-serve echoes them).

    ovr-request 14:02:11  200  POST /v1/chat/completions  57 tok  812 ms
    ovr-request 14:02:15  200  POST /v1/chat/completions  ~52 tok  1904 ms     (streamed)

An ASGI middleware (vLLM's `--middleware`), outermost so that the guard's refusals are counted
too. Tokens are the response's `usage.completion_tokens` when it has one, else "~" and the number of
streamed chunks that carry text (vLLM sends one token per chunk). Health probes are not logged.
"""

from __future__ import annotations

import re
import sys
import time

MARKER = "ovr-request "
QUIET_PATHS = ("/health", "/ping", "/metrics", "/version")
_USAGE = re.compile(rb'"completion_tokens":\s*(\d+)')
# a streamed chunk (one `data:` line) that carries text: vLLM sends one token per chunk; the role
# chunk and the final chunk carry none
_TEXT = re.compile(rb'"(?:reasoning|reasoning_content|content)":\s*"[^"]')
_KEEP = 4096  # bytes of the body's tail kept to find a usage block split across chunks


class RequestLog:
    """ASGI middleware: time, status, tokens and milliseconds of each request, one line each."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in QUIET_PATHS:
            return await self.app(scope, receive, send)
        count = _Count()
        start = time.monotonic()

        async def counting_send(message):
            count.see(message)
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            ms = (time.monotonic() - start) * 1000
            print(
                request_line(scope["method"], scope["path"], count.status, count.tokens(), ms),
                file=sys.stderr,
                flush=True,
            )


def request_line(method: str, path: str, status: int, tokens: str | None, ms: float) -> str:
    """The logged line (the marker is cut off by the reader, what follows is shown as it is)."""
    tok = f"{tokens} tok" if tokens is not None else "-"
    return (
        f"{MARKER}{time.strftime('%H:%M:%S')}  {status or '-'}  {method} {path}  {tok}  {ms:.0f} ms"
    )


class _Count:
    def __init__(self):
        self.status = 0
        self.chunks = 0
        self.usage: int | None = None
        self.partial = b""  # a `data:` line not yet complete
        self.tail = b""

    def see(self, message: dict) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        elif message["type"] == "http.response.body":
            body = message.get("body", b"")
            *lines, self.partial = (self.partial + body).split(b"\n")
            self.partial = self.partial[-_KEEP:]
            self.chunks += sum(1 for ln in lines if ln.startswith(b"data: ") and _TEXT.search(ln))
            found = _USAGE.findall(self.tail + body)
            if found:
                self.usage = int(found[-1])
            self.tail = (self.tail + body)[-_KEEP:]

    def tokens(self) -> str | None:
        """'57' from usage; '~52' counted from a stream's text chunks (tokens that print nothing,
        such as </think> and the end-of-turn token, send no chunk)."""
        if self.usage is not None:
            return str(self.usage)
        return f"~{self.chunks}" if self.chunks else None
