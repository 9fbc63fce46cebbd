"""ovr-eval's progress line (ovr_eval.progress, rich): on a terminal one line per benchmark,
redrawn in place, with a warning logged meanwhile printed above it rather than into it."""

from __future__ import annotations

import logging
import os
import sys

from ovr_eval.progress import BenchProgress
from tests.helpers.terminal import read_pty, shown_lines


def test_the_line_counts_answers_and_a_logged_warning_lands_above_it(monkeypatch):
    reader, writer = os.openpty()
    tty = open(writer, "w")  # noqa: SIM115 - closed below, after rich has let go of it
    monkeypatch.setattr(sys, "stderr", tty)
    handler = logging.StreamHandler(tty)  # what logging.basicConfig gives ovr-eval
    logging.getLogger().addHandler(handler)
    try:
        with BenchProgress("math500", total=4, done=1, out=tty) as bar:
            bar.advance("acc 50.0%")
            logging.getLogger("ovr_eval.run").warning("math500 q3: request failed: timeout")
            bar.advance("acc 66.7%, 1 failed")
        assert handler.stream is tty  # given back
    finally:
        logging.getLogger().removeHandler(handler)
        tty.close()
    shown = shown_lines(read_pty(reader))
    assert shown[0] == "math500 q3: request failed: timeout", shown  # above the line, whole
    assert len(shown) == 2 and shown[1].startswith("math500 "), shown
    assert " 3/4 acc 66.7%, 1 failed " in shown[1] and "ETA" in shown[1]
