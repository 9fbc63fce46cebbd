"""Upstream bugs we work around, each in one named place with the test that says when it can go.

Qwen2.5-VL packed sequences (transformers 5.19): `fix_packed_mrope_positions`, below.

Two fixes to TRL 1.16's colocated vLLM rollouts (vLLM 0.32), installed by `fix_colocated_vllm`:

1. Weight sync on CPU. TRL's colocate sync (``VLLMGeneration.sync_weights``) calls the vLLM model's
   ``load_weights`` one parameter at a time. vLLM's CPU backend repacks linear weights after
   loading (the new parameters have no ``weight_loader``), so the first sync dies with
   ``AttributeError: 'Parameter' object has no attribute 'weight_loader'``. vLLM's own in-place
   reload (``Worker.reload_weights(is_checkpoint_format=True)``) restores the loadable layout,
   loads, and repacks again. The encoder and multimodal caches are then cleared on every side
   (worker, scheduler, input processor): vision embeddings made with the old weights are stale,
   and clearing only the worker's copy makes the next image rollout fail ("Encoder cache miss").
   Remove when ``tests/test_rl_vllm.py::test_upstream_sync_still_fails_on_cpu`` fails.

2. Image tokens expanded twice. TRL tokenizes a multimodal prompt with the HF processor, which
   already expands each image to its ``<|image_pad|>`` run (4 tokens for a 56x56 image), and hands
   those ids plus the image to vLLM, which expands the first pad again: vLLM generates from
   ``4 + 3 = 7`` pads while the trainer scores the 4-pad prompt. Nothing fails; the completions are
   simply conditioned on a different prompt than the one trained on (the importance-sampling
   ratios show it). We send vLLM one pad per image and check, for every rollout, that the prompt
   vLLM reports having generated from is exactly the trainer's; a mismatch raises
   `PromptMismatch`. Remove the collapsing when
   ``tests/test_rl_vllm.py::test_upstream_still_expands_image_tokens_twice`` fails; keep the check.
"""

from __future__ import annotations

import types


class PromptMismatch(RuntimeError):
    """vLLM generated from other prompt tokens than the ones the trainer scores."""


def fix_colocated_vllm(vllm_generation, image_token_id: int | None) -> bool:
    """Install both fixes on a TRL ``VLLMGeneration`` in colocate mode; True when installed.

    Server mode keeps TRL's own routes (NCCL weight broadcast, server-side image features).
    """
    if getattr(vllm_generation, "mode", None) != "colocate":
        return False
    vllm_generation.sync_weights = types.MethodType(reload_into_engine, vllm_generation)
    upstream_generate = vllm_generation.generate

    def generate(prompts, images, num_generations, profiler=None):
        sent = [
            collapse_image_runs(ids, image_token_id) if has_images(images, i) else ids
            for i, ids in enumerate(prompts)
        ]
        prompt_ids, completion_ids, logprobs, logprob_token_ids = upstream_generate(
            prompts=sent, images=images, num_generations=num_generations, profiler=profiler
        )
        check_same_prompts(prompts, prompt_ids)
        return prompt_ids, completion_ids, logprobs, logprob_token_ids

    vllm_generation.generate = generate
    return True


def reload_into_engine(vllm_generation) -> None:
    """Stream the policy's parameters (gathered one at a time under ZeRO-3) into the engine."""
    llm = vllm_generation.llm
    if vllm_generation.enable_sleep_mode:
        llm.wake_up(tags=["weights"])
        vllm_generation._llm_weights_sleeping = False
    # TRL's iterator gathers sharded parameters and yields transformers' names; vLLM's Qwen2.5-VL
    # checkpoint mapper accepts them (model.language_model.*, model.visual.*, lm_head.*).
    llm.collective_rpc(
        "reload_weights",
        kwargs={
            "weights_iterator": vllm_generation._iter_named_params(),
            "is_checkpoint_format": True,
        },
    )
    # The worker dropped its encoder outputs and multimodal inputs with the old weights; the
    # scheduler and the input processor must forget them too, or the next rollout of an image they
    # still think cached fails with "Encoder cache miss".
    llm.reset_mm_cache()
    llm.llm_engine.reset_encoder_cache()
    llm.reset_prefix_cache()


def collapse_image_runs(ids: list[int], image_token_id: int | None) -> list[int]:
    """``ids`` with each run of image tokens reduced to one token (vLLM expands it itself)."""
    if image_token_id is None:
        return list(ids)
    out: list[int] = []
    for token in ids:
        if token == image_token_id and out and out[-1] == image_token_id:
            continue
        out.append(token)
    return out


def has_images(images, index: int) -> bool:
    return images is not None and bool(images[index])


def check_same_prompts(trainer_prompts, vllm_prompts) -> None:
    """Raise `PromptMismatch` unless vLLM generated from exactly the trainer's prompt tokens."""
    if len(trainer_prompts) != len(vllm_prompts):
        raise PromptMismatch(f"{len(trainer_prompts)} prompts sent, {len(vllm_prompts)} returned")
    for i, (ours, theirs) in enumerate(zip(trainer_prompts, vllm_prompts, strict=True)):
        if list(ours) != list(theirs):
            raise PromptMismatch(
                f"rollout {i}: vLLM generated from {len(theirs)} prompt tokens, the trainer scores "
                f"{len(ours)}; first difference at {_first_difference(ours, theirs)}"
            )


def _first_difference(a, b) -> int:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return min(len(a), len(b))


def fix_packed_mrope_positions(model) -> bool:
    """Make padding-free/packed batches attend within their own sequence on Qwen2-VL-family models.

    TRL's padding-free collator sends 2-D ``position_ids`` (restarting at 0 for each sequence) and no
    attention mask. Qwen2.5-VL's text model (transformers 5.19, ``Qwen2_5_VLTextModel.forward``)
    expands 2-D ids to its 3 M-RoPE rows and then builds the mask without them, so under sdpa/eager
    every sequence attends to the ones packed before it (FlashAttention is saved by TRL's
    ``cu_seq_lens``). Its documented packed form is 4 rows: text positions, then t/h/w, which for
    text are the same positions. A pre-hook on the text model rewrites 2-D ids (with no attention
    mask) to that form; for text-only data this is exactly the M-RoPE of the unpacked sequence.
    Remove when ``tests/test_sft_packing.py::test_upstream_still_needs_the_position_fix`` fails.
    Returns True when the hook was installed.
    """
    language_model = getattr(getattr(model, "model", None), "language_model", None)
    rope = getattr(getattr(language_model, "config", None), "rope_parameters", None) or {}
    if language_model is None or "mrope_section" not in rope:
        return False

    def to_four_rows(module, args, kwargs):
        position_ids = kwargs.get("position_ids")
        if (
            position_ids is not None
            and position_ids.ndim == 2
            and kwargs.get("attention_mask") is None
        ):
            kwargs["position_ids"] = position_ids[None].expand(4, -1, -1)
        return args, kwargs

    language_model.register_forward_pre_hook(to_four_rows, with_kwargs=True)
    return True
