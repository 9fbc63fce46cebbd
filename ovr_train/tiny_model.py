"""The tiny Qwen2.5-VL test model, built offline: ``ovr-train tiny-model OUT``.

A real Qwen2.5-VL architecture at toy size (~0.8M parameters): a byte-level BPE tokenizer trained
here with Qwen2.5-VL's special tokens and ``<think>``/``</think>`` as added non-special tokens (so
they survive ``skip_special_tokens``), the processor from defaults, the chat template we ship. It
loads in transformers, vLLM and TRL. With ``format_steps`` > 0 it is briefly trained on synthetic
traces so that it emits ``<think>…</think>`` then a ``\\boxed{}`` answer, which makes the reasoning
tests meaningful (a random model rarely closes its trace).
"""

from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ovr_core.format import CHAT_TEMPLATE, THINK_CLOSE, THINK_OPEN
from ovr_train.checkpoints import atomic_dir

TEMPLATE_PATH = CHAT_TEMPLATE
SEED_ENV = "OVR_TEST_SEED"

# The largest image the tiny model keeps its format with. It learned the format on text only, and a
# few image tokens leave it on track, but at ~100 (a 320-pixel upload at the serving default) its
# greedy trace may never close (seen: '<think>\nI count1}.'). 16 merged patches keep it answering;
# the demo and the test endpoint serve it with this max_pixels. (Showing it random images in format
# training made it cope with more, but also taught it to ignore images: the RL recipe, which starts
# from it, then no longer learned to count. Measured; see tests/test_rl.py.)
MAX_PIXELS = 28 * 28 * 16

# Qwen2.5-VL's special tokens, in its order; the config's token ids are read from the tokenizer.
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]


def seed_from_env() -> int:
    """``$OVR_TEST_SEED`` (default 0): the one knob that reseeds the tiny model and the test runs."""
    raw = os.environ.get(SEED_ENV, "0")
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"{SEED_ENV}={raw!r}: give an integer seed, e.g. {SEED_ENV}=3") from None


@dataclass
class TinyModelSpec:
    """Sizes of the test model; the defaults are what the tests, CI and benchmarks use."""

    vocab_size: int = 1024
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 2  # head_dim 64: vLLM's CPU attention accepts it
    num_kv_heads: int = 1
    intermediate_size: int = 256
    vision_hidden_size: int = 128
    vision_depth: int = 2
    vision_heads: int = 2
    max_position_embeddings: int = 8192
    format_steps: int = 300  # brief training on synthetic traces; 0 keeps random weights
    seed: int = field(default_factory=seed_from_env)


def build_tiny_model(out_dir: str | os.PathLike, spec: TinyModelSpec | None = None) -> Path:
    """Write a complete, servable tiny Qwen2.5-VL checkpoint to ``out_dir`` and return its path.

    The directory appears whole or not at all (built in a temporary sibling, then renamed).
    """
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    spec = spec or TinyModelSpec()
    out = Path(out_dir)
    with atomic_dir(out) as tmp, _reproducible_floats():
        torch.manual_seed(spec.seed)
        template = TEMPLATE_PATH.read_text()
        tokenizer = _train_tokenizer(spec)
        tokenizer.chat_template = template
        ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
        model = Qwen2_5_VLForConditionalGeneration(_model_config(spec, len(tokenizer), ids))
        model = model.to(torch.float32)
        if spec.format_steps:
            _teach_format(model, tokenizer, spec)
        model.generation_config = _generation_config(ids)
        model.save_pretrained(tmp)
        _processor(tokenizer, template).save_pretrained(tmp)
        built = {**asdict(spec), "built_with": build_fingerprint()}
        (tmp / "ovr_tiny_spec.json").write_text(json.dumps(built, indent=2))
    return out


@contextmanager
def _reproducible_floats():
    """One thread and deterministic kernels while the model is built: the same spec gives the same
    weights on every run of one machine. Across CPUs (AVX2 vs AVX-512 kernels) floats still differ,
    so the cache key names the kernel family (``build_fingerprint``)."""
    import torch

    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(deterministic)
        torch.set_num_threads(threads)


def build_fingerprint() -> dict[str, str]:
    """What changes the built weights besides the spec: library versions and the CPU kernel family."""
    import importlib.metadata as md

    import torch

    versions = {name: md.version(name) for name in ("torch", "transformers", "tokenizers")}
    return {**versions, "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def _model_config(spec: TinyModelSpec, vocab_size: int, ids: dict[str, int]):
    """Qwen2.5-VL's config at the spec's (tiny) sizes, with the tokenizer's special-token ids."""
    from transformers import Qwen2_5_VLConfig

    head_dim = spec.hidden_size // spec.num_heads
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": vocab_size,
            "hidden_size": spec.hidden_size,
            "intermediate_size": spec.intermediate_size,
            "num_hidden_layers": spec.num_layers,
            "num_attention_heads": spec.num_heads,
            "num_key_value_heads": spec.num_kv_heads,
            "max_position_embeddings": spec.max_position_embeddings,
            "max_window_layers": spec.num_layers,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 1000000.0,
                "mrope_section": _mrope_section(head_dim),
            },
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
            "tie_word_embeddings": False,
        },
        vision_config={
            "depth": spec.vision_depth,
            "hidden_size": spec.vision_hidden_size,
            "intermediate_size": spec.vision_hidden_size * 2,
            "num_heads": spec.vision_heads,
            "out_hidden_size": spec.hidden_size,
            "fullatt_block_indexes": [spec.vision_depth - 1],
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    config.architectures = ["Qwen2_5_VLForConditionalGeneration"]
    return config


def _processor(tokenizer, template: str):
    """The checkpoint's processor. Its ``max_pixels`` is the tiny model's image cap (``MAX_PIXELS``):
    the one place a server reads it from (``ovr_serve.launch`` caps its own setting at it)."""
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    return Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(min_pixels=28 * 28 * 4, max_pixels=MAX_PIXELS),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=template,
    )


