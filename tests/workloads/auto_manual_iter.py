"""A plain script that drives the loader by hand: it = iter(loader); next(it) in a while loop."""

import time

import torch
from torch.utils.data import DataLoader, TensorDataset

PAUSE = 0.012
torch.manual_seed(2)
model = torch.nn.Sequential(torch.nn.Linear(20, 30), torch.nn.ReLU(), torch.nn.Linear(30, 5))
opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
loader = DataLoader(TensorDataset(torch.randn(120, 20), torch.randint(0, 5, (120,))),
                    batch_size=10, num_workers=2)
holdout = DataLoader(TensorDataset(torch.randn(30, 20), torch.randint(0, 5, (30,))), batch_size=10)


def slow(grad):
    time.sleep(PAUSE)
    return grad


epoch = 0
while epoch < 2:
    it = iter(loader)
    while True:
        try:
            x, y = next(it)
        except StopIteration:
            break
        opt.zero_grad()
        time.sleep(PAUSE)
        out = model(x)
        out.register_hook(slow)
        loss = torch.nn.functional.cross_entropy(out, y)
        time.sleep(PAUSE)
        loss.backward()
        time.sleep(PAUSE)
        opt.step()
        time.sleep(PAUSE)  # counted in optimizer: nothing marks the time before the next batch
    epoch += 1
    vit = iter(holdout)
    batch = next(vit, None)
    while batch is not None:
        model(batch[0]).sum().item()
        batch = next(vit, None)
print("auto_manual_iter done")
