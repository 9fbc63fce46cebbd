"""From a recipe to the settings a run sees: TRL's parser over our dataclasses (``--config YAML``
plus overrides), the resolved configuration saved beside every checkpoint, the tiny models' names,
and RL's schedule (batch as the paper counts it, the length curriculum). The plan and the stages
read recipes through here, so both see the same values."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from dataclasses import asdict, is_dataclass

from ovr_train.configs import TINY_COLDSTARTED, TINY_RANDOM

logger = logging.getLogger("ovr_train.recipe")


def parse_recipe_args(types: tuple, argv: list[str], prog: str) -> tuple:
    """``--config YAML`` plus ``key=value`` / ``--key value`` overrides, parsed by TRL's parser into
    the dataclasses ``types``; ``report_to: auto`` becomes ``default_report_to()``. A list value is
    written as in the recipe (``dataset=[a.jsonl, b.jsonl]``) or space-separated after ``--key``."""
    import yaml
    from trl import TrlParser

    args = []
    for token in argv:
        if "=" in token and not token.startswith("-"):
            key, value = token.split("=", 1)
            if value.lstrip().startswith("["):
                try:
                    items = yaml.safe_load(value)
                except yaml.YAMLError as exc:
                    raise SystemExit(
                        f"{key}={value}: not a list ({exc}); write {key}=[a, b]"
                    ) from None
                args += [f"--{key}", *(str(item) for item in items or [])]
            else:
                args += [f"--{key}", value]
        else:
            args.append(token)
    parsed = TrlParser(types, prog=prog).parse_args_and_config(args)
    for cfg in parsed:
        if getattr(cfg, "report_to", None) in ("auto", ["auto"]):
            cfg.report_to = default_report_to()
    return tuple(parsed)


def default_report_to() -> list[str]:
    """TensorBoard always; W&B too when it is installed and not disabled (WANDB_MODE=disabled)."""
    targets = ["tensorboard"]
    if importlib.util.find_spec("wandb") and os.environ.get("WANDB_MODE") != "disabled":
        targets.append("wandb")
    return targets


def resolve_config(*configs) -> dict:
    """The run's whole configuration as one JSON-able dict (dataclass name -> fields)."""
    out = {}
    for cfg in configs:
        data = (
            cfg.to_dict()
            if hasattr(cfg, "to_dict")
            else asdict(cfg)
            if is_dataclass(cfg)
            else dict(cfg)
        )
        out[type(cfg).__name__] = json.loads(json.dumps(data, default=str))
    return out


def render_config(resolved: dict) -> str:
    """The resolved configuration as YAML, for the log."""
    import yaml

    return yaml.safe_dump(resolved, sort_keys=False, width=120)


def resolve_model(name: str) -> str:
    """A model path: ``tiny-random`` (untrained) and ``tiny-coldstarted`` (it learned the OVR
    format) are the offline test model, built on first use; anything else is returned as is."""
    if name in (TINY_RANDOM, TINY_COLDSTARTED):
        from ovr_train.tiny_model import TinyModelSpec, cached_tiny_model

        spec = TinyModelSpec() if name == TINY_COLDSTARTED else TinyModelSpec(format_steps=0)
        return str(cached_tiny_model(spec=spec))
    return name


def apply_schedule(script_args, training_args) -> list[tuple[int, int]]:
    """Batch size as the paper counts it and the length curriculum, written into TRL's settings.

    ``rollouts_per_update`` sets ``gradient_accumulation_steps`` for the number of processes, so an
    update holds the same number of traces on 1 node or 8. ``length_curriculum`` (``"STEP:LENGTH"``,
    in order) sets ``max_steps`` to the last stage's end unless given (past it, the last length
    holds) and ``max_completion_length`` to the longest (what vLLM must hold); the trainer switches
    lengths by step. Returns the stages.
    """
    if script_args.rollouts_per_update:
        per_micro = training_args.per_device_train_batch_size * training_args.world_size
        if script_args.rollouts_per_update % per_micro:
            raise SystemExit(
                f"ovr-train rl: rollouts_per_update={script_args.rollouts_per_update} is not a "
                f"multiple of per_device_train_batch_size x processes = {per_micro}; change one"
            )
        steps = script_args.rollouts_per_update // per_micro
        # GRPOConfig derived these from the recipe's accumulation in __post_init__: one generation
        # of rollouts_per_update rollouts feeds one update
        training_args.gradient_accumulation_steps = training_args.steps_per_generation = steps
        training_args.generation_batch_size = script_args.rollouts_per_update
        logger.info(
            "batch: %d rollouts per update = %d processes x %d x %d accumulation",
            script_args.rollouts_per_update,
            training_args.world_size,
            training_args.per_device_train_batch_size,
            training_args.gradient_accumulation_steps,
        )
    stages = parse_length_curriculum(script_args.length_curriculum)
    if stages:
        if training_args.max_steps <= 0:  # unset: the curriculum says how long to train
            training_args.max_steps = stages[-1][0]
        training_args.max_completion_length = max(length for _, length in stages)
        logger.info(
            "length curriculum: %s, %d steps",
            ", ".join(f"{length} tokens to step {until}" for until, length in stages),
            training_args.max_steps,
        )
    return stages


def parse_length_curriculum(stages: list[str]) -> list[tuple[int, int]]:
    """``["300:24576", "700:32768"]`` -> ``[(300, 24576), (700, 32768)]``: until step, length."""
    out = []
    for stage in stages:
        step, sep, length = str(stage).partition(":")
        if not (sep and step.strip().isdigit() and length.strip().isdigit()):
            raise SystemExit(
                f"ovr-train rl: length_curriculum stage {stage!r}: write UNTIL_STEP:MAX_LENGTH, "
                "e.g. 300:24576"
            )
        out.append((int(step), int(length)))
    if [s for s, _ in out] != sorted({s for s, _ in out}):
        raise SystemExit("ovr-train rl: length_curriculum steps must increase stage by stage")
    return out


def length_at(stages: list[tuple[int, int]], step: int) -> int | None:
    """The max completion length of the stage training step ``step + 1`` (None: no curriculum)."""
    for until, length in stages:
        if step < until:
            return length
    return stages[-1][1] if stages else None
