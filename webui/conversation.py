"""A conversation as the UI keeps it, the request it makes upstream, and its export and import.

The conversation is a list of turns (it lives in ``gr.State``), each a small dataclass:

- ``UserTurn(text, images)``: the question and the local paths of its images;
- ``AssistantTurn(reasoning, answer, finish_reason, seconds, tokens, stopped)``: trace and answer
  kept apart, with how the stream ended;
- ``ErrorTurn(text)``: shown in the chat, never sent to the model.

Each has a ``role`` (``"user"``, ``"assistant"``, ``"error"``). The chat display is rendered from
the conversation by ``webui.render``; the JSON export is OpenAI messages, read back by
``import_json``.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import mimetypes
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from ovr_core.format import format_completion, split_reasoning
from ovr_core.wire import reasoning_of

THINKING_TITLE = "Thinking"
# What an imported conversation may bring in: real images only, each format saved under its own
# extension (never the sender's declared type: a ".svg" or ".html" would run in the browser).
IMPORT_FORMATS = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "GIF": ".gif"}
MAX_IMPORT_IMAGES = 64
MAX_IMPORT_IMAGE_BYTES = 20 << 20
MAX_IMPORT_PIXELS = 8192 * 8192
MAX_IMPORT_BYTES = MAX_IMPORT_IMAGES * MAX_IMPORT_IMAGE_BYTES * 4 // 3 + (16 << 20)
TRUNCATED_TITLE = "Thinking — cut off by the token limit"


# --- turns --------------------------------------------------------------------------------------
@dataclass
class UserTurn:
    """A user message: its text and the local paths of its images."""

    text: str = ""
    images: list[str] = field(default_factory=list)
    role: ClassVar[str] = "user"


@dataclass
class AssistantTurn:
    """An assistant message: trace and answer kept apart, with how the stream ended."""

    reasoning: str = ""
    answer: str = ""
    finish_reason: str | None = None
    seconds: float | None = None
    tokens: int = 0
    stopped: bool = False
    role: ClassVar[str] = "assistant"


@dataclass
class ErrorTurn:
    """An error shown in the chat in place of an answer."""

    text: str = ""
    role: ClassVar[str] = "error"


Turn = UserTurn | AssistantTurn | ErrorTurn


def trace_stats(turn: AssistantTurn, live: bool = False) -> list[str]:
    """ "12.3 s", "456 tokens" for a trace. A ``live`` trace shows both, counting from zero; a
    finished one leaves out what is unknown (an imported conversation from another tool has
    neither)."""
    stats = []
    if live or turn.seconds is not None:
        stats.append(f"{turn.seconds or 0:.1f} s")
    if live or turn.tokens:
        stats.append(f"{turn.tokens} tokens")
    return stats


def is_truncated(turn: Turn) -> bool:
    """An assistant turn the token limit cut off before its answer began."""
    return (
        isinstance(turn, AssistantTurn)
        and turn.finish_reason == "length"
        and not turn.answer.strip()
    )


def last_user(conversation: list[Turn]) -> int | None:
    """The index of the conversation's last user turn (None without one)."""
    for i in range(len(conversation) - 1, -1, -1):
        if isinstance(conversation[i], UserTurn):
            return i
    return None


# --- the request ----------------------------------------------------------------------------------
def to_openai(
    conversation: list[Turn],
    system_prompt: str = "",
    include_reasoning: bool = False,
    inline_images: bool = True,
) -> list[dict]:
    """OpenAI chat messages: images as data URLs, earlier traces left out unless asked for.

    Errors (and the user message that caused them, when nothing answered it) are not sent.
    """
    messages: list[dict] = []
    if system_prompt.strip():
        messages.append({"role": "system", "content": system_prompt.strip()})
    for i, turn in enumerate(conversation):
        if isinstance(turn, UserTurn):
            nxt = conversation[i + 1] if i + 1 < len(conversation) else None
            if isinstance(nxt, ErrorTurn):
                continue
            parts: list[dict] = [
                {"type": "image_url", "image_url": {"url": image_url(p) if inline_images else p}}
                for p in turn.images
            ]
            if turn.text:
                parts.append({"type": "text", "text": turn.text})
            messages.append({"role": "user", "content": parts})
        elif isinstance(turn, AssistantTurn):
            if include_reasoning and turn.reasoning:
                content = format_completion(turn.reasoning, turn.answer)
            else:
                content = turn.answer
            messages.append({"role": "assistant", "content": content})
    return messages


def image_url(path: str) -> str:
    """A ``data:`` URL holding the image file's bytes."""
    mime = mimetypes.guess_type(path)[0] or "image/png"
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f"data:{mime};base64,{data}"


# --- export / import ------------------------------------------------------------------------------
def export_json(conversation: list[Turn], system_prompt: str = "") -> str:
    """The conversation in the OpenAI message format, traces in ``reasoning``, images inline."""
    messages = to_openai(conversation, system_prompt)
    answers = iter(t for t in conversation if isinstance(t, AssistantTurn))
    for message in messages:
        if message["role"] == "assistant":
            turn = next(answers)
            if turn.reasoning:
                message["reasoning"] = turn.reasoning
            if turn.finish_reason:
                message["finish_reason"] = turn.finish_reason
            if turn.seconds is not None or turn.tokens:
                message["ovr"] = {"seconds": turn.seconds, "tokens": turn.tokens}
    return json.dumps({"messages": messages}, indent=2, ensure_ascii=False)


