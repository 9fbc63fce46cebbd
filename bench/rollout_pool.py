"""Server-mode rollouts on several vLLM servers, measured in one run and printed as ratios.

    python bench/rollout_pool.py                     # ~100M-param random Qwen2.5-VL, 2 CPU servers
    python bench/rollout_pool.py --prompts 16 --max-tokens 128

1. Rollout tokens/s: the rollout pool over two servers (each with its own share of the cores or
   its own GPU) against one server given the whole machine, same prompts and sampling, fixed
   output lengths (``ignore_eos``). On GPUs each server is a GPU, so the pool scales with them; on
   a CPU the two share the same cores and the figure shows the pool's overhead, not a speed-up.
2. Weight push: one broadcast to both servers (the pool's single weight-transfer group) against
   pushing to each server in turn, as one TRL client per server would.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--generations", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--servers", type=int, default=2)
    args = parser.parse_args()
    os.environ.pop("OVR_ROLLOUT_KEY", None)  # loopback servers, no key

    from bench.rl import bench_model

    model_dir = bench_model()
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
    one = rollout_rate(model_dir, 1, prompts, sampling)
    pooled, push = rollout_rate(model_dir, args.servers, prompts, sampling, weights=True)
    print(f"rollout tokens/s: 1 server {one:,.0f}, pool of {args.servers} {pooled:,.0f}, "
          f"ratio {pooled / one:.2f}x")  # fmt: skip
    broadcast, one_by_one = push
    print(f"weight push to {args.servers} servers: one broadcast {broadcast:.2f} s, "
          f"each in turn {one_by_one:.2f} s, ratio {one_by_one / broadcast:.2f}x")  # fmt: skip
    return 0


def rollout_rate(model_dir, servers, prompts, sampling, weights=False):
    """Completion tokens per second through a pool of ``servers`` (and the push timings)."""
    import socket

    from ovr_train.rollouts.pool import RolloutPool
    from ovr_train.rollouts.servers import RolloutServers, RolloutSpec

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    spec = RolloutSpec(
        model=str(model_dir), servers=servers, port=port, device="cpu", cpu_kvcache_gib=2,
        max_model_len=1024, log_dir=str(ROOT / "artifacts" / "logs" / "bench-rollout"),
    )  # fmt: skip
    with RolloutServers(spec) as running:
        pool = RolloutPool(",".join(running.urls), group_port=port + 100, connection_timeout=60)
        pool.generate(prompts=prompts[:2], **{**sampling, "max_tokens": 4})  # warm-up
        start = time.perf_counter()
        out = pool.generate(prompts=prompts, **sampling)
        rate = sum(map(len, out["completion_ids"])) / (time.perf_counter() - start)
        if not weights:
            return rate
        return rate, push_times(model_dir, pool, running.urls, port + 200)


def push_times(model_dir, pool, urls, port):
    from transformers import AutoModelForImageTextToText

    from ovr_train.rollouts.pool import RolloutPool

    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype="auto")
    pool.init_communicator(device="cpu")
    pool.update_model_params(model)  # warm-up
    start = time.perf_counter()
    pool.update_model_params(model)
    broadcast = time.perf_counter() - start
    singles = []
    for i, url in enumerate(urls):
        single = RolloutPool(url, group_port=port + i, connection_timeout=60)
        single.init_communicator(device="cpu")
        singles.append(single)
    start = time.perf_counter()
    for single in singles:
        single.update_model_params(model)
    return broadcast, time.perf_counter() - start


if __name__ == "__main__":
    sys.exit(main())
