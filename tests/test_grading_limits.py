"""The grader's pre-check and its status counts: pathological answers refused in microseconds,
before any worker; every status counted and every grader problem logged, per eval call and per
RL reward call (never a silent 0)."""

from __future__ import annotations

import logging
import time

import pytest

from ovr_core.grading import (
    STATUSES,
    count_statuses,
    exponent_tower,
    grade_completion,
    quick_verdict,
    refusal,
)
from ovr_core.grading_pool import Grader
from ovr_train.rl import rewards


def done(answer: str) -> str:
    return f"<think>\nok\n</think>\n\n{answer}"


BOMBS = [
    "9^{9^{9^{9^{9}}}}",  # a tower: sympy runs for minutes
    "9^{9^{9}}",  # two levels, but 9^9 is a 387-million-digit exponent
    "2^{999999999}",
    "1" + "0" * 60_000,  # a 60k-character box
    "{" * 3000 + "1" + "}" * 3000,  # thousands of nested braces
    "x^{y^{z^{w}}}",
    "12345678!",
]
FINE = ["2^{2024}", "2^{2^{2}}", "e^{i\\pi}", "10^{-3}", "\\frac{1}{2}", "x^2+y^2", "(1, 2]", "5!"]


@pytest.mark.parametrize("box", BOMBS)
def test_pathological_boxes_are_refused(box):
    assert refusal(box)
    assert grade_completion(done(f"\\boxed{{{box}}}"), "3").status == "refused"


@pytest.mark.parametrize("box", FINE)
def test_answers_an_answer_needs_pass(box):
    assert refusal(box) is None


def test_exponent_tower_height():
    assert [exponent_tower(t) for t in ("x", "x^2", "x^{y^z}", "9^9^9", "a**b**c**d")] == [
        0,
        1,
        2,
        2,
        3,
    ]


def test_the_pre_check_takes_microseconds_and_no_worker():
    completions = [done(f"\\boxed{{{b}}}") for b in BOMBS] * 20
    start = time.perf_counter()
    verdicts = [quick_verdict(c) for c in completions]
    per_answer = (time.perf_counter() - start) / len(completions)
    assert {v.status for v in verdicts} == {"refused"}
    # generous bound: ~100 µs for a 60k box on a quiet machine, ~3 ms at a load average of 15
    assert per_answer < 0.05, per_answer
    grader = Grader(workers=1, timeout=1.0)
    try:
        out = grader.grade_many(completions, ["3"] * len(completions))
        assert {v.status for v in out} == {"refused"}
        assert grader._pool == [], "refusals never start a worker"
        assert grader.counts["refused"] == len(completions)
    finally:
        grader.close()


def test_every_status_is_counted_and_grader_errors_are_logged(caplog):
    completions = [
        done("\\boxed{4}"),
        done("\\boxed{5}"),
        done("four"),
        "<think>cut off",
        done("\\boxed{9^{9^{9^{9}}}}"),
        done("\\boxed{4}"),  # its rule does not exist: the worker reports an error
    ]
    rules = [None] * 5 + [{"name": "no-such-rule"}]
    with caplog.at_level(logging.WARNING, logger="ovr_core.grading"):
        with Grader(workers=1, timeout=10) as grader:
            verdicts = grader.grade_many(completions, ["4"] * 6, None, rules)
    assert [v.status for v in verdicts] == [
        "correct",
        "wrong",
        "no_answer",
        "unclosed",
        "refused",
        "error",
    ]
    assert "unknown grading rule" in verdicts[5].detail
    counts = count_statuses(verdicts)
    assert set(counts) == set(STATUSES) and counts["error"] == 1 and counts["timeout"] == 0
    assert grader.counts == {s: n for s, n in counts.items() if n}
    logged = caplog.text
    assert "refused" in logged and "error" in logged and "unknown grading rule" in logged


def test_the_rl_reward_counts_logs_and_reports_statuses_per_call(caplog):
    metrics: dict[str, float] = {}
    before = rewards.STATUS_COUNTS.copy()
    with caplog.at_level(logging.INFO, logger="ovr_train.rl.rewards"):
        out = rewards.REWARDS["accuracy"](
            [done("\\boxed{4}"), done("\\boxed{9^{9^{9^{9}}}}"), done("nothing")],
            answer=["4", "4", "4"],
            log_metric=lambda name, value: metrics.__setitem__(name, value),
        )
    assert out == [1.0, 0.0, 0.0]
    assert rewards.accuracy.last_statuses["refused"] == 1
    assert rewards.STATUS_COUNTS["refused"] - before["refused"] == 1
    # TRL's log_metric: the share of each status in this step's samples, every status every call
    assert set(metrics) == {f"grader/{s}" for s in STATUSES}
    assert metrics["grader/correct"] == pytest.approx(1 / 3)
    assert metrics["grader/refused"] == pytest.approx(1 / 3)
    assert "grader statuses correct 1, no_answer 1, refused 1" in caplog.text
