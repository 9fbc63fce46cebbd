"""The container's entrypoint: `ovr-serve` settings from `OVR_*` variables, then exec vLLM.

    docker run --gpus all -e OVR_API_KEY=… -p 8000:8000 ovr:gpu                  # defaults
    docker run … -e OVR_MAX_MODEL_LEN=32768 ovr:gpu --max_images 2 -- --max-num-seqs 64
    docker run … ovr:gpu --dry-run                      # print the command, run nothing
    docker run --gpus all … ovr:gpu --check             # pre-flight only: GPU, memory fit, disk, hub

Every `ServeConfig` field can be set as `OVR_<FIELD>` (OVR_MODEL, OVR_TENSOR_PARALLEL_SIZE, …;
empty means the field's default; list fields take space- or comma-separated values; OVR_VLLM_ARGS
is shell-split and passed to vLLM as is). Arguments to the container are `ovr-serve` flags and win
over the environment. The settings go through ovr-serve's own parser and `resolve()`, and the process
exec'd is `vllm_command()` with `process_env()`: exactly what `ovr-serve --dry-run` prints for the
same settings. Before that, the pre-flight of `ovr-serve --check` (a model that cannot fit the GPU
is refused in a second, with the fix) and the weights download, one progress line every 30 s. Then
exec (not a child) so vLLM is the container's main process and gets its signals; its full log stays
on stdout, because a container's log is its file.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Mapping
from dataclasses import fields, replace

from ovr_serve.cli import parse_command
from ovr_serve.config import ServeConfig, process_env, render_dry_run, vllm_command
from ovr_serve.launch import LaunchError, demo_model_dir, print_preflight, resolve
from ovr_serve.preflight import preflight

ENV_PREFIX = "OVR_"
LIST_FIELDS = ("allowed_media_domains",)
PASSTHROUGH_FIELD = "vllm_args"


def main(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Resolve the settings and exec vLLM (or print the command with --dry-run)."""
    environ = os.environ if environ is None else environ
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        cfg, mode = parse_command(flags_from_env(environ, argv))
        if cfg.ui:
            raise LaunchError(
                "the web UI runs as its own container (service `webui`): unset OVR_UI"
            )
        if cfg.demo:  # as `ovr-serve --demo`: the pre-flight checks the tiny model, not the hub's
            cfg = replace(cfg, model=str(demo_model_dir()), demo=False)
        if mode != "dry-run":
            report = preflight(cfg, ports=False)
            if mode == "check" or not report.ok or report.warnings:
                code = print_preflight(report, verbose=mode == "check")
                if mode == "check" or code:
                    return code
        cfg, device, think, max_len = resolve(cfg)  # a download shows one progress line / 30 s
    except (LaunchError, ValueError, FileNotFoundError) as exc:
        print(f"ovr-serve (docker): {exc}", file=sys.stderr)
        return 2
    rendered = render_dry_run(cfg, device, think, max_len)
    print(rendered, flush=True)  # the container log opens with the exact command
    if mode == "dry-run":
        return 0
    cmd = vllm_command(cfg, device, think, max_len)
    env = process_env(cfg, device, think, environ)
    os.execvpe(cmd[0], cmd, env)
    return 1  # not reached: execvpe replaces this process or raises


def flags_from_env(environ: Mapping[str, str], argv: list[str]) -> list[str]:
    """ovr-serve argv: `--field value` for each non-empty OVR_<FIELD>, then argv (which wins)."""
    flags: list[str] = []
    passthrough: list[str] = []
    for f in fields(ServeConfig):
        value = environ.get(ENV_PREFIX + f.name.upper(), "").strip()
        if not value:
            continue
        if f.name == PASSTHROUGH_FIELD:
            passthrough = shlex.split(value)
        elif f.name in LIST_FIELDS:
            flags += [f"--{f.name}", *value.replace(",", " ").split()]
        else:
            flags += [f"--{f.name}", value]
    user_passthrough: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, user_passthrough = argv[:cut], argv[cut + 1 :]
    passthrough += user_passthrough
    return flags + argv + (["--", *passthrough] if passthrough else [])


if __name__ == "__main__":
    sys.exit(main())
