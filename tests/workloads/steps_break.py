"""A new user's CNN script that leaves each epoch with ``break`` after ``--cut`` (20) steps of a
much longer DataLoader, then validates. ``--every N``: a no_grad evaluation on held-out tensors
every N steps inside the epoch too. ``--leak`` keeps every step's loss with its graph.

Known answers: ``--epochs`` epochs of ``--cut`` steps; the default memray window (steps
100-249) cannot open in the first, so the next epoch gets one that fits the 20 steps.
"""

import argparse

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

ap = argparse.ArgumentParser()
ap.add_argument("--epochs", type=int, default=3)
ap.add_argument("--cut", type=int, default=20)
ap.add_argument("--every", type=int, default=0, help="also evaluate 3 held-out batches every N steps")
ap.add_argument("--leak", action="store_true")
args = ap.parse_args()

torch.manual_seed(5)
N = 400  # 200 batches: the epoch the loader says it is
train = DataLoader(TensorDataset(torch.randn(N, 3, 8, 8), torch.randint(0, 10, (N,))),
                   batch_size=2, shuffle=True)
val = DataLoader(TensorDataset(torch.randn(8, 3, 8, 8), torch.randint(0, 10, (8,))), batch_size=4)
net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                    nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))
held_out = [torch.randn(2, 3, 8, 8) for _ in range(3)]
criterion = nn.CrossEntropyLoss()
opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
kept = []
for epoch in range(args.epochs):
    net.train()
    for i, (x, y) in enumerate(train):
        if i == args.cut:
            break
        opt.zero_grad()
        loss = criterion(net(x), y)
        loss.backward()
        opt.step()
        if args.leak:
            kept.append(loss)
        if args.every and (i + 1) % args.every == 0:
            with torch.no_grad():
                for x in held_out:
                    net(x)
    net.eval()
    correct = 0
    with torch.no_grad():
        for x, y in val:
            correct += (net(x).argmax(1) == y).sum().item()
print("steps_break done", len(kept))
