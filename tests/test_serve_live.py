"""A real vLLM server started by ovr-serve on the tiny model, driven by the real openai client."""

from __future__ import annotations

import base64
import io
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import httpx
import openai
import psutil
import pytest
from PIL import Image

from tests.conftest import free_port

pytestmark = pytest.mark.slow

QUESTION = "What is 3 + 4?"


def png_data_url(size=(96, 64), color="blue", mode="RGB") -> str:
    buf = io.BytesIO()
    Image.new(mode, size, color if mode == "RGB" else 0).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def image_message(url: str, text: str = QUESTION, n: int = 1) -> list[dict]:
    parts = [{"type": "image_url", "image_url": {"url": url}} for _ in range(n)]
    return [{"role": "user", "content": parts + [{"type": "text", "text": text}]}]


def chat_both_ways(client, model, messages, **kw):
    """The same request non-streaming and streaming; returns both (reasoning, content, finish)."""
    whole = client.chat.completions.create(
        model=model, messages=messages, temperature=0, seed=0, **kw
    )
    msg = whole.choices[0].message
    a = (msg.reasoning, msg.content, whole.choices[0].finish_reason)
    reasoning, content, finish = None, None, None
    for chunk in client.chat.completions.create(
        model=model, messages=messages, temperature=0, seed=0, stream=True, **kw
    ):
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        if getattr(delta, "reasoning", None):
            reasoning = (reasoning or "") + delta.reasoning
        if delta.content:
            content = (content or "") + delta.content
        finish = chunk.choices[0].finish_reason or finish
    return a, (reasoning, content, finish)


def test_chat_with_image_splits_reasoning_and_answer_the_same_streaming_or_not(ovr_server):
    client = ovr_server.client()
    whole, streamed = chat_both_ways(
        client, ovr_server.model, image_message(png_data_url()), max_tokens=120
    )
    assert whole == streamed
    text_whole, text_streamed = chat_both_ways(
        client, ovr_server.model, [{"role": "user", "content": QUESTION}], max_tokens=120
    )
    assert text_whole == text_streamed
    reasoning, content, finish = text_whole
    # The tiny model has learned the format: a closed trace, then an answer with a box.
    assert (
        finish == "stop"
        and reasoning
        and "</think>" not in reasoning
        and "<think>" not in reasoning
    )
    assert content and "\\boxed{" in content and "</think>" not in content


def test_trace_cut_by_max_tokens_is_all_reasoning_in_both_modes(ovr_server):
    client = ovr_server.client()
    whole, streamed = chat_both_ways(
        client, ovr_server.model, [{"role": "user", "content": QUESTION}], max_tokens=4
    )
    assert whole == streamed
    reasoning, content, finish = whole
    assert finish == "length" and reasoning and content is None


def test_models_health_and_metrics(ovr_server):
    models = ovr_server.client().models.list()
    assert [m.id for m in models.data] == ["ovr"]
    assert httpx.get(ovr_server.root + "/health").status_code == 200
    metrics = httpx.get(ovr_server.root + "/metrics")
    assert metrics.status_code == 200 and "vllm:" in metrics.text


# vLLM 0.32 registers these (and more); OVR serves none of them.
NOT_SERVED = (
    "/invocations",
    "/scale_elastic_ep",
    "/is_scaling_elastic_ep",
    "/v1/messages",
    "/v1/responses",
    "/v1/embeddings",
    "/pooling",
    "/classify",
    "/score",
    "/rerank",
    "/v1/audio/transcriptions",
    "/reset_prefix_cache",
    "/reset_mm_cache",
    "/sleep",
    "/wake_up",
    "/collective_rpc",
    "/pause",
    "/v1/load_lora_adapter",
    "/server_info",
    "/tokenizer_info",
    "/openapi.json",
    "/docs",
    "/start_profile",
    "/update_weights",
    "/abort_requests",
)


def test_only_ovr_routes_exist_and_each_inference_route_needs_the_key(ovr_server):
    from ovr_serve.config import API_ROUTES

    key = {"Authorization": f"Bearer {ovr_server.api_key}"}
    for path in NOT_SERVED:
        for method in ("GET", "POST"):
            resp = httpx.request(method, ovr_server.root + path, headers=key, json={})
            assert resp.status_code == 404, (method, path, resp.status_code)
    body = {"model": "ovr", "messages": [{"role": "user", "content": "hi"}], "prompt": "hi"}
    for route in API_ROUTES:
        method, _, path = route.partition(" ")
        payload = body if method == "POST" else None
        assert httpx.request(method, ovr_server.root + path, json=payload).status_code == 401, path
        wrong = {"Authorization": "Bearer wrong"}
        resp = httpx.request(method, ovr_server.root + path, headers=wrong, json=payload)
        assert resp.status_code == 401, path
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=ovr_server.base_url, api_key="wrong").models.list()


