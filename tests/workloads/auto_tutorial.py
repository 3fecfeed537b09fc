"""A tutorial-shaped script with no probe calls; its validation loop uses neither eval() nor no_grad.

Stage ``test`` (HARNESS_STAGE) runs only a test pass, under no_grad. Every phase of a step takes
a few milliseconds, so the sampler's ticks (25 Hz) see each of them.
"""

import os
import time

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
PAUSE = 0.012


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(32, 48)
        self.fc2 = nn.Linear(48, 4)

    def forward(self, x):
        time.sleep(PAUSE)
        return self.fc2(torch.relu(self.fc1(x)))


def slow_grad(grad):
    time.sleep(PAUSE)
    return grad


trainset = TensorDataset(torch.randn(128, 32), torch.randint(0, 4, (128,)))
valset = TensorDataset(torch.randn(48, 32), torch.randint(0, 4, (48,)))
trainloader = DataLoader(trainset, batch_size=8, shuffle=True, num_workers=2)
valloader = DataLoader(valset, batch_size=8, num_workers=2)

net = Net()
criterion = nn.CrossEntropyLoss()
optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
optimizer.register_step_pre_hook(lambda *_: time.sleep(PAUSE))

if os.environ.get("HARNESS_STAGE") == "test":
    correct = 0
    with torch.no_grad():
        for inputs, labels in valloader:
            correct += (net(inputs).argmax(1) == labels).sum().item()
    print("test done", correct)
else:
    for epoch in range(2):
        running_loss = 0.0
        for i, data in enumerate(trainloader, 0):
            inputs, labels = data
            optimizer.zero_grad()
            outputs = net(inputs)
            outputs.register_hook(slow_grad)
            loss = criterion(outputs, labels)
            time.sleep(PAUSE)
            loss.backward()
            optimizer.step()
            running_loss += loss.item()
        val_loss = 0.0
        for inputs, labels in valloader:
            val_loss += criterion(net(inputs), labels).item()
        print(f"epoch {epoch + 1} loss {running_loss:.3f} val {val_loss:.3f}")
    print("auto_tutorial done")
