"""The colocated vLLM that generates RL rollouts: after a weight sync it generates exactly what the
trained weights give, and it generates from exactly the prompt tokens the trainer scores (image
tokens included). Plus canaries for the two upstream bugs `ovr_train.upstream_fixes` works around.

One trainer (one vLLM engine) for the module, on the tiny cold-started model, CPU.
"""

from __future__ import annotations

import os

import pytest
import torch

from ovr_train.upstream_fixes import PromptMismatch, check_same_prompts, collapse_image_runs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trainer(tiny_model_path, tmp_path_factory):
    # TRL's colocated vLLM sets RANK/WORLD_SIZE/MASTER_PORT=29500… in os.environ and keeps a
    # TCPStore on that port: restore the environment afterwards, or every later subprocess that
    # starts a Trainer inherits them and fails with EADDRINUSE (seen in test_sft's resume test).
    saved = dict(os.environ)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from transformers import AutoProcessor
    from trl import GRPOConfig

    from ovr_train.configs import RLScriptArguments
    from ovr_train.rl.data import build_rl_dataset, materialise_sources
    from ovr_train.rl.rewards import reward_functions
    from ovr_train.rl.trainer import OVRRLTrainer

    out = tmp_path_factory.mktemp("rl-vllm")
    sources = materialise_sources(RLScriptArguments(dataset=["synthetic-shapes:16"]), str(out))
    processor = AutoProcessor.from_pretrained(tiny_model_path, padding_side="left")
    args = GRPOConfig(
        output_dir=str(out),
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=32,
        use_vllm=True,
        vllm_mode="colocate",
        vllm_max_model_length=512,
        report_to=[],
        use_cpu=True,
        bf16=False,
        beta=0.0,
        seed=0,
        learning_rate=1e-3,
    )
    trainer = OVRRLTrainer(
        model=str(tiny_model_path),
        reward_funcs=reward_functions(["accuracy"], 0.0, {processor.tokenizer.eos_token_id}),
        args=args,
        train_dataset=build_rl_dataset(sources, "error", None),
        processing_class=processor,
    )
    yield trainer
    del trainer
    os.environ.clear()
    os.environ.update(saved)


def _image_prompt(trainer, index=0):
    row = trainer.train_dataset[index]
    return row, [
        {
            "role": "user",
            "content": [
                {"type": "image", "image": row["images"][0]},
                {"type": "text", "text": row["prompt"][0]["content"][-1]["text"]},
            ],
        }
    ]


