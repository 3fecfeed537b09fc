"""A run directory written by hand, with numbers chosen so every table has a known answer.

One stage, ``train``, two epochs. Ticks (t, epoch, phase, main RSS MiB) and workers:

    1000.0  0 setup     100                          (full tick)
    1001.0  1 forward   120  worker 0 (pid 201) 110 RSS, 10 USS (full)
    1002.0  1 backward  150  worker 0 110 RSS (not a full tick)
    1004.0  1 forward   130  worker 0 112 RSS, 14 USS (full)
    1005.0  2 forward   130  worker 1 (pid 202) 110 RSS, 10 USS (full); worker 0 gone (rss 0)
    1006.0  2 backward  160  worker 1 111 RSS, 12 USS (full)
    1007.0  2 teardown  140

The main process's USS on full ticks: 60, 70, -, 75, 75, 90, 80 MiB; PSS = USS + 20 MiB;
statm shared = 40 MiB throughout. Workers' PSS = USS + 50 MiB, shared 100 MiB.

The samples go through the real samples writer (``samples/``, sealed into Parquet), the
snapshots through :meth:`harness.records.snapshots.Snapshot.write`; ``legacy_csv`` writes an older
run's 16-column samples.csv instead (its reader's tests, and damage only a CSV can hold).
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.control.samples import SamplesWriter
from harness.layout import SAMPLES_DIR, SAMPLES_FILE, SNAPSHOTS_DIR
from harness.probe.steps import EventWriter
from harness.records.events import (
    BaseEvent,
    EpochEnd,
    EpochStart,
    EventRecord,
    MemrayStart,
    MemrayStop,
    Metric,
    PhaseTensors,
    SectionEnd,
    SectionStart,
    SnapshotEvent,
    StageEnd,
    StageStart,
    TracedStep,
)
from harness.records.samples import COLUMN_TYPES, SAMPLE_COLUMNS, SampleRow
from harness.records.snapshots import Snapshot

MiB = 1024 * 1024
# The 16 columns of samples.csv in run directories written before the CUDA, rss_* and rank
# columns: positional rows (``rows=`` of write_run) are read in this order.
COLUMNS = SAMPLE_COLUMNS[:16]

# (t, epoch, step, phase, main rss, main uss or None, [(pid, role, rss, uss or None)])
TICKS: list[tuple[float, int, int, str, int, int | None, list[tuple[int, str, int, int | None]]]] = [
    (1000.0, 0, 0, "setup", 100, 60, []),
    (1001.0, 1, 1, "forward", 120, 70, [(201, "worker 0", 110, 10)]),
    (1002.0, 1, 2, "backward", 150, None, [(201, "worker 0", 110, None)]),
    (1004.0, 1, 4, "forward", 130, 75, [(201, "worker 0", 112, 14)]),
    (1005.0, 2, 1, "forward", 130, 75, [(202, "worker 1", 110, 10), (201, "worker 0", 0, None)]),
    (1006.0, 2, 2, "backward", 160, 90, [(202, "worker 1", 111, 12)]),
    (1007.0, 2, 3, "teardown", 140, 80, []),
]


def _row(t: float, pid: int, ppid: int, role: str, rss: int, uss: int | None, shared: int,
         pss_extra: int, epoch: int, step: int, phase: str) -> SampleRow:
    full = uss is not None
    return sample_row(t=t, pid=pid, ppid=ppid, role=role, rss=rss * MiB, vms=2 * rss * MiB,
                      shared=shared * MiB, text=4096, data=rss * MiB,
                      uss=uss * MiB if uss is not None else None,
                      pss=(uss + pss_extra) * MiB if uss is not None else None,
                      swap=0 if full else None, stage="train", epoch=epoch, step=step, phase=phase)


def sample_row(**values: Any) -> SampleRow:
    """A row; columns not given are empty."""
    return SampleRow(**{c: values.get(c) for c in SAMPLE_COLUMNS})


def as_row(values: Sequence[Any], columns: Sequence[str] = SAMPLE_COLUMNS) -> SampleRow:
    """A positional row (``columns`` in order, as a samples.csv holds them: "" for empty) as the
    sampler's row; a SampleRow is returned as it is."""
    if isinstance(values, SampleRow):
        return values
    out: dict[str, Any] = {}
    for c, v in zip(columns, values):
        kind = COLUMN_TYPES[c]
        out[c] = None if v is None or v == "" else kind(float(v)) if kind is int else kind(v)
    return sample_row(**out)


def csv_fields(row: SampleRow) -> list[Any]:
    """A row as a line of an older run's samples.csv: its first 16 columns, "" for empty."""
    return [f"{row.t:.4f}", *("" if v is None else v for v in row[1:len(COLUMNS)])]


def samples_rows() -> list[SampleRow]:
    rows = []
    for t, epoch, step, phase, rss, uss, workers in TICKS:
        rows.append(_row(t, 100, 0, "main", rss, uss, 40, 20, epoch, step, phase))
        for pid, role, wrss, wuss in workers:
            rows.append(_row(t, pid, 100, role, wrss, wuss, 100, 50, epoch, step, phase))
    return rows


