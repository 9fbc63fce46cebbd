"""Is this answer right? The one grader that the RL rewards and ``ovr-eval`` share.

It sits beside the output format (``ovr_core.format``) and imports nothing else of ours.

The final answer (``final_answer`` / ``final_box``), one rule for eval and RL:
- only the answer after ``</think>`` counts. A completion whose ``<think>`` was opened by the chat
  template (it holds ``</think>`` but does not start with ``<think>``) is read the same way: the
  answer is what follows ``</think>``. A trace opened and never closed is ``unclosed``;
- the **last** ``\\boxed{}`` (or ``\\fbox{}``) of the answer is the answer, as MATH-style scorers take
  it (MATH-V's ``find_math_answer``, math-verify's boxed extraction): a self-correction
  ("\\boxed{3}… no, \\boxed{4}") is graded by its final box. A hedge ("\\boxed{3} or \\boxed{4}") is
  graded the same way, by its last box: it earns nothing a plain answer of its last box would not;
- no box is ``no_answer``; a box no answer needs (``refusal``: over ``MAX_BOX_CHARS`` characters,
  braces nested deeper than ``MAX_BRACE_DEPTH``, an exponent tower or a number too large to
  evaluate) is ``refused`` at once, before any worker or sympy sees it.

The comparison (``matches``) follows the benchmark's official scorer, named by the item's ``rule``
(``RULES``; default ``math``, or ``choice`` when there are options). Multiple choice, for every
benchmark: the box may hold a letter ("B", "(B)", "B.", "\\text{B}", "\\textbf{(B)} 12"), several
letters ("A, C", "AC", "A and C": compared as sets), or an option's text (mapped to its letter
through the row's options, text first, so an option starting with a capital word is not read as
that letter). Lowercase letters are never option letters (simple-evals, MMLU-Pro, MMMU-Pro,
DynaMath and WeMath all match upper case only); an option whose text is "a" still matches as text.

Each sample is graded in a worker process with a hard per-sample time limit (``Grader``):
math-verify's own timeouts use ``signal.alarm`` (main thread only) and adversarial output makes
sympy run for minutes or exhaust memory, so a worker past its deadline is SIGKILLed and replaced
(``timeout``); workers run with an address-space cap. Every verdict's status is counted
(``Grader.counts``) and every ``error``/``timeout``/``refused`` is logged: nothing scores 0 silently.
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import os
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import wait

from ovr_core.format import BOXED, THINK_CLOSE, THINK_OPEN, boxed_contents, split_reasoning

log = logging.getLogger(__name__)

STATUSES = ("correct", "wrong", "no_answer", "unclosed", "refused", "timeout", "error")
# statuses that mean the grader, not the model, decided: each is logged where it happens
GRADER_TROUBLE = ("refused", "timeout", "error")
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
FBOX = "\\fbox"

# the pre-check's limits: far above any benchmark answer, far below what makes sympy hang
MAX_BOX_CHARS = 2000
MAX_BRACE_DEPTH = 24
MAX_TOWER = 2  # a^{b^{c}} is the highest exponent tower an answer needs
MAX_EXPONENT = 100_000  # 2^{2024} is an answer; 9^{999999999} is a hang


@dataclass
class Verdict:
    """How one completion fared against its gold: ``status`` in ``STATUSES``, the extracted box."""

    status: str
    extracted: str | None = None
    detail: str = ""

    @property
    def score(self) -> float:
        return 1.0 if self.status == "correct" else 0.0

    def as_dict(self) -> dict:
        return {"status": self.status, "extracted": self.extracted, "detail": self.detail}


def grade_completion(
    completion: str,
    gold: str,
    choices: Sequence[str] | None = None,
    rule: dict | None = None,
    precheck: bool = True,
) -> Verdict:
    """Grade one completion in this process, without a time limit (workers call this)."""
    early = quick_verdict(completion, precheck)
    if early is not None:
        return early
    box = final_box(final_answer(completion)[1]) or ""
    ok = matches(box, gold, choices, rule)
    return Verdict("correct" if ok else "wrong", box)


def quick_verdict(completion: str, precheck: bool = True) -> Verdict | None:
    """The verdict when no comparison is needed (``unclosed``, ``no_answer``, ``refused``), in
    microseconds; None when the box must be compared with the gold."""
    status, answer = final_answer(completion)
    if status:
        return Verdict(status)
    box = final_box(answer)
    if box is None:
        return Verdict("no_answer")
    why = refusal(box) if precheck else None
    if why:
        return Verdict("refused", box[:200], why)
    return None


def final_answer(completion: str) -> tuple[str | None, str]:
    """``(status, answer)``: ``("unclosed", "")`` for a trace never closed, else ``(None, the text
    after </think>)`` (the whole output when it has no trace at all)."""
    think_in_prompt = THINK_CLOSE in completion and not completion.lstrip().startswith(THINK_OPEN)
    split = split_reasoning(completion, think_in_prompt)
    if split.had_reasoning and not split.closed:
        return "unclosed", ""
    return None, split.answer


def final_box(answer: str) -> str | None:
    """The last ``\\boxed{}`` or ``\\fbox{}`` content of an answer (the final result), or None."""
    boxes = boxed_contents(answer.replace(FBOX, BOXED))
    return boxes[-1] if boxes else None


def refusal(box: str) -> str | None:
    """Why ``box`` is no answer worth handing to sympy (too long, too deeply nested, an exponent
    tower or a number too large to evaluate), or None. Linear in the box: microseconds."""
    if len(box) > MAX_BOX_CHARS:
        return f"box of {len(box)} characters (limit {MAX_BOX_CHARS})"
    depth = deepest = 0
    for ch in box:
        depth += (ch == "{") - (ch == "}")
        deepest = max(deepest, depth)
    if deepest > MAX_BRACE_DEPTH:
        return f"braces nested {deepest} deep (limit {MAX_BRACE_DEPTH})"
    tower = exponent_tower(box)
    if tower > MAX_TOWER:
        return f"exponent tower of height {tower} (limit {MAX_TOWER})"
    for base, exp in re.findall(r"(\d+)\s*\^\s*\{?\s*(\d{1,30})\b", box):
        if int(exp) > MAX_EXPONENT and int(base) > 1:
            return f"exponent {exp} (limit {MAX_EXPONENT})"
    for inner in re.findall(r"\^\s*\{?\s*(\d+)\s*\^\s*\{?\s*(\d+)", box):
        if int(inner[1]) * math.log10(max(int(inner[0]), 1)) > math.log10(MAX_EXPONENT):
            return f"exponent {inner[0]}^{inner[1]} (limit {MAX_EXPONENT})"
    if re.search(r"\d{7,}\s*!", box):
        return "factorial of a number over a million"
    return None


def exponent_tower(text: str) -> int:
    """Height of the highest exponent tower in ``text`` (``x^{y^{z}}`` is 2; ``**`` counts as ``^``)."""
    text = text.replace("**", "^")
    frames: list[bool] = []  # one per open brace: does it open an exponent?
    level = highest = chain = 0
    pending = False
    for ch in text:
        if ch == "^":
            pending, chain = True, chain + 1 if chain else 1
            continue
        if pending and ch.isspace():
            continue
        if ch == "{":
            frames.append(pending)
            level += pending
            highest = max(highest, level)
            chain = 0
        elif ch == "}":
            level -= frames.pop() if frames else 0
        elif pending:  # a bare exponent: x^2, or a chain x^y^z
            highest = max(highest, level + chain)
        if not (ch.isalnum() or ch in "^{"):
            chain = 0
        pending = False
    return highest


# --- comparing a box with the gold -----------------------------------------------------------


def matches(
    box: str, gold: str, choices: Sequence[str] | None = None, rule: dict | None = None
) -> bool:
    """True when the answer ``box`` is right for ``gold`` under the item's rule (``RULES``)."""
    rule = rule or {}
    name = rule.get("name") or ("choice" if choices else "math")
    if name not in RULES:
        raise ValueError(f"unknown grading rule {name!r}; known: {sorted(RULES)}")
    return RULES[name](clean_answer(box), str(gold), list(choices or []), rule)


