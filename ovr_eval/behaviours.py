"""Behaviour rates of a run's traces: the rule-based detector, or an LLM judge, per benchmark.

The judge follows the paper's protocol (GPT-4o with one prompt per behaviour, answering with a count
in ``<count>N</count>``) against any OpenAI-compatible endpoint; the rules come from
``ovr_core.behaviours`` (the same module the web UI uses to tag a trace). A judge answer without a
readable count, or a request that failed after retries, is never read as 0: that judgment is left
out of the behaviour's rate and counted (``unparseable`` / ``failed`` per benchmark).
"""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path

from ovr_core.behaviours import (
    BEHAVIOURS,
    count_behaviours,
    emergence_rates,
    find_behaviours,
    highlight,
    transfer_ratios,
)
from ovr_eval.run import check_endpoint, read_records

log = logging.getLogger(__name__)

JUDGE_PROMPT = """Below is a model's reasoning trace for a problem{image_note}.

Count how many distinct times the trace shows this behaviour:
{name}: the reasoning {description}.

Count only clear instances, not mere mentions of the words. Answer with the count alone, as <count>N</count>.

Problem:
{question}

Reasoning trace:
{trace}"""


def behaviour_table(run_dir: Path, judge: dict | None = None) -> dict:
    """Per benchmark: traces, emergence rate per behaviour, transfer ratios, the counts used, and
    (judge mode) how many judgments were unparseable or failed."""
    if judge:  # one clear error up front for an unreachable judge or a model it does not serve
        card = check_endpoint(judge["endpoint"], judge["model"], judge.get("api_key"))
        judge = {**judge, "max_model_len": card.get("max_model_len")}
    out = {}
    for path in sorted(Path(run_dir).glob("*.jsonl")):
        records = [r for r in read_records(path) if r.get("reasoning") or r.get("completion")]
        if not records:
            continue
        traces = [r.get("reasoning") or r["completion"] for r in records]
        problems = {"unparseable": 0, "failed": 0}
        if judge:
            counts, problems = judge_counts(records, traces, **judge)
        else:
            counts = [count_behaviours(t) for t in traces]
        rates = emergence_rates(counts)
        out[path.stem] = {
            "n": len(records),
            "rates": rates,
            "transfer": transfer_ratios(rates),
            **problems,
            "counts": counts,
        }
    return out


def examples(run_dir: Path, per_behaviour: int = 1, width: int = 160) -> list[tuple[str, str, str]]:
    """(behaviour, record id, excerpt with the match marked in rich markup) for a few traces."""
    found, wanted = [], dict.fromkeys(BEHAVIOURS, per_behaviour)
    for path in sorted(Path(run_dir).glob("*.jsonl")):
        for r in read_records(path):
            text = r.get("reasoning") or r.get("completion") or ""
            for span in find_behaviours(text):
                if wanted[span.behaviour] <= 0:
                    continue
                wanted[span.behaviour] -= 1
                lo, hi = max(0, span.start - width // 2), min(len(text), span.end + width // 2)
                shifted = [type(span)(span.behaviour, span.start - lo, span.end - lo, span.text)]
                excerpt = highlight(
                    text[lo:hi].replace("[", "\\["), shifted, "[bold reverse]{text}[/]"
                )
                found.append((span.behaviour, f"{path.stem}/{r['id']}", excerpt.replace("\n", " ")))
    return found


def judge_counts(
    records: list[dict],
    traces: list[str],
    endpoint: str,
    model: str,
    api_key: str | None = None,
    concurrency: int = 16,
    max_model_len: int | None = None,
) -> tuple[list[dict[str, int | None]], dict[str, int]]:
    """Per trace, each behaviour's count as an LLM judge gives it (one request per behaviour;
    ``None`` where the answer had no readable count or the request failed), and the tally
    ``{"unparseable": n, "failed": m}``."""
    return asyncio.run(
        _judge_all(records, traces, endpoint, model, api_key, concurrency, max_model_len)
    )


async def _judge_all(records, traces, endpoint, model, api_key, concurrency, max_model_len):
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=endpoint, api_key=api_key or "none", max_retries=2)
    gate = asyncio.Semaphore(concurrency)
    # room for the prompt on a small judge; GPT-4o and friends get 2048
    max_tokens = min(2048, max_model_len // 2) if max_model_len else 2048
    tally = {"unparseable": 0, "failed": 0}
    errors: list[str] = []

    async def ask(record: dict, trace: str, name: str) -> int | None:
        b = BEHAVIOURS[name]
        prompt = JUDGE_PROMPT.format(
            image_note=" that comes with an image" if record.get("n_images") else "",
            name=name.replace("_", " "),
            description=b.description,
            question=record.get("prompt", ""),
            trace=trace,
        )
        try:
            async with gate:
                r = await client.chat.completions.create(
                    model=model,
                    messages=[{"role": "user", "content": prompt}],
                    temperature=0.0,
                    max_tokens=max_tokens,
                )
        except Exception as e:  # counted and reported; the other judgments still count
            tally["failed"] += 1
            errors.append(f"{record.get('id')}/{name}: {type(e).__name__}: {str(e)[:200]}")
            return None
        count = parse_count(r.choices[0].message.content or "")
        tally["unparseable"] += count is None
        return count

    try:
        jobs = [ask(r, t, n) for r, t in zip(records, traces, strict=True) for n in BEHAVIOURS]
        values = await asyncio.gather(*jobs)
    finally:
        await client.close()
    if errors:
        log.warning("%d judge requests failed, first: %s", len(errors), errors[0])
    k = len(BEHAVIOURS)
    counts = [
        dict(zip(BEHAVIOURS, values[i : i + k], strict=True)) for i in range(0, len(values), k)
    ]
    return counts, tally


def parse_count(text: str) -> int | None:
    """The judge's ``<count>N</count>`` (the last one); ``None`` when it gave none (never 0: an
    unreadable judgment is not evidence that the behaviour is absent)."""
    found = re.findall(r"<count>\s*(\d+)\s*</count>", text, flags=re.IGNORECASE)
    return int(found[-1]) if found else None
