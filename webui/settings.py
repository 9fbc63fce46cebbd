"""What the web UI is told: command line, environment and login file, as one settings object.

The upstream API key comes from ``OVR_API_KEY`` and stays in the server process; an optional login
comes from ``OVR_UI_USER``/``OVR_UI_PASSWORD`` or ``--auth-file`` (lines of ``user:password``).
"""

from __future__ import annotations

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


# Flags whose default an environment variable gives (a flag on the command line still wins).
ENV_DEFAULTS = {"endpoint": "OVR_ENDPOINT", "root_path": "OVR_UI_ROOT_PATH"}


@dataclass
class UISettings:
    """Everything the app needs to know. Each field with help text is a flag (``--max-tokens`` or
    ``--max_tokens``); the key and the logins come from the environment and ``--auth-file``."""

    endpoint: str = field(
        default=DEFAULT_ENDPOINT,
        metadata={"help": "OpenAI-compatible base URL, ending in /v1 (env: OVR_ENDPOINT)."},
    )
    model: str | None = field(
        default=None, metadata={"help": "Model name to preselect; without it, the first listed."}
    )
    host: str = field(
        default=DEFAULT_HOST,
        metadata={"help": "Address to listen on. Anything beyond loopback requires a login."},
    )
    port: int = field(default=DEFAULT_UI_PORT, metadata={"help": "Port to listen on."})
    root_path: str | None = field(
        default=None,
        metadata={
            "help": "URL prefix when served behind a reverse proxy, e.g. /ovr"
            " (env: OVR_UI_ROOT_PATH)."
        },
    )
    auth_file: str | None = field(
        default=None, metadata={"help": "File of 'user:password' lines for the login."}
    )
    concurrency: int = field(
        default=16,
        metadata={"help": "Chats generating at the same time (Gradio's queue runs 1 by default)."},
    )
    max_tokens: int = field(
        default=DEFAULT_MAX_TOKENS,
        metadata={"help": "Default max tokens per answer (trace included)."},
    )
    idle_timeout: float = field(
        default=300.0,
        metadata={"help": "Seconds without a token before a generation counts as timed out."},
    )
    update_interval: float = field(
        default=UPDATE_INTERVAL_S,
        metadata={"help": "Seconds between chat updates while an answer streams (0: every token)."},
    )
    allowed_hosts: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Host names the UI answers besides loopback names and its address ('*': any);"
            " checked on loopback or without a login."
        },
    )
    allowed_origins: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Other sites' origins (scheme://host:port) whose pages may send requests."
        },
    )
    max_upload_mb: int = field(
        default=MAX_UPLOAD_BYTES >> 20,
        metadata={"help": "Largest upload, per file and per request, in MB."},
    )
    # Not flags (init=False): a key on the command line would show in `ps`.
    api_key: str | None = field(default=None, init=False, repr=False)
    auth: list[tuple[str, str]] | None = field(default=None, init=False, repr=False)

    @property
    def max_upload_bytes(self) -> int:
        """The upload cap in bytes."""
        return self.max_upload_mb << 20


def parse_settings(argv: list[str] | None = None) -> UISettings:
    """Command line (``ovr-webui --help``) plus ``OVR_API_KEY``/``OVR_UI_USER``/``OVR_UI_PASSWORD``
    into settings; refuses to listen beyond loopback without a login."""
    from transformers import HfArgumentParser  # only here: the app's other modules stay light

    parser = HfArgumentParser(
        UISettings,
        prog="ovr-webui",
        description="The OVR web UI: chat with images beside long reasoning traces.",
    )
    env = {name: os.environ[var] for name, var in ENV_DEFAULTS.items() if var in os.environ}
    parser.set_defaults(**env)
    settings = UISettings(**vars(parser.parse_args(argv)))
    settings.endpoint = settings.endpoint.rstrip("/")
    settings.api_key = os.environ.get(API_KEY_ENV) or None
    settings.auth = read_auth(settings.auth_file)
    user, password = os.environ.get("OVR_UI_USER"), os.environ.get("OVR_UI_PASSWORD")
    if user and password:
        settings.auth = (settings.auth or []) + [(user, password)]
    if not settings.auth and not is_loopback(settings.host):
        # Anyone who reaches the port would chat with the server's API key.
        raise SystemExit(
            f"ovr-webui: refusing to listen on {settings.host} without a login: set OVR_UI_USER and"
            " OVR_UI_PASSWORD (or --auth-file with user:password lines), or listen on 127.0.0.1"
        )
    return settings


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
