"""A training loop over batches sliced from one tensor (no DataLoader) that can keep memory.

``--keep`` chooses what is kept from every step:

- ``none``: nothing (the clean script);
- ``loss``: the loss of each step with its graph, for a running mean (~11 KB a step), on the
  line marked ``# kept: loss``;
- ``numpy``: a numpy copy of each batch, 1 MiB, in a dict keyed by the step (never read back),
  on the line marked ``# kept: numpy``;
- ``eval``: each epoch's evaluation pass, run with grad enabled, keeps its outputs (with their
  graphs): memory rises at each evaluation pass and stays flat between (a staircase), on the
  line marked ``# kept: eval``.

``--memmap MB`` (clean, with any ``--keep``): each step also reads its own slice of a
memory-mapped file of MB megabytes (np.memmap), so the file's pages fault in step by step: RSS
grows by file-backed pages, which is no leak.

The loop goes through ``probe.iterate`` (over a plain list) so that the harness sees its steps
and opens its training windows without any DataLoader. ``--pause`` sleeps a step (data loading).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import torch

from harness import probe

MiB = 1 << 20

ap = argparse.ArgumentParser()
ap.add_argument("--keep", choices=["none", "loss", "numpy", "eval"], default="none")
ap.add_argument("--epochs", type=int, default=3)
ap.add_argument("--steps", type=int, default=40)
ap.add_argument("--pause", type=float, default=0.02)
ap.add_argument("--memmap", type=int, default=0, help="MB of a memory-mapped file read step by step")
args = ap.parse_args()

mapped = None
if args.memmap:
    path = os.path.join(tempfile.mkdtemp(), "data.f32")
    np.ones(args.memmap * MiB // 4, dtype=np.float32).tofile(path)
    mapped = np.memmap(path, dtype=np.float32, mode="r")
    chunk = len(mapped) // (args.epochs * args.steps)

torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
opt = torch.optim.SGD(net.parameters(), lr=0.01)
data = torch.randn(args.steps * 8, 32)
labels = torch.randint(0, 4, (args.steps * 8,))
batches = [(data[i:i + 8], labels[i:i + 8]) for i in range(0, len(data), 8)]
held = torch.randn(512, 4096)  # the evaluation pass's inputs: 8 MiB of activations a pass
probe_net = torch.nn.Linear(4096, 4096)
losses: list[torch.Tensor] = []
cache: dict[int, np.ndarray] = {}
outputs: list[torch.Tensor] = []
step = 0
for epoch in range(1, args.epochs + 1):
    with probe.epoch(epoch):
        for x, y in probe.iterate(batches):
            if mapped is not None:  # touch every page of this step's slice: file-backed pages
                float(mapped[step * chunk:(step + 1) * chunk:1024].sum())
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(net(x), y)  # kept: loss
            loss.backward()
            opt.step()
            if args.keep == "loss":
                losses.append(loss)
            elif args.keep == "numpy":
                cache[step] = np.ones(MiB // 8) * x[0, 0].item()  # kept: numpy
            step += 1
            time.sleep(args.pause)
        with probe.section("validate"):
            for _ in range(4):
                out = probe_net(held)  # kept: eval
                if args.keep == "eval":
                    outputs.append(out)
                time.sleep(0.2)
print(f"done: {len(losses)} losses, {len(cache)} copies, {len(outputs)} outputs")
