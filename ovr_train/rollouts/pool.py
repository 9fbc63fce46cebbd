"""Rollouts on several vLLM servers: TRL's ``VLLMClient`` interface over a pool of them.

TRL 1.16's server mode talks to one server (``vllm_server_base_url``). At the paper's scale one
server is one GPU's worth of rollouts for many GPUs of training, so the rollout pool takes a
comma-separated list of servers, on any number of nodes (`ovr-train rollout-servers` starts them),
and stands in for TRL's client in ``VLLMGeneration`` (`serving_pool` swaps it in while the trainer
is built; TRL's own code does everything else):

- generation: the unique prompts of a step are split into contiguous shards, one per server and
  in proportion to its workers, sent at the same time, and the answers joined back in order (TRL
  then hands each rank its slice, as with one server);
- weight sync: one weight-transfer group holds the trainer (rank 0) and the workers of every
  server, each server's at its own ``rank_offset`` (the numbering vLLM's engines use), so each
  tensor is broadcast once and reaches all of them; NCCL on GPUs, ``ovr_gloo`` on CPU;
- the rest (prefix-cache resets, update start/finish) goes to every server.

With ``$OVR_ROLLOUT_KEY`` set, every request carries it (`ovr_train.rollouts.auth`).
"""

from __future__ import annotations

import contextlib
import os
from concurrent.futures import ThreadPoolExecutor

from ovr_train.rollouts.auth import KEY_ENV, bearer


def split_urls(base_url: str | list[str]) -> list[str]:
    """``"http://a:8000, http://b:8000"`` (or a list) -> the servers, in order, no duplicates."""
    parts = base_url if isinstance(base_url, list) else str(base_url).split(",")
    urls = [u.strip().rstrip("/") for u in parts if u.strip()]
    if not urls:
        raise ValueError("vllm_server_base_url: no server given")
    duplicates = sorted({u for u in urls if urls.count(u) > 1})
    if duplicates:
        raise ValueError(f"vllm_server_base_url: {duplicates} listed twice")
    return urls


def shard_bounds(count: int, weights: list[int]) -> list[tuple[int, int]]:
    """Contiguous ``[start, stop)`` shards of ``count`` items in proportion to ``weights``; every
    item in exactly one shard, in order (largest-remainder rounding)."""
    total = sum(weights)
    exact = [count * w / total for w in weights]
    sizes = [int(x) for x in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: exact[i] - sizes[i], reverse=True)
    for i in by_remainder[: count - sum(sizes)]:
        sizes[i] += 1
    bounds, start = [], 0
    for size in sizes:
        bounds.append((start, start + size))
        start += size
    return bounds


def rank_offsets(world_sizes: list[int]) -> tuple[list[int], int]:
    """Each server's first rank in the weight-transfer group, and the group's size (trainer = 0)."""
    offsets, next_rank = [], 1
    for size in world_sizes:
        offsets.append(next_rank)
        next_rank += size
    return offsets, next_rank


class RolloutServerError(RuntimeError):
    """A call to one rollout server failed; the message names the server."""


def on_server(call):
    """``call(client, ...)`` with any failure re-raised naming the server and what to check."""

    def named(client, *args):
        try:
            return call(client, *args)
        except Exception as e:
            raise RolloutServerError(
                f"rollout server {client.base_url}: {e}. Check that it still runs (its log, "
                "`ovr-train rollout-servers`) and that OVR_ROLLOUT_KEY is the same on both sides"
            ) from e

    return named


def join_outputs(outputs: list[dict]) -> dict:
    """Shard answers -> one answer, in shard order (``None`` lists stay ``None``)."""
    joined = {}
    for key in outputs[0]:
        values = [o[key] for o in outputs]
        joined[key] = None if any(v is None for v in values) else [x for v in values for x in v]
    return joined


