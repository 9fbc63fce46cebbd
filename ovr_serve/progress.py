"""What a person sees while ovr-serve starts: one download bar, one live status line, then requests.

- `fetch_weights()` downloads a hub checkpoint with huggingface_hub's own `hf_hub_download` (one
  call per file, so finished files are kept and a dropped connection resumes with a Range request)
  behind a single line drawn by rich's progress columns: size, percent, speed, ETA.
- `StartupStatus` follows vLLM's log file and keeps one line saying which phase it is in (loading
  weights, profiling memory, warming up …) and for how long.
- `RequestLines` then echoes the one compact line per request that `ovr_serve.request_log` writes.
"""

from __future__ import annotations

import functools
import re
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TextIO

from rich.console import Console
from rich.progress import (
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from ovr_serve.request_log import MARKER

# Files vLLM does not read when safetensors are there (other frameworks' copies of the weights).
SKIP_BESIDE_SAFETENSORS = (".bin", ".pt", ".pth", ".msgpack", ".h5", ".onnx", ".ckpt")
DOWNLOAD_THREADS = 4

# vLLM 0.32's start-up log lines -> what a person is told, in start-up order: the status only moves
# forward (each engine process repeats some lines). Checked against its CPU and CUDA logs; a vLLM
# that rewords a line only makes the status lag behind, never fail.
PHASES = [
    (r"non-default args", "starting vLLM"),
    (r"Resolved architecture", "reading the model config"),
    (r"Initializing a V1 LLM engine", "starting the engine"),
    (r"Starting to load model", "loading weights"),
    (r"checkpoint shards:\s+\d+% Completed \| (\d+)/(\d+)", "loading weights ({0}/{1} shards)"),
    (r"Loading weights took|Model loading took", "weights loaded"),
    (r"Dynamo bytecode transform|Compiling a graph|torch\.compile takes", "compiling the model"),
    (
        r"Memory profiling|Available KV cache memory|KV cache size|GiB for KV cache",
        "profiling memory, sizing the KV cache",
    ),
    (r"Capturing CUDA graph", "capturing CUDA graphs"),
    (r"Warming up|Graph capturing finished", "warming up"),
    (r"init engine \(profile, create kv cache, warmup model\) took", "starting the API server"),
    (r"Starting vLLM server on|Available routes", "starting the HTTP server"),
]


# --- the hub -----------------------------------------------------------------------------------------


def cached_snapshot(repo_id: str, cache_dir: str | Path | None = None) -> Path | None:
    """The cached checkpoint folder of ``repo_id`` when every weight file is in it, else None."""
    from huggingface_hub import snapshot_download

    try:
        path = Path(snapshot_download(repo_id, local_files_only=True, cache_dir=cache_dir))
    except Exception:
        return None
    index = path / "model.safetensors.index.json"
    if index.exists():
        import json

        shards = set(json.loads(index.read_text())["weight_map"].values())
        complete = all((path / s).exists() for s in shards)
    else:
        complete = any(path.glob("*.safetensors")) or any(path.glob("*.bin"))
    return path if complete and (path / "config.json").exists() else None


def hub_files(
    repo_id: str, endpoint: str | None = None, cache_dir: str | Path | None = None
) -> list[tuple[str, int]]:
    """(file, bytes) still to download for ``repo_id``: what vLLM reads, minus what is cached."""
    return _plan(repo_id, endpoint, cache_dir)[1]


def _plan(repo_id: str, endpoint, cache_dir) -> tuple[str, list[tuple[str, int]]]:
    from huggingface_hub import HfApi, try_to_load_from_cache

    info = HfApi(endpoint=endpoint).model_info(repo_id, files_metadata=True)
    files = [(s.rfilename, s.size or 0) for s in info.siblings or []]
    if any(name.endswith(".safetensors") for name, _ in files):
        files = [(n, s) for n, s in files if not n.endswith(SKIP_BESIDE_SAFETENSORS)]
    todo = [
        (n, s)
        for n, s in files
        if not isinstance(
            try_to_load_from_cache(repo_id, n, cache_dir=cache_dir, revision=info.sha), str
        )
    ]
    return info.sha, todo


def fetch_weights(
    repo_id: str,
    out: TextIO | None = None,
    endpoint: str | None = None,
    cache_dir: str | Path | None = None,
) -> Path:
    """Download what is missing of ``repo_id`` into the hub cache behind one bar; its folder."""
    from huggingface_hub import hf_hub_download

    sha, todo = _plan(repo_id, endpoint, cache_dir)
    get = functools.partial(
        hf_hub_download, repo_id, revision=sha, endpoint=endpoint, cache_dir=cache_dir
    )
    if todo:
        with DownloadLine(
            f"downloading {repo_id}", sum(s for _, s in todo), out or sys.stderr
        ) as line:
            share = functools.partial(FileShare, line.advance)
            with ThreadPoolExecutor(DOWNLOAD_THREADS) as pool:
                list(pool.map(lambda f: get(f[0], tqdm_class=share), todo))
    return Path(get("config.json")).parent


def fetch_file(repo_id: str, filename: str) -> Path:
    """One small file (a config.json) into the hub cache, without a line of its own."""
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(repo_id, filename, tqdm_class=FileShare))


