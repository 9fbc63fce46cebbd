"""Multimodal RL with verifiable rewards: TRL's GRPO-family trainer, rollouts from a colocated vLLM.

    ovr-train rl --config recipes/tiny-rl.yaml                          # 2-core CPU, ~1 minute
    ovr-train rl --config recipes/tiny-rl.yaml max_steps=60 --resume
    ovr-train plan --config recipes/ovr-7b-rl.yaml                      # fits? (checked again at start)
    accelerate launch --num_processes 8 --use_deepspeed \\
        --deepspeed_config_file recipes/deepspeed/zero3.json -m ovr_train.rl \\
        --config recipes/ovr-7b-rl.yaml vllm_server_base_url=http://ROLLOUT_NODE:8000

Settings come from the YAML file, then ``key=value`` overrides; the names are those of
`RLScriptArguments` below, TRL's `GRPOConfig` and `ModelConfig`. Data rows are image(s) + question +
gold answer; rewards are registry functions (`ovr_train.rewards`) picked and weighted by the recipe.
What we add to TRL, each at a narrow point: the colocated-vLLM fixes (`ovr_train.vllm_colocate`),
dynamic sampling (`ovr_train.rl_sampling`), the length curriculum (stages by step, so one command
resumes across them), behaviour-phrase counts (the rules of `ovr-eval behaviours`) and RL curves in
the logs, safe checkpoints and resume (`ovr_train.training_common`). The output directory is servable as is:
``ovr-serve --model OUTPUT_DIR``.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

from trl import GRPOConfig, GRPOTrainer, ModelConfig

from ovr_core.behaviours import BEHAVIOURS, count_behaviours
from ovr_train.data import load_rows
from ovr_train.ppo import PPOArguments, select_trainer
from ovr_train.rl_sampling import DynamicSampling
from ovr_train.training_common import (
    END_TOKENS,
    SafeCheckpoints,
    TrainingCurves,
    load_policy,
    parse_recipe_args,
    render_config,
    resolve_config,
    train_and_save,
)

logger = logging.getLogger("ovr_train.rl")
VISION_TOKENS = (
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
TINY_COLDSTARTED = "tiny-coldstarted"  # the test model that already learned the OVR format


@dataclass
class RLScriptArguments(PPOArguments):
    """What RL adds to TRL's settings: data, rewards, dynamic sampling, freezing, resume."""

    dataset: list[str] = field(
        default_factory=list,
        metadata={
            "help": "RL files (.jsonl/.json/.parquet: question, answer, optional image/images paths) "
            "or hub datasets; 'synthetic-shapes:N' draws N shape-counting images (ovr_core.synthetic)"
        },
    )
    rewards: list[str] = field(
        default_factory=lambda: ["accuracy"],
        metadata={
            "help": "reward functions by registry name; weights in GRPOConfig.reward_weights"
        },
    )
    truncated_reward: float | None = field(
        default=0.0,
        metadata={
            "help": "reward of every function for a completion cut off at max_completion_length "
            "(paper: 0); null leaves rewards as computed"
        },
    )
    dynamic_sampling: bool = field(
        default=True,
        metadata={"help": "drop groups whose rewards are all equal and refill the batch (DAPO)"},
    )
    max_refills: int = field(
        default=4, metadata={"help": "rollout rounds at most per batch to refill dropped groups"}
    )
    on_bad_rows: str = field(
        default="error",
        metadata={
            "help": "'error' refuses bad data, 'skip' drops it with a count",
            "choices": ["error", "skip"],
        },
    )
    max_rows: int | None = field(default=None, metadata={"help": "use only the first N rows"})
    freeze_vision: bool = field(
        default=True,
        metadata={"help": "freeze the vision tower and projector (the paper tunes the LLM)"},
    )
    resume: bool = field(
        default=False,
        metadata={"help": "continue from the newest complete checkpoint in output_dir"},
    )
    synthetic_seed: int = field(default=0, metadata={"help": "seed of 'synthetic-shapes:N' data"})
    rollouts_per_update: int | None = field(
        default=None,
        metadata={
            "help": "batch size as the paper counts it: rollouts (prompts x num_generations) per "
            "policy update, whatever the number of GPUs; sets gradient_accumulation_steps"
        },
    )
    length_curriculum: list[str] = field(
        default_factory=list,
        metadata={
            "help": "length stages 'UNTIL_STEP:MAX_COMPLETION_LENGTH' in order, run by one command "
            "(resume continues in the right stage); max_steps defaults to the last stage's end"
        },
    )
    vllm_cpu_kvcache_gib: int = field(
        default=1, metadata={"help": "vLLM KV cache on CPU, GiB (VLLM_CPU_KVCACHE_SPACE); CPU only"}
    )


