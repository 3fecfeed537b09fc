"""A training script that allocates 200 MiB after its last phase, while the process shuts down.

Its atexit handler runs after the harness has written ``stage_end`` (the workload has returned,
the probe is closed), holds 200 MiB of touched bytes for a moment, and lets them go: the known
answer of the teardown peak. The running peak must not include it, the teardown peak must.
"""

import atexit
import time

import torch

from harness import probe

HOLD_MIB = 200
HOLD_S = 0.6  # the sampler ticks every 40 ms (sampling.rss_hz 25 by default): a dozen see it


def _shutdown() -> None:
    blob = b"\x01" * (HOLD_MIB << 20)  # non-zero: every page is touched and counted in RSS
    time.sleep(HOLD_S)
    del blob


atexit.register(_shutdown)
torch.manual_seed(0)
model = torch.nn.Linear(64, 64)
opt = torch.optim.SGD(model.parameters(), lr=0.01)
probe.watch(model=model, optimizer=opt)
for epoch in (1, 2):
    with probe.epoch(epoch):
        for _ in probe.iterate(range(20)):
            probe.phase("forward")
            loss = model(torch.randn(32, 64)).pow(2).mean()
            time.sleep(0.01)
            probe.phase("backward")
            opt.zero_grad()
            loss.backward()
            time.sleep(0.01)
            probe.phase("optimizer")
            opt.step()
print("shutdown_alloc done")
