"""How much of a validation or test pass a bounded memray capture needs (``memray.eval_batches``).

Reads finished runs of the same scenario whose evaluation captures cover different numbers of
batches (one of them, ``memray.eval_batches: 0``, the whole pass) and prints, for each capture
and process (main, each worker): memray's peak heap, as a share of the whole pass's, and whether
the top sites at that peak are the whole pass's. Writes bench/out/eval_window.json.

    OMP_NUM_THREADS=1 harness run scenarios/cifar10-jpeg.yaml --no-report \\
        --set train.epochs=1 --set memray.train_steps=0 --set memray.eval_batches=0   # then 50, 25
    python bench/eval_window.py RUN_WHOLE RUN_50 RUN_25
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _common import table, write_result

from harness.analysis.captures import read_stage_captures
from harness.analysis.load import load_run
from harness.layout import SCENARIO_FILE
from harness.records import scenario as scenario_mod

TOP = 5


def eval_captures(run_dir: Path) -> tuple[int, dict[tuple[str, str], tuple[int, list[str]]]]:
    """(eval_batches, {(section capture, process): (peak heap bytes, top sites at the peak)})."""
    run = load_run(run_dir)
    batches = scenario_mod.load(run_dir / SCENARIO_FILE).memray.eval_batches
    out: dict[tuple[str, str], tuple[int, list[str]]] = {}
    for stage in run.stages:
        for data in read_stage_captures(stage):
            if data.window.section is None or data.peak_memory is None:
                continue
            key = (data.capture.name, data.capture.role)  # main, or worker (any of the pass's)
            top = list(dict.fromkeys(data.sites.site))[:TOP]  # a site can head several rows
            # the workers of one pass: the larger peak, and its sites
            if key not in out or data.peak_memory > out[key][0]:
                out[key] = (data.peak_memory, top)
    return batches or 0, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories, the whole-pass one first")
    args = parser.parse_args()
    read = [eval_captures(r) for r in args.runs]
    whole_n, whole = read[0]
    if whole_n != 0:
        raise SystemExit(f"{args.runs[0]}: memray.eval_batches is {whole_n}, not 0 (the whole pass)")
    rows, result = [], []
    for (capture, process), (peak, top) in sorted(whole.items()):
        for n, caps in read:
            got = caps.get((capture, process))
            if got is None:
                continue
            share = got[0] / peak if peak else float("nan")
            same = len(set(got[1]) & set(top))
            rows.append([capture, process, str(n or "all"), f"{got[0] / 2**20:.2f}", f"{share:.3f}",
                         f"{same}/{len(top)}"])
            result.append({"capture": capture, "process": process, "eval_batches": n,
                           "peak_bytes": got[0], "peak_share": share, "top_sites_shared": same,
                           "top_sites": got[1]})
    print(table(rows, ["capture", "process", "batches", "peak MiB", "of whole", f"top {TOP} sites shared"]))
    write_result("eval_window", {"runs": [str(r) for r in args.runs], "captures": result})


if __name__ == "__main__":
    main()
