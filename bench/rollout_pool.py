"""Server-mode rollouts on vLLM's data parallelism, measured in one run and printed as ratios.

    python bench/rollout_pool.py                      # ~100M-param random Qwen2.5-VL, DP=2 vs 1 engine
    python bench/rollout_pool.py --model tiny --prompts 16 --max-tokens 64

1. Rollout tokens/s: one ``vllm serve --data-parallel-size 2`` (`ovr-train rollout-servers`'s
   command) against one engine, through the trainer's client, same prompts and sampling, fixed
   output lengths (``ignore_eos``). On GPUs each engine is a GPU; on a 2-core CPU the engines share
   the cores, so the figure shows DP's overhead there, not a speed-up.
2. Weight push: one broadcast to every engine of the DP server (``ovr_gloo`` on CPU).
3. The rank-0 funnel of TRL 1.16's server mode (``VLLMGeneration.generate``): rank 0 receives every
   rollout as JSON, parses it and its logprobs, then pickles the batch to every rank
   (``broadcast_object_list``). Measured on the DP server's real answer and scaled to 1M tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bench", help="bench (~100M random), tiny, or a path")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--generations", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--engines", type=int, default=2)
    args = parser.parse_args()
    os.environ.pop("OVR_ROLLOUT_KEY", None)  # loopback server, no key

    model_dir = resolve(args.model)
    prompts = [[100 + (i * 7 + j) % 300 for j in range(24)] for i in range(args.prompts)]
    sampling = dict(
        n=args.generations,
        temperature=1.0,
        max_tokens=args.max_tokens,
        logprobs=0,
        generation_kwargs={"ignore_eos": True},
    )
    print(
        f"model {model_dir.name}, {args.prompts} prompts x {args.generations}, {args.max_tokens} tokens"
    )
    one = measure(model_dir, 1, prompts, sampling)
    dp = measure(model_dir, args.engines, prompts, sampling, extras=True)
    print(f"rollout tokens/s: 1 engine {one['rate']:,.0f}, DP={args.engines} {dp['rate']:,.0f}, "
          f"ratio {dp['rate'] / one['rate']:.2f}x")  # fmt: skip
    print(f"weight push to {args.engines} engines: one broadcast {dp['push']:.2f} s")
    f = dp["funnel"]
    print(f"rank-0 funnel per 1M rollout tokens: JSON {f['json_mb']:.0f} MB, json.loads "
          f"{f['loads_s']:.2f} s, logprob parsing {f['parse_s']:.2f} s, pickle to ranks "
          f"{f['pickle_mb']:.0f} MB, unpickle {f['unpickle_s']:.2f} s per rank")  # fmt: skip
    return 0


def resolve(name: str) -> Path:
    if name == "bench":
        from bench.rl import bench_model

        return bench_model()
    if name == "tiny":
        from ovr_train.recipe import resolve_model

        return Path(resolve_model("tiny-coldstarted"))
    return Path(name)


def measure(model_dir, engines, prompts, sampling, extras=False) -> dict:
    """Completion tokens/s through one server of ``engines`` (and, with ``extras``, the weight
    push and the funnel's costs)."""
    import socket

    from ovr_train.rollouts.client import connect
    from ovr_train.rollouts.servers import RolloutServer, RolloutSpec

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    logs = ROOT / "artifacts" / "logs" / "bench-rollout"
    spec = RolloutSpec(
        model=str(model_dir), local_engines=engines, port=port, device="cpu", cpu_kvcache_gib=2,
        max_model_len=1024, log_file=str(logs / f"dp{engines}.log"),
    )  # fmt: skip
    with RolloutServer(spec) as running:
        client = connect(running.url, group_port=port + 100, timeout=60)
        client.generate(prompts=prompts[:2], **{**sampling, "max_tokens": 4})  # warm-up
        start = time.perf_counter()
        out = client.generate(prompts=prompts, **sampling)
        result = {"rate": sum(map(len, out["completion_ids"])) / (time.perf_counter() - start)}
        if extras:
            result["push"] = push_time(model_dir, client)
            result["funnel"] = funnel_costs(client, prompts, sampling)
        return result


def push_time(model_dir, client) -> float:
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype="auto")
    client.init_communicator(device="cpu")
    client.update_model_params(model)  # warm-up
    start = time.perf_counter()
    client.update_model_params(model)
    return time.perf_counter() - start


def funnel_costs(client, prompts, sampling) -> dict:
    """What rank 0 does with one answer of TRL's server mode, per 1M completion tokens: the raw
    /v1/completions JSON, its parse, TRL's logprob parse, and the pickled batch every rank gets."""
    from trl.generation.vllm_client import parse_logprobs

    payload = {
        "model": client.model,
        "prompt": prompts,
        "return_token_ids": True,
        "return_tokens_as_token_ids": True,
        **{k: v for k, v in sampling.items() if k != "generation_kwargs"},
        **sampling["generation_kwargs"],
    }
    raw = client.session.post(f"{client.base_url}/v1/completions", json=payload).content
    start = time.perf_counter()
    choices = json.loads(raw)["choices"]
    loads = time.perf_counter() - start
    start = time.perf_counter()
    logprobs, token_ids = parse_logprobs([c["logprobs"] for c in choices])
    parse = time.perf_counter() - start
    n = sampling["n"]
    batch = (
        [c["prompt_token_ids"] for c in choices[::n]],
        [c["token_ids"] for c in choices],
        logprobs,
        token_ids,
    )
    pickled = pickle.dumps(batch)
    start = time.perf_counter()
    pickle.loads(pickled)
    unpickle = time.perf_counter() - start
    scale = 1e6 / sum(len(c["token_ids"]) for c in choices)
    return {
        "json_mb": len(raw) * scale / 1e6,
        "loads_s": loads * scale,
        "parse_s": parse * scale,
        "pickle_mb": len(pickled) * scale / 1e6,
        "unpickle_s": unpickle * scale,
    }


if __name__ == "__main__":
    sys.exit(main())
