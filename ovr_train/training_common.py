"""Pieces every OVR training stage shares (cold-start SFT now, RL later), each hooked into upstream's
Trainer at a narrow point:

- `SafeCheckpoints`: a Trainer mixin that writes ``checkpoint-N`` under a staging name and renames it
  when whole, so a kill mid-write never leaves a directory that resume would take for complete, and
  that reads the weights back correctly on resume;
- `last_complete_checkpoint`, for ``--resume``;
- `save_servable`: the final checkpoint, servable by ovr-serve as is (weights, processor, tokenizer,
  chat template, generation config with both end tokens), written so that it looks complete only
  once it is;
- `TrainingCurves`: a callback that plots loss, learning rate, tokens/s and sequence length to a PNG
  beside each checkpoint;
- `fix_packed_mrope_positions`: the Qwen2.5-VL padding-free/packing position-id fix;
- `freeze_vision`, `default_report_to`, `save_resolved_config`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import time
from dataclasses import asdict, is_dataclass
from pathlib import Path

from transformers import TrainerCallback

CHECKPOINT_PREFIX = "checkpoint-"  # transformers' PREFIX_CHECKPOINT_DIR
STAGING_PREFIX = ".staging-"  # not matched by transformers' ^checkpoint-\d+$ (get_last_checkpoint)
FINAL_STAGING = ".staging-final"
RESOLVED_CONFIG = "ovr_train_config.json"
CURVES_PNG = "training_curves.png"
END_TOKENS = ("<|im_end|>", "<|endoftext|>")  # Qwen2.5's end of turn and end of text


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


def load_policy(model_args, freeze_vision_tower: bool, log):
    """The Qwen2.5-VL to train, in the recipe's dtype and attention, its vision tower + projector
    frozen when asked (the cold start's text-only data never reaches them)."""
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(
        model_args.model_name_or_path,
        dtype=torch_dtype(model_args.dtype),
        attn_implementation=model_args.attn_implementation,
    )
    if freeze_vision_tower:
        log.info("frozen vision tower + projector: %d parameters", freeze_vision(model))
    return model


def torch_dtype(name: str | None):
    """``model_args.dtype`` as ``from_pretrained`` takes it: ``"auto"`` or a torch dtype."""
    import torch

    if name in (None, "auto"):
        return "auto"
    return getattr(torch, name)


def render_config(resolved: dict) -> str:
    """The resolved configuration as YAML, for the log."""
    import yaml

    return yaml.safe_dump(resolved, sort_keys=False, width=120)


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


def fix_packed_mrope_positions(model) -> bool:
    """Make padding-free/packed batches attend within their own sequence on Qwen2-VL-family models.

    TRL's padding-free collator sends 2-D ``position_ids`` (restarting at 0 for each sequence) and no
    attention mask. Qwen2.5-VL's text model (transformers 5.19, ``Qwen2_5_VLTextModel.forward``)
    expands 2-D ids to its 3 M-RoPE rows and then builds the mask without them, so under sdpa/eager
    every sequence attends to the ones packed before it (FlashAttention is saved by TRL's
    ``cu_seq_lens``). Its documented packed form is 4 rows: text positions, then t/h/w, which for
    text are the same positions. A pre-hook on the text model rewrites 2-D ids (with no attention
    mask) to that form; for text-only data this is exactly the M-RoPE of the unpacked sequence.
    Remove when ``tests/test_sft_packing.py::test_upstream_still_needs_the_position_fix`` fails.
    Returns True when the hook was installed.
    """
    language_model = getattr(getattr(model, "model", None), "language_model", None)
    rope = getattr(getattr(language_model, "config", None), "rope_parameters", None) or {}
    if language_model is None or "mrope_section" not in rope:
        return False

    def to_four_rows(module, args, kwargs):
        position_ids = kwargs.get("position_ids")
        if (
            position_ids is not None
            and position_ids.ndim == 2
            and kwargs.get("attention_mask") is None
        ):
            kwargs["position_ids"] = position_ids[None].expand(4, -1, -1)
        return args, kwargs

    language_model.register_forward_pre_hook(to_four_rows, with_kwargs=True)
    return True


def freeze_vision(model) -> int:
    """Freeze the vision tower and its projector (``model.visual``, merger included); returns #params."""
    visual = getattr(getattr(model, "model", model), "visual", None)
    if visual is None:
        return 0
    frozen = 0
    for param in visual.parameters():
        param.requires_grad_(False)
        frozen += param.numel()
    return frozen


def default_report_to() -> list[str]:
    """TensorBoard always; W&B too when it is installed and not disabled (WANDB_MODE=disabled)."""
    targets = ["tensorboard"]
    if importlib.util.find_spec("wandb") and os.environ.get("WANDB_MODE") != "disabled":
        targets.append("wandb")
    return targets


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


def save_resolved_config(directory: str | os.PathLike, resolved: dict) -> Path:
    """Write the resolved configuration beside a checkpoint, so the run can be reproduced from it."""
    path = Path(directory) / RESOLVED_CONFIG
    path.write_text(json.dumps(resolved, indent=2, sort_keys=True))
    return path


class TrainingCurves(TrainerCallback):
    """Collects the logged loss, learning rate, tokens/s and sequence length; plots them to a PNG."""

    def __init__(self) -> None:
        self.points: list[dict] = []
        self._last: tuple[float, float] | None = None  # (time, num_tokens) at the previous log

    def on_train_begin(self, args, state, control, **kwargs):
        # On resume, start from the history saved in the checkpoint's trainer state.
        self.points = [dict(p) for p in state.log_history if "loss" in p]

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs:
            return
        now = time.monotonic()
        point = {
            "step": state.global_step,
            **{k: v for k, v in logs.items() if isinstance(v, int | float)},
        }
        tokens = logs.get("num_tokens")
        if tokens is not None and self._last is not None and now > self._last[0]:
            point["tokens_per_second"] = (tokens - self._last[1]) / (now - self._last[0])
        if tokens is not None:
            self._last = (now, tokens)
        self.points.append(point)

    def write(self, directory: str | os.PathLike) -> Path | None:
        """Plot the four curves to ``directory/training_curves.png`` (None when nothing was logged)."""
        if not self.points:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        panels = [
            ("loss", "loss"),
            ("learning_rate", "learning rate"),
            ("tokens_per_second", "tokens/s"),
            ("seq_length", "mean sequence length"),
        ]
        fig, axes = plt.subplots(2, 2, figsize=(10, 6), constrained_layout=True)
        for ax, (key, title) in zip(axes.flat, panels, strict=True):
            xs = [p["step"] for p in self.points if key in p]
            ax.plot(
                xs, [p[key] for p in self.points if key in p], marker="." if len(xs) < 50 else None
            )
            ax.set_title(title)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
        path = Path(directory) / CURVES_PNG
        fig.savefig(path, dpi=80)
        plt.close(fig)
        return path
