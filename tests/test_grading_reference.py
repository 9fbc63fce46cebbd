"""The grader held against the field's own scorers, on generated answers: a differential test.

For each of the 14 benchmarks, ``tests/helpers/grading_variants.py`` writes answers around each
gold in every surface form its official extractor or lmms-eval's scorer handles (boxes, answer
sentences, letters, option texts, number formats, Unicode, LaTeX variants, contradictions,
truncations), each with what a careful reading of the official scorer makes of it. Three checks:

- ours gives that reading, for evaluation and for the strict RL reward, on every variant;
- lmms-eval 0.7.3's scorer for the benchmark (run in its own venv, ``scripts/reference-scorers.sh``,
  batched: one process for all, one for MATH-V's latex2sympy2) agrees with ours, except in the
  classes ``docs/grading.md`` lists as deliberate differences, each with its reason;
- every difference listed there still shows (the document cannot go stale).

The reference venv is built on first use (about a minute; cached in ``.cache/refvenv``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from ovr_core.grading import grade_completion
from tests.helpers.grading_variants import ROWS, Variant, variants

# minutes, not seconds: a venv built on first use, then ~20,000 answers graded twice
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
REF = ROOT / ".cache" / "refvenv"
DOC = ROOT / "docs" / "grading.md"
# items per benchmark, x 10-30 classes each: 1,000-2,000 answers per benchmark
ITEMS = {"math500": 90, "charxiv": 80, "aime24": 50, "aime25": 50}


@pytest.fixture(scope="module")
def generated() -> dict[str, list[Variant]]:
    return {bench: variants(bench, ITEMS.get(bench, 60)) for bench in ROWS}


@pytest.fixture(scope="module")
def reference(generated) -> dict[str, list]:
    """lmms-eval's score for every generated answer, per benchmark (1, 0, or {"error": …})."""
    build = subprocess.run(
        ["bash", str(ROOT / "scripts" / "reference-scorers.sh")],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert build.returncode == 0, f"the reference venv did not build:\n{build.stderr[-3000:]}"
    runner = str(ROOT / "tests" / "helpers" / "reference_scorers.py")
    batches = {
        "mathvision": [v for v in generated["mathvision"]],
        "rest": [v for b, vs in generated.items() if b != "mathvision" for v in vs],
    }
    paths = {"mathvision": str(REF / "latex2sympy2"), "rest": ""}
    procs = {
        name: subprocess.Popen(
            [str(REF / "bin" / "python"), runner],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": paths[name]},
        )
        for name in batches
    }
    scores: dict[str, list] = defaultdict(list)
    for name, proc in procs.items():
        cases = [
            {"bench": v.bench, "gold": v.gold, "choices": v.choices, "completion": v.answer}
            for v in batches[name]
        ]
        out, err = proc.communicate(json.dumps(cases), timeout=600)
        assert proc.returncode == 0, f"the reference scorers failed:\n{err[-3000:]}"
        for v, score in zip(batches[name], json.loads(out), strict=True):
            scores[v.bench].append(score)
    return scores


@pytest.fixture(scope="module")
def ours(generated) -> dict[str, list[tuple[float, float]]]:
    """Our (evaluation, RL reward) scores for every generated answer, per benchmark."""
    return {
        bench: [
            tuple(
                grade_completion(v.completion, v.gold, v.choices, v.rule, strict=s).score
                for s in (False, True)
            )
            for v in vs
        ]
        for bench, vs in generated.items()
    }


def deliberate() -> list[tuple[set[tuple[str, str]], str]]:
    """The rows of the table in ``docs/grading.md``: ``({(benchmark, class)}, "ours/reference")``."""
    rows = []
    table = DOC.read_text().split("## Deliberate differences", 1)[1].split("\n## ", 1)[0]
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 4 or not re.fullmatch(r"[01] / [01]", cells[2]):
            continue
        benches = list(ROWS) if cells[0] == "all" else re.findall(r"[\w-]+", cells[0])
        classes = re.findall(r"`(\w+)`", cells[1])
        rows.append(({(b, c) for b in benches for c in classes}, cells[2].replace(" ", "")))
    return rows


def _listed() -> dict[tuple[str, str], str]:
    return {pair: scores for pairs, scores in deliberate() for pair in pairs}


def _score(ref) -> float:
    return 0.0 if isinstance(ref, dict) else float(ref)  # a scorer that crashes gives nothing


@pytest.mark.parametrize("bench", list(ROWS))
def test_ours_reads_every_generated_answer_as_the_official_scorer_does(bench, generated, ours):
    wrong = Counter()
    for v, (evaluation, rl) in zip(generated[bench], ours[bench], strict=True):
        if evaluation != v.expect:
            wrong[(v.cls, "evaluation", f"want {v.expect}")] += 1
        if rl != v.expect_rl:
            wrong[(v.cls, "rl", f"want {v.expect_rl}")] += 1
    assert len(generated[bench]) >= 1000
    assert not wrong, dict(wrong)


@pytest.mark.parametrize("bench", list(ROWS))
def test_every_disagreement_with_the_reference_is_documented(bench, generated, ours, reference):
    listed = _listed()
    unexplained = Counter()
    for v, (mine, _), ref in zip(generated[bench], ours[bench], reference[bench], strict=True):
        theirs = _score(ref)
        if mine != theirs and listed.get((bench, v.cls)) != f"{mine:.0f}/{theirs:.0f}":
            why = ref["error"][:60] if isinstance(ref, dict) else ""
            unexplained[(v.cls, f"ours {mine:.0f}", f"lmms-eval {theirs:.0f}", why)] += 1
    assert not unexplained, f"{bench}: not in docs/grading.md: {dict(unexplained)}"


def test_every_documented_difference_still_shows(generated, ours, reference):
    seen = {
        (bench, v.cls)
        for bench, vs in generated.items()
        for v, (mine, _), ref in zip(vs, ours[bench], reference[bench], strict=True)
        if mine != _score(ref)
    }
    stale = [sorted(pairs)[:3] for pairs, _ in deliberate() if not pairs & seen]
    assert not stale, f"docs/grading.md lists differences that no longer occur: {stale}"
