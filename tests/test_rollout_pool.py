"""Server-mode RL rollouts on several vLLM servers: the rollout pool, `ovr-train rollout-servers`,
the CPU weight-transfer backend and the rollout servers' key guard.

The slow tests start two real vLLM CPU servers (`RolloutServers`, the command's own code) on a
scrambled copy of the tiny model, talk to them through the pool and TRL's client, and train.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import requests
import torch
from hypothesis import given
from hypothesis import strategies as st

from ovr_core.ports import port_is_free
from ovr_train.rollouts.auth import KEY_ENV, bearer
from ovr_train.rollouts.pool import (
    RolloutPool,
    RolloutServerError,
    join_outputs,
    name_tokens,
    rank_offsets,
    shard_bounds,
    split_urls,
)
from ovr_train.rollouts.servers import RolloutServers, RolloutSpec, check_spec, server_command
from tests.conftest import finished_requests, free_port
from tests.helpers.rl_runs import record_figures, seed_overrides

FORMAT_PROMPTS = [
    "<|im_start|>user\nHow many shapes are there?<|im_end|>\n<|im_start|>assistant\n<think>",
    "<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nCount the red squares.<|im_end|>\n<|im_start|>assistant\n<think>\n",
]


# --- pure parts: sharding, group layout, URLs, logprob shapes ---------------------------------


@given(st.integers(0, 600), st.lists(st.integers(1, 8), min_size=1, max_size=9))
def test_shards_cover_every_prompt_once_in_order_and_in_proportion(count, weights):
    bounds = shard_bounds(count, weights)
    assert len(bounds) == len(weights)
    assert bounds[0][0] == 0 and bounds[-1][1] == count
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False))
    total = sum(weights)
    for (start, stop), weight in zip(bounds, weights, strict=True):
        assert abs((stop - start) - count * weight / total) < 1


def test_every_worker_of_every_server_gets_its_own_rank_after_the_trainer():
    # vLLM numbers a server's workers dp_index * (tp * pp) + rank + rank_offset
    # (nccl_common.worker_init_process_group); three servers of 1, 2x2 (tp 2, dp 2) and 1 workers.
    servers = [(1, 1), (2, 2), (1, 1)]  # (tensor parallel, data parallel)
    offsets, world = rank_offsets([tp * dp for tp, dp in servers])
    ranks = [
        dp_index * tp + rank + offset
        for (tp, dp), offset in zip(servers, offsets, strict=True)
        for dp_index in range(dp)
        for rank in range(tp)
    ]
    assert sorted(ranks) == list(range(1, world)) and world == 7


def test_server_lists_are_read_in_order_and_mistakes_refused():
    assert split_urls(" http://a:8000/, http://b:8001 ") == ["http://a:8000", "http://b:8001"]
    with pytest.raises(ValueError, match="listed twice"):
        split_urls("http://a:8000,http://a:8000")
    with pytest.raises(ValueError, match="no server"):
        split_urls(" , ")


def test_shard_answers_join_back_in_order():
    parts = [
        {"completion_ids": [[1], [2]], "logprobs": [[[-0.1]], [[-0.2]]]},
        {"completion_ids": [[3]], "logprobs": [[[-0.3]]]},
    ]
    assert join_outputs(parts) == {
        "completion_ids": [[1], [2], [3]],
        "logprobs": [[[-0.1]], [[-0.2]], [[-0.3]]],
    }
    assert join_outputs([{"logprobs": None}, {"logprobs": None}]) == {"logprobs": None}


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
    When this fails, TRL reads vLLM's shape itself: drop ``name_tokens`` from the pool."""
    from trl.generation.vllm_client import parse_logprobs

    with pytest.raises(KeyError):
        parse_logprobs([_generate_logprobs_from_vllm()])


def test_named_tokens_parse_in_trl_as_ids_and_logprobs():
    from trl.generation.vllm_client import parse_logprobs

    logprobs, token_ids = parse_logprobs([name_tokens(_generate_logprobs_from_vllm())])
    assert token_ids == [[[7], [3]]]
    assert logprobs == [[[-0.5], [-1.5]]]


