"""Uniform checkpoint averaging, as the released OVR model is made (paper §4.1: an average of
several intermediate RL checkpoints).

    ovr-train average OUT runs/ovr-7b-rl/checkpoint-600 runs/ovr-7b-rl/checkpoint-700 ...

Every floating-point tensor is the mean of the checkpoints' tensors (accumulated in float32, cast
back to the checkpoint's dtype); the processor, tokenizer, chat template and generation config
come from the first checkpoint, so OUT is servable as is (``ovr-serve --model OUT``). OUT appears
whole or not at all.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from ovr_train.checkpoints import atomic_dir

WEIGHT_SUFFIX = ".safetensors"
SKIPPED = (
    "optimizer.pt",
    "scheduler.pt",
    "rng_state.pth",
    "trainer_state.json",
    "training_args.bin",
)


def average_checkpoints(checkpoints: list[str | os.PathLike], out: str | os.PathLike) -> Path:
    """Write the uniform average of ``checkpoints`` (same architecture and shards) to ``out``."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    dirs = [Path(c) for c in checkpoints]
    if len(dirs) < 2:
        raise ValueError("average needs at least two checkpoints")
    for d in dirs:
        if not any(d.glob("*" + WEIGHT_SUFFIX)):
            raise ValueError(
                f"{d}: no *{WEIGHT_SUFFIX} weights (found: "
                f"{', '.join(sorted(p.name for p in d.iterdir())[:8]) or 'nothing'}). A ZeRO-3 "
                "checkpoint needs stage3_gather_16bit_weights_on_model_save: true (recipes/deepspeed/"
                "zero3.json) or its shards converted with DeepSpeed's zero_to_fp32.py; .bin weights: "
                "re-save with save_pretrained(safe_serialization=True)"
            )
    shards = sorted(p.name for p in dirs[0].glob("*" + WEIGHT_SUFFIX))
    for d in dirs[1:]:
        if sorted(p.name for p in d.glob("*" + WEIGHT_SUFFIX)) != shards:
            raise ValueError(f"{d}: weight files differ from {dirs[0]}")
    out = Path(out)
    with atomic_dir(out) as tmp:
        for item in dirs[0].iterdir():  # processor, tokenizer, template, configs, index
            if (
                item.is_file()
                and not item.name.endswith(WEIGHT_SUFFIX)
                and item.name not in SKIPPED
            ):
                shutil.copy2(item, tmp / item.name)
        for shard in shards:
            handles = [safe_open(str(d / shard), framework="pt") for d in dirs]
            keys = list(handles[0].keys())
            averaged = {}
            for key in keys:
                first = handles[0].get_tensor(key)
                if not first.is_floating_point():
                    averaged[key] = first
                    continue
                total = first.to(torch.float32)
                for h in handles[1:]:
                    total += h.get_tensor(key).to(torch.float32)
                averaged[key] = (total / len(dirs)).to(first.dtype).contiguous()
            save_file(averaged, str(tmp / shard), metadata={"format": "pt"})
        (tmp / "ovr_average.json").write_text(
            json.dumps({"checkpoints": [str(d) for d in dirs]}, indent=2)
        )
    return out


def cli(argv: list[str]) -> int:
    """``ovr-train average OUT CKPT CKPT [...]``."""
    parser = argparse.ArgumentParser(prog="ovr-train average", description=__doc__.splitlines()[0])
    parser.add_argument("out", help="directory for the averaged model (replaced if present)")
    parser.add_argument(
        "checkpoints", nargs="+", help="checkpoint directories to average uniformly"
    )
    args = parser.parse_args(argv)
    try:
        path = average_checkpoints(args.checkpoints, args.out)
    except (ValueError, FileNotFoundError) as exc:
        print(f"ovr-train average: {exc}", file=sys.stderr)
        return 2
    print(f"average of {len(args.checkpoints)} checkpoints written to {path}")
    print(f"serve it: ovr-serve --model {path}")
    return 0
