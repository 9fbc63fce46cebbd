"""Does ovr-serve cost anything over bare vLLM? Same model, same load, both measured in one run.

    python bench/serve.py [--model DIR] [--requests-per-level 24] [--max-tokens 64]

Both servers run at once and the load alternates between them (median of rounds); the server
not being measured is paused (SIGSTOP) so its idle polling does not slow the other. For
concurrency 1, 4 and 16: requests/s, output tokens/s and time to first token (streaming, real
openai client) through `ovr-serve` (guard middleware + OVR reasoning parser) and through bare
`vllm serve` (vLLM's own server, none of ours) with the same engine flags. Prints a table with the
ratios (ovr / bare: ≈1.0 means no overhead) and writes artifacts/bench/serve.json.

Images: per image (PNG and JPEG, 448x448 to 2048x1536), the guard's own cost (in process: the
request with the image minus the same request without) as a share of vLLM's own front-end time
for the same image (bare vLLM's /tokenize of the chat with the image minus without: data URL,
Pillow decode, the Qwen2.5-VL processor; a new image each time, so vLLM's processor cache never
answers). `--images-only` runs just that part (one server: bare vLLM).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ovr_serve.config import ServeConfig, vllm_command  # noqa: E402
from ovr_serve.launch import ServerHandle, _wait_healthy, resolve, start_server  # noqa: E402
from tests.conftest import free_port  # noqa: E402

LEVELS = (1, 4, 16)


def main() -> None:
    """Run both servers one after the other under the same load; print and save the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="checkpoint dir (default: the tiny test model)")
    parser.add_argument("--requests-per-level", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument(
        "--rounds", type=int, default=5, help="alternating rounds per level (median kept)"
    )
    parser.add_argument("--out", default=str(ROOT / "artifacts" / "bench" / "serve.json"))
    parser.add_argument(
        "--images-only", action="store_true", help="only the guard's per-image cost (bare vLLM)"
    )
    parser.add_argument("--image-repeats", type=int, default=7, help="images per size (median)")
    args = parser.parse_args()
    if not args.model:
        from ovr_train.tiny_model import cached_tiny_model

        args.model = str(cached_tiny_model(ROOT / ".cache"))
    os.environ["OVR_BENCH_KEY"] = "bench-key"
    cfg = ServeConfig(
        model=args.model, port=free_port(), api_key_env="OVR_BENCH_KEY", cpu_kvcache_gib=1
    )
    cfg, device, think, max_len = resolve(cfg)
    if args.images_only:
        bare = _start_bare(replace(cfg, port=free_port()), device, max_len)
        try:
            images = _image_costs(bare.root, cfg.served_model_name, args.image_repeats)
        finally:
            bare.stop()
        _report_images(images, args.out.replace(".json", "-images.json"))
        return

    # Both servers up at once, load rounds alternating between them, medians kept: background load
    # on a shared machine then hits both sides alike instead of whichever ran second.
    print("starting ovr-serve and bare vllm…", flush=True)
    servers = {"ovr-serve": start_server(cfg, resolved=(device, think, max_len))}
    try:
        bare_cfg = replace(cfg, port=free_port())  # the same processor settings as ours
        servers["bare vllm"] = _start_bare(bare_cfg, device, max_len)
        keys = {"ovr-serve": "bench-key", "bare vllm": "none"}
        for name, handle in servers.items():  # warm-up
            asyncio.run(
                _load(handle.base_url, keys[name], cfg.served_model_name, 4, 8, args.max_tokens)
            )
        rounds: dict = {name: {c: [] for c in LEVELS} for name in servers}
        for c in LEVELS:
            for _ in range(args.rounds):
                for name, handle in servers.items():
                    _only(servers, name)
                    n = max(args.requests_per_level, c)
                    rounds[name][c].append(
                        asyncio.run(
                            _load(
                                handle.base_url,
                                keys[name],
                                cfg.served_model_name,
                                c,
                                n,
                                args.max_tokens,
                            )
                        )
                    )
        results = {name: {c: _median(rs) for c, rs in per.items()} for name, per in rounds.items()}
        _only(servers, "bare vllm")
        images = _image_costs(servers["bare vllm"].root, cfg.served_model_name, args.image_repeats)
    finally:
        _only(servers, None)
        for handle in servers.values():
            handle.stop()
    _report(results, _spread(rounds), args, device)
    _report_images(images, args.out.replace(".json", "-images.json"))


IMAGE_CASES = [(fmt, size) for fmt in ("PNG", "JPEG") for size in ((448, 448), (1024, 1024))]
IMAGE_CASES += [("PNG", (2048, 1536)), ("JPEG", (2048, 1536))]


def _photo(size: tuple[int, int], variant: int, fmt: str) -> bytes:
    """A deterministic photo-like image (smooth fields and detail), one pixel set by ``variant``
    so that every image is new to vLLM's processor cache."""
    import io

    from PIL import Image

    bands = [
        Image.effect_mandelbrot(size, (-2.0, -1.2, 0.8, 1.2), 60),
        Image.linear_gradient("L").resize(size),
        Image.radial_gradient("L").resize(size),
    ]
    img = Image.merge("RGB", bands)
    img.putpixel((variant % size[0], 0), (variant % 256, 7, 9))
    buf = io.BytesIO()
    img.save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _image_costs(bare_root: str, model: str, repeats: int) -> list[dict]:
    """Per image case: the guard's ms (in process) and bare vLLM's front-end ms (/tokenize with
    the image minus without), medians over ``repeats`` new images."""
    import base64

    import httpx

    from ovr_serve.guard import RequestGuard

    os.environ["OVR_BENCH_KEY"] = "bench-key"
    guard = RequestGuard(_downstream, ServeConfig(api_key_env="OVR_BENCH_KEY").guard_settings())
    text = {"type": "text", "text": "What is in the picture?"}

    def chat(url: str | None) -> dict:
        parts = [{"type": "image_url", "image_url": {"url": url}}] if url else []
        return {"model": model, "messages": [{"role": "user", "content": [*parts, text]}]}

    def tokenize(body: dict, client: httpx.Client) -> tuple[float, int]:
        start = time.perf_counter()
        resp = client.post(bare_root + "/tokenize", json=body)
        took = time.perf_counter() - start
        resp.raise_for_status()
        return took, resp.json()["count"]

    rows, variant = [], 0
    with httpx.Client(timeout=300) as client:
        tokenize(chat(None), client)  # warm
        for fmt, size in IMAGE_CASES:
            guard_ms, vllm_ms, tokens = [], [], 0
            for _ in range(repeats + 1):
                variant += 1
                raw = _photo(size, variant, fmt)
                url = f"data:image/{fmt.lower()};base64,{base64.b64encode(raw).decode()}"
                with_image, without = (
                    json.dumps(chat(url)).encode(),
                    json.dumps(chat(None)).encode(),
                )
                g = _time_guard(guard, with_image, 1) - _time_guard(guard, without, 1)
                base, _ = tokenize(chat(None), client)
                took, tokens = tokenize(chat(url), client)
                if variant % (repeats + 1) != 1:  # the first of each size warms its code paths
                    guard_ms.append(g / 1000)
                    vllm_ms.append(1000 * (took - base))
            row = {
                "format": fmt,
                "size": f"{size[0]}x{size[1]}",
                "kib": len(raw) >> 10,
                "guard_ms": statistics.median(guard_ms),
                "vllm_front_end_ms": statistics.median(vllm_ms),
                "prompt_tokens": tokens,
            }
            row["share"] = row["guard_ms"] / row["vllm_front_end_ms"]
            rows.append(row)
    return rows


def _report_images(rows: list[dict], out: str) -> None:
    print("\nrequest guard per image vs vLLM's own front-end time for it (bare vLLM /tokenize):")
    print(f"{'image':>15} {'KiB':>6} | {'guard ms':>8} {'vLLM ms':>8} {'share':>6} | tokens")
    for r in rows:
        print(
            f"{r['format'] + ' ' + r['size']:>15} {r['kib']:>6} | {r['guard_ms']:>8.2f}"
            f" {r['vllm_front_end_ms']:>8.1f} {100 * r['share']:>5.1f}% | {r['prompt_tokens']}"
        )
    worst = max(r["share"] for r in rows)
    print(f"worst share: {100 * worst:.1f}% (target: at most 10%)")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps({"images": rows, "worst_share": worst}, indent=2))
    print(f"written {out}")


