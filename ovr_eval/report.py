"""The report: our runs beside the paper's numbers, as a console table, Markdown, CSV and a PNG.

Accuracy comes with a 95% Wilson interval over questions (over seed questions for DynaMath's
worst-case metric); response length statistics are completion tokens as the endpoint counted them;
the truncation rate is the share of answers that stopped at the token limit. Every number says
which scorer produced it (``rules:<rule>``, the official rule run by ``ovr_core.grading``, or
``judge:<model>``, the official judge prompts) and the grader statuses behind it (correct, wrong,
no_answer, unclosed, refused, timeout, error, unjudged). WeMath reports its own four-dimensional
scores (strict and loose) rather than accuracy.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from ovr_eval.benchmarks import BENCHMARKS
from ovr_eval.run import read_records

PAPER_COLUMNS = ("Qwen2.5-VL-7B", "OVR-7B-ColdStart", "OVR-7B-RL")


@dataclass
class Score:
    """One run on one benchmark."""

    bench: str
    n: int
    correct: int
    low: float
    high: float
    mean_tokens: float
    median_tokens: float
    p90_tokens: float
    max_tokens: int
    truncation: float
    no_answer: float
    timeouts: int
    scorer: str = ""
    statuses: dict[str, int] = field(default_factory=dict)
    value: float | None = None  # a score that is not correct / n (WeMath's strict score)
    extra: dict[str, float] = field(default_factory=dict)  # WeMath: loose score, IK, IG, CM, RM

    @property
    def accuracy(self) -> float:
        if self.value is not None:
            return self.value
        return self.correct / self.n if self.n else 0.0

    @property
    def interval(self) -> str:
        """`` [low, high]`` in %, or empty for a score that is not a proportion."""
        if self.value is not None:
            return ""
        return f" [{100 * self.low:.1f}, {100 * self.high:.1f}]"


@dataclass
class Run:
    """A run folder read back: its label and a ``Score`` per benchmark."""

    label: str
    path: Path
    scores: dict[str, Score]


def load_run(path: str | Path) -> Run:
    """Read a run folder (``run.json`` and ``<bench>.jsonl`` files) into scores."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"no run folder {path}")
    meta = json.loads((path / "run.json").read_text()) if (path / "run.json").exists() else {}
    scores = {}
    for file in sorted(path.glob("*.jsonl")):
        records = read_records(file)
        if records:
            scores[file.stem] = score_records(file.stem, records)
    return Run(meta.get("label") or path.name, path, scores)


def score_records(bench: str, records: list[dict]) -> Score:
    """Accuracy (with its interval), lengths, truncation of one benchmark's records."""
    metric = BENCHMARKS[bench].metric if bench in BENCHMARKS else "accuracy"
    value, extra = None, {}
    if metric == "wemath":
        extra = wemath_scores(records)
        value = extra.get("score_strict")
    if metric == "worst":
        groups: dict[str, bool] = defaultdict(lambda: True)
        for r in records:
            key = r.get("group") or r["id"]
            groups[key] = groups[key] and bool(r["correct"])
        n, correct = len(groups), sum(groups.values())
    else:
        n, correct = len(records), sum(bool(r["correct"]) for r in records)
    lengths = sorted(r.get("completion_tokens") or 0 for r in records)
    low, high = wilson(correct, n) if value is None else (value, value)
    return Score(
        bench,
        n,
        correct,
        low,
        high,
        statistics.fmean(lengths),
        statistics.median(lengths),
        lengths[math.ceil(0.9 * len(lengths)) - 1],  # nearest-rank p90
        lengths[-1],
        sum(bool(r.get("truncated")) for r in records) / len(records),
        sum(r.get("status") == "no_answer" for r in records) / len(records),
        sum(r.get("status") == "timeout" for r in records),
        scorer_name(records),
        dict(Counter(r.get("status") or "unknown" for r in records)),
        value,
        extra,
    )


def scorer_name(records: list[dict]) -> str:
    """The scorer behind a benchmark's number: one name, or each with its count when mixed."""
    counts = Counter(r.get("scorer") or "rules:default" for r in records)
    if len(counts) == 1:
        return next(iter(counts))
    return "mixed: " + ", ".join(f"{k} {v}" for k, v in counts.most_common())


