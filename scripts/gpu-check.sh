#!/usr/bin/env bash
# The plan against a measurement (issue #14), for a GPU host; never run in CI. One run, under 8 minutes:
# SFT and RL policy steps on Qwen2.5-VL-7B's real width (random weights, full hidden size and vocabulary,
# a few layers) at the recipes' per-GPU tokens, peak memory and tokens/s written beside `ovr-train plan`'s
# prediction for the same shape to artifacts/gpu-check.json (ovr_train/plan/gpu_check.py says what is run).
#
#   bash scripts/gpu-check.sh --fetch-wheels     # where pip reaches an index: wheels into .whl/ (~25 MB)
#   bash scripts/gpu-check.sh [--layers 4 --sft-tokens 65536 --rl-tokens 26624 --steps 3]   # on the GPU host
#   bash scripts/gpu-check.sh --smoke            # CPU: the script itself on a toy shape (tests/test_plan.py)
#
# The GPU host needs Python 3.12 and PyTorch with CUDA, and no package index: what else the check imports
# (transformers, TRL's fused LM-head kernel, their pure-Python dependencies and tokenizers/safetensors
# wheels) comes from .whl/, installed into /tmp/site with --no-index. Versions are this checkout's venv's.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=${WHEELS:-.whl}
SITE=${SITE:-/tmp/site}
# what gpu_check imports beyond torch (and torch's own numpy, jinja2, filelock, fsspec, typing-extensions)
PACKAGES=(transformers trl huggingface_hub tokenizers safetensors regex pyyaml tqdm packaging typer click
          shellingham rich markdown-it-py mdurl pygments hf-xet httpx2 httpcore2 h11 anyio idna certifi
          sniffio annotated-doc typing-inspection pydantic pydantic-core annotated-types truststore)

fetch_wheels() {
  local py=${PYTHON:-.venv/bin/python} specs=() name version
  for name in "${PACKAGES[@]}"; do
    version=$("$py" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name" 2>/dev/null) \
      || { echo "gpu-check: $name is not installed in $py; skipped" >&2; continue; }
    specs+=("$name==$version")
  done
  mkdir -p "$WHEELS"
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$WHEELS" "${specs[@]}"
  grep -qx "/$WHEELS/" .git/info/exclude 2>/dev/null || echo "/$WHEELS/" >> .git/info/exclude
  du -sh "$WHEELS"
}

case "${1:-}" in
  --fetch-wheels) fetch_wheels; exit 0 ;;
  --smoke) PYTHON=${PYTHON:-$( [[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3 )} ;;
  *) PYTHON=${PYTHON:-python3} ;;
esac

if ! "$PYTHON" -c "import transformers, trl.kernels" 2>/dev/null; then
  compgen -G "$WHEELS/*.whl" >/dev/null || {
    echo "gpu-check: transformers/trl missing and no wheels in $WHEELS (run --fetch-wheels where pip works)" >&2
    exit 2
  }
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    "$WHEELS"/*.whl
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec timeout 480 "$PYTHON" -m ovr_train.plan.gpu_check "$@"
