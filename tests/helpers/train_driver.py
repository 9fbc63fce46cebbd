"""A training stage for the tests: ``python -m tests.helpers.train_driver [--stage sft|rl]
[--kill-at N] [--write-restored-critic PATH] ARGS...`` (default stage: rl).

``--kill-at N`` SIGKILLs the run at the end of step N (a crash that leaves no chance to clean up);
``--write-restored-critic PATH`` writes the critic's weights right after ``--resume`` restored them,
to compare with the checkpoint's (PPO)."""

from __future__ import annotations

import argparse
import os
import signal
import sys


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--stage", choices=["sft", "rl"], default="rl")
    parser.add_argument("--kill-at", type=int)
    parser.add_argument("--write-restored-critic")
    ours, rest = parser.parse_known_args(argv)
    if ours.write_restored_critic:
        _write_critic_after_restore(ours.write_restored_critic)
    from transformers import TrainerCallback

    if ours.stage == "sft":
        from ovr_train.sft import main as stage_main
        from ovr_train.sft import parse_args
    else:
        from ovr_train.rl.train import main as stage_main
        from ovr_train.rl.train import parse_args

    class Kill(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == ours.kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

    stage_main(*parse_args(rest), callbacks=[Kill()] if ours.kill_at else None)


def _write_critic_after_restore(path: str) -> None:
    from safetensors.torch import save_file

    from ovr_train.rl.trainer import PPOTrainer

    restore = PPOTrainer._load_optimizer_and_scheduler

    def restore_and_write(self, checkpoint):
        restore(self, checkpoint)
        if checkpoint is not None:
            state = self.critic.state_dict()
            save_file({k: v.contiguous() for k, v in state.items()}, path)

    PPOTrainer._load_optimizer_and_scheduler = restore_and_write


if __name__ == "__main__":
    main(sys.argv[1:])
