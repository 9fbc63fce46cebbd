"""Dynamic sampling (DAPO's filter-and-refill, missing from TRL 1.16) and rollout-batch plumbing.

A group of rollouts of one prompt whose rewards are all equal has zero advantage: it costs a
forward/backward pass and teaches nothing, and as a policy improves most groups end up that way
(all right or all wrong). `DynamicSampling` is a trainer mixin over TRL's
``_generate_and_score_completions``: it keeps the informative groups of a rollout batch, draws new
prompts and rolls them out until the batch is full again (or ``max_refills`` is spent), and logs
``dynamic_sampling/filtered_fraction`` (groups dropped / groups seen), ``.../refills`` and
``.../short_fraction`` (groups topped up with uninformative ones when refills ran out: they keep the
batch shape and contribute no gradient). It works on TRL's output dict, so it is indifferent to
the loss (GRPO/DAPO/Dr. GRPO) and would work unchanged under a critic-based PPO's batch.
"""

from __future__ import annotations

import torch

# Per-token tensors padded on the left (prompt side); every other 2-D per-sample tensor is padded
# on the right (completion side). mm_token_type_ids spans prompt + completion and is split.
LEFT_PADDED = {"prompt_ids", "prompt_mask"}
SPLIT_AT_PROMPT = {"token_type_ids", "mm_token_type_ids"}


def informative_groups(
    advantages: torch.Tensor, group_size: int, tol: float = 1e-6
) -> torch.Tensor:
    """One bool per group of ``group_size`` consecutive rollouts: True when some advantage is non-zero.

    Every advantage of a group is zero exactly when its rewards are all equal (GRPO, Dr. GRPO and
    DAPO all subtract the group mean), so this is "the rewards differ" without re-reading rewards.
    """
    return advantages.detach().reshape(-1, group_size).abs().amax(dim=1) > tol


class DynamicSampling:
    """Trainer mixin (before ``GRPOTrainer``): filter uninformative groups and refill the batch."""

    dynamic_sampling: bool = False
    max_refills: int = 4
    refill_seed: int = 0
    _refill_order: list[int] | None = None
    _refill_pos: int = 0

    def _generate_and_score_completions(self, inputs):
        first = super()._generate_and_score_completions(inputs)
        if not (self.dynamic_sampling and self.model.training):
            return first
        group = self.num_generations
        wanted = len(inputs) // group
        batches, kept = [first], [informative_groups(first["advantages"], group)]
        refills = 0
        while refills < self.max_refills and self._globally_short(
            sum(int(k.sum()) for k in kept), wanted
        ):
            batches.append(
                super()._generate_and_score_completions(self._refill_inputs(wanted, group))
            )
            kept.append(informative_groups(batches[-1]["advantages"], group))
            refills += 1
        merged = concat_rollouts(batches, self._tokenizer.pad_token_id)
        flags = torch.cat(kept)
        chosen = [g for g in range(len(flags)) if flags[g]][:wanted]
        short = wanted - len(chosen)
        chosen += [g for g in range(len(flags)) if not flags[g]][:short]
        rows = torch.tensor([g * group + i for g in sorted(chosen) for i in range(group)])
        out = select_rows(merged, rows)
        completion_mask = out["completion_mask"]
        if "tool_mask" in out:
            completion_mask = completion_mask * out["tool_mask"]
        out["num_items_in_batch"] = self.accelerator.gather(completion_mask.sum()).sum()
        metrics = self._metrics["train"]
        metrics["dynamic_sampling/filtered_fraction"].append(1.0 - float(flags.float().mean()))
        metrics["dynamic_sampling/refills"].append(float(refills))
        metrics["dynamic_sampling/short_fraction"].append(short / max(wanted, 1))
        return out

    def _globally_short(self, kept: int, wanted: int) -> bool:
        # every process must make the same number of refill rounds (TRL gathers inside them)
        fewest = self.accelerator.gather(torch.tensor([kept], device=self.accelerator.device)).min()
        return int(fewest) < wanted

    def _refill_inputs(self, groups: int, group_size: int) -> list[dict]:
        """``groups`` more prompts from the training set (seeded, cycling), each ``group_size`` times."""
        dataset = self.train_dataset
        if self._refill_order is None or self._refill_pos + groups > len(self._refill_order):
            gen = torch.Generator().manual_seed(self.refill_seed + self.state.global_step)
            self._refill_order = torch.randperm(len(dataset), generator=gen).tolist()
            self._refill_pos = 0
        picks = self._refill_order[self._refill_pos : self._refill_pos + groups]
        self._refill_pos += groups
        return [dataset[i] for i in picks for _ in range(group_size)]


