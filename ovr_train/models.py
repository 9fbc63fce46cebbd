"""The policy to train: Qwen2.5-VL in the recipe's dtype and attention, vision tower frozen or not,
after a pre-flight of the GPU kernels the recipe names."""

from __future__ import annotations

INSTALL = "run scripts/setup.sh on the GPU machine"


def load_policy(model_args, freeze_vision_tower: bool, log):
    """The Qwen2.5-VL to train, in the recipe's dtype and attention, its vision tower + projector
    frozen when asked (the cold start's text-only data never reaches them)."""
    from transformers import AutoModelForImageTextToText

    check_kernels(model_args.attn_implementation)  # before a byte of the checkpoint is read
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


def check_kernels(attn_implementation: str | None, use_liger_kernel: bool = False) -> None:
    """Refuse, in one line and before anything loads, a recipe whose kernels this machine lacks:
    flash-attn for ``attn_implementation=flash_attention_2`` (transformers 5.19 raises only once
    the model is being built, naming neither the install nor the alternative) and liger-kernel for
    ``use_liger_kernel`` (transformers' Trainer raises after the weights are loaded). Availability
    is transformers' own test (flash-attn >= 2.3.3 on a CUDA device; liger-kernel importable)."""
    from transformers.utils import is_flash_attn_2_available, is_liger_kernel_available

    missing = []
    if attn_implementation == "flash_attention_2" and not is_flash_attn_2_available():
        missing.append(
            "attn_implementation=flash_attention_2 needs flash-attn on a CUDA GPU "
            f"({INSTALL}: pip install flash-attn --no-build-isolation), "
            "or set attn_implementation=sdpa"
        )
    if use_liger_kernel and not is_liger_kernel_available():
        missing.append(
            f"use_liger_kernel=true needs liger-kernel ({INSTALL}: pip install -e '.[gpu]'), "
            "or set use_liger_kernel=false"
        )
    if missing:
        raise SystemExit("ovr-train: " + "; ".join(missing))
