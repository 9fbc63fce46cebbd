"""PPO (``algorithm: ppo``): GAE against a direct computation, the clipped value loss, the critic
learning the tiny task's returns, and (slow) a tiny PPO run that learns to count, is killed and
resumed with its critic, and is served by ovr-serve."""

from __future__ import annotations

import json
import random
import shutil
import statistics
from pathlib import Path

import pytest
import torch

from ovr_train.rl.critic import (
    explained_variance,
    gae,
    masked_whiten,
    terminal_rewards,
    value_loss,
)
from tests.helpers.rl_runs import (
    RUN_TIMEOUT,
    SEED,
    history,
    killed_and_resumed,
    per_step,
    record_figures,
    runs_a_training,
    seed_overrides,
    served_counting_accuracy,
)

ROOT = Path(__file__).resolve().parent.parent
TINY = str(ROOT / "recipes" / "tiny-rl.yaml")
TINY_PPO = str(ROOT / "recipes" / "tiny-rl-ppo.yaml")
BIG_PPO = str(ROOT / "recipes" / "ovr-7b-rl-ppo.yaml")
ARTIFACTS = ROOT / "artifacts" / "tiny-rl-ppo"
STEPS, SAVE_EVERY = 40, 10
RESUMED_CRITIC = ".critic-after-resume.safetensors"  # beside output_dir: not in the served dir


def _right_padded_mask(lengths: list[int], width: int) -> torch.Tensor:
    return torch.tensor([[1] * n + [0] * (width - n) for n in lengths])


def _reference_gae(rewards, values, lengths, gamma, lam):
    """GAE written out per sequence from its definition: A_t = sum_l (gamma lam)^l delta_{t+l}."""
    advantages = torch.zeros_like(values)
    for b, n in enumerate(lengths):
        v = [float(values[b, t]) for t in range(n)] + [0.0]  # the episode ends after token n-1
        deltas = [float(rewards[b, t]) + gamma * v[t + 1] - v[t] for t in range(n)]
        for t in range(n):
            advantages[b, t] = sum((gamma * lam) ** k * deltas[t + k] for k in range(n - t))
    return advantages


@pytest.mark.parametrize(
    ("gamma", "lam"),
    [(1.0, 1.0), (1.0, 0.95), (0.99, 0.95), (random.Random(7).random(), random.Random(8).random())],
    ids=["paper-1-1", "openrlhf-defaults", "classic", "random"],
)
def test_gae_matches_the_definition(gamma, lam):
    gen = torch.Generator().manual_seed(0)
    lengths = [7, 1, 0, 4, 7, 3]
    mask = _right_padded_mask(lengths, 7)
    rewards = torch.randn(6, 7, generator=gen) * mask  # dense rewards: the general case
    values = torch.randn(6, 7, generator=gen)
    advantages, returns = gae(rewards, values, mask, gamma, lam)
    expected = _reference_gae(rewards, values, lengths, gamma, lam)
    torch.testing.assert_close(advantages, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(returns, (expected + values) * mask, atol=1e-5, rtol=1e-5)
    assert (advantages[mask == 0] == 0).all()


def test_with_gamma_lambda_one_the_advantage_is_reward_minus_the_value_at_each_prefix():
    """Not R - V(prompt): every token's baseline is the critic at its own prefix."""
    mask = _right_padded_mask([5, 3], 5)
    reward = torch.tensor([1.0, 0.0])
    values = torch.tensor([[0.2, 0.4, 0.9, 0.7, 0.95], [0.5, 0.1, 0.3, 0.0, 0.0]])
    advantages, returns = gae(terminal_rewards(reward, mask), values, mask, 1.0, 1.0)
    torch.testing.assert_close(advantages, (reward[:, None] - values) * mask)
    torch.testing.assert_close(returns, reward[:, None] * mask.float())


def test_terminal_reward_sits_on_the_last_real_token():
    mask = _right_padded_mask([3, 1, 0], 4)
    out = terminal_rewards(torch.tensor([2.0, -1.0, 5.0]), mask)
    assert out.tolist() == [[0, 0, 2, 0], [-1, 0, 0, 0], [0, 0, 0, 0]]


def test_value_loss_clips_values_that_moved_too_far():
    mask = torch.ones(1, 3)
    old = torch.tensor([[0.0, 0.0, 0.0]])
    returns = torch.tensor([[1.0, 1.0, -1.0]])
    new = torch.tensor([[0.5, 2.0, 0.1]])
    loss, fraction = value_loss(new, old, returns, mask, clip=0.2)
    # token 0: clipped 0.2 -> (0.8)^2 > (0.5)^2; token 1: 2.0 -> 0.2, (0.8)^2 < 1^2 so unclipped;
    # token 2: 0.1 stays, both 1.21
    assert loss.item() == pytest.approx(0.5 * (0.64 + 1.0 + 1.21) / 3)
    assert fraction.item() == pytest.approx(1 / 3)
    unclipped, none = value_loss(new, old, returns, mask, clip=None)
    assert unclipped.item() == pytest.approx(0.5 * (0.25 + 1.0 + 1.21) / 3) and none == 0


def test_explained_variance_is_one_for_a_perfect_critic_and_zero_for_the_mean():
    mask = _right_padded_mask([3, 2], 3)
    returns = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 9.0]])
    assert explained_variance(returns, returns, mask) == pytest.approx(1.0)
    mean = torch.full_like(returns, 0.6)  # mean of the 5 real returns
    assert explained_variance(mean, returns, mask) == pytest.approx(0.0, abs=1e-6)


