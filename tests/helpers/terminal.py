"""What a terminal shows: read everything written to a pty, then apply carriage returns."""

from __future__ import annotations

import os
import re

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def read_pty(reader: int) -> str:
    """All that was written to the pty whose master end is ``reader`` (the writer is closed), then
    close it; a pty hands its buffer out a few kB per read, so read until it is empty."""
    os.set_blocking(reader, False)
    chunks = []
    while True:
        try:
            data = os.read(reader, 1 << 16)
        except OSError:  # EAGAIN: drained; EIO: the other end is closed and drained
            break
        if not data:
            break
        chunks.append(data)
    os.close(reader)
    return b"".join(chunks).decode(errors="replace")


def shown_lines(raw: str) -> list[str]:
    """The non-empty lines left on screen: escape codes dropped, a carriage return redraws."""
    plain = ANSI.sub("", raw).replace("\r\n", "\n")
    screen = [line.split("\r")[-1].rstrip() for line in plain.split("\n")]
    return [line for line in screen if line.strip()]
