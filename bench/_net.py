"""The tutorial's net, optimizer and loss for the in-process benchmarks, and one training step.

One intra-op thread and seed 0, as the timed benchmarks run. ``train_step`` marks the phases the
built-in workload marks (model/stages.py), on whatever probe it is given (NullProbe: none).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from harness.probe import NullProbe  # noqa: E402
from model.net import Net  # noqa: E402

_BARE = NullProbe()


def tutorial_net() -> tuple[nn.Module, torch.optim.Optimizer, nn.Module]:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = Net()
    return net, torch.optim.SGD(net.parameters(), lr=0.001, momentum=0.9), nn.CrossEntropyLoss()


def train_step(net: nn.Module, opt: torch.optim.Optimizer, loss_fn: nn.Module,
               inputs: torch.Tensor, labels: torch.Tensor, probe: Any = _BARE) -> None:
    opt.zero_grad()
    probe.phase("forward")
    outputs = net(inputs)
    probe.phase("loss")
    loss = loss_fn(outputs, labels)
    probe.phase("backward")
    loss.backward()
    probe.phase("optimizer")
    opt.step()