class RolloutPool:
    """Several vLLM servers behind the interface TRL's ``VLLMGeneration`` uses of ``VLLMClient``."""

    def __init__(
        self,
        base_url: str | list[str] | None = None,
        host: str = "0.0.0.0",
        server_port: int = 8000,
        group_port: int = 51216,
        connection_timeout: float = 0.0,
    ):
        from trl.generation.vllm_client import VLLMClient

        urls = split_urls(base_url or f"http://{host}:{server_port}")
        key = os.environ.get(KEY_ENV)
        connect = on_server(
            lambda target: _client(VLLMClient, target.base_url, group_port, connection_timeout, key)
        )
        with ThreadPoolExecutor(max_workers=len(urls)) as pool:
            self.clients = list(pool.map(connect, [_Named(u) for u in urls]))
        models = {c.model for c in self.clients}
        if len(models) != 1:
            raise ValueError(f"rollout servers serve different models: {sorted(models)}")
        self.model = models.pop()
        self.base_url = ",".join(urls)
        self.group_port = group_port
        self.world_sizes = self._each(lambda c: c.get_world_size())
        self.communicator = None
        self.backend = None
        self._updating_weights = False

    def _each(self, call, *per_client):
        """``call(client, *args)`` on every server at once; results in server order."""
        with ThreadPoolExecutor(max_workers=len(self.clients)) as pool:
            return list(pool.map(on_server(call), self.clients, *per_client))

    def get_server_info(self) -> dict:
        return self.clients[0].get_server_info()

    def check_capacity(self, needed_tokens: int) -> None:
        """Refuse, naming the servers and the fix, when any holds fewer tokens per sequence than
        the run's longest rollout (prompt + the last curriculum stage) needs."""
        short = [
            (c.base_url, info["model_config"]["max_model_len"])
            for c, info in zip(self.clients, self._infos(), strict=True)
            if info["model_config"]["max_model_len"] < needed_tokens
        ]
        if short:
            listed = ", ".join(f"{url} holds {n}" for url, n in short)
            raise ValueError(
                f"rollout servers too short for this run's longest rollout ({needed_tokens} tokens: "
                f"vllm_max_model_length, else max_completion_length + 1): {listed}. Restart them "
                f"with `ovr-train rollout-servers ... --max-model-len {needed_tokens}`"
            )

    def get_world_size(self) -> int:
        return sum(self.world_sizes)

    def _shards(self, count: int) -> list[tuple[int, int]]:
        return shard_bounds(count, self.world_sizes)

    def image_features(self, images: list) -> list:
        shards = self._shards(len(images))
        parts = self._each(
            lambda c, b: c.image_features(images[b[0] : b[1]]) if b[1] > b[0] else [], shards
        )
        return [f for part in parts for f in part]

    def generate(self, prompts: list, features: list | None = None, **sampling) -> dict:
        """Each server generates for its shard of ``prompts``; the answers come back in order."""
        busy = [
            (c, b)
            for c, b in zip(self.clients, self._shards(len(prompts)), strict=True)
            if b[1] > b[0]
        ]
        clients, shards = [c for c, _ in busy], [b for _, b in busy]

        def run(client, bounds):
            start, stop = bounds
            part = None if features is None else features[start:stop]
            return client.generate(prompts=prompts[start:stop], features=part, **sampling)

        with ThreadPoolExecutor(max_workers=len(clients)) as pool:
            return join_outputs(list(pool.map(on_server(run), clients, shards)))

    def init_communicator(self, device="cuda") -> None:
        """One weight-transfer group: the trainer and every worker of every server."""
        import torch
        from trl.generation.vllm_client import get_ip

        backends = {(i.get("weight_transfer_config") or {}).get("backend") for i in self._infos()}
        if len(backends) != 1 or None in backends:
            raise RuntimeError(
                f"rollout servers' weight-transfer backends are {sorted(map(str, backends))}: start "
                "them all with `ovr-train rollout-servers` (NCCL on GPUs, ovr_gloo with --cpu)"
            )
        self.backend = backends.pop()
        offsets, world_size = rank_offsets(self.world_sizes)
        base = {
            "master_address": get_ip(),
            "master_port": self.group_port,
            "world_size": world_size,
        }
        if self.backend == "nccl":
            base["packed"] = True
            device = (
                torch.device("cuda", device) if isinstance(device, int) else torch.device(device)
            )
            if device.type != "cuda":
                raise RuntimeError("NCCL weight sync needs the trainer on CUDA")
            if device.index is not None:
                torch.cuda.set_device(device)
        with ThreadPoolExecutor(max_workers=len(self.clients)) as pool:
            joins = [
                pool.submit(
                    on_server(
                        lambda c, o: c._post(
                            f"{c.base_url}/init_weight_transfer_engine",
                            json={"init_info": {**base, "rank_offset": o}},
                        )
                    ),
                    c,
                    offset,
                )
                for c, offset in zip(self.clients, offsets, strict=True)
            ]
            self.communicator = _open_trainer_side(self.backend, base)
            for join in joins:
                join.result()

    def _infos(self) -> list[dict]:
        return self._each(lambda c: c.get_server_info())

    @contextlib.contextmanager
    def weight_update(self):
        self._each(lambda c: c._start_weight_update())
        self._updating_weights = True
        try:
            yield
        finally:
            self._updating_weights = False
            self._each(lambda c: c._finish_weight_update())

    def update_named_params(self, metadata: list, named_params) -> None:
        """Announce the tensors to every server, then broadcast each once to all of them."""
        names, dtypes, shapes = (list(f) for f in zip(*metadata, strict=True))
        info = {"update_info": {"names": names, "dtype_names": dtypes, "shapes": shapes}}
        with contextlib.ExitStack() as stack:
            if not self._updating_weights:
                stack.enter_context(self.weight_update())
            with ThreadPoolExecutor(max_workers=len(self.clients)) as pool:
                receives = [
                    pool.submit(
                        on_server(lambda c: c._post(f"{c.base_url}/update_weights", json=info)), c
                    )
                    for c in self.clients
                ]
                _broadcast(self.backend, self.communicator, named_params)
                for receive in receives:
                    receive.result()

    def update_model_params(self, model) -> None:
        params = list(model.named_parameters())
        metadata = [(n, str(p.dtype).removeprefix("torch."), list(p.shape)) for n, p in params]
        self.update_named_params(metadata, ((n, p.data) for n, p in params))

    def reset_prefix_cache(self) -> None:
        self._each(lambda c: c.reset_prefix_cache())

    def close_communicator(self) -> None:
        self.communicator = None