def wemath_scores(records: list[dict]) -> dict[str, float]:
    """WeMath's four-dimensional metrics over its composite problems (``four_dimensional_metrics``):
    per problem, the one-step parts (keys ``Nsteps_1``…) and the multi-step question
    (``Nsteps_multi``) give IK (a part wrong, the whole wrong), IG (all parts right, the whole
    wrong), CM (the whole right, parts all right: strict; any right: loose), RM (the whole right,
    a part wrong: strict; all wrong: loose); score = (N - 0.5 IG - RM - IK) / N."""
    problems: dict[str, dict[str, bool]] = defaultdict(dict)
    for r in records:
        key = (r.get("meta") or {}).get("key") or ""
        if r.get("group") and "_" in key:
            problems[r["group"]][key.split("_")[-1]] = bool(r["correct"])
    tally = Counter()
    for parts in problems.values():
        if "multi" not in parts or len(parts) < 2:
            continue
        whole = parts.pop("multi")
        steps = list(parts.values())
        tally["n"] += 1
        tally["IK"] += (not all(steps)) and not whole
        tally["IG"] += all(steps) and not whole
        tally["CM_strict"] += all(steps) and whole
        tally["CM_loose"] += any(steps) and whole
        tally["RM_strict"] += (not all(steps)) and whole
        tally["RM_loose"] += (not any(steps)) and whole
    n = tally["n"]
    if not n:
        return {}
    out = {k: tally[k] for k in ("n", "IK", "IG", "CM_strict", "CM_loose", "RM_strict", "RM_loose")}
    for mode in ("strict", "loose"):
        out[f"score_{mode}"] = (n - 0.5 * tally["IG"] - tally[f"RM_{mode}"] - tally["IK"]) / n
    return out


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval for ``k`` successes out of ``n``."""
    if n == 0:
        return 0.0, 0.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def comparison_rows(runs: list[Run]) -> tuple[list[str], list[list[str]]]:
    """The paper's layout: one row per benchmark, the paper's models then our runs, in %."""
    header = ["Benchmark", *(f"{c} (paper)" for c in PAPER_COLUMNS), *(r.label for r in runs)]
    rows = []
    benches = [b for b in BENCHMARKS if any(b in r.scores for r in runs)]
    benches += sorted({b for r in runs for b in r.scores} - set(benches))
    for name in benches:
        bench = BENCHMARKS.get(name)
        paper = bench.paper if bench else {}
        row = [bench.title if bench else name]
        row += [_pct(paper.get(c)) for c in PAPER_COLUMNS]
        for r in runs:
            s = r.scores.get(name)
            row.append(f"{100 * s.accuracy:.1f}{s.interval} · {s.scorer}" if s else "")
        rows.append(row)
        if any(name in r.scores and "score_loose" in r.scores[name].extra for r in runs):
            loose = [f"{bench.title if bench else name} loose".replace("(strict) ", "")]
            loose += [_pct(paper.get(f"{c} (loose)")) for c in PAPER_COLUMNS]
            for r in runs:
                s = r.scores.get(name)
                value = s.extra.get("score_loose") if s else None
                loose.append(f"{100 * value:.1f} · {s.scorer}" if value is not None else "")
            rows.append(loose)
    return header, rows


DETAIL_HEADER = [
    "Run",
    "Benchmark",
    "n",
    "Accuracy %",
    "95% CI",
    "Mean tokens",
    "Median",
    "p90",
    "Max",
    "Truncated %",
    "No answer %",
    "Timeouts",
    "Scorer",
    "Statuses",
]


def detail_rows(runs: list[Run]) -> list[list[str]]:
    """Per run and benchmark: n, accuracy, interval, response lengths, truncation, no-answer."""
    rows = []
    for r in runs:
        for s in r.scores.values():
            rows.append(
                [
                    r.label,
                    s.bench,
                    str(s.n),
                    f"{100 * s.accuracy:.1f}",
                    s.interval.strip(),
                    f"{s.mean_tokens:.0f}",
                    f"{s.median_tokens:.0f}",
                    str(s.p90_tokens),
                    str(s.max_tokens),
                    f"{100 * s.truncation:.1f}",
                    f"{100 * s.no_answer:.1f}",
                    str(s.timeouts),
                    s.scorer,
                    statuses_text(s.statuses),
                ]
            )
    return rows


def statuses_text(statuses: dict[str, int]) -> str:
    """``correct 7, wrong 2, timeout 1``: every status seen, most frequent first."""
    return ", ".join(f"{k} {v}" for k, v in sorted(statuses.items(), key=lambda kv: -kv[1]))


def write_report(runs: list[Run], out: Path) -> dict[str, Path]:
    """Write ``report.md``, ``report.csv`` and ``report.png`` to ``out``; return their paths."""
    out.mkdir(parents=True, exist_ok=True)
    header, rows = comparison_rows(runs)
    md = [
        "# Evaluation",
        "",
        _markdown(header, rows),
        "",
        "## Details",
        "",
        _markdown(DETAIL_HEADER, detail_rows(runs)),
        "",
    ]
    notes = report_notes(runs)
    if notes:
        md += ["## Notes", "", *notes, ""]
    for r in runs:
        meta = r.path / "run.json"
        if meta.exists():
            md.append(f"- {r.label}: sampling {json.loads(meta.read_text()).get('sampling')}")
    paths = {"md": out / "report.md", "csv": out / "report.csv", "png": out / "report.png"}
    paths["md"].write_text("\n".join(md) + "\n")
    with paths["csv"].open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "run",
                "benchmark",
                "n",
                "correct",
                "accuracy",
                "ci_low",
                "ci_high",
                "mean_tokens",
                "median_tokens",
                "p90_tokens",
                "max_tokens",
                "truncation_rate",
                "no_answer_rate",
                "timeouts",
                "scorer",
                "statuses",
                "score_loose",
            ]
        )
        for r in runs:
            for s in r.scores.values():
                w.writerow(
                    [
                        r.label,
                        s.bench,
                        s.n,
                        s.correct,
                        f"{s.accuracy:.4f}",
                        f"{s.low:.4f}",
                        f"{s.high:.4f}",
                        f"{s.mean_tokens:.1f}",
                        s.median_tokens,
                        s.p90_tokens,
                        s.max_tokens,
                        f"{s.truncation:.4f}",
                        f"{s.no_answer:.4f}",
                        s.timeouts,
                        s.scorer,
                        json.dumps(s.statuses, sort_keys=True),
                        s.extra.get("score_loose", ""),
                    ]
                )
    _chart(runs, paths["png"])
    return paths


def report_notes(runs: list[Run]) -> list[str]:
    """Markdown notes: each benchmark's official scorer and source; WeMath's four dimensions."""
    notes = [
        f"- {b.title}: official scorer: {b.official} ([source]({b.source}))"
        + (f"; {b.note}" if b.note else "")
        for b in BENCHMARKS.values()
        if any(b.name in r.scores for r in runs)
    ]
    for r in runs:
        for s in r.scores.values():
            if s.extra:
                dims = ", ".join(
                    f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                    for k, v in s.extra.items()
                )
                notes.append(f"- {r.label} {s.bench} (WeMath four dimensions): {dims}")
    return notes


def print_report(runs: list[Run]) -> None:
    """The two tables on the console."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    header, rows = comparison_rows(runs)
    for title, head, body in (
        ("Accuracy % (95% CI) beside the paper", header, rows),
        ("Details", DETAIL_HEADER, detail_rows(runs)),
    ):
        table = Table(title=title)
        for h in head:
            table.add_column(h)
        for row in body:
            table.add_row(*row)
        console.print(table)


def _chart(runs: list[Run], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    benches = [b for b in BENCHMARKS if any(b in r.scores for r in runs)]
    series = [
        (f"{c} (paper)", [BENCHMARKS[b].paper.get(c) for b in benches], None) for c in PAPER_COLUMNS
    ]
    series = [s for s in series if any(v is not None for v in s[1])]
    for r in runs:
        vals = [100 * r.scores[b].accuracy if b in r.scores else None for b in benches]
        errs = [
            [
                100 * (r.scores[b].accuracy - r.scores[b].low) if b in r.scores else 0
                for b in benches
            ],
            [
                100 * (r.scores[b].high - r.scores[b].accuracy) if b in r.scores else 0
                for b in benches
            ],
        ]
        series.append((r.label, vals, errs))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(benches) + 2), 4))
    width = 0.8 / max(1, len(series))
    for k, (label, vals, errs) in enumerate(series):
        xs = [i + k * width for i in range(len(benches))]
        ax.bar(xs, [v or 0 for v in vals], width, label=label, yerr=errs, capsize=2)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(benches))])
    ax.set_xticklabels([BENCHMARKS[b].title for b in benches], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("accuracy %")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{v:.1f}"
