"""Gradient accumulation: ``--accum`` (4) backwards, one optimizer step. ``--loader``: batches
from a DataLoader (its passes are the epochs, a second loader validates); otherwise from random
tensors, with a no_grad validation each epoch. ``--leak`` keeps every micro-batch's logits.

Known answers: ``--epochs`` epochs of ``--steps`` optimizer steps (``steps * accum`` backwards).
"""

import argparse

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

ap = argparse.ArgumentParser()
ap.add_argument("--epochs", type=int, default=2)
ap.add_argument("--steps", type=int, default=10)
ap.add_argument("--accum", type=int, default=4)
ap.add_argument("--loader", action="store_true")
ap.add_argument("--leak", action="store_true")
args = ap.parse_args()

torch.manual_seed(4)
B = 4
model = nn.Sequential(nn.Linear(12, 24), nn.GELU(), nn.Linear(24, 3))
opt = torch.optim.SGD(model.parameters(), lr=0.05)
n = args.steps * args.accum * B
train = DataLoader(TensorDataset(torch.randn(n, 12), torch.randint(0, 3, (n,))), batch_size=B)
val = DataLoader(TensorDataset(torch.randn(5 * B, 12), torch.randint(0, 3, (5 * B,))), batch_size=B)


def batches():
    if args.loader:
        yield from train
    else:
        for _ in range(args.steps * args.accum):
            yield torch.randn(B, 12), torch.randint(0, 3, (B,))


kept = []
for epoch in range(args.epochs):
    model.train()
    opt.zero_grad()
    for i, (x, y) in enumerate(batches()):
        out = model(x)
        (F.cross_entropy(out, y) / args.accum).backward()
        if args.leak:
            kept.append(out.detach())
        if (i + 1) % args.accum == 0:
            opt.step()
            opt.zero_grad()
    model.eval()
    with torch.no_grad():
        for x, _ in val:
            model(x)
print("steps_accum done", len(kept))
