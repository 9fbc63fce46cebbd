"""Issue 23: what would stop the 7B runs in their first hour on 8 x H100, each held on this CPU
against the real libraries where the mechanism runs here, and by a plan refusal where only a GPU
would show it: the collective timeout of a rollout round, the GPU kernels, the critic's FLOPs,
images and rollout buffers, the vision tower under ZeRO-3."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ovr_core.model_shapes import QWEN2_5_VL_7B
from ovr_core.ports import free_port_near
from ovr_train.plan import Hardware, plan_recipe, recipe_settings
from ovr_train.plan.rollout_terms import QWEN2_5_VL_MAX_PIXELS, image_tokens

ROOT = Path(__file__).resolve().parent.parent
RL_7B = str(ROOT / "recipes" / "ovr-7b-rl.yaml")
RL_PPO_7B = str(ROOT / "recipes" / "ovr-7b-rl-ppo.yaml")
H100_NODE = Hardware(gpus_per_node=8, gpu_mem_gb=80, nodes=1)


def _plan(recipe, *overrides, hardware=H100_NODE):
    return plan_recipe("rl", recipe_settings("rl", recipe, list(overrides)), hardware)


# -- 1. the collective timeout outlasts a rollout round


@pytest.mark.parametrize("recipe", [RL_7B, RL_PPO_7B])
def test_the_7b_recipes_timeout_outlasts_twice_the_plans_rollout_round(recipe):
    plan = _plan(recipe)
    settings = recipe_settings("rl", recipe, [])
    assert plan.problems == []
    assert settings["ddp_timeout"] >= 2 * plan.generation_seconds > 1800  # 1800: TRL's default


def test_transformers_default_timeout_is_refused_in_server_mode_with_the_value_to_set():
    plan = _plan(RL_7B, "ddp_timeout=1800")
    assert len(plan.problems) == 1 and "set ddp_timeout=32400" in plan.problems[0]
    # colocated rollouts: every rank generates its own share, nobody waits on rank 0's HTTP
    colocated = _plan(RL_7B, "ddp_timeout=1800", "vllm_mode=colocate")
    assert not any("ddp_timeout" in p for p in colocated.problems)


def test_the_recipes_ddp_timeout_is_the_timeout_of_deepspeeds_process_group():
    """The recipe's value reaches the real process group: `ovr-train rl`'s parser, transformers'
    TrainingArguments, accelerate and DeepSpeed's init_distributed (gloo on this CPU), in a world
    of one process."""
    env = {
        **os.environ,
        "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port_near("127.0.0.1", 29500)),
    }  # fmt: skip
    probe = ROOT / "tests" / "helpers" / "ddp_timeout_probe.py"
    out = subprocess.run(
        [sys.executable, str(probe), RL_7B], env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "timeout 36000 backend gloo" in out.stdout, out.stdout


# -- 3. PPO's update time counts the critic


def test_ppo_update_time_adds_the_critics_passes():
    """The critic's old-value forward plus critic_steps_per_batch forward + backward passes over
    the whole batch (ovr_train.rl.critic's loop as it stands): PPO's update is slower than
    GRPO's, and each further critic pass adds the same time."""
    grpo = _plan(RL_7B)
    one, four = (_plan(RL_PPO_7B, f"critic_steps_per_batch={n}") for n in (1, 4))
    assert grpo.tokens_per_update == four.tokens_per_update
    assert grpo.step_seconds < one.step_seconds < four.step_seconds
    per_pass = (four.step_seconds - one.step_seconds) / 3
    # a pass is a forward + backward with recomputation (8 x backbone params per token) at 35% MFU
    backbone = QWEN2_5_VL_7B.layers * QWEN2_5_VL_7B.decoder_layer_params
    dense = four.tokens_per_update * 8 * backbone / (8 * 989e12 * 0.35)
    # plus causal attention at 51k tokens: 16 x layers x hidden x seq / 2 = ~0.8 x the dense term
    assert 1.7 * dense < per_pass < 1.9 * dense


# -- 5. images capped and counted, prompts within the stage's budget


def test_the_plans_pixel_buffer_is_what_the_real_processor_makes_at_max_pixels():
    """Qwen2.5-VL's own image processor, capped at the GRPO recipe's max_pixels, turns the
    largest image it lets through (896 x 1120: exactly 1280 x 28 x 28 pixels) into the
    pixel_values the plan counts per rollout (bf16 under DeepSpeed), and into the prompt tokens
    the budget check counts; a larger image is resized to no more."""
    from PIL import Image
    from transformers import Qwen2VLImageProcessor

    settings = recipe_settings("rl", RL_7B, [])
    processor = Qwen2VLImageProcessor(max_pixels=settings["max_pixels"])
    out = processor(images=[Image.new("RGB", (896, 1120))], return_tensors="pt")
    per_image = out["pixel_values"].numel() * 2
    big = processor(images=[Image.new("RGB", (4000, 3000))], return_tensors="pt")
    assert big["pixel_values"].numel() <= out["pixel_values"].numel()
    plan = _plan(RL_7B)
    (label,) = [k for k in plan.memory if k.startswith("rollout buffers: pixel_values")]
    rows = 8192 // 8
    assert plan.memory[label] == rows * per_image
    merged = int(out["image_grid_thw"].prod()) // 4  # 2 x 2 patches per prompt token
    assert merged == image_tokens(QWEN2_5_VL_7B, settings["max_pixels"]) == 1280


def test_an_uncapped_image_is_refused_with_the_cap_to_set():
    plan = _plan(RL_7B, "max_pixels=null")
    assert plan.problems and all("max_pixels=" in p for p in plan.problems)
    assert any("pixel_values" in p for p in plan.problems)  # 1024 x 12.8 MP per GPU: far over


def test_a_stage_leaving_too_few_prompt_tokens_is_refused():
    plan = _plan(RL_7B, "vllm_max_model_length=50000")  # 848 tokens beside 48k completions
    assert len(plan.problems) == 1 and "vllm_max_model_length=51200" in plan.problems[0]


# -- 2. the GPU kernels the recipes name: installed on GPU machines, said in one line where missing


def test_flash_attention_is_refused_before_the_checkpoint_is_opened_where_it_is_missing(
    tiny_model_path,
):
    """transformers itself raises only while building the model, and names neither the install
    nor the alternative; the pre-flight says both in one line before the checkpoint is read (a
    path that does not exist is never reached)."""
    from transformers import AutoModelForImageTextToText
    from transformers.utils import is_flash_attn_2_available
    from trl import ModelConfig

    from ovr_train.models import load_policy

    if is_flash_attn_2_available():
        pytest.skip("flash-attn works on this machine: nothing is missing")
    with pytest.raises(ImportError, match="FlashAttention2"):  # what the pre-flight pre-empts
        AutoModelForImageTextToText.from_pretrained(
            str(tiny_model_path), attn_implementation="flash_attention_2"
        )
    args = ModelConfig(model_name_or_path="/nonexistent", attn_implementation="flash_attention_2")
    with pytest.raises(SystemExit) as refused:
        load_policy(args, freeze_vision_tower=True, log=None)
    message = str(refused.value)
    assert "\n" not in message
    assert "pip install flash-attn --no-build-isolation" in message
    assert "attn_implementation=sdpa" in message and "scripts/setup.sh" in message


def test_liger_is_refused_in_the_same_line_where_it_is_missing():
    from transformers.utils import is_flash_attn_2_available, is_liger_kernel_available

    from ovr_train.models import check_kernels

    check_kernels("sdpa", use_liger_kernel=False)  # what the CPU recipes ask: nothing to refuse
    if is_liger_kernel_available() and is_flash_attn_2_available():
        check_kernels("flash_attention_2", use_liger_kernel=True)
        return
    with pytest.raises(SystemExit) as refused:
        check_kernels("flash_attention_2", use_liger_kernel=True)
    message = str(refused.value)
    assert "\n" not in message
    if not is_liger_kernel_available():
        assert "use_liger_kernel=false" in message and "liger-kernel" in message


def test_the_gpu_set_up_installs_the_kernels_the_recipes_name():
    """scripts/setup.sh on a GPU machine: liger-kernel through the gpu extra, flash-attn built
    against the installed torch (--no-build-isolation), as DeepSpeed is."""
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert any(req.startswith("liger-kernel") for req in extras["gpu"])
    assert extras["flash"] == ["flash-attn>=2.7"]
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    gpu_branch = re.search(r"if \[\[ \$DEVICE == gpu \]\]; then\n(.*?)\n  fi\n", setup, re.S)
    assert gpu_branch and '--no-build-isolation -e ".[flash]"' in gpu_branch.group(1)


# -- 6. every rank runs the vision tower in every forward (ZeRO-3 gathers stay in step)


def _tiny_policy(path, freeze: bool):
    import torch
    from transformers import AutoModelForImageTextToText

    from ovr_train.models import freeze_vision

    model = AutoModelForImageTextToText.from_pretrained(str(path), dtype=torch.float32)
    if freeze:
        freeze_vision(model)
    calls = []
    model.model.visual.register_forward_hook(lambda *_: calls.append(1))
    return model, calls


def _image_inputs(path):
    from PIL import Image
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(str(path))
    chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Count."}]}]
    text = processor.apply_chat_template(chat, add_generation_prompt=True)
    image = Image.new("RGB", (56, 56), (200, 30, 30))
    inputs = processor(images=[image], text=[text], return_tensors="pt")
    return {k: v for k, v in inputs.items() if k != "attention_mask"}


@pytest.mark.parametrize("freeze", [True, False], ids=["frozen-tower", "trained-tower"])
def test_a_text_only_forward_runs_the_vision_tower_and_its_loss_is_unchanged(
    tiny_model_path, freeze
):
    """The tiny Qwen2.5-VL (transformers' own class): a text-only micro-batch, and TRL's empty
    pixel slice for a text-only row, both run the vision tower once with the hook and give
    exactly the loss of the text-only forward without it; an image row runs it once, as before,
    with its loss unchanged. A trained tower gets a zero gradient from the text-only row (its
    ZeRO-3 reduce-scatter then matches the image rank's too)."""
    import torch

    from ovr_train.rl.vision_sync import run_vision_every_step

    model, calls = _tiny_policy(tiny_model_path, freeze)
    ids = torch.randint(0, 100, (1, 16), generator=torch.Generator().manual_seed(0))
    empty = {"pixel_values": torch.zeros(0, 1176), "image_grid_thw": torch.zeros(0, 3).long()}
    image = _image_inputs(tiny_model_path)
    text_loss = model(input_ids=ids, labels=ids).loss
    image_loss = model(**image, labels=image["input_ids"]).loss
    assert len(calls) == 1  # today: only the image row ran the tower
    with pytest.raises(ValueError, match="non-empty"):  # and TRL's empty slice breaks transformers
        model(input_ids=ids, labels=ids, **empty)

    assert run_vision_every_step(model) == 1 and run_vision_every_step(model) == 1
    calls.clear()
    hooked = model(input_ids=ids, labels=ids).loss
    assert len(calls) == 1 and torch.equal(hooked, text_loss)
    assert torch.equal(model(input_ids=ids, labels=ids, **empty).loss, text_loss)
    assert len(calls) == 2
    assert torch.equal(model(**image, labels=image["input_ids"]).loss, image_loss)
    assert len(calls) == 3  # the real image only: no dummy beside it

    hooked.backward()
    tower = list(model.model.visual.parameters())
    if freeze:
        assert all(p.grad is None for p in tower)
    else:
        assert all(p.grad is not None and not p.grad.any() for p in tower)


def test_the_critics_backbone_is_hooked_as_well(tiny_model_path):
    import torch

    from ovr_train.rl.critic import ValueModel
    from ovr_train.rl.vision_sync import run_vision_every_step

    critic = ValueModel.from_policy(str(tiny_model_path), torch.float32)
    calls = []
    critic.backbone.visual.register_forward_hook(lambda *_: calls.append(1))
    assert run_vision_every_step(critic) == 1
    critic(input_ids=torch.arange(10).unsqueeze(0))
    assert len(calls) == 1


def test_trls_per_row_forward_of_a_mixed_batch_runs_and_keeps_each_rows_log_probs(
    tiny_model_path, tmp_path
):
    """The RL trainer as built by `ovr-train rl` (TRL's GRPOTrainer underneath) scores a batch of
    an image row and a text-only row one row per forward, as the 7B recipes' micro-batch of 1
    does: TRL slices the text-only row an empty pixel_values (transformers raised on it before
    the hook); each row's log-probs equal those of the row scored alone."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import GRPOConfig

    from ovr_train.rl.trainer import OVRRLTrainer

    path = str(tiny_model_path)
    processor = AutoProcessor.from_pretrained(path, padding_side="left")
    args = GRPOConfig(
        output_dir=str(tmp_path), use_vllm=False, use_cpu=True, report_to=[],
        per_device_train_batch_size=2, num_generations=2, max_completion_length=4,
    )  # fmt: skip
    trainer = OVRRLTrainer(
        model=AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32),
        reward_funcs=[lambda completions, **_: [0.0] * len(completions)],
        args=args,
        train_dataset=Dataset.from_list([{"prompt": [{"role": "user", "content": "hi"}]}] * 2),
        processing_class=processor,
    )
    image = _image_inputs(tiny_model_path)
    completion = torch.tensor([[5, 6, 7, 8]])
    rows = [torch.cat([image["input_ids"], completion], 1)]
    rows.append(torch.cat([torch.arange(10, 16).unsqueeze(0), completion], 1))
    width = max(r.size(1) for r in rows)
    ids = torch.stack([torch.nn.functional.pad(r[0], (width - r.size(1), 0)) for r in rows])
    mask = torch.stack([torch.arange(width) >= width - r.size(1) for r in rows]).long()
    pixels = {"pixel_values": image["pixel_values"], "image_grid_thw": image["image_grid_thw"]}

    def logps(i, j, **kw):
        out, _, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model, ids[i:j], mask[i:j], 4, batch_size=1, **kw
        )
        return out

    mixed = logps(0, 2, num_images=[1, 0], **pixels)
    assert torch.allclose(mixed[0], logps(0, 1, num_images=[1], **pixels)[0])
    assert torch.equal(mixed[1], logps(1, 2)[0])


# -- 5. the trainer and the rollout servers see the same image; over-budget prompts are counted


def test_capped_images_get_the_same_grid_from_the_trainers_and_the_servers_processor():
    """Qwen2.5-VL's own image processor at the recipe's cap (the trainer's) and at the
    checkpoint's default cap (what a rollout server started without one applies): a 12-MP image
    gets different grids, so different image-token counts, unless `cap_images` resized it first;
    images within the cap are passed through untouched."""
    from PIL import Image
    from transformers import Qwen2VLImageProcessor

    from ovr_train.rl.prompt_limits import cap_images

    settings = recipe_settings("rl", RL_7B, [])
    trainer = Qwen2VLImageProcessor(max_pixels=settings["max_pixels"])
    # Qwen/Qwen2.5-VL-7B-Instruct's preprocessor_config.json: max_pixels 12845056 (16384 x 28 x 28)
    server = Qwen2VLImageProcessor(max_pixels=QWEN2_5_VL_MAX_PIXELS)

    def grids(image):
        return [tuple(p(images=[image], return_tensors="pt")["image_grid_thw"][0].tolist())
                for p in (trainer, server)]  # fmt: skip

    big, small = Image.new("RGB", (4000, 3000), (9, 9, 9)), Image.new("RGB", (300, 200))
    rows = [{"images": [big, small]}, {"image": big}, {"prompt": "text only"}]
    assert grids(big)[0] != grids(big)[1]
    capped = cap_images(rows, type("P", (), {"image_processor": trainer})())
    for image in (capped[0]["images"][0], capped[1]["image"]):
        assert grids(image)[0] == grids(image)[1] == grids(big)[0]
    assert capped[0]["images"][1] is small and capped[2] == rows[2]


def test_prompts_over_the_stages_budget_are_counted_and_logged(caplog):
    import collections
    import types

    import torch

    from ovr_train.rl.prompt_limits import count_over_budget

    metrics = {"train": collections.defaultdict(list)}
    trainer = types.SimpleNamespace(
        args=types.SimpleNamespace(vllm_max_model_length=53248),
        max_completion_length=49152,
        _metrics=metrics,
    )
    lengths = torch.tensor([100, 4096, 4097, 5000])  # the 48k stage leaves 4096 prompt tokens
    mask = (torch.arange(5000).unsqueeze(0) < lengths.unsqueeze(1)).long()
    assert count_over_budget(trainer, {"prompt_mask": mask}) == 2
    assert metrics["train"]["rollouts/over_prompt_budget"] == [2.0]
    assert "2 prompt(s) over the 4096-token prompt budget" in caplog.text
    trainer.max_completion_length = 24576  # the 24k stage: all within
    assert count_over_budget(trainer, {"prompt_mask": mask}) == 0


def _two_ranks(mode: str, model_dir) -> list[subprocess.CompletedProcess]:
    port = str(free_port_near("127.0.0.1", 29600))
    driver = ROOT / "tests" / "helpers" / "zero3_mixed_rows.py"
    procs = [
        subprocess.Popen(
            [sys.executable, str(driver), mode, str(model_dir)],
            env={
                **os.environ,
                "RANK": str(r),
                "LOCAL_RANK": str(r),
                "WORLD_SIZE": "2",
                "LOCAL_WORLD_SIZE": "2",
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": port,
            },  # fmt: skip
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in (0, 1)
    ]
    out = []
    for proc in procs:
        try:
            text, _ = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            proc.kill()
            text, _ = proc.communicate()
        out.append(subprocess.CompletedProcess(proc.args, proc.returncode, text))
    return out


@pytest.mark.slow
def test_zero3_ranks_with_an_image_row_and_a_text_row_stay_in_step(tiny_model_path):
    """Real DeepSpeed ZeRO-3 over two CPU processes (gloo), micro-batch 1, frozen tower: without
    the hook the text-only rank skips the tower's all-gathers and the ranks' collectives stop
    matching (gloo says so; NCCL would hang); with it both get through two steps."""
    broken = _two_ranks("nohook", tiny_model_path)
    assert any(p.returncode != 0 for p in broken)
    assert "collective mismatch" in "".join(p.stdout for p in broken)
    fixed = _two_ranks("hook", tiny_model_path)
    for rank, proc in enumerate(fixed):
        assert proc.returncode == 0 and f"rank {rank} done" in proc.stdout, proc.stdout[-3000:]
