"""Ask an OpenAI-compatible endpoint every question of the benchmarks, score, record as it goes.

A run is a folder: ``run.json`` (endpoint, model, sampling) and one ``<bench>.jsonl`` per benchmark
with one record per answered question, appended and flushed as each answer arrives. Running again
into the same folder asks only the questions that have no record yet (resume); ``rescore`` re-grades
the recorded answers without asking again.

Scoring: each answer is graded by its benchmark's official rule (``ovr_core.grading``, the RL
reward's grader); with a judge (``RunConfig.judge``), the benchmarks whose official scorer is a
model judge are scored by it with the official prompts (``ovr_eval.judge``). Every record says
which scorer produced it (``scorer``: ``rules:<rule>`` or ``judge:<model>``), its status, and, when
judged, the rule verdict too (``rule_status``). Grader statuses are counted per benchmark.

Sampling: the paper does not state its evaluation settings. We use temperature 0.6, top-p 0.95
and up to 32,768 new tokens (DeepSeek-R1's published evaluation settings, the common choice for
long-reasoning models; the paper's RL ran to 48k tokens); every value is a command-line flag and is
saved in ``run.json``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ovr_core.format import THINK_CLOSE, THINK_OPEN
from ovr_core.grading import Verdict
from ovr_core.grading_pool import Grader
from ovr_core.wire import API_KEY_ENV, SAMPLING, reasoning_of
from ovr_eval.benchmarks import BENCHMARKS, Item, get_benchmark
from ovr_eval.judge import JudgeConfig, judge_record, judge_records
from ovr_eval.loading import load_items
from ovr_eval.progress import BenchProgress

log = logging.getLogger(__name__)


class EndpointError(RuntimeError):
    """The endpoint cannot be reached, refuses the key, or does not serve the model."""


@dataclass
class Sampling:
    """Generation settings sent with every question (see the module docstring for the choice)."""

    temperature: float = SAMPLING.temperature
    top_p: float = SAMPLING.top_p
    max_tokens: int | None = SAMPLING.max_tokens
    seed: int | None = None


@dataclass
class RunConfig:
    """One evaluation run: which endpoint and model, which benchmarks, where records go."""

    endpoint: str
    model: str
    benches: list[str]
    out: Path
    api_key: str | None = None
    data: dict[str, str] = field(default_factory=dict)  # bench -> local file/folder
    concurrency: int = 32
    limit: int | None = None
    sampling: Sampling = field(default_factory=Sampling)
    request_timeout: float = 3600.0
    retries: int = 2
    label: str | None = None
    progress: bool = True
    judge: JudgeConfig | None = None  # model judge for the benchmarks whose official scorer is one


@dataclass
class BenchResult:
    """What one benchmark's run did: questions, asked now, already recorded, failed, accuracy."""

    bench: str
    total: int
    asked: int
    skipped: int
    failed: int
    correct: int
    answered: int
    statuses: dict[str, int] = field(default_factory=dict)  # every record's status, counted
    scorer: str = ""

    @property
    def accuracy(self) -> float:
        return self.correct / self.answered if self.answered else 0.0


def run_eval(cfg: RunConfig, grader: Grader | None = None) -> list[BenchResult]:
    """Run every benchmark of ``cfg`` (resuming from the records already in ``cfg.out``)."""
    benches = [get_benchmark(b) for b in cfg.benches]
    items = {b.name: load_items(b, cfg.data.get(b.name), cfg.limit) for b in benches}
    info = check_endpoint(cfg.endpoint, cfg.model, cfg.api_key)
    if cfg.judge and any(b.judge for b in benches):
        cfg.judge.fit(check_endpoint(cfg.judge.endpoint, cfg.judge.model, cfg.judge.api_key))
    sampling = _fit_sampling(cfg.sampling, info.get("max_model_len"))
    cfg.out.mkdir(parents=True, exist_ok=True)
    _write_run_json(cfg, sampling)
    own = grader is None
    grader = grader or Grader()
    try:
        return asyncio.run(_run_all(cfg, sampling, items, grader))
    finally:
        if own:
            grader.close()


def check_endpoint(endpoint: str, model: str, api_key: str | None) -> dict:
    """GET ``/models``: the model's card, or an ``EndpointError`` that says what is wrong."""
    import httpx

    url = endpoint.rstrip("/") + "/models"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        r = httpx.get(url, headers=headers, timeout=10)
    except httpx.HTTPError as e:
        raise EndpointError(
            f"cannot reach {url}: {type(e).__name__}: {e}. Is the server running?"
        ) from e
    if r.status_code in (401, 403):
        raise EndpointError(
            f"{url} refused the API key (HTTP {r.status_code}); pass --api-key or set {API_KEY_ENV}"
        )
    if r.status_code != 200:
        raise EndpointError(f"{url} answered HTTP {r.status_code}: {r.text[:200]}")
    cards = r.json().get("data", [])
    for card in cards:
        if card.get("id") == model:
            return card
    raise EndpointError(
        f"{endpoint} does not serve {model!r}; it serves {[c.get('id') for c in cards]}"
    )


