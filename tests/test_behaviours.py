"""The rule-based behaviour detector (ovr_core.behaviours) on hand-written traces with known labels,
the rates and transfer ratios built on it, and the LLM judge's count parsing."""

from __future__ import annotations

import pytest

from ovr_core.behaviours import (
    BEHAVIOURS,
    TRANSFER_PAIRS,
    Span,
    count_behaviours,
    emergence_rates,
    find_behaviours,
    highlight,
    transfer_ratios,
)
from ovr_eval.behaviours import parse_count

# (behaviour, text that shows it): each must be found
POSITIVE = [
    ("backtracking", "So x = 4. Wait, I forgot the minus sign."),
    ("backtracking", "Hmm, wait a second, the radius is 3 not 6."),
    ("backtracking", "Hold on, 7 * 8 is 56."),
    ("backtracking", "That's not right, the sum should be even."),
    ("backtracking", "I made a mistake in the second line."),
    ("backtracking", "Let me reconsider the second case."),
    ("backtracking", "Alternatively, let's use the quadratic formula."),
    ("verification", "Let me double-check: 12 * 12 = 144."),
    ("verification", "To verify, substitute x = 2 back into the equation."),
    ("verification", "Plugging it back gives 9 = 9, so that checks out."),
    ("verification", "A quick sanity check: the area must be positive."),
    ("subgoal_setting", "Step 1: find the radius. Step 2: compute the area."),
    ("subgoal_setting", "First, we compute the perimeter."),
    ("subgoal_setting", "Let's break the problem down into two cases."),
    ("subgoal_setting", "Let me start by listing the divisors."),
    ("backward_chaining", "Working backwards from the answer options, 12 fits."),
    ("backward_chaining", "To find the area, we need the height first."),
    ("backward_chaining", "What do we need to know to get the angle?"),
    ("visual_reflection", "Let me look at the image again: there is a fourth circle."),
    ("visual_reflection", "Looking more carefully at the figure, the line is dashed."),
    ("visual_reflection", "On closer inspection of the diagram, AB is not parallel to CD."),
    ("visual_reflection", "Re-examining the chart, the third bar is 40."),
    ("visual_verification", "Check this against the figure: both angles look equal."),
    ("visual_verification", "Three triangles, which matches the image."),
    ("visual_verification", "The diagram confirms that the point lies on the circle."),
    ("visual_divide_and_conquer", "In the left half of the image there are 3 dots."),
    ("visual_divide_and_conquer", "Each bar is read separately: 4, 7, 2."),
    ("visual_divide_and_conquer", "Split the figure into two rectangles."),
    ("visual_divide_and_conquer", "Counting region by region gives 2 + 3 + 1."),
    ("goal_driven_visual_tracing", "Tracing the curve from x = 0, it peaks at x = 2."),
    ("goal_driven_visual_tracing", "Following each arrow from A leads to D."),
    ("goal_driven_visual_tracing", "Looking for the red triangle in the image, it is at the top."),
    ("goal_driven_visual_tracing", "Find the point where the two lines cross on the graph."),
]

# (behaviour, near-miss text that must NOT count as it): words a problem statement or plain algebra
# uses, or the same word in another sense
NEGATIVE = [
    ("backtracking", "We await the result of the second step."),
    ("backtracking", "The waiting room has 12 chairs."),
    ("backtracking", "How long must she wait?"),  # the verb of the problem, not an interjection
    ("backtracking", "They hold on to the rope for 3 seconds."),
    ("verification", "She checks out 3 books from the library."),
    ("verification", "Let me compute the sum of the digits."),
    ("subgoal_setting", "At first, I thought the answer was 4."),  # a first impression, no plan
    ("subgoal_setting", "The first term is 3 and the steps are equal."),
    ("backward_chaining", "The car moves backwards for 2 seconds."),
    ("backward_chaining", "The race starts from the end of the street."),
    ("visual_reflection", "Looking at the image, there are 3 circles."),  # a first look
    ("visual_reflection", "The image shows again the same triangle."),
    ("visual_verification", "As shown in the figure, AB = 3 and BC = 4."),  # problem preamble
    ("visual_verification", "Let me verify the arithmetic: 3 + 4 = 7."),
    ("visual_divide_and_conquer", "The right side of the equation is 12."),
    ("visual_divide_and_conquer", "Move everything to the left-hand side."),
    ("visual_divide_and_conquer", "The pole lies in the upper half-plane."),
    ("visual_divide_and_conquer", "Add each row of the matrix."),
    ("visual_divide_and_conquer", "Check the cases one by one."),
    ("goal_driven_visual_tracing", "Following this line of reasoning, x = 2."),
    ("goal_driven_visual_tracing", "Find the point where f(x) = 0."),  # algebra, no drawing
    ("goal_driven_visual_tracing", "The trace of the matrix is 5."),
]


def test_every_behaviour_has_positive_and_negative_examples():
    assert {b for b, _ in POSITIVE} == set(BEHAVIOURS) == {b for b, _ in NEGATIVE}


