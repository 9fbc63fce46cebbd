"""ovr-serve's pre-flight and start-up progress, on the CPU and without a server: ports in use, a
model too big for the memory given, the download bar against a local hub, a dropped download
resuming with a Range request, and vLLM's log lines read as start-up phases."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psutil
import pytest

from ovr_core.model_shapes import QWEN2_5_VL_7B, checkpoint_parameters, shape_from_config
from ovr_serve import preflight as pf
from ovr_serve.cli import main
from ovr_serve.config import ServeConfig
from ovr_serve.device import Device, cuda_mismatch, gpu_device
from ovr_serve.progress import fetch_weights, phase_of
from tests.conftest import free_port
from tests.helpers.terminal import read_pty, shown_lines

# config.json of Qwen/Qwen2.5-VL-7B-Instruct as published on the hub (what OVR-7B-* are).
QWEN2_5_VL_7B_CONFIG = {
    "architectures": ["Qwen2_5_VLForConditionalGeneration"],
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "vision_start_token_id": 151652,
    "vision_end_token_id": 151653,
    "vision_token_id": 151654,
    "image_token_id": 151655,
    "video_token_id": 151656,
    "hidden_act": "silu",
    "hidden_size": 3584,
    "initializer_range": 0.02,
    "intermediate_size": 18944,
    "max_position_embeddings": 128000,
    "max_window_layers": 28,
    "model_type": "qwen2_5_vl",
    "num_attention_heads": 28,
    "num_hidden_layers": 28,
    "num_key_value_heads": 4,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "sliding_window": 32768,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.41.2",
    "use_cache": True,
    "use_sliding_window": False,
    "vision_config": {
        "depth": 32,
        "hidden_act": "silu",
        "hidden_size": 1280,
        "intermediate_size": 3420,
        "num_heads": 16,
        "in_chans": 3,
        "out_hidden_size": 3584,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "spatial_patch_size": 14,
        "window_size": 112,
        "fullatt_block_indexes": [7, 15, 23, 31],
        "tokens_per_second": 2,
        "temporal_patch_size": 2,
    },
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
    "vocab_size": 152064,
}
QWEN2_5_VL_7B_PARAMS = 8_292_166_656  # the hub's safetensors metadata for Qwen2.5-VL-7B-Instruct
KV_BYTES_PER_TOKEN = 2 * 28 * 4 * 128 * 2  # K and V, 28 layers, 4 KV heads of 128, bf16


def _children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def _run_cli(capsys, *argv) -> tuple[int, list[str], str]:
    before = _children()
    code = main(list(argv))
    out = capsys.readouterr()
    assert _children() <= before, "pre-flight refusals must start nothing"
    return code, out.err.strip().splitlines(), out.out


@pytest.fixture
def held_port():
    """A port this test process listens on (so the holder can be named: this pid)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def test_endpoint_port_in_use_is_one_line_naming_the_holder(capsys, tiny_model_path, held_port):
    code, err, out = _run_cli(capsys, "--model", str(tiny_model_path), "--port", str(held_port))
    assert code != 0 and out == ""
    assert len(err) == 1, err
    assert f"port {held_port} (endpoint) is already in use" in err[0]
    assert f"pid {os.getpid()}" in err[0] and "--port " in err[0]


def test_ui_port_in_use_is_one_line(capsys, tiny_model_path, held_port):
    argv = ["--model", str(tiny_model_path), "--port", str(free_port()), "--ui"]
    code, err, _ = _run_cli(capsys, *argv, "--ui_port", str(held_port))
    assert code != 0 and len(err) == 1 and f"port {held_port} (web UI)" in err[0]
    assert "--ui_port " in err[0]


