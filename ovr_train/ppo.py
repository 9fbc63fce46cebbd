"""PPO with GAE and a learned critic (the paper's RL algorithm, after Open-Reasoner-Zero), on the
GRPO trainer's machinery: same vLLM rollouts, rewards, dynamic sampling, logging and checkpoints.

    ovr-train rl --config recipes/tiny-rl-ppo.yaml                      # 2-core CPU
    accelerate launch ... -m ovr_train.rl --config recipes/ovr-7b-rl-ppo.yaml

`algorithm: ppo` in an RL recipe makes ``ovr_train.rl`` build `ppo_trainer_class(OVRRLTrainer)`,
which hooks TRL's GRPOTrainer at two points:

- inside every rollout round (under dynamic sampling), the scalar reward of each rollout is kept as
  a ``ppo_rewards`` column (TRL keeps only its group advantage);
- after the rollout batch is complete, the critic scores every prefix ``V(s_t)`` of each response,
  GAE turns the terminal reward into per-token advantages ``A_t`` (with gamma = lambda = 1:
  ``A_t = R - V(s_t)``, the critic at every prefix, not one baseline per prompt), the critic is
  trained on the returns (clipped value loss, its own optimizer, learning rate and warm-up, its own
  number of steps), and ``advantages`` becomes the (B, T) tensor that TRL's loss already accepts.

The critic is the policy checkpoint's backbone with a scalar value head (`ValueModel`). It is saved
in ``checkpoint-N/critic/`` (not a model directory: only the policy is served) and restored on
``--resume``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import torch
from torch import nn

logger = logging.getLogger("ovr_train.ppo")
CRITIC_DIR = "critic"  # inside checkpoint-N/
CRITIC_WEIGHTS = "critic.safetensors"
CRITIC_STATE = "critic_optimizer.pt"
REWARDS_KEY = "ppo_rewards"  # our own column: the rollout batch may carry others' "rewards"


@dataclass
class PPOArguments:
    """The RL algorithm and, for PPO, the critic and GAE settings (ignored under GRPO)."""

    algorithm: str = field(
        default="grpo",
        metadata={
            "help": "'grpo': group-mean baseline (TRL's GRPO family); 'ppo': a learned critic and "
            "GAE per-token advantages (the OVR paper, after Open-Reasoner-Zero)",
            "choices": ["grpo", "ppo"],
        },
    )
    gamma: float = field(default=1.0, metadata={"help": "PPO: GAE discount (paper: 1)"})
    lam: float = field(default=1.0, metadata={"help": "PPO: GAE lambda (paper: 1)"})
    whiten_advantages: bool = field(
        default=False,
        metadata={
            "help": "PPO: normalise the per-token advantages to mean 0, std 1 over the batch"
        },
    )
    critic_learning_rate: float = field(
        default=5e-6, metadata={"help": "PPO: critic learning rate (paper: 5e-6)"}
    )
    critic_warmup_steps: int = field(
        default=0, metadata={"help": "PPO: critic optimizer steps of linear learning-rate warm-up"}
    )
    critic_steps_per_batch: int = field(
        default=1,
        metadata={
            "help": "PPO: critic optimizer steps per rollout batch (each over the whole batch)"
        },
    )
    critic_micro_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "PPO: rollouts per critic forward/backward; default per_device_train_batch_size"
        },
    )
    value_clip: float | None = field(
        default=0.2,
        metadata={
            "help": "PPO: clip each value to within this of its rollout-time value; null: off"
        },
    )


# ---- pure functions --------------------------------------------------------------------------


def terminal_rewards(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token rewards (B, T): each sequence's scalar reward on its last unmasked token, 0 elsewhere."""
    mask = mask.to(torch.long)
    last = (mask * torch.arange(mask.size(1), device=mask.device)).argmax(dim=1)
    out = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
    has_tokens = mask.sum(dim=1) > 0
    out[has_tokens, last[has_tokens]] = rewards[has_tokens].to(torch.float32)
    return out


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over right-padded sequences; returns (advantages, returns).

    ``rewards``, ``values`` and ``mask`` are (B, T): the reward after token t, ``V(s_t)`` (the value
    of the prefix before token t) and 1 on real tokens. The episode ends after the last real token
    (its next value is 0); masked positions get advantage 0 and return 0.
    """
    mask = mask.to(values.dtype)
    values = values * mask
    advantages = torch.zeros_like(values)
    running = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.size(1))):
        next_value = values[:, t + 1] if t + 1 < values.size(1) else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running) * mask[:, t]
        advantages[:, t] = running
    return advantages, (advantages + values) * mask


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``x`` normalised to mean 0, std 1 over its unmasked entries (masked entries become 0)."""
    mask = mask.to(x.dtype)
    n = mask.sum().clamp(min=1)
    mean = (x * mask).sum() / n
    var = (((x - mean) * mask) ** 2).sum() / n
    return (x - mean) * torch.rsqrt(var + eps) * mask


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip: float | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped value loss ``0.5 * max((V - R)^2, (clip(V, V_old ± c) - R)^2)``, token mean;
    returns (loss, fraction of tokens where the clipped term was the larger)."""
    mask = mask.to(values.dtype)
    n = mask.sum().clamp(min=1)
    unclipped = (values - returns) ** 2
    if clip is None:
        return 0.5 * (unclipped * mask).sum() / n, torch.zeros((), device=values.device)
    clipped_values = old_values + (values - old_values).clamp(-clip, clip)
    clipped = (clipped_values - returns) ** 2
    loss = 0.5 * (torch.maximum(unclipped, clipped) * mask).sum() / n
    fraction = ((clipped > unclipped).to(values.dtype) * mask).sum() / n
    return loss, fraction


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """``1 - Var(R - V) / Var(R)`` over unmasked tokens: 1 is a perfect critic, 0 a constant one."""
    m = mask.bool()
    r, v = returns[m].double(), values[m].double()
    var_r = r.var(unbiased=False)
    if r.numel() < 2 or var_r == 0:
        return float("nan")
    return float(1 - (r - v).var(unbiased=False) / var_r)


# ---- the critic --------------------------------------------------------------------------------


class ValueModel(nn.Module):
    """The policy's backbone (vision tower and language model, no LM head) and a scalar value head
    on the last hidden state: a bias-free Linear that starts at zero.

    Why zero: with PyTorch's default uniform init the first values are ±0.6 noise (explained
    variance -1.3 to -2.5 on the tiny task), and the first steps' large errors flow back into the
    backbone while the head is still undoing its init; on held-out rollouts the critic then ended
    anywhere between 0.07 and 0.63 (of 0.68 possible) depending on seed and CPU. Started at zero
    (V = 0, explained variance 0), the head first fits the policy's features and the backbone's
    gradient grows with it: 0.64-0.69 on every seed and kernel family tried (tests/test_ppo.py).
    OpenRLHF's critic starts near zero for the same reason (normal, std 1/(hidden+1))."""

    def __init__(self, backbone: nn.Module, hidden_size: int):
        super().__init__()
        self.backbone = backbone
        self.value_head = nn.Linear(hidden_size, 1, bias=False)
        nn.init.zeros_(self.value_head.weight)

    @classmethod
    def from_policy(
        cls, path: str, dtype: torch.dtype, attn_implementation: str | None = None
    ) -> ValueModel:
        """A critic initialised from the policy checkpoint at ``path``."""
        from transformers import AutoModelForImageTextToText

        kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
        policy = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype, **kwargs)
        config = policy.config.get_text_config()
        critic = cls(policy.model, config.hidden_size)
        critic.value_head.to(dtype)
        return critic

    def forward(self, **model_inputs) -> torch.Tensor:
        """Values (B, L): ``V`` of the prefix ending at each position."""
        hidden = self.backbone(**model_inputs, use_cache=False).last_hidden_state
        return self.value_head(hidden).squeeze(-1).float()


