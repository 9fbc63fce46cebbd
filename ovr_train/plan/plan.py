"""Will a recipe fit, and how long will a step take? Answered from the recipe alone, before a GPU hour.

    ovr-train plan --config recipes/ovr-7b-rl.yaml [--gpus 8 --gpu-mem 80 --nodes 1] [key=value …]

Per GPU: the model states (weights, gradients, optimizer) under the recipe's ZeRO stage, from
DeepSpeed's own estimators; activations under gradient checkpointing at the recipe's sequence
length; the logits and loss with TRL's fused LM head and without it; vLLM's weights and KV cache
when colocated; RL's rollout buffers (ids, log-probs, ``pixel_values``) per GPU
(``ovr_train.plan.rollout_terms``, which also checks the collective timeout against a rollout round
and each stage's prompt budget). Per update: the tokens it moves and a time from FLOPs at a stated
MFU, PPO's critic passes included. A recipe
that will not fit is refused with one line per problem, each naming the fix (exit 1).
``ovr-train sft|rl`` run the same check before loading anything (``ovr_train.plan.command``).

Every formula cites its source beside it. These are estimates: ``scripts/gpu-check.sh`` measures
the same shapes on a GPU and writes both side by side (``artifacts/gpu-check.json``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

from ovr_core.model_shapes import (  # noqa: F401 - QWEN2_5_VL_7B/ModelShape are part of the API
    QWEN2_5_VL_7B,
    TINY_MODELS,
    ModelShape,
    model_shape,
)
from ovr_train.plan.rollout_terms import (
    check_collective_timeout,
    check_prompt_budget,
    rollout_buffer_bytes,
    rollouts_per_update,
)

GiB = 1024**3
HEADROOM = 0.92  # share of the card a plan may fill: CUDA context, NCCL buffers, fragmentation
MIN_CONCURRENT_SEQUENCES = 32  # a colocated KV cache holding fewer full-length rollouts is refused
SEQUENCE_IS_MAX_TOKENS = 8192  # longest completion for which a sequence-level IS ratio is usable
LOG_COMPLETIONS_MAX = 256  # completions per step that log_completions may print
H100_BF16_TFLOPS = 989.0  # NVIDIA H100 SXM datasheet, dense BF16
H100_HBM_TBPS = 3.35  # NVIDIA H100 SXM datasheet, HBM3 bandwidth
# TRL's fused LM head (trl/kernels/chunked_logprob.py TOKEN_CHUNK_SIZE, trl/trainer/utils.py
# _CHUNKED_LOGPROB_CHUNK_SIZE, TRL 1.16): logits exist one [4096 tokens x 32768 vocab] tile at a time
FUSED_TOKEN_TILE, FUSED_VOCAB_TILE = 4096, 32768


@dataclass
class Hardware:
    gpus_per_node: int = 8
    gpu_mem_gb: float = 80.0
    nodes: int = 1
    peak_tflops: float = H100_BF16_TFLOPS
    hbm_tbps: float = H100_HBM_TBPS
    mfu: float = 0.35  # model FLOPs utilisation assumed for step time (long-context dense training)
    rollout_gpus: int = 8  # GPUs of the separate vLLM server(s) in vllm_mode=server
    trace_tokens: int = (
        8192  # mean SFT trace length assumed for traces_per_update (the run measures it)
    )

    @property
    def gpus(self) -> int:
        return self.gpus_per_node * self.nodes


@dataclass
class Plan:
    """What one GPU holds (bytes, by part), what an update moves, and what is wrong."""

    stage: str
    model: str
    hardware: Hardware
    memory: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    tokens_per_update: int = 0
    step_seconds: float = 0.0
    generation_seconds: float = 0.0

    @property
    def peak_bytes(self) -> float:
        return sum(v for k, v in self.memory.items() if not k.startswith("("))

    def render(self) -> str:
        hw = self.hardware
        lines = [
            f"ovr-train plan: {self.stage} of {self.model} on {hw.nodes} node(s) x "
            f"{hw.gpus_per_node} GPU(s) of {hw.gpu_mem_gb:g} GB",
            "memory per GPU:",
        ]
        lines += [f"  {name:<50} {value / GiB:8.2f} GiB" for name, value in self.memory.items()]
        lines.append(
            f"  {'total (peak)':<50} {self.peak_bytes / GiB:8.2f} GiB of "
            f"{hw.gpu_mem_gb * 1e9 / GiB:.1f} GiB ({HEADROOM:.0%} usable: "
            f"{HEADROOM * hw.gpu_mem_gb * 1e9 / GiB:.1f} GiB)"
        )
        lines.append(f"tokens per update: {self.tokens_per_update:,}")
        if self.stage == "sft":
            lines[-1] += f" (traces x an assumed {hw.trace_tokens} tokens each, --trace-tokens)"
        lines.append(
            f"estimated update time: {self.step_seconds:,.0f} s of training at {hw.mfu:.0%} MFU "
            f"of {hw.peak_tflops:g} TFLOP/s per GPU"
        )
        if self.stage == "rl":
            lines[-1] += " (every completion at its max length: an upper bound)"
        if self.generation_seconds:
            lines.append(
                f"estimated rollout time: {self.generation_seconds:,.0f} s per update (decode "
                f"bound by HBM at {hw.hbm_tbps:g} TB/s, same upper bound)"
            )
        lines += [f"note: {n}" for n in self.notes]
        lines += [f"REFUSED: {p}" for p in self.problems]
        lines.append("fits" if not self.problems else f"{len(self.problems)} problem(s)")
        return "\n".join(lines)


def plan_recipe(
    stage: str, settings: dict, hardware: Hardware, prompt_tokens: int = 2048, shape=None
) -> Plan:
    """The plan of a resolved recipe (``settings``: its keys with TRL's defaults filled in);
    ``shape`` overrides the model's (the GPU check plans its few-layer model)."""
    shape = shape or model_shape(settings["model_name_or_path"])
    plan = Plan(stage=stage, model=shape.name, hardware=hardware)
    zero = zero_stage(settings.get("deepspeed"))
    if stage == "sft":
        tokens = settings["per_device_train_batch_size"] * settings["max_length"]
        seq = settings["max_length"]
    else:
        seq = prompt_tokens + settings["max_completion_length"]
        tokens = settings["per_device_train_batch_size"] * seq
    plan.memory.update(model_state_bytes(shape, settings, hardware, zero))
    plan.memory.update(activation_bytes(shape, settings, tokens))
    plan.memory.update(loss_bytes(shape, stage, settings, tokens))
    if stage == "rl":
        plan.memory.update(rollout_buffer_bytes(shape, settings, hardware, prompt_tokens))
        check_rollouts(plan, shape, settings, hardware, prompt_tokens)
        check_collective_timeout(plan, settings)
        check_prompt_budget(plan, shape, settings, prompt_tokens)
        if settings.get("algorithm") == "ppo":
            plan.memory.update(critic_bytes(shape, settings, hardware, zero, seq))
            critic = plan.memory["(critic activations, while the critic trains)"]
            policy = sum(
                v for k, v in plan.memory.items() if k.startswith(("activation", "layer", "logits"))
            )
            if critic > policy:  # the two phases take turns: the larger one sets the peak
                plan.memory["critic activations beyond the policy's"] = critic - policy
    fits_in_memory(plan, stage, settings, hardware, tokens)
    plan.tokens_per_update, plan.step_seconds = update_time(stage, shape, settings, hardware, seq)
    return plan


def zero_stage(deepspeed) -> int:
    """The ZeRO stage of the recipe's DeepSpeed config (a path or a dict); 0 without DeepSpeed."""
    if not deepspeed:
        return 0
    config = deepspeed if isinstance(deepspeed, dict) else json.loads(Path(deepspeed).read_text())
    return int(config.get("zero_optimization", {}).get("stage", 0))


def model_state_bytes(shape: ModelShape, settings: dict, hw: Hardware, zero: int) -> dict:
    """Weights + gradients + AdamW states per GPU, from DeepSpeed's estimators where they apply."""
    frozen = shape.vision_params if settings.get("freeze_vision", True) else 0
    trainable = shape.llm_params + shape.vision_params - frozen
    largest = shape.embedding_params  # embed_tokens / lm_head: the largest module gathered at once
    if zero == 3:
        # deepspeed.runtime.zero.stage3.estimate_zero3_model_states_mem_needs (no offload):
        # 4 x largest layer + 18 bytes/param / GPUs (2 bf16 param + 16 fp32 master/Adam m, v)
        from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

        _, states, _ = estimate_zero3_model_states_mem_needs(
            trainable, largest, hw.gpus_per_node, hw.nodes, cpu_offload=False,
            cpu_offload_params=False, zero_init=True, additional_buffer_factor=1.0,
        )  # fmt: skip
        frozen_bytes = 2 * frozen / hw.gpus  # frozen bf16 weights are partitioned as well
        label = "model states, ZeRO-3 (DeepSpeed estimator)"
    elif zero in (1, 2):
        # deepspeed.runtime.zero.stage_1_and_2.estimate_zero2_model_states_mem_needs (no offload):
        # 2 bytes/param bf16 weights + 18 bytes/param (grads, fp32 master, Adam) / GPUs. Stage 1
        # keeps full bf16 gradients too (ZeRO paper, Rajbhandari et al. 2020, Table 1): + 2 bytes/param
        from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

        _, states = estimate_zero2_model_states_mem_needs(
            trainable, hw.gpus_per_node, hw.nodes, cpu_offload=False, additional_buffer_factor=1.0
        )
        states += 2 * trainable if zero == 1 else 0
        frozen_bytes = 2 * frozen
        label = f"model states, ZeRO-{zero} (DeepSpeed estimator)"
    else:
        # no DeepSpeed: bf16 weights, bf16 grads, torch AdamW m and v in the parameter dtype
        states, frozen_bytes = 8 * trainable, 2 * frozen
        label = "model states, no ZeRO (bf16 weights, grads, AdamW)"
    return {label: float(states), "frozen vision weights": float(frozen_bytes)}


def critic_bytes(shape: ModelShape, settings: dict, hw: Hardware, zero: int, seq: int) -> dict:
    """PPO's critic (``algorithm: ppo``): the policy's backbone, vision tower included, with a scalar
    head and no LM head (``ovr_train.rl.critic.ValueModel``), all of it trained by its own AdamW under the
    policy's ZeRO stage, so its states sit beside the policy's for the whole run. Its activations
    (same layer formula, its own micro-batch, a scalar head instead of logits) come while the
    policy's are freed, so only the larger of the two counts toward the peak."""
    backbone = replace(shape, tied_embeddings=True)  # tied: no separate LM head counted
    states = model_state_bytes(backbone, {**settings, "freeze_vision": False}, hw, zero)
    micro = settings.get("critic_micro_batch_size") or settings["per_device_train_batch_size"]
    activations = sum(activation_bytes(shape, settings, micro * seq).values())
    return {
        "critic model states (PPO)": sum(states.values()),
        "(critic activations, while the critic trains)": float(activations),
    }


def activation_bytes(shape: ModelShape, settings: dict, tokens: int) -> dict:
    """Activations of one micro-batch of ``tokens`` tokens.

    Gradient checkpointing (transformers' per-decoder-layer checkpoints) keeps each layer's bf16
    input and recomputes one layer at a time in the backward pass. That layer's saved tensors, per
    token, after Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer
    Models", §4.1) adapted to Qwen2.5's layer and checked against what autograd saves
    (tests/test_plan.py): two HF RMSNorms, each its fp32 input, the bf16 product and the bf16
    output (4h + 2h + 2h bytes); attention with GQA and a fused kernel (no s^2 scores): q and its
    RoPE copy, k/v and k's RoPE copy, the output (4h + 8kv); the SwiGLU MLP: gate, up, SiLU(gate),
    product (4 x 2i). Liger's kernels keep bf16 RMSNorm input and output (2 x (2h + 2h)) and
    SwiGLU's gate, up and product (3 x 2i). Plus the backward's transient gradients (2 x 2i + 2 x 2h).
    """
    h, i, kv = shape.hidden, shape.intermediate, shape.kv_heads * shape.head_dim
    liger = bool(settings.get("use_liger_kernel"))
    norms = 2 * (2 * h + 2 * h) if liger else 2 * (4 * h + 2 * h + 2 * h)
    mlp = 3 * 2 * i if liger else 4 * 2 * i
    layer_saved = norms + 4 * h + 8 * kv + mlp
    transient = 2 * 2 * i + 2 * 2 * h
    if settings.get("gradient_checkpointing", False):
        checkpoints = shape.layers * tokens * 2 * h
        live_layers = 1
    else:
        checkpoints, live_layers = 0, shape.layers
    return {
        "activation checkpoints (one bf16 input per layer)": float(checkpoints),
        f"layer activations ({'Liger kernels' if liger else 'HF layers'}, x{live_layers})": float(
            tokens * (live_layers * layer_saved + transient)
        ),
    }


def loss_bytes(shape: ModelShape, stage: str, settings: dict, tokens: int) -> dict:
    """Logits and loss: TRL's fused LM head, or full logits where the trainer needs them.

    Full logits (transformers' ForCausalLMLoss upcasts them, PyTorch's cross-entropy keeps a
    log-softmax and its gradient): bf16 logits 2 + fp32 upcast 4 + log-softmax 4 + gradient 4 =
    14 bytes x tokens x vocab. TRL 1.16's SFTTrainer and GRPOTrainer project through the LM head
    in [4096 x 32768] tiles (trl/kernels/chunked_logprob.py): one bf16 tile and its fp32 copy
    in flight, plus seven fp32 per-token statistics; the final hidden states and their gradient
    stay (2 x 2h bytes per token). SFT falls back to full logits with label smoothing
    (trl/trainer/sft_trainer.py: "Label smoothing needs the full logits").
    """
    full = 14.0 * tokens * shape.vocab
    tile = min(tokens, FUSED_TOKEN_TILE) * min(shape.vocab, FUSED_VOCAB_TILE)
    fused = tile * (2 + 4) + 7 * 4 * tokens
    hidden = 2 * 2 * shape.hidden * tokens
    unfused = stage == "sft" and float(settings.get("label_smoothing_factor") or 0) > 0
    if unfused:
        return {"logits + loss (full logits)": full + hidden, "(fused LM head would take)": fused}
    return {"logits + loss (TRL fused LM head)": fused + hidden, "(full logits would take)": full}


def check_rollouts(plan: Plan, shape: ModelShape, settings: dict, hw: Hardware, prompt: int):
    """vLLM memory when colocated, the importance-sampling mode, completion logging."""
    completion = settings["max_completion_length"]
    rollouts = rollouts_per_update(settings, hw)
    if settings.get("use_vllm") and settings.get("vllm_mode") == "colocate":
        colocated_vllm(plan, shape, settings, hw, prompt + completion, rollouts)
    elif settings.get("use_vllm"):
        plan.notes.append(
            f"rollouts on separate vLLM servers (vllm_mode=server, {hw.rollout_gpus} rollout GPUs): "
            "no vLLM memory on training GPUs"
        )
        plan.generation_seconds = decode_seconds(
            shape, hw, rollouts, prompt + completion, 0.9, gpus=hw.rollout_gpus
        )
    mode = settings.get("vllm_importance_sampling_mode", "sequence_mask")
    if (
        settings.get("use_vllm")
        and settings.get("vllm_importance_sampling_correction", True)
        and mode.startswith("sequence")
        and completion > SEQUENCE_IS_MAX_TOKENS
    ):
        # TRL multiplies the per-token ratios of the whole response (exp of their summed log
        # differences, grpo_trainer.py): small per-token vLLM/trainer mismatches compound over
        # 24k-48k tokens into ratios far outside [C_min, C_max], zeroing (mask) or clipping long
        # responses wholesale. Per-token truncation (TIS, Yao et al. 2025, "Your Efficient RL
        # Framework Secretly Brings You Off-Policy RL Training") bounds each token's weight.
        plan.problems.append(
            f"vllm_importance_sampling_mode={mode} multiplies per-token ratios over up to "
            f"{completion} tokens: long responses are zero-weighted or clipped as a whole; set "
            "vllm_importance_sampling_mode=token_truncate"
        )
    shown = settings.get("num_completions_to_print") or rollouts
    if settings.get("log_completions") and min(shown, rollouts) > LOG_COMPLETIONS_MAX:
        plan.problems.append(
            f"log_completions prints {min(shown, rollouts)} completions of up to {completion} "
            "tokens every step; set log_completions=false (or num_completions_to_print=8)"
        )


def colocated_vllm(plan, shape, settings, hw, seq_tokens, rollouts):
    """vLLM in the trainer's GPUs: its weights, and whether its KV cache holds enough rollouts."""
    share = float(settings.get("vllm_gpu_memory_utilization", 0.3))
    pool = share * hw.gpu_mem_gb * 1e9
    weights = 2.0 * (shape.llm_params + shape.vision_params)  # bf16, tensor parallel 1
    overhead = 2.0 * GiB  # vLLM's profiled activation peak + CUDA graphs, a typical figure
    kv = max(0.0, pool - weights - overhead)
    concurrent = int(kv // (shape.kv_bytes_per_token * seq_tokens))
    # vLLM's pool is claimed up front (gpu_memory_utilization x card); sleep mode releases it
    # while the policy trains (TRL vllm_enable_sleep_mode), so training and rollouts peak apart
    if settings.get("vllm_enable_sleep_mode"):
        plan.notes.append(f"colocated vLLM pool {pool / GiB:.1f} GiB is released while training")
        plan.memory["(colocated vLLM pool, during rollouts)"] = pool
    else:
        plan.memory["colocated vLLM pool (weights + KV cache)"] = pool
    plan.memory["(colocated vLLM KV cache)"] = kv
    per_gpu = math.ceil(rollouts / hw.gpus)
    plan.notes.append(
        f"colocated KV cache {kv / GiB:.1f} GiB holds {concurrent} rollouts of {seq_tokens} "
        f"tokens at once, for {per_gpu} rollouts per GPU per update"
    )
    if concurrent < MIN_CONCURRENT_SEQUENCES:
        plan.problems.append(
            f"colocated vLLM KV cache ({kv / GiB:.1f} GiB at vllm_gpu_memory_utilization={share}) "
            f"holds {concurrent} full-length rollouts at a time (< {MIN_CONCURRENT_SEQUENCES}) for "
            f"{per_gpu} per GPU; set vllm_mode=server with rollouts on separate vLLM nodes "
            "(docker/train-multinode.sh)"
        )
    plan.generation_seconds = decode_seconds(shape, hw, rollouts, seq_tokens, share, concurrent)


def decode_seconds(shape, hw, rollouts, seq_tokens, share, concurrent=None, gpus=None) -> float:
    """Rollout time: decoding is memory-bound, each step reads the weights once per GPU
    (2 bytes/param / HBM bandwidth), in waves of as many rollouts as the KV cache holds."""
    if concurrent is None:
        weights = 2.0 * (shape.llm_params + shape.vision_params)
        kv = share * hw.gpu_mem_gb * 1e9 - weights - 2 * GiB
        concurrent = int(kv // (shape.kv_bytes_per_token * seq_tokens))
    if concurrent <= 0:
        return float("inf")
    waves = math.ceil(math.ceil(rollouts / (gpus or hw.gpus)) / concurrent)
    step = 2.0 * (shape.llm_params + shape.vision_params) / (hw.hbm_tbps * 1e12)
    return waves * seq_tokens * step


def fits_in_memory(plan: Plan, stage: str, settings: dict, hw: Hardware, tokens: int) -> None:
    """Refuse a peak above the usable share of the card, naming the largest fixable part."""
    usable = HEADROOM * hw.gpu_mem_gb * 1e9
    training = {k: v for k, v in plan.memory.items() if not k.startswith("(")}
    pool = plan.memory.get("(colocated vLLM pool, during rollouts)")
    if pool is not None:
        states = sum(v for k, v in training.items() if k.startswith(("model states", "frozen")))
        if states + pool > usable:
            plan.problems.append(
                f"rollouts: model states {states / GiB:.1f} GiB + colocated vLLM pool "
                f"{pool / GiB:.1f} GiB > {usable / GiB:.1f} GiB usable; lower "
                "vllm_gpu_memory_utilization or set vllm_mode=server"
            )
    peak = sum(training.values())
    if peak <= usable:
        return
    over = f"{peak / GiB:.1f} GiB per GPU > {usable / GiB:.1f} GiB usable"
    biggest = max(training, key=training.get)
    if biggest.startswith("rollout buffers: pixel_values"):
        fix = f"{biggest}; set max_pixels=1003520 (1280 x 28 x 28) or lower"
    elif settings["per_device_train_batch_size"] > 1 and not biggest.startswith("model states"):
        fix = (
            f"{biggest} at {tokens} tokens per micro-batch; set per_device_train_batch_size=1 "
            + ("(rollouts_per_update keeps the batch)" if stage == "rl" else "(traces_per_update keeps the batch)")
        )  # fmt: skip
    elif biggest.startswith("logits + loss (full"):
        fix = "full logits; set label_smoothing_factor=0 so TRL's fused LM head is used"
    elif biggest.startswith("colocated vLLM"):
        fix = "the colocated vLLM pool; set vllm_enable_sleep_mode=true or vllm_mode=server"
    elif biggest.startswith("model states") and zero_stage(settings.get("deepspeed")) < 3:
        fix = "model states; use deepspeed=recipes/deepspeed/zero3.json or more GPUs"
    elif not settings.get("use_liger_kernel"):
        fix = f"{biggest}; set use_liger_kernel=true (GPU) or shorten the sequence"
    else:
        fix = f"{biggest}; shorten the sequence or use more GPUs"
    plan.problems.append(f"{over}: {fix}")


def update_time(stage: str, shape: ModelShape, settings: dict, hw: Hardware, seq: int):
    """(tokens per update, seconds of training compute per update).

    Dense FLOPs per token: 6 x params for forward + backward (Kaplan et al. 2020, §2.1), 8 x with
    activation recomputation (one more forward; Korthikanti et al. 2022); attention adds
    12 x layers x hidden x context per token forward+backward (Narayanan et al. 2021, eq. 3's
    attention term), causal so context = seq / 2. RL adds one no-grad forward (2 x params) for the
    old / sampling log-probabilities (TRL's importance-sampling correction); PPO adds its
    critic's passes (`critic_flops_per_token`).
    """
    gpus = hw.gpus
    if stage == "sft" and settings.get("traces_per_update"):
        tokens = settings["traces_per_update"] * min(hw.trace_tokens, settings["max_length"])
    elif stage == "sft":
        per_update = (
            settings["per_device_train_batch_size"]
            * gpus
            * settings.get("gradient_accumulation_steps", 1)
        )
        tokens = per_update * settings["max_length"]
    else:
        tokens = rollouts_per_update(settings, hw) * seq
    params = shape.llm_params
    dense = (8 if settings.get("gradient_checkpointing") else 6) * params
    attention = 12 * shape.layers * shape.hidden * (seq / 2)
    attention *= 4 / 3 if settings.get("gradient_checkpointing") else 1
    extra = 2 * params + 4 * shape.layers * shape.hidden * (seq / 2) if stage == "rl" else 0
    if stage == "rl" and settings.get("algorithm") == "ppo":
        extra += critic_flops_per_token(shape, settings, seq)
    flops = tokens * (dense + attention + extra)
    return tokens, flops / (gpus * hw.peak_tflops * 1e12 * hw.mfu)


def critic_flops_per_token(shape: ModelShape, settings: dict, seq: int) -> float:
    """PPO's critic per rollout token: one no-grad forward for the old values, then
    ``critic_steps_per_batch`` forward + backward passes, each over the whole batch as
    ``ovr_train.rl.critic.Critic.train_on`` runs them, with the policy's recomputation (the critic
    checkpoints when the policy does). Its backbone is the policy's decoder without the LM head;
    the same per-token terms as the policy's (Kaplan et al. 2020; Narayanan et al. 2021)."""
    params = shape.layers * shape.decoder_layer_params  # the matmuls: no LM head, no lookup
    recompute = bool(settings.get("gradient_checkpointing"))
    attention_fwd = 4 * shape.layers * shape.hidden * (seq / 2)
    forward = 2 * params + attention_fwd
    train = (8 if recompute else 6) * params + attention_fwd * (4 if recompute else 3)
    return forward + int(settings.get("critic_steps_per_batch", 1)) * train
