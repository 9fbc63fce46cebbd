"""Model-judge scorers: the official prompts of MathVerse, CharXiv and MathVista's extraction step,
sent to any OpenAI-compatible judge (``ovr-eval run/rescore --judge-endpoint``).

Each protocol turns a record (the model's answer after ``</think>``, the gold, the row fields in
``meta``) into the official prompt(s), and the judge's reply into a verdict:

- ``mathverse`` (``evaluation/extract_answer_s1.py`` + ``score_answer_s2.py``): the judge extracts
  the answer with the demo prompt, then judges it against the standard answer; the reply must be
  ``0`` or ``1`` (after ``Judgement:``).
- ``charxiv`` (``src/reasoning_utils.py``, ``constants.py``): one grading prompt per answer type
  (``inst_category``); the reply must be JSON with ``extracted_answer`` and a ``score`` of 0 or 1.
- ``mathvista`` (``evaluation/extract_answer.py`` + ``calculate_score.py``): the judge extracts the
  answer with the demo prompt; the extraction is then normalised and compared by MathVista's own
  rules (``normalize_mathvista``: letters or the most similar option, ``int(float(x))``, rounding
  to the row's precision).

The prompts follow the published ones (the links are in ``ovr_eval.benchmarks``). A reply the
protocol cannot read is retried once (the official scripts retry), then recorded as ``unjudged``:
counted per benchmark in the records and the report, never read as a 0. A failed request is
``unjudged`` too, with the error kept.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from dataclasses import dataclass

from ovr_core.grading import LETTERS, final_answer

log = logging.getLogger(__name__)

UNJUDGED = "unjudged"


@dataclass
class JudgeConfig:
    """Where the judge is: an OpenAI-compatible base URL, the model name, its key."""

    endpoint: str
    model: str
    api_key: str | None = None
    concurrency: int = 16
    max_tokens: int = 1024

    @property
    def scorer(self) -> str:
        return f"judge:{self.model}"

    def fit(self, card: dict) -> JudgeConfig:
        """Cap the reply length at a quarter of the judge's context (its ``/models`` card), so
        the official prompts fit a small judge too."""
        if card.get("max_model_len"):
            self.max_tokens = max(16, min(self.max_tokens, card["max_model_len"] // 4))
        return self


def judge_records(records: list[dict], protocol: str, cfg: JudgeConfig) -> list[dict]:
    """Judge ``records`` in place (status, correct, scorer, ``judge`` details); returns them."""
    return asyncio.run(_judge_all(records, protocol, cfg))


async def _judge_all(records: list[dict], protocol: str, cfg: JudgeConfig) -> list[dict]:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=cfg.endpoint, api_key=cfg.api_key or "none", max_retries=2)
    gate = asyncio.Semaphore(cfg.concurrency)

    async def one(record: dict) -> None:
        async with gate:
            await judge_record(client, cfg, protocol, record)

    try:
        await asyncio.gather(*(one(r) for r in records))
    finally:
        await client.close()
    return records


async def judge_record(client, cfg: JudgeConfig, protocol: str, record: dict) -> dict:
    """Ask the judge about one record and write its verdict into it (``status``, ``correct``,
    ``scorer``, ``judge``). A record with no answer to judge (a trace never closed, a box the
    pre-check refused) keeps its rule verdict."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown judge protocol {protocol!r}; known: {sorted(PROTOCOLS)}")
    record.setdefault("rule_status", record.get("status"))
    status, response = final_answer(record.get("completion") or "")
    if status or record.get("rule_status") == "refused" or not response.strip():
        return record
    steps, decide = PROTOCOLS[protocol]
    trail: dict = {"prompts": [], "replies": []}
    value: object = response
    for build in steps:
        prompt = build(record, value)
        value = await _ask_readable(client, cfg, prompt, build.parse, trail)
        if value is None:
            break
    verdict = None if value is None else decide(record, value)
    trail["status"] = "ok" if verdict is not None else trail.get("status", "unparseable")
    record.update(
        status=UNJUDGED if verdict is None else ("correct" if verdict else "wrong"),
        correct=bool(verdict),
        scorer=cfg.scorer,
        judge=trail,
    )
    return record


