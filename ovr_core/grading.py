"""Is this answer right? The one grader that the RL rewards and ``ovr-eval`` share.

It sits beside the output format (``ovr_core.format``) and imports nothing else of ours. Each
sample is graded in a worker process with a hard per-sample time limit:

- math-verify's own timeouts use ``signal.alarm`` (main thread only), its ``TimeoutException``
  derives from ``BaseException``, and adversarial output (``\\boxed{9^{9^{9^{9^{9}}}}}``) makes
  sympy run for minutes or exhaust memory. So each sample goes to a worker process; a worker that
  passes the deadline is SIGKILLed and replaced, and the sample is graded ``timeout`` (0.0).
- Workers are plain subprocesses (``python -m ovr_core.grading``) speaking JSON lines, started once
  and reused; they run with an address-space cap so a memory blow-up fails the sample, not the
  machine.

Grading rule (``grade_completion``): only the answer after ``</think>`` counts; a trace never
closed (cut off, or stopped inside it) is ``unclosed``; no ``\\boxed{}`` is ``no_answer``; every box in
the answer must match the gold (a hedge such as ``\\boxed{3} or \\boxed{4}`` is ``wrong``); gold is
wrapped in ``\\boxed{}`` before parsing (``wrap_gold``). With ``choices`` (multiple choice), the box may
hold the letter ("B", "(B)", "B. 12") or the text of a choice; it is mapped to a letter and compared
with the gold letter (the benchmark's own rule).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import wait

from ovr_core.format import BOXED, boxed_contents, extract_boxed, split_reasoning

log = logging.getLogger(__name__)

STATUSES = ("correct", "wrong", "no_answer", "unclosed", "timeout", "error")
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


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


def grade_completion(completion: str, gold: str, choices: Sequence[str] | None = None) -> Verdict:
    """Grade one completion in this process, without a time limit (workers call this)."""
    split = split_reasoning(completion)
    if split.had_reasoning and not split.closed:
        return Verdict("unclosed")
    boxes = boxed_contents(split.answer)
    if not boxes:
        return Verdict("no_answer")
    extracted = boxes[-1]
    if choices:
        gold_letter = choice_letter(gold, choices)
        ok = gold_letter is not None and all(
            choice_letter(b, choices) == gold_letter for b in boxes
        )
    else:
        ok = all(answer_matches(f"\\boxed{{{b}}}", gold) for b in boxes)
    return Verdict("correct" if ok else "wrong", extracted)


def choice_letter(text: str, choices: Sequence[str]) -> str | None:
    """The option letter that ``text`` names: a letter ("B", "(B)", "B. 12") or a choice's text."""
    text = text.strip()
    letters = LETTERS[: len(choices)]
    m = re.fullmatch(r"\(?([A-Z])\)?(?:\s*[.:)]\s*.*|\s+.*)?", text, flags=re.S)
    if m and m.group(1) in letters:
        return m.group(1)
    m = re.fullmatch(r"\\text\{\s*\(?([A-Z])\)?\s*\}", text)
    if m and m.group(1) in letters:
        return m.group(1)
    for letter, choice in zip(letters, choices, strict=False):
        if text == str(choice).strip():
            return letter
    for letter, choice in zip(letters, choices, strict=False):
        if answer_matches(f"\\boxed{{{text}}}", str(choice)):
            return letter
    return None


def grade_serial(
    completions: Sequence[str], golds: Sequence[str], choices: Sequence | None = None
) -> list[Verdict]:
    """Grade in this process, one after another, no time limit (for trusted input and benches)."""
    choices = choices if choices is not None else [None] * len(completions)
    return [grade_completion(c, g, o) for c, g, o in zip(completions, golds, choices, strict=True)]


class Grader:
    """A pool of grading worker processes with a hard per-sample time limit.

    ``grade_many`` hands one sample at a time to each idle worker; a worker still busy at its
    deadline is killed (SIGKILL) and replaced, and its sample is graded ``timeout``. Safe to call
    from several threads (calls take turns).
    """

    def __init__(
        self, workers: int | None = None, timeout: float = 5.0, memory_mb: int | None = 4096
    ) -> None:
        self.workers = workers or max(1, min(8, os.cpu_count() or 1))
        self.timeout = timeout
        self.memory_mb = memory_mb
        self.timeouts = 0
        self._pool: list[_Worker] = []
        self._lock = threading.Lock()

    def grade_many(
        self,
        completions: Sequence[str],
        golds: Sequence[str],
        choices: Sequence[Sequence[str] | None] | None = None,
    ) -> list[Verdict]:
        """Verdicts for ``completions`` against ``golds`` (and per-sample ``choices``), in order."""
        if len(completions) != len(golds):
            raise ValueError(f"{len(completions)} completions but {len(golds)} golds")
        choices = list(choices) if choices is not None else [None] * len(completions)
        tasks = list(enumerate(zip(completions, golds, choices, strict=True)))
        results: list[Verdict | None] = [None] * len(tasks)
        with self._lock:
            self._fill()
            pending = list(reversed(tasks))
            busy: dict[_Worker, tuple[int, float]] = {}
            while pending or busy:
                for w in self._pool:
                    if pending and w not in busy:
                        index, (c, g, o) = pending.pop()
                        w.send((c, g, list(o) if o else None))
                        busy[w] = (index, time.monotonic() + self.timeout)
                deadline = min(d for _, d in busy.values())
                ready = wait([w.conn for w in busy], timeout=max(0.0, deadline - time.monotonic()))
                for w in list(busy):
                    index, due = busy[w]
                    if w.conn in ready:
                        try:
                            results[index] = Verdict(**w.recv())
                        except (
                            EOFError,
                            OSError,
                            ValueError,
                        ):  # died (e.g. killed by the OS for memory)
                            results[index] = Verdict("error", detail="grading worker died")
                            self._replace(w)
                        del busy[w]
                    elif time.monotonic() >= due:
                        results[index] = Verdict("timeout", detail=f"over {self.timeout:g}s")
                        self.timeouts += 1
                        log.warning(
                            "grading sample %d passed %.1fs; worker killed", index, self.timeout
                        )
                        self._replace(w)
                        del busy[w]
        return results  # type: ignore[return-value]

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
    import logging

    from math_verify import parse, verify

    split = split_reasoning(completion, think_in_prompt)
    if split.had_reasoning and not split.closed:
        return False
    boxed = extract_boxed(split.answer)
    if boxed is None:
        return False
    logging.getLogger("math_verify").setLevel(
        logging.ERROR
    )  # it warns on every call without timeouts
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
