"""The answer rules: is this stated answer right for that gold, under the benchmark's official rule?

``matches(answer, gold, choices, rule)`` follows the scorer named by the item's ``rule``
(``RULES``; default ``math``, or ``choice`` when there are options). The texts arrive normalised
(``ovr_core.text.normalize``, applied once by ``ovr_core.grading``).

Multiple choice, for every benchmark: the answer may be a letter ("B", "(B)", "B.", "\\text{B}",
"\\textbf{(B)} 12"), several letters ("A, C", "AC", "A and C": compared as sets), or an option's
text (mapped to its letter through the row's options, text first, so an option starting with a
capital word is not read as that letter). A letter followed by another option's text ("(B) 15"
when 15 is option C) names two answers: it names none. Lower-case letters are option letters only
where the official scorer folds case (``rule["fold_case"]``: MATH-V, DynaMath, LogicVista);
simple-evals, MMLU-Pro, MMMU-Pro and WeMath match upper case only. An option whose text is "a"
still matches as text.

Numbers: "3 million" is 3000000 and "5k" is 5000 (a magnitude word is never read as a unit);
"four" is 4; the units a benchmark names after a value ("12 cm") are dropped.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Sequence

from ovr_core.format import BOXED
from ovr_core.text import fold_letter_lookalikes

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def matches(
    answer: str, gold: str, choices: Sequence[str] | None = None, rule: dict | None = None
) -> bool:
    """True when ``answer`` is right for ``gold`` under the item's rule (``RULES``)."""
    rule = rule or {}
    name = rule.get("name") or ("choice" if choices else "math")
    if name not in RULES:
        raise ValueError(f"unknown grading rule {name!r}; known: {sorted(RULES)}")
    return RULES[name](clean_answer(answer), str(gold), list(choices or []), rule)


def clean_answer(text: str) -> str:
    """What no scorer counts: surrounding space and ``$``, a trailing period, degree marks
    (``°``, ``^\\circ``: MATH-V strips them), ``\\left``/``\\right``; magnitude words and number
    words become the number they say."""
    text = text.strip().strip("$").strip()
    text = re.sub(r"\^\s*\{?\s*\\circ\s*\}?|°|\\degree", "", text)
    text = re.sub(r"\\(?:left|right)(?![a-zA-Z])", "", text).replace("\\!", "")
    text = text.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    text = re.sub(r"(?<!\.)\.\s*$", "", text).strip()
    return _number_words(_magnitudes(text))


def math_equal(answer: str, gold: str) -> bool:
    """math-verify equivalence of ``answer`` and ``gold`` (both bare, unboxed), timeouts off:
    callers facing untrusted output run it in a worker with a hard limit (``grading_pool``)."""
    from math_verify import parse, verify

    logging.getLogger("math_verify").setLevel(logging.ERROR)  # it warns without timeouts
    gold_parsed = parse(wrap_gold(gold), parsing_timeout=None)
    pred_parsed = parse(f"${BOXED}{{{answer}}}$", parsing_timeout=None)
    if not gold_parsed or not pred_parsed:
        return gold.strip() == answer.strip()
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=None))


def wrap_gold(gold: str) -> str:
    """Put a gold answer in ``\\boxed{}`` unless it already is (math-verify misreads bare LaTeX)."""
    gold = gold.strip()
    if BOXED in gold or gold.startswith("$"):
        return gold
    return f"${BOXED}{{{gold}}}$"


def math_rule(box: str, gold: str, choices: list, rule: dict) -> bool:
    """math-verify equivalence of the box and the gold (MATH500, AIME: lighteval's rule)."""
    return math_equal(box, clean_answer(gold))


def choice_rule(box: str, gold: str, choices: list, rule: dict) -> bool:
    """The option letter(s) the box names equal the gold's (a set when several are right)."""
    options = choices or list(LETTERS[: rule.get("n_options", 5)])
    fold = bool(rule.get("fold_case"))
    said = choice_letters(box, options, fold)
    return bool(said) and said == choice_letters(gold, options, fold)


def mathvista_rule(box: str, gold: str, choices: list, rule: dict) -> bool:
    """MathVista's ``normalize_extracted_answer`` + ``safe_equal``: options by letter; an integer
    answer as ``int(float(x))``; a float rounded to the row's ``precision``; lists and text as
    strings."""
    if choices:
        return choice_rule(box, gold, choices, rule)
    kind = rule.get("answer_type", "text")
    if kind in ("integer", "float"):
        value, target = number_of(box), number_of(gold)
        if value is None or target is None:
            return False
        if kind == "integer":
            return int(value) == int(target)
        places = int(rule.get("precision") or 0)
        return round(value, places) == round(target, places)
    if kind == "list":
        return re.sub(r"\s+", "", box) == re.sub(r"\s+", "", gold)
    return unwrap_text(box) == gold.strip()


