"""The OVR output format: one owner for what the model emits and how it is read.

An OVR completion is ``<think>`` reasoning ``</think>`` followed by the answer, whose final result
sits in ``\\boxed{…}``. Everything that reads or writes that format imports it from here: the vLLM
reasoning parser, the web UI, the RL rewards, the eval scorer, the data tools and the tests.

Splitting rule (streaming and whole text give the same result, by construction):
- output that starts (after whitespace) with ``<think>`` is reasoning up to ``</think>``;
- when the chat template already opened ``<think>`` in the prompt (``think_in_prompt``), output is
  reasoning from its first character up to ``</think>``;
- otherwise the output is all answer;
- a trace cut off before ``</think>`` is all reasoning, with ``closed`` False;
- the answer keeps its text verbatim except leading whitespace.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
BOXED = "\\boxed"
# The chat template every OVR checkpoint is served and trained with (opens <think> in the prompt).
CHAT_TEMPLATE = Path(__file__).resolve().parent / "templates" / "qwen2_5_vl.jinja"

__all__ = [
    "THINK_OPEN",
    "THINK_CLOSE",
    "Split",
    "ReasoningStream",
    "split_reasoning",
    "boxed_contents",
    "boxed_spans",
    "extract_boxed",
    "is_well_formed",
    "format_completion",
]


@dataclass
class Split:
    """A completion read as reasoning and answer; ``closed`` is False for a trace never closed."""

    reasoning: str
    answer: str
    closed: bool
    had_reasoning: bool


@dataclass
class Delta:
    """What one chunk of a stream adds to the reasoning and to the answer."""

    reasoning: str = ""
    answer: str = ""

    def __bool__(self) -> bool:
        return bool(self.reasoning or self.answer)


def split_reasoning(text: str, think_in_prompt: bool = False) -> Split:
    """Split a whole completion into reasoning and answer (same rule as the stream)."""
    stream = ReasoningStream(think_in_prompt=think_in_prompt)
    stream.feed(text)
    stream.finish()
    return stream.result()


class ReasoningStream:
    """Feed completion text chunk by chunk; get reasoning/answer deltas, tags held back until whole.

    A chunk that ends inside a possible tag (``"</thi"``) is held until the next chunk decides it;
    ``finish()`` releases whatever is still held when the stream ends.
    """

    _START, _REASONING, _ANSWER = "start", "reasoning", "answer"

    def __init__(self, think_in_prompt: bool = False) -> None:
        self._state = self._REASONING if think_in_prompt else self._START
        self._had_reasoning = think_in_prompt
        self._held = ""
        self._closed = False
        self._answer_started = False
        self.reasoning = ""
        self.answer = ""

    @property
    def closed(self) -> bool:
        """True once ``</think>`` has been seen."""
        return self._closed

    @property
    def answer_started(self) -> bool:
        """True once the answer has produced text (leading whitespace is not text)."""
        return self._answer_started

    def feed(self, chunk: str) -> Delta:
        """Consume one chunk of text and return what it adds."""
        delta = Delta()
        text = self._held + chunk
        self._held = ""
        if self._state == self._START:
            stripped = text.lstrip()
            if stripped.startswith(THINK_OPEN):
                self._state = self._REASONING
                self._had_reasoning = True
                text = stripped[len(THINK_OPEN) :]
            elif THINK_OPEN.startswith(stripped):
                self._held = text  # "", whitespace, or a prefix of "<think>": undecided
                return delta
            else:
                self._state = self._ANSWER
        if self._state == self._REASONING:
            end = text.find(THINK_CLOSE)
            if end < 0:
                keep = _partial_suffix(text, THINK_CLOSE)
                self._held = text[len(text) - keep :] if keep else ""
                delta.reasoning = text[: len(text) - keep]
                self.reasoning += delta.reasoning
                return delta
            delta.reasoning = text[:end]
            self.reasoning += delta.reasoning
            self._closed = True
            self._state = self._ANSWER
            text = text[end + len(THINK_CLOSE) :]
        if not self._answer_started:
            text = text.lstrip()
            self._answer_started = bool(text)
        delta.answer = text
        self.answer += text
        return delta

    def finish(self) -> Delta:
        """End of stream: release held-back text (a partial tag that never completed)."""
        held, self._held = self._held, ""
        delta = Delta()
        if not held:
            return delta
        if self._state == self._REASONING:
            delta.reasoning = held
            self.reasoning += held
        elif held.strip():  # START: an unfinished "<thi…" is answer text
            delta.answer = held.lstrip()
            self.answer += delta.answer
            self._state = self._ANSWER
        return delta

    def result(self) -> Split:
        """The split so far (call after ``finish()`` for the final one)."""
        return Split(self.reasoning, self.answer, self._closed, self._had_reasoning)


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``tag``."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


def boxed_contents(text: str) -> list[str]:
    """Every ``\\boxed{…}`` content in ``text``, in order, braces balanced; unclosed ones skipped."""
    return [text[open_ + 1 : end - 1].strip() for _, open_, end in boxed_spans(text)]


def boxed_spans(text: str) -> list[tuple[int, int, int]]:
    """``(start, brace, end)`` of every whole ``\\boxed{…}``: ``text[start:end]`` is the box,
    ``text[brace]`` its opening brace. Scanning stops at an unclosed box (output cut off inside it)."""
    found = []
    start = 0
    while True:
        i = text.find(BOXED, start)
        if i < 0:
            return found
        j = i + len(BOXED)
        while j < len(text) and text[j] == " ":
            j += 1
        if j >= len(text) or text[j] != "{":
            start = i + len(BOXED)
            continue
        depth, k = 0, j
        while k < len(text):
            if text[k] == "{":
                depth += 1
            elif text[k] == "}":
                depth -= 1
                if depth == 0:
                    break
            k += 1
        if depth:
            return found  # unclosed: the output was cut off inside the box
        found.append((i, j, k + 1))
        start = k + 1


def extract_boxed(text: str) -> str | None:
    """The last ``\\boxed{…}`` content of a completion's answer (the final result), or None."""
    boxes = boxed_contents(text)
    return boxes[-1] if boxes else None


def is_well_formed(text: str, think_in_prompt: bool = False) -> bool:
    """True for ``<think>…</think>`` then an answer holding exactly one ``\\boxed{}``."""
    split = split_reasoning(text, think_in_prompt)
    if not (split.had_reasoning and split.closed and split.reasoning.strip()):
        return False
    if THINK_OPEN in split.answer or THINK_CLOSE in split.answer:
        return False
    return len(boxed_contents(split.answer)) == 1 and BOXED in split.answer


def format_completion(reasoning: str, answer: str) -> str:
    """Write a completion in the OVR format (used to build training targets)."""
    return f"{THINK_OPEN}\n{reasoning.strip()}\n{THINK_CLOSE}\n\n{answer.strip()}"
