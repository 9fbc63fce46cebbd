"""The benchmarks of the paper's tables: where each lives, how it is asked, how it is graded.

Each benchmark is one ``Benchmark`` entry: its public dataset id (hub path, config, splits), the
paper's numbers, and a ``to_item`` function that turns one dataset row into an ``Item`` (prompt,
images, gold, options). The grading rule is shared with the RL reward (``ovr_train.rewards``):
math-verify on the ``\\boxed{}`` answer, or, when an item has ``choices``, the option letter.

Loading (local files in each dataset's public format, or the hub) is ``ovr_eval.loading``.
"""

from __future__ import annotations

import ast
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

PROMPT_MATH = (
    "{question}\n\nPlease reason step by step, and put your final answer within \\boxed{{}}."
)
PROMPT_CHOICE = (
    "{question}\n\n{options}\n\nPlease reason step by step, and put the letter of the correct "
    "option within \\boxed{{}}."
)
PROMPT_CHOICE_IN_IMAGE = (
    "{question}\n\nPlease reason step by step, and put the letter of the correct option within "
    "\\boxed{{}}."
)


class DatasetError(RuntimeError):
    """A benchmark could not be loaded: missing, unreachable, or not in the expected format."""


@dataclass
class Item:
    """One question as asked: the prompt text, its images, the gold answer and (MC) the options."""

    id: str
    prompt: str
    gold: str
    images: list = field(default_factory=list)
    choices: list[str] | None = None
    group: str | None = None  # DynaMath: the seed question whose variants must all be right


@dataclass
class Benchmark:
    """A benchmark of the paper: where it lives, how a row becomes an ``Item``, the paper's scores."""

    name: str
    title: str
    hub: tuple[str, str | None, tuple[str, ...]]  # path, config, splits
    to_item: Callable[[dict, int, str], Item | None]
    paper: dict[str, float | None]
    required: tuple[str, ...]
    modality: str = "vision"
    metric: str = "accuracy"  # or "worst": a group counts only when all its items are right
    note: str = ""


# --- rows to items -----------------------------------------------------------------------------


def _math500(row: dict, i: int, split: str) -> Item:
    return Item(
        str(row.get("unique_id", i)),
        PROMPT_MATH.format(question=row["problem"]),
        str(row["answer"]),
    )


def _aime(row: dict, i: int, split: str) -> Item:
    return Item(
        str(row.get("id", i)), PROMPT_MATH.format(question=row["problem"]), str(row["answer"])
    )


def _gpqa(row: dict, i: int, split: str) -> Item:
    options = [
        row["Correct Answer"],
        row["Incorrect Answer 1"],
        row["Incorrect Answer 2"],
        row["Incorrect Answer 3"],
    ]
    options = [str(o).strip() for o in options]
    # a fixed shuffle per question (GPQA ships the correct answer first)
    seed = int(hashlib.sha256(row["Question"].encode()).hexdigest(), 16)
    order = sorted(range(4), key=lambda k: (seed >> (8 * k)) & 0xFF)
    shuffled = [options[k] for k in order]
    gold = LETTERS[order.index(0)]
    return _choice_item(str(row.get("Record ID", i)), row["Question"], shuffled, gold, [])


def _mmlu(row: dict, i: int, split: str) -> Item:
    answer = row["answer"]
    gold = LETTERS[answer] if isinstance(answer, int) else str(answer)
    return _choice_item(
        f"{row.get('subject', '')}-{i}", row["question"], list(row["choices"]), gold, []
    )


def _mmlu_pro(row: dict, i: int, split: str) -> Item:
    return _choice_item(
        str(row.get("question_id", i)),
        row["question"],
        list(row["options"]),
        str(row["answer"]),
        [],
    )


def _mathvista(row: dict, i: int, split: str) -> Item:
    images = [_first(row, "decoded_image", "image")]
    question = row["question"]
    if row.get("unit"):
        question += f" (Unit: {row['unit']})"
    choices = row.get("choices")
    if row.get("question_type") == "multi_choice" and choices:
        choices = [str(c) for c in choices]
        gold = str(row["answer"])
        gold = LETTERS[choices.index(gold)] if gold in choices else gold
        return _choice_item(str(row.get("pid", i)), question, choices, gold, images)
    return Item(
        str(row.get("pid", i)), PROMPT_MATH.format(question=question), str(row["answer"]), images
    )


