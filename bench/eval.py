"""ovr-eval throughput: questions/s by concurrency against a real ovr-serve, and scoring answers/s.

    python bench/eval.py [--model DIR] [--questions 64] [--max-tokens 96] [--rounds 3]
        [--completions 2000] [--mix 1000] [--scoring-only]

1. Questions/s: ``run_eval`` (the code behind ``ovr-eval run``: load, ask, grade, record) on the
   sample MATH500 and MathVista files (text and image questions, ``--questions`` of each), at
   concurrency 1, 8 and 32 (median of 3 rounds), each run into a fresh folder, against ovr-serve
   on the tiny test model; the speed-up is over concurrency 1.
2. Scoring answers/s: the same grading rule serially in process (``grade_serial``) and through
   the pooled ``Grader`` (worker processes with a hard per-sample limit, what ``ovr-eval`` and
   the RL reward use) on realistic completions: numbers, fractions, LaTeX, multiple choice, wrong
   answers, no box, cut-off traces.
3. Graded answers/s on a mix with 1% pathological answers (exponent towers, 50k-character boxes,
   thousands of nested braces, huge exponents, ``--mix`` answers in all), through the pooled
   ``Grader`` with its hard per-sample limit (5 s), before (no pre-check: each bomb holds a
   worker until it is killed, or fails it) and after (the pre-check refuses them in this
   process, in microseconds), in one run; with the verdict statuses of each.

Prints a table and writes artifacts/bench/eval.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ovr_core.format import format_completion  # noqa: E402
from ovr_core.grading import count_statuses, grade_serial  # noqa: E402
from ovr_core.grading_pool import Grader  # noqa: E402
from ovr_eval.run import RunConfig, Sampling, run_eval  # noqa: E402
from ovr_eval.samples import write_sample_benchmarks  # noqa: E402
from ovr_serve.config import ServeConfig  # noqa: E402
from ovr_serve.launch import start_server  # noqa: E402
from tests.conftest import free_port  # noqa: E402

LEVELS = (1, 8, 32)
BENCHES = ("math500", "mathvista")


def main() -> None:
    """Measure both, print the table, save the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="checkpoint dir (default: the tiny test model)")
    parser.add_argument("--questions", type=int, default=64, help="per benchmark")
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=3, help="per level (median kept)")
    parser.add_argument("--completions", type=int, default=2000, help="for scoring throughput")
    parser.add_argument("--mix", type=int, default=1000, help="answers in the 1%%-pathological mix")
    parser.add_argument("--scoring-only", action="store_true", help="skip the server part (1)")
    parser.add_argument("--out", default=str(ROOT / "artifacts" / "bench" / "eval.json"))
    args = parser.parse_args()
    if not args.model:
        from ovr_train.tiny_model import cached_tiny_model

        args.model = str(cached_tiny_model(ROOT / ".cache"))

    asking = {}
    if not args.scoring_only:
        asking = questions_per_second(args.model, args.questions, args.max_tokens, args.rounds)
    scoring = scoring_throughput(args.completions)
    mix = pathological_mix_throughput(args.mix)

    if asking:
        print_asking(asking, args.model)
    print(f"\nscoring: {scoring['completions']} completions, {scoring['workers']} workers")
    print(f"  grade_serial (in process): {scoring['serial_per_s']:8.1f} answers/s")
    print(f"  pooled Grader (warm)     : {scoring['pooled_per_s']:8.1f} answers/s")
    print(f"  ratio pooled / serial    : {scoring['ratio']:8.2f}x")
    print(f"  pool start-up            : {scoring['pool_start_s']:8.2f} s")
    print(
        f"\n1% pathological mix: {mix['answers']} answers ({mix['pathological']} pathological), "
        f"{mix['workers']} workers, {mix['timeout_s']:g} s limit"
    )
    for name in ("before", "after"):
        r = mix[name]
        print(f"  {name:6} ({r['what']:28}): {r['per_s']:8.1f} answers/s  {r['statuses']}")
    print(f"  ratio after / before     : {mix['ratio']:8.2f}x")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"model": args.model, "asking": asking, "scoring": scoring, "mix": mix}
    out.write_text(json.dumps({**report, "cpus": os.cpu_count()}, indent=2))
    print(f"\nwritten {out}")