def mathvision_rule(box: str, gold: str, choices: list, rule: dict) -> bool:
    """MATH-V's ``is_equal``: the option letter or the option's value; free-form answers equal as
    strings, as math, or as numbers rounded to 2 decimals."""
    if choices:
        return choice_rule(box, gold, choices, rule)
    if math_rule(box, gold, choices, rule):
        return True
    value, target = number_of(box), number_of(gold)
    return value is not None and target is not None and round(value, 2) == round(target, 2)


def dynamath_rule(box: str, gold: str, choices: list, rule: dict) -> bool:
    """DynaMath's evaluation: a float within 0.001 of the gold (``π`` read as pi); an option
    letter; otherwise the gold must appear in the answer."""
    kind = rule.get("answer_type", "")
    if choices or "choice" in kind:
        return choice_rule(box, gold, choices, rule)
    if kind == "float":
        value, target = number_of(box), number_of(gold)
        return value is not None and target is not None and abs(value - target) <= 1e-3
    return gold.strip() in unwrap_text(box)


def charxiv_rule(box: str, gold: str, choices: list, rule: dict) -> bool:
    """CharXiv reasoning without its GPT judge: numbers (answer types 3, 4) equal in value; text
    (types 1, 2) the same term up to case, ``\\text{}``, spacing and the Greek letter's name (α and
    alpha, the rubric's example), several terms in any order."""
    if rule.get("answer_type") in (3, 4):
        value, target = number_of(box), number_of(gold)
        if value is not None and target is not None:
            return math.isclose(value, target, rel_tol=1e-9, abs_tol=1e-12)
        return math_rule(box, gold, choices, rule)
    said, want = _terms(box), _terms(gold)
    return said == want or (len(want) > 1 and sorted(said) == sorted(want))


_GREEK = dict(
    zip(
        "αβγδεζηθικλμνξοπρστυφχψω",
        "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho "
        "sigma tau upsilon phi chi psi omega".split(),
        strict=True,
    )
)


def _terms(text: str) -> list[str]:
    text = "".join(_GREEK.get(ch, ch) for ch in unwrap_text(text).lower())
    text = re.sub(r"\\(" + "|".join(_GREEK.values()) + r")\b", r"\1", text)
    text = re.sub(r"\s+", " ", text).strip()
    return [re.sub(r"^\((.+)\)$", r"\1", t.strip()) for t in text.split(",")]


RULES: dict[str, Callable[[str, str, list, dict], bool]] = {
    "math": math_rule,
    "choice": choice_rule,
    "mathvista": mathvista_rule,
    "mathvision": mathvision_rule,
    "dynamath": dynamath_rule,
    "charxiv": charxiv_rule,
}


# --- options ---------------------------------------------------------------------------------

_WRAPPERS = r"\\(?:text|textbf|textit|textrm|textsf|mathrm|mathbf|mathit|mbox|operatorname)\s*"
_PREFIX = re.compile(
    r"^(?:the\s+)?(?:final\s+|correct\s+)?(?:answer|option|choice)(?:\s+is)?\s*:?\s*", re.I
)
_ONE_LETTER = re.compile(r"\(?([A-Z])\)?[.:]?")
_LETTER_THEN_TEXT = re.compile(r"(?:\(([A-Z])\)|([A-Z])[.:)])\s*(.+)", re.S)


def unwrap_text(text: str) -> str:
    """``text`` without ``\\text{}``, ``\\textbf{}``, ``\\mathrm{}``… wrappers and ``$``."""
    previous = None
    while previous != text:
        previous = text
        text = re.sub(_WRAPPERS + r"\{([^{}]*)\}", r"\1", text)
    return text.replace("$", "").strip()


def choice_letters(text: str, choices: Sequence[str], fold_case: bool = False) -> frozenset[str]:
    """The option letters ``text`` names (empty when it names none, or names two different
    options): an option's text (first), a letter ("B", "(B)", "B.", "(B) 12", "B: 12"), several
    letters ("A, C", "AC", "A and C"), or a value equal to one option's under math-verify.
    ``fold_case``: "b" is B too (the scorers that lower-case both sides)."""
    text = _PREFIX.sub("", unwrap_text(clean_answer(text)))
    letters = LETTERS[: len(choices)]
    for letter, choice in zip(letters, choices, strict=False):
        if _same_text(text, str(choice)):
            return frozenset(letter)
    text = fold_letter_lookalikes(text)
    if fold_case and re.fullmatch(r"\(?[a-z]\)?[.:]?", text):
        text = text.upper()
    if (m := _ONE_LETTER.fullmatch(text)) and m.group(1) in letters:
        return frozenset(m.group(1))
    several = _several_letters(text, letters)
    if several:
        return several
    if (m := _LETTER_THEN_TEXT.fullmatch(text)) and (m.group(1) or m.group(2)) in letters:
        return _letter_with_text(m.group(1) or m.group(2), m.group(3), choices)
    m = re.fullmatch(r"([A-Z])\s+(.+)", text, flags=re.S)  # "B 12": a letter only with B's text
    if m and m.group(1) in letters and _same_text(m.group(2), choices[letters.index(m.group(1))]):
        return frozenset(m.group(1))
    return _option_by_value(text, choices)


