"""Grading many answers with a hard per-sample time limit: a pool of worker processes.

The rules live in ``ovr_core.grading``; this module runs them where a hostile answer cannot hang
or exhaust the caller. math-verify's own timeouts use ``signal.alarm`` (main thread only) and
adversarial output makes sympy run for minutes or exhaust memory, so each sample is graded in a
worker process; a worker past its deadline is SIGKILLed and replaced (``timeout``); workers run
with an address-space cap. Every verdict's status is counted (``Grader.counts``) and every
``error``/``timeout``/``refused`` is logged: nothing scores 0 silently.

Why not a maintained pool (pebble's ``ProcessPool``, which has per-task timeouts): its workers are
``multiprocessing`` children. Under ``spawn``/``forkserver`` each one re-imports the caller's main
module (``python -m ovr_train.rl`` would load torch and TRL in every grading worker before its
memory cap), and under ``fork`` it inherits a trainer's threads and CUDA state. A worker here is
``python -m ovr_core.grading_pool``: it imports the grader and nothing of the caller.

Two strictnesses, one grader: ``Grader(strict=False)`` is the evaluation's (each official
scorer's extraction chain), ``default_grader()`` the RL reward's (``strict=True``: a box is
required, and an output that states two different answers scores 0). See ``ovr_core.grading``.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from multiprocessing.connection import wait

from ovr_core.grading import GRADER_TROUBLE, Verdict, grade_completion, quick_verdict

log = logging.getLogger("ovr_core.grading")


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
        strict: bool = False,
    ) -> None:
        self.workers = workers or max(1, min(8, os.cpu_count() or 1))
        self.timeout = timeout
        self.memory_mb = memory_mb
        self.precheck = precheck
        self.strict = strict
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
        results: list[Verdict | None] = [
            quick_verdict(c, self.precheck, self.strict, r)
            for c, r in zip(completions, rules, strict=True)
        ]
        tasks = [
            (i, (c, g, list(o) if o else None, r, self.precheck, self.strict))
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
                "ovr_core.grading_pool` to see why"
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
    """The process-wide grader the RL rewards use, strict (started on first use, stopped at exit).

    ``OVR_GRADER_WORKERS`` and ``OVR_GRADER_TIMEOUT`` (seconds) override its size and limit.
    """
    global _DEFAULT
    if _DEFAULT is None:
        workers = int(os.environ.get("OVR_GRADER_WORKERS", "0")) or None
        _DEFAULT = Grader(workers, float(os.environ.get("OVR_GRADER_TIMEOUT", "5")), strict=True)
        atexit.register(_DEFAULT.close)
    return _DEFAULT


class _Worker:
    """One grading process: JSON lines in on stdin, out on stdout (``python -m ovr_core.grading_pool``).

    A plain subprocess rather than ``multiprocessing``: it never re-imports the caller's main
    script, never inherits a trainer's threads or CUDA state, and starts in well under a second.
    """

    def __init__(self, memory_mb: int | None) -> None:
        cmd = [sys.executable, "-m", "ovr_core.grading_pool", "--memory-mb", str(memory_mb or 0)]
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


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(
        description="grading worker (started by ovr_core.grading_pool.Grader)"
    )
    parser.add_argument("--memory-mb", type=int, default=0)
    _serve(parser.parse_args().memory_mb)
