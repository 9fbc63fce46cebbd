"""The report: our runs beside the paper's numbers, as a console table, Markdown, CSV and a PNG.

Accuracy comes with a 95% Wilson interval over questions (over seed questions for DynaMath's
worst-case metric); response length statistics are completion tokens as the endpoint counted them;
the truncation rate is the share of answers that stopped at the token limit.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass
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

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else 0.0


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
    if metric == "worst":
        groups: dict[str, bool] = defaultdict(lambda: True)
        for r in records:
            key = r.get("group") or r["id"]
            groups[key] = groups[key] and bool(r["correct"])
        n, correct = len(groups), sum(groups.values())
    else:
        n, correct = len(records), sum(bool(r["correct"]) for r in records)
    lengths = sorted(r.get("completion_tokens") or 0 for r in records)
    low, high = wilson(correct, n)
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
    )


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
            row.append(
                f"{100 * s.accuracy:.1f} [{100 * s.low:.1f}, {100 * s.high:.1f}]" if s else ""
            )
        rows.append(row)
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
                    f"[{100 * s.low:.1f}, {100 * s.high:.1f}]",
                    f"{s.mean_tokens:.0f}",
                    f"{s.median_tokens:.0f}",
                    str(s.p90_tokens),
                    str(s.max_tokens),
                    f"{100 * s.truncation:.1f}",
                    f"{100 * s.no_answer:.1f}",
                    str(s.timeouts),
                ]
            )
    return rows


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
    notes = [
        f"- {b.title}: {b.note}"
        for b in BENCHMARKS.values()
        if b.note and any(b.name in r.scores for r in runs)
    ]
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
                    ]
                )
    _chart(runs, paths["png"])
    return paths


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
