"""A training loop on the CPU that makes the harness see the H100 recordings as its CUDA device.

For ``harness run`` on a ``device: cuda`` scenario without a GPU: before training, this script
replaces the ``torch.cuda`` calls the harness makes (``memory_stats``, ``reset_peak_memory_stats``,
``mem_get_info``, ``get_device_name``, ``host_memory_stats``, the allocator history) with a
replay of ``../shared/data/cuda-h100/``: ``torch.cuda.memory_stats()`` recorded after every phase
of three steps of the tutorial net at batch 4 or 256. Step 2's figures stand for every later step.
The net itself trains on the CPU on random CIFAR-shaped batches, so the tensor tracing is real.

The replayed allocator keeps its own peak since the last reset: a phase's peak is the larger of
the allocated bytes at its start and at its end, or the recording's running peak where that rose
during the phase. So at batch 4 the backward of step 1 peaks at 68,520,960 bytes, the recording's
final peak; at batch 256 the backward of step 1 at 87,359,488.

Arguments: ``--recording DIR`` (the cuda-h100 directory), ``--batch 4|256``, ``--steps N`` per
epoch, ``--epochs N``, ``--pinned MB`` (pinned host memory the replay reports), ``--retries N``.
"""

from __future__ import annotations

import argparse
import json
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness import probe
from model.net import Net  # the tutorial's

ap = argparse.ArgumentParser()
ap.add_argument("--recording", required=True)
ap.add_argument("--batch", default="4", choices=["4", "256"])
ap.add_argument("--steps", type=int, default=30)
ap.add_argument("--epochs", type=int, default=2)
ap.add_argument("--pinned", type=float, default=0.0)
ap.add_argument("--retries", type=int, default=0)
args = ap.parse_args()

recording = Path(args.recording)
doc = json.loads((recording / "cuda-memory-stats.json").read_text())
info = doc["info"]
steps = doc["runs"][args.batch]["phases"]
with open(recording / f"cuda-snapshot-bs{args.batch}.pickle", "rb") as fh:
    history = pickle.load(fh)  # noqa: S301 - our own recording


class Replay:
    """The recorded allocator, one phase at a time, with a peak that resets like the real one."""

    def __init__(self) -> None:
        self.stats: dict[str, Any] = dict(steps[0]["data"])
        self.running = {k: 0 for k in ("allocated", "reserved")}  # the recording's running peaks
        self.peak = {"allocated": 0, "reserved": 0}  # since the last reset
        self.history_calls: list[Any] = []

    def play(self, step: int, phase: str) -> None:
        """The device as it was at the end of ``phase`` of ``step``."""
        rec = steps[min(step, len(steps) - 1)][phase]
        for key in ("allocated", "reserved"):
            current = int(rec[f"{key}_bytes.all.current"])
            running = int(rec[f"{key}_bytes.all.peak"])
            rose = running if running > self.running[key] else 0
            self.running[key] = max(self.running[key], running)
            self.peak[key] = max(self.peak[key], current, rose)
        self.stats = dict(rec)

    def memory_stats(self, device: Any = None) -> dict[str, Any]:
        out = dict(self.stats)
        out["allocated_bytes.all.peak"] = self.peak["allocated"]
        out["reserved_bytes.all.peak"] = self.peak["reserved"]
        out["num_alloc_retries"] = args.retries
        return out

    def reset_peak_memory_stats(self, device: Any = None) -> None:
        self.peak = {"allocated": int(self.stats["allocated_bytes.all.current"]),
                     "reserved": int(self.stats["reserved_bytes.all.current"])}

    def host_memory_stats(self) -> dict[str, Any]:
        pinned = int(args.pinned * 1024 * 1024)
        return {"allocated_bytes.current": pinned, "allocated_bytes.peak": pinned,
                "active_bytes.current": 0, "allocations.current": 2 if pinned else 0}


replay = Replay()
torch.cuda.is_available = lambda: True
torch.cuda.device_count = lambda: 1
torch.cuda.memory_stats = replay.memory_stats
torch.cuda.reset_peak_memory_stats = replay.reset_peak_memory_stats
torch.cuda.mem_get_info = lambda device=None: tuple(info["mem_get_info"])
torch.cuda.get_device_name = lambda device=None: info["gpu"]
torch.cuda.host_memory_stats = replay.host_memory_stats
torch.cuda.memory._record_memory_history = lambda *a, **kw: replay.history_calls.append(kw)
torch.cuda.memory._snapshot = lambda *a, **kw: history


torch.manual_seed(0)
batch = min(int(args.batch), 16)  # the CPU side stays small: the device figures are replayed
net = Net()
criterion = nn.CrossEntropyLoss()
optimizer = torch.optim.SGD(net.parameters(), lr=0.001, momentum=0.9)
probe.watch(model=net, optimizer=optimizer)
data = [(torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))) for _ in range(args.steps)]
step = 0
for epoch in range(1, args.epochs + 1):
    with probe.epoch(epoch):
        for x, y in probe.iterate(data):
            replay.play(step, "data")
            probe.phase("forward")
            optimizer.zero_grad()
            out = net(x)
            replay.play(step, "forward")
            probe.phase("loss")
            loss = criterion(out, y)
            replay.play(step, "loss")
            probe.phase("backward")
            loss.backward()
            replay.play(step, "backward")
            probe.phase("optimizer")
            optimizer.step()
            replay.play(step, "optimizer")
            step += 1
        with probe.section("validate"):
            with torch.no_grad():
                for x, _ in probe.iterate(data[:5]):
                    net(x)
                    replay.play(step, "forward")
    probe.metric("loss", float(loss))
print(f"replayed {step} steps at batch {args.batch}; history recorded {len(replay.history_calls)}x")