async def _ask_readable(client, cfg: JudgeConfig, prompt: str, parse, trail: dict):
    """The judge's parsed reply to ``prompt`` (one retry when unreadable), or None."""
    trail["prompts"].append(prompt)
    for _ in range(2):
        try:
            r = await client.chat.completions.create(
                model=cfg.model,
                messages=[{"role": "user", "content": prompt}],
                temperature=0.0,
                max_tokens=cfg.max_tokens,
            )
        except Exception as e:  # counted as unjudged, the error kept in the record
            trail.update(status="failed", error=f"{type(e).__name__}: {str(e)[:200]}")
            log.warning("judge request failed: %s", trail["error"])
            return None
        reply = r.choices[0].message.content or ""
        trail["replies"].append(reply)
        parsed = parse(reply)
        if parsed is not None:
            return parsed
    trail["status"] = "unparseable"
    return None


def _step(parse):
    """Mark a prompt builder with the parser of the judge's reply to it."""

    def mark(build):
        build.parse = parse
        return build

    return mark


# --- MathVerse -------------------------------------------------------------------------------

MATHVERSE_EXTRACT = """I am providing you a response from a model to a math problem, termed 'Model Response'. You should extract the answer from the response as 'Extracted Answer'. Directly output the extracted answer with no explanation.

1.
Model response: 'Rounded to two decimal places, the perimeter of the sector is approximately:\\n\\n(-2, 1)'
Extracted Answer: (-2, 1)

2.
Model response: 'at those points.\\n\\nTherefore, the correct option that represents the meaning of the intersection points of the graphs is:\\n\\nD. They give the solutions to the equation $f(t)=g(t)$.",'
Extracted Answer: D

3.
Model response: ' at 1 (there's a closed circle at y = 1), the range in interval notation is \\\\((-4, 1]\\\\).\\n\\nFinal values:\\nDomain: \\\\((-3, 3]\\\\)\\nRange: \\\\((-4, 1]\\\\)'
Extracted Answer: Domain: \\\\((-3, 3]\\\\)\\nRange: \\\\((-4, 1]\\\\)

4.
Model response: 'As it stands, I cannot provide the correct option letter because there isn't enough information to solve for 'y'.'
Extracted Answer: null

5.
Model response: 'Given that AB = 17.6 meters, we can now substitute into the equation:\\n\\nd = 17.6 / cos(38\\u00b0)\\n\\nTherefore, to one decimal place, the distance d between Ned and Bart is approximately 22.3 meters.'
Extracted answer: 22.3

6.
Model response:  have all the coefficients for the quadratic function:\\n\\\\( f(x) = ax^2 + bx + c \\\\)\\n\\\\( f(x) = -1x^2 - 2x + 1 \\\\)\\n\\nTherefore, the equation for the graphed function \\\\( f \\\\) is:\\n\\\\( f(x) = -x^2 - 2x + 1 \\\\)"'
Extracted answer: f(x) = -x^2 - 2x + 1

7.
"""

MATHVERSE_SCORE = """Below are two answers to a math question. Question is [Question], [Standard Answer] is the standard answer to the question, and [Model_answer] is the answer extracted from a model's output to this question.  Determine whether these two answers are consistent.
Please note that only when the [Model_answer] completely matches the [Standard Answer] means they are consistent. For non-multiple-choice questions, if the meaning is expressed in the same way, it is also considered consistent, for example, 0.5m and 50cm.
If they are consistent, Judement is 1; if they are different, Judement is 0.

[Question]: Write the set of numbers represented on the number line in interval notation.
[Standard Answer]: (-2,1]
[Model_answer] : Extracted Answer: \\((-2, 1)\\)
Judgement: 0

[Question]: Find the domain and range of the function f using interval notation.
[Standard Answer]: domain: [-4, 0) and range: (-3, 1]
[Model_answer] : Range: \\((-4, 1]\\)
Judgement: 0

[Question]: Two curves are symmetrical about the x-axis. Use the vertical line test to determine if this relation is a function.\\nChoices:\\nA:This is a function\\nB:This is not a function
[Standard Answer]: B
[Model_answer] : This is not a function
Judgement: 1

[Question]: Given the graph of the ellipse that intersects with x-axis at 9 and -9 and with y-axis at 3 and -3, determine its equation.A. \\frac{{x^2}}{{81}} + \\frac{{y^2}}{{9}} = 1 B. Can not determine.\\n
[Standard Answer]: A
[Model_answer] : \\frac{{x^2}}{{81}} + \\frac{{y^2}}{{9}} = 1
Judgement: 1

[Question]: {question}
[Standard Answer]: {gt}
[Model_answer] : {extraction}
Judgement: """


