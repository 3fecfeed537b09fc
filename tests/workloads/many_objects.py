"""A dataset of many small Python objects read by 2 DataLoader workers: copy-on-read when forked.

Every read writes the objects' reference counts, so each forked worker copies the pages they live
on while the parent, which only waits for batches, stays flat. ``--start-method spawn`` (or
``forkserver``) starts the workers without forking the parent: each unpickles its own copy of the
dataset, and there is nothing shared to copy.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from harness import probe

OBJECTS = 600_000  # ~60 MiB of growth per worker: well above the 32 MiB threshold
ITEMS = 160


class ManyObjects(Dataset[torch.Tensor]):
    def __init__(self) -> None:
        self.objects: list[dict[str, Any]] = [
            {"value": float(i), "name": f"object-{i}"} for i in range(OBJECTS)]

    def __len__(self) -> int:
        return ITEMS

    def __getitem__(self, index: int) -> torch.Tensor:
        # Every ITEMS-th object: over the epoch each worker touches nearly every page.
        total = sum(d["value"] for d in self.objects[index::ITEMS])
        time.sleep(0.02)  # slow enough for the sampler to watch the copies grow
        return torch.tensor([total])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--start-method", choices=["fork", "spawn", "forkserver"], default="fork")
    args = parser.parse_args()
    probe.phase("setup")
    loader = DataLoader(ManyObjects(), batch_size=1, shuffle=False, num_workers=2,
                        multiprocessing_context=args.start_method)
    with probe.epoch(1):
        for batch in probe.iterate(loader):
            probe.phase("forward")
            batch.sum()
    print("done")


# Spawned workers and the fork server import this file again, as __mp_main__: only the stage runs it.
if __name__ == "__main__":
    main()
