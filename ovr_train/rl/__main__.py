"""``python -m ovr_train.rl`` / ``accelerate launch -m ovr_train.rl``: the same as ``ovr-train rl``."""

import sys

from ovr_train.rl.train import cli

sys.exit(cli(sys.argv[1:]))