def test_whitening_ignores_padding():
    mask = _right_padded_mask([3, 1], 3)
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 100.0, 100.0]])
    out = masked_whiten(x, mask)
    real = out[mask.bool()]
    assert real.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert real.var(unbiased=False).item() == pytest.approx(1.0, abs=1e-4)
    assert (out[~mask.bool()] == 0).all()


def _tiny_task_rollouts(processor, n: int, seed: int) -> tuple[dict, torch.Tensor]:
    """A TRL-shaped rollout batch of the tiny counting task: each response either answers with the
    right count in \\boxed{} or gives no boxed answer; rewards from the RL reward's own grader."""
    from ovr_core.format import format_completion
    from ovr_core.grading import grade_serial
    from ovr_core.synthetic import shape_counting_examples

    rng = random.Random(seed)
    examples = shape_counting_examples(n, seed=seed)
    messages = [
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": e["question"]}]}]
        for e in examples
    ]
    texts = [processor.apply_chat_template(m, add_generation_prompt=True) for m in messages]
    prompts = processor(
        text=texts, images=[[e["image"]] for e in examples], padding=True, return_tensors="pt"
    )
    answers = [
        f"So the number of shapes is \\boxed{{{e['gold']}}}."
        if rng.random() < 0.5
        else "I do not know how many shapes there are."
        for e in examples
    ]
    completions = [format_completion("Count.", a) for a in answers]
    tokenizer = processor.tokenizer
    ids = [tokenizer(c + "<|im_end|>", add_special_tokens=False)["input_ids"] for c in completions]
    width = max(map(len, ids))
    completion_ids = torch.tensor([i + [tokenizer.pad_token_id] * (width - len(i)) for i in ids])
    completion_mask = _right_padded_mask([len(i) for i in ids], width)
    mm = prompts["mm_token_type_ids"]
    batch = {
        "prompt_ids": prompts["input_ids"],
        "prompt_mask": prompts["attention_mask"],
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "mm_token_type_ids": torch.cat([mm, torch.zeros_like(completion_ids)], dim=1),
        "pixel_values": prompts["pixel_values"],
        "image_grid_thw": prompts["image_grid_thw"],
        "num_images": [1] * n,
    }
    rewards = torch.tensor(
        [v.score for v in grade_serial(completions, [e["gold"] for e in examples])]
    )
    return batch, rewards


CRITIC_STEPS = 40


