"""Server-mode RL rollouts on vLLM's own data parallelism: `ovr-train rollout-servers`, the
trainer's client (`ovr_train.rollouts.client`), the CPU weight-transfer backend and the key guard.

The slow tests start one real ``vllm serve --data-parallel-size 2`` on CPU (`RolloutServer`, the
command's own code: a DP coordinator and two engines behind one API) on a scrambled copy of the
tiny model, push the policy's weights with one broadcast, and train through it.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import requests
import torch

from ovr_train.rollouts.auth import KEY_ENV, bearer
from ovr_train.rollouts.client import (
    RolloutServerError,
    connect,
    endpoint_url,
    name_tokens,
)
from ovr_train.rollouts.servers import RolloutServer, RolloutSpec, check_spec, server_command
from tests.conftest import free_port
from tests.helpers.rl_runs import record_figures, seed_overrides

FORMAT_PROMPTS = [
    "<|im_start|>user\nHow many shapes are there?<|im_end|>\n<|im_start|>assistant\n<think>",
    "<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nCount the red squares.<|im_end|>\n<|im_start|>assistant\n<think>\n",
]
KEY = "rollout-test-key"


# --- the command, the endpoint, logprob shapes --------------------------------------------------


def _generate_logprobs_from_vllm():
    from vllm.entrypoints.scale_out.token_in_token_out.protocol import GenerateLogProbs

    return GenerateLogProbs.model_validate(
        {
            "content": [
                {
                    "token_id": 7,
                    "logprob": -0.5,
                    "top_logprobs": [{"token_id": 7, "logprob": -0.5}],
                },
                {"token_id": 3, "logprob": -1.5, "top_logprobs": []},
            ]
        }
    ).model_dump()


def test_upstream_generate_logprobs_still_differ():
    """vLLM 0.32's /inference/v1/generate wire shape breaks TRL 1.16's parser (image rollouts).
    When this fails, TRL reads vLLM's shape itself: drop ``name_tokens`` from the client."""
    from trl.generation.vllm_client import parse_logprobs

    with pytest.raises(KeyError):
        parse_logprobs([_generate_logprobs_from_vllm()])


def test_named_tokens_parse_in_trl_as_ids_and_logprobs():
    from trl.generation.vllm_client import parse_logprobs

    logprobs, token_ids = parse_logprobs([name_tokens(_generate_logprobs_from_vllm())])
    assert token_ids == [[[7], [3]]]
    assert logprobs == [[[-0.5], [-1.5]]]


def test_a_list_of_servers_is_refused_for_the_one_endpoint():
    assert endpoint_url(" http://a:8000/ ") == "http://a:8000"
    assert endpoint_url(None, "h", 9) == "http://h:9"
    with pytest.raises(RolloutServerError, match="one endpoint of `ovr-train rollout-servers`"):
        endpoint_url("http://a:8000,http://a:8001")


def test_a_rollout_api_beyond_loopback_needs_a_key():
    spec = RolloutSpec(model="m", host="0.0.0.0", device="cpu")
    with pytest.raises(ValueError, match=KEY_ENV):
        check_spec(spec, {})
    check_spec(spec, {KEY_ENV: "k"})
    check_spec(RolloutSpec(model="m", host="127.0.0.1", device="cpu"), {})


def test_several_nodes_need_node_0s_address_and_every_nodes_engines():
    two = dict(model="m", local_engines=8, data_parallel_size=16)
    with pytest.raises(ValueError, match="--data-parallel-address"):
        check_spec(RolloutSpec(**two), {})
    where = dict(data_parallel_address="10.0.0.9", data_parallel_rpc_port=13345)
    check_spec(RolloutSpec(**two, **where), {})
    check_spec(RolloutSpec(**two, **where, headless=True, start_rank=8, host="0.0.0.0"), {})
    with pytest.raises(ValueError, match="--headless goes with"):
        check_spec(RolloutSpec(**two, **where, start_rank=8), {})
    with pytest.raises(ValueError, match="every node"):
        check_spec(RolloutSpec(**two, **where, headless=True, start_rank=12), {})


def test_a_taken_port_is_refused_before_the_server_starts():
    import socket

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        spec = RolloutSpec(model="m", port=held.getsockname()[1], device="cpu")
        with pytest.raises(
            ValueError, match=r"port \d+ \(rollout server\) is already in use.*--port"
        ):
            RolloutServer(spec, env={})


def _flag(cmd, name):
    return cmd[cmd.index(name) + 1]


