"""What crosses the wire between an OVR endpoint and its clients, chosen once and read from here.

The server (``ovr_serve``), the web UI, ``ovr-eval`` and the training data reader all take these
names and defaults from this module, so a rename happens in one place.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

API_KEY_ENV = "OVR_API_KEY"  # the variable that holds the endpoint's key, for server and clients
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_UI_PORT = 7860
SERVED_MODEL_NAME = "ovr"
DEFAULT_ENDPOINT = f"http://{DEFAULT_HOST}:{DEFAULT_PORT}/v1"

# vLLM >= 0.10 sends the trace as ``reasoning``; older vLLM and SGLang as ``reasoning_content``.
# We emit ``reasoning``; everything we write reads both (a client that reads one name silently
# loses the trace on the other kind of server).
REASONING_FIELDS = ("reasoning", "reasoning_content")


def reasoning_of(message: object) -> str:
    """The reasoning text of a message or stream delta (a dict or an SDK object), under either name."""
    for name in REASONING_FIELDS:
        value = message.get(name) if isinstance(message, Mapping) else getattr(message, name, None)
        if value is None and not isinstance(message, Mapping):
            value = (getattr(message, "model_extra", None) or {}).get(name)
        if value:
            return str(value)
    return ""


@dataclass(frozen=True)
class Sampling:
    """Sampling for evaluation and the web UI's defaults. The paper does not state its evaluation
    settings; these are the DeepSeek-R1 / Open-Reasoner-Zero conventions for long-trace models."""

    temperature: float = 0.6
    top_p: float = 0.95
    max_tokens: int | None = 32768


SAMPLING = Sampling()