def clean_answer(text: str) -> str:
    """What no scorer counts: surrounding space and ``$``, a trailing period, degree marks
    (``°``, ``^\\circ``: MATH-V strips them), ``\\left``/``\\right``."""
    text = text.strip().strip("$").strip()
    text = re.sub(r"\^\s*\{?\s*\\circ\s*\}?|°|\\degree", "", text)
    text = re.sub(r"\\(?:left|right)(?![a-zA-Z])", "", text).replace("\\!", "")
    text = text.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    return re.sub(r"(?<!\.)\.\s*$", "", text).strip()


def math_rule(box: str, gold: str, choices: list, rule: dict) -> bool:
    """math-verify equivalence of the box and the gold (MATH500, AIME: lighteval's rule)."""
    return answer_matches(f"{BOXED}{{{box}}}", clean_answer(gold))


def choice_rule(box: str, gold: str, choices: list, rule: dict) -> bool:
    """The option letter(s) the box names equal the gold's (a set when several are right)."""
    options = choices or list(LETTERS[: rule.get("n_options", 5)])
    said = choice_letters(box, options)
    return bool(said) and said == choice_letters(gold, options)


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
    (types 1, 2) the same term up to case, ``\\text{}`` and spacing, several terms in any order."""
    if rule.get("answer_type") in (3, 4):
        value, target = number_of(box), number_of(gold)
        if value is not None and target is not None:
            return math.isclose(value, target, rel_tol=1e-9, abs_tol=1e-12)
        return math_rule(box, gold, choices, rule)
    said, want = _terms(box), _terms(gold)
    return said == want or (len(want) > 1 and sorted(said) == sorted(want))


def _terms(text: str) -> list[str]:
    text = unwrap_text(text).lower()
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


# --- options and numbers -----------------------------------------------------------------------

_WRAPPERS = r"\\(?:text|textbf|textit|textrm|textsf|mathrm|mathbf|mathit|mbox|operatorname)\s*"
_PREFIX = re.compile(r"^(?:the\s+)?(?:answer|option|choice)(?:\s+is)?\s*:?\s*", re.I)
_ONE_LETTER = re.compile(r"\(?([A-Z])\)?[.:]?")
_LETTER_THEN_TEXT = re.compile(r"(?:\(([A-Z])\)|([A-Z])[.:)])\s*(.+)", re.S)


def unwrap_text(text: str) -> str:
    """``text`` without ``\\text{}``, ``\\textbf{}``, ``\\mathrm{}``… wrappers and ``$``."""
    previous = None
    while previous != text:
        previous = text
        text = re.sub(_WRAPPERS + r"\{([^{}]*)\}", r"\1", text)
    return text.replace("$", "").strip()


def choice_letters(text: str, choices: Sequence[str]) -> frozenset[str]:
    """The option letters ``text`` names (empty when it names none): an option's text (first), a
    letter ("B", "(B)", "B.", "(B) 12", "B: 12"), several letters ("A, C", "AC", "A and C"), or a
    value equal to one option's under math-verify."""
    text = _PREFIX.sub("", unwrap_text(clean_answer(text)))
    letters = LETTERS[: len(choices)]
    for letter, choice in zip(letters, choices, strict=False):
        if _same_text(text, str(choice)):
            return frozenset(letter)
    if (m := _ONE_LETTER.fullmatch(text)) and m.group(1) in letters:
        return frozenset(m.group(1))
    several = _several_letters(text, letters)
    if several:
        return several
    if (m := _LETTER_THEN_TEXT.fullmatch(text)) and (m.group(1) or m.group(2)) in letters:
        return frozenset(m.group(1) or m.group(2))
    m = re.fullmatch(r"([A-Z])\s+(.+)", text, flags=re.S)  # "B 12": a letter only with B's text
    if m and m.group(1) in letters and _same_text(m.group(2), choices[letters.index(m.group(1))]):
        return frozenset(m.group(1))
    return _option_by_value(text, choices)


