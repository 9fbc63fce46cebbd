"""Training data: load the common shapes, bring each row to the OVR chat format, report bad rows.

    ovr-train data check FILE [FILE…] [--model DIR --max-length N]

Accepted row shapes (JSONL, JSON, Parquet, or a hub dataset by name):
- ``messages``: OpenAI-style turns (``conversations`` with ``from``/``value`` too); the last turn is the
  assistant's. A ``reasoning_content``/``reasoning`` field on that turn becomes the ``<think>`` part.
- ``prompt`` + ``response`` (or ``completion``): plain strings.
- ``question`` + ``reasoning`` + ``answer``: the reasoning becomes the ``<think>`` part; an answer with no
  ``\\boxed{}`` is boxed whole.
Optional ``image``/``images`` columns (paths) make a multimodal row.

Every row becomes ``{"prompt": [turns…], "completion": [{"role": "assistant", "content": …}]}`` with
the content written as ``format_completion(reasoning, answer)``, so TRL trains on the completion
(the assistant turn) only. A row that breaks a rule is counted under that rule with its row number;
training refuses such a file unless told to skip bad rows, and then says how many it skipped.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ovr_core.format import (
    THINK_CLOSE,
    THINK_OPEN,
    boxed_contents,
    format_completion,
    split_reasoning,
)
from ovr_core.grading import wrap_gold
from ovr_core.wire import reasoning_of
from ovr_train.checkpoints import atomic_dir, atomic_file

# Rule name -> what it means; the order is the order of the report.
RULES = {
    "unknown_shape": "no messages, prompt/response or question/reasoning/answer columns",
    "missing_question": "no user turn, or an empty one",
    "missing_reasoning": "no <think> reasoning (or it is empty)",
    "unclosed_think": "<think> opened but never closed, or tags nested/repeated",
    "missing_answer": "nothing after </think>",
    "missing_boxed": "the answer has no \\boxed{} final result",
    "bad_image": "an image that does not exist or does not load",
    "over_max_length": "longer than max_length tokens (prompt + completion)",
}


class DataError(ValueError):
    """A data file that training refuses; the message is the per-rule report."""


@dataclass
class Report:
    """Per-rule failures of one or more files: rule -> list of (file, row number), rows from 1."""

    rows: int = 0
    failures: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    tokens: int = 0  # tokens of the kept rows, when a tokenizer measured them

    def to_json(self) -> str:
        """The report as JSON (kept beside a prepared dataset)."""
        return json.dumps({"rows": self.rows, "failures": self.failures, "tokens": self.tokens})

    @classmethod
    def from_json(cls, text: str) -> Report:
        data = json.loads(text)
        failures = {rule: [tuple(w) for w in places] for rule, places in data["failures"].items()}
        return cls(rows=data["rows"], failures=failures, tokens=data.get("tokens", 0))

    @property
    def bad_rows(self) -> int:
        """Rows that break at least one rule."""
        return len({where for places in self.failures.values() for where in places})

    def add(self, rule: str, source: str, row: int) -> None:
        self.failures.setdefault(rule, []).append((source, row))

    def render(self, max_rows_listed: int = 10) -> str:
        """Human-readable report: one line per broken rule with its count and first row numbers."""
        lines = [f"{self.rows} rows, {self.bad_rows} bad"]
        for rule in RULES:
            places = self.failures.get(rule, [])
            if not places:
                continue
            shown = ", ".join(f"{Path(src).name}:{row}" for src, row in places[:max_rows_listed])
            more = (
                f" (+{len(places) - max_rows_listed} more)" if len(places) > max_rows_listed else ""
            )
            lines.append(f"  {rule:<17} {len(places):>6}  {RULES[rule]}; rows {shown}{more}")
        return "\n".join(lines)


def load_rows(source: str) -> Iterable[dict]:
    """Rows of a local ``.jsonl``/``.json``/``.parquet`` file, or of a hub dataset (``name[:split]``)."""
    path = Path(source)
    if path.suffix == ".jsonl":
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError:
                        yield {}  # counted as unknown_shape at its row number
    elif path.suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        yield from data if isinstance(data, list) else data.get("data", [])
    elif path.suffix == ".parquet":
        import pyarrow.parquet as pq

        yield from pq.read_table(path).to_pylist()
    elif path.exists():
        raise DataError(f"{source}: unsupported file type (use .jsonl, .json or .parquet)")
    else:
        from datasets import load_dataset

        name, _, split = source.partition(":")
        yield from load_dataset(name, split=split or "train")


def normalize_row(row: dict) -> tuple[dict | None, list[str]]:
    """One row in the OVR chat format, or None, plus the rules it breaks (tokenizer-free ones)."""
    prompt, reasoning, answer, raw = _read_shape(row)
    if prompt is None:
        return None, ["unknown_shape"]
    problems = []
    if not any(t["role"] == "user" and _text(t["content"]).strip() for t in prompt):
        problems.append("missing_question")
    if raw is not None:  # a completion given whole: read it with the format module's rule
        if THINK_CLOSE in raw and not raw.lstrip().startswith(THINK_OPEN):
            raw = f"{THINK_OPEN}\n{raw.lstrip()}"  # R1-style traces whose template opened <think>
        split = split_reasoning(raw)
        if (
            split.had_reasoning
            and not split.closed
            or THINK_OPEN in split.answer
            or THINK_CLOSE in split.answer
        ):
            problems.append("unclosed_think")
        reasoning, answer = split.reasoning, split.answer
    if not (reasoning or "").strip():
        problems.append("missing_reasoning")
    if not (answer or "").strip():
        problems.append("missing_answer")
    elif not boxed_contents(answer):
        problems.append("missing_boxed")
    images = images_of(row)
    for image in images:
        if not image_loads(image):
            problems.append("bad_image")
            break
    if problems:
        return None, problems
    example = {
        "prompt": prompt,
        "completion": [{"role": "assistant", "content": format_completion(reasoning, answer)}],
    }
    if images:
        example["images"] = images
    return example, []


def check_rows(
    sources: list[str],
    tokenizer=None,
    max_length: int | None = None,
    limit: int | None = None,
) -> tuple[list[dict], Report]:
    """Normalise every row of ``sources``; good examples in order, and the report of bad ones."""
    report = Report()
    examples = []
    for source in sources:
        for number, row in enumerate(load_rows(source), start=1):
            if limit is not None and report.rows >= limit:
                break
            report.rows += 1
            example, problems = normalize_row(row if isinstance(row, dict) else {})
            if example is not None and tokenizer is not None and max_length is not None:
                if _token_length(tokenizer, example) > max_length:
                    problems = ["over_max_length"]
                    example = None
            for rule in problems:
                report.add(rule, source, number)
            if example is not None:
                examples.append(example)
    return examples, report


def build_dataset(
    sources: list[str], on_bad_rows: str = "error", tokenizer=None, max_length=None, limit=None
):
    """A ``datasets.Dataset`` of normalised examples; bad rows raise (``error``) or are skipped loudly."""
    from datasets import Dataset

    if on_bad_rows not in ("error", "skip"):
        raise ValueError(f"on_bad_rows must be 'error' or 'skip', not {on_bad_rows!r}")
    examples, report = check_rows(sources, tokenizer, max_length, limit)
    if report.bad_rows and on_bad_rows == "error":
        raise DataError(
            "bad rows in the training data (fix them, or set on_bad_rows=skip to train without them):\n"
            + report.render()
        )
    if not examples:
        raise DataError("no usable rows in the training data:\n" + report.render())
    dataset = Dataset.from_list(examples)
    if "images" in dataset.column_names:
        from datasets import Image, List

        # decoded to PIL by datasets, so the processor never decodes paths itself
        dataset = dataset.cast_column("images", List(Image()))
    return dataset, report


def prepare_dataset(
    sources: list[str],
    on_bad_rows: str,
    tokenizer,
    max_length: int | None,
    cache_dir: str | os.PathLike,
    limit: int | None = None,
    num_proc: int | None = None,
    main_process_first=None,
):
    """The training set prepared once and cached on disk; every rank then memory-maps the same copy.

    Pass ``main_process_first=training_args.main_process_first``: each node's main process streams the
    rows (normalised one at a time to a JSONL file, never all in RAM), measures token lengths in
    ``num_proc`` processes, writes an Arrow dataset and its `Report` to ``cache_dir/<key>/``; the
    other ranks wait, then read it. The key covers the sources (path, size, mtime), the tokenizer,
    ``max_length`` and ``limit``, so a change of any of them prepares afresh.
    Returns ``(dataset, report, path)``; bad rows raise or are skipped as in `build_dataset`.
    """
    from datasets import load_from_disk

    if on_bad_rows not in ("error", "skip"):
        raise ValueError(f"on_bad_rows must be 'error' or 'skip', not {on_bad_rows!r}")
    path = Path(cache_dir) / _cache_key(sources, tokenizer, max_length, limit)
    first = main_process_first or (lambda desc: contextlib.nullcontext())
    with first(desc="prepare the training data"):
        if not (path / "report.json").exists():
            _prepare_into(path, sources, tokenizer, max_length, limit, num_proc)
    report = Report.from_json((path / "report.json").read_text())
    if report.bad_rows and on_bad_rows == "error":
        raise DataError(
            "bad rows in the training data (fix them, or set on_bad_rows=skip to train without them):\n"
            + report.render()
        )
    if report.rows == report.bad_rows:
        raise DataError("no usable rows in the training data:\n" + report.render())
    return load_from_disk(str(path / "dataset")), report, path


def _cache_key(sources, tokenizer, max_length, limit) -> str:
    import hashlib

    described = []
    for source in sources:
        stat = Path(source).stat() if Path(source).exists() else None
        described.append(
            [
                str(Path(source).resolve()) if stat else source,
                stat and stat.st_size,
                stat and stat.st_mtime_ns,
            ]
        )
    name = getattr(tokenizer, "name_or_path", None) if tokenizer is not None else None
    size = len(tokenizer) if tokenizer is not None else None
    blob = json.dumps([PREPARED_FORMAT, described, name, size, max_length, limit])
    return "prepared-" + hashlib.sha256(blob.encode()).hexdigest()[:16]


PREPARED_FORMAT = 1  # bump when the prepared layout changes


def _prepare_into(path: Path, sources, tokenizer, max_length, limit, num_proc) -> None:
    """Stream, normalise, measure and write the dataset and report to ``path`` (atomically; when
    another node's main process on a shared filesystem finished first, its copy is kept)."""
    with atomic_dir(path, first_wins=True) as tmp:
        report = Report()
        with open(tmp / "examples.jsonl", "w", encoding="utf-8") as fh:
            for source, number, example in _stream_examples(sources, limit, report):
                fh.write(json.dumps({**example, "_source": source, "_row": number}) + "\n")
        if report.rows > report.bad_rows:
            _write_dataset(tmp, tokenizer, max_length, num_proc, report)
        (tmp / "examples.jsonl").unlink()
        (tmp / "report.json").write_text(report.to_json())  # its presence marks a whole cache


def _write_dataset(tmp: Path, tokenizer, max_length, num_proc, report: Report) -> None:
    """``tmp/examples.jsonl`` as an Arrow dataset in ``tmp/dataset``, over-long rows reported."""
    import shutil

    from datasets import Dataset

    dataset = Dataset.from_json(str(tmp / "examples.jsonl"), cache_dir=str(tmp / "arrow"))
    if tokenizer is not None and max_length is not None:
        dataset = dataset.map(
            lambda ex: {"_length": _token_length(tokenizer, ex)}, num_proc=num_proc
        )
        lengths = dataset["_length"]
        for src, row, n in zip(dataset["_source"], dataset["_row"], lengths, strict=True):
            if n > max_length:
                report.add("over_max_length", src, row)
        report.tokens = sum(n for n in lengths if n <= max_length)
        dataset = dataset.filter(lambda ex: ex["_length"] <= max_length, num_proc=num_proc)
    dataset = dataset.remove_columns(
        [c for c in ("_source", "_row", "_length") if c in dataset.column_names]
    )
    if "images" in dataset.column_names:
        from datasets import Image, List

        dataset = dataset.cast_column("images", List(Image()))
    dataset.save_to_disk(str(tmp / "dataset"))
    shutil.rmtree(tmp / "arrow", ignore_errors=True)


def _stream_examples(sources, limit, report: Report):
    """(source, row number, example) of each good row, counting bad ones in ``report``."""
    for source in sources:
        for number, row in enumerate(load_rows(source), start=1):
            if limit is not None and report.rows >= limit:
                return
            report.rows += 1
            example, problems = normalize_row(row if isinstance(row, dict) else {})
            for rule in problems:
                report.add(rule, source, number)
            if example is not None:
                yield source, number, example


def write_jsonl(rows: Iterable[dict], path: str | os.PathLike) -> Path:
    """Write rows as JSONL, whole or not at all (generated data files, tests)."""
    path = Path(path)
    with atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def _read_shape(row: dict):
    """(prompt turns, reasoning, answer, raw completion) from any accepted shape; prompt None if none."""
    system = [{"role": "system", "content": row["system"]}] if row.get("system") else []
    turns = row.get("messages") or row.get("conversations")
    if isinstance(row.get("prompt"), list) and isinstance(row.get("completion"), list):
        turns = row["prompt"] + row["completion"]  # TRL's conversational prompt-completion
    if isinstance(turns, list) and turns:
        turns = [_turn(t) for t in turns]
        if turns[-1]["role"] != "assistant":
            return turns, None, None, ""
        last = turns[-1]
        thought = reasoning_of(last)
        content = _text(last["content"])
        prompt = system + [{"role": t["role"], "content": t["content"]} for t in turns[:-1]]
        if thought:
            return prompt, thought, content, None
        return prompt, None, None, content
    question = row.get("prompt") if isinstance(row.get("prompt"), str) else row.get("question")
    if isinstance(question, str):
        prompt = system + [{"role": "user", "content": with_images(question, row)}]
        if "reasoning" in row and "answer" in row:
            answer = str(row["answer"] or "")
            if answer.strip() and not boxed_contents(answer):
                answer = wrap_gold(answer)
            return prompt, str(row["reasoning"] or ""), answer, None
        completion = row.get("response", row.get("completion"))
        if isinstance(completion, str):
            return prompt, None, None, completion
    return None, None, None, None


def _turn(turn: dict) -> dict:
    """An OpenAI-style turn from OpenAI or ShareGPT (``from``/``value``) spelling."""
    if "from" in turn:
        role = {"human": "user", "gpt": "assistant"}.get(turn["from"], turn["from"])
        return {"role": role, "content": turn.get("value", "")}
    return dict(turn)


def with_images(question: str, row: dict):
    """The user content: plain text, or image parts then the text when the row has images."""
    images = images_of(row)
    if not images:
        return question
    return [{"type": "image"} for _ in images] + [{"type": "text", "text": question}]


def _text(content) -> str:
    """The text of a message content (a string or a list of typed parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def images_of(row: dict) -> list:
    """The row's image(s) (``image`` or ``images``: paths or datasets dicts) as a list."""
    images = row.get("images", row.get("image"))
    if images is None:
        return []
    return list(images) if isinstance(images, list | tuple) else [images]


def image_loads(image) -> bool:
    """True when the image (a path, or a datasets ``{"bytes", "path"}`` dict) decodes."""
    import io

    from PIL import Image

    try:
        if isinstance(image, dict):
            source = io.BytesIO(image["bytes"]) if image.get("bytes") else image.get("path")
        else:
            source = image
        with Image.open(source) as img:
            img.load()
        return True
    except Exception:  # noqa: BLE001 - any decoding failure is the rule's failure
        return False


def _token_length(tokenizer, example: dict) -> int:
    """Tokens of prompt + completion as the chat template renders them."""
    text = tokenizer.apply_chat_template(example["prompt"] + example["completion"], tokenize=False)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def cli(argv: list[str]) -> int:
    """``ovr-train data check FILE…``: exit 0 when every row is good, 1 when some are bad."""
    import argparse

    parser = argparse.ArgumentParser(prog="ovr-train data", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="validate files and report bad rows per rule")
    check.add_argument("files", nargs="+", help="JSONL/JSON/Parquet files or hub dataset names")
    check.add_argument(
        "--model", help="checkpoint whose tokenizer measures length (for --max-length)"
    )
    check.add_argument("--max-length", type=int, help="flag rows longer than this many tokens")
    check.add_argument("--rows", type=int, default=10, help="row numbers listed per rule")
    args = parser.parse_args(argv)
    tokenizer = None
    if args.max_length and args.model:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.model)
    elif args.max_length:
        parser.error("--max-length needs --model (the tokenizer that measures length)")
    try:
        _, report = check_rows(args.files, tokenizer, args.max_length)
    except (DataError, FileNotFoundError) as exc:
        print(f"ovr-train data: {exc}")
        return 2
    print(report.render(args.rows))
    return 1 if report.bad_rows else 0