def print_asking(asking: dict, model: str) -> None:
    """The questions/s table."""
    base = asking[LEVELS[0]]["questions_per_s"]
    print(f"\nquestions/s: ovr-eval run against ovr-serve on {model}")
    print(f"{'concurrency':>11} | {'questions':>9} {'wall s':>7} {'q/s':>7} {'speed-up':>8} | acc")
    for c, r in asking.items():
        r["speedup"] = r["questions_per_s"] / base
        print(
            f"{c:>11} | {r['questions']:>9} {r['wall_s']:>7.1f} {r['questions_per_s']:>7.2f} "
            f"{r['speedup']:>7.2f}x | {r['accuracy']:.1%}"
        )


PATHOLOGICAL = (
    "9^{9^{9^{9^{9}}}}",  # sympy evaluates the tower for minutes
    "1" + "0" * 50_000,  # a 50k-character box
    "{" * 3000 + "7" + "}" * 3000,  # thousands of nested braces
    "2^{999999999}",  # a number too large to evaluate
)


def pathological_mix_throughput(n: int, timeout: float = 5.0) -> dict:
    """Graded answers/s on ``n`` realistic answers, 1% of them pathological, through a warm
    pooled ``Grader`` without the pre-check, then with it (the same answers, one run)."""
    completions, golds, choices = realistic_completions(n, seed=1)
    for k, i in enumerate(range(50, n, 100)):  # every hundredth answer
        completions[i] = format_completion("Let me compute.", f"\\boxed{{{PATHOLOGICAL[k % 4]}}}")
    bombs = len(range(50, n, 100))
    out = {"answers": n, "pathological": bombs, "timeout_s": timeout}
    for name, precheck in (("before", False), ("after", True)):
        with Grader(timeout=timeout, precheck=precheck) as grader:
            grader.grade_many(completions[:1], golds[:1], choices[:1])  # starts the workers
            grader.counts.clear()
            start = time.perf_counter()
            verdicts = grader.grade_many(completions, golds, choices)
            wall = time.perf_counter() - start
        out["workers"] = grader.workers
        out[name] = {
            "what": "pre-check off, hard limit only" if name == "before" else "pre-check on",
            "wall_s": wall,
            "per_s": n / wall,
            "statuses": {k: v for k, v in count_statuses(verdicts).items() if v},
        }
    out["ratio"] = out["after"]["per_s"] / out["before"]["per_s"]
    return out


def questions_per_second(model: str, n: int, max_tokens: int, rounds: int) -> dict[int, dict]:
    """``run_eval`` wall time per concurrency level (median of ``rounds``), each run into a
    fresh folder."""
    os.environ["OVR_BENCH_KEY"] = "bench-key"
    cfg = ServeConfig(model=model, port=free_port(), api_key_env="OVR_BENCH_KEY", cpu_kvcache_gib=1)
    print("starting ovr-serve…", flush=True)
    log = ROOT / "artifacts" / "bench" / "eval-serve.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    handle = start_server(cfg, log_path=log)
    model_name = handle.cfg.served_model_name
    # temperature 0: every level asks the same questions and gets the same answers
    sampling = Sampling(temperature=0.0, top_p=1.0, max_tokens=max_tokens)
    results = {}
    try:
        with tempfile.TemporaryDirectory() as tmp, Grader() as grader:
            data = write_sample_benchmarks(Path(tmp) / "benchmarks", n=n)
            data = {b: str(data[b]) for b in BENCHES}

            def run(out: str, concurrency: int, limit: int | None = None):
                rc = RunConfig(
                    handle.base_url,
                    model_name,
                    list(BENCHES),
                    Path(tmp) / out,
                    "bench-key",
                    data,
                    concurrency=concurrency,
                    limit=limit,
                    sampling=sampling,
                    progress=False,
                )
                start = time.perf_counter()
                res = run_eval(rc, grader)
                return res, time.perf_counter() - start

            run("warm-up", 4, limit=4)
            # levels interleaved round by round, median kept: background load on a shared
            # machine then hits every level alike instead of whichever ran last
            walls: dict[int, list[float]] = {c: [] for c in LEVELS}
            for k in range(rounds):
                for c in LEVELS:
                    res, wall = run(f"r{k}-c{c}", c)
                    assert sum(r.failed for r in res) == 0, res
                    walls[c].append(wall)
            for c in LEVELS:
                asked = sum(r.asked for r in res)
                wall = statistics.median(walls[c])
                results[c] = {
                    "questions": asked,
                    "wall_s": wall,
                    "walls_s": walls[c],
                    "questions_per_s": asked / wall,
                    "accuracy": sum(r.correct for r in res) / asked,
                }
    finally:
        handle.stop()
    return results


