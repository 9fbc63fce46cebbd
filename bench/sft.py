"""Cold-start SFT throughput: padded batches vs padding-free vs BFD packing, on the tiny test model;
and data preparation: every rank normalising and measuring the data itself (in RAM) vs preparing it
once to disk (``prepare_dataset``) and every other rank or resumed run reading the cache.

    python bench/sft.py [--examples 240] [--batch 8] [--max-length 2048] [--repeats 2]
                        [--prepare-rows 4000]

The traces follow a long-tailed length distribution like the real cold-start data (many short
traces, a few very long ones: log-normal lengths). Each mode trains one epoch over the same
examples with TRL's SFTTrainer, alternating modes over ``--repeats`` rounds; we report trained
(non-padding) tokens per second, the fraction of padding tokens in the batches, and the ratios
to padded batches measured in this one run.
"""

from __future__ import annotations

import argparse
import logging
import math
import random
import statistics
import tempfile
import time

MODES = {
    "padded": {"packing": False, "padding_free": False},
    "padding-free": {"packing": False, "padding_free": True, "max_length": None},
    # one packed row per step, as the 7B recipe does (per_device_train_batch_size 1)
    "packed (bfd)": {"packing": True, "packing_strategy": "bfd", "per_device_train_batch_size": 1},
}


def long_tailed_rows(n: int, seed: int, max_words: int) -> list[dict]:
    """Synthetic traces whose lengths are log-normal: median ~60 tokens, tail to ~max_length."""
    from ovr_core.synthetic import reasoning_examples

    rng = random.Random(seed)
    rows = []
    for ex in reasoning_examples(n, seed=seed):
        repeats = max(1, min(int(math.exp(rng.gauss(0.0, 1.3))), max_words))
        rows.append(
            {
                "question": ex["question"],
                "reasoning": " ".join([ex["reasoning"]] * repeats),
                "answer": ex["answer"],
            }
        )
    return rows


def bench_prepare(tokenizer, rows: int, max_length: int, tmp: str) -> None:
    """Seconds per rank to get the training set: build it in memory vs prepare once and read."""
    from ovr_train.data import build_dataset, prepare_dataset, write_jsonl

    path = write_jsonl(long_tailed_rows(rows, 1, max_words=100), f"{tmp}/prepare.jsonl")
    start = time.perf_counter()
    build_dataset([str(path)], "skip", tokenizer, max_length)
    in_memory = time.perf_counter() - start
    start = time.perf_counter()
    prepare_dataset([str(path)], "skip", tokenizer, max_length, f"{tmp}/cache", num_proc=2)
    cold = time.perf_counter() - start
    start = time.perf_counter()
    prepare_dataset([str(path)], "skip", tokenizer, max_length, f"{tmp}/cache", num_proc=2)
    cached = time.perf_counter() - start
    print(
        f"data for one rank, {rows} traces: built in memory {in_memory:.2f} s; prepared once "
        f"(2 processes) {cold:.2f} s ({in_memory / cold:.2f}x); read from the cache {cached:.2f} s "
        f"({in_memory / cached:.1f}x faster than building it on every rank)"
    )


def run_mode(model_path, tokenizer, dataset, mode: dict, batch: int, max_length: int) -> dict:
    """One epoch of training; trained tokens/s and the padding fraction of its batches."""
    import torch
    from transformers import AutoModelForImageTextToText
    from trl import SFTConfig, SFTTrainer

    from ovr_train.models import freeze_vision
    from ovr_train.upstream_fixes import fix_packed_mrope_positions

    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_pretrained(
        model_path, dtype=torch.float32, attn_implementation="sdpa"
    )
    freeze_vision(model)
    fix_packed_mrope_positions(model)
    settings = {"max_length": max_length, "per_device_train_batch_size": batch, **mode}
    with tempfile.TemporaryDirectory() as out:
        args = SFTConfig(
            output_dir=out,
            bf16=False,
            num_train_epochs=1,
            learning_rate=1e-4,
            logging_strategy="no",
            save_strategy="no",
            report_to="none",
            gradient_checkpointing=False,
            disable_tqdm=True,
            dataloader_pin_memory=False,
            **settings,
        )
        trainer = SFTTrainer(
            model=model, args=args, train_dataset=dataset, processing_class=tokenizer
        )
        real = padded = 0
        for inputs in trainer.get_train_dataloader():
            labels_shape = inputs["input_ids"].numel()
            padded += labels_shape
            if "attention_mask" in inputs:
                real += int(inputs["attention_mask"].sum())
            else:
                real += int((inputs["input_ids"] != tokenizer.pad_token_id).sum())
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    return {
        "tokens_per_s": real / seconds,
        "padding": 1 - real / padded,
        "seconds": seconds,
        "steps": trainer.state.global_step,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=240)
    parser.add_argument(
        "--batch", type=int, default=8, help="sequences per padded/padding-free batch"
    )
    parser.add_argument(
        "--max-length",
        type=int,
        default=1024,
        help="packed row length; longer traces are skipped (as over_max_length)",
    )
    parser.add_argument("--repeats", type=int, default=2, help="rounds, modes alternating")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prepare-rows", type=int, default=4000, help="rows of the data bench")
    opts = parser.parse_args()
    logging.disable(logging.WARNING)

    from transformers import AutoTokenizer

    from ovr_train.data import build_dataset, write_jsonl
    from ovr_train.recipe import resolve_model

    model_path = resolve_model("tiny-random")
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    with tempfile.TemporaryDirectory() as tmp:
        path = write_jsonl(
            long_tailed_rows(opts.examples, opts.seed, max_words=100), f"{tmp}/d.jsonl"
        )
        dataset, report = build_dataset([str(path)], "skip", tokenizer, opts.max_length)
        bench_prepare(tokenizer, opts.prepare_rows, opts.max_length, tmp)
    lengths = sorted(
        len(tokenizer.apply_chat_template(ex["prompt"] + ex["completion"], return_dict=False))
        for ex in dataset
    )
    print(
        f"{len(dataset)} traces ({report.bad_rows} over {opts.max_length} tokens skipped); tokens per trace: "
        f"median {lengths[len(lengths) // 2]}, p90 {lengths[int(len(lengths) * 0.9)]}, max {lengths[-1]}"
    )

    results: dict[str, list[dict]] = {name: [] for name in MODES}
    for _ in range(opts.repeats):
        for name, mode in MODES.items():
            results[name].append(
                run_mode(model_path, tokenizer, dataset, mode, opts.batch, opts.max_length)
            )

    base = statistics.median(r["tokens_per_s"] for r in results["padded"])
    print(f"\n{'mode':<14} {'tokens/s':>10} {'padding':>8} {'steps':>6} {'vs padded':>10}")
    for name, runs in results.items():
        tps = statistics.median(r["tokens_per_s"] for r in runs)
        print(
            f"{name:<14} {tps:>10.0f} {runs[0]['padding']:>8.1%} {runs[0]['steps']:>6} {tps / base:>9.2f}x"
        )


if __name__ == "__main__":
    main()