def completion_values(critic: nn.Module, batch: dict, rows: slice) -> torch.Tensor:
    """``V(s_t)`` (rows, T) for the completion tokens of ``batch[rows]``: the value at the prefix
    that ends just before token t (the same alignment as the policy's logits)."""
    inputs = model_inputs(batch, rows)
    prompt_width = batch["prompt_ids"].size(1)
    width = batch["completion_ids"].size(1)
    values = critic(**inputs)
    return values[:, prompt_width - 1 : prompt_width - 1 + width]


def model_inputs(batch: dict, rows: slice) -> dict:
    """The forward inputs of rows ``rows`` of a TRL rollout batch (images included)."""
    input_ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)[rows]
    attention_mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)[rows]
    out = {"input_ids": input_ids, "attention_mask": attention_mask}
    if batch.get("mm_token_type_ids") is not None:
        out["mm_token_type_ids"] = batch["mm_token_type_ids"][rows]
    if batch.get("pixel_values") is not None and batch.get("image_grid_thw") is not None:
        grids, counts = batch["image_grid_thw"], batch["num_images"]
        image_rows = torch.cumsum(torch.tensor([0, *counts]), 0)
        first_image, end_image = int(image_rows[rows.start]), int(image_rows[rows.stop])
        pixel_rows = torch.cumsum(torch.cat([grids.new_zeros(1), grids.prod(-1)]), 0)
        out["pixel_values"] = batch["pixel_values"][
            int(pixel_rows[first_image]) : int(pixel_rows[end_image])
        ]
        out["image_grid_thw"] = grids[first_image:end_image]
    return out


