"""The benchmarks of the paper's tables: where each lives, how it is asked, how it is graded.

Each benchmark is one ``Benchmark`` entry: its public dataset id (hub path, config, splits), the
paper's numbers, a ``to_item`` function that turns one dataset row into an ``Item`` (prompt,
images, gold, options, grading rule), and the answer rule of its **official scorer**
(``official``, with the ``source`` it follows). The rules themselves live in ``ovr_core.grading``
(``RULES``), shared with the RL reward; every item names its rule (``Item.rule``). Where the
official scorer is a model judge (``judge``: MathVerse, CharXiv, MathVista's extraction step),
``ovr-eval run/rescore --judge-endpoint`` runs it with the official prompts (``ovr_eval.judge``);
without one the rule-based scorer runs, and every record says which scorer produced it.

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
    group: str | None = None  # DynaMath: the seed question; WeMath: the composite problem
    rule: dict | None = None  # ovr_core.grading rule: {"name": ..., per-row fields}
    meta: dict = field(
        default_factory=dict
    )  # row fields a scorer needs (WeMath key, judge question)


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
    metric: str = "accuracy"  # "worst": a group counts only when all its items are right;
    # "wemath": WeMath's four-dimensional strict/loose scores
    note: str = ""
    official: str = ""  # the official scorer's answer rule, in words
    source: str = ""  # where that rule is published (the code we read)
    judge: str | None = None  # ovr_eval.judge protocol when the official scorer is a model judge


# --- rows to items -----------------------------------------------------------------------------


def _math500(row: dict, i: int, split: str) -> Item:
    return Item(
        str(row.get("unique_id", i)),
        PROMPT_MATH.format(question=row["problem"]),
        str(row["answer"]),
    )


def _aime(row: dict, i: int, split: str) -> Item:
    item = Item(
        str(row.get("id", i)), PROMPT_MATH.format(question=row["problem"]), str(row["answer"])
    )
    item.rule = {"name": "math", "sentences": "answer_colon"}  # no box: "Answer: 204"
    return item


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
    item = _choice_item(str(row.get("Record ID", i)), row["Question"], shuffled, gold, [])
    item.rule = {"name": "choice", "sentences": "answer_colon"}  # simple-evals: "Answer: X"
    return item


def _mmlu(row: dict, i: int, split: str) -> Item:
    answer = row["answer"]
    gold = LETTERS[answer] if isinstance(answer, int) else str(answer)
    item = _choice_item(
        f"{row.get('subject', '')}-{i}", row["question"], list(row["choices"]), gold, []
    )
    item.rule = {"name": "choice", "sentences": "answer_colon"}  # simple-evals: "Answer: X"
    return item


def _mmlu_pro(row: dict, i: int, split: str) -> Item:
    item = _choice_item(
        str(row.get("question_id", i)),
        row["question"],
        list(row["options"]),
        str(row["answer"]),
        [],
    )
    item.rule = {"name": "choice", "sentences": "answer_is"}  # "answer is (X)", "Answer: X"
    return item


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
        item = _choice_item(str(row.get("pid", i)), question, choices, gold, images)
    else:
        prompt = PROMPT_MATH.format(question=question)
        item = Item(str(row.get("pid", i)), prompt, str(row["answer"]), images)
    item.rule = {
        "name": "mathvista",
        "answer_type": row.get("answer_type") or "text",
        "precision": row.get("precision"),
    }
    item.meta = {"question": question, "question_type": row.get("question_type")}
    return item


def _mathverse(row: dict, i: int, split: str) -> Item | None:
    if row.get("problem_version", "Vision Only") != "Vision Only":
        return None
    images = [row["image"]]
    question = row.get("question") or "Answer the question shown in the image."
    item_id = str(row.get("sample_index", i))
    meta = {"question": row.get("question_for_eval") or question}
    gold = str(row["answer"])
    if row.get("question_type") == "multi-choice":
        # the options are drawn in the image: letters are all we can map to
        prompt = PROMPT_CHOICE_IN_IMAGE.format(question=question)
        return Item(item_id, prompt, gold, images, _letters_for(gold), meta=meta)
    prompt = PROMPT_MATH.format(question=question)
    return Item(item_id, prompt, gold, images, rule={"name": "math"}, meta=meta)


def _mathvision(row: dict, i: int, split: str) -> Item:
    images = [_first(row, "decoded_image", "image")]
    question = re.sub(r"<image\d*>", "", row["question"]).strip()
    options = [str(o) for o in (row.get("options") or [])]
    if options:
        item = _choice_item(str(row.get("id", i)), question, options, str(row["answer"]), images)
    else:
        prompt = PROMPT_MATH.format(question=question)
        item = Item(str(row.get("id", i)), prompt, str(row["answer"]), images)
    # MATH-V lower-cases both sides; without a box it reads "the (final) answer is …"
    item.rule = {"name": "mathvision", "fold_case": True, "sentences": "mathv"}
    return item


def _dynamath(row: dict, i: int, split: str) -> Item:
    images = [_first(row, "decoded_image", "image")]
    seed_id = str(row.get("id", i))
    item_id = f"{split}-{seed_id}"
    gold = str(row["ground_truth"])
    kind = str(row.get("answer_type", ""))
    rule = {"name": "dynamath", "answer_type": kind, "fold_case": True}  # it lower-cases
    if "choice" in kind:
        prompt = PROMPT_CHOICE_IN_IMAGE.format(question=row["question"])
        return Item(item_id, prompt, gold, images, _letters_for(gold), seed_id, rule)
    prompt = PROMPT_MATH.format(question=row["question"])
    return Item(item_id, prompt, gold, images, group=seed_id, rule=rule)


def _wemath(row: dict, i: int, split: str) -> Item:
    images = [_first(row, "image_path", "image")]
    question = f"{row['question']}\n\nOptions: {row['option']}"
    key = str(row.get("key") or "")
    problem = str(row.get("ID", i))
    options = wemath_options(str(row["option"]))
    return Item(
        f"{problem}-{key}" if key else problem,
        PROMPT_CHOICE_IN_IMAGE.format(question=question),
        str(row["answer"]),
        images,
        options or _letters_for(str(row["answer"])),
        f"{key.split('_')[0]}-{problem}" if key else None,
        meta={"key": key},
    )


def wemath_options(option: str) -> list[str]:
    """WeMath's option string ("A. 4; B. 8; C. 16") as the option texts, in letter order."""
    parts = re.split(r"\s*;\s*(?=[A-H]\s*[.:：])", option.strip())
    texts = [re.sub(r"^[A-H]\s*[.:：]\s*", "", p).strip() for p in parts]
    ok = all(re.match(r"[A-H]\s*[.:：]", p) for p in parts) and len(parts) > 1
    return texts if ok else []