@pytest.mark.parametrize(("behaviour", "text"), POSITIVE)
def test_detector_finds_the_behaviour_it_is_shown(behaviour, text):
    found = [s for s in find_behaviours(text) if s.behaviour == behaviour]
    assert found, f"{behaviour} not found in {text!r}"
    for s in found:
        assert text[s.start : s.end] == s.text


@pytest.mark.parametrize(("behaviour", "text"), NEGATIVE)
def test_detector_ignores_near_miss_phrasings(behaviour, text):
    assert count_behaviours(text)[behaviour] == 0, find_behaviours(text)


def test_plain_solution_shows_no_behaviour():
    text = "The rectangle is 3 by 4, so its area is 3 * 4 = 12. The answer is \\boxed{12}."
    assert count_behaviours(text) == dict.fromkeys(BEHAVIOURS, 0)


def test_counts_are_per_occurrence_and_overlaps_within_a_behaviour_merge():
    text = "Wait, 3 + 4 = 8? Wait, that's wrong. Let me double-check: 3 + 4 = 7."
    spans = find_behaviours(text)
    back = [s.text for s in spans if s.behaviour == "backtracking"]
    assert back == ["Wait,", "Wait,", "that's wrong"]  # "Wait" and "wait," merged into one span
    counts = count_behaviours(text)
    assert counts["backtracking"] == 3 and counts["verification"] == 1
    assert [s.start for s in spans] == sorted(s.start for s in spans)


def test_emergence_rate_is_the_share_of_traces_showing_it_at_least_once():
    traces = [
        "Wait, wait, wait, no.",  # many times in one trace still counts once
        "Let me verify: yes.",
        "The answer is 3.",
        "Hold on, let me look at the image again.",
    ]
    rates = emergence_rates(traces)
    assert rates["backtracking"] == 0.5
    assert rates["verification"] == 0.25
    assert rates["visual_reflection"] == 0.25
    assert rates["subgoal_setting"] == 0.0
    # count dicts (the judge's) give the same rates as the texts they came from
    assert emergence_rates([count_behaviours(t) for t in traces]) == rates


def test_emergence_rate_leaves_out_unreadable_judgments():
    counts = [
        {**dict.fromkeys(BEHAVIOURS, 0), "backtracking": 2},
        {**dict.fromkeys(BEHAVIOURS, 0), "backtracking": None},
        {**dict.fromkeys(BEHAVIOURS, None), "verification": 1},
    ]
    rates = emergence_rates(counts)
    assert rates["backtracking"] == 1.0  # one readable trace of the three, and it shows it
    assert rates["verification"] == pytest.approx(1 / 3)
    assert rates["subgoal_setting"] == 0.0  # two readable traces, neither shows it
    assert emergence_rates([dict.fromkeys(BEHAVIOURS, None)])["backtracking"] is None
    assert emergence_rates([]) == dict.fromkeys(BEHAVIOURS, None)


def test_transfer_ratio_is_visual_over_linguistic_and_none_when_linguistic_is_zero():
    rates = dict.fromkeys(BEHAVIOURS, 0.0)
    rates.update(
        backtracking=0.5, visual_reflection=0.25, verification=0.4, visual_verification=0.4
    )
    rates["goal_driven_visual_tracing"] = 0.3  # backward chaining stays 0
    ratios = transfer_ratios(rates)
    assert set(ratios) == set(TRANSFER_PAIRS)
    assert ratios["visual_reflection"] == 0.5
    assert ratios["visual_verification"] == 1.0
    assert ratios["visual_divide_and_conquer"] is None  # subgoal setting 0.0
    assert ratios["goal_driven_visual_tracing"] is None
    assert transfer_ratios({**rates, "visual_reflection": None})["visual_reflection"] is None


def test_highlight_marks_each_span_and_keeps_the_rest():
    text = "So 5. Wait, let me verify it against the figure."
    marked = highlight(text, find_behaviours(text))
    assert marked.startswith("So 5. [backtracking: Wait,] ")
    assert "[verification: let me verify]" in marked
    plain = highlight(text, find_behaviours(text), "{text}")
    assert plain == text
    html = highlight(text, [Span("backtracking", 6, 11, "Wait,")], "<mark>{text}</mark>")
    assert html == "So 5. <mark>Wait,</mark> let me verify it against the figure."


def test_highlight_skips_a_span_that_overlaps_an_earlier_one():
    text = "abcdefgh"
    spans = [Span("verification", 2, 6, "cdef"), Span("backtracking", 4, 8, "efgh")]
    assert highlight(text, spans, "<{text}>") == "ab<cdef>gh"


@pytest.mark.parametrize(
    ("answer", "count"),
    [
        ("<count>3</count>", 3),
        ("<count> 0 </count>", 0),
        ("The trace backtracks twice. <count>2</count>", 2),
        ("<count>1</count> ... on reflection <count>4</count>", 4),  # the last one counts
        ("<COUNT>5</COUNT>", 5),
        ("", None),
        ("3", None),  # a bare number is not the asked format
        ("<count>three</count>", None),
        ("<count>2", None),
        ("<count>-1</count>", None),
    ],
)
def test_parse_count_reads_the_judges_count_or_none(answer, count):
    assert parse_count(answer) == count
