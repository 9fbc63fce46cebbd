"""The trainer's side of server-mode rollouts: TRL's ``VLLMClient``, subclassed only where needed.

One endpoint serves every rollout GPU: ``vllm serve --data-parallel-size N`` (started by
`ovr-train rollout-servers`, on one node or several) runs N engines behind one API, balances
requests over them, forwards every weight-transfer call to all of them, and its ``/get_world_size``
counts every worker (TP x PP x DP), so TRL's own client and its single weight-transfer group (the
trainer at rank 0, vLLM's workers numbered across data-parallel ranks after it) reach every engine
with one broadcast. `RolloutClient` adds what TRL's lacks:

- the key of the dev routes (``$OVR_ROLLOUT_KEY``, `ovr_train.rollouts.auth`) on every request;
- weight sync without CUDA: the ``ovr_gloo`` backend (`ovr_train.rollouts.gloo`), where TRL's
  client knows NCCL only; NCCL servers get TRL's own code;
- in-flight image requests: TRL caps them at 64 per call; here 64 per engine, so N engines stay busy;
- image rollouts parse: vLLM 0.32's ``/inference/v1/generate`` names each logprob's token by
  ``token_id``, TRL 1.16 reads ``token`` (``"token_id:<id>"``); see `name_tokens`.

`serving_client` swaps it in for TRL's client while a trainer is built; `check_rollout_servers`
is the pre-flight check (reachable, one model, long enough) before any weight is loaded.
"""

from __future__ import annotations

import contextlib
import os
from concurrent.futures import ThreadPoolExecutor

from requests.adapters import HTTPAdapter
from trl.generation.vllm_client import VLLMClient

from ovr_train.rollouts.auth import KEY_ENV, bearer

REQUESTS_PER_ENGINE = 64  # TRL's cap per call, kept per engine


class RolloutServerError(RuntimeError):
    """The rollout endpoint cannot serve this run; the message names it and the fix."""


def endpoint_url(base_url: str | None, host: str = "0.0.0.0", port: int = 8000) -> str:
    """The one rollout endpoint; a comma-separated list (the old pool's) is refused with the fix."""
    url = (base_url or f"http://{host}:{port}").strip().rstrip("/")
    if "," in url:
        raise RolloutServerError(
            f"vllm_server_base_url={base_url!r} lists several servers: give the one endpoint of "
            "`ovr-train rollout-servers` (vLLM's data parallelism serves every GPU behind it)"
        )
    return url