def _spread(rounds: dict) -> dict:
    """Per level: the ovr/bare requests-per-second ratio of each round (the two servers' runs of
    one round are back to back), so the table can show how far one round strays from another."""
    ours, bare = rounds["ovr-serve"], rounds["bare vllm"]
    return {
        c: [
            o["requests_per_s"] / b["requests_per_s"] for o, b in zip(ours[c], bare[c], strict=True)
        ]
        for c in LEVELS
    }


def _only(servers: dict, active: str | None) -> None:
    """Pause (SIGSTOP) every server but ``active``; ``None`` resumes all. An idle vLLM server still
    polls and takes CPU: on a 2-core machine the paused one would otherwise slow the measured one
    (seen: req/s swinging 9 <-> 25 between rounds of the same server)."""
    for name, handle in servers.items():
        sig = signal.SIGCONT if active in (None, name) else signal.SIGSTOP
        for proc in handle.processes:
            if proc.poll() is None:
                os.killpg(proc.pid, sig)
    time.sleep(0.5)


def _start_bare(cfg: ServeConfig, device: str, max_len: int) -> ServerHandle:
    """vLLM's own OpenAI server with the same engine flags, without our parser, guard or template logic."""
    ours = vllm_command(cfg, device, False, max_len)
    drop = {"--reasoning-parser-plugin", "--reasoning-parser", "--middleware"}
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", cfg.model]
    i = 5
    while i < len(ours):
        if ours[i] in drop:
            i += 2
            continue
        cmd.append(ours[i])
        i += 1
    env = {
        **os.environ,
        "VLLM_CPU_KVCACHE_SPACE": str(cfg.cpu_kvcache_gib),
        "VLLM_TARGET_DEVICE": device,
    }
    env.pop("VLLM_API_KEY", None)
    handle = ServerHandle(cfg)
    (ROOT / "artifacts" / "bench").mkdir(parents=True, exist_ok=True)
    log = open(ROOT / "artifacts" / "bench" / "bare-vllm.log", "wb")  # noqa: SIM115
    handle.processes.append(
        subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    )
    _wait_healthy(handle, 900)
    return handle


