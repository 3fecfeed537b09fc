"""The train and test stages of the tutorial, each runnable as its own process.

``run(ctx)`` is the workload entry the harness calls (``model.stages:run``). The loops are the
tutorial's, with probe calls marking phases; run bare, those calls do nothing. Under torchrun
(scenario ``distributed:``) each rank runs them on its part of the data (:mod:`model.parallel`).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.optim as optim
from torch.utils.data import DataLoader

from harness import probe
from harness.errors import DataError
from harness.probe.workload import StageContext
from model import parallel
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
            total += (labels >= 0).sum().item()  # a rank's padding (label -1) is not an image
            correct += (predicted == labels).sum().item()
    return correct, total


def train(ctx: StageContext) -> None:
    s = ctx.scenario
    probe.phase("setup")
    torch.manual_seed(s.seed)
    ranks = parallel.start(s)
    main = ranks is None or ranks.main
    device = parallel.device(s, ranks)
    splits = build_splits(s.data, s.seed)
    nw = s.data.num_workers
    sampler = parallel.train_sampler(splits.train, ranks, s.seed) if ranks is not None else None
    trainloader = loader(splits.train, s.train.batch_size, nw, shuffle=True, seed=s.seed, sampler=sampler)
    valloader = loader(parallel.eval_set(splits.validation, ranks), s.train.batch_size, nw,
                       shuffle=False, seed=s.seed)

    net = parallel.wrap(Net().to(device), ranks, device)  # the same seed: the same initial weights
    criterion = nn.CrossEntropyLoss()
    optimizer = optim.SGD(net.parameters(), lr=s.train.lr, momentum=s.train.momentum)
    probe.watch(model=net, optimizer=optimizer)
    log_every = s.train.log_every

    for epoch in range(s.train.epochs):  # loop over the dataset multiple times
        with probe.epoch(epoch + 1):
            if sampler is not None:
                sampler.set_epoch(epoch)
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
                    if main:
                        print(f"[{epoch + 1}, {i + 1:5d}] loss: {running_loss / log_every:.3f}")
                    probe.metric("loss", running_loss / log_every, step=i + 1)
                    running_loss = 0.0

            with probe.section("validate"):
                correct, total = evaluate(parallel.eval_net(net, ranks), valloader, device)
                parallel.reshard(net)
                correct, total = parallel.reduce_counts(correct, total, ranks, device)
            accuracy = 100 * correct // total
            if main:
                print(f"Accuracy of the network on the {total} validation images: {accuracy} %")
            probe.metric("val_accuracy", accuracy, correct=correct, total=total)

    state = parallel.full_state(net, ranks)  # with FSDP a collective: every rank gathers
    if main:
        print("Finished Training")
    if ranks is None or ranks.saves:
        torch.save(state, ctx.checkpoint)
    parallel.stop(ranks)


def test(ctx: StageContext) -> None:
    s = ctx.scenario
    probe.phase("setup")
    if not ctx.checkpoint.exists():
        raise DataError(f"no checkpoint at {ctx.checkpoint}: the train stage must run first")
    # Distributed, each rank tests its part of the images with the whole net; the counts are summed.
    ranks = parallel.start(s)
    device = parallel.device(s, ranks)
    splits = build_splits(s.data, s.seed)
    testloader = loader(parallel.eval_set(splits.test, ranks), s.train.batch_size, s.data.num_workers,
                        shuffle=False, seed=s.seed)
    net = Net().to(device)
    net.load_state_dict(torch.load(ctx.checkpoint, map_location=device, weights_only=True))
    probe.watch(model=net)
    with probe.section("test"):
        correct, total = evaluate(net, testloader, device)
        correct, total = parallel.reduce_counts(correct, total, ranks, device)
    accuracy = 100 * correct // total
    if ranks is None or ranks.main:
        print(f"Accuracy of the network on the {total} test images: {accuracy} %")
    probe.metric("test_accuracy", accuracy, correct=correct, total=total)
    parallel.stop(ranks)


def run(ctx: StageContext) -> None:
    {"train": train, "test": test}[ctx.stage](ctx)
