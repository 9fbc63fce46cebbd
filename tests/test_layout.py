"""The layout's rules, checked on the source: imports flow one way, no two modules import each
other, files and functions stay readable.

ovr_core (format, grading, behaviours, wire names, model shapes) is the bottom layer; serving, the
web UI, training and evaluation sit on it, and none of them imports another. Inside a package no
import circle either, not even through an import inside a function: every import statement is read
with `ast`, relative ones resolved, and the module graph searched for cycles (Tarjan's strongly
connected components). Files stay under 500 lines, functions under 80.

`KNOWN_OFFENDERS` lists what is being split right now (issue 21), each by name; the tests print
it, pass over exactly those and fail on anything else. An entry that no longer offends is printed
as fixed: take it out.
"""

from __future__ import annotations

import ast
import functools
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
MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 80

# Known offenders while issue 21's splits are under way; this list only shrinks. Each entry is a
# file ("path"), a function ("path::name") or a circle ("a <-> b", modules sorted).
KNOWN_OFFENDERS: dict[str, set[str]] = {
    "files": set(),
    "functions": set(),
    "circles": set(),
}


# --- reading the source ----------------------------------------------------------------------------


def _sources(folder: str, root: Path = ROOT) -> list[Path]:
    return sorted((root / folder).rglob("*.py"))


def _module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_modules(path: Path, root: Path = ROOT) -> set[str]:
    """Every module an import statement anywhere in ``path`` names, relative imports resolved
    (``from pkg import name`` names both ``pkg`` and ``pkg.name``: either may be a module)."""
    module = _module_name(path, root)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return found


def _import_graph(folders=PACKAGES, root: Path = ROOT) -> dict[str, set[str]]:
    """Module -> the modules of ours it imports (an unknown name: its longest known prefix)."""
    paths = {_module_name(p, root): p for folder in folders for p in _sources(folder, root)}
    graph = {}
    for module, path in paths.items():
        targets = set()
        for name in _imported_modules(path, root):
            while name and name not in paths:
                name = name.rpartition(".")[0]
            if name and name != module:
                targets.add(name)
        graph[module] = targets
    return graph


@functools.cache
def _our_graph() -> dict[str, set[str]]:
    """The import graph of our packages, read once per test session."""
    return _import_graph()


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def _unlisted(kind: str, offenders: list[str], scope: str = "") -> list[str]:
    """The offenders not on the known list; prints the list (entries starting with ``scope``),
    and those that are fixed."""
    known = {k for k in KNOWN_OFFENDERS[kind] if k.startswith(scope)}
    print(f"known {kind} offenders (issue 21, to shrink): {sorted(known) or 'none'}")
    fixed = sorted(known - set(offenders))
    if fixed:
        print(f"fixed, take them off KNOWN_OFFENDERS[{kind!r}]: {fixed}")
    return [o for o in offenders if o not in known]


# --- the rules -------------------------------------------------------------------------------------


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_flow_one_way(package):
    bad = []
    for module, targets in _our_graph().items():
        if module.split(".")[0] != package:
            continue
        for target in targets:
            top = target.split(".")[0]
            if top != package and top not in ALLOWED[package]:
                bad.append(f"{module} imports {target}")
    assert not bad, (
        f"{package} may import only {sorted(ALLOWED[package]) or 'nothing of ours'}: {bad}"
    )


def test_no_two_modules_import_each_other():
    circles = [" <-> ".join(c) for c in _circles(_our_graph())]
    unlisted = _unlisted("circles", circles)
    assert not unlisted, (
        f"import circles (an import inside a function counts): {unlisted}; move what both need"
        " into a module below them"
    )


def test_no_package_file_over_the_length_guide():
    long = {}
    for folder in PACKAGES:
        for path in _sources(folder):
            lines = len(path.read_text().splitlines())
            if lines > MAX_FILE_LINES:
                long[str(path.relative_to(ROOT))] = lines
    unlisted = _unlisted("files", list(long))
    assert not unlisted, (
        f"split these by job (guide: {MAX_FILE_LINES} lines): {[(p, long[p]) for p in unlisted]}"
    )


@pytest.mark.parametrize("folder", [*PACKAGES, "bench", "scripts"])
def test_no_function_over_the_length_guide(folder):
    long = {}
    for path in _sources(folder):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long[f"{path.relative_to(ROOT)}::{node.name}"] = f"line {node.lineno}, {lines}"
    unlisted = _unlisted("functions", list(long), scope=f"{folder}/")
    assert not unlisted, (
        f"split these into named steps (guide: {MAX_FUNCTION_LINES} lines):"
        f" {[(f, long[f]) for f in unlisted]}"
    )


# --- the rules catch what they are for -------------------------------------------------------------


def _write(root: Path, files: dict[str, str]) -> list[Path]:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return [root / name for name in files]


def test_the_rules_catch_an_upward_import_and_a_circle_hidden_in_a_function(tmp_path):
    _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/launch.py": "from pkg.preflight import check\nfrom . import device\n",
            "pkg/preflight.py": "def check():\n    from .launch import start\n",
            "pkg/device.py": "import pkg.errors\n",
            "pkg/errors.py": "def f():\n    from ovr_train.tiny_model import MAX_PIXELS\n",
            "pkg/sub/__init__.py": "",
            "pkg/sub/a.py": "from ..sub import b\n",
            "pkg/sub/b.py": "from .. import device\nimport pkg.sub.a as again\n",
        },
    )
    graph = _import_graph(("pkg",), tmp_path)
    assert graph["pkg.launch"] == {"pkg.preflight", "pkg.device", "pkg"}
    assert graph["pkg.device"] == {"pkg.errors"}
    assert _circles(graph) == [["pkg.launch", "pkg.preflight"], ["pkg.sub.a", "pkg.sub.b"]]
    assert "ovr_train.tiny_model" in _imported_modules(tmp_path / "pkg/errors.py", tmp_path)
