"""The layout's rules, checked on the source: imports flow one way, and functions stay readable.

ovr_core (format, grading, behaviours, wire names) is the bottom layer; serving, the web UI,
training and evaluation sit on it, and none of them imports another across the stack except
training, which may read the serving side's format through ovr_core only.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("ovr_core", "ovr_serve", "webui", "ovr_train", "ovr_eval")

# package -> packages of ours it may import (besides itself)
ALLOWED = {
    "ovr_core": set(),
    "ovr_serve": {"ovr_core"},
    "webui": {"ovr_core"},
    "ovr_eval": {"ovr_core"},
    "ovr_train": {"ovr_core"},
}
MAX_FUNCTION_LINES = 80


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def _sources(package: str):
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_flow_one_way(package):
    bad = []
    for path in _sources(package):
        for name in _imports(path) & set(PACKAGES):
            if name != package and name not in ALLOWED[package]:
                bad.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not bad, (
        f"{package} may import only {sorted(ALLOWED[package]) or 'nothing of ours'}: {bad}"
    )


def test_the_rule_catches_an_upward_import(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from ovr_train.tiny_model import MAX_PIXELS\n")
    assert "ovr_train" in _imports(probe)


@pytest.mark.parametrize("folder", [*PACKAGES, "bench", "scripts"])
def test_no_function_over_the_length_guide(folder):
    long = []
    for path in _sources(folder):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines})")
    assert not long, f"split these into named steps (guide: {MAX_FUNCTION_LINES} lines): {long}"