def main(
    script_args: RLScriptArguments,
    training_args: GRPOConfig,
    model_args: ModelConfig,
    callbacks: list | None = None,
) -> str:
    """Train with RL, then write a servable checkpoint to ``training_args.output_dir``; returns it."""
    import os

    import torch
    from transformers import AutoProcessor
    from transformers.trainer_utils import set_seed

    from ovr_train.plan import check_before_training
    from ovr_train.rollout_pool import check_rollout_servers

    # logging: the whole resolved configuration, printed and saved beside every checkpoint
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    set_seed(training_args.seed)
    stages = apply_schedule(script_args, training_args)
    check_before_training("rl", script_args, training_args, model_args)
    check_rollout_servers(training_args)  # server mode: reachable, one model, long enough
    model_args.model_name_or_path = resolve_model(model_args.model_name_or_path)
    resolved = resolve_config(script_args, training_args, model_args)
    if training_args.process_index == 0:
        logger.info("resolved config:\n%s", render_config(resolved))
    if not torch.cuda.is_available():
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(script_args.vllm_cpu_kvcache_gib))

    # data: image(s) + question as a chat prompt; gold answer and grading columns for the rewards
    train_dataset = build_rl_dataset(
        materialise_sources(script_args, training_args.output_dir),
        script_args.on_bad_rows,
        script_args.max_rows,
    )
    logger.info("data: %d prompts", len(train_dataset))

    # model: Qwen2.5-VL, vision tower + projector frozen by default
    model = load_policy(model_args, script_args.freeze_vision, logger)
    processor = AutoProcessor.from_pretrained(model_args.model_name_or_path, padding_side="left")

    # rewards: registry functions, truncated completions scored as the recipe says
    tokenizer = processor.tokenizer
    end_ids = {tokenizer.convert_tokens_to_ids(t) for t in END_TOKENS}
    reward_funcs = reward_functions(script_args.rewards, script_args.truncated_reward, end_ids)

    # trainer: TRL's GRPOTrainer + our fixes, dynamic sampling and the length curriculum
    trainer_class, algorithm_kwargs = select_trainer(OVRRLTrainer, script_args)  # grpo | ppo
    trainer = trainer_class(
        model=model,
        reward_funcs=reward_funcs,
        args=training_args,
        train_dataset=train_dataset,
        processing_class=processor,
        callbacks=[RLCurves(), *(callbacks or [])],
        resolved_config=resolved,
        dynamic_sampling=script_args.dynamic_sampling,
        max_refills=script_args.max_refills,
        refill_seed=training_args.seed,
        length_stages=stages,
        **algorithm_kwargs,
    )

    # train (resuming across curriculum stages when asked), then save a servable checkpoint
    return train_and_save(trainer, processor, script_args.resume, resolved, logger)


def apply_schedule(script_args: RLScriptArguments, training_args: GRPOConfig) -> list[tuple]:
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


def resolve_model(name: str) -> str:
    """A model path; ``tiny-coldstarted`` is the format-trained test model (built on first use)."""
    from ovr_train import sft

    if name == TINY_COLDSTARTED:
        from ovr_train.tiny_model import cached_tiny_model

        return str(cached_tiny_model())
    return sft.resolve_model(name)


class OVRRLTrainer(SafeCheckpoints, DynamicSampling, GRPOTrainer):
    """TRL's GRPOTrainer with safe checkpoints, dynamic sampling, the colocated-vLLM fixes and
    reflection-word counts."""

    def __init__(self, *args, length_stages: list[tuple[int, int]] | None = None, **kwargs):
        from ovr_train.rollout_pool import serving_pool

        self.length_stages = list(length_stages or [])
        with serving_pool():  # server mode: rollouts on every server of vllm_server_base_url
            super().__init__(*args, **kwargs)
        if self.use_vllm:
            from ovr_train.vllm_colocate import fix_colocated_vllm

            image_token_id = getattr(self.processing_class, "image_token_id", None)
            if fix_colocated_vllm(self.vllm_generation, image_token_id):
                logger.info(
                    "colocated vLLM: engine-reload weight sync, prompt-token check installed"
                )
            # A policy that samples an image placeholder breaks the scoring forward pass ("Image
            # features and image tokens do not match") and can never be right: never sample them.
            tokenizer = self._tokenizer
            banned = {tokenizer.convert_tokens_to_ids(t) for t in VISION_TOKENS} - {
                None,
                tokenizer.unk_token_id,
            }
            kwargs = dict(self.vllm_generation.generation_kwargs or {})
            kwargs["logit_bias"] = {
                **kwargs.get("logit_bias", {}),
                **{int(t): -100.0 for t in banned},
            }
            self.vllm_generation.generation_kwargs = kwargs

    def _generate_and_score_completions(self, inputs):
        if self.model.training and self.length_stages:
            self.set_max_completion_length(length_at(self.length_stages, self.state.global_step))
        out = super()._generate_and_score_completions(inputs)
        if self.model.training:
            texts = self._tokenizer.batch_decode(
                [
                    ids[mask.bool()]
                    for ids, mask in zip(out["completion_ids"], out["completion_mask"], strict=True)
                ],
                skip_special_tokens=True,
            )
            for name, value in reflection_counts(texts).items():
                self._metrics["train"][f"reflection/{name}"].append(value)
        return out

    def set_max_completion_length(self, length: int) -> None:
        """Generate (and normalise, for Dr. GRPO) at most ``length`` tokens from now on: one
        curriculum stage; resume lands in the right stage because it follows the global step."""
        if length != self.max_completion_length:
            logger.info(
                "length curriculum: max_completion_length %d from step %d",
                length,
                self.state.global_step + 1,
            )
        self.max_completion_length = length
        if self.use_vllm:
            self.vllm_generation.max_completion_length = length
        else:
            self.generation_config.max_new_tokens = length
        self._metrics["train"]["curriculum/max_completion_length"].append(float(length))


