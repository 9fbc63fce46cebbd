"""What the web UI is told: command line, environment and login file, as one settings object.

The upstream API key comes from ``OVR_API_KEY`` and stays in the server process; an optional login
comes from ``OVR_UI_USER``/``OVR_UI_PASSWORD`` or ``--auth-file`` (lines of ``user:password``).
"""

from __future__ import annotations

import argparse
import hmac
import os
from dataclasses import dataclass, field
from pathlib import Path

from ovr_core.ports import is_loopback
from ovr_core.wire import API_KEY_ENV, DEFAULT_ENDPOINT, DEFAULT_HOST, DEFAULT_UI_PORT
from webui.conversation import MAX_IMPORT_BYTES
from webui.stream import UPDATE_INTERVAL_S

# The largest file the UI reads (a conversation JSON with its images): per file and per request.
MAX_UPLOAD_BYTES = MAX_IMPORT_BYTES

DEFAULT_MAX_TOKENS = 16384  # OVR-7B traces often run to several thousand tokens


@dataclass
class UISettings:
    """Everything the app needs to know, from the command line and the environment."""

    endpoint: str = DEFAULT_ENDPOINT
    model: str | None = None
    api_key: str | None = field(default=None, repr=False)
    host: str = DEFAULT_HOST
    port: int = DEFAULT_UI_PORT
    root_path: str | None = None
    auth: list[tuple[str, str]] | None = field(default=None, repr=False)
    concurrency: int = 16
    max_tokens: int = DEFAULT_MAX_TOKENS
    idle_timeout: float = 300.0
    update_interval: float = UPDATE_INTERVAL_S
    allowed_hosts: list[str] = field(default_factory=list)
    allowed_origins: list[str] = field(default_factory=list)
    max_upload_bytes: int = MAX_UPLOAD_BYTES


def parse_settings(argv: list[str] | None = None) -> UISettings:
    """Command line plus ``OVR_API_KEY``/``OVR_UI_USER``/``OVR_UI_PASSWORD`` into settings."""
    p = argparse.ArgumentParser(
        prog="ovr-webui",
        description="The OVR web UI: chat with images beside long reasoning traces.",
    )
    p.add_argument(
        "--endpoint",
        default=os.environ.get("OVR_ENDPOINT", UISettings.endpoint),
        help="OpenAI-compatible base URL, ending in /v1.",
    )
    p.add_argument(
        "--model", default=None, help="Model name to preselect (default: the first listed)."
    )
    p.add_argument(
        "--host",
        default=UISettings.host,
        help="Address to listen on. Anything beyond loopback requires a login.",
    )
    p.add_argument("--port", type=int, default=UISettings.port, help="Port to listen on.")
    p.add_argument(
        "--root-path",
        default=os.environ.get("OVR_UI_ROOT_PATH"),
        help="URL prefix when served behind a reverse proxy, e.g. /ovr.",
    )
    p.add_argument("--auth-file", default=None, help="File of 'user:password' lines for the login.")
    p.add_argument(
        "--concurrency",
        type=int,
        default=UISettings.concurrency,
        help="Chats generating at the same time (Gradio's queue runs 1 by default).",
    )
    p.add_argument(
        "--max-tokens",
        type=int,
        default=DEFAULT_MAX_TOKENS,
        help="Default max tokens per answer (trace included).",
    )
    p.add_argument(
        "--idle-timeout",
        type=float,
        default=UISettings.idle_timeout,
        help="Seconds without a token before a generation counts as timed out.",
    )
    p.add_argument(
        "--allowed-hosts",
        nargs="*",
        default=[],
        help="Host names the UI answers besides loopback names and its address ('*': any);"
        " checked on loopback or without a login.",
    )
    p.add_argument(
        "--allowed-origins",
        nargs="*",
        default=[],
        help="Other sites' origins (scheme://host:port) whose pages may send requests.",
    )
    p.add_argument(
        "--max-upload-mb",
        type=int,
        default=MAX_UPLOAD_BYTES >> 20,
        help="Largest upload, per file and per request, in MB.",
    )
    a = p.parse_args(argv)
    auth = read_auth(a.auth_file)
    user, password = os.environ.get("OVR_UI_USER"), os.environ.get("OVR_UI_PASSWORD")
    if user and password:
        auth = (auth or []) + [(user, password)]
    if not auth and not is_loopback(a.host):
        # Anyone who reaches the port would chat with the server's API key.
        raise SystemExit(
            f"ovr-webui: refusing to listen on {a.host} without a login: set OVR_UI_USER and"
            " OVR_UI_PASSWORD (or --auth-file with user:password lines), or listen on 127.0.0.1"
        )
    return UISettings(
        endpoint=a.endpoint.rstrip("/"),
        model=a.model,
        api_key=os.environ.get(API_KEY_ENV) or None,
        host=a.host,
        port=a.port,
        root_path=a.root_path,
        auth=auth,
        concurrency=a.concurrency,
        max_tokens=a.max_tokens,
        idle_timeout=a.idle_timeout,
        allowed_hosts=a.allowed_hosts,
        allowed_origins=a.allowed_origins,
        max_upload_bytes=a.max_upload_mb << 20,
    )


def read_auth(path: str | None) -> list[tuple[str, str]] | None:
    """``user:password`` lines (``#`` comments and blank lines skipped); None without a file."""
    if not path:
        return None
    pairs = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, password = line.partition(":")
        if not sep or not user or not password:
            raise SystemExit(f"{path}:{n}: expected 'user:password'")
        pairs.append((user, password))
    return pairs


def auth_check(pairs: list[tuple[str, str]]):
    """Gradio's login callback for these user/password pairs (any text: compared as UTF-8 bytes,
    so a login in another script is checked, never a crash)."""
    known = [(u.encode(), p.encode()) for u, p in pairs]

    def check(user: str, password: str) -> bool:
        given = (str(user).encode("utf-8", "replace"), str(password).encode("utf-8", "replace"))
        ok = False
        for u, p in known:  # compare all, in constant time each
            ok |= hmac.compare_digest(u, given[0]) & hmac.compare_digest(p, given[1])
        return ok

    return check