def _logicvista(row: dict, i: int, split: str) -> Item:
    images = [_first(row, "image", "imagename")]
    gold = str(row["answer"])
    return Item(
        str(row.get("question_id", i)),
        PROMPT_CHOICE_IN_IMAGE.format(question=row["question"]),
        gold,
        images,
        _letters_for(gold),
        rule={"name": "choice", "fold_case": True},  # its scorer lower-cases both sides
    )


def _letters_for(gold: str) -> list[str]:
    """Options drawn in the image: the letters A-E, or up to the last letter the gold names."""
    named = [c for c in gold if c in LETTERS]
    return list(LETTERS[: max(5, LETTERS.index(max(named)) + 1 if named else 5)])


def _mmmu_pro(row: dict, i: int, split: str) -> Item:
    options = row["options"]
    options = ast.literal_eval(options) if isinstance(options, str) else list(options)
    images = [row[f"image_{k}"] for k in range(1, 8) if row.get(f"image_{k}") is not None]
    question = re.sub(r"<image \d+>", "[image]", row["question"])
    return _choice_item(
        str(row.get("id", i)), question, [str(o) for o in options], str(row["answer"]), images
    )


def _charxiv_reasoning(row: dict, i: int, split: str) -> Item:
    kind = row.get("reasoning_a_type")
    return Item(
        f"r{i}",
        PROMPT_MATH.format(question=row["reasoning_q"]),
        str(row["reasoning_a"]),
        [row["image"]],
        rule={"name": "charxiv", "answer_type": kind},
        meta={"question": row["reasoning_q"], "inst_category": kind},
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


LIGHTEVAL = (
    "https://github.com/huggingface/lighteval/blob/main/src/lighteval/metrics/dynamic_metrics.py"
)
SIMPLE_EVALS = "https://github.com/openai/simple-evals/blob/main/common.py"

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
            official="lighteval: the last \\boxed{} (or final expression) equal to the integer "
            "answer under math-verify",
            source=LIGHTEVAL,
        ),
        Benchmark(
            "aime25",
            "AIME25",
            ("math-ai/aime25", None, ("test",)),
            _aime,
            _paper(52.1),
            ("problem", "answer"),
            "text",
            official="lighteval: the last \\boxed{} equal to the integer answer under math-verify",
            source=LIGHTEVAL,
        ),
        Benchmark(
            "math500",
            "MATH500",
            ("HuggingFaceH4/MATH-500", None, ("test",)),
            _math500,
            _paper(95.3),
            ("problem", "answer"),
            "text",
            official="lighteval: the last \\boxed{} equivalent to the gold under math-verify "
            "(simple-evals asks an LLM equality checker instead; we follow lighteval)",
            source=LIGHTEVAL,
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
            official="simple-evals: the letter after 'Answer:' equal to the correct option's "
            "letter, upper case (options shuffled per question); we read the box first, then the "
            "'Answer:' line",
            source=SIMPLE_EVALS,
        ),
        Benchmark(
            "mmlu",
            "MMLU",
            ("cais/mmlu", "all", ("test",)),
            _mmlu,
            _paper(77.2),
            ("question", "choices", "answer"),
            "text",
            official="simple-evals: the letter after 'Answer:' equal to the gold letter, upper "
            "case; we read the letter (or the option's text) in the box, else the 'Answer:' line",
            source="https://github.com/openai/simple-evals/blob/main/mmlu_eval.py",
        ),
        Benchmark(
            "mmlu-pro",
            "MMLU-Pro",
            ("TIGER-Lab/MMLU-Pro", None, ("test",)),
            _mmlu_pro,
            _paper(67.9),
            ("question", "options", "answer"),
            "text",
            official="TIGER-Lab: 'answer is (X)', else 'Answer: X', else the last standalone "
            "letter A-J, upper case; we read the box first, then those sentences (no lone letter)",
            source="https://github.com/TIGER-AI-Lab/MMLU-Pro/blob/main/evaluate_from_api.py",
        ),
        Benchmark(
            "mathvista",
            "MathVista (testmini)",
            ("AI4Math/MathVista", None, ("testmini",)),
            _mathvista,
            _paper(72.1, 69.2),
            ("question", "answer"),
            official="GPT extracts the answer (demo prompt); then options by letter or text, "
            "integers as int(float(x)), floats rounded to the row's precision, string-equal to "
            "the answer; without a judge the box is the extraction",
            source="https://github.com/lupantech/MathVista/blob/main/evaluation/calculate_score.py",
            judge="mathvista",
        ),
        Benchmark(
            "mathvision",
            "MathVision",
            ("MathLLMs/MathVision", None, ("test",)),
            _mathvision,
            _paper(51.8, 25.5),
            ("question", "answer"),
            official="MATH-V is_equal on the last box: the option letter or the option's value; "
            "free-form equal as strings, as LaTeX math, or as numbers rounded to 2 decimals",
            source="https://github.com/mathllm/MATH-V/blob/main/evaluation/utils.py",
        ),
        Benchmark(
            "mathverse",
            "MathVerse (vision-only)",
            ("AI4Math/MathVerse", "testmini", ("testmini",)),
            _mathverse,
            _paper(54.6, 41.1),
            ("image", "answer"),
            note="options drawn in the image are graded by letter only",
            official="GPT-4 extracts the answer, then GPT-4 judges it consistent with the "
            "standard answer (0/1; 0.5m and 50cm agree); without a judge: math-verify on the "
            "box, letters for options",
            source="https://github.com/ZrrSkywalker/MathVerse/blob/main/evaluation/score_answer_s2.py",
            judge="mathverse",
        ),
        Benchmark(
            "dynamath",
            "DynaMath (worst)",
            ("DynaMath/DynaMath_Sample", None, tuple(f"sample_variant{k}" for k in range(1, 11))),
            _dynamath,
            _paper(33.5),
            ("question", "ground_truth"),
            metric="worst",
            official="floats within 0.001 of the truth (π read as pi), option letters in either case, "
            "text answers must contain the truth; worst case: a seed question counts only when "
            "all 10 variants are right",
            source="https://github.com/DynaMath/DynaMath/blob/main/evaluation/opensource_json_eval.py",
        ),
        Benchmark(
            "wemath",
            "WeMath (strict)",
            ("We-Math/We-Math", None, ("testmini",)),
            _wemath,
            {**_paper(44.6), "OVR-7B-RL (loose)": 64.8},
            ("question", "option", "answer"),
            metric="wemath",
            official="the option letter (A-H) equal to the answer; scores per composite problem "
            "from its one-step parts and the multi-step question: (N - 0.5 IG - RM - IK) / N, "
            "RM strict (any part wrong) or loose (all parts wrong)",
            source="https://github.com/We-Math/We-Math/blob/main/evaluation/four_dimensional_metrics.py",
        ),
        Benchmark(
            "logicvista",
            "LogicVista",
            ("lscpku/LogicVista", None, ("test",)),
            _logicvista,
            _paper(54.8),
            ("question", "answer"),
            note="hub layout unverified: prefer a local copy",
            official="an LLM extracts the chosen letter(s); right only when the set of letters "
            'equals the answer\'s ("A, C" needs both and nothing else), either case; we read the box, '
            "else an answer sentence",
            source="https://github.com/Yijia-Xiao/LogicVista",
        ),
        Benchmark(
            "mmmu-pro",
            "MMMU-Pro",
            ("MMMU/MMMU_Pro", "standard (10 options)", ("test",)),
            _mmmu_pro,
            _paper(50.2),
            ("question", "options", "answer"),
            official="parse_multi_choice_response: the letter after 'Answer:', else '(X)', "
            "'X ', 'X.', else an option's text, else a random letter; we read the box, else an "
            "answer sentence, and never guess",
            source="https://github.com/MMMU-Benchmark/MMMU/blob/main/mmmu-pro/evaluate.py",
        ),
        Benchmark(
            "charxiv",
            "CharXiv (reasoning)",
            ("princeton-nlp/CharXiv", None, ("validation",)),
            _charxiv_reasoning,
            _paper(44.5),
            ("reasoning_q", "reasoning_a", "image"),
            note="descriptive questions (paper: 73.6) are not run",
            official="GPT-4o extracts and scores with a rubric per answer type (same term up to "
            "form and order; numbers exactly equal in value); without a judge: the box compared "
            "up to case, \\text{} and order of terms, numbers by value",
            source="https://github.com/princeton-nlp/CharXiv/blob/main/src/reasoning_utils.py",
            judge="charxiv",
        ),
    ]
}


def get_benchmark(name: str) -> Benchmark:
    """The registered benchmark ``name`` (clear error listing the known ones)."""
    if name not in BENCHMARKS:
        raise DatasetError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name]