def parse_extraction(reply: str) -> str | None:
    """An extraction reply: its text after any 'Extracted answer:' label; None when empty."""
    text = re.sub(r"^\s*extracted answer\s*:\s*", "", reply.strip(), flags=re.I).strip()
    return text or None


def parse_judgement(reply: str) -> int | None:
    """MathVerse's judgement: the reply, less 'Judgement:', must be exactly 0 or 1."""
    text = reply.replace("Judgement:", "").strip()
    return int(text) if text in ("0", "1") else None


@_step(parse_extraction)
def _mathverse_extract(record: dict, response: str) -> str:
    return f"{MATHVERSE_EXTRACT.strip()}\n\nModel response: '{response}'\nExtracted Answer: "


@_step(parse_judgement)
def _mathverse_score(record: dict, extraction: str) -> str:
    question = (record.get("meta") or {}).get("question") or record.get("prompt", "")
    return MATHVERSE_SCORE.strip().format(
        question=question, gt=record["gold"], extraction=extraction
    )


# --- CharXiv ---------------------------------------------------------------------------------

CHARXIV_PREFIX = """
You will be given a question, an ground truth answer and a model response. You need to extract the final answer from the model response, compare it with the ground truth answer, and then assign a binary score. Avoid providing explanations in your response. If there is no provided model response, please leave the extracted answer empty and give a score of 0. 

Your response must follow json formats with keys [extract_answer, score] where the value of the score is an interger in [0, 1]. You must follow the scoring rules:\n"""  # noqa: W291

_CHARXIV_TURN = """
    ### Your Turn ###
    * Question: <|question|>
    * Ground Truth: <|ground_truth|>
    * Response: <|response|>

    """

_CHARXIV_NUMBER = """
    ### Rules ###
    * Give a score of 1 if and only if the two numbers are exactly equal in values. It's acceptable to have different notations (e.g., 0.01 and 10^-2; 1500 and 1.5e3).
    * Give a score of 0 if the two numbers are different in values.

    ### Example 1 Starts ###
    * Question: What is the value of the red curve at t=10?
    * Ground Truth: 0.01
    * Response: The value of the red curve at t=10 is 0.012.

    {
        "extracted_answer": "0.012",
        "score": 0
    }
    ### Example 1 Ends ###

    ### Example 2 Starts ###
    * Question: What is the value of the blue curve at t=50?
    * Ground Truth: 1500
    * Response: The value of the blue curve at t=50 is 1.5e3.

    {
        "extracted_answer": "1.5e3",
        "score": 1
    }
    ### Example 2 Ends ###
"""

