"""Every forward runs the vision tower, image or not, so that ZeRO-3 ranks stay in step.

Under ZeRO-3 each module's weights are gathered from every rank when it runs. With one rollout per
micro-batch, a rank whose row has an image runs Qwen2.5-VL's vision tower (and gathers it) while a
rank whose row is text-only skips it: their collectives stop matching and the run hangs
(QwenLM/Qwen3-VL #126). verl (#3734), EasyR1 (#530) and ms-swift solve it the same way, which is
the way here: a text-only forward runs the tower on a one-token dummy image and adds its output
times zero to the token embeddings, so the weights are gathered (and, when the tower trains, get a
zero gradient) on every rank, while the numbers the language model sees are unchanged.

TRL 1.16 hands a text-only row of a mixed batch an empty ``pixel_values`` (0 patches) and an empty
``image_grid_thw``; a batch with no image at all passes neither. Both count as text-only here.

`run_vision_every_step(model)` installs it on every Qwen2.5-VL backbone inside ``model`` (the
policy, PPO's critic, wrapped or not); ``ovr_train.rl.trainer`` calls it for both. The tower runs
from the embeddings' forward hook, where an image's would run, so the order of the modules, which
DeepSpeed checks across ranks, is the same on every rank.
"""

from __future__ import annotations

import torch
from torch import nn

_MARK = "_ovr_runs_vision_every_step"


def run_vision_every_step(model: nn.Module | None) -> int:
    """Install the dummy-image hooks on each vision-language backbone in ``model`` (a module with a
    ``visual`` child and input embeddings); idempotent. Returns how many are hooked now."""
    hooked = 0
    for module in model.modules() if model is not None else ():
        if "visual" not in module._modules or not hasattr(module, "get_input_embeddings"):
            continue
        if not getattr(module, _MARK, False):
            module.register_forward_pre_hook(_mark_text_only, with_kwargs=True)
            module.get_input_embeddings().register_forward_hook(_add_zero_vision(module))
            setattr(module, _MARK, True)
        hooked += 1
    return hooked


def _mark_text_only(module: nn.Module, args: tuple, kwargs: dict):
    """Backbone pre-hook: note whether this call is text-only (its token embeddings then get the
    dummy's zero); TRL's empty pixel slices are dropped. It runs no module itself: ZeRO-3 checks
    that every rank runs the same modules in the same order (DeepSpeed's
    ``assert_ints_same_as_other_ranks`` on the step's module trace), so the tower must run where an
    image's would, right after the embeddings."""
    pixels = kwargs.get("pixel_values")
    input_ids = kwargs.get("input_ids", args[0] if args else None)
    module._ovr_text_only = not (
        (pixels is not None and pixels.numel() > 0)
        or input_ids is None
        or kwargs.get("inputs_embeds") is not None
        or kwargs.get("pixel_values_videos") is not None
        or kwargs.get("mm_encoder_outputs")
        or _is_cached_decode(kwargs.get("past_key_values"))
    )
    if pixels is not None and pixels.numel() == 0:
        return args, {**kwargs, "pixel_values": None, "image_grid_thw": None}
    return None


def _add_zero_vision(backbone: nn.Module):
    """Forward hook of the backbone's token embeddings: in a text-only call, their output plus zero
    times the vision tower's output on a dummy image."""

    def hook(embedding: nn.Module, args: tuple, output: torch.Tensor):
        if not getattr(backbone, "_ovr_text_only", False):
            return None
        backbone._ovr_text_only = False
        zero = dummy_vision_output(backbone.visual, output.device).sum() * 0.0
        return output + zero.to(output.dtype)

    return hook


def dummy_vision_output(visual: nn.Module, device: torch.device) -> torch.Tensor:
    """The vision tower and its merger run on the smallest image it takes: one merged token
    (merge x merge patches of zeros, grid 1 x merge x merge)."""
    config = visual.config
    merge = config.spatial_merge_size
    values = config.in_channels * config.temporal_patch_size * config.patch_size**2
    dtype = next(visual.parameters()).dtype
    pixels = torch.zeros(merge * merge, values, dtype=dtype, device=device)
    grid = torch.tensor([[1, merge, merge]], device=device)
    out = visual(pixels, grid_thw=grid)
    return out.pooler_output if hasattr(out, "pooler_output") else out


def _is_cached_decode(past_key_values) -> bool:
    """A generation step after the first: the image (if any) was seen at prefill."""
    if past_key_values is None:
        return False
    length = getattr(past_key_values, "get_seq_length", None)
    return bool(length and length() > 0)
