"""The README and docs/ stay true: every command they show (``$ …`` in a console block) names a
make target, subcommand, module, script and recipe that exist, and its flags parse with the same
parser the command uses. Placeholders (``…``, ``...``) are values, not flags; commands of other
tools (docker, cp, export) are left to their own tests (tests/test_docker*.py)."""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "docker" / "README.md"]
ENV_ASSIGNMENT = re.compile(r"^[A-Z_][A-Z0-9_]*=")


def shown_commands() -> list[tuple[str, str]]:
    """(page, command) for every ``$ `` line of every console block, continuation lines joined and
    the trailing comment dropped."""
    out = []
    for page in PAGES:
        if not page.exists():
            continue
        for block in re.findall(r"```console\n(.*?)```", page.read_text(), re.S):
            lines = block.splitlines()
            i = 0
            while i < len(lines):
                line = lines[i]
                i += 1
                if not line.startswith("$ "):
                    continue
                command = line[2:]
                while command.rstrip().endswith("\\") and i < len(lines):
                    command = command.rstrip()[:-1] + " " + lines[i].strip()
                    i += 1
                out.append((page.name, _without_comment(command).strip()))
    return out


def _without_comment(command: str) -> str:
    tokens = shlex.split(command, comments=True)
    return shlex.join(tokens)


def _tokens(command: str) -> tuple[dict[str, str], list[str]]:
    """The environment assignments before the command, and the command's words."""
    tokens, env = shlex.split(command), {}
    while tokens and ENV_ASSIGNMENT.match(tokens[0]):
        key, _, value = tokens.pop(0).partition("=")
        env[key] = value
    return env, tokens


COMMANDS = shown_commands()


def test_the_pages_show_commands():
    """The check below is not vacuous: the README shows both commands and the stages' commands."""
    shown = {c for _, c in COMMANDS}
    assert "make serve" in shown and "make test" in shown
    assert any(c.startswith("ovr-train rl") for c in shown)
    assert any(c.startswith("ovr-serve") for c in shown)
    assert any(c.startswith("ovr-eval run") for c in shown)


@pytest.mark.parametrize(("page", "command"), COMMANDS, ids=[f"{p}: {c[:60]}" for p, c in COMMANDS])
def test_every_shown_command_exists_and_parses(page, command, monkeypatch, tmp_path):
    env, tokens = _tokens(command)
    if not tokens:
        return
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(ROOT)
    if "--auth-file" in tokens:  # the user's own file of logins: one like it
        users = tmp_path / "users.txt"
        users.write_text("alice:a-long-password\n")
        tokens[tokens.index("--auth-file") + 1] = str(users)
    tool, args = tokens[0], tokens[1:]
    if "..." in args:  # an elided command ("ovr-eval run ... --data …")
        args = args[args.index("...") + 1 :]
        if tool != "ovr-eval":
            return
        args = [
            "run",
            "--endpoint",
            "x",
            "--model",
            "m",
            "--bench",
            "mathvista",
            "--out",
            "o",
            *args,
        ]
    check = CHECKS.get(tool) or CHECKS.get(Path(tool).name)
    if check is None:
        assert tool in OTHER_TOOLS, f"{page}: unknown command {tool!r} in {command!r}"
        return
    if "--help" in args or "-h" in args:
        with pytest.raises(SystemExit) as done:
            check(args, monkeypatch)
        assert done.value.code in (0, None), f"{command}: exit {done.value.code}"
    else:
        check(args, monkeypatch)


def _make(args, _):
    targets = set(re.findall(r"^([a-z][a-z-]*):", (ROOT / "Makefile").read_text(), re.M))
    for target in [a for a in args if "=" not in a]:
        assert target in targets, f"make {target}: no such target"


def _ovr_train(args, monkeypatch):
    from ovr_train.cli import COMMANDS as SUBCOMMANDS

    sub, rest = args[0], args[1:]
    assert sub in SUBCOMMANDS, f"ovr-train {sub}: no such subcommand"
    for path in _paths(rest):
        assert (ROOT / path).exists(), f"ovr-train {sub}: {path} does not exist"
    if sub in ("sft", "rl") and _recipe(rest).name.startswith("tiny-"):
        module = "ovr_train.sft" if sub == "sft" else "ovr_train.rl.train"
        importlib.import_module(module).parse_args(rest)
    if sub == "plan":
        from ovr_train.plan import recipe_settings

        stage = "rl" if "rl" in _recipe(rest).name else "sft"
        recipe_settings(stage, str(ROOT / _recipe(rest)), [a for a in rest if "=" in a])


def _recipe(args) -> Path:
    return Path(args[args.index("--config") + 1]) if "--config" in args else Path("none")


def _paths(args) -> list[str]:
    return [a for a in args if a.startswith(("recipes/", "scripts/", "bench/", "docker/"))]


def _ovr_serve(args, _):
    from ovr_serve.cli import parse_command

    if "--config" in args:  # an example file of the user's
        i = args.index("--config")
        args = args[:i] + args[i + 2 :]
    parse_command(args)


def _ovr_eval(args, _):
    from ovr_eval.cli import build_parser

    build_parser().parse_args(args)


def _ovr_webui(args, _):
    from webui.settings import parse_settings

    parse_settings(args)


def _accelerate(args, _):
    module = args[args.index("-m") + 1]
    assert importlib.util.find_spec(module), f"accelerate launch -m {module}: no such module"
    for path in _paths(args) + [a for a in args if a.endswith(".json")]:
        assert (ROOT / path).exists(), f"{path} does not exist"


def _python(args, _):
    if args[0] == "-m":
        assert importlib.util.find_spec(args[1]), f"python -m {args[1]}: no such module"
    else:
        assert (ROOT / args[0]).exists(), f"{args[0]} does not exist"


def _bash(args, _):
    assert (ROOT / args[0]).exists(), f"{args[0]} does not exist"


CHECKS = {
    "make": _make,
    "ovr-train": _ovr_train,
    "ovr-serve": _ovr_serve,
    "ovr-eval": _ovr_eval,
    "ovr-webui": _ovr_webui,
    "accelerate": _accelerate,
    "python": _python,
    "python3": _python,
    "bash": _bash,
}
OTHER_TOOLS = {"docker", "cp", "export", "curl", "openssl", "git", "pip", "sudo", "apt-get"}
