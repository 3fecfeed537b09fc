"""The sampler's cost on the real training run, switched on and off within one run.

Runs are too noisy here to see a few per cent between them (bench/RESULTS.md), so this compares
within one: a bare ``harness train`` prints a loss line every ``--log-every`` steps, and this
process watches its stage with the harness's own :class:`TreeSampler` (default rates) in
alternating blocks of ``--block`` seconds, one a mode of ``--modes`` in turn: ``batch`` (the
sampler thread as ``harness run`` starts it, SCHED_BATCH: ``sampling.background``), ``normal``
(an ordinary thread), ``off`` (no sampler). Each interval between two loss lines that lies inside
one block gives that block a step time; a slow spell of the machine lasting longer than a block
falls on every mode. Prints each mode against the last and writes bench/out/sampler_inrun.json.

    python bench/sampler_inrun.py [--block 10] [--log-every 250] [--epochs 2] [--full-hz 1]
        [--modes batch,off]
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
    ap.add_argument("--modes", default="batch,off", help="blocks cycle through these: batch, normal, off")
    args = ap.parse_args()
    modes = args.modes.split(",")
    if len(modes) < 2 or not set(modes) <= {"batch", "normal", "off"}:
        ap.error(f"--modes: two or more of batch, normal, off, got {args.modes!r}")
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
    blocks: list[tuple[float, float, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        k = 0
        while proc.poll() is None:
            mode = modes[len(blocks) % len(modes)]
            start = time.monotonic() - t0
            sampler = None
            if mode != "off":
                k += 1
                sampler = TreeSampler(stage, "train", Path(tmp) / f"s{k}", None, args.rss_hz, args.full_hz,
                                      background=mode == "batch")
                sampler.start()
            try:
                proc.wait(timeout=args.block)
            except subprocess.TimeoutExpired:
                pass
            if sampler is not None:
                sampler.stop()
                sampler.join()
            blocks.append((start, time.monotonic() - t0, mode))
    reader.join(timeout=5)
    per: dict[str, list[float]] = {m: [] for m in modes}
    for (ta, ea, sa), (tb, eb, sb) in zip(lines, lines[1:]):
        if ea != eb:
            continue  # a validation pass lies between
        for start, end, state in blocks:
            if start <= ta and tb <= end:
                per[state].append((tb - ta) / (sb - sa) * 1e3)
    if not all(per.values()):
        print(f"too few intervals: {', '.join(f'{m} {len(v)}' for m, v in per.items())}", file=sys.stderr)
        return 1
    rows = [[m, len(v), f"{statistics.mean(v):.3f}", f"{statistics.median(v):.3f}"] for m, v in per.items()]
    print(table(rows, ["sampler", "intervals", "mean ms a step", "median ms a step"]))
    last = modes[-1]
    ratios = {}
    for m in modes[:-1]:
        ratios[m] = statistics.mean(per[m]) / statistics.mean(per[last])
        median = statistics.median(per[m]) / statistics.median(per[last])
        print(f"{m} / {last}: {ratios[m]:.3f} (mean), {median:.3f} (median)")
    print(f"{len(blocks)} blocks of {args.block:g} s")
    path = write_result("sampler_inrun", {"machine": machine(), "args": vars(args), "blocks": blocks,
                                          "per": per, "ratio_mean": ratios})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
