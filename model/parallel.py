"""The tutorial across ranks (scenario ``distributed:``, run under torchrun by the harness).

``ddp`` replicates the net in every rank (DistributedDataParallel), ``fsdp`` shards each parameter
over the ranks (FSDP2, ``torch.distributed.fsdp.fully_shard``; on the CPU with gloo). Each rank
trains on its part of the same seeded 80/10/10 split (a DistributedSampler) and evaluates its
part of the validation or test images; the counts are summed over the ranks, so the accuracy is
that of the whole set. Run without ``distributed:``, every function here leaves things as they are.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import Dataset, DistributedSampler

from harness.records.scenario import Scenario


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job."""

    rank: int
    world: int
    local_rank: int
    strategy: str
    backend: str

    @property
    def main(self) -> bool:
        """Rank 0 prints the log lines."""
        return self.rank == 0

    @property
    def saves(self) -> bool:
        """Each node's local rank 0 writes the checkpoint into its node's run directory (every rank
        holds the same weights), so the test stage finds it on every node without shared storage."""
        return self.local_rank == 0


def start(s: Scenario) -> Ranks | None:
    """Join the job torchrun started (its environment says where); None when not distributed."""
    if s.distributed is None:
        return None
    if not dist.is_initialized():
        dist.init_process_group(backend=s.distributed.backend)
    return Ranks(rank=dist.get_rank(), world=dist.get_world_size(),
                 local_rank=int(os.environ.get("LOCAL_RANK", "0")),
                 strategy=s.distributed.strategy, backend=s.distributed.backend)


def stop(ranks: Ranks | None) -> None:
    if ranks is not None and dist.is_initialized():
        dist.destroy_process_group()


def device(s: Scenario, ranks: Ranks | None) -> torch.device:
    """The scenario's device; with nccl each rank's own GPU (its local rank)."""
    if ranks is not None and ranks.backend == "nccl":
        return torch.device("cuda", ranks.local_rank)
    return torch.device(s.device)


def wrap(net: nn.Module, ranks: Ranks | None, dev: torch.device) -> nn.Module:
    """The net as this rank trains it: a DDP replica or an FSDP2 shard."""
    if ranks is None:
        return net
    if ranks.strategy == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        # The mesh on the net's own device type: FSDP2 would otherwise pick CUDA wherever it exists.
        mesh = init_device_mesh(dev.type, (ranks.world,))
        fully_shard(net, mesh=mesh)
        return net
    return nn.parallel.DistributedDataParallel(net, device_ids=[dev.index] if dev.type == "cuda" else None)


def train_sampler(dataset: Dataset[Any], ranks: Ranks, seed: int) -> DistributedSampler[Any]:
    """This rank's part of the training images, reshuffled each epoch (``set_epoch``)."""
    return DistributedSampler(dataset, num_replicas=ranks.world, rank=ranks.rank, shuffle=True, seed=seed)


class EvalShard(Dataset[tuple[torch.Tensor, int]]):
    """Every ``world``-th image from ``rank`` on, padded to the same length in every rank.

    FSDP's forward is a collective, so every rank must run as many batches; a padding item is the
    first image with label -1, which no prediction matches and no count includes.
    """

    def __init__(self, dataset: Dataset[tuple[torch.Tensor, int]], rank: int, world: int) -> None:
        n = len(dataset)  # type: ignore[arg-type]
        self.dataset = dataset
        self.indices: list[int | None] = list(range(rank, n, world))
        self.indices += [None] * (math.ceil(n / world) - len(self.indices))

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        index = self.indices[i]
        if index is None:
            return self.dataset[0][0], -1
        return self.dataset[index]


def eval_set(dataset: Dataset[tuple[torch.Tensor, int]], ranks: Ranks | None) -> Dataset[tuple[torch.Tensor, int]]:
    return dataset if ranks is None else EvalShard(dataset, ranks.rank, ranks.world)


def reduce_counts(correct: int, total: int, ranks: Ranks | None, dev: torch.device) -> tuple[int, int]:
    """(correct, total) summed over the ranks."""
    if ranks is None:
        return correct, total
    counts = torch.tensor([correct, total], dtype=torch.int64, device=dev)
    dist.all_reduce(counts)
    return int(counts[0]), int(counts[1])


def eval_net(net: nn.Module, ranks: Ranks | None) -> nn.Module:
    """What evaluates: a DDP replica's own module (no collective in its forward); FSDP2's sharded
    net itself, whose forward gathers the parameters."""
    if isinstance(net, nn.parallel.DistributedDataParallel):
        return net.module
    return net


def reshard(net: nn.Module) -> None:
    """Free FSDP2's gathered parameters after an evaluation pass (its root keeps them gathered after
    a forward, expecting a backward that an evaluation never runs); a no-op for any other net."""
    free = getattr(net, "reshard", None)
    if callable(free):
        free()


def full_state(net: nn.Module, ranks: Ranks | None) -> dict[str, Any]:
    """The whole net's state dict, as a single process's net holds it (for the checkpoint).

    With FSDP every rank must call this (it gathers the shards); rank 0 gets the tensors.
    """
    if isinstance(net, nn.parallel.DistributedDataParallel):
        return net.module.state_dict()
    if ranks is not None and ranks.strategy == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(net, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return net.state_dict()
