"""Answers around a gold, in every surface form a grader must read: the differential test's generator.

``variants(bench, n_items, seed)`` builds ``n_items`` items of a benchmark from synthetic rows in
its public dataset's own columns (through its ``to_item``, so the gold, options and rule are the
ones ``ovr-eval`` uses) and writes, for each, one answer per class in ``CLASSES``. Each variant
carries what a careful reading of the benchmark's official scorer makes of it (``expect``: 1 or
0 for evaluation, ``expect_rl``: the strict RL reward).

The classes (``Variant.cls``), drawn from the official extractors and lmms-eval's scorers:
- boxes: plain, ``$…$`` inside, trailing period, ``\\fbox``, ``\\text{}``/``\\textbf{}`` wrappers,
  ``\\boxed {…}`` with a space, a self-correction (an earlier box, then the final one), a box
  only in the reasoning, a box cut off by the length limit;
- answer sentences without a box: "the final answer is …", "Answer: …", "The answer is (…)",
  "the correct option is …", "**Final Answer:** …";
- letters: "(B)", "B.", "\\textbf{(B)}", "B: text", lower case, full-width, Cyrillic look-alike,
  the option's own text, the letter with another option's text (two answers);
- numbers: thousands separators (",", thin space, ``{,}``, ``\\,``), full-width and Arabic-Indic
  digits, number words, leading zeros, vulgar fractions, ``\\dfrac``/``a/b``/decimal, "3 million"
  and "5k" (magnitude words, not units), units after the value;
- contradictions: a box beside an "Answer:" line that differs, two different boxes (a hedge),
  several values boxed one by one;
- wrong answers in each form (so a grader that credits everything fails).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from ovr_eval.benchmarks import get_benchmark

THINK = "<think>\nLet me work it out step by step.\n</think>\n\n"
FULLWIDTH = {ch: chr(ord(ch) + 0xFEE0) for ch in "0123456789ABCDEFGHIJ"}
ARABIC_INDIC = {str(d): chr(0x0660 + d) for d in range(10)}
CYRILLIC = {"A": "А", "B": "В", "C": "С", "E": "Е"}
WORDS = "zero one two three four five six seven eight nine ten eleven twelve".split()
# which extractors (``ovr_core.answers.SENTENCES``) read each answer sentence
READ_BY = {
    "sentence_answer_is_paren": {"any", "answer_is", "mathv"},  # "Therefore, the answer is (C)."
    "sentence_answer_colon": {"any", "answer_colon", "answer_is"},  # "Answer: C"
    "sentence_correct_option": {"any"},  # "The correct option is C."
    "sentence_final_answer_bold": {"any", "answer_colon", "answer_is"},  # "**Final Answer:** C"
    "sentence_final_answer_is": {"any", "answer_is", "mathv"},  # "Thus the final answer is 204."
    "sentence_the_answer_is": {"any", "answer_is", "mathv"},  # "So the answer is 204"
}
# the benchmarks whose official scorer lower-cases both sides (MATH-V, DynaMath, LogicVista)
FOLDS_CASE = {"mathvision", "dynamath", "logicvista"}


@dataclass
class Variant:
    """One generated answer: the completion, its item, and what it should score."""

    bench: str
    cls: str
    completion: str
    gold: str
    choices: list | None
    rule: dict | None
    expect: int  # evaluation (each official scorer's chain)
    expect_rl: int  # the RL reward (strict)
    meta: dict = field(default_factory=dict)

    @property
    def answer(self) -> str:
        """What an OpenAI-compatible server returns as the content: the text after ``</think>``
        (nothing for a trace never closed: its text is all reasoning)."""
        if "</think>" not in self.completion:
            return "" if self.completion.startswith("<think>") else self.completion
        return self.completion.split("</think>", 1)[-1].lstrip()


def variants(bench: str, n_items: int, seed: int = 0) -> list[Variant]:
    """Every class of answer for ``n_items`` items of ``bench``."""
    rng = random.Random(f"{bench}-{seed}")
    out = []
    for k in range(n_items):
        item = get_benchmark(bench).to_item(ROWS[bench](rng, k), k, get_benchmark(bench).hub[2][0])
        forms = _choice_forms(bench, item, rng) if item.choices else _value_forms(bench, item, rng)
        kind = (item.rule or {}).get("sentences", "any")
        for cls, answer, expect, expect_rl in forms:
            if cls in READ_BY:  # an answer sentence counts where the benchmark's extractor reads it
                expect = int(expect and kind in READ_BY[cls])
            completion = answer if answer.startswith("<think>") else THINK + answer
            out.append(
                Variant(
                    bench, cls, completion, item.gold, item.choices, item.rule, expect, expect_rl
                )
            )
    return out


# --- answers around a letter -------------------------------------------------------------------


def _choice_forms(bench: str, item, rng: random.Random) -> list[tuple[str, str, int, int]]:
    letters = "ABCDEFGHIJ"[: len(item.choices)]
    gold = item.gold
    if len(gold) > 1:  # several letters right (LogicVista)
        return _several_letter_forms(item, rng)
    other = rng.choice([c for c in letters if c != gold])
    text, other_text = item.choices[letters.index(gold)], item.choices[letters.index(other)]
    named = text not in letters  # the options are drawn in the image: letters are all there is
    fold = int(bench in FOLDS_CASE)
    forms = [
        ("box_letter", f"So the answer is \\boxed{{{gold}}}.", 1, 1),
        ("box_paren_letter", f"\\boxed{{({gold})}}", 1, 1),
        ("box_letter_period", f"\\boxed{{{gold}.}}", 1, 1),
        ("box_text_wrapper", f"\\boxed{{\\text{{{gold}}}}}", 1, 1),
        ("box_textbf_paren", f"\\boxed{{\\textbf{{({gold})}}}}", 1, 1),
        ("box_space_brace", f"\\boxed {{{gold}}}", 1, 1),
        ("fbox_letter", f"\\fbox{{{gold}}}", 1, 1),
        ("box_fullwidth_letter", f"\\boxed{{{FULLWIDTH[gold]}}}", 1, 1),
        ("box_lowercase_letter", f"\\boxed{{{gold.lower()}}}", fold, fold),
        ("box_wrong_letter", f"\\boxed{{{other}}}", 0, 0),
        ("self_correction", f"\\boxed{{{other}}}? No: \\boxed{{{gold}}}", 1, 0),
        ("hedge_two_boxes", f"\\boxed{{{gold}}} or \\boxed{{{other}}}", 0, 0),
        ("box_then_other_answer_line", f"\\boxed{{{gold}}}\n\nAnswer: {other}", 1, 0),
        ("sentence_answer_is_paren", f"Therefore, the answer is ({gold}).", 1, 0),
        ("sentence_answer_colon", f"Answer: {gold}", 1, 0),
        ("sentence_correct_option", f"The correct option is {gold}.", 1, 0),
        ("sentence_final_answer_bold", f"**Final Answer:** {gold}", 1, 0),
        ("sentence_wrong_letter", f"The answer is ({other}).", 0, 0),
        ("box_in_reasoning_only", f"<think>\n\\boxed{{{gold}}}\n</think>\n\nI am sure.", 0, 0),
        ("box_cut_off", f"\\boxed{{{gold}", 0, 0),
        ("unclosed_trace", f"<think>\nit is \\boxed{{{gold}}} I think, but", 0, 0),
        ("no_answer", "I cannot tell from the figure.", 0, 0),
    ]
    if gold in CYRILLIC:
        forms.append(("box_cyrillic_lookalike", f"\\boxed{{{CYRILLIC[gold]}}}", 1, 1))
    if named:
        forms += [
            ("box_option_text", f"\\boxed{{{text}}}", 1, 1),
            ("box_letter_with_own_text", f"\\boxed{{({gold}) {text}}}", 1, 1),
            ("box_letter_colon_text", f"\\boxed{{{gold}: {text}}}", 1, 1),
            ("box_letter_with_other_text", f"\\boxed{{({gold}) {other_text}}}", 0, 0),
            ("box_other_option_text", f"\\boxed{{{other_text}}}", 0, 0),
        ]
    return forms


def _several_letter_forms(item, rng: random.Random) -> list[tuple[str, str, int, int]]:
    want = [p.strip() for p in item.gold.split(",")]
    extra = rng.choice([c for c in "ABCDE" if c not in want])
    return [
        ("box_letters_comma", f"\\boxed{{{', '.join(want)}}}", 1, 1),
        ("box_letters_joined", f"\\boxed{{{''.join(want)}}}", 1, 1),
        ("box_letters_and", f"\\boxed{{{' and '.join(want)}}}", 1, 1),
        ("box_letters_reversed", f"\\boxed{{{', '.join(reversed(want))}}}", 1, 1),
        ("boxes_one_by_one", " and ".join(f"\\boxed{{{w}}}" for w in want), 1, 1),
        ("box_letters_subset", f"\\boxed{{{want[0]}}}", 0, 0),
        ("box_letters_superset", f"\\boxed{{{', '.join(sorted([*want, extra]))}}}", 0, 0),
        ("sentence_answer_colon", f"Answer: {', '.join(want)}", 1, 0),
    ]


# --- answers around a value --------------------------------------------------------------------


def _value_forms(bench: str, item, rng: random.Random) -> list[tuple[str, str, int, int]]:
    gold = item.gold
    kind = (item.rule or {}).get("answer_type")
    if not _is_int(gold):
        return _text_or_expression_forms(item, rng)
    value = int(gold)
    wrong = str(value + rng.choice([1, 2, 7]))
    forms = [
        ("box_plain", f"The result is \\boxed{{{gold}}}.", 1, 1),
        ("box_dollars", f"\\boxed{{${gold}$}}", 1, 1),
        ("box_trailing_period", f"\\boxed{{{gold}.}}", 1, 1),
        ("fbox", f"\\fbox{{{gold}}}", 1, 1),
        ("box_text_wrapper", f"\\boxed{{\\text{{{gold}}}}}", 1, 1),
        ("box_fullwidth_digits", f"\\boxed{{{''.join(FULLWIDTH[d] for d in gold)}}}", 1, 1),
        ("box_arabic_indic_digits", f"\\boxed{{{''.join(ARABIC_INDIC[d] for d in gold)}}}", 1, 1),
        ("box_wrong", f"\\boxed{{{wrong}}}", 0, 0),
        ("self_correction", f"\\boxed{{{wrong}}}, no wait: \\boxed{{{gold}}}", 1, 0),
        ("hedge_two_boxes", f"\\boxed{{{gold}}} or \\boxed{{{wrong}}}", 0, 0),
        ("box_then_other_answer_line", f"\\boxed{{{gold}}}\n\nAnswer: {wrong}", 1, 0),
        ("sentence_final_answer_is", f"Thus the final answer is {gold}.", 1, 0),
        ("sentence_answer_colon", f"Answer: {gold}", 1, 0),
        ("sentence_the_answer_is", f"So the answer is {gold}", 1, 0),
        ("sentence_wrong", f"The final answer is {wrong}.", 0, 0),
        ("box_cut_off", f"\\boxed{{{gold}", 0, 0),
        ("no_answer", "The figure does not say.", 0, 0),
    ]
    if kind != "integer" or bench != "mathvista":  # MathVista integers read int(float(x))
        forms.append(("box_unit_after", f"\\boxed{{{gold} \\text{{ cm}}}}", 1, 1))
    if value:  # 0 million is 0
        forms += [
            ("box_magnitude_million", f"\\boxed{{{gold} \\text{{ million}}}}", 0, 0),
            ("box_magnitude_k", f"\\boxed{{{gold}k}}", 0, 0),
        ]
    if value >= 1000:
        grouped, thin, latex_thin = f"{value:,}", chr(0x2009), "\\,"
        forms += [
            ("box_comma_thousands", f"\\boxed{{{grouped}}}", 1, 1),
            ("box_brace_comma_thousands", f"\\boxed{{{grouped.replace(',', '{,}')}}}", 1, 1),
            ("box_thin_space_thousands", f"\\boxed{{{grouped.replace(',', thin)}}}", 1, 1),
            (
                "box_latex_thin_space_thousands",
                f"\\boxed{{{grouped.replace(',', latex_thin)}}}",
                1,
                1,
            ),
        ]
    if 0 <= value < len(WORDS):
        forms.append(("box_number_word", f"\\boxed{{\\text{{{WORDS[value]}}}}}", 1, 1))
    if bench.startswith("aime") and value < 100:
        forms.append(("box_leading_zeros", f"\\boxed{{{value:03d}}}", 1, 1))
    return forms


def _text_or_expression_forms(item, rng: random.Random) -> list[tuple[str, str, int, int]]:
    gold = item.gold
    wrong = f"{gold}+1" if gold[0] in "-0123456789\\" else f"not {gold}"
    forms = [
        ("box_plain", f"\\boxed{{{gold}}}", 1, 1),
        ("box_dollars", f"\\boxed{{${gold}$}}", 1, 1),
        ("box_trailing_period", f"\\boxed{{{gold}.}}", 1, 1),
        ("sentence_final_answer_is", f"The final answer is {gold}", 1, 0),
        ("no_answer", "I cannot read the chart.", 0, 0),
        ("fbox", f"\\fbox{{{gold}}}", 1, 1),
        ("box_wrong", f"\\boxed{{{wrong}}}", 0, 0),
        ("self_correction", f"\\boxed{{{wrong}}}, no wait: \\boxed{{{gold}}}", 1, 0),
        ("hedge_two_boxes", f"\\boxed{{{gold}}} or \\boxed{{{wrong}}}", 0, 0),
        ("box_then_other_answer_line", f"\\boxed{{{gold}}}\n\nAnswer: {wrong}", 1, 0),
        ("box_cut_off", f"\\boxed{{{gold}", 0, 0),
    ]
    for cls, text in FRACTION_FORMS.get(gold, ()):
        forms.append((cls, f"\\boxed{{{text}}}", 1, 1))
    for cls, text in WRONG_FORMS.get(gold, ()):
        forms.append((cls, f"\\boxed{{{text}}}", 0, 0))
    return forms


def _is_int(text: str) -> bool:
    return text.lstrip("-").isdigit()


FRACTION_FORMS = {
    "\\frac{1}{2}": [("box_decimal", "0.5"), ("box_slash", "1/2"), ("box_vulgar", "½")],
    "\\frac{3}{4}": [("box_dfrac", "\\dfrac{3}{4}"), ("box_vulgar", "¾"), ("box_slash", "3/4")],
    "\\frac{3}{2}": [("box_mixed_vulgar", "1½"), ("box_decimal", "1.5")],
    "2\\sqrt{3}": [("box_unicode_root", "2√3"), ("box_sqrt_12", "\\sqrt{12}")],
    "-5": [("box_unicode_minus", "\u22125")],
    "3+4i": [("box_mathrm_i", "3+4\\mathrm{i}")],
    "alpha": [("box_greek_letter", "α")],
}
WRONG_FORMS = {
    "\\frac{1}{2}": [("box_wrong_fraction", "\\frac{1}{3}")],
    "2\\sqrt{3}": [("box_wrong_root", "2")],
    "3+4i": [("box_wrong_complex", "3-4i")],
}


# --- rows in each dataset's own columns --------------------------------------------------------


def _options(rng: random.Random, n: int) -> list[str]:
    pool = ["photon", "gluon", "W boson", "graviton", "electron", "12", "15", "3/4", "a cat"]
    pool += ["neutrino", "Both", "None of these", "A square", "Circle", "7.5", "-2", "42"]
    return rng.sample(pool, n)


def _int_gold(rng: random.Random, k: int) -> str:
    return str(rng.choice([rng.randint(0, 12), rng.randint(13, 999), rng.randint(1000, 99999)]))


MATH_GOLDS = ["\\frac{1}{2}", "\\frac{3}{4}", "\\frac{3}{2}", "2\\sqrt{3}", "-5", "3+4i"]


def _mc_row(rng, k, n):
    options = _options(rng, n)
    return options, "ABCDEFGHIJ"[rng.randrange(n)]


ROWS = {
    "aime24": lambda rng, k: {"problem": "Find x.", "answer": str(rng.randint(0, 999)), "id": k},
    "aime25": lambda rng, k: {"problem": "Find x.", "answer": str(rng.randint(0, 999)), "id": k},
    "math500": lambda rng, k: {
        "problem": "Compute.",
        "unique_id": str(k),
        "answer": MATH_GOLDS[k % len(MATH_GOLDS)] if k % 2 else _int_gold(rng, k),
    },
    "gpqa": lambda rng, k: dict(
        zip(
            ["Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3"],
            _options(rng, 4),
            strict=True,
        ),
        Question=f"Question {k}?",
    ),
    "mmlu": lambda rng, k: {
        "question": f"Question {k}?",
        "subject": "s",
        "choices": _options(rng, 4),
        "answer": rng.randrange(4),
    },
    "mmlu-pro": lambda rng, k: (
        lambda o: {"question_id": k, "question": "Q?", "options": o[0], "answer": o[1]}
    )(_mc_row(rng, k, 10)),
    "mmmu-pro": lambda rng, k: (
        lambda o: {"id": str(k), "question": "Q?", "options": str(o[0]), "answer": o[1]}
    )(_mc_row(rng, k, 10)),
    "mathvista": lambda rng, k: (
        {
            "pid": str(k),
            "question": "Which?",
            "choices": (o := _options(rng, 4)),
            "answer": rng.choice(o),
            "question_type": "multi_choice",
            "answer_type": "text",
            "precision": None,
            "unit": None,
            "image": "img",
        }
        if k % 2
        else {
            "pid": str(k),
            "question": "How many?",
            "choices": None,
            "answer": _int_gold(rng, k),
            "question_type": "free_form",
            "answer_type": "integer",
            "precision": None,
            "unit": None,
            "image": "img",
        }
    ),
    "mathvision": lambda rng, k: {
        "id": str(k),
        "question": "<image1>\nHow many?",
        "options": ["1", "2", "3", "4", "5"] if k % 2 else [],
        "answer": "ABCDE"[rng.randrange(5)] if k % 2 else _int_gold(rng, k),
        "image": "img",
    },
    "mathverse": lambda rng, k: {
        "sample_index": str(k),
        "problem_version": "Vision Only",
        "question": "",
        "answer": "ABCD"[rng.randrange(4)] if k % 2 else _int_gold(rng, k),
        "question_type": "multi-choice" if k % 2 else "free-form",
        "image": "img",
    },
    "dynamath": lambda rng, k: {
        "id": str(k),
        "question": "Which?",
        "ground_truth": "ABCDE"[rng.randrange(5)],
        "answer_type": "multiple choice",
        "image": "img",
    },
    "wemath": lambda rng, k: (
        lambda o, g: {
            "ID": str(k),
            "key": "2steps_1",
            "question": "Area?",
            "answer": g,
            "option": "; ".join(f"{'ABCDE'[j]}. {t}" for j, t in enumerate(o)),
            "image": "img",
        }
    )(["16cm²", "8cm²", "4cm²", "12cm²", "No correct answer"], "ABCD"[rng.randrange(4)]),
    "logicvista": lambda rng, k: {
        "question_id": str(k),
        "question": "Which?",
        "answer": "A, C" if k % 3 == 0 else "ABCDE"[rng.randrange(5)],
        "image": "img",
    },
    "charxiv": lambda rng, k: (
        (
            {"reasoning_q": "Value?", "reasoning_a": _int_gold(rng, k), "reasoning_a_type": 3}
            if k % 2
            else {"reasoning_q": "Which?", "reasoning_a": "alpha", "reasoning_a_type": 1}
        )
        | {"image": "img"}
    ),
}
