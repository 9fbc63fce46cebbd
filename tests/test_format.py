"""The OVR output format: splitting, streaming, boxed answers, answer checking."""

from __future__ import annotations

import random

import pytest

from ovr_core.format import (
    ReasoningStream,
    boxed_contents,
    extract_boxed,
    format_completion,
    is_well_formed,
    split_reasoning,
)
from ovr_core.grading import wrap_gold

# text, think_in_prompt, expected (reasoning, answer, closed, had_reasoning)
SPLIT_CASES = [
    ("<think>a</think>b", False, ("a", "b", True, True)),
    (
        "<think>\nstep\n</think>\n\nThe answer is \\boxed{7}.",
        False,
        ("\nstep\n", "The answer is \\boxed{7}.", True, True),
    ),
    ("  <think>x</think>  y", False, ("x", "y", True, True)),
    ("plain answer \\boxed{3}", False, ("", "plain answer \\boxed{3}", False, False)),
    ("<think>cut off before the end", False, ("cut off before the end", "", False, True)),
    ("<think>ends in a partial tag </thi", False, ("ends in a partial tag </thi", "", False, True)),
    ("<thi", False, ("", "<thi", False, False)),
    ("<think></think>", False, ("", "", True, True)),
    ("<think>r</think>", False, ("r", "", True, True)),
    ("<think>a</think>b</think>c", False, ("a", "b</think>c", True, True)),
    ("opened in the prompt</think>answer", True, ("opened in the prompt", "answer", True, True)),
    (
        "opened in the prompt, never closed",
        True,
        ("opened in the prompt, never closed", "", False, True),
    ),
    ("", False, ("", "", False, False)),
    ("\n\n", False, ("", "", False, False)),
    ("<think>a < b and c </ d</think>ok", False, ("a < b and c </ d", "ok", True, True)),
]


@pytest.mark.parametrize("text,think_in_prompt,expected", SPLIT_CASES)
def test_split_reasoning_table(text, think_in_prompt, expected):
    split = split_reasoning(text, think_in_prompt)
    assert (split.reasoning, split.answer, split.closed, split.had_reasoning) == expected


@pytest.mark.parametrize("text,think_in_prompt,expected", SPLIT_CASES)
def test_stream_gives_the_same_split_for_any_chunking(text, think_in_prompt, expected):
    rng = random.Random(len(text))
    chunkings = [[c for c in text]]  # char by char, like one token each
    for _ in range(20):
        cuts = sorted(rng.sample(range(len(text) + 1), k=min(len(text), rng.randint(0, 5))))
        chunkings.append([text[a:b] for a, b in zip([0] + cuts, cuts + [len(text)], strict=True)])
    for chunks in chunkings:
        stream = ReasoningStream(think_in_prompt)
        reasoning = answer = ""
        for chunk in chunks:
            delta = stream.feed(chunk)
            reasoning += delta.reasoning
            answer += delta.answer
        last = stream.finish()
        reasoning += last.reasoning
        answer += last.answer
        assert (reasoning, answer) == expected[:2], chunks


def test_stream_holds_back_a_partial_closing_tag_until_decided():
    stream = ReasoningStream()
    assert stream.feed("<think>abc</th").reasoning == "abc"
    delta = stream.feed("ink>The answer")
    assert (delta.reasoning, delta.answer) == ("", "The answer")
    assert stream.closed and stream.answer_started


def test_boxed_extraction_balances_braces_and_takes_the_last():
    text = "first \\boxed{1} then \\boxed{\\frac{1}{2}} and \\boxed {x^{2}}"
    assert boxed_contents(text) == ["1", "\\frac{1}{2}", "x^{2}"]
    assert extract_boxed(text) == "x^{2}"
    assert extract_boxed("no box here") is None
    assert extract_boxed("cut \\boxed{\\frac{1}{2") is None
    assert extract_boxed("\\boxed") is None


def test_well_formed_needs_closed_trace_and_one_box():
    assert is_well_formed(format_completion("think", "so \\boxed{2}"))
    assert not is_well_formed("<think>t</think> \\boxed{1} \\boxed{2}")
    assert not is_well_formed("<think>t</think> no box")
    assert not is_well_formed("<think>t \\boxed{1}")
    assert not is_well_formed("\\boxed{1}")
    assert not is_well_formed("<think></think>\\boxed{1}")


def test_wrap_gold_boxes_bare_latex_once():
    assert wrap_gold("2\\sqrt{3}") == "$\\boxed{2\\sqrt{3}}$"
    assert wrap_gold("\\boxed{5}") == "\\boxed{5}"
    assert wrap_gold("$x$") == "$x$"
