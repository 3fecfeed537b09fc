"""A tiny training loop that leaks on request: ``--leak`` keeps every step's loss tensor in a
list, ``--leak-mb N`` keeps N MiB more of bytes every epoch; ``--steps N`` per epoch (100).

Run under ``harness run`` by the report tests (``--leak``: the line marked ``# the leak`` is the
one the leak finding must name, as memray attributes the kept memory to where the loss is
allocated) and by the growth-per-epoch budget tests (``--leak-mb``).
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.data import DataLoader, TensorDataset

from harness import probe

EPOCHS = 3
BATCH = 8
MiB = 1 << 20

ap = argparse.ArgumentParser()
ap.add_argument("--leak", action="store_true")
ap.add_argument("--leak-mb", type=int, default=0)
ap.add_argument("--steps", type=int, default=100)
args = ap.parse_args()
STEPS = args.steps
torch.manual_seed(0)
data = TensorDataset(torch.randn(STEPS * BATCH, 16), torch.randint(0, 4, (STEPS * BATCH,)))
loader = DataLoader(data, batch_size=BATCH, shuffle=True, num_workers=0)
net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
criterion = torch.nn.CrossEntropyLoss()
optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
probe.watch(model=net, optimizer=optimizer)
losses = []
kept: list[bytes] = []
for epoch in range(1, EPOCHS + 1):
    with probe.epoch(epoch):
        for x, y in probe.iterate(loader):
            probe.phase("forward")
            optimizer.zero_grad()
            out = net(x)
            probe.phase("loss")
            loss = criterion(out, y)  # the leak
            probe.phase("backward")
            loss.backward()
            probe.phase("optimizer")
            optimizer.step()
            if args.leak:
                losses.append(loss)  # keeps the tensor and its autograd graph alive
        # bytes filled with a non-zero value: every page is touched, so RSS holds them
        kept.extend(b"\x01" * MiB for _ in range(args.leak_mb))
    probe.metric("loss", float(loss))
print(f"done: kept {len(losses)} loss tensors and {len(kept)} MiB")