def choice_letter(text: str, choices: Sequence[str]) -> str | None:
    """The option letter(s) ``text`` names, as one string ("B", or "AC" for several), or None."""
    said = choice_letters(text, choices)
    return "".join(sorted(said)) or None


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
        if str(choice).strip() and answer_matches(f"{BOXED}{{{text}}}", str(choice))
    ]
    return frozenset(hits) if len(hits) == 1 else frozenset()


def number_of(text: str) -> float | None:
    """The number ``text`` states ("1,234", "12.5 cm", "50\\%", "2π", "\\frac{1}{2}"), or None."""
    text = unwrap_text(clean_answer(str(text))).replace("π", "\\pi")
    plain = text.replace(",", "") if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", text) else text
    m = re.fullmatch(
        r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*(?:\\?%|[a-zA-Z ]{0,12})", plain
    )
    if m:
        return float(m.group(1))
    return _sympy_number(text)


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


# --- grading many, with a hard limit -----------------------------------------------------------


def grade_serial(
    completions: Sequence[str],
    golds: Sequence[str],
    choices: Sequence | None = None,
    rules: Sequence[dict | None] | None = None,
    precheck: bool = True,
) -> list[Verdict]:
    """Grade in this process, one after another, no time limit (for trusted input and benches)."""
    n = len(completions)
    choices = choices if choices is not None else [None] * n
    rules = rules if rules is not None else [None] * n
    return [
        grade_completion(c, g, o, r, precheck)
        for c, g, o, r in zip(completions, golds, choices, rules, strict=True)
    ]


