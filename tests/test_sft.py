"""`ovr-train sft`: real TRL training of the tiny Qwen2.5-VL on CPU.

The tiny recipe teaches the untrained model the OVR format (loss falls, weights move, the vision
tower stays frozen) and leaves a directory that ovr-serve serves; a SIGKILLed run resumes at the
step of its last checkpoint with the same data order; a save that dies half way leaves no
directory that looks like a checkpoint; the 7B recipe resolves to a valid TRL config.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ovr_train.checkpoints import RESOLVED_CONFIG, last_complete_checkpoint
from ovr_train.curves import CURVES_PNG
from ovr_train.sft import main, parse_args
from tests.helpers.rl_runs import SEED, record_figures, seed_overrides

ROOT = Path(__file__).resolve().parent.parent
TINY = str(ROOT / "recipes" / "tiny-coldstart.yaml")
BIG = str(ROOT / "recipes" / "ovr-7b-coldstart.yaml")
# A short run for resume tests: 12 steps, a checkpoint every 3, a log line every step.
SHORT = [
    "dataset=synthetic:300",
    "max_steps=12",
    "save_steps=3",
    "logging_steps=1",
    "max_length=256",
    "report_to=none",
    "save_total_limit=10",
]


def _losses(output_dir) -> dict[int, float]:
    history = json.loads((Path(output_dir) / "trainer_state.json").read_text())["log_history"]
    return {entry["step"]: entry["loss"] for entry in history if "loss" in entry}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The tiny recipe as shipped, run once for the module; returns its output directory."""
    out = tmp_path_factory.mktemp("tiny-coldstart")
    main(*parse_args(["--config", TINY, f"output_dir={out}", *seed_overrides(data=False)]))
    return out


@pytest.mark.slow
def test_tiny_recipe_trains_loss_falls_and_weights_move(tiny_run):
    """The first logged loss is over 3 and the last under a quarter of it; every language weight
    moves, no vision weight does. Spread of last/first: 0.118 (seed 0, AVX-512; threshold 0.25). Only one seed was measured
    this session: issue 20's closing note."""
    from safetensors.torch import load_file

    from ovr_train.recipe import resolve_model

    losses = list(_losses(tiny_run).values())
    assert len(losses) >= 10
    record_figures("tiny_sft_loss", first=losses[0], last=losses[-1], ratio=losses[-1] / losses[0])
    assert losses[0] > 3.0 and losses[-1] < losses[0] / 4, losses
    before = load_file(Path(resolve_model("tiny-random")) / "model.safetensors")
    after = load_file(tiny_run / "model.safetensors")
    assert before.keys() == after.keys()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    language = {k for k in before if "visual" not in k}
    vision = {k for k in before if "visual" in k}
    assert vision and not (moved & vision), "vision tower/projector must stay frozen"
    assert len(moved & language) >= 0.9 * len(language)


@pytest.mark.slow
def test_tiny_recipe_output_is_a_complete_servable_checkpoint(tiny_run):
    from transformers import AutoProcessor, AutoTokenizer

    for name in (
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "chat_template.jinja",
        "tokenizer.json",
        "processor_config.json",
        "trainer_state.json",
        RESOLVED_CONFIG,
        CURVES_PNG,
    ):
        assert (tiny_run / name).is_file(), name
    assert not [p for p in tiny_run.iterdir() if p.name.startswith(".staging")]
    tokenizer = AutoTokenizer.from_pretrained(tiny_run)
    generation = json.loads((tiny_run / "generation_config.json").read_text())
    assert generation["eos_token_id"] == tokenizer.convert_tokens_to_ids(
        ["<|im_end|>", "<|endoftext|>"]
    )
    assert AutoProcessor.from_pretrained(tiny_run).chat_template
    resolved = json.loads((tiny_run / RESOLVED_CONFIG).read_text())
    assert resolved["SFTConfig"]["learning_rate"] == 3e-3
    assert resolved["SFTScriptArguments"]["dataset"] == ["synthetic:1000"]
    checkpoint = last_complete_checkpoint(tiny_run)
    assert checkpoint and (Path(checkpoint) / RESOLVED_CONFIG).is_file()