# ---- the trainer -------------------------------------------------------------------------------


def select_trainer(base: type, script_args: PPOArguments) -> tuple[type, dict]:
    """The trainer class for ``script_args.algorithm`` and the extra keyword arguments it takes."""
    if script_args.algorithm == "grpo":
        return base, {}
    if script_args.algorithm == "ppo":
        return ppo_trainer_class(base), {"ppo_args": script_args}
    raise SystemExit(f"ovr-train rl: algorithm={script_args.algorithm!r}; use grpo or ppo")


def ppo_trainer_class(base: type) -> type:
    """``base`` (a GRPOTrainer subclass, e.g. OVRRLTrainer) turned into a PPO trainer."""
    grpo = next(c for c in base.__mro__ if c.__name__ == "GRPOTrainer")

    class ScoredRollouts(grpo):
        """Innermost layer (inside dynamic sampling): each rollout round's scalar rewards as a
        ``ppo_rewards`` column of TRL's batch, so selecting rows keeps them aligned."""

        def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
            per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
            self._last_rewards_per_func = per_func
            return per_func

        def _generate_and_score_completions(self, inputs):
            out = super()._generate_and_score_completions(inputs)
            per_func = self._last_rewards_per_func
            weights = self.reward_weights.to(per_func.device).unsqueeze(0)
            rewards = torch.nan_to_num((per_func * weights).nansum(dim=1), nan=0.0)
            n = out["completion_ids"].size(0)
            start = self.accelerator.process_index * n
            out[REWARDS_KEY] = rewards[start : start + n].to(out["completion_ids"].device)
            return out

    return type(f"PPO{base.__name__}", (CriticTraining, base, ScoredRollouts), {})


