"""Dynamic sampling (DAPO's filter-and-refill, missing from TRL 1.16) and rollout-batch plumbing.

A group of rollouts of one prompt whose rewards are all equal has zero advantage: it costs a
forward/backward pass and teaches nothing, and as a policy improves most groups end up that way
(all right or all wrong). `DynamicSampler` is a step of the RL trainer's rollout
(``ovr_train.rl.trainer``): it keeps the informative groups of a rollout batch, draws new
prompts and rolls them out until the batch is full again (or ``max_refills`` is spent), and logs
``dynamic_sampling/filtered_fraction`` (groups dropped / groups seen), ``.../refills`` and
``.../short_fraction`` (groups topped up with uninformative ones when refills ran out: they keep the
batch shape and contribute no gradient). It works on TRL's output dict, so it is indifferent to
the loss (GRPO/DAPO/Dr. GRPO) and works unchanged under PPO's critic.
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


class DynamicSampler:
    """Filter uninformative groups out of a rollout batch and refill it with new prompts' rounds.

    The trainer owns one (``dynamic_sampling: true``) and calls `refill` after its first rollout
    round; more rounds come from ``trainer.rollout_round``, so every round is scored as the first.
    """

    def __init__(self, max_refills: int = 4, seed: int = 0):
        self.max_refills = max_refills
        self.seed = seed
        self._order: list[int] | None = None
        self._pos = 0

    def refill(self, trainer, first: dict, wanted_rows: int) -> dict:
        """``first`` (a round with a ``rewards`` column) with its all-equal groups swapped for
        informative ones from up to ``max_refills`` more rounds; the batch keeps its size."""
        group = trainer.num_generations
        wanted = wanted_rows // group
        batches, kept = [first], [informative_groups(first["advantages"], group)]
        refills = 0
        while refills < self.max_refills and _globally_short(
            trainer.accelerator, sum(int(k.sum()) for k in kept), wanted
        ):
            batches.append(trainer.rollout_round(self._refill_inputs(trainer, wanted, group)))
            kept.append(informative_groups(batches[-1]["advantages"], group))
            refills += 1
        merged = concat_rollouts(batches, trainer._tokenizer.pad_token_id)
        flags = torch.cat(kept)
        chosen = [g for g in range(len(flags)) if flags[g]][:wanted]
        short = wanted - len(chosen)
        chosen += [g for g in range(len(flags)) if not flags[g]][:short]
        rows = torch.tensor([g * group + i for g in sorted(chosen) for i in range(group)])
        out = select_rows(merged, rows)
        if len(batches) > 1 and trainer.multi_objective_aggregation == "sum_then_normalize":
            # each round was scaled by its own batch's statistics: scale the kept rows as one batch
            out["advantages"] = group_advantages(
                out["rewards"], group, trainer.scale_rewards, trainer.accelerator.gather
            ).to(out["advantages"].device, out["advantages"].dtype)
        completion_mask = out["completion_mask"]
        if "tool_mask" in out:
            completion_mask = completion_mask * out["tool_mask"]
        out["num_items_in_batch"] = trainer.accelerator.gather(completion_mask.sum()).sum()
        metrics = trainer._metrics["train"]
        metrics["dynamic_sampling/filtered_fraction"].append(1.0 - float(flags.float().mean()))
        metrics["dynamic_sampling/refills"].append(float(refills))
        metrics["dynamic_sampling/short_fraction"].append(short / max(wanted, 1))
        return out

    def _refill_inputs(self, trainer, groups: int, group_size: int) -> list[dict]:
        """``groups`` more prompts from the training set (seeded, cycling), each ``group_size`` times."""
        dataset = trainer.train_dataset
        if self._order is None or self._pos + groups > len(self._order):
            seed = refill_seed(
                self.seed, trainer.state.global_step, trainer.accelerator.process_index
            )
            gen = torch.Generator().manual_seed(seed)
            self._order = torch.randperm(len(dataset), generator=gen).tolist()
            self._pos = 0
        picks = self._order[self._pos : self._pos + groups]
        self._pos += groups
        return [dataset[i] for i in picks for _ in range(group_size)]


def _globally_short(accelerator, kept: int, wanted: int) -> bool:
    # every process must make the same number of refill rounds (TRL gathers inside them)
    fewest = accelerator.gather(torch.tensor([kept], device=accelerator.device)).min()
    return int(fewest) < wanted


def refill_seed(seed: int, step: int, process_index: int) -> int:
    """The refill order's seed: distinct per step and per process, so ranks refill with different
    prompts (one shared seed gave every rank the same ones)."""
    return seed * 1_000_003 + step * 1_009 + process_index


def group_advantages(
    rewards: torch.Tensor, group_size: int, scale: str, gather=None
) -> torch.Tensor:
    """Advantages of rows in groups of ``group_size``, as TRL's ``sum_then_normalize``: reward minus
    the group mean, divided by the group's std (``group``), the std of the whole batch across
    processes (``batch``, ``gather`` collects it), or not divided (``none``). NaN rewards
    (unscorable) are left out of the statistics and get advantage 0."""
    from trl.trainer.utils import nanstd

    grouped = rewards.view(-1, group_size)
    advantages = (grouped - torch.nanmean(grouped, dim=1, keepdim=True)).reshape(-1)
    if scale == "group":
        std = nanstd(grouped, dim=1).repeat_interleave(group_size)
    elif scale == "batch":
        everything = gather(rewards) if gather is not None else rewards
        std = nanstd(everything).expand_as(rewards)
    else:
        std = None
    if std is not None:
        advantages = advantages / (std + 1e-4)
    return torch.nan_to_num(advantages, nan=0.0)


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
    keys = list(dict.fromkeys(key for b in batches for key in b))  # a text-only round lacks pixels
    batches = [_with_missing_keys(b, keys, batches) for b in batches]
    out = {}
    for key in keys:
        values = [b[key] for b in batches]
        first = next((v for v in values if v is not None), None)
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


def _with_missing_keys(batch: dict, keys: list[str], batches: list[dict]) -> dict:
    """``batch`` with an empty per-row entry for each key only other rounds have (or hold as None):
    no images for pixel values and grids, zero images, zeros for per-row tensors."""
    rows = batch["prompt_ids"].size(0)
    out = dict(batch)
    for key in keys:
        if out.get(key) is not None:
            continue
        source = next((b for b in batches if b.get(key) is not None), None)
        example = None if source is None else source[key]
        if example is None:
            out[key] = None
        elif isinstance(example, list) and example and isinstance(example[0], torch.Tensor):
            shape = (0, *example[0].shape[1:])  # per-sample pixel rows / image grids: none
            out[key] = [example[0].new_zeros(shape) for _ in range(rows)]
        elif isinstance(example, list):
            out[key] = [0] * rows if key == "num_images" else [None] * rows
        elif isinstance(example, torch.Tensor) and example.ndim == 0:
            out[key] = torch.zeros_like(example)
        elif isinstance(example, torch.Tensor):
            out[key] = example.new_zeros((rows, *_row_shape(example, source, batch)))
    return out


def _row_shape(example: torch.Tensor, source: dict, batch: dict) -> tuple:
    """A per-row shape for ``batch`` like ``example``'s in ``source``: per-token widths follow
    ``batch``'s prompt and completion widths."""
    if example.ndim < 2:
        return tuple(example.shape[1:])
    p, c = source["prompt_ids"].size(1), source["completion_ids"].size(1)
    width = {
        p + c: batch["prompt_ids"].size(1) + batch["completion_ids"].size(1),
        p: batch["prompt_ids"].size(1),
        c: batch["completion_ids"].size(1),
    }
    return (width.get(example.size(1), example.size(1)), *example.shape[2:])


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
