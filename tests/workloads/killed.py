"""Two epochs; the process kills itself with SIGKILL in the middle of the second."""

from __future__ import annotations

import os
import signal

import torch

from harness import probe

kept = []
for epoch in (1, 2):
    with probe.epoch(epoch):
        for step in probe.iterate(range(60)):
            probe.phase("forward")
            kept.append(torch.ones(10_000))
            if epoch == 2 and step == 30:
                os.kill(os.getpid(), signal.SIGKILL)
