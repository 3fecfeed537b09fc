"""Long runs without waiting for them: synthetic run directories of 1, 10, 60 minutes (and a day)
of training, and how long ``build_report`` takes on each and how big each grows.

    .venv/bin/python bench/longrun.py [--baseline RUN_DIR] [--minutes 1 10 60] [--day] [--out DIR]

Each run directory is made from a real one (``--baseline``, a run of the tutorial scenario with
its train stage): its second epoch is the template, replayed epoch after epoch (``--epoch-s``
each, about a minute as the tutorial runs) at the default sampling rates (RSS of every process
at 25 Hz, USS/PSS at 1 Hz), its rows written through the harness's own samples writer, its
events (steps traced, metrics, phase totals, sections, snapshots) as the probe writes them, and a
memray capture copied from the template for each epoch the window policy opens a training window
in (``harness.probe.steps.EpochWindows``: epochs 1, 2, then powers of two) plus the first
validation pass. Each report is built in a fresh process, as ``harness report`` builds it.
Prints a table and writes bench/out/longrun.json: run-directory MB (without the report) and
report seconds per length, and the MB per hour fitted to them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, machine, read_manifest, table, write_result  # noqa: E402

sys.path.insert(0, str(REPO))
from harness.control import rundir  # noqa: E402
from harness.layout import (  # noqa: E402
    EVENTS_FILE,
    MANIFEST_FILE,
    MEMRAY_DIR,
    SAMPLES_DIR,
    SAMPLES_FILE,
    SCENARIO_FILE,
    SNAPSHOTS_DIR,
    STAGE_LOG_FILE,
    STAGES_DIR,
    TRAIN_WINDOW,
    capture_name,
)
from harness.probe.steps import EventWriter  # noqa: E402
from harness.records.events import (  # noqa: E402
    EpochEnd,
    EpochStart,
    EventRecord,
    MemrayStart,
    MemrayStop,
    SectionStart,
    SnapshotEvent,
    StageEnd,
    StageStart,
)
from harness.records.manifest import Manifest, ScenarioEcho, Where  # noqa: E402
from harness.records.samples import SAMPLE_COLUMNS, SampleRow  # noqa: E402
from harness.records.snapshots import Snapshot  # noqa: E402

RSS_HZ = 25.0  # the sampler's default tick rate
FULL_EVERY = 25  # USS/PSS on every 25th tick: 1 Hz
TEMPLATE_EPOCH = 2  # the baseline's epoch replayed: steady, past the first epoch's setup
STAGE = "train"
BASE_T = 1_900_000_000.0  # the synthetic runs' first sample (any wall-clock time will do)
WORKER_PID0 = 100_000  # fresh worker pids per epoch, as a DataLoader without persistent workers
COL = {c: i for i, c in enumerate(SAMPLE_COLUMNS)}

ONE_RUN = """
import json, sys, time
t0 = time.perf_counter()
from harness.report import build_report
r = build_report(sys.argv[1])
print(json.dumps(dict(r.seconds, process_total=round(time.perf_counter() - t0, 3))))
"""


def _default_baseline() -> Path | None:
    runs = sorted((REPO / "reports").glob("cifar10-jpeg/*/manifest.json"))
    return runs[-1].parent if runs else None


@dataclass
class Template:
    """The baseline's template epoch: its ticks, its events and what goes with them."""

    length_s: float
    ticks: list[tuple[float, list[list[Any]]]]  # (seconds into the epoch, the tick's rows)
    full: dict[str, list[tuple[float, Any, Any]]]  # role -> (s, uss, pss) of its full ticks
    events: list[EventRecord]  # t: seconds into the epoch; epoch set per replay
    window_events: list[MemrayStart | MemrayStop]  # the template epoch's training window, start and stop
    validate_events: list[MemrayStart | MemrayStop]  # epoch 1's validation capture, start and stop
    snapshot: Snapshot
    end_snapshot: Snapshot | None
    manifest: Manifest
    scenario_text: str
    probe_json: str
    train_capture: Path
    validate_captures: list[Path]
    main_pid: int
    log_lines: list[str]


