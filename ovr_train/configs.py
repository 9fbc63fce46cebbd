"""Every setting of ovr-train's stages, beside TRL's own (`SFTConfig`, `GRPOConfig`, `ModelConfig`):
the only place they are defined. The stages, the plan and the recipes' tests import them from here.
Each field carries its help text (``ovr-train sft --help``, ``ovr-train rl --help``)."""

from __future__ import annotations

from dataclasses import dataclass, field

TINY_RANDOM = "tiny-random"  # model_name_or_path of the tiny cold start: the test model, untrained
TINY_COLDSTARTED = (
    "tiny-coldstarted"  # of the tiny RL recipes: the test model that learned the format
)


@dataclass
class SFTScriptArguments:
    """What the cold start adds to TRL's settings: the data, bad-row policy, freezing, resume."""

    dataset: list[str] = field(
        default_factory=list,
        metadata={
            "help": "training files (.jsonl/.json/.parquet) or hub datasets (name[:split]); "
            "'synthetic:N' generates N arithmetic/counting traces (ovr_core.synthetic)"
        },
    )
    on_bad_rows: str = field(
        default="error",
        metadata={
            "help": "rows that break a data rule: 'error' refuses the data, 'skip' trains without "
            "them and reports how many; never silent",
            "choices": ["error", "skip"],
        },
    )
    max_rows: int | None = field(
        default=None, metadata={"help": "use only the first N rows (smoke runs)"}
    )
    freeze_vision: bool = field(
        default=True,
        metadata={"help": "freeze the vision tower and projector (the cold start is text-only)"},
    )
    resume: bool = field(
        default=False,
        metadata={
            "help": "continue from the newest complete checkpoint in output_dir (same data order)"
        },
    )
    synthetic_seed: int = field(default=0, metadata={"help": "seed of the 'synthetic:N' data"})
    traces_per_update: int | None = field(
        default=None,
        metadata={
            "help": "batch size as the paper counts it: traces per optimizer update, whatever the "
            "number of GPUs; sets gradient_accumulation_steps from the packed rows' mean trace count"
        },
    )
    data_cache_dir: str | None = field(
        default=None,
        metadata={
            "help": "where the prepared (normalised, length-checked) data is cached, read by every "
            "rank; default OUTPUT_DIR/data/prepared"
        },
    )


@dataclass
class RLScriptArguments:
    """What RL adds to TRL's settings: the algorithm, data, rewards, dynamic sampling, freezing,
    resume, the length curriculum. PPO's critic has its own settings (`CriticArguments`)."""

    algorithm: str = field(
        default="grpo",
        metadata={
            "help": "'grpo': group-mean baseline (TRL's GRPO family); 'ppo': a learned critic and "
            "GAE per-token advantages (the OVR paper, after Open-Reasoner-Zero)",
            "choices": ["grpo", "ppo"],
        },
    )
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
    max_pixels: int | None = field(
        default=None,
        metadata={
            "help": "Qwen2.5-VL processor max_pixels for the rollouts: larger images are resized "
            "down to it (ovr-serve's default is 1280 x 28 x 28); null keeps the checkpoint's"
        },
    )


@dataclass
class CriticArguments:
    """PPO only (``algorithm: ppo``): GAE and the critic. A GRPO recipe that sets one is refused."""

    gamma: float = field(default=1.0, metadata={"help": "PPO: GAE discount (paper: 1)"})
    lam: float = field(default=1.0, metadata={"help": "PPO: GAE lambda (paper: 1)"})
    whiten_advantages: bool = field(
        default=False,
        metadata={
            "help": "PPO: normalise the per-token advantages to mean 0, std 1 over the batch"
        },
    )
    critic_learning_rate: float = field(
        default=5e-6, metadata={"help": "PPO: critic learning rate (paper: 5e-6)"}
    )
    critic_warmup_steps: int = field(
        default=0, metadata={"help": "PPO: critic optimizer steps of linear learning-rate warm-up"}
    )
    critic_steps_per_batch: int = field(
        default=1,
        metadata={
            "help": "PPO: critic optimizer steps per rollout batch (each over the whole batch)"
        },
    )
    critic_micro_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "PPO: rollouts per critic forward/backward; default per_device_train_batch_size"
        },
    )
    value_clip: float | None = field(
        default=0.2,
        metadata={
            "help": "PPO: clip each value to within this of its rollout-time value; null: off"
        },
    )
