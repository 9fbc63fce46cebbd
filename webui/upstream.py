"""Talk to the OpenAI-compatible endpoint: list models, stream one turn, say what went wrong.

The web UI's only path to the model. The API key stays in this (server-side) process.
Stop works by cancelling the task that runs ``stream_turn``: its ``finally`` closes the HTTP
response, the server sees the client go and aborts the request (vLLM frees the sequence).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import openai

from ovr_core.wire import API_KEY_ENV
from webui.stream import TurnStream, UpdateThrottle

TICK_S = 0.5  # refresh the live clock this often while no token arrives


@dataclass
class Endpoint:
    """Where the model is and how long to wait for it."""

    base_url: str
    api_key: str | None = None
    connect_timeout: float = 10.0
    idle_timeout: float = 300.0  # a 7B prefill of several large images can take a while

    def client(self) -> openai.AsyncOpenAI:
        """An async client with no retries (the user decides whether to retry)."""
        return openai.AsyncOpenAI(
            base_url=self.base_url,
            api_key=self.api_key or "none",
            max_retries=0,
            # the SDK's own Timeout: openai >= 3.63 runs on httpx2 and refuses an httpx.Timeout
            timeout=openai.Timeout(self.idle_timeout, connect=self.connect_timeout),
        )


@dataclass
class ModelInfo:
    """One entry of ``/v1/models``: its id and, when the server says, its context length."""

    id: str
    max_model_len: int | None = None


async def list_models(endpoint: Endpoint) -> list[ModelInfo]:
    """The endpoint's models (``max_model_len`` is a vLLM extension; None elsewhere)."""
    async with endpoint.client() as client:
        page = await client.models.list()
    return [ModelInfo(m.id, getattr(m, "max_model_len", None)) for m in page.data]


class StreamTimeout(Exception):
    """No token for longer than the endpoint's idle timeout."""


async def stream_turn(
    client: openai.AsyncOpenAI,
    request: dict,
    turn: TurnStream,
    throttle: UpdateThrottle,
    idle_timeout: float = 300.0,
    tick: float = TICK_S,
) -> AsyncIterator[None]:
    """Stream one completion into ``turn``; yields whenever the UI should refresh.

    Yields at most once per ``throttle`` interval while tokens flow, every ``tick`` seconds while
    none do (so the elapsed time stays live), and once at the end.
    """
    stream = await client.chat.completions.create(
        **request, stream=True, stream_options={"include_usage": True}
    )
    chunks = stream.__aiter__()
    pending: asyncio.Future | None = None
    last_token = time.monotonic()
    try:
        while True:
            pending = asyncio.ensure_future(chunks.__anext__())
            while not pending.done():
                done, _ = await asyncio.wait({pending}, timeout=tick)
                if not done:
                    if time.monotonic() - last_token > idle_timeout:
                        raise StreamTimeout(f"no token for {idle_timeout:.0f} s")
                    yield
            try:
                chunk = pending.result()
            except StopAsyncIteration:
                break
            last_token = time.monotonic()
            if turn.feed(chunk) and throttle.due():
                yield
        turn.finish()
        yield
    finally:
        if pending is not None and not pending.done():
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
        await stream.close()


def describe_error(err: BaseException, base_url: str) -> str:
    """One sentence for the chat that says what failed and what to do."""
    if isinstance(err, ValueError):  # our own checks of what the user entered
        return str(err)
    if isinstance(err, StreamTimeout):
        return f"The endpoint stopped sending tokens ({err}). Press Regenerate to try again."
    if isinstance(err, openai.APITimeoutError):
        return f"The endpoint at {base_url} did not answer in time. Press Regenerate to try again."
    if isinstance(err, openai.APIConnectionError):
        return (
            f"Cannot reach the endpoint at {base_url}: is the server running? "
            "Your message is kept; press Regenerate once it is up."
        )
    if isinstance(err, openai.AuthenticationError):
        return f"The endpoint refused the API key (401). Start the UI with the right key in {API_KEY_ENV}."
    if isinstance(err, openai.APIStatusError):
        return f"The endpoint refused the request ({err.status_code}): {_server_message(err)}"
    return f"Unexpected error: {type(err).__name__}: {err}"


def _server_message(err: openai.APIStatusError) -> str:
    body = err.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
        if body.get("message"):
            return str(body["message"])
    return err.message