def reflection_counts(texts: list[str]) -> dict[str, float]:
    """Mean matches per completion of each cognitive behaviour's phrases ("wait", "let me
    re-check", "look at the image again", …): a cheap live proxy for what ``ovr-eval behaviours``
    measures, from the same rules (``ovr_core.behaviours``)."""
    totals = dict.fromkeys(BEHAVIOURS, 0)
    for text in texts:
        for name, n in count_behaviours(text).items():
            totals[name] += n
    return {name: total / max(len(texts), 1) for name, total in totals.items()}


def reward_functions(names: list[str], truncated_reward: float | None, end_ids: set[int]) -> list:
    """The named registry rewards as TRL reward functions (text completions, gold in ``answer``)."""
    registry = reward_registry()
    unknown = [n for n in names if n not in registry]
    if unknown:
        raise SystemExit(f"ovr-train rl: unknown rewards {unknown}; known: {sorted(registry)}")
    return [_as_trl_reward(name, registry[name], truncated_reward, end_ids) for name in names]


def reward_registry() -> dict:
    """``ovr_train.rewards.REWARDS`` (name -> pure function ``(completions, **columns) -> floats``)."""
    from ovr_train import rewards

    return rewards.REWARDS


def _as_trl_reward(name: str, func, truncated_reward: float | None, end_ids: set[int]):
    def reward(completions, completion_ids=None, **columns):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        values = list(func(texts, **columns))
        if truncated_reward is not None and completion_ids is not None:
            values = [
                truncated_reward if ids and ids[-1] not in end_ids else v
                for v, ids in zip(values, completion_ids, strict=True)
            ]
        return values

    reward.__name__ = name  # TRL logs rewards/<name>/mean
    return reward


def build_rl_dataset(sources: list[str], on_bad_rows: str, max_rows: int | None):
    """A datasets.Dataset of ``prompt`` (chat, image parts first), ``images``, ``answer`` and every
    other column of the rows (``choices``, ``precision``, …), which TRL hands to the rewards.

    Rows with no question, no gold answer, or an image that does not load are counted per rule
    (`ovr_train.data.Report`); they refuse the data (``error``) or are dropped with the count
    logged (``skip``).
    """
    from datasets import Dataset, Image, Sequence

    from ovr_train.data import DataError, Report

    report = Report()
    rows = [
        row
        for source in sources
        for number, raw in enumerate(load_rows(source), start=1)
        if (row := rl_row(raw, source, number, report)) is not None
    ]
    if report.bad_rows:
        if on_bad_rows == "error":
            raise DataError(f"bad RL rows (on_bad_rows=skip drops them): {report.render()}")
        logger.warning("skipped bad RL rows: %s", report.render())
    if max_rows is not None:
        rows = rows[:max_rows]
    if not rows:
        raise SystemExit("ovr-train rl: no data; set dataset: [FILE, …] in the recipe")
    columns = list(dict.fromkeys(key for row in rows for key in row))
    try:
        dataset = Dataset.from_list([{key: row.get(key) for key in columns} for row in rows])
    except (TypeError, ValueError) as exc:  # pyarrow: one column with values of several types
        raise DataError(
            f"RL data columns of mixed types ({exc}); make each column one type"
        ) from None
    if any(r["images"] for r in rows):
        dataset = dataset.cast_column("images", Sequence(Image()))
    else:
        dataset = dataset.remove_columns("images")
    return dataset


