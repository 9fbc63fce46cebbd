"""Packing and padding-free batches give the same loss as padded ones on Qwen2.5-VL (M-RoPE kept right).

The padded batch gets its positions from the model itself (`get_rope_index` from the attention mask),
so agreeing with it means the packed M-RoPE positions and the per-sequence attention are both right.
"""

from __future__ import annotations

import pytest
import torch

from ovr_core.synthetic import reasoning_examples
from ovr_train.data import build_dataset, write_jsonl
from ovr_train.upstream_fixes import fix_packed_mrope_positions


@pytest.fixture(scope="module")
def random_model_path():
    from ovr_train.tiny_model import TinyModelSpec, cached_tiny_model

    return cached_tiny_model(spec=TinyModelSpec(format_steps=0))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    rows = [
        {k: ex[k] for k in ("question", "reasoning", "answer")}
        for ex in reasoning_examples(24, seed=3)
    ]
    rows[5]["reasoning"] = " ".join([rows[5]["reasoning"]] * 6)  # one long trace among short ones
    path = write_jsonl(rows, tmp_path_factory.mktemp("data") / "d.jsonl")
    return build_dataset([str(path)])[0]


def _load(path, fix: bool):
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(
        path, dtype=torch.float32, attn_implementation="sdpa"
    )
    if fix:
        assert fix_packed_mrope_positions(model)
    return model.eval()


def _mean_loss(model, tokenizer, dataset, tmp_path, **batching) -> tuple[float, int]:
    """Token-weighted mean loss over the whole dataset, through TRL's own data path and loss."""
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(
        output_dir=str(tmp_path),
        bf16=False,
        per_device_train_batch_size=4,
        report_to="none",
        gradient_checkpointing=False,
        **batching,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    total, count, batches = 0.0, 0, 0
    with torch.no_grad():
        for batch in trainer.get_train_dataloader():
            n = int((batch["labels"][..., 1:] != -100).sum())
            total += float(trainer.compute_loss(model, batch)) * n
            count += n
            batches += 1
    return total / count, batches


@pytest.mark.parametrize(
    "batching",
    [
        {"packing": True, "packing_strategy": "bfd", "max_length": 256},
        {"padding_free": True, "max_length": None},
    ],
    ids=["bfd-packing", "padding-free"],
)
def test_packed_loss_equals_padded_loss(random_model_path, dataset, tmp_path, batching):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(random_model_path)
    model = _load(random_model_path, fix=True)
    padded, padded_batches = _mean_loss(
        model, tokenizer, dataset, tmp_path / "padded", max_length=256
    )
    packed, packed_batches = _mean_loss(model, tokenizer, dataset, tmp_path / "packed", **batching)
    assert packed_batches <= padded_batches
    assert packed == pytest.approx(padded, rel=1e-5), (packed, padded)


def test_upstream_still_needs_the_position_fix(random_model_path, dataset, tmp_path):
    """Without the fix, 2-D packed positions let sequences attend to each other (transformers 5.19).

    When this test fails, upstream handles packed Qwen2.5-VL batches itself: remove
    `fix_packed_mrope_positions` (ovr_train/upstream_fixes.py) and this test.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(random_model_path)
    model = _load(random_model_path, fix=False)
    padded, _ = _mean_loss(model, tokenizer, dataset, tmp_path / "padded", max_length=256)
    packed, _ = _mean_loss(
        model, tokenizer, dataset, tmp_path / "packed", packing=True, max_length=256
    )
    assert abs(packed - padded) > 1e-4 * padded
