"""Start vLLM's OpenAI-compatible server (and optionally the web UI) with OVR's settings.

`serve(cfg)` is what `ovr-serve` runs; `start_server(cfg)` returns a handle that tests, benchmarks
and the trainers use to get a real endpoint and stop it again.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import httpx

from ovr_core.format import THINK_OPEN
from ovr_core.hub import hub_reachable
from ovr_core.model_shapes import shape_from_config
from ovr_core.wire import API_KEY_ENV
from ovr_serve.config import ServeConfig, process_env, render_dry_run, vllm_command
from ovr_serve.device import detect_device
from ovr_serve.errors import LaunchError
from ovr_serve.preflight import Report, preflight
from ovr_serve.progress import (
    RequestLines,
    StartupStatus,
    cached_snapshot,
    fetch_weights,
    log_tail,
)


@dataclass
class ServerHandle:
    """A running endpoint (and web UI, when asked); `stop()` ends every child process."""

    cfg: ServeConfig
    processes: list[subprocess.Popen] = field(default_factory=list)
    log_path: Path | None = None

    @property
    def base_url(self) -> str:
        return self.cfg.base_url()

    @property
    def root(self) -> str:
        return self.base_url.removesuffix("/v1")

    @property
    def ui_url(self) -> str:
        return f"http://{self.cfg.ui_host}:{self.cfg.ui_port}"

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM each child's process group, SIGKILL what is left after ``grace`` seconds."""
        for proc in self.processes:
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in self.processes:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait(timeout=10)
            _signal_group(proc, signal.SIGKILL)  # stragglers in the group (engine workers)

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def serve(cfg: ServeConfig, dry_run: bool = False, check: bool = False) -> int:
    """Run the endpoint (and UI) until Ctrl-C / SIGTERM; returns the exit code.

    Pre-flight first (``check`` stops after it), then the weights download, then vLLM with its
    log in a file and one live status line, then the ready banner, then one line per request.
    """
    if cfg.demo:
        cfg = replace(cfg, model=str(demo_model_dir()), demo=False)
    if dry_run:
        cfg, device, think, max_len = resolve(cfg)
        print(render_dry_run(cfg, device, think, max_len))
        return 0
    report = preflight(cfg)
    if check or not report.ok or report.warnings:
        code = print_preflight(report, verbose=check)
        if check or code:
            return code
    cfg, device, think, max_len = resolve(cfg)
    log_path = None if cfg.verbose else prepare_log(cfg)
    started = time.monotonic()
    if log_path is None:
        handle = start_server(cfg, resolved=(device, think, max_len))
    else:
        with StartupStatus(log_path, sys.stderr) as status:
            handle = start_server(cfg, log_path, (device, think, max_len), status=status)
    print(ready_message(handle, time.monotonic() - started), flush=True)
    requests = None
    if log_path is not None and not cfg.quiet:
        # from the banner on: requests made during start-up (the UI's model list) stay in the log
        requests = RequestLines(log_path, sys.stdout, offset=log_path.stat().st_size).start()
    try:
        return _run_until_stopped(handle)
    finally:
        if requests:
            requests.stop()
        handle.stop()


def print_preflight(report: Report, verbose: bool) -> int:
    """Problems as one line each on stderr (facts too with ``--check``); 0 when all is well."""
    if verbose:
        for fact in report.facts:
            print(f"ovr-serve --check: {fact}")
    for problem in report.problems:
        print(f"ovr-serve: {problem}", file=sys.stderr)
    for warning in report.warnings:
        print(f"ovr-serve: warning: {warning}", file=sys.stderr)
    if verbose and report.ok:
        print("ovr-serve --check: all checks passed; nothing was started")
    return 0 if report.ok else 2


def prepare_log(cfg: ServeConfig) -> Path:
    """The (emptied) file vLLM's log goes to: ``cfg.log_file`` or one per port in OVR's cache."""
    if cfg.log_file:
        path = Path(cfg.log_file).expanduser()
    else:
        cache = Path(os.environ.get("OVR_CACHE") or Path.home() / ".cache" / "ovr")
        path = cache / "logs" / f"ovr-serve-{cfg.port}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path.resolve()


def _run_until_stopped(handle: ServerHandle) -> int:
    def _stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    try:
        while all(p.poll() is None for p in handle.processes):
            time.sleep(1.0)
        dead = next(p for p in handle.processes if p.poll() is not None)
        where = f" (log: {handle.log_path})" if handle.log_path else ""
        print(
            f"ovr-serve: a child process exited with code {dead.returncode}; stopping{where}.",
            file=sys.stderr,
        )
        return dead.returncode or 1
    except KeyboardInterrupt:
        print("\novr-serve: stopping…", file=sys.stderr)
        return 0


