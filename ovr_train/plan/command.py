"""``ovr-train plan`` and the check each stage runs before it loads anything: a recipe resolved
without a GPU (its YAML over TRL's defaults, as the stage's parser would see it), then planned.

    ovr-train plan --config recipes/ovr-7b-rl.yaml [--gpus 8 --gpu-mem 80 --nodes 1] [key=value …]
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

from ovr_core.model_shapes import TINY_MODELS
from ovr_train.configs import CriticArguments, RLScriptArguments, SFTScriptArguments
from ovr_train.models import check_kernels
from ovr_train.plan.plan import H100_BF16_TFLOPS, Hardware, plan_recipe
from ovr_train.recipe import parse_length_curriculum

# ---- the recipe, resolved without a GPU ------------------------------------------------------


def recipe_settings(stage: str, config: str, overrides: list[str]) -> dict:
    """The recipe's keys plus ``key=value`` overrides, over TRL's defaults; no GPU needed (unlike
    building TrainingArguments, which checks bf16 and DeepSpeed on the machine)."""
    import dataclasses

    import yaml

    if stage == "sft":
        from trl import ModelConfig, SFTConfig

        types = (SFTScriptArguments, SFTConfig, ModelConfig)
    else:
        from trl import GRPOConfig, ModelConfig

        types = (RLScriptArguments, CriticArguments, GRPOConfig, ModelConfig)
    settings = {}
    for cls in types:
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                settings.setdefault(f.name, f.default)
            elif f.default_factory is not dataclasses.MISSING:
                settings.setdefault(f.name, f.default_factory())
    settings.update(yaml.safe_load(Path(config).read_text()) or {})
    for token in overrides:
        key, sep, value = token.lstrip("-").partition("=")
        if not sep:
            raise SystemExit(f"ovr-train plan: override {token!r}: write key=value")
        settings[key] = yaml.safe_load(value)
    return normalise(stage, settings)


def normalise(stage: str, settings: dict) -> dict:
    """Settings as the run will see them: curriculum and batch counting applied."""
    if stage == "rl" and settings.get("length_curriculum"):
        stages = parse_length_curriculum(settings["length_curriculum"])
        settings["max_completion_length"] = max(length for _, length in stages)
    return settings


def settings_of(*configs) -> dict:
    """Settings from parsed dataclasses (script args, TRL config, ModelConfig)."""
    out = {}
    for cfg in filter(None, configs):
        out.update({k: getattr(cfg, k) for k in vars(cfg) if not k.startswith("_")})
    return out


def check_before_training(stage: str, *configs) -> None:
    """Refuse, before loading anything, a run the plan says will not fit on this machine's GPUs.
    ``configs``: what the stage's ``parse_args`` returned (None entries are skipped).

    The GPU kernels the recipe names are checked first, everywhere (`check_kernels`); the plan is
    skipped on CPU and for the tiny test models (nothing to plan there).
    """
    import torch

    configs = tuple(c for c in configs if c is not None)
    training_args = next(c for c in configs if hasattr(c, "world_size"))
    model_args = next(c for c in configs if hasattr(c, "model_name_or_path"))
    check_kernels(model_args.attn_implementation, training_args.use_liger_kernel)
    name = model_args.model_name_or_path
    if not torch.cuda.is_available() or name in TINY_MODELS:
        return
    settings = normalise(stage, settings_of(*configs))
    local = torch.cuda.device_count()
    hardware = Hardware(
        gpus_per_node=local,
        gpu_mem_gb=torch.cuda.get_device_properties(0).total_memory / 1e9,
        nodes=max(1, training_args.world_size // max(local, 1)),
    )
    plan = plan_recipe(stage, settings, hardware)
    if plan.problems:
        raise SystemExit(
            f"ovr-train {stage}: the plan says this run will not fit or will not work "
            "(ovr-train plan shows the whole plan):\n" + "\n".join(plan.problems)
        )


def cli(argv: list[str]) -> int:
    """``ovr-train plan --config RECIPE [--gpus N --gpu-mem GB --nodes M] [key=value …]``."""
    parser = argparse.ArgumentParser(prog="ovr-train plan", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="the recipe (YAML) to plan")
    parser.add_argument(
        "--stage", choices=["sft", "rl"], help="default: rl when the recipe has rewards"
    )
    parser.add_argument("--gpus", type=int, default=8, help="training GPUs per node (default 8)")
    parser.add_argument("--gpu-mem", type=float, default=80.0, help="GB per GPU (default 80, H100)")
    parser.add_argument("--nodes", type=int, default=1, help="training nodes (default 1)")
    parser.add_argument("--mfu", type=float, default=0.35, help="assumed MFU (default 0.35)")
    parser.add_argument(
        "--peak-tflops", type=float, default=H100_BF16_TFLOPS, help="bf16 dense peak"
    )
    parser.add_argument(
        "--prompt-tokens", type=int, default=2048, help="RL prompt budget (image included)"
    )
    parser.add_argument(
        "--rollout-gpus",
        type=int,
        help="GPUs of the rollout servers (default: one per server in vllm_server_base_url, "
        "8 when it names one)",
    )
    parser.add_argument("--trace-tokens", type=int, default=8192, help="mean SFT trace length")
    args, overrides = parser.parse_known_args(argv)
    warnings.filterwarnings("ignore", category=UserWarning)  # TRL's vLLM version notices
    stage = args.stage or _stage_of(args.config)
    settings = recipe_settings(stage, args.config, overrides)
    if settings["model_name_or_path"] in TINY_MODELS:
        print(
            f"ovr-train plan: {settings['model_name_or_path']} is the CPU test model: nothing to plan"
        )
        return 0
    hardware = Hardware(
        args.gpus, args.gpu_mem, args.nodes, args.peak_tflops, mfu=args.mfu,
        rollout_gpus=args.rollout_gpus or rollout_gpus_of(settings), trace_tokens=args.trace_tokens,
    )  # fmt: skip
    plan = plan_recipe(stage, settings, hardware, args.prompt_tokens)
    print(plan.render())
    return 1 if plan.problems else 0


def rollout_gpus_of(settings: dict) -> int:
    """One GPU per rollout server listed; a single URL is the recipe's placeholder for one 8-GPU
    rollout node (`ovr-train rollout-servers` serves all of a node's GPUs, and any number of nodes,
    behind one endpoint: give ``--rollout-gpus`` for more)."""
    listed = str(settings.get("vllm_server_base_url") or "http://localhost:8000").split(",")
    servers = len({u.strip().rstrip("/") for u in listed if u.strip()})
    return servers if servers > 1 else 8


def _stage_of(config: str) -> str:
    import yaml

    recipe = yaml.safe_load(Path(config).read_text()) or {}
    return "rl" if "rewards" in recipe or "num_generations" in recipe else "sft"
