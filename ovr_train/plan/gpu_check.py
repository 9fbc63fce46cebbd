"""The plan against a measurement: peak memory and tokens/s of SFT and RL policy steps on the real
Qwen2.5-VL-7B width (random weights, full hidden size and vocabulary, a few layers), beside what
`ovr_train.plan` predicts for the same shape. Run by ``scripts/gpu-check.sh`` (never in CI).

    python -m ovr_train.plan.gpu_check [--layers 4 --sft-tokens 65536 --rl-tokens 26624 --steps 3]
    python -m ovr_train.plan.gpu_check --smoke      # CPU, a toy shape: checks the script, not the plan

Each phase builds the model in bf16 with gradient checkpointing and the vision tower frozen, as the
recipes train it, and takes optimizer steps (torch AdamW, the plan's "no ZeRO" case on one GPU):
- SFT: one packed row of the recipe's per-GPU tokens, next-token loss through TRL's fused LM head
  (``trl.kernels.ChunkedLogProbFunction``, what SFTTrainer calls);
- RL: one rollout of prompt + completion tokens made up front (random tokens, advantages +-1),
  a no-grad forward for the old log-probabilities, then the DAPO token-level clipped loss with
  per-token truncated importance weights (``token_truncate``), through the same fused head.
Writes ``artifacts/gpu-check.json``: per phase, measured peak memory and tokens/s, the plan's
prediction, and their ratio.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from ovr_core.model_shapes import QWEN2_5_VL_7B, ModelShape
from ovr_train.plan import Hardware, plan_recipe

SMOKE_SHAPE = ModelShape(
    name="smoke",
    hidden=128,
    intermediate=256,
    layers=2,
    heads=2,
    kv_heads=1,
    vocab=1024,
    tied_embeddings=False,
    vision_depth=1,
    vision_hidden=32,
    vision_intermediate=64,
    vision_out=64,
)
PROMPT_TOKENS = 2048  # the plan's RL prompt budget


def main(argv: list[str] | None = None) -> int:
    """Measure both phases and write the JSON; returns 0."""
    import torch

    args = parse(argv)
    device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    if args.smoke:
        shape, sft_tokens, rl_tokens, steps = SMOKE_SHAPE, 128, 96, 2
    else:
        shape = dataclasses.replace(QWEN2_5_VL_7B, name=f"Qwen2.5-VL-7B x{args.layers} layers",
                                    layers=args.layers)  # fmt: skip
        sft_tokens, rl_tokens, steps = args.sft_tokens, args.rl_tokens, args.steps
    result = {
        "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
        "smoke": args.smoke,
        "shape": dataclasses.asdict(shape),
        "sft": measure("sft", shape, sft_tokens, steps, device),
        "rl": measure("rl", shape, rl_tokens, steps, device),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


def parse(argv):
    parser = argparse.ArgumentParser(prog="gpu-check", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="CPU toy run of the script itself")
    parser.add_argument("--layers", type=int, default=4, help="decoder layers (full width)")
    parser.add_argument("--sft-tokens", type=int, default=65536, help="SFT tokens per GPU")
    parser.add_argument("--rl-tokens", type=int, default=PROMPT_TOKENS + 24576, help="RL rollout")
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per phase")
    parser.add_argument("--out", default="artifacts/gpu-check.json")
    return parser.parse_args(argv)


def measure(stage: str, shape: ModelShape, tokens: int, steps: int, device: str) -> dict:
    """Peak memory and tokens/s of ``steps`` optimizer steps, beside the plan for this shape."""
    import torch

    model = build_model(shape, device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    seconds = []
    for _ in range(steps):
        start = time.perf_counter()
        ids = torch.randint(0, shape.vocab, (1, tokens), device=device)
        loss = sft_loss(model, ids) if stage == "sft" else rl_loss(model, ids, tokens)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else None
    del model, optimizer
    if device == "cuda":
        torch.cuda.empty_cache()
    return compare(stage, shape, tokens, device, peak, seconds)


def compare(stage, shape, tokens, device, peak, seconds) -> dict:
    """The measurement and the plan's prediction for one GPU running this exact shape."""
    import torch

    mem_gb = torch.cuda.get_device_properties(0).total_memory / 1e9 if device == "cuda" else 80.0
    settings = {
        "model_name_or_path": shape.name,
        "per_device_train_batch_size": 1,
        "gradient_accumulation_steps": 1,
        "gradient_checkpointing": True,
        "use_liger_kernel": False,
        "freeze_vision": True,
        "deepspeed": None,
        "max_length": tokens,
        "max_completion_length": tokens - PROMPT_TOKENS if stage == "rl" else None,
        "use_vllm": False,
    }
    prompt = PROMPT_TOKENS if stage == "rl" else 0
    if stage == "rl" and tokens <= PROMPT_TOKENS:  # smoke: a short prompt
        prompt, settings["max_completion_length"] = tokens // 2, tokens - tokens // 2
    plan = plan_recipe(stage, settings, Hardware(1, mem_gb, 1), prompt_tokens=prompt, shape=shape)
    timed = seconds[1:] or seconds  # the first step warms up kernels and the allocator
    measured_tps = tokens / (sum(timed) / len(timed))
    predicted_tps = plan.tokens_per_update / plan.step_seconds
    return {
        "tokens": tokens,
        "steps": len(seconds),
        "step_seconds": seconds,
        "peak_memory_gib": peak / 2**30 if peak is not None else None,
        "predicted_memory_gib": plan.peak_bytes / 2**30,
        "predicted_parts_gib": {k: v / 2**30 for k, v in plan.memory.items()},
        "memory_ratio": (peak / plan.peak_bytes) if peak is not None else None,
        "tokens_per_second": measured_tps,
        "predicted_tokens_per_second": predicted_tps,
        "implied_mfu": plan.hardware.mfu * measured_tps / predicted_tps,
        "planned_mfu": plan.hardware.mfu,
    }


