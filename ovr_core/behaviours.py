"""The cognitive behaviours the OVR paper tracks, found in a reasoning trace by rules (pure Python).

Linguistic behaviours (Gandhi et al., "Cognitive Behaviors that Enable Self-Improving Reasoners"):
backtracking, verification, subgoal setting, backward chaining. Their visual counterparts studied by
the paper: visual reflection, visual verification, visual divide-and-conquer, goal-driven visual
tracing. Each behaviour is a list of phrase patterns; ``find_behaviours`` returns the matched spans
(for highlighting in the web UI and the eval report) and ``emergence_rates`` the share of traces
that show each behaviour at least once, as the paper reports them. The transfer ratio of a pair is
the visual behaviour's rate over its linguistic counterpart's (our definition of the paper's
"visual transfer": how much of a linguistic habit reappears as a visual one).

The rules are a fast proxy: cheap enough for every trace and every RL step; the LLM-judge mode of
``ovr-eval behaviours --judge-endpoint`` is the slower, closer-to-the-paper measurement. They lean
toward precision: a phrase that a problem statement or plain algebra also uses does not count
("how long must she wait?", "hold on to the rope", "at first, I thought", "as shown in the figure",
"the right side of the equation", "each row of the matrix", "this line of reasoning"); "wait"
counts as an interjection ("Wait", "wait,", "wait a second"), never inside "await" or "waiting".
``tests/test_behaviours.py`` holds the labelled examples each pattern must (not) match.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

_IMG = r"(?:image|figure|diagram|graph|chart|picture|plot|table|illustration|drawing)"


@dataclass(frozen=True)
class Behaviour:
    """A named behaviour: ``kind`` is "linguistic" or "visual"; ``patterns`` are regexes."""

    name: str
    kind: str
    description: str
    patterns: tuple[str, ...]


BEHAVIOURS: dict[str, Behaviour] = {
    b.name: b
    for b in [
        Behaviour(
            "backtracking",
            "linguistic",
            "abandons a line of reasoning that failed and tries another",
            (
                # "wait" as an interjection only, not the verb of a problem ("how long must she wait?")
                r"(?-i:\bWait\b)",
                r"\bwait(?:,|!|\.\.\.|\s*—|\s+a\s+(?:second|moment|minute)\b)",
                r"\bhold on(?:,|!|\.\.\.|\s*—|\s+a\s+(?:second|moment|minute)\b)",
                r"\bon second thought\b",
                r"\bthat(?:'s| is) (?:not right|wrong|incorrect)\b",
                r"\bthat (?:doesn't|does not|can't|cannot) be right\b",
                r"\bi (?:made a mistake|was wrong|miscalculated)\b",
                r"\blet me (?:re-?think|reconsider|try (?:again|another)|start over|redo)\b",
                r"\b(?:alternatively|instead), let(?:'s| me)\b",
            ),
        ),
        Behaviour(
            "verification",
            "linguistic",
            "checks an intermediate or final result",
            (
                r"\blet me (?:double-?check|verify|check)\b",
                r"\bdouble-?check(?:ing)?\b",
                r"\bre-?check(?:s|ed|ing)?\b",
                r"\bverif(?:y|ying|ied|ication)\b",
                r"\bsanity check\b",
                r"\b(?:plug(?:ging)?|substitut(?:e|ing)) (?:it |this |that |\w+ )?back\b",
                r"\b(?:that|this|it|which|everything|all|answer|result) checks out\b",
                r"\bto confirm\b",
            ),
        ),
        Behaviour(
            "subgoal_setting",
            "linguistic",
            "breaks the problem into intermediate goals",
            (
                r"\bstep \d+\b",
                r"(?<!\bat )\bfirst(?:ly)?, (?:we|i|let(?:'s| me))\b",  # not "at first, I thought"
                r"\bnext, (?:we|i|let(?:'s| me))\b",
                r"\b(?:then|finally), (?:we|i) (?:need|can|have|will)\b",
                r"\bbreak (?:this|it|the problem) (?:down|into)\b",
                r"\blet(?:'s| me) (?:start|begin) (?:by|with)\b",
                r"\bto (?:solve|find|answer) this, (?:we|i)\b",
            ),
        ),
        Behaviour(
            "backward_chaining",
            "linguistic",
            "reasons from the goal back to what is needed",
            (
                r"\bwork(?:ing)? backwards?\b",
                r"\bstart(?:ing)? from the (?:answer|goal|end|result|options)\b",
                r"\bwhat (?:do|would) (?:we|i) need\b",
                r"\bin order to (?:find|get|determine|compute)\b",
                r"\bto (?:find|get|determine) \w+(?: \w+)?, (?:we|i) (?:need|must|have to)\b",
            ),
        ),
        Behaviour(
            "visual_reflection",
            "visual",
            "goes back to the image to reconsider what it shows",
            (
                rf"\b(?:let me|let's|i(?:'ll| will| should)?) (?:look|check|glance|re-?examine|revisit|re-?read|see) (?:at |back at )?(?:the )?{_IMG}s? again\b",
                rf"\blook(?:ing)? (?:again|back|more carefully|closer) at the {_IMG}\b",
                rf"\bre-?(?:examin|inspect|check)(?:e|ing) the {_IMG}\b",
                rf"\bon (?:a )?closer (?:look|inspection)(?: (?:of|at) the {_IMG})?\b",
                rf"\bwait,? (?:in|looking at) the {_IMG}\b",
            ),
        ),
        Behaviour(
            "visual_verification",
            "visual",
            "checks a result against what the image shows",
            (
                rf"\b(?:confirm|verify|check|cross-?check)(?:s|ed|ing)? (?:this |it |that )?(?:with|against|in|using|from) the {_IMG}\b",
                # not "as shown in the figure": problem statements open with it
                rf"\b(?:matches|consistent with|agrees with) (?:what is shown in )?the {_IMG}\b",
                rf"\bthe {_IMG} (?:confirms|agrees|is consistent)\b",
            ),
        ),
        Behaviour(
            "visual_divide_and_conquer",
            "visual",
            "splits the image into parts and handles each",
            (
                # not "the right side of the equation", "the upper half-plane", "the left-hand side"
                r"\b(?:left|right|top|bottom|upper|lower)(?:-| )?(?:half|part|side|portion|corner|region|panel)\b"
                r"(?!-?plane| of (?:the |this |that |each |both )?(?:equation|inequality|expression|identity|equals|formula))",
                r"\beach (?:bar|region|shape|segment|quadrant|panel|subplot|piece|sector|slice)\b",
                rf"\b(?:divide|split|break|partition|decompose) the (?:{_IMG}|shape|region|figure) into\b",
                r"\b(region|part|shape|piece|section|panel) by \1\b",
                r"\bone (?:region|part|shape|piece|section|panel) at a time\b",
            ),
        ),
        Behaviour(
            "goal_driven_visual_tracing",
            "visual",
            "follows lines, paths or marks in the image toward what the question asks",
            (
                r"\b(?:trac|follow)(?:e|es|ed|ing)? (?:the|this|that|each) (?:line|curve|path|edge|arrow|graph|boundary|route)\b"
                r"(?! of (?:reasoning|thought|argument|logic))",
                rf"\b(?:look|looking|search|searching|scan|scanning) for (?:the|a|an) [\w-]+(?: [\w-]+)? (?:in|on) the {_IMG}\b",
                rf"\blocat(?:e|ing) (?:the|a|an) [\w-]+(?: [\w-]+)? (?:in|on) the {_IMG}\b",
                # on a drawn graph only: "find the point where f(x) = 0" alone is plain algebra
                rf"\bfind(?:ing)? the (?:point|place|spot) where [^.\n]{{0,60}}?\b(?:in|on) the {_IMG}\b",
            ),
        ),
    ]
}

# each visual behaviour and the linguistic one it transfers from
TRANSFER_PAIRS = {
    "visual_reflection": "backtracking",
    "visual_verification": "verification",
    "visual_divide_and_conquer": "subgoal_setting",
    "goal_driven_visual_tracing": "backward_chaining",
}

_COMPILED = {
    name: [re.compile(p, re.IGNORECASE) for p in b.patterns] for name, b in BEHAVIOURS.items()
}


@dataclass(frozen=True)
class Span:
    """Where a behaviour shows in a trace: ``text[start:end]``."""

    behaviour: str
    start: int
    end: int
    text: str


def find_behaviours(text: str) -> list[Span]:
    """Every behaviour match in ``text``, ordered by position; overlaps within a behaviour merged."""
    spans = []
    for name, patterns in _COMPILED.items():
        found = sorted((m.start(), m.end()) for p in patterns for m in p.finditer(text))
        merged: list[list[int]] = []
        for s, e in found:
            if merged and s <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], e)
            else:
                merged.append([s, e])
        spans += [Span(name, s, e, text[s:e]) for s, e in merged]
    return sorted(spans, key=lambda s: (s.start, s.behaviour))


def count_behaviours(text: str) -> dict[str, int]:
    """How many times each behaviour shows in ``text`` (every behaviour named, zeros included)."""
    counts = dict.fromkeys(BEHAVIOURS, 0)
    for span in find_behaviours(text):
        counts[span.behaviour] += 1
    return counts


def emergence_rates(
    traces: Iterable[str] | Iterable[dict[str, int | None]],
) -> dict[str, float | None]:
    """Share of traces (texts, or count dicts) that show each behaviour at least once.

    A count of ``None`` (an LLM judge whose answer could not be read) leaves that trace out of
    that behaviour's rate; a behaviour with no readable count at all has rate ``None``.
    """
    seen, hits = dict.fromkeys(BEHAVIOURS, 0), dict.fromkeys(BEHAVIOURS, 0)
    for trace in traces:
        counts = count_behaviours(trace) if isinstance(trace, str) else trace
        for name in hits:
            count = counts.get(name, 0)
            if count is None:
                continue
            seen[name] += 1
            hits[name] += count > 0
    return {name: (hits[name] / seen[name] if seen[name] else None) for name in hits}


def transfer_ratios(rates: dict[str, float | None]) -> dict[str, float | None]:
    """Visual rate over its linguistic counterpart's, per pair (None when either is unknown or
    the linguistic rate is zero)."""
    return {
        visual: (
            rates[visual] / rates[ling]
            if rates.get(ling) and rates.get(visual) is not None
            else None
        )
        for visual, ling in TRANSFER_PAIRS.items()
    }


def highlight(text: str, spans: list[Span], template: str = "[{behaviour}: {text}]") -> str:
    """``text`` with each span rewritten by ``template`` (e.g. rich markup or HTML marks)."""
    out, pos = [], 0
    for span in sorted(spans, key=lambda s: s.start):
        if span.start < pos:  # overlaps an earlier span of another behaviour: leave it
            continue
        out += [text[pos : span.start], template.format(behaviour=span.behaviour, text=span.text)]
        pos = span.end
    out.append(text[pos:])
    return "".join(out)
