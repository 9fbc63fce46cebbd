"""ovr-eval against the real ovr-serve endpoint on the tiny model, with local benchmark files."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import httpx
import pytest

from ovr_eval.cli import main
from ovr_eval.run import RunConfig, Sampling, read_records, rescore, run_eval
from ovr_eval.samples import write_sample_benchmarks
from tests.conftest import finished_requests as finished_requests_at

pytestmark = pytest.mark.slow

# short answers: the tiny model closes its trace within a few dozen tokens
SAMPLING = Sampling(temperature=0.0, top_p=1.0, max_tokens=96)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_sample_benchmarks(tmp_path_factory.mktemp("benchmarks"), n=4)


def finished_requests(server) -> float:
    """vLLM's count of finished requests (every finish reason), from the server's /metrics."""
    return finished_requests_at(server.root, server.api_key)


def running_requests(server) -> float:
    text = _metrics(server)
    return sum(
        float(v)
        for v in re.findall(
            r"^vllm:num_requests_(?:running|waiting)\{[^}]*\} ([0-9.e+]+)$", text, re.M
        )
    )


def _metrics(server) -> str:
    r = httpx.get(
        server.root + "/metrics", headers={"Authorization": f"Bearer {server.api_key}"}, timeout=10
    )
    r.raise_for_status()
    return r.text


def test_full_run_records_every_question_then_rescore_and_report(ovr_server, data, tmp_path):
    out = tmp_path / "run"
    cfg = RunConfig(
        ovr_server.base_url,
        ovr_server.model,
        list(data),
        out,
        ovr_server.api_key,
        {k: str(v) for k, v in data.items()},
        concurrency=4,
        sampling=SAMPLING,
        label="tiny",
        progress=False,
    )
    before = finished_requests(ovr_server)
    results = run_eval(cfg)
    assert (
        finished_requests(ovr_server) - before == 16
    )  # 4 per benchmark (MathVerse: vision-only rows)
    assert [(r.bench, r.answered, r.failed) for r in results] == [(b, 4, 0) for b in data]
    for bench in data:
        records = read_records(out / f"{bench}.jsonl")
        assert len({r["id"] for r in records}) == 4
        for r in records:
            assert r["status"] in ("correct", "wrong", "no_answer", "unclosed")
            assert r["completion_tokens"] > 0 and r["latency_s"] > 0
    assert all(r["n_images"] == 1 for r in read_records(out / "mathvista.jsonl"))
    assert json.loads((out / "run.json").read_text())["sampling"]["max_tokens"] == 96

    # re-scoring: re-grade recorded answers without asking again
    path = out / "math500.jsonl"
    records = read_records(path)
    records[0].update(
        completion="<think>\nok\n</think>\n\n\\boxed{7}", gold="7", status="wrong", correct=False
    )
    records[1].update(status="correct", correct=True)  # a stale verdict, as after a grader fix
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    before = finished_requests(ovr_server)
    changed = rescore(out)
    assert finished_requests(ovr_server) == before, "re-scoring asks the endpoint nothing"
    assert changed["math500"] == (4, 2) and changed["mathvista"] == (4, 0)
    again = read_records(path)
    assert again[0]["status"] == "correct" and again[0]["correct"] is True
    assert again[1]["status"] != "correct"

    # the report: the paper's numbers beside ours, Markdown/CSV/PNG
    assert main(["report", str(out), "--out", str(tmp_path / "report")]) == 0
    md = (tmp_path / "report" / "report.md").read_text()
    assert "MathVista (testmini)" in md and "72.1" in md and "69.2" in md and "95.3" in md
    assert "Truncated %" in md
    csv_rows = (tmp_path / "report" / "report.csv").read_text().splitlines()
    assert len(csv_rows) == 1 + 4
    assert (tmp_path / "report" / "report.png").stat().st_size > 1000

    assert main(["behaviours", str(out)]) == 0
    rates = json.loads((out / "behaviours.json").read_text())
    assert set(rates) == set(data) and "visual_reflection" in rates["mathvista"]["rates"]


N_RESUME = 40  # the tiny model answers in ~0.1 s: enough questions to kill the run midway


def test_resumed_run_after_a_kill_asks_no_question_twice(ovr_server, tmp_path):
    data = write_sample_benchmarks(tmp_path / "benchmarks", n=N_RESUME)
    out = tmp_path / "run"
    args = [
        "run",
        "--endpoint",
        ovr_server.base_url,
        "--model",
        ovr_server.model,
        "--bench",
        "math500",
        "--data",
        f"math500={data['math500']}",
        "--out",
        str(out),
        "--concurrency",
        "1",
        "--temperature",
        "0",
        "--max-tokens",
        "96",
        "--no-progress",
    ]
    env = {**os.environ, "OPENAI_API_KEY": ovr_server.api_key}
    proc = subprocess.Popen([sys.executable, "-m", "ovr_eval.cli", *args], env=env)
    path = out / "math500.jsonl"
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and (
            not path.exists() or len(path.read_text().splitlines()) < 3
        ):
            assert proc.poll() is None, "the run ended before it could be killed"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(30)
    recorded = {r["id"] for r in read_records(path)}
    assert 3 <= len(recorded) < N_RESUME

    deadline = (
        time.monotonic() + 60
    )  # let the server finish or abort what the killed run had in flight
    while running_requests(ovr_server) and time.monotonic() < deadline:
        time.sleep(0.2)
    before = finished_requests(ovr_server)
    assert main(args + ["--api-key", ovr_server.api_key]) == 0
    asked = finished_requests(ovr_server) - before
    records = read_records(path)
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids)) == N_RESUME, "every question recorded exactly once"
    assert asked == N_RESUME - len(recorded), (
        f"resume asked {asked} questions; {len(recorded)} were already answered"
    )

    before = finished_requests(ovr_server)
    assert main(args + ["--api-key", ovr_server.api_key]) == 0  # a finished run asks nothing
    assert finished_requests(ovr_server) == before


def test_wrong_model_name_and_wrong_key_are_clear_errors(ovr_server, tmp_path, capsys):
    base = [
        "run",
        "--endpoint",
        ovr_server.base_url,
        "--bench",
        "math500",
        "--out",
        str(tmp_path / "r"),
        "--data",
        f"math500={write_sample_benchmarks(tmp_path / 'b', n=1)['math500']}",
    ]
    assert main(base + ["--model", "nope", "--api-key", ovr_server.api_key]) == 2
    assert "does not serve 'nope'" in capsys.readouterr().err
    assert main(base + ["--model", ovr_server.model, "--api-key", "wrong"]) == 2
    assert "refused the API key" in capsys.readouterr().err


def test_llm_judge_mode_reports_unreadable_judgments_instead_of_zero(ovr_server, tmp_path, capsys):
    # the tiny model is no judge: it answers without <count>N</count>, which must be reported,
    # left out of the rates (never read as "behaviour absent") and must not crash the run
    run = tmp_path / "run"
    run.mkdir()
    traces = ["Wait, 2 + 2 = 5? No. Let me verify: 4.", "Let me look at the image again: 3 dots."]
    records = [
        {"id": str(i), "prompt": "How many?", "n_images": i, "reasoning": t, "completion": t}
        for i, t in enumerate(traces)
    ]
    (run / "mathvista.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    args = ["behaviours", str(run), "--judge-endpoint", ovr_server.base_url]
    args += ["--judge-model", ovr_server.model, "--judge-api-key", ovr_server.api_key]
    assert main(args) == 0
    out = capsys.readouterr()
    table = json.loads((run / "behaviours-judge.json").read_text())["mathvista"]
    assert table["n"] == 2 and table["failed"] == 0
    assert 0 < table["unparseable"] <= 2 * 8
    assert "unparseable judgments" in out.out
    assert (
        f"mathvista: {table['unparseable']} of 16 judge answers had no <count>N</count>" in out.err
    )
    if table["unparseable"] == 16:
        assert all(v is None for v in table["rates"].values())


def test_judge_scorers_send_the_official_prompts_and_count_unreadable_replies(
    ovr_server, tmp_path, capsys
):
    # the tiny model is no judge: its replies are mostly unreadable. What is checked is the
    # plumbing: the official prompt reaches a real OpenAI-compatible endpoint, the reply is
    # parsed by the protocol's parser, an unreadable one is counted "unjudged" (never a silent
    # 0), a record with no answer keeps its rule verdict, and the report names the judge.
    from ovr_eval.judge import parse_charxiv, parse_extraction, parse_judgement

    run = tmp_path / "run"
    run.mkdir()
    done = "<think>\nok\n</think>\n\nThe answer is \\boxed{5}."
    rows = {
        "mathverse": [
            {"gold": "5", "rule": {"name": "math"}, "meta": {"question": "How many dots?"}},
            {"gold": "B", "choices": list("ABCDE"), "meta": {"question": "Which?"}},
        ],
        "charxiv": [
            {
                "gold": "5",
                "rule": {"name": "charxiv", "answer_type": 3},
                "meta": {"question": "How many lines?", "inst_category": 3},
            },
        ],
        "mathvista": [
            {
                "gold": "5",
                "rule": {"name": "mathvista", "answer_type": "integer"},
                "meta": {"question": "How many?"},
            },
        ],
    }
    for bench, records in rows.items():
        records = [
            {"id": str(i), "completion": done, "prompt": "q", **r} for i, r in enumerate(records)
        ]
        records.append({"id": "cut", "completion": "<think>\nstill", "gold": "5", "prompt": "q"})
        (run / f"{bench}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    args = ["rescore", str(run), "--judge-endpoint", ovr_server.base_url, "--judge-model"]
    args += [ovr_server.model, "--judge-api-key", ovr_server.api_key, "--judge-max-tokens", "24"]
    assert main(args) == 0
    err = capsys.readouterr().err
    parsers = {
        "mathverse": parse_extraction,
        "charxiv": parse_charxiv,
        "mathvista": parse_extraction,
    }
    unjudged = 0
    for bench in rows:
        *judged, cut = read_records(run / f"{bench}.jsonl")
        assert cut["status"] == "unclosed" and cut["scorer"].startswith("rules:")
        for r in judged:
            trail = r["judge"]
            assert r["scorer"] == f"judge:{ovr_server.model}" and r["rule_status"] in (
                "correct",
                "wrong",
            )
            assert trail["replies"], "the judge answered"
            first = trail["prompts"][0]
            assert {
                "mathverse": "termed 'Model Response'",
                "charxiv": "exactly equal in values",
                "mathvista": "Please read the following example.",
            }[bench] in first
            assert "The answer is \\boxed{5}." in first
            readable = parsers[bench](trail["replies"][-1]) is not None
            if bench == "mathverse" and readable:  # the extraction goes on to the score prompt
                assert len(trail["prompts"]) == 2 and "[Standard Answer]:" in trail["prompts"][1]
                readable = parse_judgement(trail["replies"][-1]) is not None
            assert (r["status"] == "unjudged") == (not readable), (bench, trail)
            assert r["status"] in ("correct", "wrong", "unjudged")
            unjudged += r["status"] == "unjudged"
    if unjudged:
        assert "judge replies unreadable or requests failed" in err
    assert main(["report", str(run), "--out", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert f"judge:{ovr_server.model}" in md


def test_run_with_a_judge_scores_as_it_goes_and_says_so(ovr_server, tmp_path, capsys):
    data = write_sample_benchmarks(tmp_path / "benchmarks", n=2)
    out = tmp_path / "run"
    key = ["--api-key", ovr_server.api_key, "--judge-api-key", ovr_server.api_key]
    args = ["run", "--endpoint", ovr_server.base_url, "--model", ovr_server.model, *key]
    args += ["--bench", "mathvista,math500", "--out", str(out), "--no-progress"]
    args += ["--data", f"mathvista={data['mathvista']}", "--data", f"math500={data['math500']}"]
    args += ["--temperature", "0", "--max-tokens", "96", "--judge-endpoint", ovr_server.base_url]
    args += ["--judge-model", ovr_server.model, "--judge-max-tokens", "16"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert f"by judge:{ovr_server.model}" in printed and "math500: " in printed
    for r in read_records(out / "mathvista.jsonl"):
        judged = r["scorer"] == f"judge:{ovr_server.model}"
        assert judged or r["status"] in ("unclosed", "refused"), r
        if judged:
            assert r["judge"]["prompts"][0].startswith("Please read the following example.")
            assert r["status"] in ("correct", "wrong", "unjudged")
    assert {r["scorer"] for r in read_records(out / "math500.jsonl")} == {"rules:math"}