async def _load(
    base_url: str, key: str, model: str, concurrency: int, n: int, max_tokens: int
) -> dict:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0)
    sem = asyncio.Semaphore(concurrency)
    ttfts, tokens = [], []

    async def one(i: int) -> None:
        async with sem:
            start = time.perf_counter()
            first, count = None, 0
            stream = await client.chat.completions.create(
                model=model,
                messages=[{"role": "user", "content": f"What is {i % 9 + 1} + 4?"}],
                max_tokens=max_tokens,
                temperature=1.0,
                stream=True,
                stream_options={"include_usage": True},
                extra_body={"ignore_eos": True},
            )
            async for chunk in stream:
                if (
                    first is None
                    and chunk.choices
                    and (
                        chunk.choices[0].delta.content
                        or getattr(chunk.choices[0].delta, "reasoning", None)
                    )
                ):
                    first = time.perf_counter() - start
                if chunk.usage:
                    count = chunk.usage.completion_tokens
            ttfts.append(first or 0.0)
            tokens.append(count)

    start = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    wall = time.perf_counter() - start
    await client.close()
    return {
        "requests_per_s": n / wall,
        "output_tokens_per_s": sum(tokens) / wall,
        "ttft_median_ms": 1000 * statistics.median(ttfts),
        "requests": n,
    }


