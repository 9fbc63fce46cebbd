"""Multimodal RL with verifiable rewards: TRL's GRPO-family trainer or PPO with a critic, rollouts
from vLLM (colocated, or servers).

    ovr-train rl --config recipes/tiny-rl.yaml                          # 2-core CPU, ~1 minute
    ovr-train rl --config recipes/tiny-rl.yaml max_steps=60 --resume
    ovr-train plan --config recipes/ovr-7b-rl.yaml                      # fits? (checked again at start)
    accelerate launch --num_processes 8 --use_deepspeed \\
        --deepspeed_config_file recipes/deepspeed/zero3.json -m ovr_train.rl \\
        --config recipes/ovr-7b-rl.yaml vllm_server_base_url=http://ROLLOUT_NODE:8000

Settings come from the YAML file, then ``key=value`` overrides; the names are those of
`RLScriptArguments` and (PPO only) `CriticArguments` in ``ovr_train.configs``, TRL's `GRPOConfig`
and `ModelConfig`. Data rows are image(s) + question + gold answer (``ovr_train.rl.data``); rewards
are registry functions (``ovr_train.rl.rewards``) picked and weighted by the recipe; the trainer's
rollout step is ``ovr_train.rl.trainer``'s. The output directory is servable as is:
``ovr-serve --model OUTPUT_DIR``.
"""

from __future__ import annotations

import dataclasses
import logging
import sys

from trl import GRPOConfig, ModelConfig

from ovr_train.checkpoints import END_TOKENS, train_and_save
from ovr_train.configs import CriticArguments, RLScriptArguments
from ovr_train.curves import RLCurves
from ovr_train.models import load_policy
from ovr_train.recipe import (
    apply_schedule,
    parse_recipe_args,
    render_config,
    resolve_config,
    resolve_model,
)
from ovr_train.rl.data import build_rl_dataset, materialise_sources
from ovr_train.rl.dynamic_sampling import DynamicSampler
from ovr_train.rl.rewards import reward_functions
from ovr_train.rl.trainer import trainer_class

logger = logging.getLogger("ovr_train.rl")


def main(
    script_args: RLScriptArguments,
    training_args: GRPOConfig,
    model_args: ModelConfig,
    critic_args: CriticArguments | None = None,
    callbacks: list | None = None,
) -> str:
    """Train with RL, then write a servable checkpoint to ``training_args.output_dir``; returns it.

    ``critic_args`` is PPO's (``algorithm: ppo``) and None under GRPO."""
    import os

    import torch
    from transformers import AutoProcessor
    from transformers.trainer_utils import set_seed

    from ovr_train.plan import check_before_training
    from ovr_train.rollouts.client import check_rollout_servers

    # logging: the whole resolved configuration, printed and saved beside every checkpoint
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    set_seed(training_args.seed)
    if (script_args.algorithm == "ppo") != (critic_args is not None):
        raise SystemExit("ovr-train rl: critic settings are for algorithm: ppo only")
    stages = apply_schedule(script_args, training_args)
    configs = [c for c in (script_args, critic_args, training_args, model_args) if c is not None]
    check_before_training("rl", *configs)
    check_rollout_servers(training_args)  # server mode: reachable, one model, long enough
    model_args.model_name_or_path = resolve_model(model_args.model_name_or_path)
    resolved = resolve_config(*configs)
    if training_args.process_index == 0:
        logger.info("resolved config:\n%s", render_config(resolved))
    if not torch.cuda.is_available():
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(script_args.vllm_cpu_kvcache_gib))

    # data: image(s) + question as a chat prompt; gold answer and grading columns for the rewards
    train_dataset = build_rl_dataset(
        materialise_sources(script_args, training_args.output_dir),
        script_args.on_bad_rows,
        script_args.max_rows,
    )
    logger.info("data: %d prompts", len(train_dataset))

    # model: Qwen2.5-VL, vision tower + projector frozen by default
    model = load_policy(model_args, script_args.freeze_vision, logger)
    cap = {"max_pixels": script_args.max_pixels} if script_args.max_pixels else {}
    processor = AutoProcessor.from_pretrained(
        model_args.model_name_or_path, padding_side="left", **cap
    )

    # rewards: registry functions, truncated completions scored as the recipe says
    tokenizer = processor.tokenizer
    end_ids = {tokenizer.convert_tokens_to_ids(t) for t in END_TOKENS}
    reward_funcs = reward_functions(script_args.rewards, script_args.truncated_reward, end_ids)

    # trainer: GRPO, or PPO with its critic; dynamic sampling and the length curriculum as steps
    sampler = None
    if script_args.dynamic_sampling:
        sampler = DynamicSampler(script_args.max_refills, seed=training_args.seed)
    algorithm = {}
    if critic_args is not None:
        algorithm = {"critic_args": critic_args, "freeze_vision": script_args.freeze_vision}
    trainer = trainer_class(script_args.algorithm)(
        model=model,
        reward_funcs=reward_funcs,
        args=training_args,
        train_dataset=train_dataset,
        processing_class=processor,
        callbacks=[RLCurves(), *(callbacks or [])],
        resolved_config=resolved,
        sampler=sampler,
        length_stages=stages,
        **algorithm,
    )

    # train (resuming across curriculum stages when asked), then save a servable checkpoint
    return train_and_save(trainer, processor, script_args.resume, resolved, logger)


def parse_args(
    argv: list[str],
) -> tuple[RLScriptArguments, GRPOConfig, ModelConfig, CriticArguments | None]:
    """``--config YAML`` plus ``key=value`` / ``--key value`` overrides, through TRL's parser; the
    critic's settings come back only for ``algorithm: ppo`` (a GRPO recipe that sets one is refused)."""
    script_args, critic_args, training_args, model_args = parse_recipe_args(
        (RLScriptArguments, CriticArguments, GRPOConfig, ModelConfig), argv, "ovr-train rl"
    )
    if script_args.algorithm == "ppo":
        return script_args, training_args, model_args, critic_args
    default = CriticArguments()
    set_ = [
        f.name
        for f in dataclasses.fields(CriticArguments)
        if getattr(critic_args, f.name) != getattr(default, f.name)
    ]
    if set_:
        raise SystemExit(
            f"ovr-train rl: {', '.join(set_)} {'is a' if len(set_) == 1 else 'are'} PPO "
            f"setting{'s' if len(set_) > 1 else ''}, but algorithm is {script_args.algorithm}: "
            "set algorithm: ppo, or remove them"
        )
    return script_args, training_args, model_args, None


def cli(argv: list[str]) -> int:
    """``ovr-train rl --config RECIPE [key=value …]``."""
    main(*parse_args(argv))
    return 0


if __name__ == "__main__":  # `accelerate launch -m ovr_train.rl.train …`
    sys.exit(cli(sys.argv[1:]))
