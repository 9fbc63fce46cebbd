"""Run as a script by tests/test_first_hour.py, as one of two processes (RANK 0 and 1): the tiny
Qwen2.5-VL under DeepSpeed ZeRO-3 on CPU (gloo), frozen vision tower, micro-batch 1; rank 0 trains on
an image row and rank 1 on a text-only row for two steps, as two GPUs of a 7B RL run would.

    python tests/helpers/zero3_mixed_rows.py hook|nohook MODEL_DIR

``hook`` installs `ovr_train.rl.vision_sync` first. Prints ``rank R done loss L`` when it gets through.
"""

from __future__ import annotations

import datetime
import sys

import deepspeed
import torch
import torch.distributed as dist
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor
from transformers.integrations.deepspeed import HfDeepSpeedConfig

ZERO3 = {
    "train_micro_batch_size_per_gpu": 1,
    "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
    "zero_allow_untested_optimizer": True,
}


def main(mode: str, path: str) -> None:
    """Two ZeRO-3 steps on this rank's row; a collective mismatch raises (gloo) or hangs (NCCL)."""
    deepspeed.init_distributed(dist_backend="gloo", timeout=datetime.timedelta(seconds=60))
    rank = dist.get_rank()
    keep = HfDeepSpeedConfig(ZERO3)  # noqa: F841 - from_pretrained partitions while it lives
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32)
    for param in model.model.visual.parameters():
        param.requires_grad_(False)
    if mode == "hook":
        from ovr_train.rl.vision_sync import run_vision_every_step

        run_vision_every_step(model)
    trained = [p for p in model.parameters() if p.requires_grad]
    engine, *_ = deepspeed.initialize(
        model=model, optimizer=torch.optim.SGD(trained, lr=0.0), config=ZERO3
    )
    inputs = image_row(path) if rank == 0 else {"input_ids": torch.arange(10, 26).unsqueeze(0)}
    for _ in range(2):
        loss = engine(**inputs, labels=inputs["input_ids"]).loss
        engine.backward(loss)
        engine.step()
    print(f"rank {rank} done loss {loss.item():.6f}", flush=True)


def image_row(path: str) -> dict:
    processor = AutoProcessor.from_pretrained(path)
    chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Count."}]}]
    text = processor.apply_chat_template(chat, add_generation_prompt=True)
    inputs = dict(processor(images=[Image.new("RGB", (56, 56))], text=[text], return_tensors="pt"))
    inputs.pop("attention_mask")
    return inputs


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
