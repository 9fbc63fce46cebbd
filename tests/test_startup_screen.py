"""What a person sees when `ovr-serve` starts: the real command, on a terminal (a pty) or a pipe.

The demo's screen from start to the ready banner stays under 15 lines with the banner last, vLLM's
own log goes to the file the banner names, one compact line follows per request (none with
--quiet), and --verbose streams vLLM's log as before. `ovr-webui` alone: the same port check and a
short banner last.
"""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from tests.conftest import ROOT, free_port

BANNER_END = "Ctrl-C stops everything."
REQUEST_LINE = re.compile(r"^\d\d:\d\d:\d\d  200  POST /v1/chat/completions  ~?\d+ tok  \d+ ms$")


def screen_lines(raw: str) -> list[str]:
    """The lines a terminal shows for ``raw``: a carriage return redraws its line from column 0."""
    lines = []
    for line in raw.replace("\r\n", "\n").split("\n"):
        shown = ""
        for part in line.split("\r"):
            shown = part + shown[len(part) :]
        lines.append(shown.rstrip())
    return lines


class Session:
    """`ovr-serve ARGS` on a pty (``tty=True``) or a pipe, its output collected as it comes."""

    def __init__(self, args: list[str], env: dict[str, str], tty: bool):
        self.raw = b""
        if tty:
            reader, writer = pty.openpty()
        else:
            reader, writer = os.pipe()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ovr_serve.cli", *args],
            stdin=subprocess.DEVNULL,
            stdout=writer,
            stderr=writer,
            env=env,
            cwd=ROOT,
            start_new_session=True,
        )
        os.close(writer)
        self.reader = reader
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            ready, _, _ = select.select([self.reader], [], [], 1.0)
            if not ready:
                continue
            try:
                data = os.read(self.reader, 65536)
            except OSError:
                return
            if not data:
                return
            self.raw += data

    def text(self) -> str:
        return self.raw.decode(errors="replace")

    def wait_for(self, needle: str, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.text():
            assert self.proc.poll() is None, self.text()[-3000:]
            assert time.monotonic() < deadline, self.text()[-3000:]
            time.sleep(0.5)
        time.sleep(1.0)  # anything printed right after it arrives too

    def stop(self) -> int:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout=60)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)


def _env(tiny_model_path: Path) -> dict[str, str]:
    return {**os.environ, "OVR_CACHE": str(tiny_model_path.parent), "OVR_API_KEY": ""}


def _ask(port: int, stream: bool = False) -> int | None:
    """One greedy chat request; its completion tokens when not streamed."""
    client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none")
    messages = [{"role": "user", "content": "What is 7 * 6?"}]
    reply = client.chat.completions.create(
        model="ovr", messages=messages, max_tokens=40, temperature=0.0, stream=stream
    )
    if not stream:
        return reply.usage.completion_tokens
    texts = 0  # chunks that carry text: what the server counts for a stream
    for chunk in reply:
        delta = chunk.choices[0].delta if chunk.choices else None
        texts += bool(delta and (delta.content or getattr(delta, "reasoning", None)))
    return texts


@pytest.mark.slow
def test_demo_screen_is_short_ends_on_the_banner_then_one_line_per_request(
    tiny_model_path, tmp_path
):
    port, ui_port = free_port(), free_port()
    args = ["--demo", "--ui", "--port", str(port), "--ui_port", str(ui_port)]
    session = Session(args, _env(tiny_model_path), tty=True)
    try:
        session.wait_for(BANNER_END)
        screen = [line for line in screen_lines(session.text())]
        while screen and not screen[-1]:
            screen.pop()
        assert len(screen) < 15, "\n".join(screen)
        assert screen[-1].startswith(BANNER_END)  # the banner is the last thing on the screen
        shown = "\n".join(screen)
        assert f"http://127.0.0.1:{port}/v1" in shown and f"http://127.0.0.1:{ui_port}" in shown
        assert "OVR_API_KEY" in shown and 'model="ovr"' in shown
        assert "non-default args" not in shown and "Available routes" not in shown
        log_path = Path(re.search(r"vLLM log: (\S+)", shown)[1])
        log = log_path.read_text()
        assert "non-default args" in log and "Starting vLLM server on" in log  # vLLM's own log
        assert "OVR web UI is ready" in log  # and the web UI's
        tokens = _ask(port)
        chunks = _ask(port, stream=True)
        time.sleep(2)
        after = screen_lines(session.text())[len(screen) :]
        requests = [line for line in after if line]
        assert len(requests) == 2 and all(REQUEST_LINE.match(r) for r in requests), requests
        assert f"  {tokens} tok  " in requests[0] and f"  ~{chunks} tok  " in requests[1], requests
        assert 0 < chunks <= tokens  # greedy: the same tokens, some of which print nothing
    finally:
        assert session.stop() == 0