class DownloadLine:
    """One progress line for many files, from rich's columns: done/total, percent, speed, ETA.

    On a terminal rich redraws it in place; elsewhere (a log file, a container log) it is written
    as a plain line every ``log_every`` seconds and once at the end.
    """

    def __init__(self, label: str, total: int, out: TextIO, log_every: float = 30.0):
        tty = out.isatty() if hasattr(out, "isatty") else False
        # off a terminal rich would wrap at 80 columns: one line, however long the repo id
        console = Console(file=out, width=None if tty else 200, highlight=False)
        self.progress = Progress(
            TextColumn("{task.description}:"),
            DownloadColumn(),
            TextColumn("({task.percentage:.0f}%)"),
            TransferSpeedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            disable=not tty,  # off a terminal the lines are ours: `_log()`
        )
        self.task = self.progress.add_task(label, total=total)
        self.tty, self.every, self.last = tty, log_every, time.monotonic()
        self.logged = -1  # bytes done when the last plain line was written
        self.lock = threading.Lock()

    def advance(self, n: int) -> None:
        """Count ``n`` more bytes (called from every download thread)."""
        with self.lock:
            self.progress.advance(self.task, n)
            if not self.tty and time.monotonic() - self.last >= self.every:
                self._log()

    def _log(self) -> None:
        self.last = time.monotonic()
        tasks = self.progress.tasks
        if tasks[0].completed == self.logged:
            return
        self.logged = tasks[0].completed
        self.progress.console.print(self.progress.make_tasks_table(tasks), soft_wrap=True)

    def __enter__(self) -> DownloadLine:
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()  # on a terminal: the final line stays
        if not self.tty:
            with self.lock:
                self._log()


class FileShare:
    """What `hf_hub_download(tqdm_class=…)` builds per file: hands its bytes to ``advance``
    (nothing without one: a config.json fetched alone)."""

    def __init__(self, advance: Callable[[int], None] | None = None, **_: object):
        self.forward = advance

    def update(self, n: int = 1) -> None:
        if self.forward:
            self.forward(n)

    def close(self) -> None:
        pass

    def __enter__(self) -> FileShare:
        return self

    def __exit__(self, *exc) -> None:
        pass


# --- vLLM's log ----------------------------------------------------------------------------------------


def phase_of(line: str) -> tuple[int, str] | None:
    """(step, status text) for one vLLM log line, or None when the line says nothing of start-up."""
    found = None
    for step, (pattern, label) in enumerate(PHASES):
        m = re.search(pattern, line)
        if m:
            found = step, label.format(*m.groups())
    return found


class LogFollower(threading.Thread):
    """Calls ``on_line`` for each line appended to ``path`` from ``offset`` on (a `tail -f`)."""

    def __init__(self, path: Path, on_line: Callable[[str], None], offset: int = 0):
        super().__init__(daemon=True)
        self.path, self.on_line, self.offset = Path(path), on_line, offset
        self.stopped = threading.Event()

    def run(self) -> None:
        partial = b""
        while not self.stopped.is_set():
            try:
                with self.path.open("rb") as f:
                    f.seek(self.offset)
                    chunk = f.read()
            except OSError:
                chunk = b""
            self.offset += len(chunk)
            *lines, partial = (partial + chunk).replace(b"\r", b"\n").split(b"\n")
            for line in lines:
                self.on_line(line.decode(errors="replace"))
            self.stopped.wait(0.2)

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=2)


class StartupStatus:
    """One live line — 'vLLM: loading weights (2/5 shards) · 41 s' — fed by vLLM's log file.

    On a terminal it is redrawn in place every half second; elsewhere each phase is its own line.
    """

    def __init__(self, log_path: Path, out: TextIO, what: str = "vLLM", offset: int = 0):
        self.out, self.what = out, what
        self.tty = out.isatty() if hasattr(out, "isatty") else False
        self.phase = "starting"
        self.step = -1
        self.start = time.monotonic()
        self.lock = threading.Lock()
        self.follower = LogFollower(log_path, self._line, offset)
        self.ticker = threading.Thread(target=self._tick, daemon=True)
        self.finished = threading.Event()

    def __enter__(self) -> StartupStatus:
        self._show()
        self.follower.start()
        self.ticker.start()
        return self

    def __exit__(self, *exc) -> None:
        self.follower.stop()
        self.finished.set()
        if self.tty:
            with self.lock:
                self.out.write("\r" + " " * 79 + "\r")
                self.out.flush()

    def set(self, phase: str) -> None:
        """Say what start-up is doing now (also for steps that are ours, e.g. the web UI)."""
        with self.lock:
            if phase == self.phase:
                return
            self.phase = phase
        self._show()

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def _line(self, line: str) -> None:
        found = phase_of(line)
        if found and found[0] >= self.step:
            self.step = found[0]
            self.set(found[1])

    def _tick(self) -> None:
        while not self.finished.wait(0.5):
            if self.tty:
                self._show()

    def _show(self) -> None:
        with self.lock:
            text = f"{self.what}: {self.phase} · {self.elapsed():.0f} s"
            self.out.write("\r" + text.ljust(79) if self.tty else text + "\n")
            self.out.flush()


class RequestLines:
    """After the banner: echo the compact per-request lines `ovr_serve.request_log` writes."""

    def __init__(self, log_path: Path, out: TextIO, offset: int = 0):
        self.out = out
        self.follower = LogFollower(log_path, self._line, offset)

    def start(self) -> RequestLines:
        self.follower.start()
        return self

    def stop(self) -> None:
        self.follower.stop()

    def _line(self, line: str) -> None:
        if MARKER in line:
            self.out.write(line.split(MARKER, 1)[1].strip() + "\n")
            self.out.flush()


def log_tail(path: Path, lines: int = 15) -> str:
    """The last lines of a log worth showing when start-up fails (no route listings)."""
    try:
        text = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return ""
    keep = [t for t in text if t.strip() and "Route:" not in t]
    return "\n".join("  " + t[:300] for t in keep[-lines:])