def resolve(cfg: ServeConfig) -> tuple[ServeConfig, str, bool, int]:
    """Fill in what `auto` means on this machine: model path, device, template, context length."""
    if cfg.demo:
        cfg = replace(cfg, model=str(demo_model_dir()), demo=False)
    if not cfg.is_loopback() and not cfg.api_key():
        raise LaunchError(
            f"refusing to listen on {cfg.host} without an API key: export {cfg.api_key_env}=<a long random"
            " secret> (clients send it as the OpenAI api_key), or listen on 127.0.0.1"
        )
    device = detect_device(cfg.device)
    local = _local_model_dir(cfg.model)
    if local is None:
        raise LaunchError(
            f"cannot reach the model hub to download {cfg.model} (and it is not in the local cache);"
            " for the offline demo (tiny test model + web UI) run: make demo"
        )
    cfg = _cap_pixels_at_checkpoint(cfg, local)
    think = _resolve_think_in_prompt(cfg, local)
    max_len = cfg.context_length(checkpoint_positions(local))
    return cfg, device, think, max_len


def start_server(
    cfg: ServeConfig,
    log_path: str | os.PathLike | None = None,
    resolved: tuple[str, bool, int] | None = None,
    status: StartupStatus | None = None,
) -> ServerHandle:
    """Start vLLM (and the UI when ``cfg.ui``), wait for /health, return the handle.

    With ``log_path`` both write there, else to this terminal; ``status`` is told our own steps.
    """
    if resolved is None:
        cfg, *rest = resolve(cfg)
        resolved = tuple(rest)
    device, think, max_len = resolved
    cmd = vllm_command(cfg, device, think, max_len)
    cmd[0] = sys.executable
    env = process_env(cfg, device, think, os.environ)
    log = open(log_path, "ab") if log_path else None  # noqa: SIM115 - lives as long as the server
    handle = ServerHandle(cfg, log_path=Path(log_path) if log_path else None)
    handle.processes.append(_spawn(cmd, env, log))
    try:
        _wait_healthy(handle, cfg.startup_timeout)
        if cfg.ui:
            if status:
                status.what = "web UI"
                status.set("starting")
            ui_cmd = [
                sys.executable,
                "-m",
                "webui.app",
                "--endpoint",
                handle.base_url,
                "--model",
                cfg.served_model_name,
                "--host",
                cfg.ui_host,
                "--port",
                str(cfg.ui_port),
            ]
            # the API's Host/Origin openings hold for the UI too (its flags: ovr-webui --help)
            if cfg.allowed_hosts:
                ui_cmd += ["--allowed-hosts", *cfg.allowed_hosts]
            if cfg.allowed_origins:
                ui_cmd += ["--allowed-origins", *cfg.allowed_origins]
            # the UI reads the key from the one variable clients use, whatever the server read it from
            ui_env = {**os.environ, API_KEY_ENV: cfg.api_key() or ""}
            handle.processes.append(_spawn(ui_cmd, ui_env, log))
            _wait_http(
                handle.processes[-1], handle.ui_url + "/", cfg.startup_timeout, "web UI", log_path
            )
    except BaseException:
        handle.stop()
        raise
    return handle


def ready_message(handle: ServerHandle, started_in: float | None = None) -> str:
    """The banner printed once the endpoint answers: URLs, the key, a client snippet, the log."""
    cfg = handle.cfg
    took = f" (started in {started_in:.0f} s)" if started_in is not None else ""
    if cfg.api_key():
        key_line = f"API key: clients send ${cfg.api_key_env}"
        key = f'os.environ["{cfg.api_key_env}"]'
    else:
        key_line = f"API key: none (loopback only); export {cfg.api_key_env}=… to require one"
        key = '"none"'
    lines = [f"OVR is ready{took}: {handle.base_url}  (model name: {cfg.served_model_name})"]
    if cfg.ui:
        lines.append(f"  Web UI:   {handle.ui_url}")
    lines.append(f"  {key_line}")
    if handle.log_path:
        lines.append(f"  vLLM log: {handle.log_path}")
    lines += [
        "",
        "  import os; from openai import OpenAI",
        f'  client = OpenAI(base_url="{handle.base_url}", api_key={key})',
        f'  r = client.chat.completions.create(model="{cfg.served_model_name}", messages=[{{"role": "user", "content": "What is 7 * 6?"}}])',
        "  print(r.choices[0].message.reasoning, r.choices[0].message.content)",
        "",
    ]
    quiet = cfg.quiet or not handle.log_path
    lines.append("Ctrl-C stops everything." + ("" if quiet else " One line per request follows:"))
    return "\n".join(lines)