QUESTION_KEYS = ("question", "problem", "prompt")
ANSWER_KEYS = ("answer", "gold", "solution")


def rl_row(raw: dict, source: str, number: int, report) -> dict | None:
    """One RL training row, or None with its broken rules counted in ``report``."""
    from ovr_train.data import image_loads, images_of, with_images

    raw = raw if isinstance(raw, dict) else {}
    report.rows += 1
    question = str(next((raw[k] for k in QUESTION_KEYS if raw.get(k)), "")).strip()
    answer = str(next((raw[k] for k in ANSWER_KEYS if raw.get(k)), "")).strip()
    images = images_of(raw)
    failed = [
        rule
        for rule, broken in (
            ("missing_question", not question),
            ("missing_answer", not answer),
            ("bad_image", any(not image_loads(i) for i in images)),
        )
        if broken
    ]
    for rule in failed:
        report.add(rule, source, number)
    if failed:
        return None
    consumed = {*QUESTION_KEYS, *ANSWER_KEYS, "image", "images"}
    return {
        "prompt": [{"role": "user", "content": with_images(question, raw)}],
        "images": [str(i) for i in images],
        "answer": answer,
        **{key: value for key, value in raw.items() if key not in consumed},
    }


def materialise_sources(script_args: RLScriptArguments, output_dir: str) -> list[str]:
    """Data sources as paths; 'synthetic-shapes:N' is drawn once to ``output_dir/data/``."""
    from ovr_core.synthetic import shape_counting_examples
    from ovr_train.data import write_jsonl

    sources = []
    for source in script_args.dataset:
        if source.startswith("synthetic-shapes:"):
            n = int(source.split(":", 1)[1])
            stem = Path(output_dir) / "data" / f"shapes2x2-{n}-seed{script_args.synthetic_seed}"
            path = stem.with_suffix(".jsonl")
            if not path.exists():
                stem.mkdir(parents=True, exist_ok=True)
                rows = []
                for i, ex in enumerate(shape_counting_examples(n, seed=script_args.synthetic_seed)):
                    image = stem / f"{i:05d}.png"
                    ex["image"].save(image)
                    rows.append(
                        {
                            "image": str(image.resolve()),
                            "question": ex["question"],
                            "answer": ex["gold"],
                        }
                    )
                write_jsonl(rows, path.with_suffix(".tmp")).replace(path)
            source = str(path)
        sources.append(source)
    return sources


class RLCurves(TrainingCurves):
    """The RL dynamics as a PNG beside each checkpoint: rewards, lengths, truncation, filtering,
    entropy, reflection words, loss."""

    PANELS = [
        ("rewards", "reward per function (mean)"),
        ("completions/mean_length", "response length (mean, max)"),
        ("completions/clipped_ratio", "truncation ratio"),
        ("dynamic_sampling/filtered_fraction", "filtered fraction (all-equal groups)"),
        ("entropy", "entropy"),
        ("reflection", "behaviour phrases per response (ovr_core.behaviours)"),
        ("loss", "loss"),
        ("learning_rate", "learning rate"),
    ]

    def write(self, directory):
        if not self.points:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(2, 4, figsize=(16, 6), constrained_layout=True)
        for ax, (key, title) in zip(axes.flat, self.PANELS, strict=True):
            if key in ("rewards", "reflection"):
                series = sorted({k for p in self.points for k in p if _is_series(k, key)})
            elif key == "completions/mean_length":
                series = [key, "completions/max_length"]
            else:
                series = [key]
            for name in series:
                xs = [p["step"] for p in self.points if name in p]
                ax.plot(
                    xs,
                    [p[name] for p in self.points if name in p],
                    label=name.split("/")[-2 if name.endswith("/mean") else -1],
                )
            if len(series) > 1:
                ax.legend(fontsize=7)
            ax.set_title(title)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
        path = Path(directory) / "rl_curves.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        return path


def _is_series(name: str, panel: str) -> bool:
    if panel == "rewards":
        return name.startswith("rewards/") and name.endswith("/mean")
    return name.startswith(panel + "/")


def parse_args(argv: list[str]) -> tuple[RLScriptArguments, GRPOConfig, ModelConfig]:
    """``--config YAML`` plus ``key=value`` / ``--key value`` overrides, through TRL's parser."""
    return parse_recipe_args((RLScriptArguments, GRPOConfig, ModelConfig), argv, "ovr-train rl")


def cli(argv: list[str]) -> int:
    """``ovr-train rl --config RECIPE [key=value …]``."""
    main(*parse_args(argv))
    return 0


if __name__ == "__main__":  # `accelerate launch -m ovr_train.rl …`
    sys.exit(cli(sys.argv[1:]))