def test_rollout_servers_beyond_loopback_need_a_key():
    spec = RolloutSpec(model="m", host="0.0.0.0", device="cpu")
    with pytest.raises(ValueError, match=KEY_ENV):
        check_spec(spec, {})
    check_spec(spec, {KEY_ENV: "k"})
    check_spec(RolloutSpec(model="m", host="127.0.0.1", device="cpu"), {})


def test_a_taken_port_is_refused_before_any_server_starts():
    import socket

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        spec = RolloutSpec(model="m", servers=2, port=port - 1, device="cpu")  # the 2nd's is taken
        with pytest.raises(
            ValueError, match=r"port \d+ \(rollout server \d\) is already in use.*--port"
        ):
            RolloutServers(spec, env={})


def test_each_rollout_server_runs_what_trl_server_mode_needs():
    gpu = server_command(RolloutSpec(model="m", servers=8, port=8000, max_model_len=53248), 3, True)
    assert gpu[gpu.index("--port") + 1] == "8003"
    assert '{"backend": "nccl"}' in gpu and "--enable-scale-out" in gpu
    assert gpu[gpu.index("--logprobs-mode") + 1] == "processed_logprobs"
    assert "ovr_train.rollouts.auth.RolloutKeyGuard" in gpu
    cpu = server_command(RolloutSpec(model="m", device="cpu"), 0, False)
    assert '{"backend": "ovr_gloo"}' in cpu and "--middleware" not in cpu


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


# --- real servers -------------------------------------------------------------------------------


def _scrambled_copy(model_dir, out):
    """The model's files with every weight perturbed: what the servers start from, so that only a
    working weight push makes them answer like the model."""
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
def servers(policy_dir, tmp_path_factory):
    """Two rollout servers on CPU behind the key guard, as `ovr-train rollout-servers --cpu`."""
    import os

    root = tmp_path_factory.mktemp("rollout")
    start = _scrambled_copy(policy_dir, root / "scrambled")
    os.environ[KEY_ENV] = "rollout-test-key"
    first = free_port()
    while not port_is_free("127.0.0.1", first + 1):
        first = free_port()
    spec = RolloutSpec(
        model=str(start),
        servers=2,
        port=first,
        device="cpu",
        cpu_kvcache_gib=1,
        max_model_len=512,
        log_dir=str(root / "logs"),
    )
    try:
        with RolloutServers(spec) as running:
            yield running
    finally:
        os.environ.pop(KEY_ENV, None)


def _greedy_ids(pool_or_client, prompts, max_tokens=12):
    out = pool_or_client.generate(prompts=prompts, n=1, temperature=0.0, max_tokens=max_tokens)
    return out["completion_ids"]


def _transformers_greedy(model_dir, prompts, max_tokens=12):
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return [
            model.generate(torch.tensor([p]), max_new_tokens=max_tokens, do_sample=False)[
                0, len(p) :
            ].tolist()
            for p in prompts
        ]


@pytest.mark.slow
def test_dev_routes_of_a_rollout_server_need_the_key(servers):
    url = servers.urls[0]
    assert requests.get(url + "/health", timeout=10).status_code == 200
    for method, route in [
        ("post", "/update_weights"),
        ("post", "/init_weight_transfer_engine"),
        ("post", "/collective_rpc"),
        ("get", "/server_info"),
        ("get", "/v1/models"),
    ]:
        response = getattr(requests, method)(url + route, json={}, timeout=10)
        assert response.status_code == 401, route
        wrong = getattr(requests, method)(url + route, headers=bearer("nope"), json={}, timeout=10)
        assert wrong.status_code == 401, route
    good = requests.get(url + "/v1/models", headers=bearer(servers.env[KEY_ENV]), timeout=10)
    assert good.status_code == 200


@pytest.mark.slow
def test_a_wrong_key_is_refused_naming_the_server_and_the_fix(servers, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "not-the-key")
    with pytest.raises(RolloutServerError, match=f"{servers.urls[0]}.*401.*{KEY_ENV}"):
        RolloutPool(",".join(servers.urls), connection_timeout=10)