def scoring_throughput(n: int) -> dict:
    """answers/s of ``grade_serial`` and of a warm pooled ``Grader`` on the same completions."""
    completions, golds, choices = realistic_completions(n)
    start = time.perf_counter()
    serial = grade_serial(completions, golds, choices)
    serial_s = time.perf_counter() - start
    start = time.perf_counter()
    grader = Grader()
    grader.grade_many(completions[:1], golds[:1], choices[:1])  # starts the workers
    pool_start = time.perf_counter() - start
    try:
        start = time.perf_counter()
        pooled = grader.grade_many(completions, golds, choices)
        pooled_s = time.perf_counter() - start
    finally:
        grader.close()
    same = sum(a.status == b.status for a, b in zip(serial, pooled, strict=True))
    assert same == n, f"pooled and serial verdicts differ on {n - same} of {n}"
    statuses = {}
    for v in serial:
        statuses[v.status] = statuses.get(v.status, 0) + 1
    return {
        "completions": n,
        "workers": grader.workers,
        "serial_per_s": n / serial_s,
        "pooled_per_s": n / pooled_s,
        "ratio": serial_s / pooled_s,
        "pool_start_s": pool_start,
        "statuses": statuses,
    }


def realistic_completions(n: int, seed: int = 0) -> tuple[list[str], list[str], list]:
    """Completions as a reasoning model writes them, with golds (and options for MC), mixed kinds."""
    rng = random.Random(seed)
    filler = (
        "Let me look at the figure. There are {a} shapes in the top row and {b} in the bottom "
        "row. Wait, let me count again to be sure. Step 1: count each row. Step 2: add them. "
    )
    completions, golds, choices = [], [], []
    for i in range(n):
        a, b = rng.randint(1, 60), rng.randint(2, 12)
        trace = filler.format(a=a, b=b) * rng.randint(1, 6)
        kind = i % 8
        options = None
        if kind == 0:  # integer, right
            gold, answer = str(a + b), f"The total is \\boxed{{{a + b}}}."
        elif kind == 1:  # integer, wrong
            gold, answer = str(a + b), f"The total is \\boxed{{{a + b + 1}}}."
        elif kind == 2:  # fraction gold, equivalent LaTeX answer
            gold, answer = f"{a}/{b}", f"So the ratio is \\boxed{{\\frac{{{2 * a}}}{{{2 * b}}}}}."
        elif kind == 3:  # expression
            gold, answer = f"{a}\\sqrt{{{b}}}", f"Hence \\boxed{{{a}\\sqrt{{{b}}}}}."
        elif kind == 4:  # multiple choice by letter
            options = [str(a + k) for k in range(4)]
            gold, answer = "C", "The answer is \\boxed{C}."
        elif kind == 5:  # multiple choice by the option's text
            options = [str(a + k) for k in range(4)]
            gold, answer = "B", f"The answer is \\boxed{{{a + 1}}}."
        elif kind == 6:  # no box
            gold, answer = str(a), f"The answer is {a}."
        else:  # cut off inside the trace
            completions.append(f"<think>\n{trace}")
            golds.append(str(a))
            choices.append(None)
            continue
        completions.append(format_completion(trace, answer))
        golds.append(gold)
        choices.append(options)
    return completions, golds, choices


if __name__ == "__main__":
    main()
