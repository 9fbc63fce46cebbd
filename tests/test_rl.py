"""`ovr-train rl`: the tiny recipe learns, resumes after a SIGKILL, and leaves a servable checkpoint;
plus unit tests of the pieces (dynamic sampling, reflection counts, truncation, data rules, recipes).

The slow tests share one real run of ``recipes/tiny-rl.yaml`` (TRL GRPO + colocated vLLM on CPU),
SIGKILLed after its step-10 checkpoint and resumed to the end, each in a subprocess (one vLLM
engine at a time). Its curve is kept in ``artifacts/tiny-rl/``; the served checkpoint must count
unseen images better than any answer that ignores the image.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from ovr_train.configs import RLScriptArguments
from ovr_train.recipe import apply_schedule, length_at, parse_length_curriculum
from ovr_train.rl.data import build_rl_dataset
from ovr_train.rl.dynamic_sampling import (
    concat_rollouts,
    group_advantages,
    informative_groups,
    refill_seed,
    select_rows,
)
from ovr_train.rl.rewards import as_trl_reward
from ovr_train.rl.train import parse_args
from ovr_train.rl.trainer import reflection_counts
from tests.helpers.rl_runs import (
    RUN_TIMEOUT,
    history,
    killed_and_resumed,
    record_figures,
    runs_a_training,
    seed_overrides,
    served_counting_accuracy,
)

ROOT = Path(__file__).resolve().parent.parent
TINY = str(ROOT / "recipes" / "tiny-rl.yaml")
BIG = str(ROOT / "recipes" / "ovr-7b-rl.yaml")
ARTIFACTS = ROOT / "artifacts" / "tiny-rl"
STEPS, SAVE_EVERY = 40, 10


@pytest.fixture(scope="module")
def tiny_rl_run(tmp_path_factory):
    """The tiny RL recipe: killed (SIGKILL) at step 12, then resumed to step 40. Returns the dir."""
    out = tmp_path_factory.mktemp("tiny-rl")
    args = ["--config", TINY, f"output_dir={out}", f"max_steps={STEPS}", f"save_steps={SAVE_EVERY}"]
    killed_and_resumed(args + seed_overrides(), out, SAVE_EVERY, timeout=RUN_TIMEOUT)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for name in ("rl_curves.png", "trainer_state.json"):
        shutil.copy(out / name, ARTIFACTS / name)
    return out


@pytest.mark.slow
@runs_a_training
def test_tiny_rl_accuracy_rises_beyond_noise(tiny_rl_run):
    """Sampled accuracy (temperature 1) of the first 3 steps vs the last 10, fixed seed.

    Each step scores >= 64 rollouts of 8 prompts; counting prompts as the unit (groups are
    correlated), the standard error of a 3-step mean is <= 0.10 and of a 10-step mean <= 0.06.
    The end level must pass 0.5: a policy that ignores the image can score at most the share of
    the commonest gold answer (~0.36 for counts 1..3), so the rise is not just learning the range.

    Spread (scripts/learning-spread.py; OVR_TEST_SEED reseeds the tiny model, data and run): 2 runs so far: seed 0 (AVX-512)
    0.23 -> 0.92 (rise 0.69); seed 1 0.07 -> 0.29 (rise 0.22: its tiny model starts near 0.08 and
    neither GRPO nor PPO learns to count with it in 40 steps, issue 20's closing note). The
    threshold holds for the default seed; logprob drift max 0.0016 / 0.0045 (threshold 0.02).
    """
    acc = {
        e["step"]: e["rewards/accuracy/mean"]
        for e in history(tiny_rl_run)
        if "rewards/accuracy/mean" in e
    }
    assert sorted(acc) == list(range(1, STEPS + 1))
    start = sum(acc[s] for s in (1, 2, 3)) / 3
    end = sum(acc[s] for s in range(STEPS - 9, STEPS + 1)) / 10
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "accuracy.json").write_text(
        json.dumps({"start": start, "end": end, "per_step": acc})
    )
    record_figures("tiny_rl_accuracy", start=start, end=end, rise=end - start)
    assert end >= start + 0.3 and end >= 0.5, f"accuracy {start:.3f} -> {end:.3f}"


@pytest.mark.slow
@runs_a_training
def test_tiny_rl_logs_the_rl_dynamics_and_plots_them(tiny_rl_run):
    last = [e for e in history(tiny_rl_run) if "loss" in e][-1]
    for key in (
        "rewards/accuracy/mean",
        "rewards/format/mean",
        "completions/mean_length",
        "completions/max_length",
        "completions/clipped_ratio",
        "dynamic_sampling/filtered_fraction",
        "entropy",
        "reflection/backtracking",
        "reflection/visual_reflection",
    ):
        assert key in last, key
    assert (tiny_rl_run / "rl_curves.png").stat().st_size > 10_000
    assert (tiny_rl_run / f"checkpoint-{STEPS}" / "rl_curves.png").exists()
    assert list((tiny_rl_run / "runs").rglob("events.out.tfevents.*")), "TensorBoard events"
    # vLLM sampled from the trained weights: its logprobs match the trainer's all along
    drift = [
        e["sampling/sampling_logp_difference/mean"] for e in history(tiny_rl_run) if "loss" in e
    ]
    record_figures("tiny_rl_logp_drift", max_drift=max(drift))
    assert max(drift) < 0.02


@pytest.mark.slow
@runs_a_training
def test_length_curriculum_runs_both_stages_in_one_command_across_the_resume(tiny_rl_run):
    """recipes/tiny-rl.yaml's two stages (44 tokens to step 10, then 48): the run killed at step
    12 resumed from checkpoint-10 into the second stage; no completion of stage one is longer."""
    logged = {e["step"]: e for e in history(tiny_rl_run) if "loss" in e}
    lengths = {step: e["curriculum/max_completion_length"] for step, e in logged.items()}
    assert lengths == {s: 44.0 if s <= 10 else 48.0 for s in range(1, STEPS + 1)}
    assert max(logged[s]["completions/max_length"] for s in range(1, 11)) <= 44


@pytest.mark.slow
@runs_a_training
def test_resume_after_kill_continues_at_the_checkpoint_step(tiny_rl_run):
    steps = [e["step"] for e in history(tiny_rl_run) if "loss" in e]
    assert steps == list(range(1, STEPS + 1)), "each step logged once: resumed at step 11"
    state = json.loads((tiny_rl_run / "trainer_state.json").read_text())
    assert state["global_step"] == STEPS


@pytest.mark.slow
@runs_a_training
def test_rl_checkpoint_is_served_by_ovr_serve_and_counts_unseen_images(tiny_rl_run, tmp_path):
    """The final checkpoint, served as-is by ovr-serve, answers new counting images (a seed the
    run never drew) through the openai client, greedy. A model that ignored the image could score
    at most the commonest answer's share; the trained one must beat that by 0.3.

    Spread: seed 0 60/60 (margin 0.53 over the commonest answer); seed 1
    0.43 (margin 0.0: the run that did not learn)."""
    from collections import Counter

    accuracy, commonest, answers = served_counting_accuracy(tiny_rl_run, tmp_path)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "unseen.json").write_text(
        json.dumps({"accuracy": accuracy, "commonest_share": commonest, "answers": answers})
    )
    record_figures("tiny_rl_served", accuracy=accuracy, margin=accuracy - commonest)
    assert accuracy >= commonest + 0.3, (accuracy, commonest, Counter(answers))


# ---- units -----------------------------------------------------------------------------------


def test_informative_groups_are_those_with_unequal_rewards():
    adv = torch.tensor([0.0, 0.0, 0.7, -0.7, 0.0, 0.0])
    assert informative_groups(adv, 2).tolist() == [False, True, False]


def _rollouts(prompt_width, completion_width, rows, start):
    ids = torch.arange(start, start + rows)[:, None]
    return {
        "prompt_ids": ids.expand(rows, prompt_width).clone(),
        "prompt_mask": torch.ones(rows, prompt_width, dtype=torch.long),
        "completion_ids": ids.expand(rows, completion_width).clone(),
        "completion_mask": torch.ones(rows, completion_width, dtype=torch.long),
        "mm_token_type_ids": torch.ones(rows, prompt_width + completion_width, dtype=torch.long),
        "advantages": ids[:, 0].float(),
        "num_items_in_batch": torch.tensor(rows * completion_width),
        "num_images": [0] * rows,
    }


def test_rollout_batches_of_different_widths_concatenate_and_select_rows():
    merged = concat_rollouts([_rollouts(3, 2, 2, 10), _rollouts(5, 4, 2, 20)], pad_token_id=0)
    picked = select_rows(merged, torch.tensor([1, 2]))
    assert picked["prompt_ids"].tolist() == [[0, 0, 11, 11, 11], [20] * 5]  # left-padded
    assert picked["prompt_mask"].tolist() == [[0, 0, 1, 1, 1], [1] * 5]
    assert picked["completion_ids"].tolist() == [[11, 11, 0, 0], [20] * 4]  # right-padded
    assert picked["completion_mask"].tolist() == [[1, 1, 0, 0], [1] * 4]
    # prompt part left-padded, completion part right-padded: tokens stay aligned with prompt_ids
    assert picked["mm_token_type_ids"].tolist() == [[0, 0, 1, 1, 1, 1, 1, 0, 0], [1] * 9]
    assert picked["advantages"].tolist() == [11.0, 20.0]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Wait, let me re-check. Wait.", {"backtracking": 2, "verification": 1}),
        ("Let me look at the image again to verify.", {"visual_reflection": 1, "verification": 1}),
        ("The await keyword", {"backtracking": 0}),
    ],
)
def test_reflection_words_are_counted_per_response(text, expected):
    counts = reflection_counts([text, ""])
    for name, n in expected.items():
        assert counts[name] == n / 2


def test_truncated_completions_get_the_truncated_reward():
    reward = as_trl_reward("one", lambda completions, **_: [1.0] * len(completions), 0.0, {99})
    out = reward([[{"content": "a"}], [{"content": "b"}]], completion_ids=[[5, 99], [5, 6]])
    assert out == [1.0, 0.0]
    assert reward.__name__ == "one"


def test_bad_rl_rows_are_counted_and_refused_or_skipped(tmp_path):
    from ovr_train.data import DataError

    good = {"question": "How many?", "answer": "2"}
    rows = [
        good,
        {"question": "No gold"},
        {"answer": "3"},
        {**good, "image": str(tmp_path / "nope.png")},
    ]
    path = tmp_path / "rl.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(
        DataError, match=r"(?s)missing_question\s+1 .*missing_answer\s+1 .*bad_image\s+1 "
    ):
        build_rl_dataset([str(path)], "error", None)
    dataset = build_rl_dataset([str(path)], "skip", None)
    assert len(dataset) == 1 and dataset[0]["answer"] == "2"
    assert dataset[0]["prompt"] == [{"role": "user", "content": "How many?"}]


def test_tiny_recipe_parses_to_trl_settings():
    script_args, args, model_args, _ = parse_args(["--config", TINY, "max_steps=3"])
    assert isinstance(script_args, RLScriptArguments)
    assert args.use_vllm and args.vllm_mode == "colocate" and args.beta == 0.0
    assert script_args.rewards == ["accuracy", "format"] and args.reward_weights == [1.0, 0.0]
    assert args.max_steps == 3 and script_args.dynamic_sampling


def test_7b_recipe_resolves_to_the_published_rl_settings(monkeypatch):
    """Parsed as on a GPU node (bf16 available); not run."""
    pytest.importorskip("deepspeed")
    import transformers.training_args

    monkeypatch.setattr(transformers.training_args, "is_torch_bf16_gpu_available", lambda: True)
    script_args, args, model_args, _ = parse_args(["--config", BIG])
    stages = apply_schedule(script_args, args)
    assert stages == [(300, 24576), (700, 32768), (900, 49152)]  # [paper] 24k -> 32k -> 48k
    assert args.max_completion_length == 49152 and args.vllm_max_model_length >= 49152
    # 512 prompts x 16 per update, counted in traces: here 1 process x 1 x 8192 accumulation
    assert script_args.rollouts_per_update == 8192 and args.per_device_train_batch_size == 1
    assert args.gradient_accumulation_steps * args.world_size == 8192
    assert args.vllm_importance_sampling_mode == "token_truncate"
    assert args.vllm_mode == "server" and not args.log_completions
    assert (args.learning_rate, args.adam_beta1, args.adam_beta2, args.weight_decay) == (
        1e-6,
        0.9,
        0.95,
        0.0,
    )
    assert (args.num_generations, args.temperature, args.top_p, args.beta) == (16, 1.0, 1.0, 0.0)
    assert args.warmup_steps == 50 and args.lr_scheduler_type == "constant_with_warmup"
    assert args.num_iterations == 1 and args.max_steps == 900
    assert script_args.truncated_reward == 0.0 and script_args.rewards[0] == "accuracy"


def test_rl_is_an_ovr_train_command():
    from ovr_train.cli import COMMANDS

    assert COMMANDS["rl"][0] == "ovr_train.rl.train:cli"
    assert COMMANDS["average"][0] == "ovr_train.average:cli"


def test_average_is_the_uniform_mean_and_loads(tiny_model_path, tmp_path):
    from transformers import AutoModelForImageTextToText

    from ovr_train.average import cli

    paths = []
    for i, shift in enumerate((0.0, 0.3, 0.6)):
        model = AutoModelForImageTextToText.from_pretrained(tiny_model_path)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(shift)
        model.save_pretrained(tmp_path / f"ckpt-{i}")
        paths.append(str(tmp_path / f"ckpt-{i}"))
    shutil.copy(Path(tiny_model_path) / "tokenizer.json", tmp_path / "ckpt-0" / "tokenizer.json")
    assert cli([str(tmp_path / "avg"), *paths]) == 0
    base = AutoModelForImageTextToText.from_pretrained(tiny_model_path).state_dict()
    averaged = AutoModelForImageTextToText.from_pretrained(tmp_path / "avg").state_dict()
    for name, value in base.items():
        torch.testing.assert_close(averaged[name], value + 0.3, atol=1e-5, rtol=1e-5)
    assert (tmp_path / "avg" / "tokenizer.json").exists()


def test_a_multiple_choice_row_reaches_the_reward_with_its_choices(tmp_path):
    """Grading columns (choices, precision, …) stay dataset columns, which TRL hands to every
    reward as keyword lists (GRPOTrainer._calculate_rewards: every key but prompt/completion)."""
    from ovr_train.rl.rewards import REWARDS

    row = {
        "question": "Which shape is drawn?",
        "choices": ["circle", "square", "triangle"],
        "answer": "square",
        "precision": 2,
    }
    path = tmp_path / "mc.jsonl"
    path.write_text(json.dumps(row) + "\n" + json.dumps({"question": "1+1?", "answer": "2"}))
    dataset = build_rl_dataset([str(path)], "error", None)
    assert dataset[0]["choices"] == ["circle", "square", "triangle"]
    assert dataset[0]["precision"] == 2 and dataset[1]["choices"] is None
    reward = as_trl_reward("accuracy", REWARDS["accuracy"], None, set())
    inputs = [dataset[0], dataset[0]]
    columns = {k: [x[k] for x in inputs] for k in inputs[0] if k not in ("prompt", "completion")}
    completions = [
        "<think>It has four corners.</think> \\boxed{B}",
        "<think>Round.</think> \\boxed{A}",
    ]
    assert reward(completions, **columns) == [1.0, 0.0]


@pytest.mark.parametrize(
    ("stages", "parsed"),
    [
        (["300:24576", "700:32768", "900:49152"], [(300, 24576), (700, 32768), (900, 49152)]),
        (["10:44", "40:48"], [(10, 44), (40, 48)]),
        ([], []),
    ],
)
def test_length_curriculum_stages_parse(stages, parsed):
    assert parse_length_curriculum(stages) == parsed


@pytest.mark.parametrize("bad", [["300"], ["a:1"], ["700:1", "300:2"], ["300:1", "300:2"]])
def test_malformed_length_curriculum_is_refused_with_the_form(bad):
    with pytest.raises(SystemExit, match="UNTIL_STEP:MAX_LENGTH|increase"):
        parse_length_curriculum(bad)


@pytest.mark.parametrize(
    ("step", "length"),
    [(0, 24576), (299, 24576), (300, 32768), (699, 32768), (700, 49152), (950, 49152)],
)
def test_each_step_trains_at_its_stage_length(step, length):
    """``step`` is the global step before the update (resume from checkpoint-300 -> 32k)."""
    stages = [(300, 24576), (700, 32768), (900, 49152)]
    assert length_at(stages, step) == length


def test_rollouts_per_update_sets_accumulation_or_refuses():
    script_args, args, _, _ = parse_args(
        ["--config", TINY, "rollouts_per_update=128", "per_device_train_batch_size=32"]
    )
    apply_schedule(script_args, args)
    assert args.gradient_accumulation_steps == 4 and args.max_steps == 40
    assert args.max_completion_length == 48  # the tiny curriculum's longest stage
    script_args, args, _, _ = parse_args(
        ["--config", TINY, "rollouts_per_update=100", "per_device_train_batch_size=32"]
    )
    with pytest.raises(SystemExit, match="not a multiple"):
        apply_schedule(script_args, args)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ((0, 0, 0), (0, 0, 1)),
        ((0, 0, 0), (0, 1, 0)),
        ((0, 5, 3), (0, 5, 4)),
        ((1, 0, 0), (0, 0, 0)),
    ],
)
def test_refill_seed_differs_per_process_and_step(a, b):
    assert refill_seed(*a) != refill_seed(*b)
    orders = [
        torch.randperm(50, generator=torch.Generator().manual_seed(refill_seed(*x))) for x in (a, b)
    ]
    assert not torch.equal(*orders), "ranks would refill with the same prompts"


def _image_rollouts(rows, start, patches=4, dim=6):
    out = _rollouts(3, 2, rows, start)
    out["pixel_values"] = (
        torch.arange(rows * patches * dim, dtype=torch.float).view(-1, dim) + start
    )
    out["image_grid_thw"] = torch.tensor([[1, 2, 2]] * rows)
    out["num_images"] = [1] * rows
    return out


@pytest.mark.parametrize("image_first", [False, True])
def test_a_text_round_and_an_image_round_merge_with_their_pixels(image_first):
    """Rounds merge by the union of their keys: a text-only round (no pixel_values) and an image
    round, in either order, keep every image row's pixels and grid."""
    text = _rollouts(3, 2, 2, 10)
    text.pop("num_images")
    image = _image_rollouts(2, 20)
    rounds = [image, text] if image_first else [text, image]
    merged = concat_rollouts(rounds, pad_token_id=0)
    image_rows = [0, 1] if image_first else [2, 3]
    text_row = 2 if image_first else 0
    picked = select_rows(merged, torch.tensor(sorted([text_row, image_rows[1]])))
    assert picked["image_grid_thw"].tolist() == [[1, 2, 2]]
    torch.testing.assert_close(picked["pixel_values"], image["pixel_values"][4:8])
    assert sorted(picked["num_images"]) == [0, 1]
    everything = select_rows(merged, torch.arange(4))
    assert everything["pixel_values"].shape == (8, 6) and everything["image_grid_thw"].shape == (
        2,
        3,
    )


@pytest.mark.parametrize("scale", ["batch", "group", "none"])
def test_merged_rounds_are_scaled_as_one_batch(scale):
    """Advantages of kept groups from two rounds equal those of the same rewards scored as one
    batch (TRL's formula); each round's own scaling would differ under batch scaling."""
    first = torch.tensor([1.0, 0.0, 1.0, 1.0])  # groups of 2: informative, uninformative
    second = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    merged = torch.cat([first, second])
    got = group_advantages(merged, 2, scale)
    grouped = merged.view(-1, 2)
    centred = (grouped - grouped.mean(1, keepdim=True)).reshape(-1)
    std = {
        "batch": merged.std().expand(12),
        "group": grouped.std(1).repeat_interleave(2),
        "none": None,
    }[scale]
    expected = centred if std is None else centred / (std + 1e-4)
    torch.testing.assert_close(got, expected)
    per_round = torch.cat([group_advantages(first, 2, scale), group_advantages(second, 2, scale)])
    if scale == "batch":
        assert not torch.allclose(per_round, got), "rounds scaled by their own batch statistics"
    else:
        torch.testing.assert_close(per_round, got)


def test_unscorable_rewards_are_left_out_and_get_zero_advantage():
    rewards = torch.tensor([1.0, float("nan"), 0.0, 1.0])
    advantages = group_advantages(rewards, 2, "group")
    assert advantages[1] == 0 and advantages[0] == 0  # group of one scorable row: no signal
    assert advantages[2] < 0 < advantages[3]


def test_average_refuses_checkpoints_without_safetensors(tiny_model_path, tmp_path, capsys):
    """A ZeRO-3 checkpoint saved without the 16-bit gather (or as .bin) has no *.safetensors: the
    average would be configs without weights. Refused, saying how to get the weights."""
    from transformers import AutoModelForImageTextToText

    from ovr_train.average import cli

    model = AutoModelForImageTextToText.from_pretrained(tiny_model_path)
    model.save_pretrained(tmp_path / "good")
    (tmp_path / "bin").mkdir()
    shutil.copy(tmp_path / "good" / "config.json", tmp_path / "bin" / "config.json")
    torch.save(model.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    assert cli([str(tmp_path / "avg"), str(tmp_path / "good"), str(tmp_path / "bin")]) == 2
    err = capsys.readouterr().err
    assert "bin" in err and "safetensors" in err and "zero_to_fp32" in err
    assert not (tmp_path / "avg").exists()
