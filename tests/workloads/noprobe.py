"""An external training script that knows nothing of the harness."""

import time

import torch

model = torch.nn.Linear(256, 256)
opt = torch.optim.SGD(model.parameters(), lr=0.01)
blocks = []
for step in range(40):
    x = torch.randn(64, 256)
    loss = model(x).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    blocks.append(bytearray(256 * 1024))  # 10 MiB by the end: visible in RSS
    time.sleep(0.02)
print("noprobe done", len(blocks))