def load_template(run_dir: Path) -> Template:
    import pandas as pd

    from harness.analysis.load import load_run

    run = load_run(run_dir)
    st = next(s for s in run.stages if s.name == STAGE)
    evs = st.events
    start = next(e.t for e in evs if isinstance(e, EpochStart) and e.epoch == TEMPLATE_EPOCH)
    end = next(e.t for e in evs if isinstance(e, EpochEnd) and e.epoch == TEMPLATE_EPOCH)
    s = run.samples[(run.samples["stage"] == STAGE) & (run.samples["t"] >= start)
                    & (run.samples["t"] < end)].copy()
    s = s.sort_values(["t", "pid"], kind="stable")
    cols = [c for c in SAMPLE_COLUMNS if c in s.columns]
    ticks: list[tuple[float, list[list[Any]]]] = []
    for t, g in s.groupby("t", sort=True):
        rows = []
        for rec in g[cols].itertuples(index=False):
            row: list[Any] = [None] * len(SAMPLE_COLUMNS)
            for c, v in zip(cols, rec):
                row[COL[c]] = None if pd.isna(v) else (v.item() if hasattr(v, "item") else v)
            rows.append(row)
        ticks.append((float(t) - start, rows))
    full: dict[str, list[tuple[float, Any, Any]]] = {}
    for rec in s.dropna(subset=["uss"]).itertuples(index=False):
        full.setdefault(str(rec.role), []).append((float(rec.t) - start, int(rec.uss), int(rec.pss)))
    first = next(i for i, e in enumerate(evs) if isinstance(e, EpochStart) and e.epoch == TEMPLATE_EPOCH)
    last = next(i for i, e in enumerate(evs) if isinstance(e, SnapshotEvent)
                and e.label == f"epoch-{TEMPLATE_EPOCH}")
    in_epoch = [e.model_copy(update={"t": e.t - start}) for e in evs[first:last + 1]
                if not isinstance(e, MemrayStart | MemrayStop)]
    window = [e.model_copy(update={"t": e.t - start}) for e in evs if start <= e.t <= end
              and isinstance(e, MemrayStart | MemrayStop) and e.epoch == TEMPLATE_EPOCH]
    v_start = next(e.t for e in evs if isinstance(e, SectionStart) and e.epoch == 1)
    e1_end = next(e.t for e in evs if isinstance(e, EpochEnd) and e.epoch == 1)
    v_name = capture_name(STAGE, 1, "validate")
    # epoch 1's validation pass is longer than the template's: place the capture by its share
    v_len = max(e1_end - v_start, 1e-6)
    my_v = next(e.t for e in evs if isinstance(e, SectionStart) and e.epoch == TEMPLATE_EPOCH)
    validate = [e.model_copy(update={"t": my_v - start + (e.t - v_start) / v_len * (end - my_v)})
                for e in evs if isinstance(e, MemrayStart | MemrayStop) and e.capture == v_name]
    snapshot = st.snapshots[f"epoch-{TEMPLATE_EPOCH}"]
    train_cap = st.dir / MEMRAY_DIR / f"{capture_name(STAGE, TEMPLATE_EPOCH, TRAIN_WINDOW)}.bin"
    log = (st.dir / STAGE_LOG_FILE).read_text().splitlines() if (st.dir / STAGE_LOG_FILE).is_file() else []
    return Template(
        length_s=end - start, ticks=ticks, full=full, events=in_epoch, window_events=window,
        validate_events=validate, snapshot=snapshot,
        end_snapshot=st.snapshots.get("end"),
        manifest=read_manifest(run_dir),
        scenario_text=(run_dir / SCENARIO_FILE).read_text(),
        probe_json=(st.dir / "probe.json").read_text() if (st.dir / "probe.json").is_file() else "{}",
        train_capture=train_cap,
        validate_captures=sorted((st.dir / MEMRAY_DIR).glob(f"{v_name}.bin*")),
        main_pid=next(e.pid for e in evs if isinstance(e, StageStart)),
        log_lines=[line for line in log if line.startswith(f"[{TEMPLATE_EPOCH},")],
    )


def window_reason() -> Any:
    """The probe's window policy: ``harness.probe.steps.EpochWindows`` when importable."""
    try:
        from harness.probe.steps import EpochWindows
    except ImportError:  # older tree: the same rule written out
        return lambda epoch: "first" if epoch <= 2 else ("spaced" if epoch & (epoch - 1) == 0 else None)
    return EpochWindows(None, 0).reason


class _Csv:
    """samples.csv, for a tree without the samples writer."""

    def __init__(self, path: Path) -> None:
        import csv

        self._fh = open(path, "w", newline="", encoding="utf-8")
        self._w = csv.writer(self._fh)
        self._w.writerow(SAMPLE_COLUMNS)

    def write(self, rows: list[list[Any]]) -> None:
        self._w.writerows(rows)

    def close(self) -> None:
        self._fh.close()


