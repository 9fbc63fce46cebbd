"""Is this answer right? The one grader that the RL rewards and ``ovr-eval`` share.

It sits beside the output format (``ovr_core.format``); the rules are ``ovr_core.grading_rules``,
the pool of worker processes with a hard per-sample limit is ``ovr_core.grading_pool``.

One pass per completion (``grade_completion``):
1. the answer after ``</think>`` (``ovr_core.answers.final_answer``: a trace never closed is
   ``unclosed``), then the answer, the gold and the options are normalised once
   (``ovr_core.text.normalize``: NFKC plus what NFKC lacks);
2. the stated answer: the boxes (``\\boxed{}``/``\\fbox{}``), else, in evaluation, the last answer
   sentence the official extractors read ("the answer is (C)", "Answer: C", "the final answer is
   204"); nothing stated is ``no_answer``; a box no answer needs is ``refused`` (``refusal``)
   before sympy sees it;
3. the comparison under the item's rule (``grading_rules.matches``).

Two strictnesses, one grader (``strict``):
- evaluation (``strict=False``) follows the official scorers' extraction chain, so our numbers
  mean the paper's: the last box is the answer (a self-correction "\\boxed{3}… no, \\boxed{4}" is
  graded by its final box, as MATH-V's ``find_math_answer`` and math-verify take it), else the
  last answer sentence. Several values asked for and boxed one by one ("\\boxed{-2} and
  \\boxed{5}") are read together when together they are the gold;
- the RL reward (``strict=True``) closes what is exploitable there: a box is required (an
  answer sentence alone earns nothing), and an output that states two different answers
  (two boxes that differ, a box and an "Answer:" line that differ) scores 0 unless together they
  are the gold's several values. Hedging cannot pay.

In both, a single answer that names two (a right letter with another option's text, "3 million"
for 3) is wrong: ``grading_rules``.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from ovr_core.answers import answer_sentences, boxes, final_answer, final_box
from ovr_core.format import split_reasoning
from ovr_core.grading_rules import (
    LETTERS,
    RULES,
    choice_letter,
    choice_letters,
    clean_answer,
    matches,
    math_equal,
    number_of,
    unwrap_text,
    wrap_gold,
)
from ovr_core.text import normalize

__all__ = [
    "LETTERS",
    "RULES",
    "STATUSES",
    "GRADER_TROUBLE",
    "Verdict",
    "grade_completion",
    "grade_serial",
    "quick_verdict",
    "count_statuses",
    "final_answer",
    "final_box",
    "refusal",
    "exponent_tower",
    "matches",
    "choice_letter",
    "choice_letters",
    "clean_answer",
    "number_of",
    "unwrap_text",
    "wrap_gold",
    "answer_matches",
]

STATUSES = ("correct", "wrong", "no_answer", "unclosed", "refused", "timeout", "error")
# statuses that mean the grader, not the model, decided: each is logged where it happens
GRADER_TROUBLE = ("refused", "timeout", "error")

# the pre-check's limits: far above any benchmark answer, far below what makes sympy hang
MAX_BOX_CHARS = 2000
MAX_BRACE_DEPTH = 24
MAX_TOWER = 2  # a^{b^{c}} is the highest exponent tower an answer needs
MAX_EXPONENT = 100_000  # 2^{2024} is an answer; 9^{999999999} is a hang


@dataclass
class Verdict:
    """How one completion fared against its gold: ``status`` in ``STATUSES``, the extracted box."""

    status: str
    extracted: str | None = None
    detail: str = ""

    @property
    def score(self) -> float:
        return 1.0 if self.status == "correct" else 0.0

    def as_dict(self) -> dict:
        return {"status": self.status, "extracted": self.extracted, "detail": self.detail}


def grade_completion(
    completion: str,
    gold: str,
    choices: Sequence[str] | None = None,
    rule: dict | None = None,
    precheck: bool = True,
    strict: bool = False,
) -> Verdict:
    """Grade one completion in this process, without a time limit (workers call this)."""
    early = quick_verdict(completion, precheck, strict, rule)
    if early is not None:
        return early
    answer = normalize(final_answer(completion)[1])
    gold = normalize(str(gold))
    choices = [normalize(str(c)) for c in choices] if choices else None
    stated = _stated(answer, strict, (rule or {}).get("sentences", "any"))
    together = ", ".join(dict.fromkeys(stated.boxes))
    if len(set(stated.boxes)) > 1 and matches(together, gold, choices, rule):
        return Verdict("correct", together, "several values, boxed one by one")
    ok = matches(stated.final, gold, choices, rule)
    if strict and ok:
        for other in stated.others:
            if other != stated.final and not matches(other, gold, choices, rule):
                return Verdict("wrong", stated.final, f"also states {other[:80]!r}")
    return Verdict("correct" if ok else "wrong", stated.final)


def quick_verdict(
    completion: str, precheck: bool = True, strict: bool = False, rule: dict | None = None
) -> Verdict | None:
    """The verdict when no comparison is needed (``unclosed``, ``no_answer``, ``refused``), in
    microseconds; None when the answer must be compared with the gold."""
    status, answer = final_answer(completion)
    if status:
        return Verdict(status)
    found = boxes(answer)
    if not found and not strict:
        found = answer_sentences(normalize(answer), (rule or {}).get("sentences", "any"))[-1:]
    if not found:
        return Verdict("no_answer")
    for box in found if precheck else ():
        why = refusal(box)
        if why:
            return Verdict("refused", box[:200], why)
    return None


@dataclass
class _Stated:
    final: str  # the answer graded: the last box, else (evaluation) the last answer sentence
    boxes: list[str]
    others: list[str]  # (strict) every other answer the output states


def _stated(answer: str, strict: bool, kind: str) -> _Stated:
    found = boxes(answer)
    sentences = answer_sentences(answer, "any" if strict else kind)
    if found:
        others = found[:-1] + [s for s in sentences if _looks_like_an_answer(s)]
        return _Stated(found[-1], found, others if strict else [])
    return _Stated(sentences[-1], [], [])


def _looks_like_an_answer(sentence: str) -> bool:
    # "Answer: 5" or "the answer is (C)" states an answer; "the answer is the smallest n" does not
    bare = re.sub(r"\\[a-zA-Z]+|\$", " ", sentence)
    short = len(bare.split()) <= 3  # "Answer: not alpha" states a term
    return len(sentence) <= 60 and (short or not re.search(r"[a-zA-Z]{4,}", bare))


def refusal(box: str) -> str | None:
    """Why ``box`` is no answer worth handing to sympy (too long, too deeply nested, an exponent
    tower or a number too large to evaluate), or None. Linear in the box: microseconds."""
    if len(box) > MAX_BOX_CHARS:
        return f"box of {len(box)} characters (limit {MAX_BOX_CHARS})"
    depth = deepest = 0
    for ch in box:
        depth += (ch == "{") - (ch == "}")
        deepest = max(deepest, depth)
    if deepest > MAX_BRACE_DEPTH:
        return f"braces nested {deepest} deep (limit {MAX_BRACE_DEPTH})"
    tower = exponent_tower(box)
    if tower > MAX_TOWER:
        return f"exponent tower of height {tower} (limit {MAX_TOWER})"
    for base, exp in re.findall(r"(\d+)\s*\^\s*\{?\s*(\d{1,30})\b", box):
        if int(exp) > MAX_EXPONENT and int(base) > 1:
            return f"exponent {exp} (limit {MAX_EXPONENT})"
    for inner in re.findall(r"\^\s*\{?\s*(\d+)\s*\^\s*\{?\s*(\d+)", box):
        if int(inner[1]) * math.log10(max(int(inner[0]), 1)) > math.log10(MAX_EXPONENT):
            return f"exponent {inner[0]}^{inner[1]} (limit {MAX_EXPONENT})"
    if re.search(r"\d{7,}\s*!", box):
        return "factorial of a number over a million"
    return None


def exponent_tower(text: str) -> int:
    """Height of the highest exponent tower in ``text`` (``x^{y^{z}}`` is 2; ``**`` counts as ``^``)."""
    text = text.replace("**", "^")
    frames: list[bool] = []  # one per open brace: does it open an exponent?
    level = highest = chain = 0
    pending = False
    for ch in text:
        if ch == "^":
            pending, chain = True, chain + 1 if chain else 1
            continue
        if pending and ch.isspace():
            continue
        if ch == "{":
            frames.append(pending)
            level += pending
            highest = max(highest, level)
            chain = 0
        elif ch == "}":
            level -= frames.pop() if frames else 0
        elif pending:  # a bare exponent: x^2, or a chain x^y^z
            highest = max(highest, level + chain)
        if not (ch.isalnum() or ch in "^{"):
            chain = 0
        pending = False
    return highest


def answer_matches(completion: str, gold: str, think_in_prompt: bool = False) -> bool:
    """True when the completion's last ``\\boxed{}`` equals ``gold`` under math-verify.

    Only the answer part counts (a box inside the reasoning is not an answer); no box, or a trace
    never closed, is False. math-verify's own timeouts are off (they rely on ``signal.alarm``,
    which fails off the main thread): callers that face untrusted output run this in a worker
    process with a hard limit (``grading_pool.Grader``).
    """
    split = split_reasoning(completion, think_in_prompt)
    if split.had_reasoning and not split.closed:
        return False
    boxed = final_box(split.answer)
    return boxed is not None and math_equal(boxed, gold)


def grade_serial(
    completions: Sequence[str],
    golds: Sequence[str],
    choices: Sequence | None = None,
    rules: Sequence[dict | None] | None = None,
    precheck: bool = True,
    strict: bool = False,
) -> list[Verdict]:
    """Grade in this process, one after another, no time limit (for trusted input and benches)."""
    n = len(completions)
    choices = choices if choices is not None else [None] * n
    rules = rules if rules is not None else [None] * n
    return [
        grade_completion(c, g, o, r, precheck, strict)
        for c, g, o, r in zip(completions, golds, choices, rules, strict=True)
    ]


def count_statuses(verdicts: Sequence[Verdict]) -> dict[str, int]:
    """``{status: count}`` for every status in ``STATUSES`` (zeros included)."""
    counts = Counter(v.status for v in verdicts)
    return {s: counts.get(s, 0) for s in STATUSES}