class RolloutClient(VLLMClient):
    """TRL's client with the key, the ``ovr_gloo`` weight sync and one request window per engine."""

    def __init__(self, *args, **kwargs):
        self.key = os.environ.get(KEY_ENV) or None
        self.backend = None
        super().__init__(*args, **kwargs)
        workers = self.get_world_size()
        per_engine = self._get(f"{self.base_url}/get_world_size?include_dp=false")["world_size"]
        self.engines = max(1, workers // max(1, per_engine))
        window = REQUESTS_PER_ENGINE * self.engines
        adapter = HTTPAdapter(
            max_retries=self.session.adapters["http://"].max_retries, pool_maxsize=window
        )
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    # -- the key, and vLLM's logprob shape

    def check_server(self, total_timeout: float = 0.0, retry_interval: float = 2.0):
        if self.key:  # /health is open; everything after it needs the key
            self.session.headers.update(bearer(self.key))
        return super().check_server(total_timeout, retry_interval)

    def _get(self, url, **kwargs):
        return self._named(super()._get, url, **kwargs)

    def _post(self, url, **kwargs):
        out = self._named(super()._post, url, **kwargs)
        if url.endswith("/inference/v1/generate"):
            for choice in out.get("choices", []):
                name_tokens(choice.get("logprobs"))
        return out

    def _named(self, call, url, **kwargs):
        """``call(url)``, any failure raised as one line naming the endpoint and what to check (a
        dead engine takes vLLM's whole server down: its log says which)."""
        try:
            return call(url, **kwargs)
        except Exception as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            raise RolloutServerError(
                f"rollout endpoint {self.base_url}: {first}. Check that `ovr-train rollout-servers` "
                f"still runs there (its log names a dead engine) and that {KEY_ENV} is the same "
                "on both sides"
            ) from e

    # -- one request window per engine

    def image_features(self, images, max_concurrent_requests: int | None = None):
        window = max_concurrent_requests or REQUESTS_PER_ENGINE * self.engines
        return super().image_features(images, max_concurrent_requests=window)

    def _generate_from_features(
        self, prompts, features, sampling_params, max_concurrent_requests=None
    ):
        window = max_concurrent_requests or REQUESTS_PER_ENGINE * self.engines
        return super()._generate_from_features(prompts, features, sampling_params, window)

    # -- weight sync: TRL's for NCCL, one gloo broadcast for ovr_gloo

    def init_communicator(self, device=0) -> None:
        config = self.get_server_info().get("weight_transfer_config") or {}
        self.backend = config.get("backend")
        if self.backend != "ovr_gloo":
            return super().init_communicator(device)
        from trl.generation.vllm_client import get_ip

        from ovr_train.rollouts.gloo import open_group

        init_info = {
            "master_address": get_ip(),
            "master_port": self.group_port,
            "rank_offset": 1,  # the trainer is rank 0; vLLM numbers its workers across DP ranks
            "world_size": self.get_world_size() + 1,
        }
        with ThreadPoolExecutor(max_workers=1) as pool:  # the workers block in the rendezvous
            joined = pool.submit(
                self._post,
                f"{self.base_url}/init_weight_transfer_engine",
                json={"init_info": init_info},
            )
            self.communicator = open_group(
                init_info["master_address"], init_info["master_port"], 0, init_info["world_size"]
            )
            joined.result()

    def update_named_params(self, metadata, named_params) -> None:
        if self.backend != "ovr_gloo":
            return super().update_named_params(metadata, named_params)
        from ovr_train.rollouts.gloo import broadcast_weights

        if self.communicator is None:
            raise RuntimeError("weight sync before init_communicator")
        names, dtypes, shapes = (list(f) for f in zip(*metadata, strict=True))
        info = {"update_info": {"names": names, "dtype_names": dtypes, "shapes": shapes}}
        with contextlib.ExitStack() as stack:
            if not self._updating_weights:
                stack.enter_context(self.weight_update())
            with ThreadPoolExecutor(max_workers=1) as pool:  # the workers block receiving
                received = pool.submit(self._post, f"{self.base_url}/update_weights", json=info)
                broadcast_weights(self.communicator, named_params)
                received.result()

    def close_communicator(self) -> None:
        if self.backend == "ovr_gloo":
            self.communicator = None
        else:
            super().close_communicator()


def name_tokens(logprobs: dict | None) -> dict | None:
    """In place: each ``{"token_id": 7, ...}`` entry (and its top candidates) also gets
    ``"token": "token_id:7"``, the form TRL's ``parse_logprobs`` reads. Remove when
    ``tests/test_rollout_pool.py::test_upstream_generate_logprobs_still_differ`` fails."""
    for entry in (logprobs or {}).get("content") or []:
        for item in [entry, *(entry.get("top_logprobs") or [])]:
            if "token" not in item and "token_id" in item:
                item["token"] = f"token_id:{item['token_id']}"
    return logprobs


def connect(url: str, group_port: int = 51216, timeout: float = 0.0) -> RolloutClient:
    """A client of the endpoint at ``url``; any failure raised naming it and what to check."""
    try:
        return RolloutClient(
            base_url=endpoint_url(url), group_port=group_port, connection_timeout=timeout
        )
    except RolloutServerError:
        raise
    except Exception as e:
        raise RolloutServerError(
            f"rollout endpoint {url}: {e}. Check that `ovr-train rollout-servers` still runs there "
            f"(its log) and that {KEY_ENV} is the same on both sides"
        ) from e


def check_capacity(client: RolloutClient, needed_tokens: int) -> None:
    """Refuse, naming the endpoint and the fix, when it holds fewer tokens per sequence than the
    run's longest rollout (prompt + the last curriculum stage) needs."""
    holds = client.get_server_info()["model_config"]["max_model_len"]
    if holds < needed_tokens:
        raise RolloutServerError(
            f"rollout endpoint {client.base_url} holds {holds} tokens per sequence, too short for "
            f"this run's longest rollout ({needed_tokens} tokens: vllm_max_model_length, else "
            f"max_completion_length + 1). Restart it with `ovr-train rollout-servers ... "
            f"--max-model-len {needed_tokens}`"
        )


def check_rollout_servers(training_args) -> None:
    """Before any weight is loaded: in server mode, the endpoint answers, serves one model and
    holds the longest rollout of the run (main process only; the others wait for training)."""
    if not (training_args.use_vllm and training_args.vllm_mode == "server"):
        return
    if training_args.process_index != 0:
        return
    try:
        url = endpoint_url(
            training_args.vllm_server_base_url,
            training_args.vllm_server_host,
            training_args.vllm_server_port,
        )
        client = connect(url, timeout=training_args.vllm_server_timeout)
        models = client._get(f"{client.base_url}/v1/models")["data"]
        if len(models) != 1:
            raise RolloutServerError(f"rollout endpoint {url} serves {len(models)} models, not one")
        longest = training_args.max_completion_length + 1
        check_capacity(client, training_args.vllm_max_model_length or longest)
    except RolloutServerError as e:
        raise SystemExit(f"ovr-train rl: {e}") from e


@contextlib.contextmanager
def serving_client():
    """While a GRPO/PPO trainer is built, TRL's server mode gets a `RolloutClient` for its client."""
    import trl.generation.vllm_generation as generation

    saved = generation.VLLMClient
    generation.VLLMClient = RolloutClient
    try:
        yield
    finally:
        generation.VLLMClient = saved
