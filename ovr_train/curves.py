"""Training dynamics as pictures: a callback collects what the trainer logs and plots it to a PNG
beside each checkpoint (and the final model). `TrainingCurves` has the cold start's four panels,
`RLCurves` the RL dynamics; both draw through one `plot_panels`."""

from __future__ import annotations

import os
import time
from pathlib import Path

from transformers import TrainerCallback

CURVES_PNG = "training_curves.png"
RL_CURVES_PNG = "rl_curves.png"


class TrainingCurves(TrainerCallback):
    """Collects the logged loss, learning rate, tokens/s and sequence length; plots them to a PNG."""

    PANELS = [
        ("loss", "loss"),
        ("learning_rate", "learning rate"),
        ("tokens_per_second", "tokens/s"),
        ("seq_length", "mean sequence length"),
    ]
    FILENAME = CURVES_PNG
    GRID = (2, 2)

    def __init__(self) -> None:
        self.points: list[dict] = []
        self._last: tuple[float, float] | None = None  # (time, num_tokens) at the previous log

    def on_train_begin(self, args, state, control, **kwargs):
        # On resume, start from the history saved in the checkpoint's trainer state.
        self.points = [dict(p) for p in state.log_history if "loss" in p]

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs:
            return
        now = time.monotonic()
        point = {
            "step": state.global_step,
            **{k: v for k, v in logs.items() if isinstance(v, int | float)},
        }
        tokens = logs.get("num_tokens")
        if tokens is not None and self._last is not None and now > self._last[0]:
            point["tokens_per_second"] = (tokens - self._last[1]) / (now - self._last[0])
        if tokens is not None:
            self._last = (now, tokens)
        self.points.append(point)

    def series(self, key: str) -> list[str]:
        """The logged names one panel draws (one line each)."""
        return [key]

    def write(self, directory: str | os.PathLike) -> Path | None:
        """Plot the panels to ``directory/FILENAME`` (None when nothing was logged)."""
        if not self.points:
            return None
        path = Path(directory) / self.FILENAME
        plot_panels(self.points, [(self.series(k), t) for k, t in self.PANELS], self.GRID, path)
        return path


class RLCurves(TrainingCurves):
    """The RL dynamics: rewards, lengths, truncation, filtering, entropy, reflection words, loss."""

    PANELS = [
        ("rewards", "reward per function (mean)"),
        ("completions/mean_length", "response length (mean, max)"),
        ("completions/clipped_ratio", "truncation ratio"),
        ("dynamic_sampling/filtered_fraction", "filtered fraction (all-equal groups)"),
        ("entropy", "entropy"),
        ("reflection", "behaviour phrases per response (ovr_core.behaviours)"),
        ("loss", "loss"),
        ("learning_rate", "learning rate"),
    ]
    FILENAME = RL_CURVES_PNG
    GRID = (2, 4)

    def series(self, key: str) -> list[str]:
        if key == "rewards":
            names = {k for p in self.points for k in p}
            return sorted(k for k in names if k.startswith("rewards/") and k.endswith("/mean"))
        if key == "reflection":
            return sorted({k for p in self.points for k in p if k.startswith("reflection/")})
        if key == "completions/mean_length":
            return [key, "completions/max_length"]
        return [key]


def plot_panels(
    points: list[dict], panels: list[tuple[list[str], str]], grid: tuple[int, int], path: Path
) -> None:
    """One subplot per panel (its series against ``step``), written to ``path`` as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols = grid
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), constrained_layout=True)
    for ax, (series, title) in zip(axes.flat, panels, strict=True):
        for name in series:
            xs = [p["step"] for p in points if name in p]
            label = name.split("/")[-2 if name.endswith("/mean") else -1]
            ax.plot(
                xs,
                [p[name] for p in points if name in p],
                label=label,
                marker="." if len(xs) < 50 else None,
            )
        if len(series) > 1:
            ax.legend(fontsize=7)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.savefig(path, dpi=80)
    plt.close(fig)