def _mathverse(row: dict, i: int, split: str) -> Item | None:
    if row.get("problem_version", "Vision Only") != "Vision Only":
        return None
    images = [row["image"]]
    question = row.get("question") or "Answer the question shown in the image."
    item_id = str(row.get("sample_index", i))
    if row.get("question_type") == "multi-choice":
        # the options are drawn in the image: letters are all we can map to
        return Item(
            item_id,
            PROMPT_CHOICE_IN_IMAGE.format(question=question),
            str(row["answer"]),
            images,
            list(LETTERS[:5]),
        )
    return Item(item_id, PROMPT_MATH.format(question=question), str(row["answer"]), images)


def _mathvision(row: dict, i: int, split: str) -> Item:
    images = [_first(row, "decoded_image", "image")]
    question = re.sub(r"<image\d*>", "", row["question"]).strip()
    options = [str(o) for o in (row.get("options") or [])]
    if options:
        return _choice_item(str(row.get("id", i)), question, options, str(row["answer"]), images)
    return Item(
        str(row.get("id", i)), PROMPT_MATH.format(question=question), str(row["answer"]), images
    )


def _dynamath(row: dict, i: int, split: str) -> Item:
    images = [_first(row, "decoded_image", "image")]
    seed_id = str(row.get("id", i))
    item_id = f"{split}-{seed_id}"
    gold = str(row["ground_truth"])
    if "choice" in str(row.get("answer_type", "")):
        return Item(
            item_id,
            PROMPT_CHOICE_IN_IMAGE.format(question=row["question"]),
            gold,
            images,
            list(LETTERS[:5]),
            seed_id,
        )
    return Item(item_id, PROMPT_MATH.format(question=row["question"]), gold, images, group=seed_id)


def _wemath(row: dict, i: int, split: str) -> Item:
    images = [_first(row, "image_path", "image")]
    question = f"{row['question']}\n\nOptions: {row['option']}"
    return Item(
        str(row.get("ID", i)),
        PROMPT_CHOICE_IN_IMAGE.format(question=question),
        str(row["answer"]),
        images,
        list(LETTERS[:5]),
    )


def _logicvista(row: dict, i: int, split: str) -> Item:
    images = [_first(row, "image", "imagename")]
    return Item(
        str(row.get("question_id", i)),
        PROMPT_CHOICE_IN_IMAGE.format(question=row["question"]),
        str(row["answer"]),
        images,
        list(LETTERS[:5]),
    )


def _mmmu_pro(row: dict, i: int, split: str) -> Item:
    options = row["options"]
    options = ast.literal_eval(options) if isinstance(options, str) else list(options)
    images = [row[f"image_{k}"] for k in range(1, 8) if row.get(f"image_{k}") is not None]
    question = re.sub(r"<image \d+>", "[image]", row["question"])
    return _choice_item(
        str(row.get("id", i)), question, [str(o) for o in options], str(row["answer"]), images
    )


def _charxiv_reasoning(row: dict, i: int, split: str) -> Item:
    return Item(
        f"r{i}",
        PROMPT_MATH.format(question=row["reasoning_q"]),
        str(row["reasoning_a"]),
        [row["image"]],
    )


def _choice_item(item_id: str, question: str, options: list[str], gold: str, images: list) -> Item:
    listed = "\n".join(f"({LETTERS[k]}) {o}" for k, o in enumerate(options))
    return Item(
        item_id, PROMPT_CHOICE.format(question=question, options=listed), gold, images, options
    )


def _first(row: dict, *names: str):
    for name in names:
        if row.get(name) is not None:
            return row[name]
    raise KeyError(names[0])


# --- the registry (the paper's table order) ------------------------------------------------------
# paper: Qwen2.5-VL-7B and OVR-7B-RL from the paper's tables; OVR-7B-ColdStart is left None until
# transcribed from the paper's figure (its numbers are only given as an image).


