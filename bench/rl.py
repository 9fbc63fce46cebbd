"""RL throughput, measured in one run and printed as ratios.

    python bench/rl.py                    # ~100M-param random Qwen2.5-VL, 16 prompts, up to 512 tokens
    python bench/rl.py --prompts 8 --max-tokens 256 --skip-step
    python bench/rl.py --only-step         # GRPO vs PPO step time split only

1. Rollout tokens/s: vLLM (offline engine, eager, CPU or GPU) against transformers' ``generate`` on the
   same model and prompts; output lengths vary (uniform in [max/8, max], EOS ignored) as RL rollouts do,
   and ``generate`` pads every sequence of a batch to the longest, which is the cost it pays.
2. Reward throughput: the accuracy reward on 512 completions, serially in process vs the pooled
   grader of ``ovr_train.rl.rewards`` (when that module provides one).
3. Time split of RL steps of the tiny recipes, GRPO against PPO (same prompts and seed):
   generate / score / critic / sync / policy, and PPO's step time over GRPO's.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--skip-step", action="store_true", help="skip the RL step time split")
    parser.add_argument("--only-step", action="store_true", help="only the GRPO/PPO step split")
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")

    if not args.only_step:
        model_dir = bench_model()
        rollout(model_dir, args.prompts, args.max_tokens)
        rewards()
    if not args.skip_step:
        step_split()
    return 0


def bench_model() -> Path:
    """The ≈100M-parameter random test model (built once, cached)."""
    from ovr_train.tiny_model import TinyModelSpec, cached_tiny_model

    spec = TinyModelSpec(
        hidden_size=768,
        num_layers=12,
        num_heads=12,
        num_kv_heads=12,
        intermediate_size=3072,
        format_steps=0,
    )
    return cached_tiny_model(ROOT / ".cache", spec)


def rollout(model_dir: Path, n: int, max_tokens: int) -> None:
    import torch
    from transformers import AutoModelForImageTextToText, AutoTokenizer
    from vllm import LLM, SamplingParams

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rng = random.Random(0)
    prompts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": f"What is {rng.randint(1, 99)} + {rng.randint(1, 99)}?"}],
            tokenize=True,
            add_generation_prompt=True,
            return_dict=False,
        )
        for _ in range(n)
    ]
    lengths = [rng.randint(max_tokens // 8, max_tokens) for _ in range(n)]
    useful = sum(lengths)

    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32).eval()
    params = sum(p.numel() for p in model.parameters())
    width = max(map(len, prompts))
    pad = tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    start = time.perf_counter()
    with torch.no_grad():
        model.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=True,
            max_new_tokens=max(lengths),
            min_new_tokens=max(lengths),
            pad_token_id=pad,
        )
    hf_time = time.perf_counter() - start
    del model

    llm = LLM(
        model=str(model_dir),
        dtype="float32",
        enforce_eager=True,
        max_model_len=width + max_tokens + 8,
        seed=0,
    )
    requests = [{"prompt_token_ids": p} for p in prompts]
    sampling = [
        SamplingParams(max_tokens=L, min_tokens=L, ignore_eos=True, temperature=1.0)
        for L in lengths
    ]
    start = time.perf_counter()
    outputs = llm.generate(requests, sampling, use_tqdm=False)
    vllm_time = time.perf_counter() - start
    assert sum(len(o.outputs[0].token_ids) for o in outputs) == useful
    del llm

    print(
        f"rollout: {params / 1e6:.0f}M params, {n} prompts, {useful} useful tokens (lengths {min(lengths)}..{max(lengths)})"
    )
    print(f"  transformers generate: {useful / hf_time:8.1f} tokens/s ({hf_time:.1f}s)")
    print(f"  vLLM                 : {useful / vllm_time:8.1f} tokens/s ({vllm_time:.1f}s)")
    print(f"  ratio vLLM / transformers: {hf_time / vllm_time:.2f}x")


def rewards() -> None:
    from ovr_core.format import format_completion

    rng = random.Random(0)
    completions, answers = [], []
    for _ in range(512):
        a = rng.randint(1, 50)
        guess = a if rng.random() < 0.5 else a + 1
        completions.append(
            format_completion("Let me think.", f"So \\boxed{{\\frac{{{2 * guess}}}{{2}}}}.")
        )
        answers.append(str(a))
    from ovr_core.grading import grade_serial
    from ovr_train.rl.rewards import REWARDS

    start = time.perf_counter()
    grade_serial(completions, answers)
    serial = time.perf_counter() - start
    print(f"reward: accuracy on {len(completions)} completions")
    print(f"  serial in process: {len(completions) / serial:8.1f} completions/s")
    REWARDS["accuracy"](completions, answer=answers)  # start the worker pool outside the timing
    start = time.perf_counter()
    REWARDS["accuracy"](completions, answer=answers)
    pooled = time.perf_counter() - start
    print(f"  pooled grader    : {len(completions) / pooled:8.1f} completions/s")
    print(f"  ratio pooled / serial: {serial / pooled:.2f}x")


def step_split(steps: int = 5) -> None:
    """Time the phases of a few tiny-recipe RL steps, GRPO against PPO, by wrapping the trainer's
    methods: generate (vLLM), score (rewards), critic (PPO: values + critic updates), sync (weights
    into vLLM), policy (the rest of a step: log-probs, forward/backward, optimizer)."""
    grpo = timed_steps(ROOT / "recipes" / "tiny-rl.yaml", steps)
    ppo = timed_steps(ROOT / "recipes" / "tiny-rl-ppo.yaml", steps)
    print(f"RL step time split (tiny recipes, {steps} steps each, same prompts and seed):")
    print(f"  {'phase':<10} {'GRPO s/step':>12} {'PPO s/step':>12} {'PPO/GRPO':>9}")
    for phase in ("generate", "score", "critic", "sync", "policy", "total"):
        g, p = grpo.get(phase, 0.0) / steps, ppo.get(phase, 0.0) / steps
        ratio = f"{p / g:8.2f}x" if g > 0 else "       -"
        print(f"  {phase:<10} {g:12.3f} {p:12.3f} {ratio}")
    for name, spent in (("GRPO", grpo), ("PPO", ppo)):
        shares = ", ".join(
            f"{k} {spent.get(k, 0.0) / spent['total']:.0%}"
            for k in ("generate", "score", "critic", "sync", "policy")
        )
        print(f"  {name} step: {shares}")


def timed_steps(recipe: Path, steps: int) -> dict[str, float]:
    """Seconds spent in each phase over ``steps`` steps of ``recipe``; vLLM's start-up (before
    training) and the critic's one-off creation (first PPO step) are left out."""
    import tempfile
    from collections import defaultdict

    import transformers

    from ovr_train.rl import train as rl
    from ovr_train.rl.trainer import OVRRLTrainer

    spent: dict[str, float] = defaultdict(float)
    original_init = OVRRLTrainer.__init__

    def timed(name, func):
        def wrapper(*a, **k):
            start = time.perf_counter()
            try:
                return func(*a, **k)
            finally:
                spent[name] += time.perf_counter() - start

        return wrapper

    def init(self, *a, **k):
        original_init(self, *a, **k)
        vg = self.vllm_generation
        vg.generate = timed("generate", vg.generate)
        vg.sync_weights = timed("sync", vg.sync_weights)
        self._calculate_rewards = timed("score", self._calculate_rewards)
        self.training_step = timed("total", self.training_step)
        critic = getattr(self, "critic", None)  # PPO
        if critic is not None:
            critic.values = timed("critic", critic.values)
            critic.train_on = timed("critic", critic.train_on)
            critic.build = timed("setup", critic.build)

    OVRRLTrainer.__init__ = init
    try:
        with tempfile.TemporaryDirectory() as out:
            transformers.logging.set_verbosity_error()
            rl.main(
                *rl.parse_args(
                    [
                        "--config",
                        str(recipe),
                        f"output_dir={out}",
                        f"max_steps={steps}",
                        "save_strategy=no",
                        "report_to=none",
                        "dynamic_sampling=false",
                    ]
                )
            )
    finally:
        OVRRLTrainer.__init__ = original_init
    spent["total"] -= spent.pop("setup", 0.0)
    spent["policy"] = spent["total"] - sum(v for k, v in spent.items() if k != "total")
    return dict(spent)


if __name__ == "__main__":
    sys.exit(main())
