"""Where the final answer is in a completion: the answer part, its boxes, its answer sentences.

- Only the text after ``</think>`` counts (``final_answer``); a trace opened and never closed is
  ``unclosed``. A completion whose ``<think>`` was opened by the chat template (it holds
  ``</think>`` but does not start with ``<think>``) is read the same way.
- The boxes (``\\boxed{}``, ``\\fbox{}``) in order (``boxes``); the last is the final result, as
  MATH-style scorers take it (``final_box``).
- The answer sentences the benchmarks' official extractors read when there is no box
  (``answer_sentences``, one set per extractor in ``SENTENCES``): "the answer is (C)", "Answer: C", "the correct option is …", "the final
  answer is 204" (simple-evals' ``Answer\\s*:``, MMLU-Pro's ``answer is \\(?X\\)?``, MATH-V's
  "the final answer is" / "the answer is" / "the correct answer is" / "the answer should be",
  lmms-eval's answer phrases). Each is cut at the end of its line or sentence.

The text is read after ``ovr_core.text.normalize`` (the grader normalises once, before this).
"""

from __future__ import annotations

import re

from ovr_core.format import BOXED, THINK_CLOSE, THINK_OPEN, boxed_contents, split_reasoning

FBOX = "\\fbox"

# "the final answer is", "the correct option is", "Answer:", "my answer is" … then the answer
_ANY = (
    r"\b(?:the\s+)?(?:final\s+|correct\s+|best\s+|my\s+)?(?:answer|option|choice)"
    r"(?:\s+(?:is|should\s+be|would\s+be|will\s+be))\s*:?|\banswer\s*:"
)
# the sentences each official extractor reads (the rule's "sentences"; default "any", the LLM
# extractors' and lmms-eval's reasoning scorer's reading)
SENTENCES = {
    "any": _ANY,
    "answer_colon": r"\banswer\s*:",  # simple-evals (GPQA, MMLU), lmms-eval's AIME
    "answer_is": r"\banswer\s+is\b|\banswer\s*:",  # MMLU-Pro: "answer is (X)", then "Answer: X"
    "mathv": r"\bthe\s+(?:final\s+|correct\s+)?answer\s+(?:is|should\s+be)\b",  # MATH-V
}
_PATTERNS = {
    name: re.compile(f"(?:{pattern})[ \t]*(?P<ans>[^\n]*)", re.I)
    for name, pattern in SENTENCES.items()
}
# where a stated answer ends: a line end, or a full stop followed by a space and more words
_SENTENCE_END = re.compile(r"(?<!\d)\.(?:\s|$)|(?<=\d)\.(?=\s+[A-Za-z])|\s+(?:because|since)\b")


def final_answer(completion: str) -> tuple[str | None, str]:
    """``(status, answer)``: ``("unclosed", "")`` for a trace never closed, else ``(None, the text
    after </think>)`` (the whole output when it has no trace at all)."""
    think_in_prompt = THINK_CLOSE in completion and not completion.lstrip().startswith(THINK_OPEN)
    split = split_reasoning(completion, think_in_prompt)
    if split.had_reasoning and not split.closed:
        return "unclosed", ""
    return None, split.answer


def boxes(answer: str) -> list[str]:
    """Every ``\\boxed{}`` or ``\\fbox{}`` content of an answer, in order."""
    return boxed_contents(answer.replace(FBOX, BOXED))


def final_box(answer: str) -> str | None:
    """The last ``\\boxed{}`` or ``\\fbox{}`` content of an answer (the final result), or None."""
    found = boxes(answer)
    return found[-1] if found else None


def answer_sentences(answer: str, kind: str = "any") -> list[str]:
    """What each answer sentence of ``answer`` states ("the answer is (C)." → "(C)"), in order;
    the answer outside any box (a sentence inside a box is the box's business). ``kind`` names
    the sentences a benchmark's extractor reads (``SENTENCES``)."""
    if kind not in _PATTERNS:
        raise ValueError(f"unknown answer sentences {kind!r}; known: {sorted(_PATTERNS)}")
    text = _without_boxes(answer)
    found = []
    for m in _PATTERNS[kind].finditer(text):
        said = m.group("ans").strip()
        end = _SENTENCE_END.search(said)
        said = (said[: end.start()] if end else said).strip().strip("*").strip()
        said = re.sub(r"^(?:option|choice)\s+", "", said, flags=re.I).rstrip(".;,!").strip()
        if said:
            found.append(said)
    return found


def _without_boxes(answer: str) -> str:
    out, start = [], 0
    text = answer.replace(FBOX, BOXED)
    for box in re.finditer(re.escape(BOXED), text):
        if box.start() < start:
            continue
        out.append(text[start : box.start()])
        depth, k = 0, box.end()
        while k < len(text):
            depth += (text[k] == "{") - (text[k] == "}")
            k += 1
            if depth == 0:
                break
        start = k
    out.append(text[start:])
    return "".join(out)