def _writer(stage_dir: Path) -> Any:
    try:
        from harness.control.samples import SamplesWriter
    except ImportError:
        return _Csv(stage_dir / SAMPLES_FILE)
    return SamplesWriter(stage_dir / SAMPLES_DIR)


def _ticks(tpl: Template, epoch_s: float) -> Iterator[tuple[float, list[list[Any]]]]:
    """One epoch's ticks at RSS_HZ: (seconds into the epoch, the template tick nearest in share)."""
    import bisect

    times = [t for t, _ in tpl.ticks]
    scale = tpl.length_s / epoch_s
    for j in range(int(epoch_s * RSS_HZ)):
        tau = j / RSS_HZ
        i = min(bisect.bisect_left(times, tau * scale), len(times) - 1)
        yield tau, tpl.ticks[i][1]


def _full_value(tpl: Template, role: str, at: float) -> tuple[Any, Any]:
    import bisect

    seq = tpl.full.get(role) or tpl.full.get("main") or [(0.0, None, None)]
    i = min(bisect.bisect_left([s for s, _, _ in seq], at), len(seq) - 1)
    return seq[i][1], seq[i][2]


def generate(tpl: Template, out: Path, minutes: float, epoch_s: float) -> dict[str, Any]:
    """Write a run directory of ``minutes`` of training; returns what it holds."""
    t_gen = time.perf_counter()
    if out.exists():
        shutil.rmtree(out)
    sdir = out / STAGES_DIR / STAGE
    (sdir / SNAPSHOTS_DIR).mkdir(parents=True)
    (sdir / MEMRAY_DIR).mkdir()
    epochs = max(int(round(minutes * 60 / epoch_s)), 1)
    reason = window_reason()
    writer = _writer(sdir)
    events = EventWriter(sdir / EVENTS_FILE)  # as the probe writes them
    log = open(sdir / STAGE_LOG_FILE, "w", encoding="utf-8")
    scale = epoch_s / tpl.length_s
    pid_map: dict[int, int] = {}
    next_pid = WORKER_PID0
    windows: list[int] = []
    rows_written = 0

    def moved(e: EventRecord, t_epoch: float, **update: Any) -> EventRecord:
        return e.model_copy(update={"t": round(t_epoch + e.t * scale, 6), **update})

    events.write(StageStart(t=BASE_T, stage=STAGE, pid=tpl.main_pid))
    for epoch in range(1, epochs + 1):
        t_epoch = BASE_T + (epoch - 1) * epoch_s
        pid_map.clear()
        for tau, rows in _ticks(tpl, epoch_s):
            t = round(t_epoch + tau, 4)
            j = int(round(tau * RSS_HZ))
            out_rows = []
            for row in rows:
                new = list(row)
                pid = int(row[COL["pid"]])
                if pid != tpl.main_pid:
                    if pid not in pid_map:
                        pid_map[pid] = next_pid
                        next_pid += 1
                    new[COL["pid"]] = pid_map[pid]
                new[COL["t"]] = t
                new[COL["epoch"]] = epoch if row[COL["epoch"]] is not None else None
                if j % FULL_EVERY == 0:
                    new[COL["uss"]], new[COL["pss"]] = _full_value(tpl, str(row[COL["role"]]), tau / scale)
                else:
                    new[COL["uss"]] = new[COL["pss"]] = None
                if "rss_anon" in COL and new[COL["rss"]] is not None:
                    shared = new[COL["shared"]] or 0
                    new[COL["rss_anon"]] = max(int(new[COL["rss"]]) - int(shared), 0)
                    new[COL["rss_file"]] = int(shared)
                    new[COL["rss_shmem"]] = 0
                out_rows.append(SampleRow._make(new))
            writer.write(out_rows)
            rows_written += len(out_rows)
        # events: the template epoch's, renumbered; a window where the policy opens one
        evs = [moved(e, t_epoch) for e in tpl.events]
        if reason(epoch) is not None:
            windows.append(epoch)
            name = capture_name(STAGE, epoch, TRAIN_WINDOW)
            shutil.copyfile(tpl.train_capture, sdir / MEMRAY_DIR / f"{name}.bin")
            evs += [moved(e, t_epoch, epoch=epoch, capture=name,
                          **({"file": f"{MEMRAY_DIR}/{name}.bin"}
                             if isinstance(e, MemrayStart) and e.file is not None else {}))
                    for e in tpl.window_events]
        if epoch == 1:
            for src in tpl.validate_captures:
                shutil.copyfile(src, sdir / MEMRAY_DIR / src.name)
            evs += [moved(e, t_epoch) for e in tpl.validate_events]
        for e in sorted(evs, key=lambda e: e.t):
            if "epoch" in type(e).model_fields:
                e = e.model_copy(update={"epoch": epoch})
            if isinstance(e, SnapshotEvent):
                e = e.model_copy(update={"label": f"epoch-{epoch}",
                                         "file": f"{SNAPSHOTS_DIR}/epoch-{epoch}.json"})
                tpl.snapshot.model_copy(update={"label": f"epoch-{epoch}", "epoch": epoch,
                                                "t": e.t}).write(sdir / SNAPSHOTS_DIR)
            events.write(e)
        log.writelines(line.replace(f"[{TEMPLATE_EPOCH},", f"[{epoch},", 1) + "\n" for line in tpl.log_lines)
    t_end = BASE_T + epochs * epoch_s
    if tpl.end_snapshot is not None:
        tpl.end_snapshot.model_copy(update={"epoch": epochs, "t": t_end}).write(sdir / SNAPSHOTS_DIR)
        events.write(SnapshotEvent(t=t_end, label="end", epoch=epochs, file=f"{SNAPSHOTS_DIR}/end.json",
                                   tensor_bytes=dict(tpl.end_snapshot.tensor_bytes)))
    events.write(StageEnd(t=t_end, stage=STAGE))
    writer.close()
    events.close()
    log.close()
    (sdir / "probe.json").write_text(tpl.probe_json)
    (out / SCENARIO_FILE).write_text(tpl.scenario_text)
    outcome = next(s for s in tpl.manifest.stages if s.name == STAGE)

    def iso(t: float) -> str:
        return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds")

    outcome = outcome.model_copy(update={
        "started": iso(BASE_T), "ended": iso(t_end), "wall_s": round(t_end - BASE_T, 3),
        "last": Where(epoch=epochs, step=1500, total=1500, phase="idle")})
    sc = tpl.manifest.scenario.as_dict() if tpl.manifest.scenario else None
    if sc is not None:
        sc["stages"] = [STAGE]
        if isinstance(sc.get("train"), dict):
            sc["train"]["epochs"] = epochs
    manifest = tpl.manifest.model_copy(update={
        "started": iso(BASE_T), "ended": iso(t_end), "wall_s": round(t_end - BASE_T, 3),
        "stages": [outcome], "scenario_name": f"longrun-{_label(minutes)}",
        "scenario": ScenarioEcho.model_validate(sc) if sc is not None else None})
    rundir.write_manifest(out, manifest, MANIFEST_FILE)
    return {"epochs": epochs, "windows": windows, "rows": rows_written,
            "generate_s": round(time.perf_counter() - t_gen, 1)}


