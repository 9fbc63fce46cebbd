"""The eval's progress: one line per benchmark, drawn by rich (the project's one progress library).

`BenchProgress` shows answered / total, the accuracy so far, elapsed time and ETA; a warning logged
meanwhile (a failed request) is printed above the line instead of breaking it. Off a terminal rich
prints the line once, when the benchmark is done.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class BenchProgress:
    """``with BenchProgress("mathvista", total=1000, done=250) as bar: bar.advance("acc 71.0%")``."""

    def __init__(
        self, bench: str, total: int, done: int = 0, enabled: bool = True, out: TextIO | None = None
    ):
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            # on stderr (``out`` in tests), where tqdm drew it: stdout stays the report's
            console=Console(file=out) if out else Console(stderr=True),
            disable=not enabled,
            redirect_stdout=False,
        )
        self.task = self.progress.add_task(bench, total=total, completed=done, status="")
        self.moved: list[tuple[logging.StreamHandler, object]] = []

    def advance(self, status: str) -> None:
        """One more question answered; ``status`` is the accuracy (and failures) so far."""
        self.progress.update(self.task, advance=1, status=status)

    def __enter__(self) -> BenchProgress:
        real = sys.stderr
        self.progress.start()
        # rich redirects sys.stderr above the live line; logging's handlers hold the real stream
        if sys.stderr is not real:
            for handler in logging.getLogger().handlers:
                if type(handler) is logging.StreamHandler and handler.stream is real:
                    self.moved.append((handler, handler.setStream(sys.stderr)))
        return self

    def __exit__(self, *exc) -> None:
        for handler, stream in self.moved:
            handler.setStream(stream)
        self.progress.stop()
