"""The sampler's cost on the real training run, switched on and off within one run.

Runs are too noisy here to see a few per cent between them (bench/RESULTS.md), so this compares
within one: a bare ``harness train`` prints a loss line every ``--log-every`` steps, and this
process watches its stage with the harness's own :class:`TreeSampler` (default rates) in
alternating blocks of ``--block`` seconds, on, off, on, off... Each interval between two loss
lines that lies inside one block gives that block a step time; a slow spell of the machine
lasting longer than a block falls on both. Prints on against off and writes
bench/out/sampler_inrun.json.

    python bench/sampler_inrun.py [--block 10] [--log-every 250] [--epochs 2] [--full-hz 1]
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
from _common import REPO, harness_cmd, machine, table, write_result

sys.path.insert(0, str(REPO))
from harness.control.sampler import TreeSampler  # noqa: E402

_LOSS = re.compile(r"^\[(\d+),\s*(\d+)\] loss")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", default="scenarios/cifar10-jpeg.yaml")
    ap.add_argument("--block", type=float, default=10.0)
    ap.add_argument("--log-every", type=int, default=250)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--rss-hz", type=float, default=25.0)
    ap.add_argument("--full-hz", type=float, default=1.0)
    args = ap.parse_args()
    cmd = harness_cmd("train", args.scenario, "--set", f"train.log_every={args.log_every}",
                      "--set", f"train.epochs={args.epochs}", "--set", "stages=[train]")
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    lines: list[tuple[float, int, int]] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            m = _LOSS.match(line)
            if m:
                lines.append((time.monotonic() - t0, int(m.group(1)), int(m.group(2))))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    stage = None
    while stage is None and proc.poll() is None:
        kids = psutil.Process(proc.pid).children()
        stage = kids[0].pid if kids else None
        time.sleep(0.05)
    assert stage is not None, "the stage never started"
    blocks: list[tuple[float, float, bool]] = []
    on = True
    with tempfile.TemporaryDirectory() as tmp:
        k = 0
        while proc.poll() is None:
            start = time.monotonic() - t0
            sampler = None
            if on:
                k += 1
                sampler = TreeSampler(stage, "train", Path(tmp) / f"s{k}", None, args.rss_hz, args.full_hz)
                sampler.start()
            try:
                proc.wait(timeout=args.block)
            except subprocess.TimeoutExpired:
                pass
            if sampler is not None:
                sampler.stop()
                sampler.join()
            blocks.append((start, time.monotonic() - t0, on))
            on = not on
    reader.join(timeout=5)
    per: dict[bool, list[float]] = {True: [], False: []}
    for (ta, ea, sa), (tb, eb, sb) in zip(lines, lines[1:]):
        if ea != eb:
            continue  # a validation pass lies between
        for start, end, state in blocks:
            if start <= ta and tb <= end:
                per[state].append((tb - ta) / (sb - sa) * 1e3)
    rows = [["on" if s else "off", len(v), f"{statistics.mean(v):.3f}", f"{statistics.median(v):.3f}"]
            for s, v in per.items() if v]
    print(table(rows, ["sampler", "intervals", "mean ms a step", "median ms a step"]))
    ratio = statistics.mean(per[True]) / statistics.mean(per[False])
    print(f"on / off: {ratio:.3f} (mean), {statistics.median(per[True]) / statistics.median(per[False]):.3f} (median); "
          f"{len(blocks)} blocks of {args.block:g} s")
    path = write_result("sampler_inrun", {"machine": machine(), "args": vars(args), "blocks": blocks,
                                          "per": {str(k): v for k, v in per.items()}, "ratio_mean": ratio})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
