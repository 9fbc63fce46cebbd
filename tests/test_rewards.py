"""The shared answer grader and the reward registry, on a table of tricky cases."""

from __future__ import annotations

import time

import pytest

from ovr_core.grading import choice_letter, grade_completion, grade_serial
from ovr_core.grading_pool import Grader
from ovr_train.rl.rewards import REWARDS


def done(answer: str) -> str:
    return f"<think>\nLet me work it out.\n</think>\n\n{answer}"


# completion, gold, choices, expected status
CASES = [
    # equivalent forms
    (done("So \\boxed{\\frac{1}{2}}."), "0.5", None, "correct"),
    (done("\\boxed{\\sqrt{12}}"), "2\\sqrt{3}", None, "correct"),
    (done("\\boxed{1.5}"), "\\frac32", None, "correct"),
    (done("\\boxed{12}"), "12.0", None, "correct"),
    (done("\\boxed{x = 3}"), "3", None, "correct"),
    (done("\\boxed{13}"), "12", None, "wrong"),
    # bare-LaTeX gold: math-verify alone reads 2\sqrt{3} as 2 (the gold is wrapped in \boxed{})
    (done("\\boxed{2}"), "2\\sqrt{3}", None, "wrong"),
    # intervals and sets
    (done("\\boxed{(1, 2]}"), "(1,2]", None, "correct"),
    (done("\\boxed{[1, 2]}"), "(1,2]", None, "wrong"),
    (done("\\boxed{\\{1, 2\\}}"), "\\{2,1\\}", None, "correct"),
    (done("\\boxed{3, 1}"), "1,3", None, "correct"),
    # units and percent
    (done("\\boxed{5\\text{ cm}}"), "5", None, "correct"),
    (done("\\boxed{50\\%}"), "50", None, "correct"),
    (done("\\boxed{50\\%}"), "0.5", None, "correct"),
    # no box (evaluation reads the answer sentence), two boxes, a box only in the reasoning,
    # truncated output
    (done("The answer is 7."), "7", None, "correct"),
    (done("Seven, I think."), "7", None, "no_answer"),
    (done("\\boxed{7} or maybe \\boxed{8}"), "7", None, "wrong"),
    (done("\\boxed{7}, that is \\boxed{7.0}"), "7", None, "correct"),
    ("<think>\nit is \\boxed{7}\n</think>\n\nSeven.", "7", None, "no_answer"),
    ("<think>\nLet me think about 3 + 4 and", "7", None, "unclosed"),
    (done("So \\boxed{7"), "7", None, "no_answer"),
    ("\\boxed{7}", "7", None, "correct"),  # no reasoning at all: the answer still counts
    # multiple choice: letter, letter with text, the option's text, a wrong letter
    (done("\\boxed{B}"), "B", ["10", "12", "14"], "correct"),
    (done("\\boxed{(B) 12}"), "B", ["10", "12", "14"], "correct"),
    (done("\\boxed{12}"), "B", ["10", "12", "14"], "correct"),
    (done("\\boxed{\\text{B}}"), "B", ["10", "12", "14"], "correct"),
    (done("\\boxed{C}"), "B", ["10", "12", "14"], "wrong"),
    (done("\\boxed{D}"), "B", ["10", "12", "14"], "wrong"),
]


# the same output graded for evaluation and for the RL reward (strict): completion, gold, choices,
# (evaluation status, RL status). Strict closes what pays for hedging: an answer sentence alone,
# two different answers stated; both modes refuse an answer that names two on its own.
STRICTNESS = [
    (done("The answer is 7."), "7", None, ("correct", "no_answer")),
    (done("Answer: 7"), "7", None, ("correct", "no_answer")),
    (done("\\boxed{7} or maybe \\boxed{8}"), "8", None, ("correct", "wrong")),
    (done("\\boxed{8}\n\nAnswer: 7"), "8", None, ("correct", "wrong")),
    (done("\\boxed{8}\n\nAnswer: 8"), "8", None, ("correct", "correct")),
    (done("\\boxed{7}, that is \\boxed{7.0}"), "7", None, ("correct", "correct")),
    (done("x = \\boxed{-2} and x = \\boxed{5}"), "-2, 5", None, ("correct", "correct")),
    (done("\\boxed{(B) 14}"), "B", ["10", "12", "14"], ("wrong", "wrong")),
    (done("\\boxed{B} since 14"), "B", ["10", "12", "14"], ("correct", "correct")),
    (done("\\boxed{3 \\text{ million}}"), "3", None, ("wrong", "wrong")),
    (done("\\boxed{5k}"), "5", None, ("wrong", "wrong")),
    (done("\\boxed{5k}"), "5000", None, ("correct", "correct")),
    (done("The answer is \\boxed{12}, the smallest such n."), "12", None, ("correct", "correct")),
]