class _Recorder(BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self):  # noqa: N802
        _Recorder.hits.append(self.path)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def _bomb_data_url() -> str:
    buf = io.BytesIO()
    Image.new("1", (20000, 20000), 0).save(buf, "PNG")  # ~50 KB file, 400 Mpixel when decoded
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def test_bad_input_gets_a_clear_4xx_and_the_server_stays_healthy(ovr_server):
    recorder = HTTPServer(("127.0.0.1", free_port()), _Recorder)
    threading.Thread(target=recorder.serve_forever, daemon=True).start()
    local_url = f"http://127.0.0.1:{recorder.server_address[1]}/secret.png"
    good = png_data_url()
    url = ovr_server.base_url + "/chat/completions"
    headers = {"Authorization": f"Bearer {ovr_server.api_key}", "Content-Type": "application/json"}

    def body(messages):
        import json

        return json.dumps({"model": "ovr", "messages": messages, "max_tokens": 8})

    cases = {
        "truncated base64": body(image_message(good[: len(good) // 2 + 3])),
        "bytes that are no image": body(
            image_message("data:image/png;base64," + base64.b64encode(b"hello, not a png").decode())
        ),
        "decompression bomb": body(image_message(_bomb_data_url())),
        "too many images": body(image_message(good, n=5)),
        "local http URL": body(image_message(local_url)),
        "file URL": body(image_message("file:///etc/passwd")),
        "malformed JSON": '{"model": "ovr", "messages": [',
        "empty message list": body([]),
    }
    try:
        for name, payload in cases.items():
            resp = httpx.post(url, content=payload, headers=headers, timeout=60)
            assert 400 <= resp.status_code < 500, (name, resp.status_code, resp.text[:300])
            assert resp.json()["error"]["message"], name
            assert httpx.get(ovr_server.root + "/health").status_code == 200, name
            after = ovr_server.client().chat.completions.create(
                model="ovr", messages=[{"role": "user", "content": QUESTION}], max_tokens=8
            )
            assert after.choices[0].finish_reason in ("stop", "length"), name
        assert _Recorder.hits == []  # the local URL was never fetched
    finally:
        recorder.shutdown()


def test_ovr_serve_command_stops_every_child_on_sigterm(tiny_model_path, tmp_path):
    port = free_port()
    log = open(tmp_path / "serve.log", "w+")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ovr_serve.cli",
            "--model",
            str(tiny_model_path),
            "--port",
            str(port),
            "--cpu_kvcache_gib",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "OVR_API_KEY": ""},
    )
    try:
        deadline = time.monotonic() + 600
        while "OVR is ready" not in (tmp_path / "serve.log").read_text():
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(2)
        banner = (tmp_path / "serve.log").read_text()
        assert f"http://127.0.0.1:{port}/v1" in banner and "OpenAI(base_url=" in banner
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) >= 2, "the vLLM API server and its engine process should be running"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        time.sleep(2)
        left = [c.pid for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
        assert left == [], f"orphans: {left}"
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def server_with_think_in_prompt(tiny_model_path, tmp_path_factory):
    """A second server whose chat template opens <think> in the prompt (so output has only </think>)."""
    from ovr_serve.config import ServeConfig
    from ovr_serve.launch import start_server

    template = tmp_path_factory.mktemp("tpl") / "think.jinja"
    template.write_text(
        (tiny_model_path / "chat_template.jinja").read_text()
        + "{% if add_generation_prompt %}<think>\n{% endif %}"
    )
    cfg = ServeConfig(
        model=str(tiny_model_path),
        port=free_port(),
        chat_template=str(template),
        api_key_env="OVR_NO_KEY_SET",
        cpu_kvcache_gib=1,
    )
    handle = start_server(cfg, log_path=tmp_path_factory.mktemp("log") / "serve.log")
    try:
        yield handle
    finally:
        handle.stop()


def test_template_that_opens_think_still_splits_the_same_both_ways(server_with_think_in_prompt):
    client = openai.OpenAI(base_url=server_with_think_in_prompt.base_url, api_key="none")
    for max_tokens in (120, 4):
        whole, streamed = chat_both_ways(
            client, "ovr", [{"role": "user", "content": QUESTION}], max_tokens=max_tokens
        )
        assert whole == streamed
        reasoning, content, finish = whole
        assert reasoning and "<think>" not in reasoning and "</think>" not in reasoning
        if finish == "length" and max_tokens == 4:
            assert content is None