def count_statuses(verdicts: Sequence[Verdict]) -> dict[str, int]:
    """``{status: count}`` for every status in ``STATUSES`` (zeros included)."""
    counts = Counter(v.status for v in verdicts)
    return {s: counts.get(s, 0) for s in STATUSES}


class Grader:
    """A pool of grading worker processes with a hard per-sample time limit.

    ``grade_many`` settles what needs no comparison (``quick_verdict``: unclosed, no answer,
    refused by the pre-check) in this process, then hands one sample at a time to each idle
    worker; a worker still busy at its deadline is killed (SIGKILL) and replaced, and its sample
    is graded ``timeout``. ``counts`` tallies every status since start; each call logs its
    ``error``/``timeout``/``refused`` verdicts. Safe to call from several threads (calls take turns).
    """

    def __init__(
        self,
        workers: int | None = None,
        timeout: float = 5.0,
        memory_mb: int | None = 4096,
        precheck: bool = True,
    ) -> None:
        self.workers = workers or max(1, min(8, os.cpu_count() or 1))
        self.timeout = timeout
        self.memory_mb = memory_mb
        self.precheck = precheck
        self.counts: Counter[str] = Counter()
        self._pool: list[_Worker] = []
        self._lock = threading.Lock()

    @property
    def timeouts(self) -> int:
        return self.counts["timeout"]

    def grade_many(
        self,
        completions: Sequence[str],
        golds: Sequence[str],
        choices: Sequence[Sequence[str] | None] | None = None,
        rules: Sequence[dict | None] | None = None,
    ) -> list[Verdict]:
        """Verdicts for ``completions`` against ``golds`` (per-sample ``choices`` and ``rules``)."""
        if len(completions) != len(golds):
            raise ValueError(f"{len(completions)} completions but {len(golds)} golds")
        n = len(completions)
        choices = list(choices) if choices is not None else [None] * n
        rules = list(rules) if rules is not None else [None] * n
        results: list[Verdict | None] = [quick_verdict(c, self.precheck) for c in completions]
        tasks = [
            (i, (c, g, list(o) if o else None, r, self.precheck))
            for i, (c, g, o, r) in enumerate(zip(completions, golds, choices, rules, strict=True))
            if results[i] is None
        ]
        if tasks:
            with self._lock:
                self._fill()
                self._dispatch(tasks, results)
        self._record(results)  # type: ignore[arg-type]
        return results  # type: ignore[return-value]

    def _dispatch(self, tasks: list, results: list) -> None:
        # a task's clock starts when a warm worker takes it: a worker started to replace a
        # killed one first loads math-verify and says so (its start-up is not the task's time)
        pending = list(reversed(tasks))
        busy: dict[_Worker, tuple[int, float]] = {}
        while pending or busy:
            for w in self._pool:
                if pending and w.ready and w not in busy:
                    index, task = pending.pop()
                    w.send(task)
                    busy[w] = (index, time.monotonic() + self.timeout)
            starting = [w for w in self._pool if not w.ready] if pending else []
            deadline = min((d for _, d in busy.values()), default=None)
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready = wait([w.conn for w in [*busy, *starting]], timeout=left)
            for w in starting:
                if w.conn in ready:
                    self._warm(w)
            for w in list(busy):
                index, due = busy[w]
                if w.conn in ready:
                    try:
                        results[index] = Verdict(**w.recv())
                    except (EOFError, OSError, ValueError):  # died (e.g. killed for memory)
                        results[index] = Verdict("error", detail="grading worker died")
                        self._replace(w)
                    del busy[w]
                elif time.monotonic() >= due:
                    results[index] = Verdict("timeout", detail=f"over {self.timeout:g}s")
                    self._replace(w)
                    del busy[w]

    def _warm(self, worker: _Worker) -> None:
        try:
            worker.recv()  # its "ready" line
            worker.ready = True
        except (EOFError, OSError, ValueError) as e:
            raise RuntimeError(
                f"a grading worker failed to start: {e}; run `{sys.executable} -m "
                "ovr_core.grading` to see why"
            ) from e

    def _record(self, verdicts: list[Verdict]) -> None:
        self.counts.update(v.status for v in verdicts)
        for i, v in enumerate(verdicts):
            if v.status in GRADER_TROUBLE:
                log.warning("grading sample %d: %s (%s)", i, v.status, v.detail)

    def close(self) -> None:
        """Stop the workers."""
        for w in self._pool:
            w.stop()
        self._pool = []

    def _fill(self) -> None:
        for w in self._pool:
            if not w.alive():
                w.kill()
        self._pool = [w for w in self._pool if w.alive()]
        while len(self._pool) < self.workers:
            self._pool.append(_Worker(self.memory_mb))

    def _replace(self, worker: _Worker) -> None:
        worker.kill()
        self._pool[self._pool.index(worker)] = _Worker(self.memory_mb)

    def __enter__(self) -> Grader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_DEFAULT: Grader | None = None