def export_markdown(conversation: list[Turn], system_prompt: str = "") -> str:
    """A readable Markdown transcript: images embedded as data URLs, traces folded in <details>."""
    lines = ["# OVR conversation", ""]
    if system_prompt.strip():
        lines += ["**System:** " + system_prompt.strip(), ""]
    for turn in conversation:
        if isinstance(turn, UserTurn):
            lines += ["## User", ""]
            lines += [f"![{Path(p).name}]({image_url(p)})" for p in turn.images]
            lines += ["", turn.text, ""]
        elif isinstance(turn, AssistantTurn):
            lines += ["## Assistant", ""]
            if turn.reasoning:
                title = TRUNCATED_TITLE if is_truncated(turn) else THINKING_TITLE
                stats = ", ".join(trace_stats(turn))
                summary = f"{title} ({stats})" if stats else title
                lines += [f"<details><summary>{summary}</summary>", ""]
                lines += [turn.reasoning.strip(), "", "</details>", ""]
            lines += [turn.answer.strip(), ""]
        else:
            lines += [f"> ⚠️ Error: {turn.text}", ""]
    return "\n".join(lines).rstrip() + "\n"


def import_json(text: str, image_dir: str | Path | None = None) -> tuple[list[Turn], str]:
    """Read an exported (or any OpenAI-format) conversation back: (conversation, system prompt).

    Accepts ``{"messages": [...]}`` or a bare list; traces from ``reasoning``,
    ``reasoning_content`` or inline ``<think>`` tags; data-URL images are written to ``image_dir``.
    """
    data = json.loads(text)
    messages = data.get("messages") if isinstance(data, dict) else data
    if not isinstance(messages, list):
        raise ValueError("expected a JSON list of messages or an object with 'messages'")
    image_dir = Path(image_dir or tempfile.mkdtemp(prefix="ovr-import-"))
    image_dir.mkdir(parents=True, exist_ok=True)
    count = sum(len(_image_urls(m.get("content"))) for m in messages if isinstance(m, dict))
    if count > MAX_IMPORT_IMAGES:
        raise ValueError(f"the file has {count} images; at most {MAX_IMPORT_IMAGES} are imported")
    conversation: list[Turn] = []
    system = ""
    for n, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message:
            raise ValueError(f"message {n} has no role")
        role, content = message["role"], message.get("content")
        if role == "system":
            system = text_of(content)
        elif role == "user":
            images = [_save_image(url, image_dir) for url in _image_urls(content)]
            conversation.append(UserTurn(text_of(content), images))
        elif role == "assistant":
            reasoning = reasoning_of(message)
            answer = text_of(content)
            if not reasoning:
                split = split_reasoning(answer)
                reasoning, answer = split.reasoning, split.answer
            stats = message.get("ovr") if isinstance(message.get("ovr"), dict) else {}
            seconds, tokens = stats.get("seconds"), stats.get("tokens")
            conversation.append(
                AssistantTurn(
                    reasoning,
                    answer,
                    finish_reason=message.get("finish_reason"),
                    seconds=float(seconds) if isinstance(seconds, (int, float)) else None,
                    tokens=int(tokens) if isinstance(tokens, int) and tokens > 0 else 0,
                )
            )
        else:
            raise ValueError(f"message {n}: unsupported role {role!r}")
    return conversation, system


def text_of(content) -> str:
    """The text of a message's content: a string, or the text parts of a list of parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ValueError(
            f"message content must be text or a list of parts, not {type(content).__name__}"
        )
    parts = [p for p in content if isinstance(p, dict) and p.get("type") == "text"]
    return "\n".join(str(p.get("text", "")) for p in parts)


def _image_urls(content) -> list[str]:
    if not isinstance(content, list):
        return []
    urls = []
    for part in content:
        if isinstance(part, dict) and part.get("type") == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if not isinstance(url, str):
                raise ValueError("an image part has no data: URL")
            urls.append(url)
    return urls


def _save_image(url: str, image_dir: Path) -> str:
    """Write a data-URL image that really is one (sniffed by Pillow, whatever the URL declares)
    under the extension of what it is; anything else is refused with the reason."""
    if not url.startswith("data:") or ";base64," not in url:
        raise ValueError("only data: URLs can be imported (got a link to somewhere else)")
    data = url.split(",", 1)[1]
    if len(data) * 3 // 4 > MAX_IMPORT_IMAGE_BYTES:
        raise ValueError(f"an image in the file is over {MAX_IMPORT_IMAGE_BYTES >> 20} MB")
    try:
        raw = base64.b64decode(data, validate=True)
    except binascii.Error as err:
        raise ValueError(f"an image in the file is not valid base64: {err}") from err
    ext = IMPORT_FORMATS[sniff_image(raw)]
    path = image_dir / f"{uuid.uuid4().hex[:12]}{ext}"
    path.write_bytes(raw)
    return str(path)


def sniff_image(raw: bytes) -> str:
    """The Pillow format of ``raw`` if it is a whole image the UI shows (PNG, JPEG, WebP, GIF)
    within the pixel cap; a ValueError otherwise."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(raw), formats=list(IMPORT_FORMATS)) as img:
            if img.width * img.height > MAX_IMPORT_PIXELS:
                raise ValueError(f"an image in the file is over {MAX_IMPORT_PIXELS} pixels")
            img.load()
            return img.format
    except ValueError:
        raise
    except Exception as err:
        raise ValueError(
            "an image in the file is not a PNG, JPEG, WebP or GIF image (or is corrupt)"
        ) from err