def choice_letter(text: str, choices: Sequence[str]) -> str | None:
    """The option letter(s) ``text`` names, as one string ("B", or "AC" for several), or None."""
    said = choice_letters(text, choices)
    return "".join(sorted(said)) or None


def _letter_with_text(letter: str, rest: str, choices: Sequence[str]) -> frozenset[str]:
    # "(B) 12": B, unless "12" is another option's text or value (it then names two answers)
    own = LETTERS.index(letter)
    if own < len(choices) and _same_text(rest, str(choices[own])):
        return frozenset(letter)
    for k, choice in enumerate(choices):
        if k != own and str(choice).strip() and _same_text(rest, str(choice)):
            return frozenset()
    named = _option_by_value(rest, choices) if own < len(choices) else frozenset()
    return frozenset() if named and named != frozenset(letter) else frozenset(letter)


def _several_letters(text: str, letters: str) -> frozenset[str]:
    parts = [p for p in re.split(r"\s*(?:,|;|&|\+|/|\band\b|\s)\s*", text) if p]
    if len(parts) > 1 and all(_ONE_LETTER.fullmatch(p) for p in parts):
        found = [_ONE_LETTER.fullmatch(p).group(1) for p in parts]
    elif re.fullmatch(r"[A-Z]{2,}", text):
        found = list(text)
    else:
        return frozenset()
    return frozenset(found) if all(f in letters for f in found) else frozenset()


def _same_text(a: str, b: str) -> bool:
    norm = lambda s: re.sub(r"\s+", " ", unwrap_text(clean_answer(s)))  # noqa: E731
    return norm(a) == norm(b)


def _option_by_value(text: str, choices: Sequence[str]) -> frozenset[str]:
    if not text or re.fullmatch(r"[A-Za-z]", text):
        return frozenset()  # a lone letter that names no option is not a value
    hits = [
        LETTERS[k]
        for k, choice in enumerate(choices)
        if str(choice).strip() and math_equal(text, clean_answer(str(choice)))
    ]
    return frozenset(hits) if len(hits) == 1 else frozenset()


# --- numbers ---------------------------------------------------------------------------------

_SCALE = {"thousand": 1e3, "k": 1e3, "million": 1e6, "mn": 1e6, "m": 1e6, "billion": 1e9}
_SCALE |= {"bn": 1e9, "b": 1e9, "trillion": 1e12, "hundred": 1e2, "dozen": 12}
_MAGNITUDE = re.compile(
    r"(?<![\w.])(-?\d+(?:\.\d+)?)\s*(thousand|million|billion|trillion|hundred|dozen|mn|bn"
    r"|(?<=\d)[kKMB])(?![a-zA-Z])",
)
_WORDS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen twenty"
).split()
_TENS = {"thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80}
_TENS |= {"ninety": 90, "twenty": 20}


def number_of(text: str) -> float | None:
    """The number ``text`` states ("1,234", "12.5 cm", "50\\%", "2π", "\\frac{1}{2}", "3 million",
    "four"), or None."""
    text = unwrap_text(clean_answer(str(text))).replace("π", "\\pi")
    grouped = r"-?\d{1,3}((,|\s)\d{3})+(\.\d+)?"
    plain = re.sub(r"[,\s]", "", text) if re.fullmatch(grouped, text) else text
    m = re.fullmatch(
        r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*(?:\\?%|[a-zA-Z ]{0,12})", plain
    )
    if m:
        return float(m.group(1))
    return _sympy_number(text)


def _magnitudes(text: str) -> str:
    def scaled(m: re.Match) -> str:
        value = float(m.group(1)) * _SCALE[m.group(2).lower()]
        return str(int(value)) if value == int(value) else repr(value)

    words = r"\\(?:text|textrm|mathrm|mbox)\s*\{\s*(thousand|million|billion|trillion)\s*\}"
    return _MAGNITUDE.sub(scaled, re.sub(words, r" \1", text))


def _number_words(text: str) -> str:
    word = unwrap_text(text).strip().lower()
    if word in _WORDS:
        return str(_WORDS.index(word))
    m = re.fullmatch(r"([a-z]+)(?:[- ]([a-z]+))?", word)
    if m and m.group(1) in _TENS and (m.group(2) is None or m.group(2) in _WORDS[1:10]):
        return str(_TENS[m.group(1)] + (_WORDS.index(m.group(2)) if m.group(2) else 0))
    return text


def _sympy_number(text: str) -> float | None:
    from math_verify import parse

    logging.getLogger("math_verify").setLevel(logging.ERROR)
    try:
        parsed = parse(f"${BOXED}{{{text}}}$", parsing_timeout=None)
        value = complex(parsed[0].evalf()) if parsed else None
    except Exception:  # not a number: symbols, sets, text
        return None
    if value is None or value.imag or math.isnan(value.real):
        return None
    return value.real
