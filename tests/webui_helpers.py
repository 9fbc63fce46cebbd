"""Helpers for the web UI's browser tests: start the app as `ovr-serve --ui` does, drive Chromium.

The browser is Debian's ``chromium`` (``apt-get install chromium``), driven by Playwright for
Python; nothing is downloaded (``playwright install`` is never run).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOTS = ROOT / "artifacts" / "screenshots"
CHROMIUM = os.environ.get("OVR_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@contextmanager
def running_webui(
    endpoint: str,
    model: str,
    port: int,
    api_key: str | None = None,
    args=(),
    env: dict | None = None,
    log_name: str = "webui",
):
    """``python -m webui.app`` in a child process (the way ``ovr-serve --ui`` starts it)."""
    cmd = [
        sys.executable,
        "-m",
        "webui.app",
        "--endpoint",
        endpoint,
        "--model",
        model,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *args,
    ]
    child_env = {**os.environ, **(env or {})}
    child_env.pop("OVR_API_KEY", None)
    if api_key:
        child_env["OVR_API_KEY"] = api_key
    log_dir = ROOT / "artifacts" / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    log = open(log_dir / f"{log_name}-{port}.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(cmd, cwd=ROOT, env=child_env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_up(proc, url + "/", log_dir / f"{log_name}-{port}.log")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _wait_up(proc: subprocess.Popen, url: str, log_path: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"web UI exited ({proc.returncode}):\n{log_path.read_text()[-3000:]}"
            )
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"web UI did not answer at {url} in {timeout} s")


@contextmanager
def chromium_page(viewport=(1400, 1000)):
    """A fresh page in headless Debian Chromium (closed afterwards)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(
                viewport={"width": viewport[0], "height": viewport[1]}, accept_downloads=True
            )
            yield context.new_page()
        finally:
            browser.close()


def screenshot(page, name: str) -> Path:
    """Save a full-page screenshot under artifacts/screenshots/ and return its path."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


@contextmanager
def prefix_proxy(target: str, prefix: str, port: int):
    """A reverse proxy on ``port`` that serves ``target`` under ``prefix`` (as nginx would)."""
    import threading

    import uvicorn
    from starlette.applications import Starlette
    from starlette.background import BackgroundTask
    from starlette.responses import Response, StreamingResponse
    from starlette.routing import Route

    hop = {"host", "connection", "transfer-encoding", "keep-alive"}

    async def forward(request):
        path = request.url.path
        if not path.startswith(prefix):
            return Response("not under the prefix", status_code=404)
        async_client = request.app.state.client
        upstream = async_client.build_request(
            request.method,
            path[len(prefix) :] or "/",
            params=request.query_params,
            headers=[(k, v) for k, v in request.headers.items() if k.lower() not in hop],
            content=await request.body(),
        )
        reply = await async_client.send(upstream, stream=True)
        return StreamingResponse(
            reply.aiter_raw(),
            status_code=reply.status_code,
            headers={k: v for k, v in reply.headers.items() if k.lower() not in hop},
            background=BackgroundTask(reply.aclose),
        )

    methods = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]
    app = Starlette(routes=[Route("/{path:path}", forward, methods=methods)])
    app.state.client = httpx.AsyncClient(base_url=target, timeout=None)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}{prefix}"
    finally:
        server.should_exit = True
        thread.join(10)
