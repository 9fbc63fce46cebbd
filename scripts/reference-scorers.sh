#!/usr/bin/env bash
# The benchmarks' own scorers, installed apart from ovr for the differential grading test
# (tests/test_grading_reference.py): lmms-eval's task scorers in their own venv.
#
#   scripts/reference-scorers.sh            # builds .cache/refvenv once (about a minute), then no-op
#
# Why a venv of its own: lmms-eval 0.7.3 requires torch, transformers, wandb and ~50 more (none of
# them used by its answer scorers) and pins that clash with ours; MATH-V's scorer needs the old
# latex2sympy2, whose antlr4 4.7.2 runtime cannot sit beside the 4.13 one math-verify uses. So:
# lmms-eval without its dependencies plus the few its scorers import, math-verify at the version
# ovr has (a disagreement then means an extraction rule, not a math-verify release), and
# latex2sympy2 with its antlr in a folder of its own, put on the path only for MATH-V.
set -euo pipefail
cd "$(dirname "$0")/.."

REF=.cache/refvenv
LMMS_EVAL=0.7.3
say() { printf '\033[1m[reference-scorers]\033[0m %s\n' "$*"; }
die() { printf '[reference-scorers] error: %s\n' "$*" >&2; exit 1; }

PY=${PYTHON:-.venv/bin/python}
[[ -x $PY ]] || PY=$(command -v python3.11 || command -v python3)
MV=$("$PY" -c 'import importlib.metadata as m; print(m.version("math-verify"))' 2>/dev/null || echo 0.9.0)
STAMP="$REF/.stamp-lmms-eval-$LMMS_EVAL-math-verify-$MV-$(sha256sum "$0" | cut -c1-12)"
[[ -f $STAMP ]] && exit 0

say "building $REF (lmms-eval $LMMS_EVAL scorers, math-verify $MV)"
rm -rf "$REF"
"$PY" -m venv "$REF" || die "could not create $REF (python -m venv)"
# pip warns about every lmms-eval requirement left out on purpose: keep only real errors
pip() { "$REF/bin/python" -m pip install -q --disable-pip-version-check "$@" 2>&1 | grep -v -e "^WARNING: Location" -e "requires .*, which is not installed" -e "dependency resolver" -e "incompatible" || true; }
pip --no-deps "lmms-eval==$LMMS_EVAL"
pip "math-verify==$MV" loguru pyyaml pandas numpy openai datasets tqdm
pip --target "$REF/latex2sympy2" "latex2sympy2==1.9.1"
"$REF/bin/python" -c "import lmms_eval, math_verify, datasets, loguru" \
  || die "the reference venv does not import (see pip's errors above); delete $REF and re-run"
PYTHONPATH="$REF/latex2sympy2" "$REF/bin/python" -c "import latex2sympy2" \
  || die "latex2sympy2 does not import from $REF/latex2sympy2; delete $REF and re-run"
touch "$STAMP"
say "ready: $REF"