@pytest.mark.slow
def test_the_value_head_learns_the_tiny_tasks_expected_reward(tiny_model_path):
    """A critic initialised from the tiny policy, trained with the clipped value loss on the returns
    (gamma = lambda = 1) of one batch of tiny-task rollouts, predicts the returns of a new batch: its
    value loss falls and explained variance rises from 0 (the value head starts at zero) to most of
    the variance (0.68 is perfect: the shared <think> prefix cannot be told apart).

    Spread (scripts/learning-spread.py and the same procedure by hand, zero-initialised head): held-out
    explained variance after training 0.663-0.686 over 5 seeds on AVX-512 (median 0.669), 0.663 with
    OVR_TEST_SEED=0's own tiny model; value loss falls to 0.12-0.20 of its start. With PyTorch's
    default uniform head init (the code before) it ended anywhere in 0.025-0.628 over 6 runs on
    AVX-512 and AVX2 (0.073 on this AMD EPYC, as the issue saw). Thresholds: > 0.5 and < 0.5x."""
    from transformers import AutoProcessor

    from ovr_train.rl.critic import ValueModel, completion_values

    torch.manual_seed(SEED)
    processor = AutoProcessor.from_pretrained(tiny_model_path, padding_side="left")
    critic = ValueModel.from_policy(str(tiny_model_path), torch.float32)
    train, train_rewards = _tiny_task_rollouts(processor, 32, seed=1 + 2 * SEED)
    test, test_rewards = _tiny_task_rollouts(processor, 32, seed=2 + 2 * SEED)
    assert 0 < train_rewards.mean() < 1 and 0 < test_rewards.mean() < 1

    def returns_of(batch, rewards):
        mask = batch["completion_mask"]
        return gae(terminal_rewards(rewards, mask), torch.zeros(mask.shape), mask, 1.0, 1.0)[1]

    def held_out():
        with torch.no_grad():
            values = completion_values(critic, test, slice(0, 32))
        mask = test["completion_mask"]
        returns = returns_of(test, test_rewards)
        return value_loss(values, values, returns, mask, None)[0].item(), explained_variance(
            values, returns, mask
        )

    loss_before, ev_before = held_out()
    optimizer = torch.optim.AdamW(critic.parameters(), lr=3e-3)
    returns, mask = returns_of(train, train_rewards), train["completion_mask"]
    for _ in range(CRITIC_STEPS):
        values = completion_values(critic, train, slice(0, 32))
        loss, _ = value_loss(values, values.detach(), returns, mask, None)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    loss_after, ev_after = held_out()
    record_figures(
        "value_head", loss_ratio=loss_after / loss_before, ev_before=ev_before, ev_after=ev_after
    )
    assert loss_after < 0.5 * loss_before, (loss_before, loss_after)
    assert ev_before < 0.1 and ev_after > 0.5, (ev_before, ev_after)  # 0.68 would be perfect


# ---- a tiny PPO run: killed, resumed, learns to count, served -----------------------------------


@pytest.fixture(scope="module")
def tiny_ppo_run(tmp_path_factory):
    """recipes/tiny-rl-ppo.yaml: SIGKILLed at step 12, resumed from checkpoint-10 to step 40."""
    out = tmp_path_factory.mktemp("tiny-rl-ppo")
    args = ["--config", TINY_PPO, f"output_dir={out}", f"max_steps={STEPS}"]
    args += [f"save_steps={SAVE_EVERY}", "save_total_limit=10", "report_to=none"]
    critic = ["--write-restored-critic", str(out) + RESUMED_CRITIC]
    killed_and_resumed(args + seed_overrides(), out, SAVE_EVERY, timeout=RUN_TIMEOUT, extra=critic)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for name in ("rl_curves.png", "trainer_state.json"):
        shutil.copy(out / name, ARTIFACTS / name)
    return out


