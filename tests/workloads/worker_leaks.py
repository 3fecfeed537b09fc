"""Datasets for the worker-tracking tests (harness.probe.workers): each planted variant keeps a
known number of bytes in its DataLoader worker per sample, its clean twin keeps nothing.

Importable by name, so spawned and forkserver workers unpickle them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset, get_worker_info

SAMPLE_BYTES = 64 * 1024  # each augmented sample: 16,384 float32


class Augmenting(Dataset[torch.Tensor]):
    """``n`` samples, each augmented on the fly; ``keep``: every augmented sample is kept."""

    def __init__(self, n: int, keep: bool) -> None:
        self.n = n
        self.keep = keep
        self.kept: list[torch.Tensor] = []

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        x = torch.full((SAMPLE_BYTES // 4,), float(i)) * 0.5  # the augmentation
        if self.keep:
            self.kept.append(x.clone())  # planted: every augmented sample stays
        return x[:4]


class Worker0Cache(Dataset[torch.Tensor]):
    """A cache of decoded samples that grows only in worker 0 (``grow``); others cache nothing."""

    def __init__(self, n: int, grow: bool) -> None:
        self.n = n
        self.grow = grow
        self.cache: dict[tuple[int, int], Any] = {}
        self.epoch = 0

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        info = get_worker_info()
        decoded = bytearray(SAMPLE_BYTES)
        if self.grow and info is not None and info.id == 0:
            self.cache[(len(self.cache), i)] = decoded  # planted: keyed anew every time
        return torch.tensor([i])


def main(argv: list[str] | None = None) -> None:
    """A script run unchanged (no probe calls): a linear model trained over a DataLoader whose
    persistent workers run one of the datasets above, planted (``--keep``) or clean."""
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", choices=("augmenting", "worker0"), default="augmenting")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--start-method", default="fork")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--persistent", type=int, default=1)
    args = parser.parse_args(argv)
    from torch.utils.data import DataLoader

    data: Dataset[torch.Tensor] = (Augmenting(args.samples, args.keep) if args.dataset == "augmenting"
                                   else Worker0Cache(args.samples, args.keep))
    loader = DataLoader(data, batch_size=4, num_workers=args.workers,
                        persistent_workers=bool(args.persistent),
                        multiprocessing_context=args.start_method)
    model = torch.nn.Linear(4 if args.dataset == "augmenting" else 1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(args.epochs):
        for batch in loader:
            loss = model(batch.float().view(batch.shape[0], -1)).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()


if __name__ == "__main__":
    main()
