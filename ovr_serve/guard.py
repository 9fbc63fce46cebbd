"""Request guard for the vLLM server: an allowlist of routes, an API key, and one reading of each body.

Loaded into vLLM's app with ``--middleware ovr_serve.guard.RequestGuard``; its settings come from
``GUARD_ENV`` (JSON written by ``GuardSettings.to_json``) and the key from the variable they name.
Why our own: vLLM's ``--api-key`` guards only ``/v1``, ``/v2`` and ``/inference``, and vLLM 0.32
registers many routes OVR does not serve (``/invocations``, ``/scale_elastic_ep``, ``/v1/messages``…).

The policy, in the order it is applied (nothing of the body is read before the key is checked;
the head itself is bounded before that: ``ovr_serve.guard_http``):

1. At most ``max_headers`` header lines; on loopback or without a key, only loopback host names,
   the listen address and ``allowed_hosts`` in ``Host`` (DNS rebinding), and browser pages only
   from those hosts or ``allowed_origins`` (``Origin``, ``Sec-Fetch-Site: cross-site``).
2. Only ``open_routes`` (GET, no key) and ``api_routes`` (key) exist; every other path is 404.
3. A request whose headers two parsers could read differently is refused: a repeated
   ``Content-Type``, ``Content-Length``, ``Authorization``…, a ``Transfer-Encoding`` other than
   ``chunked``, a JSON route sent something other than JSON, a compressed body. The key is compared
   after spaces and tabs only (RFC 9110), in constant time.
4. At most ``max_requests_per_client`` requests of one client address in progress (429 beyond).
5. The body is parsed once, as FastAPI will parse it (``json.loads`` of the bytes), within size and
   depth caps. The payload is walked: every string that is a URL outside the text fields and the
   free-form fields (``metadata``, tool schemas… ``FREE_FORM_FIELDS``) is a media reference (vLLM
   reads media from many shapes; we do not guess which), so each image is checked wherever it sits:
   data URLs must be base64 of an image whose header (format, size) is within the byte and pixel
   limits (the pixels are decoded once, by vLLM, which answers 400 for any it cannot decode:
   ``answer_undecodable_images_400``); http(s)/file URLs only for allowed domains/folders. Audio,
   video, files and embeddings are refused (OVR reads images). Client media ``uuid``\\s are
   removed, so no request can reach an image another request cached. Text that cannot fit the
   context (fewer characters per token than the longest token has) is refused before vLLM renders
   or tokenizes it.

vLLM itself is started with the same limits (``config.vllm_command``/``child_env``), so a request
the guard misread still cannot make the server fetch a URL or read a file.
"""

from __future__ import annotations

import asyncio
import binascii
import hmac
import io
import json
import os
from email.message import Message
from pathlib import Path
from urllib.request import url2pathname

import pybase64

from ovr_serve.config import GUARD_ENV, GuardSettings
from ovr_serve.guard_http import (
    ClientSlots,
    GuardError,
    HostRule,
    read_body,
    refuse,
    replay,
    single_headers,
)

_BIG_BODY = 256 * 1024  # above this, inspect the body in a worker thread
# Fields whose strings vLLM reads as text, never as media: a URL typed in a question is fine.
TEXT_KEYS = frozenset(
    {"text", "content", "prompt", "thinking", "refusal", "reasoning", "reasoning_content"}
    | {"arguments", "name", "description", "model", "role", "stop", "user", "id", "type"}
)
# Media OVR does not read: refused wherever they appear (as a part type or as a key).
NON_IMAGE_MEDIA = frozenset(
    {"audio_url", "input_audio", "video_url", "image_embeds", "audio_embeds", "video_embeds"}
    | {"prompt_embeds", "image_pil", "file", "input_file", "file_url", "file_data"}
)
# Request fields that change how media is loaded or processed (max_pixels, frame counts…).
MEDIA_OVERRIDES = ("mm_processor_kwargs", "media_io_kwargs")
# Pillow formats the guard decodes: vLLM 0.32's serving allowlist (vllm.multimodal.image).
IMAGE_FORMATS = ("AVIF", "BLP", "BMP", "CUR", "DCX", "DDS", "DIB", "EPS", "GIF", "ICNS", "ICO")
IMAGE_FORMATS += ("IM", "JPEG", "JPEG2000", "MPO", "PCX", "PNG", "PPM", "QOI", "SGI", "TGA")
IMAGE_FORMATS += ("TIFF", "WEBP", "XBM")
# Top-level fields vLLM never reads media from (free-form or schema-shaped: a metadata key "file",
# a tool parameter named "image", a URL in a JSON schema's "default"): not searched for media.
FREE_FORM_FIELDS = frozenset(
    {"metadata", "tools", "functions", "response_format", "logit_bias", "structured_outputs"}
    | {"guided_json", "guided_regex", "guided_choice", "guided_grammar", "chat_template_kwargs"}
    | {"vllm_xargs", "kv_transfer_params", "web_search_options", "prediction", "stream_options"}
    | {"tool_choice", "function_call", "audio", "modalities"}
)


