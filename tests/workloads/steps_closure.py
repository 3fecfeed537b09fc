"""Steps through ``optimizer.step(closure)``: forward and backward run inside the closure.

``--optimizer lbfgs`` (LBFGS calls the closure several times a step) or ``sgd`` (a hand-written
closure, called once). No DataLoader: batches sliced from one tensor; validation under no_grad
each epoch. ``--leak`` keeps every closure's loss with its graph.
"""

import argparse

import torch
from torch import nn
from torch.nn import functional as F

ap = argparse.ArgumentParser()
ap.add_argument("--optimizer", choices=["lbfgs", "sgd"], default="sgd")
ap.add_argument("--epochs", type=int, default=2)
ap.add_argument("--steps", type=int, default=12)
ap.add_argument("--eval", type=int, default=4)
ap.add_argument("--leak", action="store_true")
args = ap.parse_args()

torch.manual_seed(1)
X, Y = torch.randn(args.steps * 16, 10), torch.randn(args.steps * 16, 1)
XV = torch.randn(args.eval * 16, 10)
model = nn.Sequential(nn.Linear(10, 20), nn.Tanh(), nn.Linear(20, 1))
if args.optimizer == "lbfgs":
    opt: torch.optim.Optimizer = torch.optim.LBFGS(model.parameters(), lr=0.1, max_iter=3)
else:
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
kept = []
for epoch in range(args.epochs):
    for step in range(args.steps):
        x, y = X[step * 16:(step + 1) * 16], Y[step * 16:(step + 1) * 16]

        def closure(x: torch.Tensor = x, y: torch.Tensor = y) -> torch.Tensor:
            opt.zero_grad()
            loss = F.mse_loss(model(x), y)
            loss.backward()
            if args.leak:
                kept.append(loss)
            return loss

        opt.step(closure)
    with torch.no_grad():
        for i in range(args.eval):
            model(XV[i * 16:(i + 1) * 16])
print("steps_closure done", len(kept))