def _paper(rl: float | None, base: float | None = None, cold: float | None = None) -> dict:
    return {"Qwen2.5-VL-7B": base, "OVR-7B-ColdStart": cold, "OVR-7B-RL": rl}


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in [
        Benchmark(
            "aime24",
            "AIME24",
            ("HuggingFaceH4/aime_2024", None, ("train",)),
            _aime,
            _paper(63.5),
            ("problem", "answer"),
            "text",
            note="the paper may average several samples per question; one sample per question here",
        ),
        Benchmark(
            "aime25",
            "AIME25",
            ("math-ai/aime25", None, ("test",)),
            _aime,
            _paper(52.1),
            ("problem", "answer"),
            "text",
        ),
        Benchmark(
            "math500",
            "MATH500",
            ("HuggingFaceH4/MATH-500", None, ("test",)),
            _math500,
            _paper(95.3),
            ("problem", "answer"),
            "text",
        ),
        Benchmark(
            "gpqa",
            "GPQA-Diamond",
            ("Idavidrein/gpqa", "gpqa_diamond", ("train",)),
            _gpqa,
            _paper(49.8),
            ("Question", "Correct Answer", "Incorrect Answer 1"),
            "text",
            note="gated on the hub",
        ),
        Benchmark(
            "mmlu",
            "MMLU",
            ("cais/mmlu", "all", ("test",)),
            _mmlu,
            _paper(77.2),
            ("question", "choices", "answer"),
            "text",
        ),
        Benchmark(
            "mmlu-pro",
            "MMLU-Pro",
            ("TIGER-Lab/MMLU-Pro", None, ("test",)),
            _mmlu_pro,
            _paper(67.9),
            ("question", "options", "answer"),
            "text",
        ),
        Benchmark(
            "mathvista",
            "MathVista (testmini)",
            ("AI4Math/MathVista", None, ("testmini",)),
            _mathvista,
            _paper(72.1, 69.2),
            ("question", "answer"),
        ),
        Benchmark(
            "mathvision",
            "MathVision",
            ("MathLLMs/MathVision", None, ("test",)),
            _mathvision,
            _paper(51.8, 25.5),
            ("question", "answer"),
        ),
        Benchmark(
            "mathverse",
            "MathVerse (vision-only)",
            ("AI4Math/MathVerse", "testmini", ("testmini",)),
            _mathverse,
            _paper(54.6, 41.1),
            ("image", "answer"),
            note="official scoring uses a GPT judge; options drawn in the image are graded by letter only",
        ),
        Benchmark(
            "dynamath",
            "DynaMath (worst)",
            ("DynaMath/DynaMath_Sample", None, tuple(f"sample_variant{k}" for k in range(1, 11))),
            _dynamath,
            _paper(33.5),
            ("question", "ground_truth"),
            metric="worst",
        ),
        Benchmark(
            "wemath",
            "WeMath",
            ("We-Math/We-Math", None, ("testmini",)),
            _wemath,
            {**_paper(44.6), "OVR-7B-RL (loose)": 64.8},
            ("question", "option", "answer"),
            note="plain accuracy; the paper's 44.6 strict / 64.8 loose use WeMath's 4-D composite metric",
        ),
        Benchmark(
            "logicvista",
            "LogicVista",
            ("lscpku/LogicVista", None, ("test",)),
            _logicvista,
            _paper(54.8),
            ("question", "answer"),
            note="hub layout unverified: prefer a local copy",
        ),
        Benchmark(
            "mmmu-pro",
            "MMMU-Pro",
            ("MMMU/MMMU_Pro", "standard (10 options)", ("test",)),
            _mmmu_pro,
            _paper(50.2),
            ("question", "options", "answer"),
        ),
        Benchmark(
            "charxiv",
            "CharXiv (reasoning)",
            ("princeton-nlp/CharXiv", None, ("validation",)),
            _charxiv_reasoning,
            _paper(44.5),
            ("reasoning_q", "reasoning_a", "image"),
            note="official scoring uses a GPT-4o judge; math-verify here (descriptive 73.6 not run)",
        ),
    ]
}


def get_benchmark(name: str) -> Benchmark:
    """The registered benchmark ``name`` (clear error listing the known ones)."""
    if name not in BENCHMARKS:
        raise DatasetError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name]
