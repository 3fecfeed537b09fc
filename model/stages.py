"""The train and test stages of the tutorial, each runnable as its own process.

``run(ctx)`` is the workload entry the harness calls (``model.stages:run``). The loops are the
tutorial's, with probe calls marking phases; run bare, those calls do nothing.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.optim as optim
from torch.utils.data import DataLoader

from harness import probe
from harness.errors import DataError
from harness.probe.workload import StageContext
from model.data import build_splits, loader
from model.net import Net


def evaluate(net: nn.Module, dataloader: DataLoader, device: torch.device) -> tuple[int, int]:  # type: ignore[type-arg]
    """(correct, total) over a loader, as the tutorial counts them."""
    correct = 0
    total = 0
    with torch.no_grad():
        for images, labels in probe.iterate(dataloader):
            images, labels = images.to(device), labels.to(device)
            outputs = net(images)
            _, predicted = torch.max(outputs, 1)
            total += labels.size(0)
            correct += (predicted == labels).sum().item()
    return correct, total


def train(ctx: StageContext) -> None:
    s = ctx.scenario
    probe.phase("setup")
    torch.manual_seed(s.seed)
    device = torch.device(s.device)
    splits = build_splits(s.data, s.seed)
    nw = s.data.num_workers
    trainloader = loader(splits.train, s.train.batch_size, nw, shuffle=True, seed=s.seed)
    valloader = loader(splits.validation, s.train.batch_size, nw, shuffle=False, seed=s.seed)

    net = Net().to(device)
    criterion = nn.CrossEntropyLoss()
    optimizer = optim.SGD(net.parameters(), lr=s.train.lr, momentum=s.train.momentum)
    probe.watch(model=net, optimizer=optimizer)
    log_every = s.train.log_every

    for epoch in range(s.train.epochs):  # loop over the dataset multiple times
        with probe.epoch(epoch + 1):
            running_loss = 0.0
            for i, (inputs, labels) in enumerate(probe.iterate(trainloader, limit=s.train.max_steps)):
                inputs, labels = inputs.to(device), labels.to(device)

                probe.phase("forward")
                optimizer.zero_grad()  # zero the parameter gradients
                outputs = net(inputs)
                probe.phase("loss")
                loss = criterion(outputs, labels)
                probe.phase("backward")
                loss.backward()
                probe.phase("optimizer")
                optimizer.step()

                running_loss += loss.item()
                if i % log_every == log_every - 1:
                    print(f"[{epoch + 1}, {i + 1:5d}] loss: {running_loss / log_every:.3f}")
                    probe.metric("loss", running_loss / log_every, step=i + 1)
                    running_loss = 0.0

            with probe.section("validate"):
                correct, total = evaluate(net, valloader, device)
            accuracy = 100 * correct // total
            print(f"Accuracy of the network on the {total} validation images: {accuracy} %")
            probe.metric("val_accuracy", accuracy, correct=correct, total=total)

    print("Finished Training")
    torch.save(net.state_dict(), ctx.checkpoint)


def test(ctx: StageContext) -> None:
    s = ctx.scenario
    probe.phase("setup")
    if not ctx.checkpoint.exists():
        raise DataError(f"no checkpoint at {ctx.checkpoint}: the train stage must run first")
    device = torch.device(s.device)
    splits = build_splits(s.data, s.seed)
    testloader = loader(splits.test, s.train.batch_size, s.data.num_workers, shuffle=False, seed=s.seed)
    net = Net().to(device)
    net.load_state_dict(torch.load(ctx.checkpoint, map_location=device, weights_only=True))
    probe.watch(model=net)
    with probe.section("test"):
        correct, total = evaluate(net, testloader, device)
    accuracy = 100 * correct // total
    print(f"Accuracy of the network on the {total} test images: {accuracy} %")
    probe.metric("test_accuracy", accuracy, correct=correct, total=total)


def run(ctx: StageContext) -> None:
    {"train": train, "test": test}[ctx.stage](ctx)
