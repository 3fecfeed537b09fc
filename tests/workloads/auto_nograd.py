"""A plain script: eval() + no_grad() validation, torch.autograd.backward, a dataset that takes its time."""

import time

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

PAUSE = 0.012


class Slow(Dataset):
    def __init__(self, n):
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(n, 16, generator=g)
        self.y = torch.randint(0, 3, (n,), generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        if i % 4 == 0:
            time.sleep(PAUSE)
        return self.x[i], self.y[i]


class Body(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = nn.Sequential(nn.Linear(16, 24), nn.Tanh(), nn.Linear(24, 3))

    def forward(self, x):
        time.sleep(PAUSE)
        return self.inner(x)


def main():
    model = Body()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.5)
    opt.register_step_pre_hook(lambda *_: time.sleep(PAUSE))
    loss_fn = nn.CrossEntropyLoss()
    train = DataLoader(Slow(96), batch_size=6, shuffle=True, num_workers=0)
    val = DataLoader(Slow(36), batch_size=6, num_workers=0)
    for epoch in (1, 2):
        model.train()
        for x, y in train:
            opt.zero_grad(set_to_none=False)
            out = model(x)
            out.register_hook(lambda g: time.sleep(PAUSE))
            loss = loss_fn(out, y)
            time.sleep(PAUSE)
            torch.autograd.backward(loss)
            opt.step()
        model.eval()
        with torch.no_grad():
            acc = sum((model(x).argmax(1) == y).float().mean().item() for x, y in val)
        print("epoch", epoch, "acc", acc)
    print("auto_nograd done")


if __name__ == "__main__":
    main()
