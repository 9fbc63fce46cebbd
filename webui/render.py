"""The chat display: a conversation (see ``webui.conversation``) as Gradio ``Chatbot`` messages.

Rendered from the conversation, never the other way round, so the raw trace and answer stay whole
for export and resend while the display decorates them: the boxed result in a callout, the paper's
cognitive behaviours marked on a finished trace. Model text is HTML-escaped before Markdown (outside
code, which Markdown shows verbatim): a ``<`` in a trace or a ``$x<y$`` in an answer would
otherwise open a tag and the text after it would vanish. KaTeX reads the parsed text, so the
escaped math still typesets.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

from ovr_core.behaviours import find_behaviours, highlight
from ovr_core.format import boxed_spans, extract_boxed
from webui.conversation import (
    THINKING_TITLE,
    TRUNCATED_TITLE,
    AssistantTurn,
    Turn,
    UserTurn,
    is_truncated,
    trace_stats,
)

_CODE = re.compile(r"(```.*?(?:```|\Z)|`[^`\n]*`)", re.S)
_MATH = re.compile(r"\$\$.*?\$\$|\\\[.*?\\\]|\\\(.*?\\\)|\$[^$\n]*\$", re.S)
_MARK_OPEN, _MARK_TEXT, _MARK_CLOSE = "\x00", "\x01", "\x02"  # stand-ins that survive escaping
_TAG_START = re.compile(r"<(?=[A-Za-z/!?])")
_JOINER = "\u2060"  # WORD JOINER: invisible, and no tag name or "[" can follow "<" or "!" past it


def to_chatbot(conversation: list[Turn], live: bool = False) -> list[dict]:
    """Gradio ``Chatbot`` messages for a conversation; ``live`` marks its last turn as streaming.

    Each user turn is one message (editable in the chat); an assistant turn is a Thinking message
    and an answer message; an error turn is one message.
    """
    out: list[dict] = []
    last = len(conversation) - 1
    for i, turn in enumerate(conversation):
        if isinstance(turn, UserTurn):
            content: list = [{"path": p, "alt_text": Path(p).name} for p in turn.images]
            if turn.text:  # imported text is anyone's: escaped like the model's
                content.append(escape_html(turn.text))
            out.append({"role": "user", "content": content or [""]})
        elif isinstance(turn, AssistantTurn):
            out.extend(_assistant_messages(turn, streaming=live and i == last))
        else:
            out.append({"role": "assistant", "content": f"⚠️ **Error:** {escape_html(turn.text)}"})
    return out


def turn_of_message(conversation: list[Turn], index: int) -> int | None:
    """The conversation index of the turn that shows as chat message ``index`` (None if none)."""
    shown = 0
    for i, turn in enumerate(conversation):
        if isinstance(turn, AssistantTurn):
            shown += len(_assistant_messages(turn, streaming=False))
        else:
            shown += 1
        if index < shown:
            return i
    return None


def _assistant_messages(turn: AssistantTurn, streaming: bool) -> list[dict]:
    messages = []
    thinking = streaming and not turn.answer and not turn.finish_reason
    if turn.reasoning or thinking:
        stats = trace_stats(turn, live=thinking)
        if thinking:  # not tagged while it streams: the text would jump about
            content = escape_html(turn.reasoning)
        else:
            content, counts = tag_behaviours(turn.reasoning)
            stats += counts
        messages.append(
            {
                "role": "assistant",
                "content": content,
                "metadata": {
                    "title": TRUNCATED_TITLE if is_truncated(turn) else THINKING_TITLE,
                    "log": " · ".join(stats),
                    "status": "pending" if thinking else "done",
                },
            }
        )
    answer = decorate_answer(turn.answer) if turn.answer.strip() else ""
    if turn.stopped:
        answer += "\n\n*Stopped.*"
    elif is_truncated(turn):
        answer += "*The trace hit the token limit before an answer: press **Continue** to go on.*"
    if answer.strip():
        messages.append({"role": "assistant", "content": answer.strip()})
    return messages


@functools.lru_cache(maxsize=256)
def tag_behaviours(trace: str) -> tuple[str, tuple[str, ...]]:
    """The trace, escaped, with each behaviour phrase in ``<mark class="ovr-behaviour" title=…>``,
    and "name ×count" per behaviour found; the rules are ``ovr-eval behaviours``' (one detector).

    Cached: the chat display is re-rendered on every streamed update, and the rules take ~0.1 s on
    a 100 KB trace, so each finished trace is tagged once, not every 80 ms."""
    trace = re.sub(f"[{_MARK_OPEN}{_MARK_TEXT}{_MARK_CLOSE}]", "", trace)
    spans = find_behaviours(trace)
    counts: dict[str, int] = {}
    for span in spans:
        counts[span.behaviour] = counts.get(span.behaviour, 0) + 1
    marked = highlight(trace, spans, f"{_MARK_OPEN}{{behaviour}}{_MARK_TEXT}{{text}}{_MARK_CLOSE}")
    html = re.sub(
        f"{_MARK_OPEN}(\\w+){_MARK_TEXT}",
        r'<mark class="ovr-behaviour" title="\1">',
        escape_html(marked),
    ).replace(_MARK_CLOSE, "</mark>")
    return html, tuple(f"{name.replace('_', ' ')} ×{n}" for name, n in counts.items())


def decorate_answer(answer: str) -> str:
    """The answer as Markdown: bare ``\\boxed{}`` typeset, the final result repeated in a callout."""
    html = escape_html(typeset_bare_boxes(answer))
    boxed = extract_boxed(answer)
    if boxed is None:
        return html
    result = escape_html(f"$\\boxed{{{boxed}}}$")
    return f'{html}\n\n<div class="ovr-result">Final answer: {result}</div>'


def typeset_bare_boxes(answer: str) -> str:
    """Put ``$…$`` around each ``\\boxed{…}`` written outside math delimiters (KaTeX skips those)."""
    math = [m.span() for m in _MATH.finditer(answer)]
    out, pos = [], 0
    for start, _, end in boxed_spans(answer):
        if any(a <= start < b for a, b in math):
            continue
        out += [answer[pos:start], "$", answer[start:end], "$"]
        pos = end
    return "".join(out) + answer[pos:]


def escape_html(text: str) -> str:
    """Model or imported text made inert for the chat's Markdown: ``&``, ``<`` and the ``!`` of a
    Markdown image as entities outside code; inside code (shown verbatim) a word joiner after a
    ``<`` that could open a tag and after the ``!`` of ``![``. So no tag and no image can form even
    where the browser's Markdown parser reads code differently from ``_CODE`` (escaped backticks,
    unequal backtick runs, a table cell): the text never runs HTML or loads a remote resource."""
    parts = _CODE.split(text)
    for i, part in enumerate(parts):
        if i % 2 == 0:
            parts[i] = part.replace("&", "&amp;").replace("<", "&lt;").replace("![", "&#33;[")
        else:
            parts[i] = _TAG_START.sub("<" + _JOINER, part).replace("![", "!" + _JOINER + "[")
    return "".join(parts)


def unescape_html(text: str) -> str:
    """The text a user typed, from what ``escape_html`` showed (for an edited question)."""
    text = text.replace("<" + _JOINER, "<").replace("!" + _JOINER + "[", "![")
    return text.replace("&#33;[", "![").replace("&lt;", "<").replace("&amp;", "&")