def read_records(path: Path) -> list[dict]:
    """The records of one benchmark file; a half-written last line (killed run) is dropped."""
    if not path.exists():
        return []
    records, lines = [], path.read_text(encoding="utf-8").splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if n == len(lines):
                log.warning("%s: dropping a half-written last line (interrupted run)", path)
                continue
            raise
    return records


async def _run_all(
    cfg: RunConfig, sampling: Sampling, items: dict, grader: Grader
) -> list[BenchResult]:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(
        base_url=cfg.endpoint,
        api_key=cfg.api_key or "none",
        timeout=cfg.request_timeout,
        max_retries=cfg.retries,
    )
    judge_client = None
    if cfg.judge:
        judge_client = AsyncOpenAI(
            base_url=cfg.judge.endpoint, api_key=cfg.judge.api_key or "none", max_retries=2
        )
    try:
        return [
            await _run_bench(cfg, sampling, name, its, client, grader, judge_client)
            for name, its in items.items()
        ]
    finally:
        await client.close()
        if judge_client is not None:
            await judge_client.close()


async def _run_bench(
    cfg, sampling, bench: str, items: list[Item], client, grader, judge_client=None
) -> BenchResult:
    path = cfg.out / f"{bench}.jsonl"
    done = read_records(path)
    _rewrite_if_truncated(path, done)
    seen = {r["id"] for r in done}
    todo = [it for it in items if it.id not in seen]
    correct = sum(r["correct"] for r in done)
    answered, failed = len(done), 0
    statuses = Counter(r.get("status") for r in done)
    protocol = BENCHMARKS[bench].judge if cfg.judge else None
    bar = BenchProgress(bench, len(items), len(items) - len(todo), enabled=cfg.progress)
    gate = asyncio.Semaphore(cfg.concurrency)
    # warnings (a failed request) print above the bar instead of breaking it
    with path.open("a", encoding="utf-8") as out, bar:

        async def one(item: Item) -> None:
            nonlocal correct, answered, failed
            async with gate:
                try:
                    record = await _ask(client, cfg.model, sampling, bench, item)
                except Exception as e:  # counted and retried by the next run, never recorded
                    failed += 1
                    log.warning("%s %s: request failed: %s", bench, item.id, e)
                    return
            verdict = (
                await asyncio.to_thread(
                    grader.grade_many,
                    [record["completion"]],
                    [item.gold],
                    [item.choices],
                    [item.rule],
                )
            )[0]
            apply_verdict(record, verdict)
            if protocol:
                await judge_record(judge_client, cfg.judge, protocol, record)
            statuses[record["status"]] += 1
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
            out.flush()
            correct += record["correct"]
            answered += 1
            bar.advance(f"acc {correct / answered:.1%}" + (f", {failed} failed" if failed else ""))

        await asyncio.gather(*(one(it) for it in todo))
    scorer = (
        cfg.judge.scorer
        if protocol
        else scorer_of(items[0].rule, items[0].choices)
        if items
        else ""
    )
    return BenchResult(
        bench,
        len(items),
        len(todo) - failed,
        len(items) - len(todo),
        failed,
        correct,
        answered,
        dict(statuses),
        scorer,
    )


def apply_verdict(record: dict, verdict: Verdict) -> dict:
    """Write a rule verdict into a record: status, extracted box, correct, and its scorer."""
    record.update(
        status=verdict.status,
        extracted=verdict.extracted,
        correct=verdict.status == "correct",
        scorer=scorer_of(record.get("rule"), record.get("choices")),
    )
    record.pop("judge", None)
    record.pop("rule_status", None)
    if verdict.detail:
        record["grader_detail"] = verdict.detail
    return record


def scorer_of(rule: dict | None, choices: list | None = None) -> str:
    """The name of the rule-based scorer a record was graded by (``rules:<rule>``)."""
    return f"rules:{(rule or {}).get('name') or ('choice' if choices else 'math')}"


