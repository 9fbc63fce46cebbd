"""What a rollout prompt may hold: images no larger than the recipe's ``max_pixels``, and a length
within the stage's prompt budget (counted where it is not).

Images: in server mode the trainer's processor and the rollout servers' each resize an image by
their own cap (TRL 1.16 sends the trainer's token ids with the features the server rendered from
the image, trl/generation/vllm_client.py), so a cap set on one side only leaves them disagreeing on
how many image tokens the prompt holds. `cap_images` resizes every image to what the trainer's
processor would make of it (Qwen2.5-VL's own ``smart_resize``) before either side sees it: both
then keep it as it is, whatever their caps above it.

Budget: vLLM's servers cut ``max_tokens`` to what the context leaves
(vllm/entrypoints/serve/utils/api_utils.py ``get_max_tokens``), so a prompt longer than
``vllm_max_model_length`` minus the stage's completion length gets a shorter response than the
stage says, silently. `count_over_budget` counts such prompts per round (``rollouts/
over_prompt_budget``, with a warning); ``ovr-train plan`` refuses a stage whose budget is below the
planned prompt.
"""

from __future__ import annotations

import logging

logger = logging.getLogger("ovr_train.rl")


def cap_images(inputs: list[dict], processor) -> list[dict]:
    """``inputs`` (TRL's rows) with each image in ``images``/``image`` resized down to the
    processor's cap; rows without images, and images already within it, are left as they are."""
    limits = image_limits(processor)
    if limits is None:
        return inputs
    out = []
    for row in inputs:
        row = dict(row)
        if row.get("images"):
            row["images"] = [capped(image, *limits) for image in row["images"]]
        if row.get("image") is not None:
            row["image"] = capped(row["image"], *limits)
        out.append(row)
    return out


def image_limits(processor) -> tuple[int, int, int] | None:
    """(factor, min_pixels, max_pixels) of a Qwen2-VL-family image processor, else None."""
    image_processor = getattr(processor, "image_processor", None)
    size = getattr(image_processor, "size", None)
    if size is None or not getattr(size, "longest_edge", None):
        return None
    factor = image_processor.patch_size * image_processor.merge_size
    return factor, int(size.shortest_edge or factor * factor), int(size.longest_edge)


def capped(image, factor: int, min_pixels: int, max_pixels: int):
    """``image`` (PIL) resized to Qwen2.5-VL's grid when it is over ``max_pixels``."""
    from PIL import Image
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    if not hasattr(image, "size") or image.size[0] * image.size[1] <= max_pixels:
        return image
    width, height = image.size
    new_height, new_width = smart_resize(height, width, factor, min_pixels, max_pixels)
    return image.resize((new_width, new_height), Image.Resampling.BICUBIC)


def count_over_budget(trainer, batch: dict) -> int:
    """Prompts of this round longer than the stage leaves beside its completions, logged as
    ``rollouts/over_prompt_budget`` (0 where no context length is set)."""
    context = getattr(trainer.args, "vllm_max_model_length", None)
    if not context or "prompt_mask" not in batch:
        return 0
    budget = context - trainer.max_completion_length
    over = int((batch["prompt_mask"].sum(dim=1) > budget).sum())
    trainer._metrics["train"]["rollouts/over_prompt_budget"].append(float(over))
    if over:
        logger.warning(
            "%d prompt(s) over the %d-token prompt budget (vllm_max_model_length %d - "
            "max_completion_length %d): vLLM shortens their responses; lower max_pixels or "
            "raise vllm_max_model_length",
            over, budget, context, trainer.max_completion_length,
        )  # fmt: skip
    return over
