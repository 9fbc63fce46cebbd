"""PPO's critic (the paper's RL algorithm, after Open-Reasoner-Zero): GAE, the clipped value loss and
the value model, as pure functions and one `Critic` object that `ovr_train.rl.trainer.PPOTrainer`
owns. The trainer is GRPO's with one step changed: same vLLM rollouts, rewards, dynamic sampling,
logging and checkpoints.

    ovr-train rl --config recipes/tiny-rl-ppo.yaml                      # 2-core CPU
    accelerate launch ... -m ovr_train.rl --config recipes/ovr-7b-rl-ppo.yaml

`algorithm: ppo` in an RL recipe makes ``ovr_train.rl`` build a `PPOTrainer`, whose advantage
step replaces GRPO's group baseline: after the rollout batch is complete (each row's scalar reward
kept beside it, dynamic sampling included), the critic scores every prefix ``V(s_t)`` of each
response, GAE turns the terminal reward into per-token advantages ``A_t`` (with gamma = lambda = 1:
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

import torch
from torch import nn

logger = logging.getLogger("ovr_train.critic")
CRITIC_DIR = "critic"  # inside checkpoint-N/
CRITIC_WEIGHTS = "critic.safetensors"
CRITIC_STATE = "critic_optimizer.pt"


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


# ---- the critic the PPO trainer owns ------------------------------------------------------------


class Critic:
    """The value model with its own AdamW and warm-up, under the trainer's accelerate setup (a
    second DeepSpeed engine with the policy's ZeRO config under DeepSpeed). Built from the policy
    checkpoint on first use (`build`), so resume can restore it before the first rollout."""

    def __init__(self, args, freeze_vision: bool):
        self.args = args  # ovr_train.configs.CriticArguments
        self.freeze_vision = freeze_vision
        self.module: nn.Module | None = None
        self.optimizer = self.scheduler = None
        self._trainer = None

    @property
    def built(self) -> bool:
        return self.module is not None

    def build(self, trainer) -> None:
        """The backbone of the policy ``trainer`` trains, a zero value head, optimizer and schedule."""
        if self.built:
            return
        self._trainer = trainer
        policy = trainer.accelerator.unwrap_model(trainer.model)
        dtype = next(policy.parameters()).dtype
        source = policy.config._name_or_path
        critic = ValueModel.from_policy(
            source, dtype, getattr(policy.config, "_attn_implementation", None)
        )
        if self.freeze_vision:
            from ovr_train.models import freeze_vision

            freeze_vision(critic.backbone)
        if trainer.args.gradient_checkpointing:
            critic.backbone.gradient_checkpointing_enable(
                trainer.args.gradient_checkpointing_kwargs
            )
        logger.info(
            "critic: backbone of %s + value head, lr %g", source, self.args.critic_learning_rate
        )
        self._prepare(critic)

    def _prepare(self, critic: nn.Module) -> None:
        from transformers import get_constant_schedule_with_warmup

        trainer, targs = self._trainer, self._trainer.args
        params = [p for p in critic.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            params,
            lr=self.args.critic_learning_rate,
            betas=(targs.adam_beta1, targs.adam_beta2),
            eps=targs.adam_epsilon,
            weight_decay=targs.weight_decay,
        )
        scheduler = get_constant_schedule_with_warmup(optimizer, self.args.critic_warmup_steps)
        if trainer.is_deepspeed_enabled:
            # Untested here (no GPU in the test suite): a second engine with the policy's ZeRO config.
            import deepspeed

            # One critic step = one pass over the rollout batch: DeepSpeed steps the optimizer
            # every `gradient_accumulation_steps` micro-batches, so that is the pass's length.
            config = dict(trainer.accelerator.state.deepspeed_plugin.deepspeed_config)
            config.pop("optimizer", None)
            config.pop("scheduler", None)
            rows = targs.per_device_train_batch_size * targs.steps_per_generation
            micro = self._micro_size()
            config["train_micro_batch_size_per_gpu"] = micro
            config["gradient_accumulation_steps"] = -(-rows // micro)
            config["train_batch_size"] = (
                micro * config["gradient_accumulation_steps"] * targs.world_size
            )
            config["gradient_clipping"] = targs.max_grad_norm
            engine, optimizer, _, scheduler = deepspeed.initialize(
                model=critic, optimizer=optimizer, lr_scheduler=scheduler, config=config
            )
            self.module = engine
        else:
            self.module = trainer.accelerator.prepare_model(critic)
        self.optimizer, self.scheduler = optimizer, scheduler
        self.module.eval()

    def _micro_size(self) -> int:
        return self.args.critic_micro_batch_size or self._trainer.args.per_device_train_batch_size

    def _micro_batches(self, n: int) -> list[slice]:
        size = self._micro_size()
        return [slice(s, min(s + size, n)) for s in range(0, n, size)]

    @torch.no_grad()
    def values(self, batch: dict) -> torch.Tensor:
        """``V(s_t)`` (B, T) of every completion token of the rollout batch (0 on padding)."""
        n = batch["completion_ids"].size(0)
        with self._trainer.accelerator.autocast():
            parts = [completion_values(self.module, batch, rows) for rows in self._micro_batches(n)]
        return torch.cat(parts) * batch["completion_mask"]

    def train_on(self, batch, old_values, returns, mask) -> dict[str, float]:
        """``steps_per_batch`` optimizer steps, each over the whole rollout batch; returns the
        statistics to log (value loss of the first and last step, clip fraction, learning rate)."""
        accelerator = self._trainer.accelerator
        self.module.train()
        n = batch["completion_ids"].size(0)
        total = accelerator.reduce(mask.sum().float(), reduction="sum").clamp(min=1)
        world = accelerator.num_processes
        losses, clipped = [], []
        for _ in range(self.args.critic_steps_per_batch):
            step_loss = step_clip = 0.0
            for rows in self._micro_batches(n):
                with accelerator.autocast():
                    values = completion_values(self.module, batch, rows)
                loss, fraction = value_loss(
                    values, old_values[rows], returns[rows], mask[rows], self.args.value_clip
                )
                # token-weighted over the whole batch on every process (DDP averages over processes)
                weight = mask[rows].sum() / total * world
                self._backward(loss * weight)
                step_loss += float(loss.detach() * weight / world)
                step_clip += float(fraction * weight / world)
            self._step()
            losses.append(step_loss)
            clipped.append(step_clip)
        self.module.eval()
        return {
            "ppo/value_loss": losses[0],
            "ppo/value_loss_last": losses[-1],
            "ppo/value_clip_fraction": sum(clipped) / len(clipped),  # 0 on the first step
            "ppo/critic_lr": self.scheduler.get_last_lr()[0],
        }

    def _backward(self, loss: torch.Tensor) -> None:
        if self._trainer.is_deepspeed_enabled:
            # the engine divides by its accumulation steps; our weights already sum to one pass
            self.module.backward(loss * self.module.gradient_accumulation_steps())
            self.module.step()  # steps the optimizer only at the end of the pass
        else:
            loss.backward()

    def _step(self) -> None:
        if self._trainer.is_deepspeed_enabled:
            return  # stepped in _backward
        if self._trainer.args.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(
                self.module.parameters(), self._trainer.args.max_grad_norm
            )
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    # -- checkpoints: checkpoint-N/critic/

    def save(self, checkpoint_dir: str) -> None:
        """Weights, optimizer and schedule into ``checkpoint_dir/critic/``."""
        directory = os.path.join(checkpoint_dir, CRITIC_DIR)
        if self._trainer.is_deepspeed_enabled:
            self.module.save_checkpoint(directory)
            return
        if not self._trainer.args.should_save:
            return
        from safetensors.torch import save_file

        os.makedirs(directory, exist_ok=True)
        state = self._trainer.accelerator.unwrap_model(self.module).state_dict()
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in state.items()},
            os.path.join(directory, CRITIC_WEIGHTS),
        )
        torch.save(
            {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()},
            os.path.join(directory, CRITIC_STATE),
        )

    def load(self, checkpoint_dir: str) -> None:
        """Restore what `save` wrote; a checkpoint without ``critic/`` is refused with the fix."""
        directory = os.path.join(checkpoint_dir, CRITIC_DIR)
        if not os.path.isdir(directory):
            raise SystemExit(
                f"ovr-train rl: {checkpoint_dir} has no {CRITIC_DIR}/ (a GRPO checkpoint?); "
                "resume a PPO run from a PPO checkpoint, or start afresh in a new output_dir"
            )
        if self._trainer.is_deepspeed_enabled:
            self.module.load_checkpoint(directory)
            return
        from safetensors.torch import load_file

        module = self._trainer.accelerator.unwrap_model(self.module)
        module.load_state_dict(load_file(os.path.join(directory, CRITIC_WEIGHTS)), strict=True)
        state = torch.load(os.path.join(directory, CRITIC_STATE), map_location="cpu")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        logger.info("critic restored from %s", directory)

    def state_dict(self) -> dict:
        """The value model's weights (unwrapped)."""
        return self._trainer.accelerator.unwrap_model(self.module).state_dict()