def test_ui_beyond_loopback_without_a_login_is_refused_before_anything_starts(
    capsys, tiny_model_path, monkeypatch
):
    monkeypatch.delenv("OVR_UI_USER", raising=False)
    monkeypatch.delenv("OVR_UI_PASSWORD", raising=False)
    argv = ["--check", "--model", str(tiny_model_path), "--port", str(free_port()), "--ui"]
    code, err, _ = _run_cli(capsys, *argv, "--ui_host", "0.0.0.0", "--ui_port", str(free_port()))
    assert (
        code != 0 and len(err) == 1 and "without a login" in err[0] and "OVR_UI_PASSWORD" in err[0]
    )
    monkeypatch.setenv("OVR_UI_USER", "ann")
    monkeypatch.setenv("OVR_UI_PASSWORD", "a long secret")
    code, err, _ = _run_cli(capsys, *argv, "--ui_host", "0.0.0.0", "--ui_port", str(free_port()))
    assert code == 0 and err == []


def test_qwen_7b_size_is_read_from_its_config():
    size = pf.size_from_config(QWEN2_5_VL_7B_CONFIG)
    assert size.params == QWEN2_5_VL_7B_PARAMS
    assert size.weight_bytes == 2 * QWEN2_5_VL_7B_PARAMS
    assert size.kv_bytes_per_token == KV_BYTES_PER_TOKEN
    # the shape written down in ovr_core (used when the hub cannot be asked) is the published one
    assert shape_from_config(QWEN2_5_VL_7B_CONFIG, QWEN2_5_VL_7B.name) == QWEN2_5_VL_7B
    assert pf.size_of(QWEN2_5_VL_7B, {}, "known").params == QWEN2_5_VL_7B_PARAMS


def test_7b_on_a_small_kv_cache_is_refused_before_loading_with_the_fix(capsys, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(QWEN2_5_VL_7B_CONFIG))
    argv = ["--model", str(tmp_path), "--device", "cpu", "--cpu_kvcache_gib", "1"]
    code, err, _ = _run_cli(capsys, *argv, "--port", str(free_port()))
    assert code != 0
    fits = (1 << 30) // KV_BYTES_PER_TOKEN // 1024 * 1024  # 18432 tokens in 1 GiB
    (kv,) = [line for line in err if "KV cache" in line and "max_model_len 49152" in line]
    assert f"lower max_model_len to {fits}" in kv and "raise cpu_kvcache_gib to 3" in kv
    assert all(line.startswith("ovr-serve: ") for line in err)  # one line per problem


@pytest.mark.parametrize(
    "gib,max_len,fixes",
    [
        (24, 49152, []),  # 15.4 weights + 2.6 KV + 2 runtime fit 0.9 × 24
        (24, 128000, ["lower max_model_len to 76800", "tensor_parallel_size 2"]),
        (20, 49152, ["lower max_model_len to 10240", "tensor_parallel_size 2"]),
        (16, 49152, ["tensor_parallel_size 2 (2 GPUs; this machine has 1)"]),
        (22, 49152, ["lower max_model_len to 44032", "gpu_memory_utilization to 0.92", "tp"]),
    ],
)
def test_7b_on_gpus_of_each_size_gets_the_fixes_that_work(gib, max_len, fixes):
    size = pf.size_from_config(QWEN2_5_VL_7B_CONFIG)
    gpu = Device("cuda", "a test GPU", gib << 30)
    problems = pf.memory_problems(ServeConfig(max_model_len=max_len), size, gpu, max_len)
    assert len(problems) == (1 if fixes else 0)
    for fix in fixes:
        assert fix.replace("tp", "tensor_parallel_size 2") in problems[0], problems[0]
    if fixes:
        assert "\n" not in problems[0] and f"max_model_len {max_len}" in problems[0]


def test_more_tensor_parallel_ranks_than_gpus_is_refused():
    size = pf.size_from_config(QWEN2_5_VL_7B_CONFIG)
    gpu = Device("cuda", "a test GPU", 80 << 30, count=2)
    (problem,) = pf.memory_problems(ServeConfig(tensor_parallel_size=4), size, gpu, 49152)
    assert "tensor_parallel_size 4" in problem and "has 2" in problem
    assert pf.memory_problems(ServeConfig(tensor_parallel_size=2), size, gpu, 49152) == []


