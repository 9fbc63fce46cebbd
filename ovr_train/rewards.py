"""Reward functions for RL: small pure functions ``(completions, **columns) -> list[float]``.

Registered by name in ``REWARDS``; a recipe picks and weights them (``rewards: [accuracy, format]``).
The accuracy reward is the eval grader itself (``ovr_core.grading``): one rule for what is right.
"""

from __future__ import annotations

from collections.abc import Callable

from ovr_core.format import is_well_formed
from ovr_core.grading import default_grader

REWARDS: dict[str, Callable[..., list[float]]] = {}


def register(name: str):
    """Add a reward function to ``REWARDS`` under ``name``."""

    def add(func):
        REWARDS[name] = func
        return func

    return add


@register("accuracy")
def accuracy(completions: list[str], answer: list[str], **columns) -> list[float]:
    """1.0 when the answer's ``\\boxed{}`` matches the gold ``answer`` under math-verify (or, with a
    ``choices`` column, names the gold option); 0.0 otherwise, including a trace never closed and
    a sample whose check passed the hard time limit (counted in the log, never silently)."""
    choices = columns.get("choices")
    verdicts = default_grader().grade_many(completions, answer, choices)
    return [v.score for v in verdicts]


@register("format")
def format_reward(completions: list[str], **_) -> list[float]:
    """1.0 for ``<think>…</think>`` then an answer holding exactly one ``\\boxed{}``; else 0.0."""
    return [float(is_well_formed(c)) for c in completions]
