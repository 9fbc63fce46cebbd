"""The RL trainers: TRL's GRPOTrainer with one override of its rollout step, which calls named
steps in a fixed order, and `PPOTrainer`, the same with the critic's advantage step.

    rollout step = length curriculum -> rollout round -> dynamic sampling -> advantages -> logging

- *length curriculum*: the stage of the current global step sets ``max_completion_length``;
- *rollout round*: TRL's generate-and-score (vLLM rollouts, rewards, group advantages), with each
  row's total reward kept as a ``rewards`` column;
- *dynamic sampling* (``dynamic_sampling: true``): `DynamicSampler` swaps all-equal groups for
  informative ones from more rounds;
- *advantages*: GRPO keeps TRL's group advantages; PPO replaces them with GAE on its critic's
  values and trains the critic (`ovr_train.rl.critic.Critic`, which the trainer owns);
- *logging*: behaviour-phrase counts per response.

Checkpoints are `SafeCheckpoints`' (whole or absent); PPO's add ``critic/``.
"""

from __future__ import annotations

import logging

import torch
from trl import GRPOTrainer

from ovr_core.behaviours import BEHAVIOURS, count_behaviours
from ovr_train.checkpoints import SafeCheckpoints
from ovr_train.recipe import length_at
from ovr_train.rl.critic import Critic, explained_variance, gae, terminal_rewards
from ovr_train.rl.dynamic_sampling import DynamicSampler
from ovr_train.rl.prompt_limits import cap_images, count_over_budget
from ovr_train.rl.vision_sync import run_vision_every_step

logger = logging.getLogger("ovr_train.rl")
VISION_TOKENS = (
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)


class OVRRLTrainer(SafeCheckpoints, GRPOTrainer):
    """GRPO-family RL (TRL's losses: GRPO, DAPO, Dr. GRPO) with the steps above, safe checkpoints
    and the colocated-vLLM fixes."""

    def __init__(
        self,
        *args,
        length_stages: list[tuple[int, int]] | None = None,
        sampler: DynamicSampler | None = None,
        **kwargs,
    ):
        from ovr_train.rollouts.client import serving_client

        self.length_stages = list(length_stages or [])
        self.sampler = sampler
        self._round_rewards: torch.Tensor | None = None
        with serving_client():  # server mode: our TRL client (key, gloo, per-engine window)
            super().__init__(*args, **kwargs)
        if self.use_vllm:
            self._fix_vllm_rollouts()
        run_vision_every_step(self.model)  # ZeRO-3: every rank runs the vision tower each forward

    # -- the rollout step: the one override of TRL's, named steps in a fixed order

    def _generate_and_score_completions(self, inputs):
        if not self.model.training:  # evaluation: TRL's own
            return super()._generate_and_score_completions(inputs)
        self.apply_length_curriculum()
        batch = self.rollout_round(inputs)
        if self.sampler is not None:
            batch = self.sampler.refill(self, batch, len(inputs))
        batch = self.compute_advantages(batch)
        self.log_behaviours(batch)
        return batch

    def apply_length_curriculum(self) -> None:
        """The stage of the step about to be trained sets the rollouts' length (resume-safe)."""
        if self.length_stages:
            self.set_max_completion_length(length_at(self.length_stages, self.state.global_step))

    def rollout_round(self, inputs) -> dict:
        """One TRL rollout round, with this process's rows' total rewards as ``rewards`` (NaN where
        no reward function could score a row, as TRL marks them)."""
        inputs = cap_images(inputs, self.processing_class)  # trainer and vLLM: the same image
        out = super()._generate_and_score_completions(inputs)
        count_over_budget(self, out)  # prompts vLLM would give shorter responses, counted
        every = self._round_rewards  # all processes' rows, kept by _calculate_rewards below
        rows = out["advantages"].size(0)
        start = self.accelerator.process_index * rows
        weights = self.reward_weights.to(every.device)
        total = (every * weights.unsqueeze(0)).nansum(dim=1)
        total[torch.isnan(every).all(dim=1)] = torch.nan
        out["rewards"] = total[start : start + rows].to(out["advantages"].device)
        return out

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        # TRL keeps only the advantages it derives from these: keep the rewards for the steps above
        every = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._round_rewards = every
        return every

    def compute_advantages(self, batch: dict) -> dict:
        """GRPO: TRL's group advantages (rescaled as one batch by dynamic sampling when it merged
        rounds) are the advantages; the rewards column is dropped."""
        batch.pop("rewards")
        return batch

    def log_behaviours(self, batch: dict) -> None:
        """Mean behaviour-phrase matches per response (``reflection/<behaviour>``)."""
        texts = self._tokenizer.batch_decode(
            [
                ids[mask.bool()]
                for ids, mask in zip(batch["completion_ids"], batch["completion_mask"], strict=True)
            ],
            skip_special_tokens=True,
        )
        for name, value in reflection_counts(texts).items():
            self._metrics["train"][f"reflection/{name}"].append(value)

    def set_max_completion_length(self, length: int) -> None:
        """Generate (and normalise, for Dr. GRPO) at most ``length`` tokens from now on: one
        curriculum stage; resume lands in the right stage because it follows the global step."""
        if length != self.max_completion_length:
            logger.info(
                "length curriculum: max_completion_length %d from step %d",
                length,
                self.state.global_step + 1,
            )
        self.max_completion_length = length
        if self.use_vllm:
            self.vllm_generation.max_completion_length = length
        else:
            self.generation_config.max_new_tokens = length
        self._metrics["train"]["curriculum/max_completion_length"].append(float(length))

    def _fix_vllm_rollouts(self) -> None:
        from ovr_train.upstream_fixes import fix_colocated_vllm

        image_token_id = getattr(self.processing_class, "image_token_id", None)
        if fix_colocated_vllm(self.vllm_generation, image_token_id):
            logger.info("colocated vLLM: engine-reload weight sync, prompt-token check installed")
        # A policy that samples an image placeholder breaks the scoring forward pass ("Image
        # features and image tokens do not match") and can never be right: never sample them.
        tokenizer = self._tokenizer
        banned = {tokenizer.convert_tokens_to_ids(t) for t in VISION_TOKENS} - {
            None,
            tokenizer.unk_token_id,
        }
        kwargs = dict(self.vllm_generation.generation_kwargs or {})
        kwargs["logit_bias"] = {**kwargs.get("logit_bias", {}), **{int(t): -100.0 for t in banned}}
        self.vllm_generation.generation_kwargs = kwargs