@pytest.mark.slow
@runs_a_training
def test_tiny_ppo_learns_to_count_and_its_critic_the_expected_reward(tiny_ppo_run):
    """As the GRPO run (tests/test_rl.py): sampled accuracy of steps 1-3 vs the last 10 rises by 0.3
    to at least 0.5 (an image-blind policy scores at most ~0.36). The critic follows the policy's
    expected reward: over the last 10 steps its mean value is within 0.1 of the mean batch accuracy
    (bias), and step by step within 0.3 (gap). The batch accuracy of one step (8 prompts) has a
    spread of ~0.12 by itself, so a per-step gap under ~0.1 cannot be asked of any critic; the old
    "gap < 0.15" failed for that reason on other machines (0.216 on an AVX-512 EPYC). It explains the
    returns at least as well as their mean does (explained variance ~0: telling a right count from a
    wrong one needs the critic to count, which 40 steps do not teach it).

    Spread (scripts/learning-spread.py), 3 runs: seed 0 AVX-512, seed 0 AVX2, seed 1 AVX-512.
    accuracy rise 0.61 / 0.50 / 0.16 and end 0.78 / 0.72 / 0.24; gap 0.104 / 0.217 / 0.053; bias
    0.008 on AVX2; explained variance at the end -0.007 / -0.013 / -0.004. Seed 1 does not learn to
    count in 40 steps (its tiny model starts at 0.08): this test holds for the default seed on both
    kernel families, not yet for every seed (issue 20's closing note)."""
    acc = per_step(tiny_ppo_run, "rewards/accuracy/mean")
    ev = per_step(tiny_ppo_run, "ppo/explained_variance")
    value = per_step(tiny_ppo_run, "ppo/value_mean")
    assert sorted(acc) == sorted(ev) == list(range(1, STEPS + 1)), "each step logged once"
    last = range(STEPS - 9, STEPS + 1)
    start = sum(acc[s] for s in (1, 2, 3)) / 3
    end = sum(acc[s] for s in last) / 10
    ev_start = sum(ev[s] for s in (1, 2, 3)) / 3
    ev_end = sum(ev[s] for s in last) / 10
    gap = sum(abs(value[s] - acc[s]) for s in last) / 10
    bias = abs(sum(value[s] - acc[s] for s in last) / 10)
    swing = statistics.pstdev(value[s] for s in last) / max(
        statistics.pstdev(acc[s] for s in last), 1e-6
    )
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "accuracy.json").write_text(
        json.dumps({"start": start, "end": end, "ev_start": ev_start, "ev_end": ev_end, "gap": gap})
    )
    record_figures(
        "tiny_ppo",
        start=start,
        end=end,
        rise=end - start,
        ev_start=ev_start,
        ev_end=ev_end,
        gap=gap,
        bias=bias,
        swing=swing,
    )
    assert end >= start + 0.3 and end >= 0.5, f"accuracy {start:.3f} -> {end:.3f}"
    assert bias < 0.1, f"critic's mean value vs mean accuracy, last 10 steps: {bias:.3f} apart"
    assert gap < 0.3, f"critic's mean value vs accuracy, step by step: {gap:.3f} apart"
    # the zero-initialised head starts at explained variance 0 and stays near it: telling a right
    # count from a wrong one needs the critic to count (what the policy is learning); it must not
    # explain the returns worse than their mean does
    assert ev_end > -0.1, f"explained variance {ev_start} -> {ev_end}"


@pytest.mark.slow
@runs_a_training
def test_ppo_logs_the_critic_beside_grpos_statistics(tiny_ppo_run):
    """Spread: the critic's two steps lowered its loss on 32 of 40 batches (seed 0, AVX-512; the
    only run measured for this statistic). Threshold: at least half, and on the whole."""
    last = [e for e in history(tiny_ppo_run) if "loss" in e][-1]
    for key in (
        "rewards/accuracy/mean",
        "completions/clipped_ratio",
        "entropy",
        "clip_ratio/region_mean",  # the policy's clip fraction (TRL's)
        "ppo/value_loss",
        "ppo/explained_variance",
        "ppo/value_mean",
        "ppo/advantage_mean",
        "ppo/advantage_std",
        "ppo/value_clip_fraction",
    ):
        assert key in last, key
    # Each update lowers the critic's loss on the batch it trains on (first pass vs last pass). Not
    # "the loss falls over the run": from a zero head the first steps' loss is small (rewards are
    # mostly 0) and it grows with the reward's variance as accuracy rises (0.02 -> 0.1).
    first = per_step(tiny_ppo_run, "ppo/value_loss")
    after = per_step(tiny_ppo_run, "ppo/value_loss_last")
    lowered = sum(after[s] < first[s] for s in first)
    record_figures("tiny_ppo_critic_steps", lowered=lowered, steps=len(first))
    assert lowered >= len(first) / 2, (
        f"the critic's steps lowered its loss in {lowered}/{len(first)}"
    )
    assert sum(after.values()) < sum(first.values())


