"""An external training script that marks its phases with the probe API."""

import time

import torch
from torch.utils.data import DataLoader, TensorDataset

from harness import probe

torch.manual_seed(0)
data = TensorDataset(torch.randn(256, 32), torch.randint(0, 4, (256,)))
loader = DataLoader(data, batch_size=16, num_workers=2)
model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
crit = torch.nn.CrossEntropyLoss()
probe.watch(model=model, optimizer=opt)
for epoch in (1, 2):
    with probe.epoch(epoch):
        for i, (x, y) in enumerate(probe.iterate(loader)):
            # A step takes well under a millisecond: the first of each epoch lingers in forward
            # and backward so that the sampler's ticks (25 Hz) surely see those phases.
            linger = 0.15 if i == 0 else 0.0
            probe.phase("forward")
            opt.zero_grad()
            out = model(x)
            time.sleep(linger)
            probe.phase("loss")
            loss = crit(out, y)
            probe.phase("backward")
            loss.backward()
            time.sleep(linger)
            probe.phase("optimizer")
            opt.step()
        probe.metric("loss", loss.item())
print("withprobe done")
