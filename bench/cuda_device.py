"""The GPU check of issue 6, as one prepared script for a session with a lent GPU (< 5 min).

On the device machine, from the repository root (the JPEG archive carried into the repo):

    python bench/cuda_device.py --data shared-data/cifar10-jpg.tar.gz --out $OUT

Runs, each with ``device: cuda``: the smoke scenario under ``harness run``; ``scenarios/cuda.yaml``
(one epoch capped at ``--steps`` steps, then the test) at batch 4 bare (``harness train``) and
under ``harness run``; the same at batch 256 (its epoch is 188 steps). Prints a table (wall time,
the overhead against the bare batch-4 run, peak allocated and reserved per phase) and writes to
``--out``: ``cuda_device.json`` (every figure), ``<label>.summary.json`` per instrumented run, and
``reports.tar.gz`` (each run's report/ without flamegraphs). At most 8 files: what the device
tool brings back. Commit the summaries under bench/cuda/ and the figures into RESULTS.md.

``--device cpu --steps 50`` rehearses it here, without a GPU, in about three minutes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tarfile
import time
from pathlib import Path
from typing import Any

from _common import REPO, harness_cmd, machine, run_dir_from, stage_seconds, table, timed

PHASES = ("data", "forward", "loss", "backward", "optimizer", "validate", "test")


def _mb(n: Any) -> str:
    return "-" if n is None else f"{n / 1e6:.1f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "cifar10-jpg.tar.gz"))
    ap.add_argument("--out", default=str(REPO / "bench" / "out" / "cuda"))
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--reports", default=str(REPO / "reports"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = str(Path(args.data).resolve())
    common = ["--reports", args.reports, "--quiet", "--set", f"device={args.device}"]
    cuda_yaml = ["scenarios/cuda.yaml", "--set", f"data.path={data}",
                 "--set", f"data.root={Path(args.reports).resolve().parent / 'data'}",
                 "--set", f"train.max_steps={args.steps}"]
    plan = [
        ("smoke", "run", ["scenarios/smoke.yaml"]),
        ("bs4-bare", "train", [*cuda_yaml, "--set", "train.batch_size=4"]),
        ("bs4", "run", [*cuda_yaml, "--set", "train.batch_size=4"]),
        ("bs256-bare", "train", [*cuda_yaml, "--set", "train.batch_size=256"]),
        ("bs256", "run", [*cuda_yaml, "--set", "train.batch_size=256"]),
    ]
    result: dict[str, Any] = {"machine": machine(), "device": args.device, "steps": args.steps,
                              "runs": {}}
    t_all = time.perf_counter()
    for label, verb, rest in plan:
        wall, text = timed(harness_cmd(verb, *rest, *common))
        run_dir = run_dir_from(text)
        entry: dict[str, Any] = {
            "run_dir": str(run_dir), "wall_s": round(wall, 2),
            "stages_s": round(stage_seconds(run_dir), 2)}
        summary_path = run_dir / "report" / "summary.json"
        if summary_path.is_file():
            summary = json.loads(summary_path.read_text())
            shutil.copy(summary_path, out / f"{label}.summary.json")
            entry["peaks"] = {k: summary["peaks"].get(k) for k in ("cuda_allocated", "cuda_reserved",
                                                                   "main_rss", "tree_rss")}
            entry["phases"] = {
                p: {k: max((r.get(k) or 0 for r in summary["phases"] if r["phase"] == p), default=0)
                    for k in ("cuda_peak_allocated", "cuda_peak_reserved")}
                for p in PHASES}
            entry["cuda"] = summary.get("cuda")
        result["runs"][label] = entry
        print(f"{label}: {wall:.1f} s", flush=True)
    runs = result["runs"]
    for b in ("bs4", "bs256"):
        runs[b]["overhead"] = round(runs[b]["stages_s"] / runs[f"{b}-bare"]["stages_s"], 3)
    result["total_s"] = round(time.perf_counter() - t_all, 1)
    rows = []
    for label, e in runs.items():
        peaks = e.get("peaks") or {}
        rows.append([label, e["stages_s"], e.get("overhead", ""),
                     _mb((peaks.get("cuda_allocated") or {}).get("bytes")),
                     _mb((peaks.get("cuda_reserved") or {}).get("bytes")),
                     *(f"{_mb(e['phases'][p]['cuda_peak_allocated'])}/"
                       f"{_mb(e['phases'][p]['cuda_peak_reserved'])}" if "phases" in e else "-"
                       for p in PHASES)])
    print(table(rows, ["run", "stages s", "overhead", "peak alloc MB", "peak resv MB",
                       *(f"{p} alloc/resv MB" for p in PHASES)]))
    (out / "cuda_device.json").write_text(json.dumps(result, indent=1, default=str))
    with tarfile.open(out / "reports.tar.gz", "w:gz") as tar:
        for label, e in runs.items():
            report = Path(e["run_dir"]) / "report"
            if report.is_dir():
                tar.add(report, arcname=label,
                        filter=lambda ti: None if "/flamegraphs" in ti.name else ti)
    print(f"total {result['total_s']} s; results in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