def _generation_config(ids: dict[str, int]):
    """Sampling defaults saved with the checkpoint: stop at ``<|im_end|>``, plain sampling."""
    from transformers import GenerationConfig

    return GenerationConfig(
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        pad_token_id=ids["<|endoftext|>"],
        do_sample=True,
        temperature=1.0,
        top_p=1.0,
    )


def cached_tiny_model(
    cache_dir: str | os.PathLike | None = None, spec: TinyModelSpec | None = None
) -> Path:
    """Path of the tiny model for this spec and builder version, building it on first use."""
    spec = spec or TinyModelSpec()
    key = hashlib.sha256(
        json.dumps([asdict(spec), build_fingerprint()], sort_keys=True).encode()
        + Path(__file__).read_bytes()
        + TEMPLATE_PATH.read_bytes()
    ).hexdigest()[:12]
    root = Path(cache_dir or os.environ.get("OVR_CACHE", Path.cwd() / ".cache"))
    path = root / f"tiny-qwen2.5-vl-{key}"
    if not (path / "config.json").exists():
        build_tiny_model(path, spec)
    return path


def _mrope_section(head_dim: int) -> list[int]:
    """Temporal/height/width split of the rotary half-dimension, in Qwen2.5-VL's 2:3:3 ratio."""
    half = head_dim // 2
    t = half // 4
    h = (half - t) // 2
    return [t, h, half - t - h]


def _train_tokenizer(spec: TinyModelSpec):
    """A byte-level BPE trained on the synthetic corpus, wrapped as a Qwen2 tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2TokenizerFast

    from ovr_core.synthetic import reasoning_examples

    corpus = []
    for ex in reasoning_examples(2000, seed=spec.seed):
        corpus += [ex["question"], ex["completion"]]
    corpus += [
        "You are a helpful assistant.",
        "Describe the image. What do you see? Count the shapes. Let me look at the image again.",
        "Wait, let me re-check the answer. The answer is",
        "\\frac{1}{2} \\sqrt{3} x^2 + y = 0 $ $$ \\( \\) \\[ \\]",
    ]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size - len(SPECIAL_TOKENS) - 2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    bpe.train_from_iterator(corpus, trainer)
    tokenizer = Qwen2TokenizerFast(
        tokenizer_object=bpe,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
        errors="replace",
    )
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS})
    tokenizer.add_tokens([THINK_OPEN, THINK_CLOSE], special_tokens=False)
    return tokenizer


def _teach_format(model, tokenizer, spec: TinyModelSpec) -> None:
    """A few hundred AdamW steps on synthetic chats, loss on the assistant turn only."""
    import torch

    from ovr_core.synthetic import reasoning_examples

    examples = reasoning_examples(512, seed=spec.seed + 1)
    rows = []
    for ex in examples:
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": ex["question"]}],
            tokenize=False,
            add_generation_prompt=True,
        )
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        c_ids = tokenizer(ex["completion"] + "<|im_end|>", add_special_tokens=False)["input_ids"]
        rows.append((p_ids + c_ids, [-100] * len(p_ids) + c_ids))
    pad = tokenizer.pad_token_id
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(spec.seed)
    model.train()
    for _ in range(spec.format_steps):
        batch = [rows[i] for i in torch.randint(len(rows), (16,), generator=gen).tolist()]
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in batch])
        labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in batch])
        mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in batch])
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()


def cli(argv: list[str]) -> int:
    """``ovr-train tiny-model OUT [--format-steps N] [--seed S]``."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="ovr-train tiny-model", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "out", nargs="?", help="directory to write the checkpoint to (replaced if present)"
    )
    parser.add_argument(
        "--cached",
        action="store_true",
        help="print the path of the cached default tiny model (built on first use); no OUT",
    )
    parser.add_argument(
        "--format-steps",
        type=int,
        default=TinyModelSpec.format_steps,
        help="training steps on synthetic traces (0: random weights)",
    )
    parser.add_argument("--seed", type=int, default=None, help=f"default: ${SEED_ENV}, else 0")
    args = parser.parse_args(argv)
    if args.cached:
        print(cached_tiny_model())
        return 0
    if not args.out:
        parser.error("give OUT, or --cached")
    spec = TinyModelSpec(format_steps=args.format_steps)
    if args.seed is not None:
        spec.seed = args.seed
    path = build_tiny_model(args.out, spec)
    print(f"tiny Qwen2.5-VL written to {path}\nserve it: ovr-serve --model {path}")
    return 0
