"""Nothing a legitimate OpenAI client sends is refused: generated requests through the real SDK.

Hypothesis builds ``chat.completions.create`` and ``completions.create`` calls from every field
the installed ``openai`` SDK declares (the test fails when the SDK grows one this table lacks),
with values a real client sends, media-like words in free text included (metadata keys ``file``
and ``image``, tool parameters named ``image_url``, URLs in schemas, cache keys and stop strings).
Two checks:

- in process, the real ``RequestGuard`` between the SDK and a recording app: never refused, and
  the body vLLM would get is byte for byte what the SDK sent (so vLLM answers it as bare vLLM
  would: it sees the same request);
- live, a sample sent to the session's real server: whatever the answer, it is vLLM's, never a
  refusal of ours (``x-ovr-guard: refused``).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import typing

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai.types import completion_create_params as completion_params
from openai.types.chat import completion_create_params as chat_params
from PIL import Image

from ovr_serve.config import ServeConfig
from ovr_serve.guard import RequestGuard


def _png_url(size=(40, 30)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, "teal").save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


MEDIA_WORDS = ["file", "image", "image_url", "input_audio", "video_url", "url", "audio", "data"]
FREE_TEXT = st.sampled_from(
    [
        "What is 3 + 4?",
        "see https://example.org/cat.png and file:///etc/hosts",
        "data:image/png;base64,iVBORw0KGgo= is a PNG header",
        "<image> placeholder, {{file}}, $schema",
        "Résumé ü 数学",
    ]
)
TEXT_PART = st.builds(lambda t: {"type": "text", "text": t}, FREE_TEXT)
IMAGE_PART = st.builds(
    lambda d, s: {"type": "image_url", "image_url": {"url": _png_url(s), "detail": d}},
    st.sampled_from(["auto", "low", "high"]),
    st.sampled_from([(40, 30), (64, 64)]),
)
TOOL_CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "fetch", "arguments": json.dumps({"file": "a.png", "url": "http://x"})},
}
TOOL = {
    "type": "function",
    "function": {
        "name": "fetch",
        "description": "Fetch a file or image by URL, e.g. https://example.org/a.png",
        "parameters": {
            "type": "object",
            "properties": {
                word: {"type": "string", "format": "uri", "default": "https://example.org/x"}
                for word in MEDIA_WORDS
            },
            "required": ["file"],
        },
        "strict": False,
    },
}
SCHEMA = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "type": "object",
    "properties": {"image": {"type": "string", "examples": ["data:image/png;base64,AAAA"]}},
}


@st.composite
def messages(draw):
    user = draw(
        st.one_of(
            FREE_TEXT,
            st.lists(st.one_of(TEXT_PART, IMAGE_PART), min_size=1, max_size=3),
        )
    )
    turns = [{"role": "user", "content": user}]
    if draw(st.booleans()):
        turns.insert(
            0, {"role": draw(st.sampled_from(["system", "developer"])), "content": "Be brief."}
        )
    if draw(st.booleans()):
        turns += [
            {"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]},
            {"role": "tool", "tool_call_id": "call_1", "content": "image: https://x/y.png"},
            {"role": "user", "content": "and then?", "name": "file"},
        ]
    return turns


def _metadata(words) -> dict:
    return {w: f"https://example.org/{w}" if i % 2 else w for i, w in enumerate(words)}


CHAT_FIELDS: dict[str, st.SearchStrategy] = {
    "messages": messages(),
    "model": st.just("ovr"),
    "audio": st.just({"voice": "alloy", "format": "wav"}),
    "frequency_penalty": st.floats(-2, 2),
    "function_call": st.sampled_from(["none", "auto", {"name": "fetch"}]),
    "functions": st.just([TOOL["function"]]),
    "logit_bias": st.just({"17": 5, "42": -100}),
    "logprobs": st.booleans(),
    "max_completion_tokens": st.integers(1, 4),
    "max_tokens": st.integers(1, 4),
    "metadata": st.lists(st.sampled_from(MEDIA_WORDS), unique=True, max_size=8).map(_metadata),
    "modalities": st.just(["text"]),
    "moderation": st.just({"model": "omni-moderation-latest"}),
    "n": st.integers(1, 2),
    "parallel_tool_calls": st.booleans(),
    "prediction": st.just({"type": "content", "content": "The answer is https://x/7.png"}),
    "presence_penalty": st.floats(-2, 2),
    "prompt_cache_key": st.just("https://myapp.example/session/file/1"),
    "prompt_cache_options": st.just({"ttl": "5m"}),
    "prompt_cache_retention": st.sampled_from(["in_memory", "24h"]),
    "reasoning_effort": st.sampled_from(["low", "medium", "high"]),
    "response_format": st.sampled_from(
        [
            {"type": "text"},
            {"type": "json_object"},
            {"type": "json_schema", "json_schema": {"name": "image", "schema": SCHEMA}},
        ]
    ),
    "safety_identifier": st.just("user-file-image-1"),
    "seed": st.integers(0, 2**31 - 1),
    "service_tier": st.sampled_from(["auto", "default"]),
    "stop": st.one_of(FREE_TEXT, st.lists(FREE_TEXT, min_size=1, max_size=4)),
    "store": st.booleans(),
    "stream_options": st.just({"include_usage": True}),
    "temperature": st.floats(0, 2),
    "tool_choice": st.sampled_from(["none", "auto", "required"]),
    "tools": st.just([TOOL]),
    "top_logprobs": st.integers(0, 5),
    "top_p": st.floats(0.01, 1),
    "user": st.just("data:image/png;base64,not-an-image"),
    "verbosity": st.sampled_from(["low", "medium", "high"]),
    "web_search_options": st.just({"search_context_size": "low"}),
}
COMPLETION_FIELDS: dict[str, st.SearchStrategy] = {
    "model": st.just("ovr"),
    "prompt": st.one_of(FREE_TEXT, st.lists(FREE_TEXT, min_size=1, max_size=3)),
    "best_of": st.just(1),
    "echo": st.booleans(),
    "frequency_penalty": st.floats(-2, 2),
    "logit_bias": st.just({"17": 5}),
    "logprobs": st.integers(0, 5),
    "max_tokens": st.integers(1, 4),
    "n": st.integers(1, 2),
    "presence_penalty": st.floats(-2, 2),
    "seed": st.integers(0, 2**31 - 1),
    "stop": st.lists(FREE_TEXT, min_size=1, max_size=4),
    "stream_options": st.just({"include_usage": True}),
    "suffix": st.just(" file:///x"),
    "temperature": st.floats(0, 2),
    "top_p": st.floats(0.01, 1),
    "user": st.just("https://example.org/me"),
}
REQUIRED = {"chat": ("messages", "model"), "completions": ("model", "prompt")}


@st.composite
def sdk_calls(draw, route: str):
    """(route, kwargs of the SDK call): the required fields and a drawn subset of the rest."""
    table = CHAT_FIELDS if route == "chat" else COMPLETION_FIELDS
    names = draw(st.lists(st.sampled_from(sorted(set(table) - set(REQUIRED[route]))), unique=True))
    kwargs = {name: draw(table[name]) for name in (*REQUIRED[route], *names)}
    if "stream_options" in kwargs:
        kwargs["stream"] = True  # the SDK sends stream_options with a stream only
    return route, kwargs


def test_the_tables_cover_every_field_the_sdk_can_send():
    for params, table in (
        (chat_params.CompletionCreateParamsBase, CHAT_FIELDS),
        (completion_params.CompletionCreateParamsBase, COMPLETION_FIELDS),
    ):
        assert set(typing.get_type_hints(params)) == set(table)


class _Recorder:
    """ASGI app that keeps each body it gets and answers as vLLM would, minimally."""

    def __init__(self):
        self.bodies: list[bytes] = []

    async def __call__(self, scope, receive, send):
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.bodies.append(body)
        stream = json.loads(body).get("stream")
        if stream:
            answer, kind = b"data: [DONE]\n\n", b"text/event-stream"
        else:
            answer, kind = json.dumps(_answer(scope["path"])).encode(), b"application/json"
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-type", kind)]}
        )
        await send({"type": "http.response.body", "body": answer})


def _answer(path: str) -> dict:
    if path.endswith("/chat/completions"):
        choice = {
            "index": 0,
            "finish_reason": "stop",
            "message": {"role": "assistant", "content": "7"},
        }
        return {
            "id": "c",
            "object": "chat.completion",
            "created": 0,
            "model": "ovr",
            "choices": [choice],
        }
    choice = {"index": 0, "finish_reason": "stop", "text": "7", "logprobs": None}
    return {
        "id": "c",
        "object": "text_completion",
        "created": 0,
        "model": "ovr",
        "choices": [choice],
    }


class _Tap:
    """ASGI wrapper that keeps the body as the client sent it, before the guard reads it."""

    def __init__(self, app):
        self.app, self.bodies = app, []

    async def __call__(self, scope, receive, send):
        chunks = []

        async def tapped():
            message = await receive()
            chunks.append(message.get("body", b""))
            return message

        try:
            return await self.app(scope, tapped, send)
        finally:
            self.bodies.append(b"".join(chunks))


def _call(client, route: str, kwargs: dict):
    if route == "chat":
        return client.chat.completions.create(**kwargs)
    return client.completions.create(**kwargs)


@pytest.fixture(scope="module")
def guarded():
    """The real guard (keyed, as on loopback) between an SDK client and a recording app."""
    import os

    os.environ["OVR_LEGIT_TEST_KEY"] = "legit-key"
    recorder = _Recorder()
    guard = RequestGuard(recorder, ServeConfig(api_key_env="OVR_LEGIT_TEST_KEY").guard_settings())
    guard.prompt_limit = (8192, 32)  # the tiny model's context; its pieces are shorter
    tap = _Tap(guard)
    return tap, recorder


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(call=st.one_of(sdk_calls("chat"), sdk_calls("completions")))
def test_generated_sdk_requests_pass_the_guard_unchanged(guarded, call):
    from openai import AsyncOpenAI

    tap, recorder = guarded
    route, kwargs = call

    async def send():
        transport = httpx.ASGITransport(app=tap)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as http:
            client = AsyncOpenAI(
                base_url="http://127.0.0.1:8000/v1", api_key="legit-key", http_client=http
            )
            result = await _call(client, route, kwargs)
            if kwargs.get("stream"):
                async for _ in result:
                    pass

    before = len(recorder.bodies)
    asyncio.run(send())  # a refusal raises openai.APIStatusError here
    assert len(recorder.bodies) == before + 1
    assert recorder.bodies[-1] == tap.bodies[-1], "the guard changed a legitimate request"


LIVE_SAMPLE = 40


@pytest.mark.slow
def test_sampled_sdk_requests_get_vllms_own_answer_from_the_real_server(ovr_server):
    """A sample of the generated calls against the real server: answered, or refused by vLLM
    itself (a field it does not take), never by the guard."""
    import openai

    client = ovr_server.client(max_retries=0, timeout=120)
    outcomes: dict[str, int] = {}
    calls = st.lists(
        st.one_of(sdk_calls("chat"), sdk_calls("completions")),
        min_size=LIVE_SAMPLE,
        max_size=LIVE_SAMPLE,
    )

    @settings(max_examples=1, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(calls)
    def run(sample):
        for route, kwargs in sample:
            try:
                result = _call(client, route, kwargs)
                if kwargs.get("stream"):
                    for _ in result:
                        pass
                outcomes["200"] = outcomes.get("200", 0) + 1
            except openai.APIStatusError as err:
                assert err.response.headers.get("x-ovr-guard") is None, (route, kwargs, err.message)
                assert err.status_code < 500, (route, kwargs, err.message)
                outcomes[str(err.status_code)] = outcomes.get(str(err.status_code), 0) + 1

    run()
    print("outcomes:", outcomes)
    assert outcomes.get("200", 0) >= LIVE_SAMPLE // 4
