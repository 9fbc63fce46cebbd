"""Shared fixtures: the tiny offline test model and one real ovr-serve endpoint per test session."""

from __future__ import annotations

import os
import secrets
import socket
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "artifacts"


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def finished_requests(root: str, api_key: str) -> float:
    """vLLM's count of finished requests (every finish reason), from ``root``/metrics."""
    import re

    import httpx

    r = httpx.get(root + "/metrics", headers={"Authorization": f"Bearer {api_key}"}, timeout=10)
    r.raise_for_status()
    return sum(
        float(v)
        for v in re.findall(r"^vllm:request_success_total\{[^}]*\} ([0-9.e+]+)$", r.text, re.M)
    )


@pytest.fixture(scope="session")
def tiny_model_path() -> Path:
    """The tiny Qwen2.5-VL that has briefly learned the OVR format (built once, cached in .cache/)."""
    from ovr_train.tiny_model import cached_tiny_model

    return cached_tiny_model(ROOT / ".cache")


class Endpoint:
    """What a test needs to talk to a running server."""

    def __init__(self, handle, api_key: str):
        self.handle = handle
        self.base_url = handle.base_url
        self.root = handle.root
        self.api_key = api_key
        self.model = handle.cfg.served_model_name
        self.log_path = handle.log_path

    def client(self, **kwargs):
        """An openai.OpenAI client for this endpoint."""
        from openai import OpenAI

        return OpenAI(base_url=self.base_url, api_key=self.api_key, **kwargs)


@pytest.fixture(scope="session")
def ovr_server(tiny_model_path) -> Endpoint:
    """A real vLLM server started through ovr-serve on the tiny model, with an API key."""
    from ovr_serve.config import ServeConfig
    from ovr_serve.launch import start_server

    key = "test-" + secrets.token_hex(8)
    os.environ["OVR_TEST_API_KEY"] = key
    cfg = ServeConfig(
        model=str(tiny_model_path),
        port=free_port(),
        api_key_env="OVR_TEST_API_KEY",
        cpu_kvcache_gib=1,
        startup_timeout=600,
    )
    (ARTIFACTS / "logs").mkdir(parents=True, exist_ok=True)
    handle = start_server(cfg, log_path=ARTIFACTS / "logs" / f"ovr-serve-{cfg.port}.log")
    try:
        yield Endpoint(handle, key)
    finally:
        handle.stop()