@pytest.mark.slow
def test_intermediate_checkpoints_are_servable_as_is(tiny_run):
    """A checkpoint-N (the trainer only held the tokenizer) loads as ovr-serve loads a model: the
    full processor with its image processor and chat template, the weights, the end tokens."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    checkpoint = Path(last_complete_checkpoint(tiny_run))
    processor = AutoProcessor.from_pretrained(checkpoint)
    assert processor.chat_template and processor.image_processor is not None
    assert (checkpoint / "preprocessor_config.json").exists() or (
        checkpoint / "processor_config.json"
    ).exists()
    model = AutoModelForImageTextToText.from_pretrained(checkpoint, dtype=torch.float32)
    generation = json.loads((checkpoint / "generation_config.json").read_text())
    assert generation["eos_token_id"] == processor.tokenizer.convert_tokens_to_ids(
        ["<|im_end|>", "<|endoftext|>"]
    )
    ids = processor.apply_chat_template(
        [{"role": "user", "content": "1+1?"}], add_generation_prompt=True, tokenize=True,
        return_tensors="pt", return_dict=True,
    )  # fmt: skip
    assert (
        model.generate(**ids, max_new_tokens=4, do_sample=False).shape[1]
        > ids["input_ids"].shape[1]
    )


@pytest.mark.slow
def test_tiny_recipe_teaches_the_format(tiny_run):
    """Greedy answers to unseen questions: <think>…</think> then a boxed answer, at least 5 of 6.
    Spread: 6/6 (seed 0, AVX-512).
    Only one seed was measured this session."""
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    from ovr_core.format import is_well_formed
    from ovr_core.synthetic import reasoning_examples

    tokenizer = AutoTokenizer.from_pretrained(tiny_run)
    model = AutoModelForImageTextToText.from_pretrained(tiny_run, dtype=torch.float32).eval()
    questions = [ex["question"] for ex in reasoning_examples(6, seed=999 + SEED)]
    well_formed = 0
    for question in questions:
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        )
        out = model.generate(**ids, max_new_tokens=80, do_sample=False)
        text = tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
        well_formed += is_well_formed(text)
    record_figures("tiny_sft_format", well_formed=well_formed)
    assert well_formed >= 5, f"{well_formed}/6 well formed"


@pytest.mark.slow
def test_output_checkpoint_is_served_by_ovr_serve(tiny_run, tmp_path):
    from openai import OpenAI

    from ovr_serve.config import ServeConfig
    from ovr_serve.launch import start_server
    from tests.conftest import free_port

    cfg = ServeConfig(model=str(tiny_run), port=free_port(), cpu_kvcache_gib=1, startup_timeout=600)
    with start_server(cfg, log_path=tmp_path / "serve.log") as handle:
        client = OpenAI(base_url=handle.base_url, api_key="none")
        reply = client.chat.completions.create(
            model=cfg.served_model_name,
            messages=[{"role": "user", "content": "What is 3 + 4?"}],
            max_tokens=80,
            temperature=0,
        )
    message = reply.choices[0].message
    reasoning = getattr(message, "reasoning", None) or getattr(message, "reasoning_content", None)
    assert reasoning and reasoning.strip()
    assert "\\boxed{" in (message.content or "")


@pytest.mark.slow
def test_resume_after_kill_continues_at_the_checkpoint_step_with_the_same_data(tmp_path):
    """SIGKILL at step 8 (last checkpoint: 6); --resume must reproduce the uninterrupted run's losses."""
    killed = tmp_path / "killed"
    run = subprocess.run(
        [sys.executable, "-m", "tests.helpers.train_driver", "--stage", "sft", "--kill-at", "8"]
        + ["--config", TINY, *SHORT, f"output_dir={killed}"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert run.returncode == -signal.SIGKILL, run.stderr[-3000:]
    assert last_complete_checkpoint(killed) == str(killed / "checkpoint-6")
    assert not (killed / "config.json").exists(), "a killed run must not look finished"

    main(*parse_args(["--config", TINY, *SHORT, f"output_dir={killed}", "--resume"]))
    reference = tmp_path / "reference"
    main(*parse_args(["--config", TINY, *SHORT, f"output_dir={reference}"]))

    resumed, uninterrupted = _losses(killed), _losses(reference)
    assert sorted(resumed) == list(range(1, 13))
    for step in range(7, 13):
        assert resumed[step] == pytest.approx(uninterrupted[step], rel=1e-4), step


@pytest.mark.slow
def test_a_save_killed_half_way_leaves_no_checkpoint_that_looks_complete(tmp_path, monkeypatch):
    from transformers import Trainer

    real_save_rng = Trainer._save_rng_state

    def dies_on_second_save(self, output_dir):
        if self.state.global_step == 4:
            raise KeyboardInterrupt("killed while writing checkpoint-4")
        return real_save_rng(self, output_dir)

    monkeypatch.setattr(Trainer, "_save_rng_state", dies_on_second_save)
    args = [
        "--config",
        TINY,
        "dataset=synthetic:120",
        "max_steps=6",
        "save_steps=2",
        "max_length=256",
        "report_to=none",
        f"output_dir={tmp_path}",
    ]
    with pytest.raises(KeyboardInterrupt):
        main(*parse_args(args))
    assert (tmp_path / ".staging-checkpoint-4" / "checkpoint-4" / "model.safetensors").exists()
    assert not (tmp_path / "checkpoint-4").exists()
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-2")

    monkeypatch.setattr(Trainer, "_save_rng_state", real_save_rng)
    main(*parse_args([*args, "--resume"]))
    assert json.loads((tmp_path / "trainer_state.json").read_text())["global_step"] == 6
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".staging")]


def test_deepspeed_configs_are_valid_json_with_the_right_stage():
    for stage in (2, 3):
        config = json.loads((ROOT / "recipes" / "deepspeed" / f"zero{stage}.json").read_text())
        assert config["zero_optimization"]["stage"] == stage
    assert config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True


