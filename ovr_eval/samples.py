"""Small local benchmark files in the public datasets' own formats, made from synthetic questions.

For tests and benches that must not download anything: ``write_sample_benchmarks(folder)`` writes
``math500/test.jsonl``, ``mathvista/testmini.jsonl``, ``mathverse/testmini.jsonl`` and
``mathvision/test.jsonl`` (images drawn with Pillow, stored as relative paths as the public
releases do), and returns ``{bench: folder}`` ready for ``--data``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from ovr_core.synthetic import arithmetic_example, shape_counting_example


def write_sample_benchmarks(folder: str | Path, n: int = 8, seed: int = 0) -> dict[str, Path]:
    """Write ``n`` questions per benchmark under ``folder``; return the folder of each."""
    folder = Path(folder)
    rng = random.Random(seed)
    writers = {
        "math500": _math500,
        "mathvista": _mathvista,
        "mathverse": _mathverse,
        "mathvision": _mathvision,
    }
    out = {}
    for name, write in writers.items():
        d = folder / name
        (d / "images").mkdir(parents=True, exist_ok=True)
        rows = write(rng, n, d)
        split = {"math500": "test", "mathvision": "test"}.get(name, "testmini")
        with (d / f"{split}.jsonl").open("w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        out[name] = d
    return out


def _math500(rng: random.Random, n: int, d: Path) -> list[dict]:
    rows = []
    for i in range(n):
        ex = arithmetic_example(rng)
        rows.append(
            {
                "problem": ex["question"],
                "solution": f"{ex['reasoning']} {ex['answer']}",
                "answer": ex["gold"],
                "subject": "Prealgebra",
                "level": 1,
                "unique_id": f"test/prealgebra/{i}.json",
            }
        )
    return rows


def _image(rng: random.Random, d: Path, name: str) -> tuple[str, dict]:
    ex = shape_counting_example(rng)
    ex["image"].save(d / "images" / name)
    return f"images/{name}", ex


def _mathvista(rng: random.Random, n: int, d: Path) -> list[dict]:
    rows = []
    for i in range(n):
        path, ex = _image(rng, d, f"{i + 1}.png")
        multi = i % 2 == 1
        choices = ["1", "2", "3", "4"] if multi else None
        rows.append(
            {
                "pid": str(i + 1),
                "question": ex["question"],
                "image": path,
                "decoded_image": None,
                "choices": choices,
                "unit": None,
                "precision": None,
                "answer": ex["gold"],
                "question_type": "multi_choice" if multi else "free_form",
                "answer_type": "text" if multi else "integer",
                "metadata": {"source": "synthetic", "task": "counting"},
                "query": ex["question"],
            }
        )
    return rows


def _mathverse(rng: random.Random, n: int, d: Path) -> list[dict]:
    rows = []
    for i in range(n):
        path, ex = _image(rng, d, f"{i}.png")
        multi = i % 2 == 1
        answer = "ABC"[int(ex["gold"]) - 1] if multi else ex["gold"]
        question = (
            "According to the question shown in the image, please directly answer the question."
        )
        for version in ("Vision Only", "Text Dominant"):  # only the vision-only version is asked
            rows.append(
                {
                    "sample_index": f"{i}-{version[:1]}",
                    "problem_index": str(i),
                    "problem_version": version,
                    "question": question if version == "Vision Only" else ex["question"],
                    "image": path,
                    "answer": answer,
                    "question_type": "multi-choice" if multi else "free-form",
                    "metadata": {"source": "synthetic"},
                    "query_wo": question,
                    "query_cot": question,
                    "question_for_eval": ex["question"],
                }
            )
    return rows


def _mathvision(rng: random.Random, n: int, d: Path) -> list[dict]:
    rows = []
    for i in range(n):
        path, ex = _image(rng, d, f"{i + 1}.jpg")
        multi = i % 2 == 0
        rows.append(
            {
                "id": str(i + 1),
                "question": f"<image1>\n{ex['question']}",
                "options": ["1", "2", "3", "4", "5"] if multi else [],
                "image": path,
                "decoded_image": None,
                "answer": "ABCDE"[int(ex["gold"]) - 1] if multi else ex["gold"],
                "solution": None,
                "level": 1,
                "subject": "counting",
            }
        )
    return rows
