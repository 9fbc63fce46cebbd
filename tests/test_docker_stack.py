"""`docker compose up` for real: the CPU stack built, started, answered through its ports, torn down.

A real Docker engine (the machine's, or a dockerd this test starts and stops), the CPU image built
without a registry or an index (docker/make-base.sh's Debian base, docker/make-wheelhouse.sh's
wheels), then, from a copy of the repository with a docker/.env as a user writes it:

    docker compose -f compose.yaml -f docker/compose.cpu.yaml up -d --wait      # OVR_DEMO=true
    docker compose -f compose.yaml -f docker/compose.cpu.yaml --profile scale up -d --wait
    docker compose -f compose.yaml -f docker/compose.cpu.yaml --profile scale down

The endpoint answers through its published port with the key (401 without), the web UI's login
and a chat through it in headless Chromium, the balancer sends requests to both replicas, and
`down` leaves no container. The cache (tests/helpers/docker_stack.py) makes a second run cost a
few minutes: the first build on a machine takes longer (figures in docker/README.md).
"""

from __future__ import annotations

import base64
import json
import os
import shlex
import sys
import time

import httpx
import pytest
from openai import OpenAI

from tests.conftest import finished_requests, free_port
from tests.helpers import docker_stack as ds
from tests.webui_helpers import CHROMIUM, chromium_page, screenshot
from webui.example_images import EXAMPLES_DIR

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

PROJECT = "ovr-stack-test"
KEY = "stack-test-key-0123456789"
UI_USER, UI_PASSWORD = "ann", "stack-test-password"
CPU = ["-f", "compose.yaml", "-f", "docker/compose.cpu.yaml"]
QUESTION = "How many circles are in the image? Put the final count in \\boxed{}."


@pytest.fixture(scope="module")
def engine():
    """(environment, whether this test started the engine)."""
    with ds.docker_engine() as found:
        yield found


@pytest.fixture(scope="module")
def stack(engine):
    """The CPU stack built and up (one replica and the web UI), its settings; down afterwards."""
    docker_env, ours = engine
    compose = ds.compose_binary()
    ds.check_free_disk()
    base, nginx = ds.base_images(docker_env)
    project = ds.project_copy(ds.wheelhouse(docker_env))
    ports = {"OVR_API_PORT": free_port(), "OVR_WEBUI_PORT": free_port(), "OVR_LB_PORT": free_port()}
    settings = {
        "OVR_API_KEY": KEY,
        "OVR_UI_USER": UI_USER,
        "OVR_UI_PASSWORD": UI_PASSWORD,
        "OVR_DEMO": "true",
        "OVR_CPU_BASE": base,
        "OVR_LB_IMAGE": nginx,
        "OVR_CPU_KVCACHE_GIB": "1",
        **{k: str(v) for k, v in ports.items()},
    }
    ds.write_user_env(project, settings)
    env = {k: v for k, v in docker_env.items() if not k.startswith("OVR_")}  # docker/.env decides

    def dc(*args, timeout=900, check=True):
        return ds.run(
            [str(compose), "-p", PROJECT, *CPU, *args],
            env=env,
            cwd=project,
            timeout=timeout,
            check=check,
        )

    old_image, started = ds.image_id(docker_env, "ovr:cpu"), time.monotonic()
    dc("build", "ovr", timeout=3000)
    build_s = time.monotonic() - started
    print(f"\n[docker-stack] build: {build_s:.0f} s", flush=True)
    if ours:
        ds.drop_superseded(docker_env, old_image, "ovr:cpu", build_s)
    started = time.monotonic()
    up = dc("up", "-d", "--wait", "--wait-timeout", "900", check=False, timeout=1000)
    if up.returncode != 0:
        logs = dc("logs", "--no-color", "--tail", "80", check=False).stdout
        dc("--profile", "scale", "down", check=False)
        pytest.fail(f"compose up failed:\n{up.stderr[-3000:]}\n--- logs ---\n{logs[-6000:]}")
    print(f"[docker-stack] up, healthy: {time.monotonic() - started:.0f} s", flush=True)
    info = {"dc": dc, "env": env, "project": project, **ports}
    try:
        yield info
    finally:
        dc("--profile", "scale", "down", "--timeout", "30", check=False)


def api(stack) -> str:
    return f"http://127.0.0.1:{stack['OVR_API_PORT']}"


def shapes_data_url() -> str:
    png = (EXAMPLES_DIR / "shapes.png").read_bytes()
    return "data:image/png;base64," + base64.b64encode(png).decode()


def image_chat(base_url: str) -> object:
    client = OpenAI(base_url=base_url + "/v1", api_key=KEY, timeout=300)
    return client.chat.completions.create(
        model="ovr",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": shapes_data_url()}},
                    {"type": "text", "text": QUESTION},
                ],
            }
        ],
        max_tokens=64,
        temperature=0,
    )