class PPOTrainer(OVRRLTrainer):
    """PPO with GAE and a learned critic (``algorithm: ppo``): the advantage step is the critic's."""

    def __init__(self, *args, critic_args, freeze_vision: bool, **kwargs):
        self.critic_args = critic_args  # ovr_train.configs.CriticArguments
        self.critic = Critic(critic_args, freeze_vision)
        super().__init__(*args, **kwargs)

    def compute_advantages(self, batch: dict) -> dict:
        """Per-token ``A_t`` by GAE on the critic's ``V(s_t)``, then one critic update on the returns."""
        args = self.critic_args
        self.critic.build(self)
        run_vision_every_step(self.critic.module)  # as the policy's (ovr_train.rl.vision_sync)
        rewards = torch.nan_to_num(batch.pop("rewards"), nan=0.0)  # unscorable: reward 0
        mask = batch["completion_mask"] * batch.get("tool_mask", 1)
        old_values = self.critic.values(batch)
        advantages, returns = gae(
            terminal_rewards(rewards, mask), old_values, mask, args.gamma, args.lam
        )
        self._log_values(old_values, returns, advantages, mask)
        if args.whiten_advantages:
            advantages = self._whiten_globally(advantages, mask)
        stats = self.critic.train_on(batch, old_values, returns, mask)
        metrics = self._metrics["train"]
        for key, value in stats.items():
            is_rate = key == "ppo/critic_lr"
            metrics[key].append(value if is_rate else self._mean_over_processes(value))
        batch["advantages"] = advantages.detach()
        return batch

    def _mean_over_processes(self, value: float) -> float:
        t = torch.tensor([value], device=self.accelerator.device, dtype=torch.float32)
        return float(self.accelerator.reduce(t, reduction="mean"))

    def _whiten_globally(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``x`` normalised to mean 0, std 1 over every process's unmasked entries."""
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
        if self.critic.built:
            self.critic.save(output_dir)

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None:
            self.critic.build(self)
            self.critic.load(checkpoint)


def trainer_class(algorithm: str) -> type[OVRRLTrainer]:
    """The trainer for ``algorithm`` (``grpo`` or ``ppo``)."""
    classes = {"grpo": OVRRLTrainer, "ppo": PPOTrainer}
    if algorithm not in classes:
        raise SystemExit(f"ovr-train rl: algorithm={algorithm!r}; use grpo or ppo")
    return classes[algorithm]


def reflection_counts(texts: list[str]) -> dict[str, float]:
    """Mean matches per completion of each cognitive behaviour's phrases ("wait", "let me
    re-check", "look at the image again", …): a cheap live proxy for what ``ovr-eval behaviours``
    measures, from the same rules (``ovr_core.behaviours``)."""
    totals = dict.fromkeys(BEHAVIOURS, 0)
    for text in texts:
        for name, n in count_behaviours(text).items():
            totals[name] += n
    return {name: total / max(len(texts), 1) for name, total in totals.items()}
