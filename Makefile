.PHONY: setup setup-test serve demo check test test-fast test-slow bench bench-serve bench-webui bench-sft bench-rl bench-rollout bench-eval lint format

VENV := .venv
BIN := $(VENV)/bin
ARGS ?=

setup:
	bash scripts/setup.sh

setup-test:
	bash scripts/setup.sh --test

# The main job: OVR-7B-RL behind vLLM's OpenAI API, with the web UI. Pre-flight first, then one
# download bar, one status line, the ready banner; vLLM's full log goes to the file it names
# (ARGS=--verbose streams it here instead).
serve: setup
	@$(BIN)/ovr-serve --ui $(ARGS)

# Offline: the tiny test model (built on first use), with the web UI.
demo: setup
	@$(BIN)/ovr-serve --demo --ui $(ARGS)

# Pre-flight only, in seconds: ports, GPU/CPU, memory fit at the context length, disk, hub.
check: setup
	@$(BIN)/ovr-serve --check --ui $(ARGS)

# Everything that runs on a CPU (real vLLM servers, trainers and browser included).
test: setup-test
	$(BIN)/python -m pytest -m "not gpu" $(ARGS)

# Seconds: no server, trainer or browser.
test-fast: setup-test
	$(BIN)/python -m pytest -m "not slow and not gpu" $(ARGS)

test-slow: setup-test
	$(BIN)/python -m pytest -m "slow and not gpu" $(ARGS)

# One script per capability; each prints its figures as ratios measured in one run.
bench: bench-serve bench-webui bench-sft bench-rl bench-rollout bench-eval

bench-serve: setup
	$(BIN)/python bench/serve.py

bench-webui: setup
	$(BIN)/python bench/webui.py

bench-sft: setup
	$(BIN)/python bench/sft.py

bench-rl: setup
	$(BIN)/python bench/rl.py

bench-rollout: setup
	$(BIN)/python bench/rollout_pool.py

bench-eval: setup
	$(BIN)/python bench/eval.py

# Style, checked as CI checks it (never auto-fixed there).
lint: setup-test
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format:
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .
