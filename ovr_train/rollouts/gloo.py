"""A weight-transfer backend for vLLM rollout servers without CUDA: `ovr_gloo`.

TRL's server mode pushes the policy's weights into the rollout servers after each update through
vLLM's weight-transfer engine, and the only broadcast engine vLLM ships is NCCL (CUDA only). This
engine is the same protocol over a torch gloo group: the trainer is rank 0, each server worker
joins at ``rank_offset`` + its own rank (as vLLM's NCCL engine numbers them,
``nccl_common.worker_init_process_group``), and every tensor is broadcast once to all of them.
A data-parallel server's workers are numbered across its DP ranks
(``data_parallel_index * world_size + rank``), so one group and one broadcast reach every engine.
It lets server-mode RL run, and be tested, on CPU machines; on GPUs the rollout server uses NCCL.

vLLM finds it as a general plugin (entry point ``vllm.general_plugins`` in pyproject.toml), loaded
in every vLLM process, so a server started with ``--weight-transfer-config '{"backend": "ovr_gloo"}'``
has it. Layerwise reloading (start/finish of an update) is the NCCL engine's, which is also what
makes loading work on vLLM's CPU backend (its repacked linear layers have no weight loaders).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import torch

BACKEND = "ovr_gloo"
GROUP_TIMEOUT = timedelta(minutes=30)  # a weight push waits for every server's workers


def register() -> None:
    """vLLM general-plugin hook: make ``ovr_gloo`` a weight-transfer backend (idempotent)."""
    from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory

    if BACKEND not in WeightTransferEngineFactory._registry:
        WeightTransferEngineFactory.register_engine(
            BACKEND, "ovr_train.rollouts.gloo", "GlooWeightTransferEngine"
        )


def open_group(address: str, port: int, rank: int, world_size: int):
    """A gloo process group of ``world_size`` ranks outside torch.distributed's global state.

    Rank 0 (the trainer) hosts the rendezvous store at ``address:port``.
    """
    store = torch.distributed.TCPStore(
        address, port, world_size, is_master=rank == 0, timeout=GROUP_TIMEOUT
    )
    return torch.distributed.ProcessGroupGloo(store, rank, world_size, GROUP_TIMEOUT)


def broadcast_weights(group, named_tensors) -> int:
    """Trainer side: broadcast each tensor, in order, from rank 0; returns how many were sent."""
    sent = 0
    for _, tensor in named_tensors:
        group.broadcast(tensor.detach().to("cpu").contiguous(), 0).wait()
        sent += 1
    return sent


def _engine_classes():
    from vllm.distributed.weight_transfer.base import WeightTransferInitInfo
    from vllm.distributed.weight_transfer.nccl_engine import (
        NCCLWeightTransferEngine,
        NCCLWeightTransferUpdateInfo,
    )

    @dataclass
    class GlooInitInfo(WeightTransferInitInfo):
        master_address: str
        master_port: int
        rank_offset: int
        world_size: int

    class Engine(NCCLWeightTransferEngine):
        init_info_cls = GlooInitInfo
        update_info_cls = NCCLWeightTransferUpdateInfo

        def init_transfer_engine(self, init_info: GlooInitInfo) -> None:
            parallel = self.parallel_config
            worker = parallel.data_parallel_index * parallel.world_size + parallel.rank
            self.model_update_group = open_group(
                init_info.master_address,
                init_info.master_port,
                worker + init_info.rank_offset,
                init_info.world_size,
            )

        def update_weights(self, update_info: dict) -> None:
            # The base class ends with torch.accelerator.synchronize(), which has no CPU device.
            self.receive_weights(self.parse_update_info(update_info))

        def receive_weights(self, update_info) -> None:
            if self.model_update_group is None:
                raise RuntimeError("ovr_gloo weight transfer not initialised: call init first")
            for name, dtype_name, shape in zip(
                update_info.names, update_info.dtype_names, update_info.shapes, strict=True
            ):
                weight = torch.empty(shape, dtype=getattr(torch, dtype_name))
                self.model_update_group.broadcast(weight, 0).wait()
                self.model.load_weights([(name, weight.to(self.device))])

        def shutdown(self) -> None:
            self.model_update_group = None

    return Engine


def __getattr__(name: str):
    # vLLM imports the engine lazily by name; building the class imports vLLM, so only then.
    if name == "GlooWeightTransferEngine":
        return _engine_classes()
    raise AttributeError(name)