def snapshot(label: str, epoch: int, t: float, *, other: int, count: int, main_rss: int,
             main_uss: int, heap: int, gc: list[int]) -> dict[str, Any]:
    return {
        "label": label, "stage": "train", "epoch": epoch, "t": t, "pid": 100,
        "tensor_bytes": {"parameters": 1000, "gradients": 1000, "optimizer_state": 2000,
                         "other": other},
        "tensor_count": count, "tensors": [],
        "processes": [{"pid": 100, "role": "main", "rss": main_rss * MiB, "uss": main_uss * MiB,
                       "pss": (main_uss + 20) * MiB, "shared": 40 * MiB, "swap": 0}],
        "gc": {"counts": gc, "stats": []},
        "maps": {"summary": {"heap": {"count": 1, "bytes": heap * MiB},
                             "anonymous": {"count": 10, "bytes": 200 * MiB},
                             "file": {"count": 100, "bytes": 500 * MiB}},
                 "holding_tensors": []},
        "memray_active": False, "cuda": None, "took_s": 0.1,
    }


SNAPSHOTS = [
    snapshot("epoch-1", 1, 1004.5, other=500, count=10, main_rss=130, main_uss=75, heap=10,
             gc=[1, 2, 3]),
    snapshot("epoch-2", 2, 1006.5, other=700, count=14, main_rss=132, main_uss=76, heap=12,
             gc=[4, 5, 6]),
]

EVENTS: list[EventRecord] = [
    StageStart(t=1000.0, stage="train", pid=100),
    EpochStart(t=1000.5, epoch=1),
    TracedStep(t=1001.2, epoch=1, step=0, phases=["forward", "backward"], tensors={
        "forward": PhaseTensors(count=9, bytes=900, peak_live_bytes=5000, steps=1),
        "backward": PhaseTensors(count=4, bytes=400, peak_live_bytes=6000, steps=1)}),
    TracedStep(t=1001.4, epoch=1, step=1, phases=["forward"], tensors={
        "forward": PhaseTensors(count=9, bytes=1100, peak_live_bytes=5500, steps=1)}),
    SectionStart(t=1003.0, section="validate", epoch=1),
    SectionEnd(t=1003.5, section="validate", epoch=1, steps=3),
    Metric(t=1003.6, name="val_accuracy", value=40, epoch=1, correct=4, total=10),
    EpochEnd(t=1004.4, epoch=1),
    SnapshotEvent(t=1004.5, label="epoch-1", epoch=1, file="snapshots/epoch-1.json", tensor_bytes={}),
    EpochStart(t=1004.6, epoch=2),
    EpochEnd(t=1006.4, epoch=2),
    SnapshotEvent(t=1006.5, label="epoch-2", epoch=2, file="snapshots/epoch-2.json", tensor_bytes={}),
    Metric(t=1006.6, name="loss", value=0.5, epoch=2, step=3),
    StageEnd(t=1007.0, stage="train"),
]


def manifest(name: str = "synthetic", status: str = "ok") -> dict[str, Any]:
    stage = {"name": "train", "status": status if status != "running" else "ok", "exit_code": 0,
             "signal": None, "started": "2026-01-01T00:00:00.000+00:00",
             "ended": "2026-01-01T00:00:07.000+00:00", "wall_s": 7.0,
             "last": {"epoch": 2, "step": 3, "total": 3, "phase": "teardown"}, "message": "",
             "sampling": None, "peak_tree_rss": 271 * MiB, "peak_main_rss": 160 * MiB}
    m: dict[str, Any] = {
        "manifest_version": 1, "kind": "run", "scenario_name": name,
        "scenario": {"name": name, "stages": ["train"]}, "python": "3.11.7",
        "versions": {"harness": "0.1.0"}, "host": "test", "platform": "linux", "cpu_count": 2,
        "git_revision": "abc", "command_line": ["harness", "run", "x.yaml"],
        "started": "2026-01-01T00:00:00.000+00:00", "ended": "2026-01-01T00:00:07.000+00:00",
        "wall_s": 7.0, "status": status, "stages": [] if status == "running" else [stage],
    }
    return m