def concat_rollouts(batches: list[dict], pad_token_id: int) -> dict:
    """Concatenate TRL rollout batches row-wise, re-padding per-token tensors to a common width.

    Pixel values are kept per sample (TRL's ``split_pixel_values_by_grid`` layout) so rows can be
    selected; `select_rows` merges them back.
    """
    from trl.trainer.utils import split_pixel_values_by_grid

    batches = [split_pixel_values_by_grid(b) for b in batches]
    if len(batches) == 1:
        return batches[0]
    prompt_width = max(b["prompt_ids"].size(1) for b in batches)
    completion_width = max(b["completion_ids"].size(1) for b in batches)
    out = {}
    for key, first in batches[0].items():
        values = [b[key] for b in batches]
        if first is None:
            out[key] = None
        elif isinstance(first, torch.Tensor) and first.ndim == 0:
            out[key] = sum(values)  # num_items_in_batch: recomputed after selection
        elif isinstance(first, torch.Tensor):
            fill = pad_token_id if key in ("prompt_ids", "completion_ids") else 0
            parts = [
                _pad_to(v, key, b, prompt_width, completion_width, fill)
                for v, b in zip(values, batches, strict=True)
            ]
            out[key] = torch.cat(parts)
        else:
            out[key] = [x for v in values for x in v]
    return out


def select_rows(batch: dict, rows: torch.Tensor) -> dict:
    """The given rows of a concatenated batch, pixel values merged back to TRL's flat layout."""
    from trl.trainer.utils import unsplit_pixel_values_by_grid

    def pick(v):
        if v is None or (isinstance(v, torch.Tensor) and v.ndim == 0):
            return v
        if isinstance(v, torch.Tensor):
            return v[rows.to(v.device)]
        return [v[i] for i in rows.tolist()]

    return unsplit_pixel_values_by_grid({k: pick(v) for k, v in batch.items()})


def _pad_to(
    value: torch.Tensor, key: str, batch: dict, prompt_width: int, completion_width: int, fill
):
    if value.ndim < 2 or key in ("importance_sampling_ratio",) and value.size(1) == 1:
        return value
    p, c = batch["prompt_ids"].size(1), batch["completion_ids"].size(1)
    if key in LEFT_PADDED:
        return _pad(value, prompt_width - p, left=True, fill=fill)
    if key in SPLIT_AT_PROMPT and value.size(1) == p + c:
        prompt_part = _pad(value[:, :p], prompt_width - p, left=True, fill=0)
        return torch.cat(
            [prompt_part, _pad(value[:, p:], completion_width - c, left=False, fill=0)], 1
        )
    if key in SPLIT_AT_PROMPT:  # prompt-only form
        return _pad(value, prompt_width - value.size(1), left=True, fill=0)
    if value.size(1) == c:
        return _pad(value, completion_width - c, left=False, fill=fill)
    return value


def _pad(value: torch.Tensor, extra: int, left: bool, fill) -> torch.Tensor:
    if extra <= 0:
        return value
    padding = value.new_full((value.size(0), extra, *value.shape[2:]), fill)
    return torch.cat([padding, value] if left else [value, padding], dim=1)
