"""Automatic phases against probe calls, on the tutorial as printed (issue 11).

`harness run` of `bench/tutorial.py` (unchanged: automatic phases) against `harness run` of
`bench/tutorial_probe.py` (the same code with explicit probe calls), ABBA order (auto, probe,
probe, auto) per set, on the JPEG images. Prints and writes to bench/out/auto_vs_probe.json:

- the stages' wall time of each run and the ratio auto / probe (goal <= 1.02);
- the time shares of the step phases (data, forward, loss, backward, optimizer: each phase's
  seconds over both epochs, as a share of the five phases' total) and the largest difference
  in points between the two kinds (goal <= 5);
- what the automatic run recorded: epoch snapshots' census (parameters, gradients, momentum
  bytes), memray training windows per epoch, the sections (the test pass as `test`).

    OMP_NUM_THREADS=1 python bench/auto_vs_probe.py [--sets 1] [--data data/cifar10-jpg]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from _common import REPO, harness_cmd, machine, run_dir_from, stage_seconds, table, timed, write_result

from harness.analysis.load import read_events
from harness.layout import EVENTS_FILE
from harness.records.events import MemrayStart, SectionStart

STEP_PHASES = ("data", "forward", "loss", "backward", "optimizer")
SCRIPTS = {"auto": "bench/tutorial.py", "probe": "bench/tutorial_probe.py"}


def scenario(kind: str, data: Path, folder: Path) -> Path:
    path = folder / f"tutorial-{kind}.yaml"
    path.write_text(
        f"name: tutorial-{kind}\n"
        "stages: [main]\n"
        "workload:\n"
        f"  entry: {REPO / SCRIPTS[kind]}\n"
        f"  args: [{data}]\n",
        encoding="utf-8",
    )
    return path



def shares(run_dir: Path) -> dict[str, float]:
    """Each step phase's share of the five step phases' seconds, epochs 1 and 2 together."""
    summary = json.loads((run_dir / "report" / "summary.json").read_text())
    seconds = dict.fromkeys(STEP_PHASES, 0.0)
    for row in summary["phases"]:
        if row["phase"] in seconds and row["epoch"]:
            seconds[row["phase"]] += row["seconds"]
    total = sum(seconds.values()) or 1.0
    return {k: v / total for k, v in seconds.items()}


def recorded(run_dir: Path) -> dict[str, Any]:
    """What the run recorded: census bytes per epoch snapshot, training windows, sections."""
    from harness.records.snapshots import Snapshot

    stage = run_dir / "stages" / "main"
    census: dict[str, dict[str, int]] = {}
    for path in sorted((stage / "snapshots").glob("epoch-*.json")):
        snap = Snapshot.model_validate_json(path.read_text())
        census[path.stem] = {k: v for k, v in snap.tensor_bytes.items() if v}
    events = read_events(stage / EVENTS_FILE, problems=[])
    windows = [e.capture for e in events if isinstance(e, MemrayStart)]
    sections = [e.section for e in events if isinstance(e, SectionStart)]
    return {"census": census, "memray_windows": windows, "sections": sections}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", type=int, default=1)
    ap.add_argument("--data", type=Path, default=REPO / "data" / "cifar10-jpg")
    args = ap.parse_args()
    folder = REPO / "bench" / "out" / "auto_vs_probe"
    folder.mkdir(parents=True, exist_ok=True)
    files = {k: scenario(k, args.data.resolve(), folder) for k in SCRIPTS}
    runs: list[dict[str, Any]] = []
    for i, kind in enumerate(["auto", "probe", "probe", "auto"] * args.sets, 1):
        wall, out = timed(harness_cmd("run", str(files[kind]), "--quiet"), cwd=folder)
        rd = folder / run_dir_from(out).relative_to(REPO)  # the run ran in folder (the script saves there)
        info = {"kind": kind, "wall_s": wall, "stage_s": stage_seconds(rd), "run_dir": str(rd),
                "shares": shares(rd), **recorded(rd)}
        runs.append(info)
        print(f"run {i}: {kind:<5} stages {info['stage_s']:7.1f} s  {rd}", flush=True)
    by = {k: [r for r in runs if r["kind"] == k] for k in SCRIPTS}
    mean = {k: statistics.mean(r["stage_s"] for r in v) for k, v in by.items()}
    ratio = mean["auto"] / mean["probe"]
    rows = [[k, len(v), f"{mean[k]:.1f}", ", ".join(f"{r['stage_s']:.1f}" for r in v)] for k, v in by.items()]
    print(table(rows, ["kind", "runs", "mean stages s", "each"]))
    print(f"ratio auto / probe = {ratio:.3f}  (goal <= 1.02)")
    mshare = {k: {p: statistics.mean(r["shares"][p] for r in v) for p in STEP_PHASES} for k, v in by.items()}
    diff = {p: 100 * (mshare["auto"][p] - mshare["probe"][p]) for p in STEP_PHASES}
    srows = [[p, f"{100 * mshare['auto'][p]:.1f}", f"{100 * mshare['probe'][p]:.1f}", f"{diff[p]:+.1f}"]
             for p in STEP_PHASES]
    print(table(srows, ["phase", "auto %", "probe %", "points"]))
    worst = max(abs(d) for d in diff.values())
    print(f"largest share difference = {worst:.1f} points  (goal <= 5)")
    last = by["auto"][-1]
    print(f"auto run recorded: census {last['census']}, windows {last['memray_windows']}, "
          f"sections {last['sections']}")
    path = write_result("auto_vs_probe", {"machine": machine(), "runs": runs, "ratio": ratio,
                                          "shares": mshare, "share_diff_points": diff})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
