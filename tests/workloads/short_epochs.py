"""A probe script with short epochs: ``--steps`` (64) steps in each of ``--epochs`` (2), a tiny
net, no DataLoader workers. ``--no-len`` hands ``probe.iterate`` a loader without ``len()``.

Run under ``harness run`` by tests/test_windows.py: the default memray training window (steps
100-399) must still open in every epoch it can.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset

from harness import probe

BATCH = 4

ap = argparse.ArgumentParser()
ap.add_argument("--steps", type=int, default=64)
ap.add_argument("--epochs", type=int, default=2)
ap.add_argument("--no-len", action="store_true")
args = ap.parse_args()
torch.manual_seed(0)
n = args.steps * BATCH
loader = DataLoader(TensorDataset(torch.randn(n, 8), torch.randint(0, 2, (n,))), batch_size=BATCH,
                    num_workers=0)


def batches() -> Iterator[Any]:
    """The loader's batches, its length hidden."""
    yield from loader


net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
criterion = torch.nn.CrossEntropyLoss()
optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
probe.watch(model=net, optimizer=optimizer)
for epoch in range(1, args.epochs + 1):
    with probe.epoch(epoch):
        for x, y in probe.iterate(batches() if args.no_len else loader):
            probe.phase("forward")
            optimizer.zero_grad()
            loss = criterion(net(x), y)
            probe.phase("backward")
            loss.backward()
            probe.phase("optimizer")
            optimizer.step()
    probe.metric("loss", loss.item())
print("short_epochs done")
