"""Read an OpenAI-compatible chat stream into what the UI shows: reasoning, answer, counts, time.

Servers disagree on where the trace goes: vLLM ≥ 0.13 sends ``delta.reasoning``, older vLLM and
SGLang send ``delta.reasoning_content``, and a server without a reasoning parser leaves
``<think>…</think>`` inline in ``delta.content``. ``TurnStream`` reads all three; the inline case
goes through ``ovr_core.format.ReasoningStream`` (the one owner of the tag rules), and a
``</think>`` in the content with no opening tag (a template that opened ``<think>`` in the prompt,
or a continued trace) re-reads the content as reasoning up to that tag.

``UpdateThrottle`` batches UI updates: Gradio re-sends and the browser re-renders the whole
message (Markdown and KaTeX) on every update, so one update per token is O(N²) over a long trace.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ovr_core.format import THINK_CLOSE, ReasoningStream
from ovr_core.wire import reasoning_of

UPDATE_INTERVAL_S = 0.08  # ~12 updates/s: smooth to the eye, cheap for the browser


@dataclass
class DeltaFields:
    """The parts of one streamed chunk the UI cares about."""

    content: str = ""
    reasoning: str = ""
    finish_reason: str | None = None
    completion_tokens: int | None = None
    tokens: str = ""  # the chunk's raw token text, when logprobs were asked for


def delta_fields(chunk) -> DeltaFields:
    """Pick content, reasoning (either wire name) and finish reason out of a chunk (dict or object)."""
    get = _get
    out = DeltaFields()
    usage = get(chunk, "usage")
    if usage is not None:
        out.completion_tokens = get(usage, "completion_tokens")
    # With n > 1 the choices interleave; the UI shows the first one.
    choice = next((c for c in get(chunk, "choices") or [] if (get(c, "index") or 0) == 0), None)
    if choice is None:
        return out
    delta = get(choice, "delta") or {}
    out.content = get(delta, "content") or ""
    out.reasoning = reasoning_of(delta)
    out.finish_reason = get(choice, "finish_reason")
    logprobs = get(choice, "logprobs")
    out.tokens = "".join(get(t, "token") or "" for t in (get(logprobs, "content") or []))
    return out


def _get(obj, key: str):
    return obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)


@dataclass
class TurnStream:
    """One assistant turn being streamed; feed it chunks, read ``reasoning``/``answer`` any time.

    ``prior_reasoning`` continues a trace cut off earlier (the "continue" button): new reasoning is
    appended to it and the content is read as reasoning until ``</think>``. A server that reads the
    continuation as an answer strips its leading whitespace (" circles" after "three"); when the
    request asked for logprobs, the raw tokens say what was stripped and it is put back.
    """

    prior_reasoning: str = ""
    clock: Callable[[], float] = time.monotonic
    reasoning_tokens: int = 0
    answer_tokens: int = 0
    completion_tokens: int | None = None
    finish_reason: str | None = None
    started_at: float = field(init=False)
    reasoning_seconds: float | None = field(init=False, default=None)
    _field_reasoning: str = field(init=False, default="")
    _raw_content: str = field(init=False, default="")
    _lead_tokens: str | None = field(init=False, default=None)  # raw text before the first visible
    _inline: ReasoningStream = field(init=False)

    def __post_init__(self) -> None:
        self.started_at = self.clock()
        if self.prior_reasoning:
            self._lead_tokens = ""
        self._inline = ReasoningStream(think_in_prompt=bool(self.prior_reasoning))

    # --- what the UI reads -------------------------------------------------------------------
    @property
    def reasoning(self) -> str:
        """The whole trace so far: continued trace, field reasoning, then any inline reasoning."""
        return self.prior_reasoning + self._field_reasoning + self._inline.reasoning

    @property
    def answer(self) -> str:
        """The answer so far (Markdown, verbatim but for leading whitespace)."""
        return self._inline.answer

    @property
    def thinking(self) -> bool:
        """True while the model is still in its trace (no answer text yet, stream not finished)."""
        return self.finish_reason is None and not self._inline.answer_started

    @property
    def truncated(self) -> bool:
        """True for a stream the token limit cut off before the answer began."""
        return self.finish_reason == "length" and not self.answer.strip()

    def elapsed(self) -> float:
        """Seconds spent thinking: frozen once the answer starts, live before."""
        if self.reasoning_seconds is not None:
            return self.reasoning_seconds
        return self.clock() - self.started_at

    # --- feeding -------------------------------------------------------------------------------
    def feed(self, chunk) -> bool:
        """Consume one streamed chunk (dict or openai object); True when the visible text changed."""
        return self.feed_fields(delta_fields(chunk))

    def feed_fields(self, d: DeltaFields) -> bool:
        """Consume one chunk's fields; True when the visible text changed."""
        if d.completion_tokens is not None:
            self.completion_tokens = d.completion_tokens
        if d.finish_reason:
            self.finish_reason = d.finish_reason
        changed = False
        if self._lead_tokens is not None:
            self._restore_lead(d)
        if d.reasoning:
            if self.prior_reasoning and not self._raw_content and not self._field_reasoning:
                # The server splits the trace itself: its content will be the answer only.
                self._inline = ReasoningStream()
            self._field_reasoning += d.reasoning
            self.reasoning_tokens += 1
            changed = True
        if d.content:
            changed |= self._feed_content(d.content)
        if self.finish_reason:
            self.finish()
        elif self._inline.answer_started:
            self._mark_answer_start()
        return changed

    def finish(self) -> None:
        """End of stream: release held-back text and freeze the thinking time."""
        self._inline.finish()
        self._mark_answer_start()

    def _feed_content(self, text: str) -> bool:
        self._raw_content += text
        delta = self._inline.feed(text)
        if delta.answer and not self._field_reasoning and not self._inline.result().had_reasoning:
            # Only the tail can hold a new tag: keeps this O(chunk), not O(answer).
            if THINK_CLOSE in self._inline.answer[-(len(delta.answer) + len(THINK_CLOSE)) :]:
                # A closing tag with no opening one: the prompt opened the trace. Re-read it all.
                self._inline = ReasoningStream(think_in_prompt=True)
                self._inline.feed(self._raw_content)
                self.reasoning_tokens += self.answer_tokens + 1
                self.answer_tokens = 0
                return True
        if delta.reasoning:
            self.reasoning_tokens += 1
        if delta.answer:
            self.answer_tokens += 1
        return bool(delta)

    def _restore_lead(self, d: DeltaFields) -> None:
        self._lead_tokens += d.tokens
        first = d.reasoning or d.content
        if not first:
            return
        raw = self._lead_tokens
        lead = raw[: len(raw) - len(raw.lstrip())]
        if lead and not first[0].isspace() and not self.prior_reasoning[-1:].isspace():
            if d.reasoning:
                d.reasoning = lead + d.reasoning
            else:
                d.content = lead + d.content
        self._lead_tokens = None

    def _mark_answer_start(self) -> None:
        if self.reasoning_seconds is None:
            self.reasoning_seconds = self.clock() - self.started_at


class UpdateThrottle:
    """Says when an update is due: at most one per ``interval`` seconds (0 = every time)."""

    def __init__(
        self, interval: float = UPDATE_INTERVAL_S, clock: Callable[[], float] = time.monotonic
    ):
        self.interval = interval
        self.clock = clock
        self._last = float("-inf")
        self.sent = 0

    def due(self) -> bool:
        """True (and counts an update) when the last update is ``interval`` old or more."""
        now = self.clock()
        if now - self._last >= self.interval:
            self._last = now
            self.sent += 1
            return True
        return False
