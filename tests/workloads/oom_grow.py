"""Grows by ``--mib`` MiB a step in one process until the kernel's OOM killer ends it (under a
memory cgroup), or for ``--steps`` steps.

``--where main``: the training loop keeps a tensor each forward. ``--where worker``: the one
DataLoader worker keeps a buffer each item it loads (the main process then sees the DataLoader's
"worker ... is killed by signal: Killed"). ``--where rank1``: under torchrun, rank 1's loop keeps
a tensor each step, rank 0 keeps nothing. The growing process asks the OOM killer to pick it
(``oom_score_adj``), as the largest process of the cgroup would be.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from torch.utils.data import DataLoader, Dataset

from harness import probe

MIB = 1 << 20
parser = argparse.ArgumentParser()
parser.add_argument("--where", choices=["main", "worker", "rank1"], default="main")
parser.add_argument("--mib", type=int, default=8)
parser.add_argument("--steps", type=int, default=400)
parser.add_argument("--pause", type=float, default=0.02)
args = parser.parse_args()


def _volunteer() -> None:
    with open("/proc/self/oom_score_adj", "w") as f:
        f.write("800")


class Hoarding(Dataset[torch.Tensor]):
    """Each item read in a worker keeps ``--mib`` MiB there."""

    def __init__(self) -> None:
        self.kept: list[bytearray] = []

    def __len__(self) -> int:
        return args.steps

    def __getitem__(self, i: int) -> torch.Tensor:
        if args.where == "worker":  # the worker's time is spent here; elsewhere, in forward
            self.kept.append(bytearray(b"\1" * (args.mib * MIB)))  # written: resident
            time.sleep(args.pause)
        return torch.ones(16)


rank = int(os.environ.get("RANK", "0"))
grows = args.where == "main" or (args.where == "rank1" and rank == 1)
if grows:
    _volunteer()
workers = 1 if args.where == "worker" else 0
loader = DataLoader(Hoarding(), batch_size=1, num_workers=workers,
                    worker_init_fn=(lambda _: _volunteer()) if workers else None)
kept = []
with probe.epoch(1):
    for _batch in probe.iterate(loader):
        probe.phase("forward")
        if grows:
            kept.append(torch.ones(args.mib * MIB // 4))  # the growth
            time.sleep(args.pause)
print(f"done: kept {len(kept) * args.mib} MiB")
