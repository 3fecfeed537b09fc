"""harness fit's goal on the smoke scenario: at most 4 short runs, under 3 minutes, the measured
peak within 5 % of the prediction at the chosen value.

    .venv/bin/python bench/fit_smoke.py [--budget 1.6GiB] [--repeat 2] [-- extra harness fit args]

Each repetition runs ``harness fit scenarios/smoke.yaml --budget B`` in a fresh process into a
temporary reports folder, and reads its fit.json: the runs, the chosen value, predicted against
measured, the outcome. Prints a table and writes bench/out/fit_smoke.json with the machine's facts
(run it on an idle machine: the wall time is the figure the goal bounds).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, harness_cmd, machine, table, write_result  # noqa: E402

GOAL_S, GOAL_RUNS, GOAL_ERROR = 180.0, 4, 0.05


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", default="1.6GiB", help="harness fit's --budget (default: 1.6GiB)")
    parser.add_argument("--repeat", type=int, default=2, help="fits, each in a fresh process (default: 2)")
    parser.add_argument("--scenario", type=Path, default=REPO / "scenarios" / "smoke.yaml")
    parser.add_argument("extra", nargs="*", help="more harness fit arguments, after --")
    args = parser.parse_args(argv)
    import subprocess
    import time

    rows, results = [], []
    for i in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="fit-bench-") as tmp:
            cmd = harness_cmd("fit", str(args.scenario), "--budget", args.budget, "--reports", tmp,
                              "--quiet", *args.extra)
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
            wall = time.perf_counter() - t0
            found = list(Path(tmp).glob("*/fit-*/fit.json"))
            if not found:
                sys.exit(f"no fit.json (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-2000:]}")
            doc = json.loads(found[0].read_text())
        runs = len(doc["runs"]) + (doc["verification"] is not None)
        res = {"wall_s": round(wall, 1), "exit": proc.returncode, "runs": runs, "chosen": doc["chosen"],
               "predicted": doc["predicted"], "measured": doc["measured"], "error": doc["error"],
               "outcome": doc["outcome"], "reason": doc["reason"], "metric": doc["metric"]}
        results.append(res)
        err = "-" if res["error"] is None else f"{res['error']:+.2%}"
        rows.append([i + 1, res["wall_s"], runs, res["chosen"], err, res["outcome"]])
        print(table(rows[-1:], ["rep", "wall s", "runs", "chosen", "error", "outcome"]), flush=True)
    walls = [r["wall_s"] for r in results]
    ok = all(r["wall_s"] <= GOAL_S and r["runs"] <= GOAL_RUNS and r["error"] is not None
             and abs(r["error"]) <= GOAL_ERROR for r in results)
    print(table(rows, ["rep", "wall s", "runs", "chosen", "error", "outcome"]))
    print(f"wall: median {statistics.median(walls):.1f} s; goal (<= {GOAL_S:.0f} s, <= {GOAL_RUNS} runs, "
          f"|error| <= {GOAL_ERROR:.0%}): {'met' if ok else 'NOT met'}")
    path = write_result("fit_smoke", {"machine": machine(), "budget": args.budget, "results": results,
                                      "goal_met": ok})
    print(f"written {path}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