class CriticTraining:
    """Trainer mixin (outermost): GAE advantages from the critic, critic updates, critic checkpoints."""

    critic: nn.Module | None = None

    def __init__(self, *args, ppo_args: PPOArguments, **kwargs):
        self.ppo_args = ppo_args
        super().__init__(*args, **kwargs)

    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)
        if not self.model.training:
            return out
        self._ensure_critic()
        args = self.ppo_args
        mask = out["completion_mask"] * out.get("tool_mask", 1)
        rewards = out.pop(REWARDS_KEY)
        old_values = self._critic_values(out)
        advantages, returns = gae(
            terminal_rewards(rewards, mask), old_values, mask, args.gamma, args.lam
        )
        self._log_values(old_values, returns, advantages, mask)
        if args.whiten_advantages:
            advantages = self._whiten_globally(advantages, mask)
        self._train_critic(out, old_values, returns, mask)
        out["advantages"] = advantages.detach()
        return out

    # -- critic set-up

    def _ensure_critic(self) -> None:
        if self.critic is not None:
            return
        policy = self.accelerator.unwrap_model(self.model)
        dtype = next(policy.parameters()).dtype
        source = policy.config._name_or_path
        critic = ValueModel.from_policy(
            source, dtype, getattr(policy.config, "_attn_implementation", None)
        )
        if getattr(self.ppo_args, "freeze_vision", False):
            from ovr_train.training_common import freeze_vision

            freeze_vision(critic.backbone)
        if self.args.gradient_checkpointing:
            critic.backbone.gradient_checkpointing_enable(self.args.gradient_checkpointing_kwargs)
        logger.info(
            "critic: backbone of %s + value head, lr %g", source, self.ppo_args.critic_learning_rate
        )
        self._prepare_critic(critic)

    def _prepare_critic(self, critic: nn.Module) -> None:
        """The critic under the trainer's accelerate setup: its own AdamW (the policy's betas, eps and
        weight decay) and linear warm-up; a DeepSpeed engine with the policy's config under DeepSpeed."""
        from transformers import get_constant_schedule_with_warmup

        args = self.args
        params = [p for p in critic.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            params,
            lr=self.ppo_args.critic_learning_rate,
            betas=(args.adam_beta1, args.adam_beta2),
            eps=args.adam_epsilon,
            weight_decay=args.weight_decay,
        )
        scheduler = get_constant_schedule_with_warmup(optimizer, self.ppo_args.critic_warmup_steps)
        if self.is_deepspeed_enabled:
            # Untested here (no GPU in the test suite): a second engine with the policy's ZeRO config.
            import deepspeed

            # One critic step = one pass over the rollout batch: DeepSpeed steps the optimizer
            # every `gradient_accumulation_steps` micro-batches, so that is the pass's length.
            config = dict(self.accelerator.state.deepspeed_plugin.deepspeed_config)
            config.pop("optimizer", None)
            config.pop("scheduler", None)
            rows = args.per_device_train_batch_size * args.steps_per_generation
            micro = self.ppo_args.critic_micro_batch_size or args.per_device_train_batch_size
            config["train_micro_batch_size_per_gpu"] = micro
            config["gradient_accumulation_steps"] = -(-rows // micro)
            config["train_batch_size"] = (
                micro * config["gradient_accumulation_steps"] * args.world_size
            )
            config["gradient_clipping"] = args.max_grad_norm
            engine, optimizer, _, scheduler = deepspeed.initialize(
                model=critic, optimizer=optimizer, lr_scheduler=scheduler, config=config
            )
            self.critic = engine
        else:
            self.critic = self.accelerator.prepare_model(critic)
        self.critic_optimizer, self.critic_scheduler = optimizer, scheduler
        self.critic.eval()

    # -- critic passes

    def _micro_batches(self, n: int) -> list[slice]:
        size = self.ppo_args.critic_micro_batch_size or self.args.per_device_train_batch_size
        return [slice(s, min(s + size, n)) for s in range(0, n, size)]

    @torch.no_grad()
    def _critic_values(self, batch: dict) -> torch.Tensor:
        n = batch["completion_ids"].size(0)
        with self.accelerator.autocast():
            parts = [completion_values(self.critic, batch, rows) for rows in self._micro_batches(n)]
        return torch.cat(parts) * batch["completion_mask"]

    def _train_critic(self, batch, old_values, returns, mask) -> None:
        """``critic_steps_per_batch`` optimizer steps, each over the whole rollout batch."""
        self.critic.train()
        n = batch["completion_ids"].size(0)
        total = self.accelerator.reduce(mask.sum().float(), reduction="sum").clamp(min=1)
        world = self.accelerator.num_processes
        losses, clipped = [], []
        for _ in range(self.ppo_args.critic_steps_per_batch):
            step_loss = step_clip = 0.0
            for rows in self._micro_batches(n):
                with self.accelerator.autocast():
                    values = completion_values(self.critic, batch, rows)
                loss, fraction = value_loss(
                    values, old_values[rows], returns[rows], mask[rows], self.ppo_args.value_clip
                )
                # token-weighted over the whole batch on every process (DDP averages over processes)
                weight = mask[rows].sum() / total * world
                self._critic_backward(loss * weight)
                step_loss += float(loss.detach() * weight / world)
                step_clip += float(fraction * weight / world)
            self._critic_step()
            losses.append(step_loss)
            clipped.append(step_clip)
        self.critic.eval()
        metrics = self._metrics["train"]
        metrics["ppo/value_loss"].append(self._mean_over_processes(losses[0]))
        metrics["ppo/value_loss_last"].append(self._mean_over_processes(losses[-1]))
        metrics["ppo/value_clip_fraction"].append(  # 0 on the first step: values = old values
            self._mean_over_processes(sum(clipped) / len(clipped))
        )
        metrics["ppo/critic_lr"].append(self.critic_scheduler.get_last_lr()[0])

    def _critic_backward(self, loss: torch.Tensor) -> None:
        if self.is_deepspeed_enabled:
            # the engine divides by its accumulation steps; our weights already sum to one pass
            self.critic.backward(loss * self.critic.gradient_accumulation_steps())
            self.critic.step()  # steps the optimizer only at the end of the pass
        else:
            loss.backward()

    def _critic_step(self) -> None:
        if self.is_deepspeed_enabled:
            return  # stepped in _critic_backward
        if self.args.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.critic.parameters(), self.args.max_grad_norm)
        self.critic_optimizer.step()
        self.critic_scheduler.step()
        self.critic_optimizer.zero_grad(set_to_none=True)

    # -- statistics

    def _mean_over_processes(self, value: float) -> float:
        t = torch.tensor([value], device=self.accelerator.device, dtype=torch.float32)
        return float(self.accelerator.reduce(t, reduction="mean"))

    def _whiten_globally(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.to(x.dtype)
        stats = torch.stack([(x * m).sum(), (x * x * m).sum(), m.sum()])
        s, s2, n = self.accelerator.reduce(stats, reduction="sum")
        mean = s / n.clamp(min=1)
        var = (s2 / n.clamp(min=1) - mean**2).clamp(min=0)
        return (x - mean) * torch.rsqrt(var + 1e-8) * m

    def _log_values(self, values, returns, advantages, mask) -> None:
        m = mask.bool()
        gathered = self.accelerator.gather(
            torch.stack([values[m].sum(), advantages[m].sum(), (advantages[m] ** 2).sum(), m.sum()])
            .float()
            .reshape(1, 4)
        ).sum(0)
        v_sum, a_sum, a2_sum, n = gathered.tolist()
        n = max(n, 1.0)
        a_mean = a_sum / n
        metrics = self._metrics["train"]
        metrics["ppo/value_mean"].append(v_sum / n)
        metrics["ppo/advantage_mean"].append(a_mean)
        metrics["ppo/advantage_std"].append(max(a2_sum / n - a_mean**2, 0.0) ** 0.5)
        metrics["ppo/explained_variance"].append(
            self._mean_over_processes(explained_variance(values, returns, mask))
        )

    # -- checkpoints: checkpoint-N/critic/, written inside SafeCheckpoints' staging directory

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        super()._save_optimizer_and_scheduler(output_dir)
        if self.critic is None:
            return
        directory = os.path.join(output_dir, CRITIC_DIR)
        if self.is_deepspeed_enabled:
            self.critic.save_checkpoint(directory)
            return
        if not self.args.should_save:
            return
        from safetensors.torch import save_file

        os.makedirs(directory, exist_ok=True)
        state = self.accelerator.unwrap_model(self.critic).state_dict()
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in state.items()},
            os.path.join(directory, CRITIC_WEIGHTS),
        )
        torch.save(
            {
                "optimizer": self.critic_optimizer.state_dict(),
                "scheduler": self.critic_scheduler.state_dict(),
            },
            os.path.join(directory, CRITIC_STATE),
        )

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        directory = os.path.join(checkpoint, CRITIC_DIR)
        if not os.path.isdir(directory):
            raise SystemExit(
                f"ovr-train rl: {checkpoint} has no {CRITIC_DIR}/ (a GRPO checkpoint?); "
                "resume a PPO run from a PPO checkpoint, or start afresh in a new output_dir"
            )
        self._ensure_critic()
        if self.is_deepspeed_enabled:
            self.critic.load_checkpoint(directory)
            return
        from safetensors.torch import load_file

        critic = self.accelerator.unwrap_model(self.critic)
        critic.load_state_dict(load_file(os.path.join(directory, CRITIC_WEIGHTS)), strict=True)
        state = torch.load(os.path.join(directory, CRITIC_STATE), map_location="cpu")
        self.critic_optimizer.load_state_dict(state["optimizer"])
        self.critic_scheduler.load_state_dict(state["scheduler"])
        logger.info("critic restored from %s", directory)
