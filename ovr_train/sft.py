"""The linguistic cold start: fine-tune Qwen2.5-VL on long reasoning traces with TRL's SFTTrainer.

    ovr-train sft --config recipes/tiny-coldstart.yaml                     # 2-core CPU, ~1 minute
    ovr-train sft --config recipes/tiny-coldstart.yaml max_steps=20 --resume
    accelerate launch --num_processes 8 --use_deepspeed \\
        --deepspeed_config_file recipes/deepspeed/zero3.json -m ovr_train.sft \\
        --config recipes/ovr-7b-coldstart.yaml                              # the published recipe

Settings come from the YAML file, then from ``key=value`` (or ``--key value``) overrides; the names
are those of `SFTScriptArguments` (``ovr_train.configs``), TRL's `SFTConfig` and `ModelConfig`. Each example is brought
to the OVR chat format (`ovr_train.data`) and trained on its assistant turn only. Text-only data is
tokenized with the tokenizer as TRL's processing class, which lets TRL pack it (BFD) or batch it
padding-free; `fix_packed_mrope_positions` keeps Qwen2.5-VL's M-RoPE attention within each packed
sequence. The output directory is servable as is: ``ovr-serve --model OUTPUT_DIR``.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from trl import ModelConfig, SFTConfig, SFTTrainer

from ovr_train.checkpoints import SafeCheckpoints, train_and_save
from ovr_train.configs import SFTScriptArguments
from ovr_train.curves import TrainingCurves
from ovr_train.models import load_policy
from ovr_train.recipe import parse_recipe_args, render_config, resolve_config, resolve_model
from ovr_train.upstream_fixes import fix_packed_mrope_positions

logger = logging.getLogger("ovr_train.sft")


def main(
    script_args: SFTScriptArguments,
    training_args: SFTConfig,
    model_args: ModelConfig,
    callbacks: list | None = None,
) -> str:
    """Train, then write a servable checkpoint to ``training_args.output_dir``; returns its path.

    ``callbacks`` are extra ``transformers.TrainerCallback``s (tests use one to kill a run mid-way).
    """
    from transformers import AutoProcessor, AutoTokenizer
    from transformers.trainer_utils import set_seed

    from ovr_train.data import prepare_dataset
    from ovr_train.plan import check_before_training

    # logging: the whole resolved configuration, printed and saved beside every checkpoint
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    set_seed(training_args.seed)
    check_before_training("sft", script_args, training_args, model_args)
    model_args.model_name_or_path = resolve_model(model_args.model_name_or_path)

    # data: one chat format, bad rows refused or skipped with a count; prepared once, on disk
    tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path)
    train_dataset, report, prepared = prepare_dataset(
        _materialise_sources(script_args, training_args.output_dir),
        script_args.on_bad_rows,
        tokenizer,
        training_args.max_length,
        script_args.data_cache_dir or str(Path(training_args.output_dir) / "data" / "prepared"),
        limit=script_args.max_rows,
        num_proc=training_args.dataset_num_proc,
        main_process_first=training_args.main_process_first,
    )
    logger.info("data (%s): %s", prepared, report.render())
    has_images = "images" in train_dataset.column_names
    if has_images and (training_args.packing or training_args.padding_free):
        logger.warning(
            "images in the data: TRL cannot pack or go padding-free with them; turning both off"
        )
        training_args.packing = training_args.padding_free = False
    if script_args.traces_per_update:
        set_accumulation_for_traces(script_args.traces_per_update, training_args, report)
    resolved = resolve_config(script_args, training_args, model_args)
    if training_args.process_index == 0:
        logger.info("resolved config:\n%s", render_config(resolved))

    # model: Qwen2.5-VL, vision tower + projector frozen for text-only data
    model = load_policy(model_args, script_args.freeze_vision, logger)
    if fix_packed_mrope_positions(model):
        logger.info("packed/padding-free batches: M-RoPE position fix installed")
    processor = AutoProcessor.from_pretrained(model_args.model_name_or_path)

    # trainer: TRL does the work; text-only data goes through the tokenizer so packing is allowed
    trainer = ColdStartTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        processing_class=processor if has_images else tokenizer,
        callbacks=[TrainingCurves(), *(callbacks or [])],
        resolved_config=resolved,
        servable_processor=processor,
    )

    # train (resuming when asked), then save weights, processor, generation config, state, plot
    return train_and_save(trainer, processor, script_args.resume, resolved, logger)


def set_accumulation_for_traces(traces: int, training_args, report) -> None:
    """Gradient accumulation such that one update holds about ``traces`` traces, however many GPUs.

    With packing a row holds several traces: rows per update = traces x mean trace length /
    max_length (BFD packing fills rows almost whole), divided over processes x micro-batch.
    """
    kept = report.rows - report.bad_rows
    per_row = 1.0
    if training_args.packing and report.tokens and kept:
        per_row = max(1.0, training_args.max_length / (report.tokens / kept))
    per_micro = training_args.world_size * training_args.per_device_train_batch_size * per_row
    steps = max(1, round(traces / per_micro))
    training_args.gradient_accumulation_steps = steps
    logger.info(
        "batch: %d traces per update asked; %.1f traces per row x %d processes x %d rows x %d "
        "accumulation = %.0f",
        traces,
        per_row,
        training_args.world_size,
        training_args.per_device_train_batch_size,
        steps,
        per_micro * steps,
    )


class ColdStartTrainer(SafeCheckpoints, SFTTrainer):
    """TRL's SFTTrainer with safe checkpoints (atomic, read back right) and a sequence-length metric."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:
            self._metrics["train"]["seq_length"].append(_mean_sequence_length(inputs))
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


