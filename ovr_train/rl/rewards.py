"""Reward functions for RL: small pure functions ``(completions, **columns) -> list[float]``.

Registered by name in ``REWARDS``; a recipe picks and weights them (``rewards: [accuracy, format]``).
The accuracy reward is the eval grader itself (``ovr_core.grading``, strict: a box is required and
an output stating two different answers earns 0, where evaluation follows each official scorer's
more lenient extraction chain): one rule for what is right,
the same final-answer extraction (last box, ``\\fbox``, the answer after a template-opened
``</think>``), options read through the row's ``choices`` column, a benchmark rule through its
``rule`` column when the data has one.

Grader statuses are never lost in a 0.0: every call counts them (``STATUS_COUNTS``, cumulative;
``accuracy.last_statuses``, this call), logs a line per call (a warning when any sample was
refused, timed out or errored), and hands them to TRL's per-step metrics as
``grader/<status>`` (the share of the step's samples) through the ``log_metric`` callback TRL
passes to reward functions, so the training log shows them per step beside the rewards.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable

from ovr_core.format import is_well_formed
from ovr_core.grading import GRADER_TROUBLE, STATUSES, count_statuses
from ovr_core.grading_pool import default_grader

log = logging.getLogger(__name__)

REWARDS: dict[str, Callable[..., list[float]]] = {}
STATUS_COUNTS: Counter[str] = Counter()  # every accuracy verdict's status since start


def register(name: str):
    """Add a reward function to ``REWARDS`` under ``name``."""

    def add(func):
        REWARDS[name] = func
        return func

    return add


@register("accuracy")
def accuracy(completions: list[str], answer: list[str], **columns) -> list[float]:
    """1.0 when the answer's last ``\\boxed{}`` matches the gold ``answer`` (math-verify, or the
    row's ``rule``; with a ``choices`` column, it names the gold option by letter or text) and the
    output states no other answer; 0.0 otherwise: a wrong answer, no box (an answer sentence
    alone does not earn it), two different answers stated, a trace never closed, or a sample the
    grader refused, timed out on or failed on (those counted and logged, see the module
    docstring). It is the evaluation's grader in its strict mode (``ovr_core.grading``)."""
    verdicts = default_grader().grade_many(
        completions, answer, columns.get("choices"), columns.get("rule")
    )
    report_statuses(count_statuses(verdicts), columns.get("log_metric"))
    return [v.score for v in verdicts]


def report_statuses(counts: dict[str, int], log_metric: Callable | None = None) -> None:
    """Count one call's grader statuses, log them, and hand them to TRL's ``log_metric``."""
    STATUS_COUNTS.update(counts)
    accuracy.last_statuses = counts
    total = sum(counts.values()) or 1
    line = ", ".join(f"{s} {counts[s]}" for s in STATUSES if counts.get(s))
    trouble = sum(counts.get(s, 0) for s in GRADER_TROUBLE)
    (log.warning if trouble else log.info)("accuracy reward: grader statuses %s", line)
    if log_metric is not None:
        for status in STATUSES:  # every status every call: each rank logs the same names
            log_metric(f"grader/{status}", counts.get(status, 0) / total)


accuracy.last_statuses = {}


@register("format")
def format_reward(completions: list[str], **_) -> list[float]:
    """1.0 for ``<think>…</think>`` then an answer holding exactly one ``\\boxed{}``; else 0.0."""
    return [float(is_well_formed(c)) for c in completions]


# ---- as TRL calls them ------------------------------------------------------------------------


def reward_functions(names: list[str], truncated_reward: float | None, end_ids: set[int]) -> list:
    """The named registry rewards as TRL reward functions (text completions, gold in ``answer``)."""
    registry = REWARDS
    unknown = [n for n in names if n not in registry]
    if unknown:
        raise SystemExit(f"ovr-train rl: unknown rewards {unknown}; known: {sorted(registry)}")
    return [as_trl_reward(name, registry[name], truncated_reward, end_ids) for name in names]


def as_trl_reward(name: str, func, truncated_reward: float | None, end_ids: set[int]):
    def reward(completions, completion_ids=None, **columns):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        values = list(func(texts, **columns))
        if truncated_reward is not None and completion_ids is not None:
            values = [
                truncated_reward if ids and ids[-1] not in end_ids else v
                for v, ids in zip(values, completion_ids, strict=True)
            ]
        return values

    reward.__name__ = name  # TRL logs rewards/<name>/mean
    return reward