def test_check_alone_reports_and_starts_nothing(capsys, tiny_model_path):
    code, err, out = _run_cli(capsys, "--check", "--model", str(tiny_model_path), "--ui")
    assert code == 0 and err == []
    assert "device: CPU" in out and "all checks passed" in out


# --- the download: a local server in the hub's URL layout -----------------------------------------


class _Hub(BaseHTTPRequestHandler):
    """/api/models/<repo>/revision/<rev> and /<repo>/resolve/<rev>/<file>, with byte ranges; the
    first GET of ``drop`` sends half its bytes and closes the connection."""

    files: dict[str, bytes] = {}
    repo = "org/model"
    sha = "0123456789abcdef0123456789abcdef01234567"
    drop: str | None = None
    requests: list[tuple[str, str, str | None]] = []

    def log_message(self, *args):
        pass

    def do_HEAD(self):
        self._resolve(body=False)

    def do_GET(self):
        if self.path.startswith(f"/api/models/{self.repo}"):
            siblings = [{"rfilename": n, "size": len(b)} for n, b in self.files.items()]
            self._send(200, json.dumps({"id": self.repo, "sha": self.sha, "siblings": siblings}))
            return
        self._resolve(body=True)

    def _resolve(self, body: bool):
        name = self.path.split("?")[0].split("/resolve/", 1)[-1].split("/", 1)[-1]
        _Hub.requests.append((self.command, name, self.headers.get("Range")))
        data = self.files.get(name)
        if data is None:
            return self._send(404, "no such file")
        ranged = "Range" in self.headers
        first, _, last = self.headers.get("Range", "bytes=0-").split("=")[1].partition("-")
        start, end = int(first), min(int(last or len(data) - 1), len(data) - 1)
        self.send_response(206 if ranged else 200)
        self.send_header("X-Repo-Commit", self.sha)
        self.send_header("ETag", '"' + hashlib.sha256(data).hexdigest() + '"')
        self.send_header("Content-Length", str(end + 1 - start))
        if ranged:
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        self.end_headers()
        if not body:
            return
        if name == _Hub.drop:
            _Hub.drop = None
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        self.wfile.write(data[start : end + 1])

    def _send(self, status: int, text: str):
        self.send_response(status)
        self.send_header("Content-Length", str(len(text)))
        self.end_headers()
        self.wfile.write(text.encode())


@pytest.fixture
def local_hub():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Hub.requests = []
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_download_shows_one_bar_and_a_dropped_transfer_resumes(local_hub, tmp_path):
    from huggingface_hub.constants import DOWNLOAD_CHUNK_SIZE

    weights = os.urandom(int(2.5 * DOWNLOAD_CHUNK_SIZE))  # the drop comes after one whole chunk
    _Hub.files = {
        "config.json": json.dumps(QWEN2_5_VL_7B_CONFIG).encode(),
        "model.safetensors": weights,
        "pytorch_model.bin": b"not needed beside safetensors",
    }
    _Hub.drop = "model.safetensors"
    screen = io.StringIO()
    path = fetch_weights("org/model", out=screen, endpoint=local_hub, cache_dir=tmp_path)
    assert (path / "model.safetensors").read_bytes() == weights  # resumed, not corrupted
    assert not (path / "pytorch_model.bin").exists()
    gets = [(n, r) for m, n, r in _Hub.requests if m == "GET" and n == "model.safetensors"]
    kept = len(weights) // 2 // DOWNLOAD_CHUNK_SIZE * DOWNLOAD_CHUNK_SIZE  # what was written
    assert kept > 0 and gets == [
        ("model.safetensors", None),
        ("model.safetensors", f"bytes={kept}-"),
    ]
    lines = screen.getvalue().strip().splitlines()
    total = len(weights) + len(_Hub.files["config.json"])
    assert len(lines) == 1, lines  # one bar (not a TTY: written once, at the end)
    # rich's download columns: done/total, percent, speed, ETA
    mb = f"{total / 1e6:.1f}"
    assert re.fullmatch(
        rf"downloading org/model: {mb}/{mb} MB \(100%\) [\d.]+ [kMG]?B/s ETA 0:00:00", lines[0]
    ), lines[0]
    # a second start finds everything in the cache: nothing is fetched again
    _Hub.requests = []
    assert fetch_weights("org/model", out=screen, endpoint=local_hub, cache_dir=tmp_path) == path
    assert [r for r in _Hub.requests if r[0] == "GET"] == []