def _mean_sequence_length(inputs) -> float:
    """Mean real length of the sequences in a batch, padded or padding-free/packed."""
    if "attention_mask" in inputs:
        mask = inputs["attention_mask"]
        return float(mask.sum() / mask.shape[0])
    positions = inputs["position_ids"]
    starts = int((positions == 0).sum())
    # trailing padding of a padding-free batch also restarts at 0: count only starts followed by a 1
    real = int(((positions[..., :-1] == 0) & (positions[..., 1:] == 1)).sum()) or starts
    return float(positions.shape[-1]) / max(real, 1)


def _materialise_sources(script_args: SFTScriptArguments, output_dir: str) -> list[str]:
    """Data sources as paths; 'synthetic:N' is written once to ``output_dir/data/`` (reproducible)."""
    from pathlib import Path

    from ovr_core.synthetic import reasoning_examples
    from ovr_train.data import write_jsonl

    sources = []
    for source in script_args.dataset:
        if source.startswith("synthetic:"):
            n = int(source.split(":", 1)[1])
            path = (
                Path(output_dir) / "data" / f"synthetic-{n}-seed{script_args.synthetic_seed}.jsonl"
            )
            if not path.exists():
                rows = [
                    {k: ex[k] for k in ("question", "reasoning", "answer")}
                    for ex in reasoning_examples(n, seed=script_args.synthetic_seed)
                ]
                write_jsonl(rows, path)
            source = str(path)
        sources.append(source)
    if not sources:
        raise SystemExit(
            "ovr-train sft: no data; set dataset: [FILE, …] in the recipe or dataset=FILE"
        )
    return sources


def parse_args(argv: list[str]) -> tuple[SFTScriptArguments, SFTConfig, ModelConfig]:
    """``--config YAML`` plus ``key=value`` / ``--key value`` overrides, through TRL's parser."""
    script_args, training_args, model_args = parse_recipe_args(
        (SFTScriptArguments, SFTConfig, ModelConfig), argv, "ovr-train sft"
    )
    if model_args.use_peft:
        raise SystemExit(
            "ovr-train sft: the cold start is a full fine-tune; use_peft is not supported"
        )
    return script_args, training_args, model_args


def cli(argv: list[str]) -> int:
    """``ovr-train sft --config RECIPE [key=value …]``."""
    main(*parse_args(argv))
    return 0


if __name__ == "__main__":  # `accelerate launch -m ovr_train.sft …`
    sys.exit(cli(sys.argv[1:]))