def test_endpoint_answers_through_the_published_port_with_the_key(stack):
    url = api(stack)
    assert httpx.get(url + "/v1/models", timeout=30).status_code == 401
    wrong = httpx.get(url + "/v1/models", headers={"Authorization": "Bearer nope"}, timeout=30)
    assert wrong.status_code == 401
    models = httpx.get(url + "/v1/models", headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
    assert models.status_code == 200 and [m["id"] for m in models.json()["data"]] == ["ovr"]
    reply = image_chat(url)
    choice = reply.choices[0]
    assert reply.usage.prompt_tokens > 20  # the image's tokens are in the prompt
    assert choice.finish_reason in ("stop", "length") and reply.usage.completion_tokens > 0
    message = choice.message.model_dump()
    assert (message.get("reasoning") or message.get("reasoning_content") or "") + (
        message.get("content") or ""
    )


def test_container_log_opens_with_the_vllm_command_and_runs_unprivileged(stack):
    logs = stack["dc"]("logs", "--no-color", "ovr").stdout
    command = next(
        ln
        for ln in logs.splitlines()
        if "vllm.entrypoints.openai.api_server" in ln or " serve " in ln
    )
    assert "--api-key" not in command  # the key is in the environment, never on a command line
    uid = stack["dc"]("exec", "-T", "ovr", "id", "-u").stdout.strip()
    assert uid == "10001"


@pytest.mark.skipif(not ds.Path(CHROMIUM).exists(), reason="needs Debian's chromium")
def test_web_ui_login_and_a_chat_in_chromium(stack):
    url = f"http://127.0.0.1:{stack['OVR_WEBUI_PORT']}"
    with chromium_page() as page:
        page.goto(url + "/")
        login = page.locator("input[type=password]")
        login.wait_for(timeout=60_000)
        assert page.locator("#ovr-input").count() == 0  # nothing of the app before logging in
        screenshot(page, "docker-webui-login")
        page.locator("input[type=text]").first.fill(UI_USER)
        login.fill(UI_PASSWORD)
        page.get_by_role("button", name="Login").click()
        page.wait_for_selector("#ovr-input textarea", timeout=60_000)
        page.set_input_files("#ovr-input input[type=file]", [str(EXAMPLES_DIR / "shapes.png")])
        page.wait_for_selector("#ovr-input img")
        page.fill("#ovr-input textarea", QUESTION)
        page.press("#ovr-input textarea", "Enter")
        page.wait_for_function(
            "document.querySelectorAll('#ovr-chat .bot-row').length > 0", timeout=120_000
        )
        page.wait_for_selector("#ovr-input .submit-button", timeout=300_000)  # generation over
        screenshot(page, "docker-webui-chat")
        chat = page.locator("#ovr-chat").inner_text()
        assert "Error" not in chat and "Cannot reach" not in chat, chat[-500:]
        assert page.locator("#ovr-chat .thought-group").count() >= 1  # the trace came through


def test_scale_profile_balances_over_both_replicas(stack):
    dc = stack["dc"]
    up = dc(
        "--profile",
        "scale",
        "up",
        "-d",
        "--wait",
        "--wait-timeout",
        "900",
        timeout=1000,
        check=False,
    )
    if up.returncode != 0:
        logs = dc(
            "--profile", "scale", "logs", "--no-color", "--tail", "60", "ovr-2", "lb", check=False
        ).stdout
        pytest.fail(f"scale profile did not come up:\n{up.stderr[-3000:]}\n{logs[-6000:]}")
    roots = {
        name: f"http://{ds.container_ip(stack['env'], PROJECT, name)}:8000"
        for name in ("ovr", "ovr-2")
    }
    before = {name: finished_requests(root, KEY) for name, root in roots.items()}
    lb = f"http://127.0.0.1:{stack['OVR_LB_PORT']}"
    assert httpx.get(lb + "/v1/models", timeout=30).status_code == 401  # the key passes through
    for _ in range(4):
        assert image_chat(lb).choices[0].finish_reason in ("stop", "length")
    served = {name: finished_requests(root, KEY) - before[name] for name, root in roots.items()}
    assert sum(served.values()) == 4 and all(n >= 1 for n in served.values()), served


def test_multinode_dry_run_matches_the_image(stack):
    """docker/train-multinode.sh's rollout line parses with the image's own ovr-train exactly as
    with this checkout's; its training line needs the project venv (TRL, accelerate, recipes/), as
    the script says, not the image."""
    script = (ds.DOCKER / "train-multinode.sh").read_text()
    assert "the image of docker/ serves, it does not train" in script
    out = ds.run(
        ["bash", str(ds.DOCKER / "train-multinode.sh")],
        env={"PATH": "/usr/bin:/bin", "DRY_RUN": "1", "ROLE": "rollout", "BIND_ADDR": "10.0.0.9"},
    )
    rollout = shlex.split(out.stdout)
    assert rollout[:2] == ["ovr-train", "rollout-servers"]
    # ovr-train's own dispatch resolves the subcommand; its parser reads the printed flags.
    probe = (
        "import dataclasses, importlib, importlib.util, json, shutil; "
        "from ovr_train.cli import COMMANDS; "
        f"module = importlib.import_module(COMMANDS[{rollout[1]!r}][0].split(':')[0]); "
        f"spec = module.parse_args({rollout[2:]!r}); "
        "print(json.dumps({'spec': dataclasses.asdict(spec), "
        "'ovr-train': bool(shutil.which('ovr-train')), "
        "'trl': importlib.util.find_spec('trl') is not None, "
        "'accelerate': shutil.which('accelerate')}, default=str))"
    )
    got = stack["dc"](
        "run", "--rm", "--no-deps", "-T", "--entrypoint", "python3", "ovr", "-c", probe
    ).stdout
    in_image = json.loads(got.strip().splitlines()[-1])
    here = ds.run(
        [sys.executable, "-c", probe],
        cwd=stack["project"],
        env={**os.environ, "PYTHONPATH": str(stack["project"])},
    )
    assert in_image["spec"] == json.loads(here.stdout.strip().splitlines()[-1])["spec"]
    assert in_image["spec"]["host"] == "10.0.0.9" and in_image["ovr-train"]
    assert not in_image["trl"] and in_image["accelerate"] is None


def test_down_leaves_no_container(stack):
    dc = stack["dc"]
    dc("--profile", "scale", "down", "--timeout", "30")
    left = ds.run(
        ["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={PROJECT}"],
        env=stack["env"],
    ).stdout.split()
    assert left == []