def demo_model_dir() -> Path:
    """The tiny test model's checkpoint, built on first use by ``ovr-train tiny-model --cached``.

    A subprocess, not an import: serving does not depend on the training package's code, only on
    the checkpoint it writes (which carries its own image cap in its processor config).
    """
    cmd = [sys.executable, "-m", "ovr_train.cli", "tiny-model", "--cached"]
    try:
        out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise LaunchError(
            f"could not build the demo model ({e}): it needs the training extra, "
            "pip install -e '.[train]' (scripts/setup.sh installs it)"
        ) from e
    return Path(out.strip().splitlines()[-1])


def _cap_pixels_at_checkpoint(cfg: ServeConfig, model_dir: Path) -> ServeConfig:
    """Lower ``max_pixels`` to the checkpoint's own processor cap, saying so (the tiny model's is
    16 merged patches: more image tokens derail its format)."""
    cap = checkpoint_max_pixels(model_dir)
    if cap is None or cap >= cfg.max_pixels:
        return cfg
    print(
        f"ovr-serve: images resized to at most {cap} pixels (the checkpoint's own processor cap)",
        file=sys.stderr,
    )
    return replace(cfg, max_pixels=cap, min_pixels=min(cfg.min_pixels, cap))


def checkpoint_max_pixels(model_dir: Path) -> int | None:
    """The image cap a checkpoint's processor declares: ``max_pixels``, or ``size.longest_edge``
    (a pixel count in transformers 5), in ``preprocessor_config.json`` or ``processor_config.json``."""
    for name, key in (
        ("preprocessor_config.json", None),
        ("processor_config.json", "image_processor"),
    ):
        try:
            own = json.loads((model_dir / name).read_text())
        except (OSError, ValueError):
            continue
        own = own.get(key, {}) if key else own
        cap = own.get("max_pixels") or (own.get("size") or {}).get("longest_edge")
        if isinstance(cap, int):
            return cap
    return None


def _local_model_dir(model: str) -> Path | None:
    """The checkpoint folder: a local path, the hub cache, or a fresh download; None if offline."""
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise LaunchError(f"{path} has no config.json: is it a checkpoint directory?")
        return path.resolve()
    if model.startswith((".", "/", "~")):
        raise LaunchError(f"model directory {model} does not exist")
    cached = cached_snapshot(model)
    if cached is not None:
        return cached
    if not hub_reachable():
        return None
    return fetch_weights(model, out=sys.stderr)  # one bar; kept in the hub cache for next time


def _resolve_think_in_prompt(cfg: ServeConfig, model_dir: Path) -> bool:
    if cfg.think_in_prompt in ("yes", "true", "1"):
        return True
    if cfg.think_in_prompt in ("no", "false", "0"):
        return False
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    template = Path(cfg.chat_template).read_text() if cfg.chat_template else None
    try:
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": "x"}],
            chat_template=template,
            tokenize=False,
            add_generation_prompt=True,
        )
    except Exception:
        return False
    return prompt.rstrip().endswith(THINK_OPEN)


def checkpoint_positions(model_dir: Path) -> int | None:
    """The checkpoint's max_position_embeddings (the cap on the default context length)."""
    config = json.loads((model_dir / "config.json").read_text())
    return shape_from_config(config, model_dir.name).max_positions


def _spawn(cmd: list[str], env: dict, log) -> subprocess.Popen:
    return subprocess.Popen(
        cmd,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT if log else None,
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )


def _die_with_parent() -> None:
    """Linux: the child gets SIGTERM if ovr-serve itself is killed (no orphans holding ports)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _wait_healthy(handle: ServerHandle, timeout: float) -> None:
    _wait_http(
        handle.processes[0], handle.root + "/health", timeout, "vLLM server", handle.log_path
    )


def _wait_http(
    proc: subprocess.Popen, url: str, timeout: float, what: str, log_path: Path | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            if log_path is None:
                raise LaunchError(
                    f"{what} exited with code {proc.returncode} during start-up (see its log above)"
                )
            raise LaunchError(
                f"{what} exited with code {proc.returncode} during start-up; the end of its log:\n"
                f"{log_tail(log_path)}\n(full log: {log_path})"
            )
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1.0)
    raise LaunchError(
        f"{what} did not answer {url} within {timeout:.0f} s; raise --startup_timeout or read its log"
    )
