"""The spread of every learned figure the tests assert, over seeds and CPU float paths.

    .venv/bin/python scripts/learning-spread.py                       # seeds 0-4, this CPU's kernels
    .venv/bin/python scripts/learning-spread.py --seeds 0 1 --cpu avx2 --threads 1

Each combination runs the learning tests once (``$OVR_TEST_SEED`` reseeds the tiny model, its data
and every training run; ``ATEN_CPU_CAPABILITY`` makes PyTorch take another kernel family, as a
machine with another CPU does; ``OMP_NUM_THREADS`` changes reduction order). The tests append what
they measured to ``artifacts/learning-figures.jsonl``; the table gives min, median and max of each
figure, and which combinations failed. The tests' docstrings and thresholds are set from it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
FIGURES = ROOT / "artifacts" / "learning-figures.jsonl"
LEARNING_TESTS = [
    "tests/test_sft.py::test_tiny_recipe_trains_loss_falls_and_weights_move",
    "tests/test_sft.py::test_tiny_recipe_teaches_the_format",
    "tests/test_sft.py::test_output_checkpoint_is_served_by_ovr_serve",
    "tests/test_ppo.py::test_the_value_head_learns_the_tiny_tasks_expected_reward",
    "tests/test_rl.py",
    "tests/test_ppo.py",
    "tests/test_serve_live.py::test_chat_with_image_splits_reasoning_and_answer_the_same_streaming_or_not",
    "tests/test_rollout_pool.py::test_server_mode_rl_trains_with_rollouts_from_every_server",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument(
        "--cpu", nargs="+", default=[""], help="ATEN_CPU_CAPABILITY values (default: the CPU's own)"
    )
    parser.add_argument("--threads", nargs="+", default=[""], help="OMP_NUM_THREADS values")
    parser.add_argument("--tests", nargs="+", default=LEARNING_TESTS, help="pytest node ids")
    parser.add_argument("--summary-only", action="store_true", help="tabulate what is recorded")
    args = parser.parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 160)
    failed: list[str] = []
    if not args.summary_only:
        combos = [(s, c, t) for s in args.seeds for c in args.cpu for t in args.threads]
        with Progress(console=console) as progress:
            task = progress.add_task("learning tests", total=len(combos))
            for seed, cpu, threads in combos:
                name = f"seed {seed} cpu {cpu or 'native'} threads {threads or 'default'}"
                progress.update(task, description=name)
                started = time.monotonic()
                if not _run(args.tests, seed, cpu, threads, name):
                    failed.append(name)
                progress.console.print(f"{name}: {time.monotonic() - started:.0f} s")
                progress.advance(task)
    console.print(_table(_rows()))
    for name in failed:
        console.print(f"[red]failed:[/red] {name} (its log: artifacts/spread-logs/)")
    return 1 if failed else 0


def _run(tests: list[str], seed: int, cpu: str, threads: str, name: str) -> bool:
    env = {**os.environ, "OVR_TEST_SEED": str(seed)}
    if cpu:
        env["ATEN_CPU_CAPABILITY"] = cpu
    if threads:
        env["OMP_NUM_THREADS"] = threads
    logs = ROOT / "artifacts" / "spread-logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / (name.replace(" ", "-") + ".log")
    with log.open("w") as out:
        cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *tests]
        return (
            subprocess.run(cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT).returncode
            == 0
        )


def _rows() -> list[dict]:
    if not FIGURES.exists():
        return []
    return [json.loads(line) for line in FIGURES.read_text().splitlines() if line.strip()]


def _table(rows: list[dict]) -> Table:
    table = Table("test", "figure", "runs", "min", "median", "max", "seeds", "cpu")
    keys = ("test", "seed", "cpu_capability", "omp_threads")
    by_figure: dict[tuple[str, str], list[tuple[float, dict]]] = {}
    for row in rows:
        for figure, value in row.items():
            if figure not in keys and isinstance(value, int | float):
                by_figure.setdefault((row["test"], figure), []).append((float(value), row))
    for (test, figure), values in sorted(by_figure.items()):
        xs = [v for v, _ in values]
        seeds = sorted({r["seed"] for _, r in values})
        cpus = sorted(
            {
                r["cpu_capability"] + (f"/{r['omp_threads']}t" if r["omp_threads"] else "")
                for _, r in values
            }
        )
        table.add_row(
            test, figure, str(len(xs)), f"{min(xs):.3f}", f"{statistics.median(xs):.3f}",
            f"{max(xs):.3f}", ",".join(map(str, seeds)), ",".join(cpus),
        )  # fmt: skip
    return table


if __name__ == "__main__":
    sys.exit(main())
