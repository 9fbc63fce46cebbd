"""RL data: rows of image(s) + question + gold answer as TRL's GRPO dataset, bad rows counted per
rule (refused or skipped, never silent), and the synthetic shape-counting set drawn once to disk."""

from __future__ import annotations

import logging
from pathlib import Path

from ovr_train.data import (
    DataError,
    Report,
    image_loads,
    images_of,
    load_rows,
    with_images,
    write_jsonl,
)

logger = logging.getLogger("ovr_train.rl")


def build_rl_dataset(sources: list[str], on_bad_rows: str, max_rows: int | None):
    """A datasets.Dataset of ``prompt`` (chat, image parts first), ``images``, ``answer`` and every
    other column of the rows (``choices``, ``precision``, …), which TRL hands to the rewards.

    Rows with no question, no gold answer, or an image that does not load are counted per rule
    (`ovr_train.data.Report`); they refuse the data (``error``) or are dropped with the count
    logged (``skip``).
    """
    from datasets import Dataset, Image, Sequence

    report = Report()
    rows = [
        row
        for source in sources
        for number, raw in enumerate(load_rows(source), start=1)
        if (row := rl_row(raw, source, number, report)) is not None
    ]
    if report.bad_rows:
        if on_bad_rows == "error":
            raise DataError(f"bad RL rows (on_bad_rows=skip drops them): {report.render()}")
        logger.warning("skipped bad RL rows: %s", report.render())
    if max_rows is not None:
        rows = rows[:max_rows]
    if not rows:
        raise SystemExit("ovr-train rl: no data; set dataset: [FILE, …] in the recipe")
    columns = list(dict.fromkeys(key for row in rows for key in row))
    try:
        dataset = Dataset.from_list([{key: row.get(key) for key in columns} for row in rows])
    except (TypeError, ValueError) as exc:  # pyarrow: one column with values of several types
        raise DataError(
            f"RL data columns of mixed types ({exc}); make each column one type"
        ) from None
    if any(r["images"] for r in rows):
        dataset = dataset.cast_column("images", Sequence(Image()))
    else:
        dataset = dataset.remove_columns("images")
    return dataset


QUESTION_KEYS = ("question", "problem", "prompt")
ANSWER_KEYS = ("answer", "gold", "solution")


def rl_row(raw: dict, source: str, number: int, report) -> dict | None:
    """One RL training row, or None with its broken rules counted in ``report``."""
    raw = raw if isinstance(raw, dict) else {}
    report.rows += 1
    question = str(next((raw[k] for k in QUESTION_KEYS if raw.get(k)), "")).strip()
    answer = str(next((raw[k] for k in ANSWER_KEYS if raw.get(k)), "")).strip()
    images = images_of(raw)
    failed = [
        rule
        for rule, broken in (
            ("missing_question", not question),
            ("missing_answer", not answer),
            ("bad_image", any(not image_loads(i) for i in images)),
        )
        if broken
    ]
    for rule in failed:
        report.add(rule, source, number)
    if failed:
        return None
    consumed = {*QUESTION_KEYS, *ANSWER_KEYS, "image", "images"}
    return {
        "prompt": [{"role": "user", "content": with_images(question, raw)}],
        "images": [str(i) for i in images],
        "answer": answer,
        **{key: value for key, value in raw.items() if key not in consumed},
    }


def materialise_sources(script_args, output_dir: str) -> list[str]:
    """Data sources as paths; 'synthetic-shapes:N' is drawn once to ``output_dir/data/``."""
    from ovr_core.synthetic import shape_counting_examples

    sources = []
    for source in script_args.dataset:
        if source.startswith("synthetic-shapes:"):
            n = int(source.split(":", 1)[1])
            stem = Path(output_dir) / "data" / f"shapes2x2-{n}-seed{script_args.synthetic_seed}"
            path = stem.with_suffix(".jsonl")
            if not path.exists():
                stem.mkdir(parents=True, exist_ok=True)
                rows = []
                for i, ex in enumerate(shape_counting_examples(n, seed=script_args.synthetic_seed)):
                    image = stem / f"{i:05d}.png"
                    ex["image"].save(image)
                    rows.append(
                        {
                            "image": str(image.resolve()),
                            "question": ex["question"],
                            "answer": ex["gold"],
                        }
                    )
                write_jsonl(rows, path)
            source = str(path)
        sources.append(source)
    return sources
