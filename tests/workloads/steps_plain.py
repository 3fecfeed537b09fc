"""A plain loop over random tensors: no DataLoader, Adam, and an evaluation each epoch that keeps
grad enabled (no no_grad), so each output holds its graph. ``--leak`` keeps those outputs.

Known answers: ``--epochs`` epochs of ``--steps`` optimizer steps, each ending in a validation
of ``--eval`` forwards.
"""

import argparse

import torch
from torch import nn
from torch.nn import functional as F

ap = argparse.ArgumentParser()
ap.add_argument("--epochs", type=int, default=2)
ap.add_argument("--steps", type=int, default=30)
ap.add_argument("--eval", type=int, default=6)
ap.add_argument("--leak", action="store_true")
args = ap.parse_args()

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
kept = []
for epoch in range(args.epochs):
    model.train()
    for step in range(args.steps):
        x, y = torch.randn(8, 16), torch.randint(0, 4, (8,))
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    for i in range(args.eval):
        out = model(torch.randn(64, 16))  # grad enabled: out holds its graph
        if args.leak:
            kept.append(out)
print("steps_plain done", len(kept))