@pytest.mark.slow
def test_quiet_prints_no_request_lines_and_a_pipe_gets_one_line_per_phase(
    tiny_model_path, tmp_path
):
    port = free_port()
    log_file = tmp_path / "vllm.log"
    args = ["--model", str(tiny_model_path), "--port", str(port), "--cpu_kvcache_gib", "1"]
    session = Session([*args, "--quiet", "--log_file", str(log_file)], _env(tiny_model_path), False)
    try:
        session.wait_for(BANNER_END)
        lines = session.text().splitlines()
        assert "\r" not in session.text()  # not a terminal: no redrawn line
        phases = [line for line in lines if line.startswith("vLLM: ")]
        assert 3 <= len(phases) <= 13 and lines[-1] == BANNER_END, lines
        assert f"vLLM log: {log_file}" in session.text()
        before = session.text()
        _ask(port)
        time.sleep(2)
        assert session.text() == before  # --quiet: nothing after the banner
        assert "ovr-request" in log_file.read_text()  # though the server logged the request
    finally:
        assert session.stop() == 0


@pytest.mark.slow
@pytest.mark.parametrize("verbose", [False, True])
def test_a_failing_vllm_shows_its_log_tail_or_with_verbose_the_whole_stream(
    tiny_model_path, tmp_path, verbose
):
    log_file = tmp_path / "vllm.log"
    args = ["--model", str(tiny_model_path), "--port", str(free_port())]
    args += ["--log_file", str(log_file), *(["--verbose"] if verbose else [])]
    args += ["--", "--no-such-vllm-flag"]
    out = subprocess.run(
        [sys.executable, "-m", "ovr_serve.cli", *args],
        capture_output=True,
        text=True,
        env=_env(tiny_model_path),
        cwd=ROOT,
        timeout=300,
    )
    assert out.returncode != 0
    if verbose:  # vLLM's stream on our terminal, as before; no file
        assert "--no-such-vllm-flag" in out.stderr and "(see its log above)" in out.stderr
        assert not log_file.exists() or log_file.read_text() == ""
    else:  # its tail in our error, the whole of it in the file
        assert "the end of its log" in out.stderr and f"(full log: {log_file})" in out.stderr
        assert "--no-such-vllm-flag" in log_file.read_text()


def test_webui_port_in_use_is_one_line_and_starts_nothing(capsys):
    from webui.app import main as webui_main

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        assert webui_main(["--port", str(port)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"port {port} (web UI) is already in use" in err[0]
    assert f"pid {os.getpid()}" in err[0] and "--port " in err[0]


@pytest.mark.slow
def test_webui_alone_ends_on_its_banner(tmp_path):
    port, dead = free_port(), free_port()
    args = ["--port", str(port), "--endpoint", f"http://127.0.0.1:{dead}/v1", "--model", "ovr"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "webui.app", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
        start_new_session=True,
        env={**os.environ, "OVR_API_KEY": ""},
    )
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith("Ctrl-C stops it."):
                break
        assert lines and lines[-1] == "Ctrl-C stops it.", lines
        assert len(lines) <= 6, lines  # no Gradio chatter before it
        assert lines[0] == f"OVR web UI is ready: http://127.0.0.1:{port}"
        assert any("does not answer yet" in line for line in lines)  # the endpoint is down
        assert httpx.get(f"http://127.0.0.1:{port}/", timeout=10).status_code == 200
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
