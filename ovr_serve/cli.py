"""`ovr-serve`: serve OVR behind vLLM's OpenAI-compatible API (and the web UI with --ui).

ovr-serve                                  # Kangheng/OVR-7B-RL on 127.0.0.1:8000
ovr-serve --ui                             # plus the Gradio web UI on :7860
ovr-serve --demo --ui                      # the offline tiny test model, no download
ovr-serve --config serve.yaml --port 9000  # YAML settings, flags override them
ovr-serve --dry-run                        # print the exact vLLM command, run nothing
ovr-serve --check                          # pre-flight only: ports, device, memory, disk, hub
ovr-serve --verbose                        # vLLM's whole log on the terminal (else in a file)
ovr-serve -- --max-num-seqs 64             # anything after -- goes to `vllm serve` as is
"""

from __future__ import annotations

import sys

from ovr_serve.config import ServeConfig, load_yaml


def parse_args(argv: list[str] | None = None) -> tuple[ServeConfig, bool]:
    """Flags (and --config YAML) to a ServeConfig, plus whether this is a dry run."""
    cfg, mode = parse_command(argv)
    return cfg, mode == "dry-run"


def parse_command(argv: list[str] | None = None) -> tuple[ServeConfig, str]:
    """Flags (and --config YAML) to a ServeConfig, plus the mode: serve, dry-run or check."""
    from transformers import HfArgumentParser

    argv = list(sys.argv[1:] if argv is None else argv)
    passthrough: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, passthrough = argv[:cut], argv[cut + 1 :]
    parser = HfArgumentParser(ServeConfig, prog="ovr-serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="YAML file of settings (same names as the flags)")
    parser.add_argument(
        "--dry-run", "--dry_run", action="store_true", help="print the vLLM command and exit"
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="pre-flight only: ports, device, memory fit, disk, hub; start nothing",
    )
    pre, _ = parser.parse_known_args(argv)
    if pre.config:
        parser.set_defaults(**load_yaml(pre.config))
    cfg, extra = parser.parse_args_into_dataclasses(argv, look_for_args_file=False)
    cfg.vllm_args = list(cfg.vllm_args) + passthrough
    mode = "dry-run" if extra.dry_run else "check" if extra.check else "serve"
    return cfg, mode


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `ovr-serve` console script."""
    from ovr_serve.launch import LaunchError, serve

    try:
        cfg, mode = parse_command(argv)
        return serve(cfg, dry_run=mode == "dry-run", check=mode == "check")
    except (LaunchError, ValueError, FileNotFoundError) as exc:
        print(f"ovr-serve: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C during start-up: the children are already stopped
        print("\novr-serve: stopped during start-up", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
