"""A Hugging Face Accelerate script as users write it, no probe calls: ``accelerator.prepare``'d
model, optimizer and loaders, ``accelerator.backward``, a validation pass under no_grad each epoch.

``--accum N``: ``accelerator.accumulate(model)`` over N batches a step (1: no accumulation; the
prepared optimizer skips its ``step`` on the other batches). ``--keep`` (or the stage being named ``planted``) plants a leak: each
batch's outputs (16 x 512 float32, 32 KiB a batch) kept on the line marked ``# the leak``.
``--epochs N`` (3); ``--batches N`` (40) training and ``--val-batches N`` (4) validation batches an
epoch.
"""

from __future__ import annotations

import argparse
import os

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader, TensorDataset

ap = argparse.ArgumentParser()
ap.add_argument("--accum", type=int, default=1)
ap.add_argument("--keep", action="store_true")
ap.add_argument("--epochs", type=int, default=3)
ap.add_argument("--batches", type=int, default=40)
ap.add_argument("--val-batches", type=int, default=4)
args = ap.parse_args()
keep = args.keep or os.environ.get("HARNESS_STAGE") == "planted"

BATCH, CLASSES = 16, 512
torch.manual_seed(0)


def loader(n: int, shuffle: bool) -> DataLoader[tuple[torch.Tensor, ...]]:
    data = TensorDataset(torch.randn(n * BATCH, 32), torch.randint(0, CLASSES, (n * BATCH,)))
    return DataLoader(data, batch_size=BATCH, shuffle=shuffle, num_workers=0)


accelerator = Accelerator(cpu=True, gradient_accumulation_steps=args.accum)
model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, CLASSES))
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
model, optimizer, train, val = accelerator.prepare(model, optimizer, loader(args.batches, True),
                                                   loader(args.val_batches, False))
kept = []
for epoch in range(args.epochs):
    model.train()
    for x, y in train:
        with accelerator.accumulate(model):
            out = model(x)
            if keep:
                kept.append(out.detach().clone())  # the leak
            loss = torch.nn.functional.cross_entropy(out, y)
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
    model.eval()
    total = 0.0
    with torch.no_grad():
        for x, y in val:
            total += torch.nn.functional.cross_entropy(model(x), y).item()
    accelerator.print(f"epoch {epoch} val loss {total / len(val):.3f}")
