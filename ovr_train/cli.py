"""`ovr-train`: one console script, one subcommand per stage; each stage parses its own flags.

ovr-train tiny-model OUT            build the offline tiny Qwen2.5-VL test model
"""

from __future__ import annotations

import importlib
import sys

# subcommand -> "module:function"; the function takes the remaining argv and returns an exit code.
COMMANDS = {
    "tiny-model": ("ovr_train.tiny_model:cli", "build the tiny Qwen2.5-VL test model (offline)"),
    "sft": (
        "ovr_train.sft:cli",
        "cold-start SFT with TRL: ovr-train sft --config RECIPE [key=value ...]",
    ),
    "data": ("ovr_train.data:cli", "validate training data: ovr-train data check FILE ..."),
    "rl": (
        "ovr_train.rl.train:cli",
        "multimodal RL (GRPO on TRL, vLLM rollouts): ovr-train rl --config RECIPE",
    ),
    "rollout-servers": (
        "ovr_train.rollouts.servers:cli",
        "one data-parallel vLLM per node for server-mode RL rollouts: ovr-train rollout-servers --model M",
    ),
    "plan": (
        "ovr_train.plan.command:cli",
        "memory per GPU and time per step of a recipe, before a GPU hour: ovr-train plan --config RECIPE",
    ),
    "average": (
        "ovr_train.average:cli",
        "uniform average of checkpoints: ovr-train average OUT CKPT ...",
    ),
}


def main(argv: list[str] | None = None) -> int:
    """Dispatch to a stage's own ``cli(argv)``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        width = max(map(len, COMMANDS))
        lines = [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
        print("usage: ovr-train COMMAND [ARGS]\n\ncommands:\n" + "\n".join(lines))
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\novr-train: unknown command {argv[0]!r}", file=sys.stderr)
            return 2
        return 0
    target, _ = COMMANDS[argv[0]]
    module, func = target.split(":")
    return int(getattr(importlib.import_module(module), func)(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
