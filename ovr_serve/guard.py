"""Request guard for the vLLM server: an API key on every route that reaches the model, image limits.

Loaded into vLLM's app with ``--middleware ovr_serve.guard.RequestGuard``; its settings come from
``OVR_GUARD_CONFIG`` (JSON written by ``ServeConfig.guard_settings``) and the key from the variable
that config names. Why our own: vLLM's ``--api-key`` guards only ``/v1``, ``/v2`` and
``/inference``, while ``/invocations`` runs the same inference and ``/tokenize`` and others stay
open (vLLM 0.32). Here everything but ``OPEN_ROUTES`` needs the key.

Images are checked before vLLM sees them, so a bad one costs a 4xx, never the server: data URLs
must decode to an image within the byte and pixel limits (the header is read, not the pixels, so a
decompression bomb is refused without being decoded), at most ``max_images`` per request, and no
http(s)/file URL is fetched unless its domain or folder was allowed.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import io
import json
import os
from urllib.parse import urlparse

from ovr_serve.config import GUARD_ENV

_BIG_BODY = 256 * 1024  # above this, inspect the body in a worker thread


class GuardError(Exception):
    """A request refused by the guard: HTTP status and a message that says what to do."""

    def __init__(self, status: int, message: str, code: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


class RequestGuard:
    """Pure ASGI middleware (streams pass through untouched)."""

    def __init__(self, app, settings: dict | None = None):
        self.app = app
        self.settings = settings or json.loads(os.environ.get(GUARD_ENV, "{}"))
        self.open_routes = tuple(self.settings.get("open_routes", ("/health",)))
        key_env = self.settings.get("api_key_env", "OVR_API_KEY")
        self.api_key = os.environ.get(key_env) or None
        limit = self.settings.get("max_images", 4) * self.settings.get("max_image_bytes", 20 << 20)
        self.max_body = int(limit * 1.4) + (4 << 20)  # base64 overhead plus text

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        if self.api_key and path not in self.open_routes and not self._authorised(scope):
            return await _refuse(
                scope,
                send,
                GuardError(
                    401,
                    "missing or wrong API key: send 'Authorization: Bearer <key>'",
                    "invalid_api_key",
                ),
            )
        if scope["type"] != "http" or scope.get("method") != "POST":
            return await self.app(scope, receive, send)
        try:
            body = await _read_body(receive, self.max_body)
            if _is_json(scope):
                if len(body) > _BIG_BODY:
                    await asyncio.to_thread(self.check_json_body, body, path)
                else:
                    self.check_json_body(body, path)
        except GuardError as err:
            return await _refuse(scope, send, err)
        return await self.app(scope, _replay(body, receive), send)

    def _authorised(self, scope) -> bool:
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"authorization", b"").decode("latin-1")
        token = (
            given[7:]
            if given.lower().startswith("bearer ")
            else headers.get(b"x-api-key", b"").decode("latin-1")
        )
        return bool(token) and hmac.compare_digest(token.encode(), self.api_key.encode())

    def check_json_body(self, body: bytes, path: str) -> None:
        """Raise GuardError for malformed JSON, empty chats, or any image that breaks the policy."""
        if not body.strip():
            raise GuardError(400, "empty request body: send a JSON object")
        try:
            payload = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise GuardError(400, f"malformed JSON body: {exc}") from None
        if isinstance(payload, dict) and "messages" in payload:
            if not isinstance(payload["messages"], list) or not payload["messages"]:
                raise GuardError(400, "'messages' must be a non-empty list of chat messages")
        images = list(_media_refs(payload))
        if len(images) > self.settings.get("max_images", 4):
            raise GuardError(
                400,
                f"too many images: {len(images)} in one request, at most {self.settings.get('max_images', 4)} allowed",
            )
        for ref in images:
            self._check_image(ref)

    def _check_image(self, ref: str) -> None:
        if ref.startswith("data:"):
            return self._check_data_url(ref)
        parsed = urlparse(ref)
        if parsed.scheme in ("http", "https"):
            allowed = self.settings.get("allowed_media_domains") or []
            if parsed.hostname and parsed.hostname.lower() in [d.lower() for d in allowed]:
                return None
            raise GuardError(
                400,
                f"image URLs from {parsed.hostname!r} are not fetched by this server: send the image as a data URL (base64), or start ovr-serve with --allowed_media_domains",
            )
        if parsed.scheme == "file":
            folder = self.settings.get("allowed_local_media_path")
            real = os.path.realpath(parsed.path)
            if folder and os.path.commonpath([real, os.path.realpath(folder)]) == os.path.realpath(
                folder
            ):
                return None
            raise GuardError(
                400,
                "file:// image URLs are not read by this server: send the image as a data URL, or start ovr-serve with --allowed_local_media_path",
            )
        raise GuardError(
            400, f"unsupported image reference {ref[:40]!r}: use a data:image/...;base64 URL"
        )

    def _check_data_url(self, url: str) -> None:
        from PIL import Image

        header, _, data = url.partition(",")
        if ";base64" not in header:
            raise GuardError(400, "image data URLs must be base64: data:image/png;base64,...")
        max_bytes = self.settings.get("max_image_bytes", 20 << 20)
        if len(data) * 3 // 4 > max_bytes:
            raise GuardError(
                413, f"image too large: over {max_bytes} bytes encoded", "image_too_large"
            )
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise GuardError(
                400, "image data URL is not valid base64 (truncated or corrupted?)"
            ) from None
        try:
            with Image.open(io.BytesIO(raw)) as img:  # reads the header only
                width, height = img.size
        except Image.DecompressionBombError:
            raise GuardError(
                413, "image too large: decompression bomb refused", "image_too_large"
            ) from None
        except Exception:
            raise GuardError(
                400, "image data does not decode as an image (PNG, JPEG, WebP, GIF…)"
            ) from None
        if width * height > self.settings.get("max_image_input_pixels", 8192 * 8192):
            raise GuardError(
                413,
                f"image too large: {width}x{height} pixels, at most {self.settings.get('max_image_input_pixels')} pixels",
                "image_too_large",
            )


_MEDIA_KEYS = ("image_url", "image", "video_url", "video", "audio_url", "input_audio", "file")


def _media_refs(node, parent_key: str | None = None):
    """Every image/media reference in an OpenAI/Anthropic/Responses-style JSON request."""
    if isinstance(node, dict):
        if node.get("type") == "base64" and isinstance(node.get("data"), str):  # Anthropic source
            yield f"data:{node.get('media_type', 'image/png')};base64,{node['data']}"
            return
        for key, value in node.items():
            if isinstance(value, str) and (
                key in _MEDIA_KEYS or (key == "url" and parent_key in _MEDIA_KEYS + ("source",))
            ):
                yield value
            else:
                yield from _media_refs(value, key)
    elif isinstance(node, list):
        for item in node:
            yield from _media_refs(item, parent_key)


def _is_json(scope) -> bool:
    headers = dict(scope.get("headers") or [])
    ctype = headers.get(b"content-type", b"application/json").decode("latin-1").lower()
    return "json" in ctype


async def _read_body(receive, limit: int) -> bytes:
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


def _replay(body: bytes, receive):
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _refuse(scope, send, err: GuardError) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 4401 if err.status == 401 else 4400})
        return
    payload = json.dumps(
        {"error": {"message": err.message, "type": err.code, "code": err.status}}
    ).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
    ]
    if err.status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
