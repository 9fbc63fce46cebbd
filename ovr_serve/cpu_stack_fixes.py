"""Workarounds for the CPU PyTorch stack (torch==2.13.0+cpu beside PyPI's CUDA torchvision).

One place for them, each named with the versions it is for and how to tell when it can go.
`scripts/setup.sh` writes a `.pth` file that imports this module at interpreter start-up, so
every process of the venv (vLLM's engine workers included) gets the fix; importing it is cheap
(no torch import until `torchvision` itself is imported).

torchvision 0.28.0 on PyPI is a CUDA build: its `_C.so` links `libtorch_cuda.so`, so on a CPU
torch it fails to load. torchvision tolerates that for every op but `nms`/`qnms`, whose fake
kernels it registers unconditionally, and `import torchvision` dies with
"operator torchvision::nms does not exist". transformers' Qwen2-VL video processor needs
torchvision to import, so vLLM cannot start. We declare the two op schemas (no kernels: nothing in
OVR calls them) just before torchvision is imported, and only when its `_C.so` cannot load.
Remove when `python -c "import torchvision"` works without this module (a CPU torchvision wheel
for the installed torch is on the index that pip uses).
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys

# Schemas as torchvision's C++ code declares them (torchvision/csrc/ops/nms.cpp, quantized nms).
_OP_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_library = None  # keeps the torch.library.Library alive for the life of the process


def declare_missing_torchvision_ops() -> bool:
    """Declare torchvision's nms schemas if its compiled ops cannot load; True when it did."""
    global _library
    import torch

    try:
        torch.ops.torchvision.nms  # noqa: B018 - attribute access resolves the op
        return False
    except (AttributeError, RuntimeError):
        pass
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return False
    import os

    lib = os.path.join(list(spec.submodule_search_locations)[0], "_C.so")
    try:
        torch.ops.load_library(lib)
        return False  # a matching build: nothing to fix
    except (OSError, RuntimeError):
        pass
    _library = torch.library.Library("torchvision", "FRAGMENT")  # noqa: TOR901
    for schema in _OP_SCHEMAS.values():
        _library.define(schema)
    return True


class _TorchvisionFinder(importlib.abc.MetaPathFinder):
    """Runs the fix once, right before the first `import torchvision`, then steps aside."""

    def find_spec(self, fullname, path=None, target=None):  # noqa: D102
        if fullname != "torchvision":
            return None
        sys.meta_path.remove(self)
        try:
            declare_missing_torchvision_ops()
        except Exception as exc:  # never break an import over a workaround
            print(f"ovr: torchvision CPU fix not applied: {exc}", file=sys.stderr)
        return None


def install_import_hook() -> None:
    """Arrange for the fix to run when torchvision is first imported (idempotent)."""
    if "torchvision" in sys.modules:
        return
    if not any(isinstance(f, _TorchvisionFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _TorchvisionFinder())
