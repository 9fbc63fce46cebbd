"""The policy to train: Qwen2.5-VL in the recipe's dtype and attention, vision tower frozen or not."""

from __future__ import annotations


def load_policy(model_args, freeze_vision_tower: bool, log):
    """The Qwen2.5-VL to train, in the recipe's dtype and attention, its vision tower + projector
    frozen when asked (the cold start's text-only data never reaches them)."""
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(
        model_args.model_name_or_path,
        dtype=torch_dtype(model_args.dtype),
        attn_implementation=model_args.attn_implementation,
    )
    if freeze_vision_tower:
        log.info("frozen vision tower + projector: %d parameters", freeze_vision(model))
    return model


def torch_dtype(name: str | None):
    """``model_args.dtype`` as ``from_pretrained`` takes it: ``"auto"`` or a torch dtype."""
    import torch

    if name in (None, "auto"):
        return "auto"
    return getattr(torch, name)


def freeze_vision(model) -> int:
    """Freeze the vision tower and its projector (``model.visual``, merger included); returns #params."""
    visual = getattr(getattr(model, "model", model), "visual", None)
    if visual is None:
        return 0
    frozen = 0
    for param in visual.parameters():
        param.requires_grad_(False)
        frozen += param.numel()
    return frozen
