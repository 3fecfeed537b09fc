"""A script with its own probe calls (but a validation loop it does not mark): only its marks count."""

import torch
from torch.utils.data import DataLoader, TensorDataset

from harness import probe

torch.manual_seed(3)
loader = DataLoader(TensorDataset(torch.randn(64, 8), torch.randint(0, 2, (64,))), batch_size=8)
val = DataLoader(TensorDataset(torch.randn(16, 8), torch.randint(0, 2, (16,))), batch_size=8)
model = torch.nn.Linear(8, 2)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
probe.watch(model=model, optimizer=opt)
for epoch in (1, 2, 3):
    with probe.epoch(epoch):
        for x, y in probe.iterate(loader):
            probe.phase("forward")
            loss = torch.nn.functional.cross_entropy(model(x), y)
            probe.phase("backward")
            loss.backward()
            probe.phase("optimizer")
            opt.step()
            opt.zero_grad()
    for x, _ in val:
        model(x)
print("auto_explicit done")
