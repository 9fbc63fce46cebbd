"""bench/webui.py: the web UI's server-side cost per streamed token, batched vs naive updates.

    python bench/webui.py                      # 20,000-token trace, both modes, ratios printed
    python bench/webui.py --tokens 5000 --rounds 2

A fake-fast OpenAI-compatible upstream (in this process, a stand-in for the model, so that only
the UI's own cost is measured) streams a long trace in ``delta.reasoning`` and a short answer.
Each mode runs the app's real generation handler and, for every update it yields, does what
Gradio's server does with it: ``Chatbot.postprocess``, the diff against the previous value, and
the JSON encoding of that diff. "naive" updates on every token (what a plain ``yield`` per chunk
does); "batched" is the app's default (one update per ``UPDATE_INTERVAL_S``). The browser's
cost is per update (it re-renders the whole message, Markdown and KaTeX), so the update count
is the number to watch there.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import threading
import time
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path and its name would hide the package.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import uvicorn  # noqa: E402
from fastapi import FastAPI  # noqa: E402
from fastapi.responses import StreamingResponse  # noqa: E402
from gradio import utils as gr_utils  # noqa: E402
from gradio.components import Chatbot  # noqa: E402

from webui import conversation as conv  # noqa: E402
from webui.handlers import ChatHandlers  # noqa: E402
from webui.settings import UISettings  # noqa: E402
from webui.stream import UPDATE_INTERVAL_S  # noqa: E402
from webui.upstream import Endpoint  # noqa: E402

WORDS = "so the circle at the left has radius $r$ and the area is $\\pi r^2$ which gives".split()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=20_000, help="Length of the reasoning trace.")
    p.add_argument("--rounds", type=int, default=1, help="Alternating rounds of each mode.")
    args = p.parse_args()

    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(fake_upstream(args.tokens), host="127.0.0.1", port=port, log_level="error")
    )
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    endpoint = f"http://127.0.0.1:{port}/v1"

    results: dict[str, list[dict]] = {"naive": [], "batched": []}
    for _ in range(args.rounds):
        for mode, interval in (("batched", UPDATE_INTERVAL_S), ("naive", 0.0)):
            results[mode].append(asyncio.run(run_once(endpoint, interval)))
    server.should_exit = True

    print(f"web UI, {args.tokens}-token trace from a fake-fast upstream, {args.rounds} round(s)")
    print(f"{'mode':8} {'updates':>8} {'server s':>9} {'µs/token':>9} {'sent MB':>8}")
    best = {}
    for mode, runs in results.items():
        r = min(runs, key=lambda r: r["seconds"])
        best[mode] = r
        per_token = r["seconds"] / r["tokens"] * 1e6
        print(
            f"{mode:8} {r['updates']:>8} {r['seconds']:>9.2f} {per_token:>9.1f} {r['bytes'] / 1e6:>8.2f}"
        )
    n, b = best["naive"], best["batched"]
    print(
        f"batched vs naive: {n['updates'] / b['updates']:.0f}x fewer UI updates, "
        f"{n['seconds'] / b['seconds']:.1f}x less server time per token, "
        f"{n['bytes'] / b['bytes']:.1f}x fewer bytes sent"
    )


async def run_once(endpoint: str, interval: float) -> dict:
    """One generation through the app's handler, with Gradio's per-update server work."""
    settings = UISettings(endpoint=endpoint, model="fake", update_interval=interval)
    handlers = ChatHandlers(Endpoint(endpoint), settings)
    chatbot = Chatbot()
    conversation = [conv.UserTurn("How many circles?")]
    previous, updates, sent = None, 0, 0
    start = time.perf_counter()
    async for _conv, shown, *_ in handlers.generate(
        conversation, "fake", "", 0.6, 0.95, 30000, False
    ):
        value = chatbot.postprocess(shown).model_dump()
        payload = value if previous is None else gr_utils.diff(previous, value)
        sent += len(json.dumps(payload))
        previous = value
        updates += 1
    seconds = time.perf_counter() - start
    turn = conversation[-1]
    assert isinstance(turn, conv.AssistantTurn) and turn.answer, conversation[-1]
    return {"updates": updates, "seconds": seconds, "bytes": sent, "tokens": turn.tokens + 1}


def fake_upstream(tokens: int) -> FastAPI:
    """An OpenAI-compatible ``/v1/chat/completions`` that streams as fast as the socket takes."""
    app = FastAPI()
    lines = [
        _sse({"reasoning": WORDS[i % len(WORDS)] + ("\n" if i % 17 == 16 else " ")})
        for i in range(tokens)
    ]
    lines += [_sse({"content": w + " "}) for w in "So there are $\\boxed{3}$ circles.".split()]
    lines.append(_sse({}, finish="stop"))
    body = "".join(lines) + "data: [DONE]\n\n"

    @app.post("/v1/chat/completions")
    async def completions():
        async def stream():
            step = 64 * 1024
            for i in range(0, len(body), step):
                yield body[i : i + step]

        return StreamingResponse(stream(), media_type="text/event-stream")

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": "fake", "object": "model", "owned_by": "bench"}]}

    return app


def _sse(delta: dict, finish: str | None = None) -> str:
    chunk = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "fake",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return f"data: {json.dumps(chunk)}\n\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    main()
