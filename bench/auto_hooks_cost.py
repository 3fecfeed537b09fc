"""What the automatic phases' hooks cost a training step, alone (issue 11).

The tutorial's net, loss and optimizer on in-memory batches of 4 (no DataLoader, no workers, no
sampler, no memray: the hooks are the only difference), timed in one process in ABBA blocks:
plain steps (A) against steps with every hook of :mod:`harness.probe.auto` installed and driving
a probe that records nothing (B). Prints the time per step of each, the difference in
microseconds and the ratio, and what that difference is as a share of a real step of the
tutorial (`--real-step-ms`, default 3.5: the JPEG baseline's step with its DataLoader); writes
bench/out/auto_hooks_cost.json.

    OMP_NUM_THREADS=1 python bench/auto_hooks_cost.py [--steps 3000] [--blocks 4]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

import torch
from _common import machine, table, write_result
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from harness import probe
from harness.probe import auto
from model.net import Net


class QuietProbe(probe.NullProbe):
    """A live probe that records nothing: the hooks' own cost is what is left."""

    enabled = True  # type: ignore[assignment]

    def section_step(self, done: int) -> None:
        pass

    def train_steps(self, start: int = 0, total: int = -1) -> QuietLoop:
        return QuietLoop()


class QuietLoop:
    """The steps the hooks count, counted by nobody."""

    def begin(self) -> None:
        pass

    def end(self) -> None:
        pass

    def abandon(self) -> None:
        pass

    def close(self) -> None:
        pass


def steps(loader: DataLoader[Any], net: nn.Module, opt: torch.optim.Optimizer) -> float:
    crit = nn.CrossEntropyLoss()
    t0 = time.perf_counter()
    n = 0
    for x, y in loader:
        opt.zero_grad()
        loss = crit(net(x), y)
        loss.backward()
        opt.step()
        n += 1
    return (time.perf_counter() - t0) / n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--blocks", type=int, default=4, help="ABBA blocks")
    ap.add_argument("--real-step-ms", type=float, default=3.5)
    args = ap.parse_args()
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(args.steps * 4, 3, 32, 32), torch.randint(0, 10, (args.steps * 4,)))
    loader = DataLoader(data, batch_size=4, shuffle=True)
    net = Net()
    opt = torch.optim.SGD(net.parameters(), lr=0.001, momentum=0.9)
    steps(loader, net, opt)  # warm-up
    per: dict[str, list[float]] = {"plain": [], "hooks": []}
    for kind in ["plain", "hooks", "hooks", "plain"] * args.blocks:
        if kind == "hooks":
            probe._active = QuietProbe()  # type: ignore[assignment]
            try:
                with auto.phases("main"):
                    per[kind].append(steps(loader, net, opt))
            finally:
                probe._active = probe.NullProbe()
        else:
            per[kind].append(steps(loader, net, opt))
        print(f"{kind:<5} {per[kind][-1] * 1e6:8.1f} us/step", flush=True)
    mean = {k: statistics.mean(v) for k, v in per.items()}
    diff_us = (mean["hooks"] - mean["plain"]) * 1e6
    rows = [[k, len(v), f"{mean[k] * 1e6:.1f}", f"{min(v) * 1e6:.1f}", f"{max(v) * 1e6:.1f}"] for k, v in per.items()]
    print(table(rows, ["kind", "blocks", "mean us/step", "min", "max"]))
    share = diff_us / (args.real_step_ms * 1000)
    print(f"hooks add {diff_us:.1f} us a step ({mean['hooks'] / mean['plain']:.3f}x of a bare in-memory step); "
          f"on a {args.real_step_ms:g} ms real step: {1 + share:.3f}x")
    path = write_result("auto_hooks_cost", {"machine": machine(), "per_step_s": per, "diff_us": diff_us,
                                            "real_step_ms": args.real_step_ms, "ratio_on_real_step": 1 + share})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
