"""Is the model hub there? One answer for serving (weights), evaluation (datasets) and training.

`hub_reachable()` is asked before any download is tried, so an offline machine gets one clear line
instead of minutes of retries. It honours the hub's own settings, read when it is called: the
endpoint (``HF_ENDPOINT``, a mirror or a local test server) and ``HF_HUB_OFFLINE``.
"""

from __future__ import annotations

import os
import threading

DEFAULT_ENDPOINT = "https://huggingface.co"  # huggingface_hub's own default


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` says so, with huggingface_hub's reading of true (1/ON/YES/TRUE)."""
    from huggingface_hub.constants import ENV_VARS_TRUE_VALUES

    return os.environ.get("HF_HUB_OFFLINE", "").upper() in ENV_VARS_TRUE_VALUES


def hub_endpoint() -> str:
    """The hub's address: ``HF_ENDPOINT`` as it is now, else huggingface_hub's default."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def hub_reachable(timeout: float = 3.0) -> bool:
    """True when the hub answers; False at once when offline, and after at most
    ``2 * timeout + 1`` seconds when it does not answer (``timeout`` bounds the connect and each
    read, as in httpx). Any HTTP answer counts (a mirror may refuse HEAD /); a refused connection
    or a name that does not resolve is False.
    """
    if hub_offline():
        return False
    import httpx

    answered: list[bool] = []

    def head() -> None:
        try:
            httpx.head(hub_endpoint(), timeout=timeout)
            answered.append(True)
        except httpx.HTTPError:
            answered.append(False)

    # httpx's timeout does not cover name resolution, which can hang for long on a machine without
    # DNS, nor an answer trickling in: a daemon thread with a deadline bounds the whole check (room
    # for a connect and a read of `timeout` each, so a slow but working hub is not called down)
    probe = threading.Thread(target=head, daemon=True)
    probe.start()
    probe.join(2 * timeout + 1)
    return bool(answered and answered[0])