def _label(minutes: float) -> str:
    return f"{minutes / 60:g}h" if minutes >= 60 else f"{minutes:g}min"


def dir_bytes(path: Path, skip: str | None = None) -> int:
    total = 0
    for root, dirs, files in os.walk(path):
        if skip is not None:
            dirs[:] = [d for d in dirs if not (Path(root) == path and d == skip)]
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return total


def time_report(run_dir: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", ONE_RUN, str(run_dir)], capture_output=True, text=True,
                          check=False, cwd=REPO)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"build_report failed on {run_dir}:\n{proc.stderr[-3000:]}")
    seconds = json.loads(proc.stdout.strip().splitlines()[-1])
    return dict(seconds, wall=round(wall, 2))


def fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares slope and intercept."""
    if len(xs) < 2:
        return (ys[0] / xs[0] if xs and xs[0] else 0.0), 0.0
    mx, my = statistics.mean(xs), statistics.mean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0
    return slope, my - slope * mx


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, default=_default_baseline(),
                        help="a run directory of the tutorial scenario (default: the newest "
                             "reports/cifar10-jpeg run)")
    parser.add_argument("--minutes", type=float, nargs="+", default=[1, 10, 60],
                        help="lengths of training to generate (default: 1 10 60)")
    parser.add_argument("--day", action="store_true", help="a 24-hour run as well (minutes to generate)")
    parser.add_argument("--epoch-s", type=float, default=60.0, help="seconds an epoch (default: 60)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/harness-longrun"),
                        help="where the run directories go (default: /tmp/harness-longrun)")
    parser.add_argument("--keep", action="store_true", help="keep the run directories afterwards")
    args = parser.parse_args(argv)
    if args.baseline is None or not (args.baseline / MANIFEST_FILE).is_file():
        sys.exit("--baseline: a run directory of the tutorial scenario is needed")
    tpl = load_template(args.baseline.resolve())
    lengths = sorted(set(args.minutes) | ({24 * 60.0} if args.day else set()))
    facts = machine()
    results = []
    for minutes in lengths:
        run_dir = args.out / f"longrun-{_label(minutes)}"
        made = generate(tpl, run_dir, minutes, args.epoch_s)
        size = dir_bytes(run_dir)
        parts = {name: dir_bytes(run_dir / STAGES_DIR / STAGE / name)
                 for name in (MEMRAY_DIR, SAMPLES_DIR, SNAPSHOTS_DIR)}
        parts[SAMPLES_FILE] = sum(p.stat().st_size for p in run_dir.glob(f"{STAGES_DIR}/*/{SAMPLES_FILE}"))
        parts[EVENTS_FILE] = (run_dir / STAGES_DIR / STAGE / EVENTS_FILE).stat().st_size
        print(f"{_label(minutes)}: generated in {made['generate_s']} s ({made['rows']:,} rows, "
              f"{len(made['windows'])} windows), {size / 1e6:.1f} MB; building the report...", file=sys.stderr)
        seconds = time_report(run_dir)
        results.append({"minutes": minutes, **made, "run_dir_bytes": size, "parts_bytes": parts,
                        "report_bytes": dir_bytes(run_dir / "report"), "report_seconds": seconds})
        print(f"  report {seconds['wall']:.1f} s", file=sys.stderr)
        if not args.keep:
            shutil.rmtree(run_dir)
    # fitted over the lengths up to an hour (the 1/10/60 min), and over all of them: the
    # windows' captures grow with log2 of the epochs, so a day's slope is the smaller
    fits: dict[str, dict[str, Any]] = {}
    for name, chosen in (("up_to_1h", [r for r in results if r["minutes"] <= 60]), ("all", results)):
        if len(chosen) < 2 or (name == "all" and all(r["minutes"] <= 60 for r in chosen)):
            continue
        hours = [r["minutes"] / 60 for r in chosen]
        slope, icpt = fit(hours, [r["run_dir_bytes"] / 1e6 for r in chosen])
        # the samples, events and snapshots alone: what grows with every epoch, windows aside
        rest_slope, _ = fit(hours, [(r["run_dir_bytes"] - r["parts_bytes"][MEMRAY_DIR]) / 1e6 for r in chosen])
        fits[name] = {"mb_per_hour": round(slope, 2), "intercept_mb": round(icpt, 2),
                      "mb_per_hour_without_captures": round(rest_slope, 3),
                      "lengths_min": [r["minutes"] for r in chosen]}
    rows = [[_label(r["minutes"]), r["epochs"], len(r["windows"]), f"{r['rows']:,}",
             f"{r['run_dir_bytes'] / 1e6:.1f}", f"{r['parts_bytes'][MEMRAY_DIR] / 1e6:.1f}",
             f"{(r['run_dir_bytes'] - r['parts_bytes'][MEMRAY_DIR]) / 1e6:.2f}",
             f"{r['report_seconds']['wall']:.1f}", f"{r['generate_s']:.0f}"] for r in results]
    print(table(rows, ["length", "epochs", "windows", "sample rows", "run dir MB", "captures MB",
                       "rest MB", "report s", "made in s"]))
    for f in fits.values():
        names = ", ".join(_label(m) for m in f["lengths_min"])
        print(f"fitted over {names}: {f['mb_per_hour']:.1f} MB "
              f"per hour (+{f['intercept_mb']:.1f} MB); without the captures "
              f"{f['mb_per_hour_without_captures']:.2f} MB per hour")
    path = write_result("longrun", {
        "machine": facts, "baseline": str(args.baseline), "epoch_s": args.epoch_s, "rss_hz": RSS_HZ,
        "full_hz": RSS_HZ / FULL_EVERY, "results": results,
        "fit": fits,
    })
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
