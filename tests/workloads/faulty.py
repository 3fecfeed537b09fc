"""A workload that fails on purpose: python faulty.py MODE [AT_STEP].

MODE: raise | exit | kill | hog | hang. DataLoader workers are alive when it fails.
"""

import os
import signal
import sys
import time

import torch
from torch.utils.data import DataLoader, Dataset

from harness import probe

mode = sys.argv[1]
at = int(sys.argv[2]) if len(sys.argv) > 2 else 5


class Slow(Dataset):
    def __len__(self) -> int:
        return 100_000

    def __getitem__(self, i: int) -> torch.Tensor:
        time.sleep(0.002)
        return torch.zeros(8)


hog = []
with probe.epoch(1):
    for step, batch in enumerate(probe.iterate(DataLoader(Slow(), batch_size=4, num_workers=2))):
        probe.phase("forward")
        if step == at:
            if mode == "raise":
                raise RuntimeError(f"boom at step {step}")
            if mode == "exit":
                sys.exit(3)
            if mode == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
        if mode == "hog":
            hog.append(bytearray(20 * 1024 * 1024))
            hog[-1][::4096] = b"x" * len(hog[-1][::4096])  # touch every page
        probe.phase("backward")
        time.sleep(0.02)
