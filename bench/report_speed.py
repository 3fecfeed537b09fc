"""Time ``build_report`` on a run directory: the acceptance bar is under 30 s for all reports.

    .venv/bin/python bench/report_speed.py reports/cifar10-jpeg/<run> [--repeat 3]

Each repetition regenerates ``<run>/report/`` from scratch in a fresh process (so memray's
per-process symbol cache and the imports are paid every time, as ``harness report`` pays them).
``summary_at``: seconds from the process's start until the terminal summary was handed over
(``harness report`` prints it then, before the tables, the timeline and the page are written).
Prints a table per phase of the work and writes bench/out/report_speed.json with the machine's
facts and the sizes the acceptance also bounds (run directory under 150 MB, flamegraphs under
20 MB each).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, table, write_result  # noqa: E402

ONE_RUN = """
import json, sys, time
t0 = time.perf_counter()
from harness.report import build_report
imports = time.perf_counter() - t0
told = []
r = build_report(sys.argv[1], on_summary=lambda text: told.append(time.perf_counter() - t0))
out = dict(r.seconds, imports=round(imports, 3), summary_at=round(told[0], 3) if told else None,
           process_total=round(time.perf_counter() - t0, 3))
print(json.dumps({"seconds": out, "flamegraphs": [
    {"file": str(f.path) if f.path else None, "bytes": f.bytes, "note": f.note}
    for f in r.flamegraphs]}))
"""


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a run directory written by harness run")
    parser.add_argument("--repeat", type=int, default=3, help="fresh-process runs (default: 3)")
    args = parser.parse_args(argv)
    run_dir = args.run_dir.resolve()
    if not (run_dir / "manifest.json").is_file():
        sys.exit(f"{run_dir}: not a run directory")

    captures = sorted(run_dir.glob("stages/*/memray/*.bin*"))
    facts: dict[str, Any] = machine()
    runs: list[dict[str, Any]] = []
    for i in range(args.repeat):
        t0 = os.times().elapsed
        proc = subprocess.run([sys.executable, "-c", ONE_RUN, str(run_dir)], capture_output=True,
                              text=True, check=False)
        wall = os.times().elapsed - t0
        if proc.returncode != 0:
            sys.exit(f"build_report failed:\n{proc.stderr[-3000:]}")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        result["seconds"]["wall"] = round(wall, 3)
        runs.append(result)
        print(f"run {i + 1}/{args.repeat}: {wall:.2f} s", file=sys.stderr)

    keys = [k for k in runs[0]["seconds"] if runs[0]["seconds"][k] is not None]
    rows = []
    for k in keys:
        vals = [r["seconds"][k] for r in runs]
        spread = statistics.stdev(vals) if len(vals) > 1 else 0.0
        rows.append([k, f"{statistics.mean(vals):.2f}", f"{spread:.2f}", f"{min(vals):.2f}",
                     f"{max(vals):.2f}"])
    report_dir = run_dir / "report"
    sizes = {
        "captures": len(captures),
        "capture_bytes": sum(p.stat().st_size for p in captures),
        "run_dir_bytes": _dir_bytes(run_dir),
        "report_bytes": _dir_bytes(report_dir),
        "largest_flamegraph_bytes": max((f["bytes"] for f in runs[-1]["flamegraphs"]), default=0),
        "flamegraphs_declined": [f["note"] for f in runs[-1]["flamegraphs"] if not f["file"]],
    }
    print(table(rows, ["part", "mean s", "stdev", "min", "max"]))
    print(f"\n{sizes['captures']} captures, {sizes['capture_bytes'] / 1e6:.1f} MB; run directory "
          f"{sizes['run_dir_bytes'] / 1e6:.1f} MB (report {sizes['report_bytes'] / 1e6:.1f} MB); "
          f"largest flamegraph {sizes['largest_flamegraph_bytes'] / 1e6:.1f} MB")
    wall = [r["seconds"]["wall"] for r in runs]
    verdict = "PASS" if max(wall) < 30 else "FAIL"
    print(f"all reports: mean {statistics.mean(wall):.2f} s over {len(wall)} run(s), max "
          f"{max(wall):.2f} s: {verdict} (bar: 30 s)")
    path = write_result("report_speed", {
        "run_dir": str(run_dir), "machine": facts, "repeat": args.repeat, "runs": runs,
        "sizes": sizes, "verdict": verdict,
    })
    print(f"wrote {path}")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
