"""The samples folder (harness/control/samples.py) and the sampler's rotation of USS/PSS reads.

Decimation keeps every peak of every process (known answers); the folder reads back to the same
tables as the CSV it replaces; a writer killed without closing loses at most about a second;
older run directories' samples.csv still load.
"""

from __future__ import annotations

import itertools
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd
import psutil
import pytest
from _synthetic import write_run

from harness.analysis.load import load_run, read_samples
from harness.analysis.tables import phase_table, process_table
from harness.analysis.ticks import ticks
from harness.control.sampler import SamplerStats, TreeSampler, read_rollup, read_status
from harness.control.samples import SamplesWriter, keep_mask, to_table
from harness.layout import SAMPLES_DIR, SAMPLES_FILE
from harness.records.samples import SAMPLE_COLUMNS, SAMPLE_TEXT_COLUMNS, SampleRow

REPO = Path(__file__).resolve().parents[1]
PHASES = ("data", "forward", "loss", "backward", "optimizer")


def row(**values: Any) -> SampleRow:
    """A row; columns not given are empty."""
    return SampleRow(**{c: values.get(c) for c in SAMPLE_COLUMNS})


def fake_rows(seconds: float, hz: int = 25, seed: int = 1) -> list[tuple[Any, ...]]:
    """A main process and two workers at ``hz``, RSS wandering, USS of one process a tick in
    rotation once a second each, the phase changing every tick, an epoch every 4 s."""
    rng = random.Random(seed)
    procs = [(100, 0, "main"), (201, 100, "worker 0"), (202, 100, "worker 1")]
    rss = {100: 500 << 20, 201: 200 << 20, 202: 200 << 20}
    out = []
    for k in range(int(seconds * hz)):
        t = round(1000.0 + k / hz, 4)
        for i, (pid, ppid, role) in enumerate(procs):
            rss[pid] = max(1 << 20, rss[pid] + rng.randint(-3, 3) * 4096 * 64)
            full = k % hz == i * (hz // 3)
            out.append(row(t=t, pid=pid, ppid=ppid, role=role, rss=rss[pid], vms=2 * rss[pid],
                           shared=40 << 20, text=4096, data=rss[pid] // 2,
                           uss=rss[pid] - (30 << 20) if full else None,
                           pss=rss[pid] - (20 << 20) if full else None, swap=0 if full else None,
                           stage="train", epoch=1 + int(k / hz / 4), step=k, phase=PHASES[k % 5],
                           rss_anon=rss[pid] - (40 << 20), rss_file=40 << 20, rss_shmem=0))
    return out


def frame(rows: list[tuple[Any, ...]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=list(SAMPLE_COLUMNS))


def write_folder(sdir: Path, rows: list[tuple[Any, ...]], **kw: Any) -> Path:
    """``rows`` through a SamplesWriter into ``sdir``/samples, one tick at a time."""
    folder = sdir / SAMPLES_DIR
    with SamplesWriter(folder, **kw) as w:
        for _, tick in itertools.groupby(rows, key=lambda r: r[0]):
            w.write(list(tick))
    return folder


def write_csv(path: Path, rows: list[tuple[Any, ...]]) -> None:
    frame(rows).to_csv(path, index=False)


# ---- decimation: known answers -------------------------------------------------------------------


def hand_rows() -> list[tuple[Any, ...]]:
    """Two seconds at 10 Hz, main (pid 1) and a worker (pid 2), all in one phase.

    main RSS 100 but 150 at tick 3 and 90 at tick 14; worker RSS 50 but 80 at tick 6 and 60 at
    tick 15; USS read for main at tick 5, for the worker at tick 12.
    """
    rows = []
    for k in range(20):
        t = 10.0 + k / 10
        main = {3: 150, 14: 90}.get(k, 100)
        worker = {6: 80, 15: 60}.get(k, 50)
        rows.append(row(t=t, pid=1, ppid=0, role="main", rss=main, uss=30 if k == 5 else None,
                        stage="s", phase="forward"))
        rows.append(row(t=t, pid=2, ppid=1, role="worker 0", rss=worker, uss=20 if k == 12 else None,
                        stage="s", phase="forward"))
    return rows


def test_decimation_keeps_peaks_extremes_uss_and_lifetimes_as_whole_ticks() -> None:
    # GIVEN two seconds of two processes with known peaks, lows and USS readings
    rows = hand_rows()
    # WHEN decimated
    mask = keep_mask(to_table(rows).to_pydict(), {})
    # THEN the kept ticks are exactly: 0 (first rows, first running max), 3 (main's peak: its max,
    # the tree's max of second 10), 5 (main's USS), 6 (the worker's peak), 10 (second 11's first
    # highest main / lowest worker), 12 (the worker's USS), 14 (main's low, the tree's low of
    # second 11), 15 (the worker's high, the tree's high of second 11), 19 (last rows)
    kept = sorted({round((r[0] - 10.0) * 10) for r, keep in zip(rows, mask) if keep})
    assert kept == [0, 3, 5, 6, 10, 12, 14, 15, 19]
    # whole ticks: both processes' rows of a kept tick
    assert all(mask[i] == mask[i + 1] for i in range(0, len(rows), 2))


def test_a_rise_is_kept_sample_by_sample_only_above_the_peak_so_far() -> None:
    # GIVEN a second in which main's RSS rises tick by tick, 100 to 109, the worker's flat at 50
    rows = []
    for k in range(10):
        t = 20.0 + k / 10
        rows.append(row(t=t, pid=1, ppid=0, role="main", rss=100 + k, stage="s", phase="forward"))
        rows.append(row(t=t, pid=2, ppid=1, role="worker 0", rss=50, stage="s", phase="forward"))

    def kept(running: dict[tuple[int, str], float]) -> list[int]:
        mask = keep_mask(to_table(rows).to_pydict(), running)
        return sorted({round((r[0] - 20.0) * 10) for r, keep in zip(rows, mask) if keep})

    # WHEN it is the stage's first part, THEN every tick of the rise is a new peak, kept
    assert kept({}) == list(range(10))
    # WHEN an earlier part already reached 200, THEN only the second's low and high (first, last)
    running = {(1, "rss"): 200.0, (2, "rss"): 50.0}
    assert kept(running) == [0, 9]
    assert running[(1, "rss")] == 200.0  # the running maximum stands


def test_the_writer_decimates_old_parts_and_keeps_every_peak_sample(tmp_path: Path) -> None:
    # GIVEN 12 s of three processes at 25 Hz, written in 1 s parts, the last 2 at the full rate,
    # older ones decimated 3 parts to a file
    rows = fake_rows(12)
    folder = write_folder(tmp_path, rows, part_s=1.0, full_rate_parts=2, group_parts=3)
    # THEN the folder holds decimated groups, then the last two parts whole
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["000001-000003.parquet", "000004-000006.parquet", "000007-000009.parquet",
                     "000010.parquet", "000011.parquet", "000012.parquet"]
    problems: list[str] = []
    got = read_samples(folder, problems)
    assert problems == []
    full = frame(rows)
    assert len(got) < 0.7 * len(full)
    assert not got.duplicated(["t", "pid"]).any() and got["t"].is_monotonic_increasing
    # every process's highest RSS, USS and PSS row is there, the same row
    for column in ("rss", "uss", "pss", "rss_anon"):
        peaks = full.loc[full.groupby("pid")[column].idxmax(), ["t", "pid", column]]
        merged = peaks.merge(got[["t", "pid", column]], on=["t", "pid"], suffixes=("", "_got"))
        assert len(merged) == len(peaks) and (merged[column] == merged[column + "_got"]).all(), column
    # every USS reading is kept
    assert got["uss"].notna().sum() == full["uss"].notna().sum()
    # the last seconds (the full-rate parts) are all there
    last = full[full["t"] >= got["t"].max() - 1.5]
    assert set(zip(last["t"], last["pid"])) <= set(zip(got["t"], got["pid"]))
    # whole ticks only: every kept tick has its three processes
    assert (got.groupby("t")["pid"].size() == 3).all()
    # a phase's highest main and tree RSS in an epoch survive decimation
    tk_full, tk_got = ticks(full), ticks(got)
    for col in ("main_rss", "tree_rss"):
        a = tk_full.groupby(["epoch", "phase"])[col].max()
        b = tk_got.groupby(["epoch", "phase"])[col].max()
        pd.testing.assert_series_equal(a, b)


# ---- reading back: the same tables as the CSV --------------------------------------------------


def _as_folder(run_dir: Path, **kw: Any) -> Path:
    """A copy of ``run_dir`` whose samples.csv is rewritten as a samples folder."""
    copy = run_dir.parent / (run_dir.name + "-folder")
    shutil.copytree(run_dir, copy)
    sdir = copy / "stages" / "train"
    old = read_samples(sdir / SAMPLES_FILE, [])
    (sdir / SAMPLES_FILE).unlink()
    csv = pd.read_csv(run_dir / "stages/train" / SAMPLES_FILE).reindex(columns=list(SAMPLE_COLUMNS))
    kinds = [str if c in SAMPLE_TEXT_COLUMNS else float if c == "t" else int for c in SAMPLE_COLUMNS]
    rows = [SampleRow._make(None if pd.isna(v) else kind(v) for v, kind in zip(r, kinds))
            for r in csv.itertuples(index=False)]
    write_folder(sdir, rows, **kw)
    assert len(old) > 0
    return copy


@pytest.mark.parametrize("parts", [{}, {"part_s": 1.5, "full_rate_parts": 100}])
def test_the_folder_reads_back_to_the_same_tables_as_the_csv(tmp_path: Path,
                                                             parts: dict[str, Any]) -> None:
    # GIVEN the synthetic run as an older run's samples.csv (known tables, a vanished process's
    # zero row) and the same rows written as a samples folder, in one part or in several
    run_dir = write_run(tmp_path, legacy_csv=True)
    folder_run = _as_folder(run_dir, **parts)
    # WHEN both are loaded
    a, b = load_run(run_dir), load_run(folder_run)
    # THEN the samples and every table made of them agree
    assert a.problems == b.problems == []
    pd.testing.assert_frame_equal(a.samples, b.samples, check_dtype=False)
    pd.testing.assert_frame_equal(phase_table(a), phase_table(b), check_dtype=False)
    pd.testing.assert_frame_equal(process_table(a), process_table(b), check_dtype=False)


def test_a_long_stage_reads_back_to_the_same_tables_at_the_full_rate(tmp_path: Path) -> None:
    # GIVEN 20 s of three processes, as the old CSV and as a folder of 4 s parts (none decimated)
    rows = fake_rows(20)
    old = tmp_path / "old.csv"
    write_csv(old, rows)
    folder = write_folder(tmp_path, rows, part_s=4.0, full_rate_parts=100)
    # WHEN read
    a, b = read_samples(old, []), read_samples(folder, [])
    # THEN the same frame, dtypes included (integers where nothing is missing)
    pd.testing.assert_frame_equal(a, b)
    pd.testing.assert_frame_equal(ticks(a), ticks(b))


def test_only_the_columns_asked_for_are_read(tmp_path: Path) -> None:
    folder = write_folder(tmp_path, fake_rows(2))
    got = read_samples(folder, [], columns=["t", "pid", "uss"])
    assert list(got.columns) == ["t", "pid", "uss"] and len(got) == 150


def test_an_old_samples_csv_still_loads_with_the_new_columns_empty(tmp_path: Path) -> None:
    # GIVEN a run directory from before the samples folder (16 columns, no CUDA, no rss_anon)
    run = load_run(write_run(tmp_path, legacy_csv=True))
    s = run.stage("train").samples
    assert list(s.columns) == list(SAMPLE_COLUMNS)
    assert s["rss_anon"].isna().all() and s["rss"].gt(0).all() and len(s) == 12


# ---- what a kill leaves ----------------------------------------------------------------------------


KILLED_WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from harness.control.samples import SamplesWriter
    from harness.records.samples import SAMPLE_COLUMNS, SampleRow
    w = SamplesWriter(Path(sys.argv[1]), part_s=1.0, full_rate_parts=100)
    while True:
        t = round(time.time(), 4)
        w.write([SampleRow._make(t if c == "t" else pid if c == "pid" else 1000 + pid if c == "rss" else
                                 "main" if c == "role" else None for c in SAMPLE_COLUMNS) for pid in (1, 2)])
        print(t, flush=True)
        time.sleep(0.02)
""")


def test_a_writer_killed_without_closing_loses_at_most_about_a_second(tmp_path: Path) -> None:
    # GIVEN a writer at 50 Hz rolling a part every second
    folder = tmp_path / SAMPLES_DIR
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(folder)], cwd=REPO,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    written = [float(proc.stdout.readline())]
    # WHEN it is killed mid-stream (SIGKILL: no flush, no close), once it has written for more
    # than two seconds (by its own clock: a loaded machine slows the writer, not the test's bar)
    while written[-1] - written[0] <= 2.2:
        written.append(float(proc.stdout.readline()))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written += [float(x) for x in proc.stdout.read().split()]
    # THEN every row written up to a second before the kill reads back, once
    problems: list[str] = []
    got = read_samples(folder, problems)
    assert all("partial line" in p for p in problems), problems
    assert not got.duplicated(["t", "pid"]).any()
    ts = set(got["t"])
    lost = [t for t in written if t not in ts]
    assert written[-1] - written[0] > 2.0
    assert not lost or min(lost) >= written[-1] - 1.0, (len(lost), written[-1] - min(lost))


def test_leftovers_of_a_kill_between_steps_are_read_once(tmp_path: Path) -> None:
    # GIVEN a finished folder (groups and full-rate parts)
    rows = fake_rows(8)
    folder = write_folder(tmp_path, rows, part_s=1.0, full_rate_parts=2, group_parts=3)
    clean = read_samples(folder, [])
    # AND what a kill between writing a file and deleting what it replaces would leave: a part's
    # CSV beside its Parquet file, a full-rate part beside the group that covers it, a group
    # still being written
    full = frame(rows)
    write_csv(folder / "000008.csv", [tuple(r) for r in full[full["t"] >= 1007.0].itertuples(index=False)])
    shutil.copy(folder / "000008.parquet", folder / "000002.parquet")
    (folder / ".000007-open.parquet.tmp").write_bytes(b"PAR1 cut short")
    # THEN the folder reads as before
    pd.testing.assert_frame_equal(read_samples(folder, []), clean)


# ---- the sampler -------------------------------------------------------------------------------------


def _schedule(sampler: TreeSampler, pids: list[int], seconds: float) -> dict[int, list[float]]:
    """When each pid's smaps_rollup is read over ``seconds`` of ticks."""
    reads: dict[int, list[float]] = {p: [] for p in pids}
    for k in range(int(seconds / sampler.interval) + 1):
        now = k * sampler.interval
        for pid in sampler._full_reads(pids, now, last=False):
            reads[pid].append(round(now, 3))
    return reads


def test_rotation_reads_one_process_a_tick_and_each_at_full_hz(tmp_path: Path) -> None:
    # GIVEN three processes, 25 Hz ticks, USS/PSS at 1 Hz
    sampler = TreeSampler(os.getpid(), "s", tmp_path, None, rss_hz=25, full_hz=1)
    reads = _schedule(sampler, [10, 11, 12], 3.0)
    # THEN each is read first in consecutive ticks rather than the same one, then at least once a
    # second (scheduled a tick early: 0.96 s, so a read a tick late still keeps 1 Hz), one a tick
    assert [r[0] for r in reads.values()] == [0.0, 0.04, 0.08]
    gaps = [b - a for r in reads.values() for a, b in zip(r, r[1:])]
    assert len(gaps) == 9 and all(0.96 - 1e-6 < g < 1.0 + 1e-6 for g in gaps), reads
    ticks = [t for r in reads.values() for t in r]
    assert len(ticks) == len(set(ticks))
    # AND together (the old way) all three in one tick
    together = TreeSampler(os.getpid(), "s", tmp_path, None, rss_hz=25, full_hz=1, rotate=False)
    assert _schedule(together, [10, 11, 12], 1.0) == {p: [0.0, 0.96] for p in (10, 11, 12)}


def test_rotation_keeps_up_with_more_processes_than_ticks(tmp_path: Path) -> None:
    # GIVEN 40 processes, 10 Hz ticks, 1 Hz USS/PSS: four reads a tick are needed
    sampler = TreeSampler(os.getpid(), "s", tmp_path, None, rss_hz=10, full_hz=1)
    reads = _schedule(sampler, list(range(40)), 4.0)
    # THEN every one is read first within the first second, then every second, four a tick
    assert all(r[0] < 1.0 and len(r) >= 4 and all(0.9 - 1e-6 < b - a < 1.0 + 1e-6 for a, b in zip(r, r[1:]))
               for r in reads.values()), reads
    per_tick = pd.Series([t for r in reads.values() for t in r]).value_counts()
    assert per_tick.max() == 4


@pytest.mark.parametrize(("background", "policy"), [(True, os.SCHED_BATCH), (False, os.SCHED_OTHER)])
def test_a_background_sampler_thread_alone_runs_as_sched_batch(
    tmp_path: Path, background: bool, policy: int
) -> None:
    # GIVEN a sampler of this process's tree, in the background or not
    sampler = TreeSampler(os.getpid(), "s", tmp_path, None, rss_hz=50, full_hz=1, background=background)
    sampler.start()
    try:
        deadline = time.monotonic() + 60
        while sampler.stats.ticks == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        # THEN its thread runs under that policy, and the thread that started it is left as it was
        assert sampler.stats.ticks > 0 and sampler.native_id is not None
        assert os.sched_getscheduler(sampler.native_id) == policy
        assert os.sched_getscheduler(threading.get_native_id()) == os.SCHED_OTHER
    finally:
        sampler.stop()
        sampler.join()
    # AND the rates the manifest records name it
    assert sampler.rates()["policy"] == ("batch" if background else "normal")


def test_full_hz_is_per_process_the_lowest_and_the_longest_gap_is_kept() -> None:
    # GIVEN process 1 read every second for 10 s, process 2 every 1.25 s but once 2.5 s apart,
    # process 3 twice only (too few to tell a rate)
    stats = SamplerStats(started=0.0, stopped=10.0, full_interval_s=1.0)
    reads = {1: [float(i) for i in range(11)], 2: [0.0, 1.25, 2.5, 5.0, 6.25, 7.5, 8.75, 10.0],
             3: [4.0, 4.5]}
    for t, pid in sorted((t, pid) for pid, ts in reads.items() for t in ts):
        stats.note_read(pid, t)
    # THEN the rate is the lowest per process (process 2: 7 intervals in 10 s), the gap its longest
    assert stats.full_hz() == pytest.approx(0.7)
    assert stats.rates()["full_reads"] == 21 and stats.rates()["full_max_gap_s"] == 2.5


def test_status_and_rollup_read_what_psutil_reads() -> None:
    me = psutil.Process()
    st = read_status(os.getpid())
    mem = me.memory_info()
    assert st is not None
    assert abs(st[b"VmRSS"] - mem.rss) < 8 << 20 and st[b"VmSize"] > 0
    assert st[b"RssAnon"] + st[b"RssFile"] + st[b"RssShmem"] == st[b"VmRSS"]
    rollup = read_rollup(os.getpid())
    full = me.memory_full_info()
    assert rollup is not None
    uss, pss, swap = rollup
    assert abs(uss - full.uss) < 8 << 20 and abs(pss - full.pss) < 8 << 20 and swap == full.swap


def test_workers_uss_sums_each_workers_latest_reading_when_read_in_rotation() -> None:
    # GIVEN two workers whose USS is read in turn: worker 0 at ticks 1 and 3, worker 1 at tick 2
    uss = {(1, 201): 10, (2, 202): 20, (3, 201): 15}
    rows = [row(t=float(k), pid=pid, ppid=100, role=role, rss=100, uss=uss.get((k, pid)),
                stage="s", epoch=1, step=k, phase="forward")
            for k in range(5) for pid, role in ((201, "worker 0"), (202, "worker 1"))]
    # WHEN made into ticks
    got = ticks(read_samples_frame(rows))["workers_uss"].tolist()
    # THEN a tick that read a worker sums every worker's latest reading, once both have one
    assert got[2:4] == [30, 35]
    assert all(pd.isna(got[i]) for i in (0, 1, 4))


def read_samples_frame(rows: list[tuple[Any, ...]]) -> pd.DataFrame:
    df = frame(rows)
    for c in SAMPLE_COLUMNS:
        if c not in SAMPLE_TEXT_COLUMNS:
            df[c] = pd.to_numeric(df[c])
    return df