def test_7b_recipe_resolves_to_the_published_trl_config(monkeypatch):
    """Parsed as on a GPU node (bf16 available); not run."""
    pytest.importorskip("deepspeed")
    import transformers.training_args

    monkeypatch.setattr(transformers.training_args, "is_torch_bf16_gpu_available", lambda: True)
    script_args, args, model_args = parse_args(["--config", BIG])
    assert model_args.model_name_or_path.startswith("Qwen/Qwen2.5-VL-7B")
    assert script_args.dataset == ["Kangheng/OVR-Dataset-ColdStart"] and script_args.freeze_vision
    assert (args.learning_rate, args.num_train_epochs, args.max_length) == (2e-4, 5, 65536)
    assert args.bf16 and args.gradient_checkpointing and args.packing
    assert args.hf_deepspeed_config.config["zero_optimization"]["stage"] == 3
    assert "tensorboard" in args.report_to
    # batch 640 [paper] counted in traces; one packed 64k row per GPU (ovr-train plan)
    assert script_args.traces_per_update == 640 and args.per_device_train_batch_size == 1
    assert args.use_liger_kernel


@pytest.mark.parametrize(
    ("processes", "rows", "tokens", "kept", "packing", "steps"),
    [
        (8, 1, 64_000_000, 10_000, True, 8),  # 6.4k-token traces: ~10 per 64k row x 8 GPUs
        (64, 1, 64_000_000, 10_000, True, 1),  # 8 nodes: same traces per update, fewer steps
        (8, 1, 64_000_000, 10_000, False, 80),  # unpacked: one trace per row
        (8, 2, 640_000_000, 10_000, True, 39),  # 64k traces fill a row each
    ],
)
def test_traces_per_update_sets_accumulation_for_the_gpus(
    processes, rows, tokens, kept, packing, steps, monkeypatch
):
    from types import SimpleNamespace

    from ovr_train.data import Report
    from ovr_train.sft import set_accumulation_for_traces

    args = SimpleNamespace(
        world_size=processes, per_device_train_batch_size=rows, max_length=65536,
        packing=packing, gradient_accumulation_steps=1,
    )  # fmt: skip
    set_accumulation_for_traces(640, args, Report(rows=kept, tokens=tokens))
    assert args.gradient_accumulation_steps == steps


def test_overrides_take_key_value_and_flags():
    script_args, args, _ = parse_args(
        ["--config", TINY, "learning_rate=1e-4", "--max_steps", "7", "on_bad_rows=skip"]
    )
    assert (args.learning_rate, args.max_steps, script_args.on_bad_rows) == (1e-4, 7, "skip")


def test_list_overrides_read_as_in_the_recipe():
    script_args, *_ = parse_args(["--config", TINY, "dataset=[a.jsonl, 'b c.parquet']"])
    assert script_args.dataset == ["a.jsonl", "b c.parquet"]
    script_args, *_ = parse_args(["--config", TINY, "--dataset", "a.jsonl", "b.jsonl"])
    assert script_args.dataset == ["a.jsonl", "b.jsonl"]
    with pytest.raises(SystemExit, match=r"dataset=\[a, b\]"):
        parse_args(["--config", TINY, "dataset=[a.jsonl"])


def test_sft_is_an_ovr_train_command():
    from ovr_train.cli import COMMANDS

    assert COMMANDS["sft"][0] == "ovr_train.sft:cli" and COMMANDS["data"][0] == "ovr_train.data:cli"
    assert os.path.exists(TINY)


def test_upstream_resume_still_misreads_saved_keys(tmp_path):
    """transformers 5.19 saves Qwen2.5-VL under its original key names, which a raw load misses.

    `Trainer._load_from_checkpoint` loads raw; `SafeCheckpoints._load_from_checkpoint` works around
    it. When this test fails, upstream reads its own checkpoints back: remove both.
    """
    from safetensors.torch import load_file
    from transformers import AutoModelForImageTextToText

    from ovr_train.recipe import resolve_model

    model = AutoModelForImageTextToText.from_pretrained(resolve_model("tiny-random"))
    model.save_pretrained(tmp_path)
    result = model.load_state_dict(load_file(tmp_path / "model.safetensors"), strict=False)
    assert result.missing_keys and result.unexpected_keys


@pytest.mark.slow
def test_rows_with_images_train_through_the_processor(tmp_path):
    """Multimodal rows go through TRL's vision path (no packing), images decoded by datasets."""
    from PIL import Image

    from ovr_train.data import write_jsonl

    rows = []
    for i, colour in enumerate(["red", "blue", "green"]):
        Image.new("RGB", (56, 56), colour).save(tmp_path / f"{i}.png")
        rows.append(
            {
                "question": "What colour is this?",
                "reasoning": "I look at the image.",
                "answer": colour,
                "image": str(tmp_path / f"{i}.png"),
            }
        )
    data = write_jsonl(rows * 2, tmp_path / "images.jsonl")
    out = tmp_path / "out"
    main(
        *parse_args(
            [
                "--config",
                TINY,
                f"dataset={data}",
                "max_steps=2",
                "logging_steps=1",
                "report_to=none",
                f"output_dir={out}",
            ]
        )
    )
    losses = _losses(out)
    assert losses and all(0 < loss < 20 for loss in losses.values())
    assert (out / "config.json").is_file()