def write_samples(folder: Path, rows: Sequence[Sequence[Any]], *, legacy_csv: bool = False) -> None:
    """``rows`` (SampleRows, or positional rows: :func:`as_row`) into ``folder``: through the
    samples writer into ``folder``/samples/ (one tick at a time, sealed), or with ``legacy_csv``
    as the samples.csv of a run directory written before the samples folder (16 columns; a
    positional row is written as it is, damage included)."""
    folder.mkdir(parents=True, exist_ok=True)
    if legacy_csv:
        with open(folder / SAMPLES_FILE, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(COLUMNS)
            w.writerows(csv_fields(r) if isinstance(r, SampleRow) else r for r in rows)
        return
    typed = [as_row(r) for r in rows]
    with SamplesWriter(folder / SAMPLES_DIR) as writer:
        tick: list[SampleRow] = []
        for r in typed:
            if tick and r.t != tick[0].t:
                writer.write(tick)
                tick = []
            tick.append(r)
        writer.write(tick)


def write_snapshots(folder: Path, snapshots: Sequence[dict[str, Any]]) -> None:
    """Each snapshot through its model's writer into ``folder``/snapshots/."""
    (folder / SNAPSHOTS_DIR).mkdir(parents=True, exist_ok=True)
    for snap in snapshots:
        Snapshot.model_validate(snap).write(folder / SNAPSHOTS_DIR)


def write_run(root: Path, *, name: str = "synthetic", status: str = "ok",
              snapshots: list[dict[str, Any]] | None = None,
              events: list[EventRecord | Any] | None = None,
              rows: Sequence[Sequence[Any]] | None = None, legacy_csv: bool = False) -> Path:
    """Write the synthetic run directory under ``root`` and return it: the samples through the
    samples writer (``legacy_csv``: as an older run's samples.csv); ``events``: the models are
    written by the probe's EventWriter, anything else (a damaged line) as its JSON."""
    run = root / "run"
    sdir = run / "stages" / "train"
    (sdir / "snapshots").mkdir(parents=True)
    (run / "manifest.json").write_text(json.dumps(manifest(name, status)), encoding="utf-8")
    # scenario.yaml holds a name the harness could have written (a scenario name is a file name);
    # the manifest's scenario_name is the one under test (escaping)
    safe = name if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name) else "synthetic"
    (run / "scenario.yaml").write_text(f"name: {safe}\nstages: [train]\n", encoding="utf-8")
    write_samples(sdir, samples_rows() if rows is None else rows, legacy_csv=legacy_csv)
    _write_events(sdir / "events.jsonl", EVENTS if events is None else events)
    write_snapshots(sdir, SNAPSHOTS if snapshots is None else snapshots)
    return run


SCRIPT_FILE = "<script>alert(1)</script>"


def write_capture(run_dir: Path, name: str = "train-e1-train") -> Path:
    """A real memray capture whose peak is allocated in a frame from a file named ``<script>``.

    Recorded in this process (Python frames only); its events go into the stage's event stream.
    """
    import memray

    path = run_dir / "stages" / "train" / "memray" / f"{name}.bin"
    path.parent.mkdir(parents=True, exist_ok=True)
    namespace: dict[str, Any] = {}
    exec(compile("def allocate(n):\n    return bytearray(n)\n", SCRIPT_FILE, "exec"), namespace)
    with memray.Tracker(destination=memray.FileDestination(path, overwrite=True)):
        kept = namespace["allocate"](4 * MiB)
        temporary = namespace["allocate"](1 * MiB)
        del temporary
    del kept
    _window_events(run_dir, name)
    return path


def write_busy_capture(run_dir: Path, name: str = "train-e1-train", *, allocations: int = 30_000,
                       compress: bool = True) -> Path:
    """A real memray capture of many allocations of scattered sizes (about 150 kB compressed:
    several lz4 blocks), so that half of it still parses and yields partial records.

    ``compress``: lz4-compressed on exit, as the probe writes them; else memray's raw format.
    """
    import random

    import memray

    path = run_dir / "stages" / "train" / "memray" / f"{name}.bin"
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    sizes = [rng.randrange(600, 8192) for _ in range(allocations)]  # above pymalloc's 512 B
    kept = []
    with memray.Tracker(destination=memray.FileDestination(path, overwrite=True,
                                                           compress_on_exit=compress)):
        for i, n in enumerate(sizes):
            block = bytearray(n)
            if i % 10 == 0:
                kept.append(block)
    del kept
    _window_events(run_dir, name)
    return path


def truncate_to_half(path: Path) -> tuple[int, int]:
    """Cut ``path`` to half its size, as ``truncate -s 50%`` does; returns (new size, old size)."""
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.truncate(size // 2)
    return size // 2, size


def _write_events(path: Path, events: list[EventRecord | Any]) -> None:
    """Append ``events`` to ``path``: models through the probe's EventWriter, anything else as JSON."""
    writer = EventWriter(path)  # appends and flushes each line: the raw ones go in between
    try:
        for ev in events:
            if isinstance(ev, BaseEvent):
                writer.write(ev)  # type: ignore[arg-type]  # one of EventRecord's models
            else:
                with open(path, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps(ev) + "\n")
    finally:
        writer.close()


def _window_events(run_dir: Path, name: str) -> None:
    """The memray_start/stop events of a training window over steps 0-30 of epoch 1."""
    _write_events(run_dir / "stages" / "train" / "events.jsonl", [
        MemrayStart(t=1001.0, capture=name, file=f"memray/{name}.bin", epoch=1, step=0, section=None),
        MemrayStop(t=1001.5, capture=name, epoch=1, step=30)])
