"""The live probe's hot path against the bare one, in one process, on the tutorial's loop.

The built-in training loop (model/stages.py's shape: ``probe.iterate``, four ``probe.phase``
calls a step) over an in-memory list of CIFAR-sized batches, once with the bare NullProbe and
once with the LiveProbe (memray off, tensor tracing and snapshots off, so that only the per-step
path is left), in blocks ABBA (``--trace``: with the default tensor tracing on, whose traced steps the median
leaves out, so that what tracing leaves behind shows). Prints the median step time of each and writes
bench/out/probe_cost.json.

    python bench/probe_cost.py [--steps 3000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _common import REPO, machine, table, write_result
from _net import train_step, tutorial_net
from torch import nn

sys.path.insert(0, str(REPO))
from harness.layout import CELL_FILE, PROBE_CONFIG_FILE  # noqa: E402
from harness.probe import NullProbe  # noqa: E402
from harness.probe import cell as cellmod  # noqa: E402
from harness.probe.live import LiveProbe  # noqa: E402
from harness.records.probe_config import ProbeConfig  # noqa: E402
from harness.records.scenario import Scenario  # noqa: E402


def loop(probe: Any, batches: list[tuple[torch.Tensor, torch.Tensor]], net: nn.Module,
         opt: torch.optim.Optimizer, loss_fn: nn.Module) -> float:
    """The median step time, in microseconds (a traced step is one in hundreds: left out)."""
    steps = []
    t0 = time.perf_counter()
    for inputs, labels in probe.iterate(batches):
        train_step(net, opt, loss_fn, inputs, labels, probe)
        t1 = time.perf_counter()
        steps.append(t1 - t0)
        t0 = t1
    return statistics.median(steps) * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--trace", action="store_true",
                    help="the live probe traces tensors as by default (steps 0-9 and every 1000th)")
    args = ap.parse_args()
    net, opt, loss_fn = tutorial_net()
    batches = [(torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))) for _ in range(args.steps)]
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        tensors = {"snapshots": False} if args.trace else {"trace_steps": 0, "trace_every": 0, "snapshots": False}
        scenario = Scenario(name="probe-cost", memray={"mode": "off"}, tensors=tensors)
        (d / PROBE_CONFIG_FILE).write_text(ProbeConfig.for_stage(scenario, "train").model_dump_json())
        cellmod.create(d / CELL_FILE)
        live = LiveProbe(d)
        live.watch(model=net, optimizer=opt)
        bare = NullProbe()
        loop(bare, batches[:300], net, opt, loss_fn)  # warm up
        times: dict[str, list[float]] = {"bare": [], "live": []}
        for r in range(args.rounds):
            for name in ("bare", "live", "live", "bare"):
                probe = live if name == "live" else bare
                with probe.epoch(r + 1):
                    times[name].append(loop(probe, batches, net, opt, loss_fn))
        live.close()
    rows = [[k, len(v), f"{statistics.mean(v):.1f}", ", ".join(f"{x:.0f}" for x in v)] for k, v in times.items()]
    print(table(rows, ["probe", "blocks", "median us a step", "each"]))
    diff = statistics.mean(times["live"]) - statistics.mean(times["bare"])
    print(f"live - bare: {diff:+.1f} us a step ({statistics.mean(times['live']) / statistics.mean(times['bare']):.3f}x)")
    path = write_result("probe_cost", {"machine": machine(), "args": vars(args), "times_us": times})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
