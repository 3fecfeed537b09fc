"""An endless IterableDataset, AdamW, gradient accumulation (2), clipping and a schedule; the
script caps its steps: ``--epochs`` rounds of ``--steps`` optimizer steps drawn from one
iterator that never ends, each followed by a no_grad evaluation on held-out tensors.
``--leak`` keeps every step's loss with its graph.

Known answers: ``--epochs`` epochs of ``--steps`` steps, one validation each.
"""

import argparse

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, IterableDataset

ap = argparse.ArgumentParser()
ap.add_argument("--epochs", type=int, default=2)
ap.add_argument("--steps", type=int, default=15)
ap.add_argument("--leak", action="store_true")
args = ap.parse_args()
ACCUM = 2


class Stream(IterableDataset):
    def __iter__(self):
        g = torch.Generator().manual_seed(6)
        while True:
            yield torch.randn(10, generator=g), torch.randint(0, 2, (), generator=g)


torch.manual_seed(6)
model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 2))
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
sched = torch.optim.lr_scheduler.StepLR(opt, step_size=5)
held_out = [torch.randn(8, 10) for _ in range(3)]
it = iter(DataLoader(Stream(), batch_size=8))
kept = []
for epoch in range(args.epochs):
    model.train()
    for step in range(args.steps):
        for _ in range(ACCUM):
            x, y = next(it)
            loss = F.cross_entropy(model(x), y) / ACCUM
            loss.backward()
            if args.leak:
                kept.append(loss)
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
    model.eval()
    with torch.no_grad():
        for x in held_out:
            model(x)
print("steps_endless done", len(kept))
