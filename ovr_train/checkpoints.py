"""Writing what a run leaves so that it is whole or absent, and reading it back right.

- `atomic_dir` / `atomic_file`: the one write-then-rename of ovr_train (tiny model, averaged
  checkpoints, prepared data, generated data files);
- `SafeCheckpoints`: a Trainer mixin that lets upstream write ``checkpoint-N`` under a staging name
  (every rank, DeepSpeed shards included) and renames it when whole, and that reads the weights back
  correctly on resume; a multi-rank staging, so it renames only once all ranks are done;
- `last_complete_checkpoint`, for ``--resume``;
- `save_servable` / `train_and_save`: the final checkpoint, servable by ovr-serve as is (weights,
  processor, tokenizer, chat template, generation config with both end tokens), ``config.json``
  moved in last so the directory looks like a model only once it is one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ovr_train.curves import TrainingCurves

CHECKPOINT_PREFIX = "checkpoint-"  # transformers' PREFIX_CHECKPOINT_DIR
STAGING_PREFIX = ".staging-"  # not matched by transformers' ^checkpoint-\d+$ (get_last_checkpoint)
FINAL_STAGING = ".staging-final"
END_TOKENS = ("<|im_end|>", "<|endoftext|>")  # Qwen2.5's end of turn and end of text
RESOLVED_CONFIG = "ovr_train_config.json"  # the run's whole configuration, beside each checkpoint


@contextmanager
def atomic_dir(out: str | os.PathLike, *, first_wins: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside ``out``; on success it replaces ``out``, else it is
    removed. ``first_wins``: when another process (a node on a shared filesystem) put ``out`` in
    place first, keep theirs."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    tmp.chmod(0o755)
    try:
        yield tmp
        if out.exists() and not first_wins:
            shutil.rmtree(out)
        try:
            os.replace(tmp, out)
        except OSError:
            if not (first_wins and out.exists()):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, else it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class SafeCheckpoints:
    """Trainer mixin (put it before the Trainer class): checkpoints appear whole, and load back right.

    Writing: transformers 5.19 writes ``checkpoint-N`` in place, file by file; a kill half way leaves a
    directory that ``get_last_checkpoint`` picks and that resume then fails on. We let upstream write
    into ``.staging-checkpoint-N/`` (every rank, DeepSpeed shards included), add our own files, and
    rename it into place on the main process once all ranks are done.

    Reading: transformers 5.19's ``Trainer._load_from_checkpoint`` loads ``model.safetensors`` with a
    raw, non-strict ``load_state_dict``, but ``save_pretrained`` wrote Qwen2.5-VL's keys in the
    original checkpoint layout (``visual.*``, ``model.layers.*`` instead of ``model.visual.*``,
    ``model.language_model.layers.*``): nothing matches, a warning is logged, and "resumed" training
    goes on from the initial weights. We load through ``from_pretrained`` (which maps the keys) and
    copy strictly. DeepSpeed and FSDP resume from their own states and are left to upstream.
    Remove when ``tests/test_sft.py::test_upstream_resume_still_misreads_saved_keys`` fails.
    """

    _staging_root: str | None = None
    resolved_config: dict | None = None  # saved beside each checkpoint when set
    # the full processor (image processor, chat template), saved into every checkpoint when set, so
    # an intermediate checkpoint is servable as is even when the trainer only holds the tokenizer
    servable_processor = None

    def __init__(self, *args, resolved_config=None, servable_processor=None, **kwargs):
        self.resolved_config = resolved_config
        self.servable_processor = servable_processor
        super().__init__(*args, **kwargs)

    def _get_output_dir(self, trial):
        if self._staging_root is not None:
            return self._staging_root
        return super()._get_output_dir(trial)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        model = self.model if model is None else model
        has_config = os.path.isfile(os.path.join(resume_from_checkpoint, "config.json"))
        if self.is_deepspeed_enabled or self.is_fsdp_enabled or not has_config:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        dtype = next(model.parameters()).dtype
        reloaded = type(model).from_pretrained(resume_from_checkpoint, dtype=dtype)
        model.load_state_dict(reloaded.state_dict(), strict=True)
        del reloaded

    def _save_checkpoint(self, model, trial):
        from transformers.trainer_utils import rotate_checkpoints

        run_dir = super()._get_output_dir(trial)
        name = f"{CHECKPOINT_PREFIX}{self.state.global_step}"
        staging = os.path.join(run_dir, STAGING_PREFIX + name)
        if self.args.should_save and os.path.exists(staging):
            shutil.rmtree(staging)  # left by a run killed while saving this same step
        self.accelerator.wait_for_everyone()
        self._staging_root = staging
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging_root = None
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            written = os.path.join(staging, name)
            if self.servable_processor is not None:
                save_serving_files(self.servable_processor, written)
            if self.resolved_config is not None:
                save_resolved_config(written, self.resolved_config)
            for callback in self.callback_handler.callbacks:
                if isinstance(callback, TrainingCurves):
                    callback.write(written)
            final = os.path.join(run_dir, name)
            if os.path.exists(final):
                shutil.rmtree(final)
            os.replace(written, final)
            shutil.rmtree(staging, ignore_errors=True)
            rotate_checkpoints(
                output_dir=run_dir,
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=True,
            )
        self.accelerator.wait_for_everyone()


def train_and_save(trainer, processor, resume: bool, resolved: dict, log) -> str:
    """The tail every stage shares: train (from the newest complete checkpoint when ``resume``),
    then write the servable checkpoint, the trainer state and the resolved config; returns its path."""
    output_dir = trainer.args.output_dir
    checkpoint = last_complete_checkpoint(output_dir) if resume else None
    if resume:
        log.info("resume: %s", checkpoint or "no complete checkpoint yet, starting fresh")
    trainer.train(resume_from_checkpoint=checkpoint)
    out = save_servable(trainer, processor, output_dir, resolved)
    trainer.save_state()
    if trainer.args.process_index == 0:
        save_resolved_config(out, resolved)
        log.info("servable checkpoint written to %s (serve it: ovr-serve --model %s)", out, out)
    return str(out)


def last_complete_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The newest ``checkpoint-N`` holding a trainer state, or None (staging dirs never count)."""
    root = Path(output_dir)
    if not root.is_dir():
        return None
    steps = []
    for path in root.iterdir():
        suffix = path.name.removeprefix(CHECKPOINT_PREFIX)
        if (
            path.name.startswith(CHECKPOINT_PREFIX)
            and suffix.isdigit()
            and (path / "trainer_state.json").exists()
        ):
            steps.append((int(suffix), path))
    return str(max(steps)[1]) if steps else None


