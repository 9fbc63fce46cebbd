"""Behaviour rates of a run's traces: the rule-based detector, or an LLM judge, per benchmark.

The judge follows the paper's protocol (GPT-4o with one prompt per behaviour, answering with a count
in ``<count>N</count>``) against any OpenAI-compatible endpoint; the rules come from
``ovr_serve.behaviours`` (the same module the web UI uses to tag a trace).
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from ovr_serve.behaviours import (
    BEHAVIOURS,
    count_behaviours,
    emergence_rates,
    find_behaviours,
    highlight,
    transfer_ratios,
)
from ovr_train.eval.run import read_records

JUDGE_PROMPT = """Below is a model's reasoning trace for a problem{image_note}.

Count how many distinct times the trace shows this behaviour:
{name}: the reasoning {description}.

Count only clear instances, not mere mentions of the words. Answer with the count alone, as <count>N</count>.

Problem:
{question}

Reasoning trace:
{trace}"""


def behaviour_table(run_dir: Path, judge: dict | None = None) -> dict:
    """Per benchmark: traces, emergence rate per behaviour, transfer ratios, and the counts used."""
    out = {}
    for path in sorted(Path(run_dir).glob("*.jsonl")):
        records = [r for r in read_records(path) if r.get("reasoning") or r.get("completion")]
        if not records:
            continue
        traces = [r.get("reasoning") or r["completion"] for r in records]
        counts = (
            judge_counts(records, traces, **judge)
            if judge
            else [count_behaviours(t) for t in traces]
        )
        rates = emergence_rates(counts)
        out[path.stem] = {
            "n": len(records),
            "rates": rates,
            "transfer": transfer_ratios(rates),
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
) -> list[dict[str, int]]:
    """Per trace, each behaviour's count as an LLM judge gives it (one request per behaviour)."""
    return asyncio.run(_judge_all(records, traces, endpoint, model, api_key, concurrency))


async def _judge_all(records, traces, endpoint, model, api_key, concurrency):
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=endpoint, api_key=api_key or "none")
    gate = asyncio.Semaphore(concurrency)

    async def ask(record: dict, trace: str, name: str) -> int:
        b = BEHAVIOURS[name]
        prompt = JUDGE_PROMPT.format(
            image_note=" that comes with an image" if record.get("n_images") else "",
            name=name.replace("_", " "),
            description=b.description,
            question=record.get("prompt", ""),
            trace=trace,
        )
        async with gate:
            r = await client.chat.completions.create(
                model=model,
                messages=[{"role": "user", "content": prompt}],
                temperature=0.0,
                max_tokens=2048,
            )
        return parse_count(r.choices[0].message.content or "")

    try:
        counts = []
        for record, trace in zip(records, traces, strict=True):
            values = await asyncio.gather(*(ask(record, trace, n) for n in BEHAVIOURS))
            counts.append(dict(zip(BEHAVIOURS, values, strict=True)))
        return counts
    finally:
        await client.close()


def parse_count(text: str) -> int:
    """The judge's ``<count>N</count>`` (the last one); 0 when it gave none."""
    found = re.findall(r"<count>\s*(\d+)\s*</count>", text)
    return int(found[-1]) if found else 0