def test_one_data_parallel_vllm_serve_per_node_with_what_trl_server_mode_needs():
    where = dict(data_parallel_address="10.0.0.9", data_parallel_rpc_port=13345)
    head = server_command(
        RolloutSpec(model="m", local_engines=8, data_parallel_size=16, host="10.0.0.9", **where),
        guarded=True,
    )
    assert (_flag(head, "--data-parallel-size"), _flag(head, "--data-parallel-size-local")) == (
        "16",
        "8",
    )
    assert _flag(head, "--data-parallel-address") == "10.0.0.9" and "--headless" not in head
    assert '{"backend": "nccl"}' in head and "--enable-scale-out" in head
    assert _flag(head, "--logprobs-mode") == "processed_logprobs"
    assert _flag(head, "--middleware") == "ovr_train.rollouts.auth.RolloutKeyGuard"
    second = RolloutSpec(
        model="m", local_engines=8, data_parallel_size=16, headless=True, start_rank=8, **where
    )
    tail = server_command(second, guarded=True)
    assert "--headless" in tail and _flag(tail, "--data-parallel-start-rank") == "8"
    assert "--port" not in tail and "--middleware" not in tail  # no API on this node
    one = server_command(RolloutSpec(model="m", local_engines=2, device="cpu"), guarded=False)
    assert _flag(one, "--data-parallel-size") == "2" and "--data-parallel-size-local" not in one
    assert '{"backend": "ovr_gloo"}' in one and "--middleware" not in one


def test_the_cpu_backend_is_a_vllm_weight_transfer_engine_through_the_plugin():
    from importlib.metadata import entry_points

    from vllm.distributed.weight_transfer.base import WeightTransferEngine
    from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory

    plugin = next(e for e in entry_points(group="vllm.general_plugins") if e.name == "ovr_gloo")
    plugin.load()()
    plugin.load()()  # vLLM may load plugins more than once per process: idempotent
    engine = WeightTransferEngineFactory._registry["ovr_gloo"]()
    assert issubclass(engine, WeightTransferEngine)
    info = engine.init_info_cls(
        master_address="10.0.0.1", master_port=1, rank_offset=3, world_size=9
    )
    assert info.rank_offset == 3


# --- one real data-parallel server ---------------------------------------------------------------


def _scrambled_copy(model_dir, out):
    """The model's files with every weight perturbed: what the server starts from, so that only a
    working weight push makes its engines answer like the model."""
    from transformers import AutoModelForImageTextToText

    shutil.copytree(model_dir, out)
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * param.std().clamp(min=0.02))
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def policy_dir():
    from ovr_train.recipe import resolve_model

    return resolve_model("tiny-coldstarted")


@pytest.fixture(scope="module")
def server(policy_dir, tmp_path_factory):
    """`vllm serve --data-parallel-size 2` on CPU behind the key guard, as
    `ovr-train rollout-servers --cpu --engines 2` starts it."""
    import os

    root = tmp_path_factory.mktemp("rollout")
    start = _scrambled_copy(policy_dir, root / "scrambled")
    os.environ[KEY_ENV] = KEY
    spec = RolloutSpec(
        model=str(start),
        local_engines=2,
        port=free_port(),
        device="cpu",
        cpu_kvcache_gib=1,
        max_model_len=512,
        log_file=str(root / "server.log"),
    )
    try:
        with RolloutServer(spec) as running:
            yield running
    finally:
        os.environ.pop(KEY_ENV, None)


def per_engine_finished(url: str) -> dict[str, float]:
    """vLLM's finished-request count of each engine (its ``engine`` label), from /metrics."""
    text = requests.get(url + "/metrics", headers=bearer(KEY), timeout=10).text
    counts: dict[str, float] = {}
    for labels, value in re.findall(r"^vllm:request_success_total\{([^}]*)\} (\S+)$", text, re.M):
        engine = re.search(r'engine="(\d+)"', labels).group(1)
        counts[engine] = counts.get(engine, 0.0) + float(value)
    return counts


def _greedy_ids(client, prompts, max_tokens=12):
    out = client.generate(prompts=prompts, n=1, temperature=0.0, max_tokens=max_tokens)
    return out["completion_ids"]


def _transformers_greedy(model, prompts, max_tokens=12):
    with torch.no_grad():
        return [
            model.generate(torch.tensor([p]), max_new_tokens=max_tokens, do_sample=False)[
                0, len(p) :
            ].tolist()
            for p in prompts
        ]


@pytest.mark.slow
def test_dev_routes_of_the_rollout_server_need_the_key(server):
    url = server.url
    assert requests.get(url + "/health", timeout=10).status_code == 200
    for method, route in [
        ("post", "/update_weights"),
        ("post", "/init_weight_transfer_engine"),
        ("post", "/collective_rpc"),
        ("get", "/server_info"),
        ("get", "/get_world_size"),
        ("get", "/v1/models"),
    ]:
        response = getattr(requests, method)(url + route, json={}, timeout=10)
        assert response.status_code == 401, route
        wrong = getattr(requests, method)(url + route, headers=bearer("nope"), json={}, timeout=10)
        assert wrong.status_code == 401, route
    assert requests.get(url + "/v1/models", headers=bearer(KEY), timeout=10).status_code == 200


