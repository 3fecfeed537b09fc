"""Does a memray window leave the process slower after it closes?

One process trains the tutorial net on random batches (no DataLoader, one thread) in blocks of
``--steps`` steps: a block before any capture, then, ``--windows`` times, a 150-step memray window
(the harness's own tracker, ``harness.probe.steps.memray_tracker``: follow_fork, the file
compressed on exit; native traces unless ``--no-native``) followed by an
untracked block. If memray leaves nothing behind, every untracked block runs at the first one's
speed; each block's mean step time is printed against the first. Writes bench/out/memray_after.json.

    python bench/memray_after.py [--steps 3000] [--windows 3] [--no-native]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
from _common import machine, table, write_result
from _net import train_step, tutorial_net

from harness.probe.steps import memray_tracker
from harness.records.scenario import MemrayConfig


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--windows", type=int, default=3)
    ap.add_argument("--window-steps", type=int, default=150)
    ap.add_argument("--no-native", action="store_true")
    ap.add_argument("--control", action="store_true", help="the same blocks, the windows untracked")
    args = ap.parse_args()
    net, opt, loss_fn = tutorial_net()
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))

    def block(n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            train_step(net, opt, loss_fn, x, y)
        return (time.perf_counter() - t0) / n * 1e3

    block(300)  # warm up
    rows: list[list[object]] = []
    first = block(args.steps)
    rows.append(["before any window", f"{first:.3f}", "1.000", threading.active_count()])
    cfg = MemrayConfig(native_traces=not args.no_native)  # the harness's tracker, follow_fork on
    with tempfile.TemporaryDirectory() as tmp:
        for w in range(1, args.windows + 1):
            if args.control:
                inside = block(args.window_steps)
            else:
                with memray_tracker(Path(tmp) / f"w{w}.bin", cfg):
                    inside = block(args.window_steps)
            rows.append([f"window {w} (tracked)", f"{inside:.3f}", f"{inside / first:.3f}", threading.active_count()])
            after = block(args.steps)
            rows.append([f"after window {w}", f"{after:.3f}", f"{after / first:.3f}", threading.active_count()])
    print(table(rows, ["block", "ms a step", "vs first", "threads"]))
    print(f"sys.getprofile() after: {sys.getprofile()!r}")
    path = write_result("memray_after", {"machine": machine(), "args": vars(args), "rows": rows})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