@pytest.mark.slow
def test_pool_shards_prompts_over_every_server_and_keeps_their_order(servers, policy_dir):
    from transformers import AutoTokenizer

    key = servers.env[KEY_ENV]
    tok = AutoTokenizer.from_pretrained(policy_dir)
    prompts = [tok(p)["input_ids"] for p in FORMAT_PROMPTS] + [tok("Hi")["input_ids"]] * 2
    pool = RolloutPool(",".join(servers.urls), group_port=free_port(), connection_timeout=30)
    before = [finished_requests(u, key) for u in servers.urls]
    pooled = _greedy_ids(pool, prompts)
    after = [finished_requests(u, key) for u in servers.urls]
    # /v1/completions with several prompts counts one finished request per prompt: 3 + 2
    assert [a - b for a, b in zip(after, before, strict=True)] == [3, 2]
    assert pooled == _greedy_ids(pool.clients[0], prompts)  # same answers, same order as one server
    sampled = pool.generate(prompts=prompts, n=3, temperature=1.0, max_tokens=4, logprobs=0)
    assert len(sampled["completion_ids"]) == 3 * len(prompts)
    assert len(sampled["prompt_ids"]) == len(prompts) and sampled["prompt_ids"][0] == prompts[0]


@pytest.mark.slow
def test_one_broadcast_puts_the_policy_into_every_server(servers, policy_dir):
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(policy_dir)
    prompts = [tok(p)["input_ids"] for p in FORMAT_PROMPTS]
    expected = _transformers_greedy(policy_dir, prompts)
    pool = RolloutPool(",".join(servers.urls), group_port=free_port(), connection_timeout=30)
    assert _greedy_ids(pool.clients[0], prompts) != expected  # the scrambled start differs

    pool.init_communicator(device="cpu")
    model = AutoModelForImageTextToText.from_pretrained(policy_dir, dtype=torch.float32)
    pool.update_model_params(model)
    pool.reset_prefix_cache()
    for client in pool.clients:
        assert _greedy_ids(client, prompts) == expected, client.base_url


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["tiny-rl.yaml", "tiny-rl-ppo.yaml"])
def test_server_mode_rl_trains_with_rollouts_from_every_server(servers, recipe, tmp_path):
    """`ovr-train rl` with vllm_mode=server and two servers: TRL's own server-mode loop, the pool
    in its client's place, image prompts through the servers' render and generate routes."""
    from transformers import TrainerCallback

    from ovr_train.rl.train import main, parse_args

    rows = []

    class Logs(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            rows.append(dict(logs or {}))

    key = servers.env[KEY_ENV]
    before = [finished_requests(u, key) for u in servers.urls]
    out = main(
        *parse_args(
            [
                "--config",
                f"recipes/{recipe}",
                "max_steps=3",
                "vllm_mode=server",
                "vllm_server_base_url=" + ",".join(servers.urls),
                f"vllm_group_port={free_port()}",
                f"output_dir={tmp_path / 'rl'}",
                "save_strategy=no",
                "report_to=none",
                *seed_overrides(),
            ]
        ),
        callbacks=[Logs()],
    )
    after = [finished_requests(u, key) for u in servers.urls]
    steps = [row for row in rows if "loss" in row]
    assert len(steps) == 3
    # 3 steps x 8 prompts x 8 responses (and refills), split over both servers
    served = [a - b for a, b in zip(after, before, strict=True)]
    assert all(n >= 3 * 8 * 8 / 2 * 0.75 for n in served), served
    # the servers started scrambled: rollouts in the learned format prove the step-0 push reached both
    fmt = min(row["rewards/format/mean"] for row in steps)
    record_figures(f"server_mode_{recipe.split('.')[0]}", min_format=fmt)
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
def test_rl_refuses_servers_that_cannot_serve_the_run_before_loading_the_model(
    servers, overrides, says, tmp_path
):
    """Too short for the longest rollout (the last curriculum stage), or not there: one line
    naming the server and the fix, before the policy is loaded."""
    import os
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "ovr_train.cli", "rl", "--config", "recipes/tiny-rl.yaml"]
        + ["vllm_mode=server", "vllm_server_base_url=" + ",".join(servers.urls)]
        + [f"output_dir={tmp_path / 'rl'}", "report_to=none", *overrides],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ),  # the servers' key, set by the fixture
    )
    assert out.returncode != 0
    assert says in out.stderr and "ovr-train rl:" in out.stderr
    assert "data: " not in out.stderr  # refused before the data and the model
