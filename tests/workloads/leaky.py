"""A tiny training loop that, with ``--leak``, keeps every step's loss tensor in a list.

Run under ``harness run`` by the report tests; the line marked ``# the leak`` is the one the
leak finding must name (memray attributes the kept memory to where the loss is allocated).
"""

from __future__ import annotations

import sys

import torch
from torch.utils.data import DataLoader, TensorDataset

from harness import probe

EPOCHS = 3
STEPS = 100
BATCH = 8

leak = "--leak" in sys.argv
torch.manual_seed(0)
data = TensorDataset(torch.randn(STEPS * BATCH, 16), torch.randint(0, 4, (STEPS * BATCH,)))
loader = DataLoader(data, batch_size=BATCH, shuffle=True, num_workers=0)
net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
criterion = torch.nn.CrossEntropyLoss()
optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
probe.watch(model=net, optimizer=optimizer)
losses = []
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
            if leak:
                losses.append(loss)  # keeps the tensor and its autograd graph alive
    probe.metric("loss", float(loss))
print(f"done: kept {len(losses)} loss tensors")