def default_grader() -> Grader:
    """The process-wide grader the rewards use (started on first use, stopped at exit).

    ``OVR_GRADER_WORKERS`` and ``OVR_GRADER_TIMEOUT`` (seconds) override its size and limit.
    """
    global _DEFAULT
    if _DEFAULT is None:
        workers = int(os.environ.get("OVR_GRADER_WORKERS", "0")) or None
        _DEFAULT = Grader(workers, float(os.environ.get("OVR_GRADER_TIMEOUT", "5")))
        atexit.register(_DEFAULT.close)
    return _DEFAULT


class _Worker:
    """One grading process: JSON lines in on stdin, out on stdout (``python -m ovr_core.grading``).

    A plain subprocess rather than ``multiprocessing``: it never re-imports the caller's main
    script, never inherits a trainer's threads or CUDA state, and starts in well under a second.
    """

    def __init__(self, memory_mb: int | None) -> None:
        cmd = [sys.executable, "-m", "ovr_core.grading", "--memory-mb", str(memory_mb or 0)]
        self.process = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.conn = self.process.stdout
        self.ready = False  # set once it has loaded math-verify and said so

    def send(self, task) -> None:
        self.process.stdin.write(json.dumps(task).encode() + b"\n")
        self.process.stdin.flush()

    def recv(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            raise EOFError("grading worker exited")
        return json.loads(line)

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(5)
        self._close()

    def stop(self) -> None:
        try:
            self.process.stdin.close()  # end of input: the worker returns
            self.process.wait(2)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait(5)
        self._close()

    def _close(self) -> None:
        for f in (self.process.stdin, self.process.stdout):
            try:
                f.close()
            except OSError:
                pass


def _serve(memory_mb: int) -> None:
    """The worker loop: grade each task line, answer with a verdict line, until stdin ends."""
    if memory_mb:
        import resource

        limit = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    # keep stdout for the protocol alone: anything a library prints goes to stderr
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    import math_verify  # noqa: F401  (loaded before the first task's clock starts)

    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    for line in sys.stdin:
        try:
            verdict = grade_completion(*json.loads(line))
        except BaseException as e:  # math-verify's TimeoutException is a BaseException
            verdict = Verdict("error", detail=f"{type(e).__name__}: {e}"[:300])
        out.write(json.dumps(verdict.as_dict()) + "\n")
        out.flush()


def wrap_gold(gold: str) -> str:
    """Put a gold answer in ``\\boxed{}`` unless it already is (math-verify misreads bare LaTeX)."""
    gold = gold.strip()
    if BOXED in gold or gold.startswith("$"):
        return gold
    return f"${BOXED}{{{gold}}}$"


def answer_matches(completion: str, gold: str, think_in_prompt: bool = False) -> bool:
    """True when the completion's last ``\\boxed{}`` equals ``gold`` under math-verify.

    Only the answer part counts (a box inside the reasoning is not an answer); no box, or a trace
    never closed, is False. math-verify's own timeouts are off (they rely on ``signal.alarm``,
    which fails off the main thread): callers that face untrusted output run this in a worker
    process with a hard limit (``Grader``).
    """
    from math_verify import parse, verify

    split = split_reasoning(completion, think_in_prompt)
    if split.had_reasoning and not split.closed:
        return False
    boxed = final_box(split.answer)
    if boxed is None:
        return False
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # it warns without timeouts
    gold_parsed = parse(wrap_gold(gold), parsing_timeout=None)
    pred_parsed = parse(f"${BOXED}{{{boxed}}}$", parsing_timeout=None)
    if not gold_parsed or not pred_parsed:
        return gold.strip() == boxed.strip()
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=None))


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(
        description="grading worker (started by ovr_core.grading.Grader)"
    )
    parser.add_argument("--memory-mb", type=int, default=0)
    _serve(parser.parse_args().memory_mb)
