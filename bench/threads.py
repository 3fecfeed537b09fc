"""torch's intra-op threads, 1 against 2, on the bare baseline (issue 15 item 2).

`harness train SCENARIO --set train.threads=N` in ABBA order (1, 2, 2, 1) per set, with
OMP_NUM_THREADS removed from the environment so that `train.threads` alone decides. Prints the
stages' wall time per setting, the ratio 2 / 1, and the last loss line and test accuracy of each
run (the setting must not change what is learned); writes bench/out/threads.json.

    python bench/threads.py [--sets 1] [--scenario scenarios/cifar10-jpeg.yaml]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys

from _common import harness_cmd, machine, run_dir_from, stage_seconds, table, timed, write_result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", type=int, default=1)
    ap.add_argument("--scenario", default="scenarios/cifar10-jpeg.yaml")
    args = ap.parse_args()
    os.environ.pop("OMP_NUM_THREADS", None)
    runs: list[dict[str, object]] = []
    secs: dict[int, list[float]] = {1: [], 2: []}
    for i, n in enumerate([1, 2, 2, 1] * args.sets, 1):
        _, out = timed(harness_cmd("train", args.scenario, "--quiet", "--set", f"train.threads={n}"))
        rd = run_dir_from(out)
        s = stage_seconds(rd)
        secs[n].append(s)
        log = "\n".join(p.read_text(errors="replace") for p in sorted(rd.glob("stages/*/log.txt")))
        losses = re.findall(r"\[\d+, *\d+\] loss: [0-9.]+", log)
        acc = re.findall(r"Accuracy of the network on the \d+ test images: \d+ %", log)
        runs.append({"threads": n, "stage_s": s, "run_dir": str(rd), "last_loss": losses[-1] if losses else None,
                     "test": acc[-1] if acc else None})
        print(f"run {i}: threads {n}  stages {s:7.1f} s  {runs[-1]['last_loss']}  {runs[-1]['test']}", flush=True)
    rows = [[n, len(v), f"{statistics.mean(v):.1f}", ", ".join(f"{x:.1f}" for x in v)] for n, v in secs.items()]
    print(table(rows, ["threads", "runs", "mean stages s", "each"]))
    ratio = statistics.mean(secs[2]) / statistics.mean(secs[1])
    print(f"ratio threads 2 / threads 1 = {ratio:.3f}")
    path = write_result("threads", {"machine": machine(), "runs": runs, "ratio_2_over_1": ratio})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
