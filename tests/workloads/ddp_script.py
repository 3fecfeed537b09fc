"""A plain DDP training script, as a user would launch it with torchrun: no probe calls.

It joins the job from torchrun's environment (init_process_group), wraps a small net in
DistributedDataParallel and trains two epochs on a DistributedSampler's part of random data, one
DataLoader worker per rank. ``--kill-rank R --kill-step N``: rank R SIGKILLs itself at its Nth
training step of epoch 1; ``--raise-rank R``: rank R raises there instead. Every phase takes a few
milliseconds, so the sampler sees each.
"""

import argparse
import os
import signal
import time

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

parser = argparse.ArgumentParser()
parser.add_argument("--kill-rank", type=int, default=None)
parser.add_argument("--raise-rank", type=int, default=None)
parser.add_argument("--kill-step", type=int, default=5)
args = parser.parse_args()

dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
PAUSE = 0.01


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(32, 48)
        self.fc2 = nn.Linear(48, 4)

    def forward(self, x):
        time.sleep(PAUSE)
        return self.fc2(torch.relu(self.fc1(x)))


trainset = TensorDataset(torch.randn(256, 32), torch.randint(0, 4, (256,)))
sampler = DistributedSampler(trainset, shuffle=True, seed=0)
trainloader = DataLoader(trainset, batch_size=8, sampler=sampler, num_workers=1)
net = nn.parallel.DistributedDataParallel(Net())
criterion = nn.CrossEntropyLoss()
optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)

for epoch in range(2):
    sampler.set_epoch(epoch)
    for i, (inputs, labels) in enumerate(trainloader):
        if epoch == 0 and i == args.kill_step:
            if rank == args.kill_rank:
                os.kill(os.getpid(), signal.SIGKILL)
            if rank == args.raise_rank:
                raise RuntimeError(f"planted failure in rank {rank}")
        optimizer.zero_grad()
        loss = criterion(net(inputs), labels)
        time.sleep(PAUSE)
        loss.backward()
        optimizer.step()
    if rank == 0:
        print(f"epoch {epoch + 1} loss {loss.item():.3f}")

dist.destroy_process_group()
print(f"rank {rank} done")
