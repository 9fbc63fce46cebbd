"""``ovr-eval``: the paper's benchmarks and reasoning behaviours against any OpenAI-compatible endpoint.

    ovr-eval run --endpoint http://localhost:8000/v1 --model ovr --bench math500,mathvista \\
        --out runs/ovr-7b-rl [--data mathvista=./mathvista_testmini/] [--concurrency 32] \\
        [--judge-endpoint https://api.openai.com/v1 --judge-model gpt-4o-2024-05-13]
    ovr-eval rescore runs/ovr-7b-rl [--judge-endpoint URL --judge-model MODEL]
    ovr-eval report runs/ovr-7b-rl runs/qwen2.5-vl-7b --out reports/
    ovr-eval behaviours runs/ovr-7b-rl [--judge-endpoint URL --judge-model gpt-4o]
    ovr-eval list
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections import Counter
from pathlib import Path

from ovr_core.wire import API_KEY_ENV
from ovr_eval.benchmarks import BENCHMARKS, DatasetError
from ovr_eval.run import EndpointError, RunConfig, Sampling


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the subcommand; errors print one line and exit non-zero."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return args.func(args)
    except (EndpointError, DatasetError, FileNotFoundError) as e:
        print(f"ovr-eval: error: {e}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ovr-eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(required=True)

    r = sub.add_parser(
        "run", help="ask every question of the benchmarks and record the answers (resumes)"
    )
    r.add_argument(
        "--endpoint",
        required=True,
        help="OpenAI-compatible base URL, e.g. http://localhost:8000/v1",
    )
    r.add_argument("--model", required=True, help="served model name")
    r.add_argument("--bench", required=True, help=f"comma-separated: {','.join(BENCHMARKS)}")
    r.add_argument("--out", required=True, type=Path, help="run folder (run again to resume)")
    r.add_argument(
        "--api-key",
        default=os.environ.get(API_KEY_ENV) or os.environ.get("OPENAI_API_KEY"),
        help=f"the endpoint's key; default: ${API_KEY_ENV} (what ovr-serve reads), else $OPENAI_API_KEY",
    )
    r.add_argument(
        "--data",
        action="append",
        default=[],
        metavar="BENCH=PATH",
        help="local copy of a benchmark (file or folder, public format)",
    )
    r.add_argument("--concurrency", type=int, default=32, help="requests in flight")
    r.add_argument("--limit", type=int, default=None, help="first N questions of each benchmark")
    r.add_argument("--label", default=None, help="name of this run in reports (default: the model)")
    s = Sampling()
    r.add_argument("--temperature", type=float, default=s.temperature)
    r.add_argument("--top-p", type=float, default=s.top_p)
    r.add_argument("--max-tokens", type=int, default=s.max_tokens)
    r.add_argument("--seed", type=int, default=None)
    r.add_argument("--no-progress", action="store_true")
    _judge_arguments(r)
    r.set_defaults(func=cmd_run)

    rs = sub.add_parser(
        "rescore", help="re-grade the recorded answers of runs, without asking again"
    )
    rs.add_argument("runs", nargs="+", type=Path)
    _judge_arguments(rs)
    rs.set_defaults(func=cmd_rescore)

    rp = sub.add_parser(
        "report", help="the paper's table with ours beside it: console, Markdown, CSV, PNG"
    )
    rp.add_argument("runs", nargs="+", type=Path)
    rp.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for report.md/csv/png (default: the first run)",
    )
    rp.set_defaults(func=cmd_report)

    b = sub.add_parser("behaviours", help="cognitive behaviour rates in a run's traces")
    b.add_argument("run", type=Path)
    b.add_argument(
        "--judge-endpoint", default=None, help="LLM-judge mode: OpenAI-compatible base URL"
    )
    b.add_argument("--judge-model", default="gpt-4o")
    b.add_argument("--judge-api-key", default=os.environ.get("OPENAI_API_KEY"))
    b.add_argument("--examples", type=int, default=1, help="highlighted examples per behaviour")
    b.set_defaults(func=cmd_behaviours)

    ls = sub.add_parser(
        "list", help="the registered benchmarks, their dataset ids and the paper's numbers"
    )
    ls.set_defaults(func=cmd_list)
    return p


def _judge_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--judge-endpoint",
        default=None,
        help="OpenAI-compatible base URL of a model judge: MathVerse, CharXiv and MathVista are "
        "then scored as their official scorers do, with their prompts (default: rule-based)",
    )
    p.add_argument("--judge-model", default="gpt-4o", help="the judge's model name")
    p.add_argument("--judge-api-key", default=os.environ.get("OPENAI_API_KEY"))
    p.add_argument(
        "--judge-max-tokens",
        type=int,
        default=1024,
        help="longest judge reply (capped at a quarter of the judge's context when it says it)",
    )


def _judge(args):
    from ovr_eval.judge import JudgeConfig

    if not args.judge_endpoint:
        return None
    return JudgeConfig(
        args.judge_endpoint, args.judge_model, args.judge_api_key, max_tokens=args.judge_max_tokens
    )


def cmd_run(args) -> int:
    from ovr_eval.run import run_eval

    data = {}
    for spec in args.data:
        name, sep, path = spec.partition("=")
        if not sep:
            raise DatasetError(f"--data expects BENCH=PATH, got {spec!r}")
        data[name] = path
    cfg = RunConfig(
        endpoint=args.endpoint,
        model=args.model,
        benches=[b.strip() for b in args.bench.split(",") if b.strip()],
        out=args.out,
        api_key=args.api_key,
        data=data,
        concurrency=args.concurrency,
        limit=args.limit,
        label=args.label,
        sampling=Sampling(args.temperature, args.top_p, args.max_tokens, args.seed),
        progress=not args.no_progress,
        judge=_judge(args),
    )
    results = run_eval(cfg)
    failed = 0
    for res in results:
        print(
            f"{res.bench}: {res.correct}/{res.answered} correct ({100 * res.accuracy:.1f}%) by "
            f"{res.scorer}; {res.asked} asked now, {res.skipped} already recorded, "
            f"{res.failed} failed; statuses {_statuses(res.statuses)}"
        )
        _warn_unjudged(res.bench, res.statuses)
        failed += res.failed
    print(f"answers in {args.out}/; next: ovr-eval report {args.out}")
    if failed:
        print(
            f"ovr-eval: {failed} questions failed; run the same command again to retry them",
            file=sys.stderr,
        )
        return 1
    return 0


def cmd_rescore(args) -> int:
    from ovr_eval.run import check_endpoint, read_records, rescore

    judge = _judge(args)
    if judge:
        judge.fit(check_endpoint(judge.endpoint, judge.model, judge.api_key))
    for run in args.runs:
        if not run.is_dir():
            raise FileNotFoundError(f"no run folder {run}")
        for bench, (n, changed) in rescore(run, judge=judge).items():
            statuses = dict(Counter(r["status"] for r in read_records(run / f"{bench}.jsonl")))
            print(
                f"{run}/{bench}: {n} answers re-graded, {changed} verdicts changed; "
                f"statuses {_statuses(statuses)}"
            )
            _warn_unjudged(bench, statuses)
    return 0


def _statuses(counts: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))


def _warn_unjudged(bench: str, statuses: dict) -> None:
    for status, what in (
        ("unjudged", "judge replies unreadable or requests failed (counted wrong; see records)"),
        ("error", "grader errors (counted wrong; see the log)"),
        ("timeout", "answers past the grader's time limit"),
        ("refused", "answers refused by the grader's pre-check"),
    ):
        if statuses.get(status):
            print(f"ovr-eval: warning: {bench}: {statuses[status]} {what}", file=sys.stderr)


def cmd_report(args) -> int:
    from ovr_eval.report import load_run, print_report, write_report

    runs = [load_run(r) for r in args.runs]
    print_report(runs)
    paths = write_report(runs, args.out or args.runs[0])
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def cmd_behaviours(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from ovr_core.behaviours import BEHAVIOURS, TRANSFER_PAIRS
    from ovr_eval.behaviours import behaviour_table, examples

    if not args.run.is_dir():
        raise FileNotFoundError(f"no run folder {args.run}")
    judge = None
    if args.judge_endpoint:
        judge = {
            "endpoint": args.judge_endpoint,
            "model": args.judge_model,
            "api_key": args.judge_api_key,
        }
    table = behaviour_table(args.run, judge)
    if not table:
        raise FileNotFoundError(f"no recorded traces in {args.run}")
    console = Console()
    t = Table(title=f"Emergence rate % ({'LLM judge ' + args.judge_model if judge else 'rules'})")
    t.add_column("Behaviour")
    for bench in table:
        t.add_column(f"{bench} (n={table[bench]['n']})")
    for name, b in BEHAVIOURS.items():
        t.add_row(f"{name} ({b.kind})", *(_pct(table[x]["rates"][name]) for x in table))
    for visual, ling in TRANSFER_PAIRS.items():
        t.add_row(
            f"transfer {visual} / {ling}", *(_ratio(table[x]["transfer"][visual]) for x in table)
        )
    if judge:
        t.add_row("unparseable judgments", *(str(table[x]["unparseable"]) for x in table))
        t.add_row("failed judge requests", *(str(table[x]["failed"]) for x in table))
    console.print(t)
    for name, where, excerpt in examples(args.run, args.examples):
        console.print(f"[bold]{name}[/] {where}: …{excerpt}…")
    out = args.run / ("behaviours-judge.json" if judge else "behaviours.json")
    out.write_text(
        json.dumps(
            {k: {kk: v for kk, v in d.items() if kk != "counts"} for k, d in table.items()},
            indent=2,
        )
    )
    print(f"wrote {out}")
    failed = 0
    for bench, d in table.items():
        asked = d["n"] * len(BEHAVIOURS)
        if d["unparseable"]:
            rest = (
                "no rates: does the judge model follow the prompt?"
                if d["unparseable"] == asked
                else "the rates are over the readable ones"
            )
            print(
                f"ovr-eval: warning: {bench}: {d['unparseable']} of {asked} judge answers had no "
                f"<count>N</count>; {rest}",
                file=sys.stderr,
            )
        if d["failed"]:
            print(
                f"ovr-eval: warning: {bench}: {d['failed']} of {asked} judge requests failed "
                "(see the log line above); the rates are over the others",
                file=sys.stderr,
            )
        failed += d["failed"]
    return 1 if failed else 0


def cmd_list(args) -> int:
    for b in BENCHMARKS.values():
        path, config, splits = b.hub
        paper = ", ".join(f"{k} {v}" for k, v in b.paper.items() if v is not None)
        print(
            f"{b.name:11} {b.title:24} {path}{':' + config if config else ''} [{','.join(splits)[:40]}]  paper: {paper}"
            f"  scored as: {b.source}" + (" (model judge with --judge-endpoint)" if b.judge else "")
        )
    return 0


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.1f}"


def _ratio(v: float | None) -> str:
    return "—" if v is None else f"{v:.2f}"


if __name__ == "__main__":
    sys.exit(main())