def test_prompt_tokens_vllm_generates_from_are_the_ones_the_trainer_scores(trainer):
    llm = trainer.vllm_generation.llm
    seen = {}
    upstream = llm.generate

    def recording(prompts, *args, **kwargs):
        outputs = upstream(prompts, *args, **kwargs)
        seen["ids"] = [list(o.prompt_token_ids) for o in outputs]
        return outputs

    llm.generate = recording
    try:
        trainer.model.train()
        batch = [trainer.train_dataset[i] for i in range(2) for _ in range(4)]
        out = trainer._generate_and_score_completions(batch)
    finally:
        llm.generate = upstream
    scored = [
        ids[mask.bool()].tolist()
        for ids, mask in zip(out["prompt_ids"], out["prompt_mask"], strict=True)
    ]
    assert seen["ids"] == scored
    image_token = trainer.processing_class.image_token_id
    merge = trainer.processing_class.image_processor.merge_size**2
    expected = [int(g.prod()) // merge for g in out["image_grid_thw"]]
    assert [ids.count(image_token) for ids in scored] == expected  # 4 each for 56x56, not 7


def test_after_a_sync_vllm_greedy_equals_transformers_greedy_of_the_trained_weights(trainer):
    from vllm import SamplingParams

    model, llm, processor = trainer.model, trainer.vllm_generation.llm, trainer.processing_class
    greedy = SamplingParams(temperature=0.0, max_tokens=24)
    texts = [
        [{"role": "user", "content": "What is 3 + 4?"}],
        [{"role": "user", "content": "How many red in: red blue red?"}],
    ]
    conversations = [_image_prompt(trainer, i)[1] for i in (0, 1)] + texts
    requests, prompts = [], []
    for conversation in conversations:
        inputs = processor.apply_chat_template(
            [conversation],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
        )
        prompt = inputs["input_ids"][0].tolist()
        request = {"prompt_token_ids": collapse_image_runs(prompt, processor.image_token_id)}
        parts = conversation[0]["content"]
        if isinstance(parts, list):
            request["multi_modal_data"] = {"image": parts[0]["image"]}
        requests.append(request)
        prompts.append(inputs)

    def vllm_greedy():
        return [
            list(o.outputs[0].token_ids) for o in llm.generate(requests, greedy, use_tqdm=False)
        ]

    before = vllm_greedy()
    with torch.no_grad():  # "training": move every weight enough to change what greedy emits
        gen = torch.Generator().manual_seed(0)
        for p in model.parameters():
            p.add_(
                torch.randn(p.shape, generator=gen)
                * 0.3  # a format-trained tiny model is confident: small moves keep its greedy path
                * p.detach().float().std().clamp(min=1e-3)
            )
    model.eval()
    eos = set(model.generation_config.eos_token_id)
    trained, gaps = [], []  # transformers' greedy output of the perturbed ("trained") weights
    for inputs in prompts:
        with torch.no_grad():
            out = model.generate(
                **inputs,
                do_sample=False,
                max_new_tokens=24,
                output_scores=True,
                return_dict_in_generate=True,
            )
        hf = out.sequences[0, inputs["input_ids"].shape[1] :].tolist()
        end = next((i + 1 for i, t in enumerate(hf) if t in eos), len(hf))
        trained.append(hf[:end])
        # the smallest top-1/top-2 logit gap on the greedy path: vLLM's CPU kernels and
        # transformers' differ by ~0.01-0.02 logits on these weights, so below 0.05 either engine
        # may pick either token and equality means nothing either way (seen: gap 0.012, flipped)
        top2 = [s[0].float().topk(2).values for s in out.scores[:end]]
        gaps.append(min(float(v[0] - v[1]) for v in top2))
    model.train()
    assert trained != before, "the perturbation must change greedy outputs to mean anything"
    trainer.vllm_generation.sync_weights()
    after = vllm_greedy()
    decisive = [i for i, gap in enumerate(gaps) if gap > 0.05]
    assert {0, 1} & set(decisive) and {2, 3} & set(decisive), f"near-ties everywhere: {gaps}"
    for i in decisive:
        assert after[i] == trained[i], (conversations[i], gaps[i])


def test_prompt_check_refuses_a_mismatch():
    check_same_prompts([[1, 2, 9, 9, 3]], [[1, 2, 9, 9, 3]])
    with pytest.raises(PromptMismatch, match="first difference at 4"):
        check_same_prompts([[1, 2, 9, 9, 3]], [[1, 2, 9, 9, 9, 3]])
    assert collapse_image_runs([1, 9, 9, 9, 2, 9, 9, 3], 9) == [1, 9, 2, 9, 3]


def test_upstream_still_expands_image_tokens_twice(trainer):
    """Canary: when vLLM generates from the processor's expanded prompt, drop the collapsing."""
    from vllm import SamplingParams

    row, conversation = _image_prompt(trainer)
    prompt = trainer.processing_class.apply_chat_template(
        [conversation], add_generation_prompt=True, tokenize=True, return_dict=True
    )["input_ids"][0]
    output = trainer.vllm_generation.llm.generate(
        [{"prompt_token_ids": prompt, "multi_modal_data": {"image": row["images"][0]}}],
        SamplingParams(max_tokens=1),
        use_tqdm=False,
    )[0]
    assert len(output.prompt_token_ids) != len(prompt)


def test_rollouts_never_sample_image_placeholders(trainer):
    """A sampled <|image_pad|> breaks the scoring pass (more image tokens than features)."""
    bias = trainer.vllm_generation.generation_kwargs["logit_bias"]
    assert bias[trainer.processing_class.image_token_id] <= -100


def test_upstream_sync_still_fails_on_cpu(trainer):
    """Canary: when TRL's own colocate sync works on CPU, drop `reload_into_engine`. Runs last."""
    from trl.generation.vllm_generation import VLLMGeneration

    with pytest.raises(AttributeError, match="weight_loader"):
        VLLMGeneration.sync_weights(trainer.vllm_generation)


def test_a_multiple_choice_row_is_graded_with_its_choices_through_trl(trainer, tmp_path):
    """A row's grading columns reach the accuracy reward through TRL's own reward call
    (GRPOTrainer._calculate_rewards passes every dataset column): the option letter is right."""
    import json

    from ovr_train.rl.data import build_rl_dataset

    row = {"question": "Which shape?", "choices": ["circle", "square"], "answer": "square"}
    path = tmp_path / "mc.jsonl"
    path.write_text(json.dumps(row) + "\n")
    example = build_rl_dataset([str(path)], "error", None)[0]
    end = trainer.processing_class.tokenizer.eos_token_id  # an end token: not truncated
    completions = [
        [{"role": "assistant", "content": "<think>Four corners.</think> \\boxed{B}"}],
        [{"role": "assistant", "content": "<think>Round.</think> \\boxed{A}"}],
    ]
    rewards = trainer._calculate_rewards(
        [example, example], [example["prompt"]] * 2, completions, [[end], [end]]
    )
    assert rewards[:, 0].tolist() == [1.0, 0.0]
