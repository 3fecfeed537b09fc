"""Bare workload (`harness train`) against the tutorial's own code on the same JPEG images.

Runs in ABBA order (tutorial, workload, workload, tutorial) so drift on a shared machine cancels,
then prints a table and writes bench/out/bare_vs_tutorial.json. Goal: ratio <= 1.05.

    python bench/bare_vs_tutorial.py [--pairs 1] [--scenario scenarios/cifar10-jpeg.yaml]
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
from pathlib import Path

from _common import REPO, harness_cmd, machine, run_dir_from, table, timed, write_result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=1, help="ABBA rounds (default 1: 4 runs)")
    ap.add_argument("--scenario", default="scenarios/cifar10-jpeg.yaml")
    args = ap.parse_args()
    folder = REPO / "data" / "cifar10-jpg"
    if not (folder / ".unpacked").exists():
        sys.exit(f"{folder} missing: run `harness train {args.scenario}` once to unpack the mirror")
    tut_cwd = Path(tempfile.mkdtemp(prefix="tutorial-"))
    times: dict[str, list[float]] = {"tutorial": [], "workload": []}
    figures: dict[str, list[str]] = {"tutorial": [], "workload": []}
    order = ["tutorial", "workload", "workload", "tutorial"] * args.pairs
    for i, who in enumerate(order, 1):
        if who == "tutorial":
            cmd = [sys.executable, str(REPO / "bench/tutorial.py"), str(folder)]
            wall, out = timed(cmd, cwd=tut_cwd)
        else:
            wall, out = timed(harness_cmd("train", args.scenario, "--quiet"))
            logs = sorted(run_dir_from(out).glob("stages/*/log.txt"))
            out += "".join(p.read_text(encoding="utf-8") for p in logs)
        times[who].append(wall)
        acc = re.findall(r"Accuracy of the network on the \d+ test images: (\d+) %", out)
        loss = re.findall(r"\[1,  2000\] loss: ([\d.]+)", out)
        figures[who].append(f"loss@[1,2000]={loss[0] if loss else '?'} test={acc[0] if acc else '?'}%")
        print(f"run {i}/{len(order)} {who:<8} {wall:7.1f} s  {figures[who][-1]}", flush=True)
    t_mean = statistics.mean(times["tutorial"])
    w_mean = statistics.mean(times["workload"])
    ratio = w_mean / t_mean
    rows = [
        [who, len(ts), f"{statistics.mean(ts):.1f}", f"{min(ts):.1f}", f"{max(ts):.1f}", figures[who][0]]
        for who, ts in times.items()
    ]
    print(table(rows, ["code", "runs", "mean s", "min s", "max s", "figures"]))
    print(f"ratio workload/tutorial = {ratio:.3f} (goal <= 1.05)")
    path = write_result(
        "bare_vs_tutorial",
        {"machine": machine(), "times_s": times, "ratio": ratio, "figures": figures, "order": order},
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
