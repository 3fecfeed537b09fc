"""A tiny training loop that, given ``--leak-mb N``, keeps N MiB more of bytes every epoch.

The growth-per-epoch budget tests run it with and without the leak.
"""

from __future__ import annotations

import sys

import torch
from torch.utils.data import DataLoader, TensorDataset

from harness import probe

EPOCHS = 3
MiB = 1 << 20
leak_mb = int(sys.argv[sys.argv.index("--leak-mb") + 1]) if "--leak-mb" in sys.argv else 0
torch.manual_seed(0)
data = TensorDataset(torch.randn(160, 16), torch.randint(0, 4, (160,)))
loader = DataLoader(data, batch_size=16, num_workers=0)
net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
criterion = torch.nn.CrossEntropyLoss()
optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
probe.watch(model=net, optimizer=optimizer)
kept: list[bytes] = []
for epoch in range(1, EPOCHS + 1):
    with probe.epoch(epoch):
        for x, y in probe.iterate(loader):
            probe.phase("forward")
            optimizer.zero_grad()
            out = net(x)
            probe.phase("loss")
            loss = criterion(out, y)
            probe.phase("backward")
            loss.backward()
            probe.phase("optimizer")
            optimizer.step()
        # bytes filled with a non-zero value: every page is touched, so RSS holds them
        kept.extend(b"\x01" * MiB for _ in range(leak_mb))
print(f"leak_mb done: kept {len(kept)} MiB")