def test_the_download_line_logs_plainly_off_a_terminal_and_redraws_in_place_on_one():
    from ovr_serve.progress import DownloadLine

    log = io.StringIO()  # a container log: a plain line every log_every seconds, then the last
    with DownloadLine("downloading org/model", 3000, log, log_every=0) as line:
        for _ in range(3):
            line.advance(1000)
    shown = log.getvalue().splitlines()
    assert [s.split(": ", 1)[1].split(" (")[0] for s in shown] == [
        "1.0/3.0 kB",
        "2.0/3.0 kB",
        "3.0/3.0 kB",
    ]
    assert "\x1b" not in log.getvalue() and "\r" not in log.getvalue()
    reader, writer = os.openpty()  # a terminal: one line, redrawn, its last state left on screen
    with open(writer, "w") as tty, DownloadLine("downloading org/model", 2000, tty) as line:
        line.advance(1000)
        threading.Event().wait(0.05)  # two samples apart in time: a speed to show
        line.advance(1000)
    raw = read_pty(reader)
    (shown,) = shown_lines(raw)
    assert shown.startswith("downloading org/model: 2.0/2.0 kB (100%) ") and "B/s" in shown
    assert shown.endswith("ETA 0:00:00") and "\r" in raw  # redrawn in place


# --- vLLM's log lines as start-up phases ------------------------------------------------------------

# Lines of a real vLLM 0.32 CPU start (the tiny model), in order, plus lines that must not move the
# status backwards (each engine process repeats some of them).
VLLM_LOG = """\
(APIServer pid=8766) INFO 11-28 07:18:23 [api_utils.py:286] non-default args: {'model_tag': 'x'}
(APIServer pid=8766) INFO 11-28 07:18:36 [model.py:733] Resolved architecture: Qwen2_5_VLForConditionalGeneration
(APIServer pid=8766) WARNING 11-28 07:18:36 [vllm.py:1703] Enforce eager set, disabling torch.compile, CUDAGraphs
(APIServer pid=8766) INFO 11-28 07:18:36 [base.py:280] Multi-modal warmup completed in 0.230s
(EngineCore pid=9434) INFO 11-28 07:18:47 [core.py:133] Initializing a V1 LLM engine (v0.32.0) with config: model='x'
(Worker pid=9588) INFO 11-28 07:19:07 [cpu_model_runner.py:68] Starting to load model x...
Loading safetensors checkpoint shards:   0% Completed | 0/1 [00:00<?, ?it/s]
Loading safetensors checkpoint shards: 100% Completed | 1/1 [00:00<00:00, 34.00it/s]
(Worker pid=9588) INFO 11-28 07:19:08 [default_loader.py:501] Loading weights took 0.04 seconds
(Worker pid=9588) INFO 11-28 07:19:10 [cpu_worker.py:260] Explicitly set (1.0/9.34) GiB for KV cache on node 0.
(EngineCore pid=9434) INFO 11-28 07:19:11 [core.py:402] init engine (profile, create kv cache, warmup model) took 1.30 s
(EngineCore pid=9434) WARNING 11-28 07:19:13 [vllm.py:1703] Enforce eager set, disabling torch.compile, CUDAGraphs
(APIServer pid=8766) INFO 11-28 07:19:14 [entry.py:140] Starting vLLM server on http://127.0.0.1:18431
"""