@pytest.mark.parametrize(("completion", "gold", "choices", "statuses"), STRICTNESS)
def test_evaluation_and_the_rl_reward_differ_only_where_leniency_pays(
    completion, gold, choices, statuses
):
    got = tuple(grade_completion(completion, gold, choices, strict=s).status for s in (0, 1))
    assert got == statuses
    reward = REWARDS["accuracy"]([completion], answer=[gold], choices=[choices])
    assert reward == [float(statuses[1] == "correct")]  # the reward is the strict grader


@pytest.mark.parametrize(("completion", "gold", "choices", "status"), CASES)
def test_grade_completion_verdicts(completion, gold, choices, status):
    assert grade_completion(completion, gold, choices).status == status


def test_pooled_grader_gives_the_serial_verdicts_in_order():
    completions, golds, choices, expected = zip(*CASES, strict=True)
    with Grader(workers=2, timeout=10) as grader:
        pooled = grader.grade_many(completions, golds, choices)
    assert [v.status for v in pooled] == list(expected)
    assert pooled == grade_serial(completions, golds, choices)


def test_pathological_answer_is_killed_at_the_hard_limit_and_the_pool_goes_on():
    # sympy evaluates this tower for minutes; math-verify's own timeout is off (signal-based).
    # The pre-check refuses it at once (test_grading_limits.py); with the pre-check off, the
    # hard limit is what stops it: the guard for whatever the pre-check lets through.
    bomb = done("\\boxed{9^{9^{9^{9^{9}}}}}")
    with Grader(workers=1, timeout=1.5, precheck=False) as grader:
        grader.grade_many([done("\\boxed{1}")], ["1"])  # the worker's start-up is not timed
        start = time.monotonic()
        verdicts = grader.grade_many([bomb, done("\\boxed{4}")], ["3", "4"])
        elapsed = time.monotonic() - start
        assert [v.status for v in verdicts] == ["timeout", "correct"]
        # the limit, then a replacement worker's start-up (its own clock starts once it is
        # ready, so a loaded machine cannot time out the next sample): seconds, not sympy's minutes
        assert elapsed < 1.5 + 10.0, elapsed
        assert grader.timeouts == 1
        assert grader.grade_many([done("\\boxed{5}")], ["5"])[0].status == "correct"


def test_rewards_registry_names_and_values():
    assert {"accuracy", "format"} <= set(REWARDS)
    completions = [
        done("\\boxed{7}"),
        done("\\boxed{8}"),
        "\\boxed{7}",
        done("\\boxed{7} \\boxed{7}"),
    ]
    assert REWARDS["accuracy"](completions, answer=["7"] * 4) == [1.0, 0.0, 1.0, 1.0]
    assert REWARDS["format"](completions) == [1.0, 1.0, 0.0, 0.0]
    for func in REWARDS.values():
        assert "1.0" in (func.__doc__ or ""), f"{func.__name__} must say what earns 1.0"


def test_accuracy_reward_uses_the_choices_column():
    out = REWARDS["accuracy"](
        [done("\\boxed{A}"), done("\\boxed{14}")],
        answer=["A", "B"],
        choices=[["1", "2"], ["13", "14"]],
    )
    assert out == [1.0, 1.0]


def test_choice_letter_reads_letters_and_option_texts():
    options = ["$\\frac{1}{2}$", "3", "4"]
    assert choice_letter("A", options) == "A"
    assert choice_letter("(C)", options) == "C"
    assert choice_letter("0.5", options) == "A"
    assert choice_letter("Z", options) is None
    assert choice_letter("7", options) is None