def save_servable(
    trainer, processor, output_dir: str | os.PathLike, resolved_config: dict | None = None
) -> Path:
    """Write the final model so ovr-serve can serve ``output_dir`` as is; returns the path.

    Everything is written to ``.staging-final/`` first (all ranks take part: ZeRO-3 gathers the
    weights), then moved into ``output_dir`` with ``config.json`` last: until it lands, the directory
    does not look like a model to transformers or vLLM.
    """
    out = Path(output_dir)
    staging = out / FINAL_STAGING
    if trainer.args.should_save and staging.exists():
        shutil.rmtree(staging)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(staging))
    if trainer.args.should_save:
        save_serving_files(processor, staging)
        if resolved_config is not None:
            save_resolved_config(staging, resolved_config)
        for callback in trainer.callback_handler.callbacks:
            if isinstance(callback, TrainingCurves):
                callback.write(staging)
        (out / "config.json").unlink(missing_ok=True)  # the marker goes first, and comes back last
        for item in sorted(staging.iterdir(), key=lambda p: p.name == "config.json"):
            target = out / item.name
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(item, target)
        staging.rmdir()
    trainer.accelerator.wait_for_everyone()
    return out


def save_serving_files(processor, directory: str | os.PathLike) -> None:
    """What ovr-serve needs beside the weights: the processor (tokenizer, chat template, image
    processor) and a generation config that stops at both end tokens."""
    from transformers import GenerationConfig

    processor.save_pretrained(directory)
    tokenizer = getattr(processor, "tokenizer", processor)
    generation = GenerationConfig.from_pretrained(directory)
    generation.eos_token_id = [tokenizer.convert_tokens_to_ids(t) for t in END_TOKENS]
    generation.pad_token_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    generation.save_pretrained(directory)


def save_resolved_config(directory: str | os.PathLike, resolved: dict) -> Path:
    """Write the resolved configuration beside a checkpoint, so the run can be reproduced from it."""
    path = Path(directory) / RESOLVED_CONFIG
    path.write_text(json.dumps(resolved, indent=2, sort_keys=True))
    return path