def test_vllm_log_lines_become_forward_moving_phases(tmp_path):
    from ovr_serve.progress import StartupStatus

    log = tmp_path / "vllm.log"
    log.write_text(VLLM_LOG)
    screen = io.StringIO()
    with StartupStatus(log, screen) as status:
        for _ in range(50):
            if status.phase == "starting the HTTP server":
                break
            threading.Event().wait(0.1)
    phases = [line.split(": ", 1)[1].rsplit(" · ", 1)[0] for line in screen.getvalue().splitlines()]
    assert phases == [
        "starting",
        "starting vLLM",
        "reading the model config",
        "starting the engine",
        "loading weights",
        "loading weights (0/1 shards)",
        "loading weights (1/1 shards)",
        "weights loaded",
        "profiling memory, sizing the KV cache",
        "starting the API server",
        "starting the HTTP server",
    ]
    assert phase_of("INFO: 127.0.0.1:1 - GET /health 200") is None


def test_container_refuses_a_model_that_cannot_fit_before_exec(tmp_path, monkeypatch, capsys):
    from ovr_serve import docker_entry

    (tmp_path / "config.json").write_text(json.dumps(QWEN2_5_VL_7B_CONFIG))
    env = {"OVR_MODEL": str(tmp_path), "OVR_DEVICE": "cpu", "OVR_CPU_KVCACHE_GIB": "1"}
    execs = []
    monkeypatch.setattr(docker_entry.os, "execvpe", lambda *a: execs.append(a))
    assert docker_entry.main([], environ=env) == 2 and execs == []
    err = capsys.readouterr().err
    assert "lower max_model_len to 18432" in err and "cpu_kvcache_gib" in err


def _ovr_serve(env: dict[str, str], *argv: str):
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "ovr_serve.cli", *argv],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=300,
    )


def test_a_hub_model_is_checked_then_fetched_through_the_bar_then_found_cached(
    local_hub, tmp_path, tiny_model_path
):
    """The first start of a hub id, against a local server in the hub's layout (HF_ENDPOINT)."""
    _Hub.files = {p.name: p.read_bytes() for p in tiny_model_path.iterdir() if p.is_file()}
    _Hub.drop = None
    env = {"HF_ENDPOINT": local_hub, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "0"}
    argv = ["--model", "org/model", "--port", str(free_port())]
    first = _ovr_serve(env, "--check", *argv)
    assert first.returncode == 0, first.stderr
    total = sum(len(b) for b in _Hub.files.values())
    assert f"weights: {total / 1e9:.1f} GB to download from the hub" in first.stdout
    params = pf.count(checkpoint_parameters(tiny_model_path))  # from the hub's safetensors headers
    assert f"{params} parameters" in first.stdout and "hub's safetensors metadata" in first.stdout
    weights = [r for m, n, r in _Hub.requests if m == "GET" and n.endswith(".safetensors")]
    assert weights and all(r and r.startswith("bytes=0-") for r in weights)  # headers only
    fetched = _ovr_serve(env, "--dry-run", *argv)
    assert fetched.returncode == 0, fetched.stderr
    (bar,) = [line for line in fetched.stderr.splitlines() if line.startswith("downloading")]
    assert bar.startswith("downloading org/model: ") and "(100%)" in bar
    snapshot = tmp_path / "hf" / "hub" / "models--org--model" / "snapshots" / _Hub.sha
    assert (snapshot / "model.safetensors").read_bytes() == _Hub.files["model.safetensors"]
    assert " serve org/model " in fetched.stdout  # vLLM finds it in the same hub cache
    again = _ovr_serve(env, "--check", *argv)
    assert again.returncode == 0 and f"weights: in the local cache ({snapshot})" in again.stdout