@pytest.mark.slow
@runs_a_training
def test_resume_restores_the_critic_from_its_checkpoint(tiny_ppo_run, tiny_model_path):
    """The critic the resumed run trains on is checkpoint-10's, not a fresh copy of the policy."""
    from safetensors.torch import load_file
    from transformers import AutoModelForImageTextToText

    saved = load_file(tiny_ppo_run / f"checkpoint-{SAVE_EVERY}" / "critic" / "critic.safetensors")
    restored = load_file(str(tiny_ppo_run) + RESUMED_CRITIC)
    assert saved.keys() == restored.keys()
    for name, value in saved.items():
        assert torch.equal(restored[name], value), name
    policy = AutoModelForImageTextToText.from_pretrained(tiny_model_path).model.state_dict()
    moved = [k for k, v in policy.items() if not torch.equal(saved[f"backbone.{k}"], v)]
    assert moved, "the checkpoint's critic is still the initial policy backbone: it never trained"
    assert (tiny_ppo_run / f"checkpoint-{STEPS}" / "critic" / "critic.safetensors").exists()
    # the served directory holds the policy only (vLLM loads every top-level *.safetensors)
    assert [p.name for p in tiny_ppo_run.glob("*.safetensors")] == ["model.safetensors"]
    assert not (tiny_ppo_run / "critic").exists()


@pytest.mark.slow
@runs_a_training
def test_ppo_checkpoint_is_served_and_counts_unseen_images(tiny_ppo_run, tmp_path):
    """The same held-out check as the GRPO run: 60 unseen images, greedy, through ovr-serve."""
    from collections import Counter

    accuracy, commonest, answers = served_counting_accuracy(tiny_ppo_run, tmp_path)
    (ARTIFACTS / "unseen.json").write_text(
        json.dumps({"accuracy": accuracy, "commonest_share": commonest, "answers": answers})
    )
    record_figures("tiny_ppo_served", accuracy=accuracy, margin=accuracy - commonest)
    assert accuracy >= commonest + 0.3, (accuracy, commonest, Counter(answers))


# ---- recipes and wiring ----------------------------------------------------------------------


def test_algorithm_selects_the_trainer_and_only_ppo_carries_critic_settings():
    from ovr_train.rl.train import parse_args
    from ovr_train.rl.trainer import OVRRLTrainer, PPOTrainer, trainer_class

    assert trainer_class("grpo") is OVRRLTrainer
    assert trainer_class("ppo") is PPOTrainer and issubclass(PPOTrainer, OVRRLTrainer)
    # one override of TRL's rollout step; PPO changes only the advantage step and checkpoints
    overridden = {k for k in vars(PPOTrainer) if not k.startswith("__")}
    assert "_generate_and_score_completions" not in overridden
    assert "compute_advantages" in overridden
    with pytest.raises(SystemExit, match="algorithm='dpo'"):
        trainer_class("dpo")
    grpo = parse_args(["--config", TINY, "max_steps=3"])
    assert grpo[3] is None and not hasattr(grpo[0], "critic_learning_rate")
    with pytest.raises(SystemExit, match="critic_learning_rate is a PPO setting.*algorithm: ppo"):
        parse_args(["--config", TINY, "critic_learning_rate=1e-3"])


def test_tiny_ppo_recipe_parses():
    from ovr_train.rl.train import parse_args

    script_args, args, _, critic = parse_args(["--config", TINY_PPO, "max_steps=3"])
    assert script_args.algorithm == "ppo" and (critic.gamma, critic.lam) == (1.0, 1.0)
    assert args.beta == 0.0 and args.use_vllm and args.max_steps == 3


def test_7b_ppo_recipe_has_the_papers_values(monkeypatch):
    """Parsed as on a GPU node (bf16 available); not run."""
    pytest.importorskip("deepspeed")
    import transformers.training_args

    from ovr_train.rl.train import parse_args

    monkeypatch.setattr(transformers.training_args, "is_torch_bf16_gpu_available", lambda: True)
    script_args, args, _, critic = parse_args(["--config", BIG_PPO])
    assert script_args.algorithm == "ppo"
    assert (critic.gamma, critic.lam) == (1.0, 1.0)
    assert (args.learning_rate, critic.critic_learning_rate) == (1e-6, 5e-6)
    assert args.beta == 0.0 and args.num_generations == 16
    assert script_args.rollouts_per_update == 8192  # 512 prompts x 16
    assert script_args.rewards[0] == "accuracy" and args.reward_weights[0] == 1.0
    assert script_args.truncated_reward == 0.0