async def _ask(client, model: str, sampling: Sampling, bench: str, item: Item) -> dict:
    content = [{"type": "image_url", "image_url": {"url": url}} for url in item.images]
    content.append({"type": "text", "text": item.prompt})
    extra = {"seed": sampling.seed} if sampling.seed is not None else {}
    start = time.perf_counter()
    response = await client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": content}],
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        max_tokens=sampling.max_tokens,
        **extra,
    )
    latency = time.perf_counter() - start
    choice = response.choices[0]
    message = choice.message.model_dump()
    reasoning = reasoning_of(message) or None
    answer = message.get("content") or ""
    usage = response.usage
    return {
        "id": item.id,
        "bench": bench,
        "group": item.group,
        "prompt": item.prompt,
        "n_images": len(item.images),
        "gold": item.gold,
        "choices": item.choices,
        "rule": item.rule,
        "meta": item.meta,
        "reasoning": reasoning,
        "answer": answer,
        "completion": join_completion(reasoning, answer, choice.finish_reason),
        "finish_reason": choice.finish_reason,
        "truncated": choice.finish_reason == "length",
        "prompt_tokens": usage.prompt_tokens if usage else None,
        "completion_tokens": usage.completion_tokens if usage else None,
        "latency_s": round(latency, 4),
    }


def join_completion(reasoning: str | None, answer: str, finish_reason: str | None) -> str:
    """The completion text in the OVR format, rebuilt from the endpoint's reasoning/content split.

    A server without a reasoning parser (or output that never opened ``<think>``) leaves everything
    in ``answer``, kept as is. Reasoning with no answer after it means the trace was never closed
    (cut off, or stopped inside it): it stays unclosed, so it grades ``unclosed``.
    """
    if reasoning is None:
        return answer
    if not answer.strip():
        return f"{THINK_OPEN}{reasoning}"
    return f"{THINK_OPEN}{reasoning}{THINK_CLOSE}\n\n{answer}"


def _fit_sampling(sampling: Sampling, max_model_len: int | None) -> Sampling:
    # vLLM rejects max_tokens beyond its context; None lets it use whatever the prompt leaves
    if sampling.max_tokens and max_model_len and sampling.max_tokens >= max_model_len:
        log.warning(
            "max_tokens %d >= the server's max_model_len %d: using the rest of the context",
            sampling.max_tokens,
            max_model_len,
        )
        return Sampling(sampling.temperature, sampling.top_p, None, sampling.seed)
    return sampling


def _write_run_json(cfg: RunConfig, sampling: Sampling) -> None:
    path = cfg.out / "run.json"
    meta = json.loads(path.read_text()) if path.exists() else {}
    new = {
        "label": cfg.label or meta.get("label") or cfg.model,
        "endpoint": cfg.endpoint,
        "model": cfg.model,
        "sampling": asdict(sampling),
        "requested_sampling": asdict(cfg.sampling),
        "benches": sorted(set(meta.get("benches", [])) | set(cfg.benches)),
        "data": {**meta.get("data", {}), **{k: str(v) for k, v in cfg.data.items()}},
        "started": meta.get("started", time.strftime("%Y-%m-%dT%H:%M:%S")),
    }
    if meta and meta.get("sampling") != new["sampling"]:
        log.warning(
            "resuming %s with sampling %s; it was recorded with %s",
            cfg.out,
            new["sampling"],
            meta.get("sampling"),
        )
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(new, indent=2))
    os.replace(tmp, path)


def _rewrite_if_truncated(path: Path, records: list[dict]) -> None:
    # a killed run can leave half a line: rewrite the file so the next append starts clean
    if not path.exists():
        return
    text = path.read_text(encoding="utf-8")
    if text and not text.endswith("\n"):
        write_records(path, records)


def write_records(path: Path, records: list[dict]) -> None:
    """Replace a benchmark file atomically with ``records``."""
    tmp = path.with_suffix(".jsonl.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def rescore(
    run_dir: Path, grader: Grader | None = None, judge: JudgeConfig | None = None
) -> dict[str, tuple[int, int]]:
    """Re-grade every recorded answer of a run in place (with ``judge``, the benchmarks whose
    official scorer is a model judge are judged); per benchmark (records, verdicts changed)."""
    own = grader is None
    grader = grader or Grader()
    changed = {}
    try:
        for path in sorted(Path(run_dir).glob("*.jsonl")):
            records = read_records(path)
            before = [r.get("status") for r in records]
            verdicts = grader.grade_many(
                [r["completion"] for r in records],
                [r["gold"] for r in records],
                [r.get("choices") for r in records],
                [r.get("rule") for r in records],
            )
            for r, v in zip(records, verdicts, strict=True):
                apply_verdict(r, v)
            protocol = BENCHMARKS[path.stem].judge if path.stem in BENCHMARKS else None
            if judge and protocol:
                judge_records(records, protocol, judge)
            write_records(path, records)
            n = sum(b != r["status"] for b, r in zip(before, records, strict=True))
            changed[path.stem] = (len(records), n)
    finally:
        if own:
            grader.close()
    return changed