def test_too_little_disk_for_the_download_is_one_line(tmp_path):
    import shutil

    size = pf.size_from_config(QWEN2_5_VL_7B_CONFIG)
    size.download_bytes = shutil.disk_usage(tmp_path).free + 10**12
    (problem,) = pf.disk_problems(size, cache_dir=tmp_path / "hub")
    assert str(tmp_path / "hub") in problem and "HF_HOME" in problem
    size.download_bytes = 10**6
    assert pf.disk_problems(size, cache_dir=tmp_path / "hub") == []


NVIDIA_SMI = """#!/bin/sh
if [ "$1" = "--query-gpu=name,memory.total,driver_version" ]; then
  echo "NVIDIA H100 80GB HBM3, 81559, 535.104.05"
  echo "NVIDIA H100 80GB HBM3, 81559, 535.104.05"
else
  echo "| NVIDIA-SMI 535.104.05   Driver Version: 535.104.05   CUDA Version: 12.2     |"
fi
"""


def test_gpu_facts_come_from_nvidia_smi_and_an_old_driver_is_named(tmp_path, monkeypatch):
    import torch

    (tmp_path / "nvidia-smi").write_text(NVIDIA_SMI)
    (tmp_path / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    gpu = gpu_device()
    assert (gpu.name, gpu.memory, gpu.count) == ("NVIDIA H100 80GB HBM3", 81559 << 20, 2)
    assert "driver 535.104.05" in gpu.notes and "CUDA 12.2 (driver)" in gpu.notes
    monkeypatch.setattr(torch.version, "cuda", "13.0")  # a newer major: refused, with the fix
    kind, line = cuda_mismatch(gpu)
    assert kind == "problem" and "supports CUDA 12.2 and this vLLM build is for CUDA 13.0" in line
    assert "update the driver" in line and "wheel built for CUDA 12" in line
    monkeypatch.setattr(torch.version, "cuda", "12.8")  # a newer minor: minor-version compatible
    assert cuda_mismatch(gpu)[0] == "warning"
    monkeypatch.setattr(torch.version, "cuda", "12.1")
    assert cuda_mismatch(gpu) is None


# --- one owner each: the AVX check, the default context length -------------------------------------


def test_the_cpu_isa_is_read_from_the_cpu_flags():
    from ovr_serve.device import cpu_isa

    line = "flags\t\t: fpu vme sse4_2 {} fma\n"
    assert cpu_isa(line.format("avx2 avx512f avx512bw")) == "AVX-512"
    assert cpu_isa(line.format("avx avx2")) == "AVX2"
    if os.uname().machine == "x86_64":
        assert cpu_isa(line.format("avx avx512_bf16")) is None  # no avx2/avx512f: refused


def test_launch_and_preflight_take_one_default_context_length(tiny_model_path):
    from ovr_serve.config import DEFAULT_MAX_MODEL_LEN
    from ovr_serve.launch import resolve

    positions = json.loads((tiny_model_path / "config.json").read_text())["text_config"]
    positions = positions["max_position_embeddings"]
    assert positions < DEFAULT_MAX_MODEL_LEN  # the tiny model's cap applies
    cfg = ServeConfig(model=str(tiny_model_path), think_in_prompt="no")
    *_, max_len = resolve(cfg)
    facts = pf.preflight(cfg, device=Device("cpu", "test CPU", 64 << 30), ports=False).facts
    assert max_len == positions and any(f"per sequence of {positions} tokens" in f for f in facts)
    assert ServeConfig().context_length(128000) == DEFAULT_MAX_MODEL_LEN == 49152
    assert (
        ServeConfig(max_model_len=100_000).context_length(8192) == 100_000
    )  # asked for: vLLM says
    assert ServeConfig().context_length(None) == DEFAULT_MAX_MODEL_LEN
