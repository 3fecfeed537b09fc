"""What reading a training window step by step costs the report (issue 26: leaks counted per step).

For every main-process training window of the given runs, times memray's own passes (its
high-water and leaked records, what the report read before) and the step-by-step pass
(:func:`harness.analysis.captures.kept_by_step` over every allocation record), ``--repeat`` times
each, and prints the medians with the window's records and marked steps. Writes
bench/out/step_leaks.json.

    OMP_NUM_THREADS=1 harness run scenarios/cifar10-jpeg.yaml --no-report --set train.epochs=2
    python bench/step_leaks.py RUN_DIR [RUN_DIR ...]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

from _common import machine, table, write_result

from harness.analysis.captures import MAX_FRAMES, kept_by_step, windows
from harness.analysis.load import load_run


def _timed(fn: Any, repeat: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    import memray

    rows, out = [], []
    for run_dir in args.runs:
        run = load_run(run_dir)
        for st in run.stages:
            wins = windows(st)
            for c in st.captures:
                w = wins.get(c.name)
                if c.pid is not None or w is None or w.section is not None:
                    continue
                reader = memray.FileReader(str(c.path), report_progress=False)
                memray_s, _ = _timed(lambda reader=reader: (
                    list(reader.get_high_watermark_allocation_records(merge_threads=True)),
                    list(reader.get_leaked_allocation_records(merge_threads=True))), args.repeat)

                def by_step(reader: Any = reader) -> tuple[int, Any]:
                    stacks: dict[int, Any] = {}

                    def frames(r: Any) -> Any:
                        got = stacks.get(r.stack_id)
                        if got is None:
                            got = stacks[r.stack_id] = r.stack_trace(MAX_FRAMES)
                        return got

                    return kept_by_step(reader.get_allocation_records(), frames)

                step_s, (marked, _) = _timed(by_step, args.repeat)
                records = int(reader.metadata.total_allocations)
                rows.append([run_dir.name, c.name, f"{records:,}", marked, f"{memray_s:.2f}",
                             f"{step_s:.2f}", f"{step_s / max(marked, 1) * 1000:.1f}"])
                out.append({"run": str(run_dir), "capture": c.name, "records": records,
                            "marked_steps": marked, "memray_passes_s": memray_s,
                            "step_pass_s": step_s})
    print(table(rows, ["run", "capture", "records", "marked steps", "memray passes s",
                       "step pass s", "ms / step"]))
    print(write_result("step_leaks", {"machine": machine(), "captures": out}))


if __name__ == "__main__":
    main()
