"""`harness run` (default instrumentation) against the bare workload (`harness train`).

ABBA order (bare, run, run, bare) on one scenario, in one invocation. Prints a table and writes
bench/out/overhead.json: wall times and their ratio (goal <= 1.10), the memray captures' total
size (goal < 60 MB), and the sampling rates achieved per stage (goal >= 20 Hz RSS, >= 1 Hz USS).

    python bench/overhead.py [--pairs 1] [--scenario scenarios/cifar10-jpeg.yaml] [--set K=V ...]
        [--variant NAME:MODE:K=V,K=V ...] [--mirror]

A variant (MODE `run` or `train`, with its own `--set`s on top of the common ones) runs once,
in the middle of the first set (bare, run, variants..., run, bare), and is given as a ratio to
that set's bare mean: the decomposition of the overhead (e.g. `sampler:run:memray.mode=off`,
`memray:run:sampling.rss_hz=1,sampling.full_hz=0.05`, `threads2:train:train.threads=2`).
With ``--mirror`` each variant runs twice, in mirrored order (bare, run, v1, v2, v2, v1, run,
bare), so that a drift of the machine's speed cancels for the variants as it does for bare/run.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
from collections import Counter
from pathlib import Path

from _common import (
    harness_cmd,
    machine,
    read_manifest,
    run_dir_from,
    stage_seconds,
    table,
    timed_lines,
    write_result,
)

_LOSS = re.compile(r"^\[(\d+),\s*(\d+)\] loss")
_ACC = re.compile(r"^Accuracy of the network on the \d+ (\w+) images")


def stage_cpu(run_dir: Path) -> dict[str, float]:
    """The stages' CPU seconds (user + system, workers included) and the harness's seconds after
    each stage process exited, summed over the stages, from the manifest (newer runs only)."""
    stages = read_manifest(run_dir).stages
    out = {}
    cpu = [s.cpu_s for s in stages]
    if all(c is not None for c in cpu):
        out["cpu_s"] = sum(c.user + c.system for c in cpu if c is not None)
    after = [s.after_exit_s for s in stages]
    if all(a is not None for a in after):
        out["after_exit_s"] = sum(a for a in after if a is not None)
    return out


def segments(lines: list[tuple[float, str]]) -> dict[str, float]:
    """The seconds between the workload's own lines, as they reached the console: per epoch the
    start to its first loss line (start-up, the memray window), first to last loss line (the
    steady loop, no window), last loss line to the accuracy line (validation); the test stage from
    the line before it to its accuracy line. Same lines, same clock in a bare run and a run."""
    marks: list[tuple[str, float]] = [("start", 0.0)]
    losses: list[float] = []  # the current epoch's loss lines
    passes: Counter[str] = Counter()
    for t, line in lines:
        m = _LOSS.match(line)
        if m:
            epoch = int(m.group(1))
            losses.append(t)
            continue
        a = _ACC.match(line)
        if a:
            if losses:
                marks += [(f"e{epoch} first loss", losses[0]), (f"e{epoch} last loss", losses[-1])]
                losses = []
            passes[a.group(1)] += 1
            marks.append((f"{a.group(1)} {passes[a.group(1)]}", t))
    marks.append(("end", lines[-1][0] if lines else 0.0))
    return {f"{a} -> {b}": tb - ta for (a, ta), (b, tb) in zip(marks, marks[1:])}


def capture_bytes(run_dir: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for f in run_dir.glob("stages/**/memray/*"):  # a distributed stage: under rank<R>/
        group = "workers" if f.suffix.lstrip(".").isdigit() else "main"
        out[group] = out.get(group, 0) + f.stat().st_size
    return out



def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=1)
    ap.add_argument("--scenario", default="scenarios/cifar10-jpeg.yaml")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--variant", action="append", default=[], help="NAME:MODE:K=V,K=V")
    ap.add_argument("--mirror", action="store_true", help="each variant twice, mirrored")
    args = ap.parse_args()
    sets = [a for o in args.overrides for a in ("--set", o)]
    variants: dict[str, tuple[str, list[str]]] = {}
    for v in args.variant:
        name, mode, kv = (v.split(":", 2) + [""])[:3]
        variants[name] = (mode, [a for o in kv.split(",") if o for a in ("--set", o)])
    walls: dict[str, list[float]] = {"bare": [], "run": [], **{n: [] for n in variants}}
    stages: dict[str, list[float]] = {"bare": [], "run": [], **{n: [] for n in variants}}
    runs: list[dict[str, object]] = []
    middle = [*variants, *reversed(variants)] if args.mirror else list(variants)
    order = [(k, 1) for k in ("bare", "run", *middle, "run", "bare")]
    order += [(k, n) for n in range(2, args.pairs + 1) for k in ("bare", "run", "run", "bare")]
    for i, (kind, set_no) in enumerate(order, 1):
        mode, extra = variants.get(kind, ("train" if kind == "bare" else "run", []))
        cmd = harness_cmd(mode, args.scenario, *sets, *extra)
        wall, out, lines = timed_lines(cmd)
        rd = run_dir_from(out)
        walls[kind].append(wall)
        stages[kind].append(stage_seconds(rd))
        info: dict[str, object] = {"kind": kind, "wall_s": wall, "stage_s": stages[kind][-1], "run_dir": str(rd),
                                   "set": set_no,
                                 "segments": segments(lines), **stage_cpu(rd)}
        if mode == "run":
            info["sampling"] = {s.name: s.sampling.model_dump(mode="json") if s.sampling else None
                                for s in read_manifest(rd).stages}
            info["capture_bytes"] = capture_bytes(rd)
        runs.append(info)
        print(f"run {i}: {kind:<4} {wall:7.1f} s (stages {stages[kind][-1]:.1f} s)  {rd}", flush=True)
    ratio = statistics.mean(stages["run"]) / statistics.mean(stages["bare"])
    ratio_wall = statistics.mean(walls["run"]) / statistics.mean(walls["bare"])
    rows = [[k, len(v), f"{statistics.mean(v):.1f}", f"{statistics.mean(stages[k]):.1f}",
             ", ".join(f"{x:.1f}" for x in stages[k])] for k, v in walls.items()]
    print(table(rows, ["mode", "runs", "command wall s", "stages wall s", "each"]))
    print(f"overhead ratio (stages) = {ratio:.3f}, (command incl. report) = {ratio_wall:.3f}  goal <= 1.10")
    per_set = []
    for n in range(1, args.pairs + 1):
        of = [r for r in runs if r["set"] == n]
        b = [float(r["stage_s"]) for r in of if r["kind"] == "bare"]  # type: ignore[arg-type]
        r_ = [float(r["stage_s"]) for r in of if r["kind"] == "run"]  # type: ignore[arg-type]
        per_set.append(statistics.mean(r_) / statistics.mean(b))
    cpu = {k: [float(r["cpu_s"]) for r in runs if r["kind"] == k and "cpu_s" in r] for k in ("bare", "run")}  # type: ignore[arg-type]
    if cpu["bare"] and cpu["run"]:
        print(f"stages' CPU s: bare {', '.join(f'{x:.1f}' for x in cpu['bare'])}; run "
              f"{', '.join(f'{x:.1f}' for x in cpu['run'])}; ratio {statistics.mean(cpu['run']) / statistics.mean(cpu['bare']):.3f}")
    print("ratio per set: " + ", ".join(f"{x:.3f}" for x in per_set)
          + (f"  (mean {statistics.mean(per_set):.3f}, spread {max(per_set) - min(per_set):.3f})" if per_set else ""))
    names = list(runs[0]["segments"])  # type: ignore[arg-type]

    def seg_times(kind: str, name: str, set_no: int | None = None) -> list[float]:
        """Segment ``name`` of each run of ``kind`` (in set ``set_no`` only, if given)."""
        return [r["segments"].get(name, 0.0) for r in runs  # type: ignore[union-attr]
                if r["kind"] == kind and (set_no is None or r["set"] == set_no)]

    seg_rows = []
    for name in names:
        b, r_ = seg_times("bare", name), seg_times("run", name)
        seg_rows.append([name, f"{statistics.mean(b):.2f}", f"{statistics.mean(r_):.2f}",
                         f"{statistics.mean(r_) - statistics.mean(b):+.2f}",
                         ", ".join(f"{x:.1f}" for x in b), ", ".join(f"{x:.1f}" for x in r_)])
    print(table(seg_rows, ["segment (workload's lines)", "bare s", "run s", "run - bare", "bare each", "run each"]))
    bare1 = statistics.mean(float(r["stage_s"]) for r in runs if r["set"] == 1 and r["kind"] == "bare")  # type: ignore[arg-type]
    for name in variants:
        v = stages[name]
        print(f"variant {name}: stages {', '.join(f'{x:.1f}' for x in v)} s, ratio of the mean to set 1's"
              f" bare {statistics.mean(v) / bare1:.3f}")
    if variants:  # each segment's mean in set 1, as the difference to bare
        kinds = ["run", *variants]
        vrows = []
        for name in names:
            base = statistics.mean(seg_times("bare", name, 1))
            vrows.append([name, f"{base:.2f}",
                          *(f"{statistics.mean(seg_times(k, name, 1)) - base:+.2f}" for k in kinds)])
        print(table(vrows, ["segment, set 1", "bare s", *(f"{k} - bare" for k in kinds)]))
    last = [r for r in runs if r["kind"] == "run"][-1]
    caps = last["capture_bytes"]
    assert isinstance(caps, dict)
    total = sum(caps.values())
    print(f"memray captures: {total / 1e6:.1f} MB in all ({', '.join(f'{k} {v / 1e6:.1f} MB' for k, v in caps.items())})  goal < 60 MB")
    srows = []
    for stage, s in last["sampling"].items():  # type: ignore[union-attr]
        srows.append([stage, s["rss_hz"], s["full_hz"], s["max_tick_ms"], s["ticks"]])
    print(table(srows, ["stage", "RSS Hz", "USS/PSS Hz", "max tick ms", "ticks"]))
    path = write_result("overhead", {"machine": machine(), "runs": runs, "ratio_stages": ratio,
                                     "ratio_per_set": per_set, "variants": args.variant,
                                     "ratio_command": ratio_wall, "capture_bytes_total": total})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