def _median(runs: list[dict]) -> dict:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def _report(results: dict, spread: dict, args, device: str) -> None:
    ours, bare = results["ovr-serve"], results["bare vllm"]
    rows = []
    print(f"\nmodel {args.model} on {device}, {args.max_tokens} output tokens per request\n")
    print(
        f"{'conc':>4} | {'req/s ovr':>9} {'bare':>7} {'ratio':>6} | {'tok/s ovr':>9} {'bare':>7} {'ratio':>6} | {'TTFT ms ovr':>11} {'bare':>7} {'ratio':>6}"
    )
    for c in LEVELS:
        o, b = ours[c], bare[c]
        row = {
            "concurrency": c,
            "ovr": o,
            "bare": b,
            "ratio_requests_per_s": o["requests_per_s"] / b["requests_per_s"],
            "ratio_output_tokens_per_s": o["output_tokens_per_s"] / b["output_tokens_per_s"],
            "ratio_ttft": o["ttft_median_ms"] / b["ttft_median_ms"],
            "ratio_requests_per_s_by_round": spread[c],
        }
        rows.append(row)
        print(
            f"{c:>4} | {o['requests_per_s']:>9.2f} {b['requests_per_s']:>7.2f} {row['ratio_requests_per_s']:>6.2f} | "
            f"{o['output_tokens_per_s']:>9.0f} {b['output_tokens_per_s']:>7.0f} {row['ratio_output_tokens_per_s']:>6.2f} | "
            f"{o['ttft_median_ms']:>11.1f} {b['ttft_median_ms']:>7.1f} {row['ratio_ttft']:>6.2f}"
        )
    print("\nreq/s ratio per round (ovr / bare, back-to-back runs): median [min … max]")
    for c in LEVELS:
        r = spread[c]
        print(
            f"{c:>4} | {statistics.median(r):.3f} [{min(r):.3f} … {max(r):.3f}]  ({len(r)} rounds)"
        )
    parser_us = _parser_cost_us()
    server_us = 1e6 / bare[1]["output_tokens_per_s"]
    print(
        f"\nOVR reasoning parser alone: {parser_us:.1f} µs per streamed token "
        f"({100 * parser_us / server_us:.2f}% of bare vLLM's {server_us:.0f} µs per token at c=1)"
    )
    guard_us = _guard_cost_us()
    request_us = 1e6 / bare[1]["requests_per_s"]
    for kind, us in guard_us.items():
        print(
            f"request guard alone, {kind}: {us:.0f} µs per request "
            f"({100 * us / request_us:.3f}% of bare vLLM's {request_us / 1000:.0f} ms per request at c=1)"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps(
            {
                "model": args.model,
                "device": device,
                "max_tokens": args.max_tokens,
                "levels": rows,
                "parser_us_per_token": parser_us,
                "guard_us_per_request": guard_us,
            },
            indent=2,
        )
    )
    print(f"\nwritten {args.out}")


def _guard_cost_us(repeats: int = 200) -> dict[str, float]:
    """In-process cost of the request guard (``RequestGuard`` as vLLM runs it: headers, key, the
    body read, parsed, walked, every image decoded) per request, for a text chat and for a chat
    with one 448x448 PNG (what the Qwen2.5-VL processor sees at OVR's settings)."""
    import base64
    import io

    from PIL import Image

    from ovr_serve.guard import RequestGuard

    os.environ["OVR_BENCH_KEY"] = "bench-key"
    guard = RequestGuard(_downstream, ServeConfig(api_key_env="OVR_BENCH_KEY").guard_settings())
    buf = io.BytesIO()
    Image.effect_noise((448, 448), 64).convert("RGB").save(buf, "PNG")
    image = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    text = [{"type": "text", "text": "What is 3 + 4? Put the answer in \\boxed{}."}]
    bodies = {
        "text chat": {"model": "ovr", "messages": [{"role": "user", "content": text}]},
        "chat with one image": {
            "model": "ovr",
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": image}}, *text],
                }
            ],
        },
    }
    return {
        kind: _time_guard(guard, json.dumps(body).encode(), repeats)
        for kind, body in bodies.items()
    }


async def _downstream(scope, receive, send) -> None:
    await receive()


def _time_guard(guard, body: bytes, repeats: int) -> float:
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/chat/completions",
        "headers": [
            (b"authorization", b"Bearer bench-key"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
    }

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        raise AssertionError(f"the guard refused the bench request: {message}")

    async def run() -> float:
        await guard(scope, receive, send)  # warm: imports, Pillow plugins
        start = time.perf_counter()
        for _ in range(repeats):
            await guard(scope, receive, send)
        return 1e6 * (time.perf_counter() - start) / repeats

    return asyncio.run(run())


def _parser_cost_us(tokens: int = 20000) -> float:
    """In-process cost of ``ReasoningStream`` (what the parser plugin runs) per streamed token."""
    from ovr_core.format import ReasoningStream

    pieces = ["<th", "ink>"] + ["step "] * tokens + ["</th", "ink>", "\n\nSo \\boxed{4}."]
    stream = ReasoningStream()
    start = time.perf_counter()
    for piece in pieces:
        stream.feed(piece)
    stream.finish()
    return 1e6 * (time.perf_counter() - start) / len(pieces)


if __name__ == "__main__":
    main()
