"""Run as a script by tests/test_first_hour.py: parse an RL recipe with `ovr-train rl`'s own parser,
let transformers set up the process group (DeepSpeed's, when the recipe names a config) and print
the group's timeout in seconds. Launched as one process of a world of one (RANK/WORLD_SIZE set).

    python tests/helpers/ddp_timeout_probe.py RECIPE [key=value …]
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist
import transformers.training_args

from ovr_train.rl.train import parse_args


def main(argv: list[str]) -> None:
    """Print ``timeout <seconds> backend <name>`` of the default process group."""
    # the recipes ask for bf16; this CPU has none, and the check is not what is under test
    transformers.training_args.is_torch_bf16_gpu_available = lambda: True
    _, training_args, _, _ = parse_args(["--config", *argv])
    processes = training_args.world_size  # transformers creates the process group here
    group = dist.distributed_c10d._get_default_group()
    timeout = group._get_backend(torch.device("cpu")).options._timeout
    print(f"timeout {timeout.total_seconds():.0f} backend {dist.get_backend()} world {processes}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
