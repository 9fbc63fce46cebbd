"""The plan's RL terms that come from the rollouts rather than the model: the buffers TRL keeps on
every rank between generating an update's rollouts and training on them (ids, masks, log-probs,
and the images' ``pixel_values``), the collective timeout a rollout round must fit in, and the
prompt budget each curriculum stage leaves. `ovr_train.plan.plan` calls these; each cites where the
figure comes from."""

from __future__ import annotations

import math

from ovr_core.model_shapes import ModelShape

# In server mode every rank but 0 waits in a collective while rank 0 waits on the rollout servers'
# HTTP answers (TRL 1.16 trl/generation/vllm_generation.py: gather the prompts, generate on rank 0,
# broadcast the completions), so the process group's timeout (transformers' ddp_timeout, 1800 s by
# default; open-r1 #620) must outlast a whole rollout round. The decode estimate counts weight
# reads only, not KV-cache reads (issue 23, item 7), so the timeout must hold twice the estimate.
ROLLOUT_TIMEOUT_MARGIN = 2.0
DDP_TIMEOUT_DEFAULT = 1800  # transformers 5.19 TrainingArguments.ddp_timeout
# Qwen2.5-VL's processor cap where a recipe sets no max_pixels (its preprocessor_config.json)
QWEN2_5_VL_MAX_PIXELS = 16384 * 28 * 28
SERVING_MAX_PIXELS = 1280 * 28 * 28  # ovr_serve's default (ovr_serve/config.py max_pixels)


def rollouts_per_update(settings: dict, hw) -> int:
    """Traces per policy update: the recipe's ``rollouts_per_update``, else TRL's batch formula."""
    if settings.get("rollouts_per_update"):
        return int(settings["rollouts_per_update"])
    return (
        settings["per_device_train_batch_size"]
        * hw.gpus
        * settings.get("gradient_accumulation_steps", 1)
    )


def image_patches(shape: ModelShape, max_pixels: int) -> int:
    """Vision patches of the largest image the processor lets through: Qwen2.5-VL's smart_resize
    keeps height x width <= max_pixels in multiples of patch x merge, one patch per 14 x 14 pixels."""
    return max_pixels // shape.vision_patch**2


def image_tokens(shape: ModelShape, max_pixels: int) -> int:
    """Prompt tokens of that image: one per merge x merge patches (28 x 28 pixels)."""
    return max_pixels // (shape.vision_patch * shape.vision_merge) ** 2


def rollout_buffer_bytes(shape: ModelShape, settings: dict, hw, prompt: int) -> dict:
    """What TRL 1.16's GRPOTrainer keeps on each GPU for the whole update (``_buffered_inputs``:
    the rank's share of the generation batch, every row padded to the longest): prompt and
    completion ids and masks (int64), the vLLM sampling log-probs, the old log-probs and the
    per-token importance ratios (fp32, trl/trainer/grpo_trainer.py ``output``), PPO's per-token
    advantages, values and returns (fp32), and each row's ``pixel_values``: TRL repeats a prompt's
    image for each of its ``num_generations`` rows, and Trainer._prepare_input moves it to the GPU
    (bf16 under DeepSpeed, fp32 otherwise). One image per prompt at ``max_pixels``, an upper bound
    like the plan's max lengths."""
    rows = math.ceil(rollouts_per_update(settings, hw) / hw.gpus)
    completion = settings["max_completion_length"]
    per_token_fp32 = 0
    if settings.get("use_vllm"):
        per_token_fp32 += 1  # sampling_per_token_logps
        if settings.get("vllm_importance_sampling_correction", True):
            per_token_fp32 += 1  # old_per_token_logps
            mode = settings.get("vllm_importance_sampling_mode", "sequence_mask")
            per_token_fp32 += 1 if mode.startswith("token") else 0  # importance_sampling_ratio
    if settings.get("algorithm") == "ppo":
        per_token_fp32 += 3  # GAE advantages, the critic's old values, returns
    ids = 2 * 8 * (prompt + completion) + 4 * per_token_fp32 * completion
    max_pixels = settings.get("max_pixels") or QWEN2_5_VL_MAX_PIXELS
    value_bytes = 2 if settings.get("deepspeed") and settings.get("bf16") else 4
    values_per_patch = shape.vision_channels * shape.vision_temporal_patch * shape.vision_patch**2
    pixels = image_patches(shape, max_pixels) * values_per_patch * value_bytes
    cap = f"max_pixels={max_pixels}" if settings.get("max_pixels") else "no max_pixels"
    return {
        f"rollout buffers: ids, masks, log-probs ({rows} rollouts)": float(rows * ids),
        f"rollout buffers: pixel_values ({rows} x 1 image, {cap})": float(rows * pixels),
    }


def check_collective_timeout(plan, settings: dict) -> None:
    """Server mode: refuse a ``ddp_timeout`` that a rollout round can outlast (every rank but 0
    would die in its collective at the first long round), naming the value to set."""
    rollout = plan.generation_seconds
    if settings.get("vllm_mode") != "server" or not settings.get("use_vllm"):
        return
    if not rollout or math.isinf(rollout):
        return
    timeout = int(settings.get("ddp_timeout") or DDP_TIMEOUT_DEFAULT)
    needed = ROLLOUT_TIMEOUT_MARGIN * rollout
    plan.notes.append(
        f"collective timeout: ddp_timeout={timeout} s for rollout rounds of up to "
        f"{rollout:,.0f} s (needs >= {ROLLOUT_TIMEOUT_MARGIN:g} x)"
    )
    if timeout < needed:
        suggest = math.ceil(needed / 3600) * 3600
        plan.problems.append(
            f"ddp_timeout={timeout} s: ranks 1..N wait in a collective while rank 0 waits on the "
            f"rollout servers, up to {rollout:,.0f} s per round (estimated); set "
            f"ddp_timeout={suggest} ({ROLLOUT_TIMEOUT_MARGIN:g} x the estimate, in hours)"
        )


def check_prompt_budget(plan, shape: ModelShape, settings: dict, prompt: int) -> None:
    """Refuse a stage whose prompt budget (``vllm_max_model_length`` minus the longest completion)
    holds less than the planned prompt, or a ``max_pixels`` whose one image is over it: vLLM's
    OpenAI server cuts ``max_tokens`` to what the context leaves (vllm/entrypoints/serve/utils/
    api_utils.py get_max_tokens) without a word, so the longest prompts would get shorter
    responses than the stage says."""
    context = settings.get("vllm_max_model_length")
    if not settings.get("use_vllm") or not context:
        return
    completion = settings["max_completion_length"]
    budget = context - completion
    if budget < prompt:
        plan.problems.append(
            f"vllm_max_model_length={context} leaves {budget} prompt tokens beside "
            f"{completion}-token completions, under the planned {prompt} (--prompt-tokens); set "
            f"vllm_max_model_length={prompt + completion} (and the servers' --max-model-len)"
        )
    max_pixels = settings.get("max_pixels") or QWEN2_5_VL_MAX_PIXELS
    tokens = image_tokens(shape, max_pixels)
    if tokens >= prompt:
        cap = f"max_pixels={max_pixels}" if settings.get("max_pixels") else "no max_pixels"
        plan.problems.append(
            f"one image at {cap} is up to {tokens} prompt tokens, over the planned {prompt} "
            f"(--prompt-tokens); set max_pixels={SERVING_MAX_PIXELS} (1280 x 28 x 28, ovr-serve's)"
        )