CHARXIV_RULES = {
    1: """
    ### Rules ###
    * Give a score of 1 if and only if the final answer and the ground truth answer are referring to the same term. It's acceptable to have different grammar or form (e.g., α and alpha; $R^2_{t,h,v,m}$ and R^2_t,h,v,m). It's also acceptable to have different orders of the terms when question asks for multiple terms.
    * Give a score of 0 if any term (e.g., ACC+ and ACC; P-101 and P=101) is different between the final answer and the ground truth.

    ### Example 1 Starts ###
    * Question: What is the name of the curve that intersects y=\\lambda exactly three times?
    * Ground Truth: P56962
    * Response: There is only one curve that intersects y=\\lambda exactly three times. The name of the curve is written as P55762.

    {
        "extracted_answer": "P55762",
        "score": 0
    }
    ### Example 1 Ends ###


    ### Example 2 Starts ###
    * Question: What is the letter of the subplot where all bars are above 35?
    * Ground Truth: (b)
    * Response: The letter of the subplot where all bars are above 35 is b.

    {
        "extracted_answer": "b",
        "score": 1
    }
    ### Example 2 Ends ###
""",
    2: """
    ### Rules ###
    * If there are predefined options in the question:
        * Give a score of 1 if the final answer matches the ground truth answer exactly.
        * Give a score of 0 if the final answer does not match the ground truth answer.
    * If there are no predefined options in the question:
        * Give a score of 1 if the final answer shares the same semantic meaning with the ground truth answer (e.g., "increasing then decreasing" and "moving up then down"; "converge" and "move closer together").
        * Give a score of 0 if the final answer shares different semantic meanings from the ground truth answer (e.g., "increasing then decreasing" and "remain constant"; "converge" and "diverge").

    ### Example 1 Starts ###
    * Question: What is the trend of the red curve between t=10 and t=25?
    * Ground Truth: increasing then decreasing
    * Response: The red curve is increasing between t=10 and t=25.

    {
        "extracted_answer": "increasing",
        "score": 0
    }
    ### Example 1 Ends ###

    ### Example 2 Starts ###
    * Question: What is the interval where the blue curve achieves the maximum value among [0, 50], [50, 100], [100, 150], and [150, 200]?
    * Ground Truth: [50, 100]
    * Response: The interval where the blue curve achieves the maximum value is [50, 100].

    {
        "extracted_answer": "[50, 100]",
        "score": 1
    }
    ### Example 2 Ends ###
""",
    3: _CHARXIV_NUMBER,
    4: _CHARXIV_NUMBER,
}


def parse_charxiv(reply: str) -> dict | None:
    """CharXiv's JSON grading reply: ``{"extracted_answer": …, "score": 0|1}`` (the first JSON
    object in the reply), or None."""
    m = re.search(r"\{.*\}", reply, flags=re.S)
    try:
        content = json.loads(m.group(0)) if m else None
    except json.JSONDecodeError:
        return None
    if not isinstance(content, dict) or content.get("score") not in (0, 1, "0", "1"):
        return None
    extracted = content.get("extracted_answer", content.get("extract_answer"))
    return {"extracted_answer": extracted, "score": int(content["score"])}


@_step(parse_charxiv)
def _charxiv_grade(record: dict, response: str) -> str:
    meta = record.get("meta") or {}
    rules = CHARXIV_RULES.get(meta.get("inst_category"), CHARXIV_RULES[1])
    return CHARXIV_PREFIX + (rules + _CHARXIV_TURN).replace(
        "<|question|>", str(meta.get("question", ""))
    ).replace("<|ground_truth|>", str(record["gold"])).replace("<|response|>", response)


# --- MathVista -------------------------------------------------------------------------------

MATHVISTA_EXTRACT = """Please read the following example. Then extract the answer from the model response and type it at the end of the prompt.

Hint: Please answer the question requiring an integer answer and provide the final value, e.g., 1, 2, 3, at the end.
Question: Which number is missing?

Model response: The number missing in the sequence is 14.

Extracted answer: 14

Hint: Please answer the question requiring a floating-point number with one decimal place and provide the final value, e.g., 1.2, 1.3, 1.4, at the end.
Question: What is the fraction of females facing the camera?

Model response: The fraction of females facing the camera is 0.6, which means that six out of ten females in the group are facing the camera.

Extracted answer: 0.6

Hint: Please answer the question requiring a floating-point number with two decimal places and provide the final value, e.g., 1.23, 1.34, 1.45, at the end.
Question: How much money does Luca need to buy a sour apple candy and a butterscotch candy? (Unit: $)

Model response: Luca needs $1.45 to buy a sour apple candy and a butterscotch candy.

Extracted answer: 1.45

Hint: Please answer the question requiring a Python list as an answer and provide the final list, e.g., [1, 2, 3], [1.2, 1.3, 1.4], at the end.
Question: Between which two years does the line  graph saw its maximum peak?

Model response: The line graph saw its maximum peak between 2007 and 2008.

Extracted answer: [2007, 2008]

Hint: Please answer the question and provide the correct option letter, e.g., A, B, C, D, at the end.
Question: What fraction of the shape is blue?
Choices:
(A) 3/11
(B) 8/11
(C) 6/11
(D) 3/5

Model response: The correct answer is (B) 8/11.

Extracted answer: B
"""