def build_model(shape: ModelShape, device: str):
    """Qwen2.5-VL with ``shape``'s dimensions and random weights, bf16 on GPU (fp32 on CPU)."""
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from ovr_train.models import freeze_vision

    config = Qwen2_5_VLConfig(
        text_config={
            "hidden_size": shape.hidden,
            "intermediate_size": shape.intermediate,
            "num_hidden_layers": shape.layers,
            "num_attention_heads": shape.heads,
            "num_key_value_heads": shape.kv_heads,
            "vocab_size": shape.vocab,
            "rope_parameters": {  # the 7B's (16, 24, 24) M-RoPE sections, scaled to the head
                "rope_type": "default",
                "rope_theta": 1000000.0,
                "mrope_section": [s * shape.head_dim // 128 for s in (16, 24, 24)],
            },
        },
        vision_config={
            "depth": shape.vision_depth,
            "hidden_size": shape.vision_hidden,
            "intermediate_size": shape.vision_intermediate,
            "out_hidden_size": shape.vision_out,
            "num_heads": max(1, shape.vision_hidden // 80),
        },
        tie_word_embeddings=shape.tied_embeddings,
    )
    config._attn_implementation = "sdpa"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration(config).to(dtype)
    freeze_vision(model)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    model.train()
    return model


def token_logprobs(model, ids):
    """Per-token log-probabilities of ``ids[1:]`` through TRL's fused LM head (4096-token tiles)."""
    from trl.kernels import ChunkedLogProbFunction

    hidden = model.model(input_ids=ids, use_cache=False).last_hidden_state[0, :-1]
    weight = model.get_output_embeddings().weight
    outputs = ChunkedLogProbFunction.apply(
        hidden, weight, None, ids[0, 1:], 1.0, 32768, None, 1.0, ("log_probs",)
    )
    return outputs[0]


def sft_loss(model, ids):
    """Mean next-token negative log-likelihood of one packed row."""
    return -token_logprobs(model, ids).mean()


def rl_loss(model, ids, tokens: int):
    """DAPO's token-level clipped surrogate on the completion, with per-token truncated IS."""
    import torch

    completion = tokens - min(PROMPT_TOKENS, tokens // 2)
    with torch.no_grad():
        old = token_logprobs(model, ids)[-completion:]
    sampling = old + 0.01 * torch.randn_like(old)  # vLLM's log-probs differ a little
    is_weight = torch.exp(old - sampling).clamp(max=2.0)
    advantage = 1.0 if torch.rand(()) < 0.5 else -1.0
    ratio = torch.exp(token_logprobs(model, ids)[-completion:] - old)
    surrogate = torch.minimum(ratio * advantage, ratio.clamp(0.8, 1.28) * advantage)
    return -(surrogate * is_weight).mean()


if __name__ == "__main__":
    raise SystemExit(main())