class RequestGuard:
    """Pure ASGI middleware (streams pass through untouched)."""

    def __init__(self, app, settings: GuardSettings | None = None):
        self.app = app
        if settings is None:
            if GUARD_ENV not in os.environ:
                raise RuntimeError(f"{GUARD_ENV} is not set: start the server through ovr-serve")
            settings = GuardSettings.from_json(os.environ[GUARD_ENV])
        self.settings = settings
        self.api_key = os.environ.get(settings.api_key_env) or None
        self.routes = _route_table(settings)
        self.host_rule = HostRule(settings, keyless=self.api_key is None)
        self.slots = ClientSlots(settings.max_requests_per_client)
        # (context length, longest token in characters): read from the served model on first use
        self.prompt_limit: tuple[int, int] | None = None
        limit = settings.max_images * settings.max_image_bytes
        self.max_body = int(limit * 1.4) + (4 << 20)  # base64 overhead plus text

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        client = None
        try:
            needs_body = self.check_head(scope)
            if self.routes.get(scope["path"], (None, False))[1] and scope["method"] != "OPTIONS":
                client = self.slots.take(scope)
        except GuardError as err:
            return await refuse(scope, send, err)
        try:  # the slot comes back however the request ends
            if needs_body:
                try:
                    receive = replay(await self._checked_body(scope, receive), receive)
                except GuardError as err:
                    return await refuse(scope, send, err)
            return await self.app(scope, receive, send)
        finally:
            self.slots.give_back(client)

    async def _checked_body(self, scope, receive) -> bytes:
        self.prompt_limit = self.prompt_limit or _prompt_limit(scope)
        body = await read_body(receive, self.max_body)
        if len(body) > _BIG_BODY:
            return await asyncio.to_thread(self.check_json_body, body, scope["path"])
        return self.check_json_body(body, scope["path"])

    def check_head(self, scope) -> bool:
        """Headers, Host and Origin, route and key, before any of the body is read; True when the
        body needs a look."""
        path, method = scope.get("path", ""), scope.get("method", "GET")
        headers = single_headers(scope, self.settings.max_headers)
        preflight = self.host_rule.check(headers) and method == "OPTIONS"
        route = self.routes.get(path)
        if scope["type"] == "websocket" or route is None:
            raise GuardError(404, f"no route {path!r} on this server", "not_found")
        methods, needs_key = route
        if preflight:
            return False  # an allowed page's CORS preflight: vLLM's CORS middleware answers it
        if methods and method not in methods and not (method == "HEAD" and "GET" in methods):
            raise GuardError(405, f"{path} takes {'/'.join(sorted(methods))}, not {method}")
        length = _body_length(headers)
        if needs_key and self.api_key and not self._authorised(headers):
            raise GuardError(
                401,
                "missing or wrong API key: send 'Authorization: Bearer <key>'",
                "invalid_api_key",
            )
        if method in ("GET", "HEAD", "DELETE", "OPTIONS"):
            if length:
                raise GuardError(400, f"{method} {path} takes no request body")
            return False
        if length is not None and length > self.max_body:
            raise GuardError(413, f"request body over {self.max_body} bytes", "request_too_large")
        if headers.get(b"content-encoding", b"identity").strip().lower() != b"identity":
            raise GuardError(415, "compressed request bodies are not accepted: send plain JSON")
        if not _is_json(headers.get(b"content-type")):
            if path in self.settings.extra_routes:
                return False  # a route opened deliberately (e.g. uploads): vLLM reads it as is
            raise GuardError(415, "send the request body as JSON (Content-Type: application/json)")
        return True

    def _authorised(self, headers: dict[bytes, bytes]) -> bool:
        # RFC 9110 11.4: the scheme, one or more spaces, the token; around it only spaces and tabs.
        if b"authorization" in headers:
            value = headers[b"authorization"].decode("latin-1").strip(" \t")
            scheme, _, token = value.partition(" ")
            token = token.strip(" \t") if scheme.lower() == "bearer" else ""
        else:
            token = headers.get(b"x-api-key", b"").decode("latin-1").strip(" \t")
        return bool(token) and hmac.compare_digest(token.encode(), self.api_key.encode())

    def check_json_body(self, body: bytes, path: str = "") -> bytes:
        """Raise GuardError for malformed JSON or media that breaks the policy; return the body to
        forward (the same bytes, or re-encoded without client media uuids)."""
        if not body.strip():
            raise GuardError(400, "empty request body: send a JSON object")
        try:
            payload = json.loads(body)  # what FastAPI does (Starlette's Request.json)
        except ValueError as exc:  # bad JSON, bad encoding, a number of over 4300 digits
            raise GuardError(400, f"malformed JSON body: {exc}") from None
        except RecursionError:
            raise GuardError(400, self._too_deep()) from None
        if not isinstance(payload, dict):
            raise GuardError(400, "the request body must be a JSON object")
        if "messages" in payload and (
            not isinstance(payload["messages"], list) or not payload["messages"]
        ):
            raise GuardError(400, "'messages' must be a non-empty list of chat messages")
        for name in MEDIA_OVERRIDES:
            if name in payload:
                raise GuardError(
                    400, f"'{name}' is set by the server, not per request: leave it out"
                )
        found = _walk(payload, self.settings.max_json_depth)
        if found.too_deep:
            raise GuardError(400, self._too_deep())
        self._check_prompt_size(found, payload)
        if len(found.media) > self.settings.max_images:
            raise GuardError(
                400,
                f"too many images: {len(found.media)} in one request, at most"
                f" {self.settings.max_images} allowed",
            )
        for ref in found.media:
            self._check_image(ref)
        return json.dumps(payload).encode() if found.uuids else body

    def _check_prompt_size(self, found: _Found, payload: dict) -> None:
        """Refuse text that cannot fit the context, before vLLM renders or tokenizes any of it:
        a token spans at most ``longest`` characters, so ``chars / longest`` tokens at least
        (plus each token id sent as a number); a batch of completion prompts gets one context
        each."""
        if self.prompt_limit is None:
            return
        context, longest = self.prompt_limit
        prompts = payload.get("prompt")
        batch = 1
        if isinstance(prompts, list) and not all(isinstance(p, int) for p in prompts):
            batch = max(1, len(prompts))
        least = -(-found.text_chars // longest) + found.numbers
        if least > context * batch:
            raise GuardError(
                400,
                f"the request is longer than the model's context: at least {least} tokens, the"
                f" context holds {context}; shorten the prompt",
                "context_length_exceeded",
            )

    def _too_deep(self) -> str:
        return f"JSON nested deeper than {self.settings.max_json_depth} levels: flatten the request"

    def _check_image(self, ref: str) -> None:
        from urllib3.util import parse_url  # what vLLM's media connector parses URLs with

        if ref[:5].lower() == "data:":
            return self._check_data_url(ref)
        try:
            url = parse_url(ref)
        except ValueError:
            raise GuardError(400, f"unparseable media URL {ref[:60]!r}") from None
        if url.scheme in ("http", "https"):
            if url.host and url.host in self.settings.allowed_media_domains:
                return None
            raise GuardError(
                400,
                f"image URLs from {url.host!r} are not fetched by this server: send the image as a"
                " data URL (base64), or start ovr-serve with --allowed_media_domains",
            )
        folder = self.settings.allowed_local_media_path
        if url.scheme == "file" and folder:
            try:
                path = Path(url2pathname((url.netloc or "") + (url.path or ""))).resolve()
            except (OSError, ValueError):  # a NUL byte, a loop of links
                path = Path("/")
            if Path(folder).resolve() in path.parents:
                return None
        if url.scheme == "file":
            raise GuardError(
                400,
                "file:// image URLs are not read by this server: send the image as a data URL, or"
                " start ovr-serve with --allowed_local_media_path",
            )
        raise GuardError(
            400, f"unsupported media reference {ref[:40]!r}: use data:image/...;base64"
        )

    def _check_data_url(self, url: str) -> None:
        # Parsed as vLLM's MediaConnector._load_data_url parses it (RFC 2397).
        spec, sep, data = url[5:].partition(",")
        if not sep or spec.rpartition(";")[2] != "base64":
            raise GuardError(
                400, "image data URLs must end their header in ';base64': data:image/png;base64,..."
            )
        max_bytes = self.settings.max_image_bytes
        if len(data) * 3 // 4 > max_bytes:
            raise GuardError(
                413, f"image too large: over {max_bytes} bytes encoded", "image_too_large"
            )
        try:
            raw = pybase64.b64decode(
                data, validate=True
            )  # vLLM's decoder, and ~7x the stdlib's speed
        except (binascii.Error, ValueError):
            raise GuardError(
                400, "image data URL is not valid base64 (truncated or corrupted?)"
            ) from None
        _check_image_bytes(raw, self.settings.max_image_input_pixels)


def _check_image_bytes(raw: bytes, max_pixels: int) -> None:
    """The header: a format vLLM serves, within the pixel limit (a decompression bomb is never
    decoded). The pixels are decoded once, by vLLM itself, whose every decoding failure is a 400
    (``answer_undecodable_images_400``): decoding them here too doubled the server's image work."""
    from PIL import Image

    Image.init()  # registers every plugin (``formats=`` does not load them)
    try:
        with Image.open(
            io.BytesIO(raw), formats=[f for f in IMAGE_FORMATS if f in Image.OPEN]
        ) as img:
            width, height = img.size
    except Image.DecompressionBombError:
        raise GuardError(
            413, "image too large: decompression bomb refused", "image_too_large"
        ) from None
    except Exception:
        raise GuardError(
            400,
            "image data does not decode as an image (PNG, JPEG, WebP, GIF…): corrupt or truncated?",
        ) from None
    if width * height > max_pixels:
        raise GuardError(
            413,
            f"image too large: {width}x{height} pixels, at most {max_pixels} pixels",
            "image_too_large",
        )


def answer_undecodable_images_400() -> None:
    """Make vLLM 0.32's one decode of an image strict, and each failure of it a 400.

    ``ImageMediaIO.load_bytes`` normalises EXIF orientation under ``suppress(Exception)`` before
    it loads the pixels: a load that fails there is swallowed and the next ``load()`` returns the
    partly decoded image (a corrupt PNG was answered 200). And it turns only OSError into the
    ValueError it answers 400 (Pillow's QOI decoder raises IndexError: a 500). We load the pixels
    before the orientation step (the same single decode) and turn any failure into ValueError.
    Remove when vLLM loads before ``normalize_image`` and catches Exception in ``load_bytes``."""
    from vllm.multimodal.media import image as media_image

    original_load, original_normalize = (
        media_image.ImageMediaIO.load_bytes,
        media_image.normalize_image,
    )
    if getattr(original_load, "ovr_fixed", False):
        return

    def normalize_image(image):
        image.load()  # raises for pixels Pillow cannot decode; later loads are no-ops
        return original_normalize(image)

    def load_bytes(self, data: bytes):
        try:
            return original_load(self, data)
        except ValueError:
            raise
        except Exception as exc:
            raise ValueError(f"Failed to load image: {type(exc).__name__}: {exc}") from exc

    load_bytes.ovr_fixed = True
    media_image.normalize_image = normalize_image
    media_image.ImageMediaIO.load_bytes = load_bytes


class _Found:
    def __init__(self):
        self.media: list[str] = []
        self.uuids = False
        self.too_deep = False
        self.text_chars = 0  # characters of every string that is not media
        self.numbers = 0  # numbers in lists (token ids)


def _walk(payload: dict, max_depth: int) -> _Found:
    """Every media reference in the payload (iteratively: no recursion limit to hit); removes
    media ``uuid``\\s in place. Raises GuardError for media OVR does not read. Top-level strings
    and ``FREE_FORM_FIELDS`` are never media (vLLM reads media from messages' parts only; other
    containers are searched all the same), but their text is counted."""
    found = _Found()
    stack = [(value, 2, name, name in FREE_FORM_FIELDS) for name, value in payload.items()]
    found.text_chars = sum(
        len(v) for k, v in payload.items() if isinstance(v, str) and k not in ("model", "user")
    )
    while stack:
        node, depth, key, free = stack.pop()
        if depth > max_depth:
            found.too_deep = True
            return found
        if isinstance(node, dict):
            if not free:
                _check_part(node, found)
            items = node.items()
        elif isinstance(node, list):
            items = ((key, item) for item in node)
            found.numbers += sum(1 for item in node if isinstance(item, (int, float)))
        else:
            continue
        for name, value in items:
            if isinstance(value, (dict, list)):
                stack.append((value, depth + 1, name, free))
            elif isinstance(value, str):
                if not free and _is_reference(value) and _media_field(name):
                    found.media.append(value)
                else:
                    found.text_chars += len(value)
    return found


def _prompt_limit(scope) -> tuple[int, int] | None:
    """(context length, longest token in characters) of the model vLLM serves, from vLLM 0.32's
    app state (``state.vllm_config``, ``state.engine_client.renderer.tokenizer``); None outside
    a vLLM server (then no prompt-size check)."""
    state = getattr(scope.get("app"), "state", None)
    try:
        context = state.vllm_config.model_config.max_model_len
        tokenizer = state.engine_client.renderer.tokenizer
        longest = max(len(piece) for piece in tokenizer.get_vocab())
    except (AttributeError, TypeError, ValueError):
        return None
    # a byte-level piece is one character per byte; added tokens are matched as their text
    return int(context), max(1, longest)


def _check_part(node: dict, found: _Found) -> None:
    kind = node.get("type") if isinstance(node.get("type"), str) else None
    if kind in NON_IMAGE_MEDIA or not NON_IMAGE_MEDIA.isdisjoint(node):
        name = kind if kind in NON_IMAGE_MEDIA else sorted(NON_IMAGE_MEDIA & set(node))[0]
        raise GuardError(400, f"'{name}' input is not accepted: this server reads images only")
    if kind in ("image_url", "input_image") or "image_url" in node:
        url = node.get("image_url")
        if not isinstance(url.get("url") if isinstance(url, dict) else url, str):
            raise GuardError(400, "an image part needs its image: data:image/...;base64,...")
    if "uuid" in node:
        del node["uuid"]  # vLLM would key its media cache on it: another request's image
        found.uuids = True
    data = node.get("data")
    if isinstance(data, str) and ("media_type" in node or kind == "base64"):
        # An Anthropic-style image source: raw base64 that vLLM would decode as an image.
        found.media.append(f"data:{node.get('media_type', 'image/png')};base64,{data}")


def _media_field(name) -> bool:
    """Could vLLM read this field's string as media? Not text fields, not JSON-schema keywords
    (``"$schema": "http://json-schema.org/…"`` in a response format)."""
    return not (isinstance(name, str) and (name in TEXT_KEYS or name.startswith("$")))


def _is_reference(value: str) -> bool:
    head = value[:16].lstrip().lower()
    return head.startswith(("data:", "file:")) or "://" in head


def _route_table(settings: GuardSettings) -> dict[str, tuple[frozenset[str], bool]]:
    routes = {path: (frozenset({"GET"}), False) for path in settings.open_routes}
    for entry in settings.api_routes:
        method, _, path = entry.partition(" ")
        routes[path] = (routes.get(path, (frozenset(), True))[0] | {method}, True)
    for path in settings.extra_routes:
        routes[path] = (frozenset(), True)  # any method
    return routes


def _body_length(headers: dict[bytes, bytes]) -> int | None:
    """The declared body length; None for chunked bodies. Refuses what servers disagree on."""
    encoding = headers.get(b"transfer-encoding")
    if encoding is not None:
        if encoding.strip().lower() != b"chunked" or b"content-length" in headers:
            raise GuardError(400, "Transfer-Encoding must be 'chunked', without Content-Length")
        return None
    length = headers.get(b"content-length", b"0")
    if not length.isdigit():
        raise GuardError(400, "Content-Length must be a number of bytes")
    return int(length)


def _is_json(content_type: bytes | None) -> bool:
    """JSON as FastAPI decides it (no Content-Type counts as JSON), limited to UTF-8 text."""
    if content_type is None:
        return True
    message = Message()
    message["content-type"] = content_type.decode("latin-1")
    charset = (message.get_param("charset") or "utf-8").lower()
    return message.get_content_type() == "application/json" and charset in ("utf-8", "utf8")
