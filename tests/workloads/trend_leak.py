"""A plain training script (no probe calls, no epochs the harness can see) that can leak.

``--keep`` chooses what is kept from every step, each through a reference the script holds:

- ``none``: nothing (the clean script);
- ``graph``: a loss for logging, computed each step on a held-out batch with grad enabled and
  appended without ``.item()``: never backwarded, its autograd graph keeps the activations
  allocated on the line marked ``# kept: graph``;
- ``list``: bytes appended to a list on the line marked ``# kept: list``;
- ``cache``: a dict keyed by the global step (never read back), filled on the line marked
  ``# kept: cache``.

Each keeps about 2 MiB a step, ``--steps`` (15) steps an "epoch": 30 MiB an epoch, over
``--epochs`` (6). The trend-finding tests run it under ``harness run`` with ``stages: [main]``
and check that the finding names the marked line, and that ``none`` gets no finding.
"""

from __future__ import annotations

import argparse
import time

import torch

MiB = 1 << 20
BATCH = 128
HIDDEN = 4096  # BATCH x HIDDEN float32 = 2 MiB of activations a step

ap = argparse.ArgumentParser()
ap.add_argument("--keep", choices=["none", "graph", "list", "cache"], default="none")
ap.add_argument("--epochs", type=int, default=6)
ap.add_argument("--steps", type=int, default=15)
ap.add_argument("--pause", type=float, default=0.06, help="seconds a step sleeps (data loading)")
args = ap.parse_args()

torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Linear(64, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, 4))
criterion = torch.nn.CrossEntropyLoss()
optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
losses = []
kept: list[bytes] = []
cache: dict[int, torch.Tensor] = {}
step = 0
for epoch in range(args.epochs):
    for _ in range(args.steps):
        x = torch.randn(BATCH, 64)
        y = torch.randint(0, 4, (BATCH,))
        optimizer.zero_grad()
        hidden = net[1](net[0](x))
        loss = criterion(net[2](hidden), y)
        loss.backward()
        optimizer.step()
        if args.keep == "graph":
            watched = criterion(net(x.flip(0)), y)  # kept: graph
            losses.append(watched)  # keeps the tensor and its graph (with the activations)
        elif args.keep == "list":
            kept.append(b"\x01" * (2 * MiB))  # kept: list
        elif args.keep == "cache":
            cache[step] = hidden.detach().clone()  # kept: cache
        step += 1
        time.sleep(args.pause)
    print(f"epoch {epoch + 1}: loss {loss.item():.3f}", flush=True)
print(f"done: kept {len(losses)} losses, {len(kept)} blocks, {len(cache)} cached")
