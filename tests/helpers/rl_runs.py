"""What the RL tests (GRPO and PPO) share: the seed knob, the killed-then-resumed run, the logged
history, the figures record and the served check on unseen images."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ovr_train.tiny_model import SEED_ENV, seed_from_env

ROOT = Path(__file__).resolve().parent.parent.parent
ARTIFACTS = ROOT / "artifacts"
FIGURES = ARTIFACTS / "learning-figures.jsonl"
SEED = seed_from_env()  # $OVR_TEST_SEED: reseeds the tiny model, the data and every training run
KILL_AT = 12
# Seconds each process of a tiny run may take. Uncontended, a 40-step run takes 3-8 minutes on two
# cores; a loaded or slower machine must not turn that into a failure, only a hang should.
RUN_TIMEOUT = 2400
# For the tests that take a run fixture: whichever of them comes first sets the run up (two processes).
runs_a_training = pytest.mark.timeout(2 * RUN_TIMEOUT + 600)


def seed_overrides(data: bool = True) -> list[str]:
    """Recipe overrides that reseed a training run (and its synthetic data) with ``SEED``."""
    return [f"seed={SEED}"] + ([f"synthetic_seed={SEED}"] if data else [])


def killed_and_resumed(args: list[str], out: Path, save_every: int, timeout: int, extra=()) -> None:
    """``ovr-train rl ARGS`` SIGKILLed at step ``KILL_AT``, then resumed with ``--resume`` to the end,
    each in its own process (tests/helpers/train_driver.py; one vLLM engine at a time)."""
    from ovr_train.checkpoints import last_complete_checkpoint

    env = {**os.environ, "OVR_CACHE": str(ROOT / ".cache"), SEED_ENV: str(SEED)}
    driver = [sys.executable, "-m", "tests.helpers.train_driver", *extra]
    killed = subprocess.run(
        [*driver, "--kill-at", str(KILL_AT), *args], env=env, timeout=timeout, cwd=ROOT
    )
    assert killed.returncode == -signal.SIGKILL, killed.returncode
    assert last_complete_checkpoint(out) == str(out / f"checkpoint-{save_every}")
    assert not (out / "config.json").exists(), "a killed run must not look finished"
    resumed = subprocess.run([*driver, *args, "--resume"], env=env, timeout=timeout, cwd=ROOT)
    assert resumed.returncode == 0, resumed.returncode


def history(output_dir) -> list[dict]:
    """The trainer's log history of a finished run."""
    return json.loads((Path(output_dir) / "trainer_state.json").read_text())["log_history"]


def per_step(output_dir, key) -> dict[int, float]:
    """``key`` of every logged step, by step."""
    return {e["step"]: e[key] for e in history(output_dir) if key in e}


def record_figures(test: str, **figures) -> None:
    """Append one learned figure set to ``artifacts/learning-figures.jsonl`` with what produced it
    (seed, CPU kernel family, threads): the spreads in the tests' docstrings are read from it."""
    import torch

    FIGURES.parent.mkdir(parents=True, exist_ok=True)
    row = {
        "test": test,
        "seed": SEED,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "omp_threads": os.environ.get("OMP_NUM_THREADS", ""),
        **figures,
    }
    with FIGURES.open("a") as f:
        f.write(json.dumps(row) + "\n")


def served_counting_accuracy(model_dir, tmp_path) -> tuple[float, float, list[str]]:
    """Serve ``model_dir`` with ovr-serve and ask it to count 60 unseen images (seed 12345 + SEED),
    greedy; returns (accuracy by the RL reward's grader, the commonest gold's share, the answers)."""
    from collections import Counter
    from concurrent.futures import ThreadPoolExecutor

    from openai import OpenAI

    from ovr_core.grading import grade_serial
    from ovr_core.synthetic import shape_counting_examples
    from ovr_eval.loading import image_data_url
    from ovr_serve.config import ServeConfig
    from ovr_serve.launch import start_server
    from tests.conftest import free_port

    unseen = shape_counting_examples(60, seed=12345 + SEED)
    cfg = ServeConfig(
        model=str(model_dir), port=free_port(), cpu_kvcache_gib=1, startup_timeout=600
    )
    with start_server(cfg, log_path=tmp_path / "serve.log") as handle:
        client = OpenAI(base_url=handle.base_url, api_key="none")

        def ask(example) -> str:
            image = {
                "type": "image_url",
                "image_url": {"url": image_data_url(example["image"], None)},
            }
            content = [image, {"type": "text", "text": example["question"]}]
            reply = client.chat.completions.create(
                model=cfg.served_model_name,
                messages=[{"role": "user", "content": content}],
                max_tokens=48,
                temperature=0,
            )
            return reply.choices[0].message.content or ""

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(ask, unseen))
    golds = [e["gold"] for e in unseen]
    verdicts = grade_serial(answers, golds)  # the RL reward's own check
    accuracy = sum(v.score for v in verdicts) / len(golds)
    commonest = Counter(golds).most_common(1)[0][1] / len(golds)
    return accuracy, commonest, [v.extracted for v in verdicts]