class _Named:
    """A server not yet connected, as `on_server` names it."""

    def __init__(self, base_url: str):
        self.base_url = base_url


def _client(cls, url: str, group_port: int, timeout: float, key: str | None):
    """TRL's client for one server, with two additions:

    - with a key, every request of its session carries it (the key guard answers 401 to the
      client's first ``/v1/models`` without it);
    - image rollouts parse: vLLM 0.32's ``/inference/v1/generate`` names each logprob's token by
      ``token_id`` (an int), TRL 1.16 reads ``token`` as ``"token_id:<id>"`` (KeyError: 'token').
      Remove when ``tests/test_rollout_pool.py::test_upstream_generate_logprobs_still_differ`` fails.
    """

    class PoolClient(cls):
        def _get(self, url, **kwargs):
            if key:
                self.session.headers.update(bearer(key))
            return super()._get(url, **kwargs)

        def _post(self, url, **kwargs):
            out = super()._post(url, **kwargs)
            if url.endswith("/inference/v1/generate"):
                for choice in out.get("choices", []):
                    name_tokens(choice.get("logprobs"))
            return out

    return PoolClient(base_url=url, group_port=group_port, connection_timeout=timeout)


def name_tokens(logprobs: dict | None) -> dict | None:
    """In place: each ``{"token_id": 7, ...}`` entry (and its top candidates) also gets
    ``"token": "token_id:7"``, the form TRL's ``parse_logprobs`` reads."""
    for entry in (logprobs or {}).get("content") or []:
        for item in [entry, *(entry.get("top_logprobs") or [])]:
            if "token" not in item and "token_id" in item:
                item["token"] = f"token_id:{item['token_id']}"
    return logprobs


@contextlib.contextmanager
def _patched(owner, name, value):
    saved = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, saved)


def _open_trainer_side(backend: str, init: dict):
    if backend == "ovr_gloo":
        from ovr_train.rollouts.gloo import open_group

        return open_group(init["master_address"], init["master_port"], 0, init["world_size"])
    if backend == "nccl":
        from vllm.distributed.weight_transfer.nccl_common import trainer_init

        return trainer_init(init)
    raise RuntimeError(f"weight-transfer backend {backend!r} is not supported by the rollout pool")


def _broadcast(backend: str, group, named_params) -> None:
    if group is None:
        raise RuntimeError("weight sync before init_communicator")
    if backend == "ovr_gloo":
        from ovr_train.rollouts.gloo import broadcast_weights

        broadcast_weights(group, named_params)
    else:
        from vllm.distributed.weight_transfer.packed_tensor import packed_nccl_broadcast_producer

        packed_nccl_broadcast_producer(
            iterator=named_params, group=group, src=0, post_iter_func=lambda item: item[1]
        )


def check_rollout_servers(training_args) -> None:
    """Before any weight is loaded: in server mode, every server answers, serves one model and
    holds the longest rollout of the run (main process only; the others wait for training)."""
    if not (training_args.use_vllm and training_args.vllm_mode == "server"):
        return
    if training_args.process_index != 0:
        return
    try:
        pool = RolloutPool(
            training_args.vllm_server_base_url
            or f"http://{training_args.vllm_server_host}:{training_args.vllm_server_port}",
            connection_timeout=training_args.vllm_server_timeout,
        )
        longest = training_args.max_completion_length + 1
        pool.check_capacity(training_args.vllm_max_model_length or longest)
    except (ValueError, RolloutServerError) as e:
        raise SystemExit(f"ovr-train rl: {e}") from e


@contextlib.contextmanager
def serving_pool():
    """While a GRPO/PPO trainer is built, TRL's server mode gets a `RolloutPool` for its client."""
    import trl.generation.vllm_generation as generation

    with _patched(generation, "VLLMClient", RolloutPool):
        yield