@pytest.mark.slow
def test_a_wrong_key_is_refused_naming_the_endpoint_and_the_fix(server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "not-the-key")
    with pytest.raises(RolloutServerError, match=f"{server.url}.*401.*{KEY_ENV}"):
        connect(server.url, timeout=10)


@pytest.mark.slow
def test_one_broadcast_puts_the_policy_into_both_engines(server, policy_dir):
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(policy_dir)
    prompts = [tok(p)["input_ids"] for p in FORMAT_PROMPTS]
    model = AutoModelForImageTextToText.from_pretrained(policy_dir, dtype=torch.float32).eval()
    expected = _transformers_greedy(model, prompts)
    client = connect(server.url, group_port=free_port(), timeout=30)
    assert (client.get_world_size(), client.engines) == (2, 2)  # TP x PP x DP workers, 2 engines
    assert _greedy_ids(client, prompts) != expected  # the scrambled start differs

    client.init_communicator(device="cpu")
    client.update_model_params(model)  # one broadcast to the trainer + 2 workers group
    client.reset_prefix_cache()
    before = per_engine_finished(server.url)
    many = prompts * 8  # 24 prompts in one request: vLLM balances them over both engines
    answers = _greedy_ids(client, many)
    after = per_engine_finished(server.url)
    served = {e: after[e] - before.get(e, 0.0) for e in after}
    assert sorted(served) == ["0", "1"] and min(served.values()) > 0, served
    assert answers == expected * 8
    client.close_communicator()


@pytest.mark.slow
def test_server_mode_rl_trains_with_rollouts_from_every_server(server, tmp_path):
    """`ovr-train rl` with vllm_mode=server on the one DP endpoint: TRL's own server-mode loop,
    our client in its client's place, image prompts through the render and generate routes."""
    from transformers import TrainerCallback

    from ovr_train.rl.train import main, parse_args

    rows = []

    class Logs(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            rows.append(dict(logs or {}))

    before = per_engine_finished(server.url)
    out = main(
        *parse_args(
            [
                "--config",
                "recipes/tiny-rl.yaml",
                "max_steps=3",
                "vllm_mode=server",
                f"vllm_server_base_url={server.url}",
                f"vllm_group_port={free_port()}",
                f"output_dir={tmp_path / 'rl'}",
                "save_strategy=no",
                "report_to=none",
                *seed_overrides(),
            ]
        ),
        callbacks=[Logs()],
    )
    after = per_engine_finished(server.url)
    steps = [row for row in rows if "loss" in row]
    assert len(steps) == 3
    served = {e: after[e] - before.get(e, 0.0) for e in after}
    assert len(served) == 2 and min(served.values()) > 0, served  # both engines rolled out
    # the server started scrambled: rollouts in the learned format prove the step-0 push reached it
    fmt = min(row["rewards/format/mean"] for row in steps)
    record_figures("server_mode_tiny-rl", min_format=fmt, per_engine=served)
    assert fmt > 0.8, steps
    assert any(Path(out).glob("*.safetensors")) and (Path(out) / "processor_config.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        (["vllm_max_model_length=4096"], "--max-model-len 4096"),
        (["vllm_server_base_url=http://127.0.0.1:9", "vllm_server_timeout=1"], "127.0.0.1:9"),
    ],
)
def test_rl_refuses_an_endpoint_that_cannot_serve_the_run_before_loading_the_model(
    server, overrides, says, tmp_path
):
    """Too short for the longest rollout (the last curriculum stage), or not there: one line
    naming the endpoint and the fix, before the policy is loaded."""
    import os
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "ovr_train.cli", "rl", "--config", "recipes/tiny-rl.yaml"]
        + ["vllm_mode=server", f"vllm_server_base_url={server.url}"]
        + [f"output_dir={tmp_path / 'rl'}", "report_to=none", *overrides],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ),  # the server's key, set by the fixture
    )
    assert out.returncode != 0
    assert says in out.stderr and "ovr-train rl:" in out.stderr
    assert "data: " not in out.stderr  # refused before the data and the model


@pytest.mark.slow
def test_a_killed_engine_fails_the_next_rollout_in_one_line_naming_the_endpoint(server):
    """Last of the module (it takes the server down): one engine of two SIGKILLed, the trainer's
    requests fail, within vLLM's detection time, with one line naming the endpoint."""
    import signal
    import time

    import psutil

    client = connect(server.url, timeout=30)
    tree = psutil.Process(server.proc.pid).children(recursive=True)
    engine = next(p for p in tree if p.cmdline()[:1] == ["VLLM::EngineCore_DP1"])
    engine.send_signal(signal.SIGKILL)
    deadline = time.monotonic() + 120
    with pytest.raises(RolloutServerError) as failed:
        while time.monotonic() < deadline:  # vLLM notices the death asynchronously
            client.generate(prompts=[[1, 2, 3]] * 4, n=1, max_tokens=4)
            time.sleep(2)
    message = str(failed.value)
    assert server.url in message and "still runs there" in message and "\n" not in message