def mathvista_query(record: dict) -> str:
    """The question as MathVista's ``build_query`` words it: a hint for the answer type, the
    question, and the choices."""
    rule, meta = record.get("rule") or {}, record.get("meta") or {}
    choices = record.get("choices")
    kind, places = rule.get("answer_type"), rule.get("precision")
    if choices:
        hint = "Please answer the question and provide the correct option letter, e.g., A, B, C, D, at the end."
    elif kind == "integer":
        hint = "Please answer the question requiring an integer answer and provide the final value, e.g., 1, 2, 3, at the end."
    elif kind == "float" and int(places or 1) == 1:
        hint = "Please answer the question requiring a floating-point number with one decimal place and provide the final value, e.g., 1.2, 1.3, 1.4, at the end."
    elif kind == "float":
        hint = "Please answer the question requiring a floating-point number with two decimal places and provide the final value, e.g., 1.23, 1.34, 1.45, at the end."
    elif kind == "list":
        hint = "Please answer the question requiring a Python list as an answer and provide the final list, e.g., [1, 2, 3], [1.2, 1.3, 1.4], at the end."
    else:
        hint = "Please answer the question and provide the final answer at the end."
    query = f"Hint: {hint}\nQuestion: {meta.get('question') or record.get('prompt', '')}"
    if choices:
        query += "\nChoices:\n" + "\n".join(f"({LETTERS[k]}) {c}" for k, c in enumerate(choices))
    return query


@_step(parse_extraction)
def _mathvista_extract(record: dict, response: str) -> str:
    return f"{MATHVISTA_EXTRACT.strip()}\n\n{mathvista_query(record)}\n\n{response}\n\nExtracted answer: "


def normalize_mathvista(extraction: str, record: dict) -> str | None:
    """MathVista's ``normalize_extracted_answer``: an option's text (by letter, else the most
    similar option by edit distance), ``int(float(x))``, ``round(float(x), precision)``."""
    rule, choices = record.get("rule") or {}, record.get("choices")
    extraction = extraction.strip()
    if choices:
        letter = re.findall(r"\(([a-zA-Z])\)", extraction)
        extraction = letter[0].upper() if letter else extraction
        options = LETTERS[: len(choices)]
        if extraction in options:
            return choices[options.index(extraction)]
        return min(choices, key=lambda c: edit_distance(extraction, c))
    try:
        if rule.get("answer_type") == "integer":
            return str(int(float(extraction)))
        if rule.get("answer_type") == "float":
            return str(round(float(extraction), int(rule.get("precision") or 0)))
    except ValueError:
        return None
    return extraction


def _mathvista_decide(record: dict, extraction: str) -> bool:
    gold, choices = str(record["gold"]), record.get("choices")
    if choices and gold in LETTERS[: len(choices)]:
        gold = choices[LETTERS.index(gold)]
    return normalize_mathvista(extraction, record) == gold


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (MathVista's ``get_most_similar`` uses it)."""
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


# protocol -> (prompt steps, each fed the previous step's parsed reply; the final decision)
PROTOCOLS = {
    "mathverse": ((_mathverse_extract, _mathverse_score), lambda r, v: v == 1),
    "charxiv": ((_charxiv_grade,), lambda r, v: v["score"] == 1),
    "mathvista": ((_mathvista_extract,), _mathvista_decide),
}
