"""DataLoader workers tracked from inside (harness.probe.workers) and their leaks named by line
(harness.analysis.workers).

The probe runs in this process over a stage directory of the test's own; its DataLoader workers
are real processes (fork, forkserver), each starting memray in itself. The datasets
(workloads/worker_leaks.py) keep a known number of bytes a sample, planted, or none, clean.
The loader: 32 samples, batches of 2, 2 workers, so 16 batches an epoch, worker 0 fetching the
even batch indices and worker 1 the odd; the window is batches 4-11 of every epoch, 4 of them
each worker's, 8 samples: a planted dataset keeps 8 x 64 KiB in each worker's window.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from _synthetic import MiB, sample_row, write_run
from torch.utils.data import DataLoader, Dataset
from torch.utils.data._utils.signal_handling import _remove_worker_pids
from workloads import worker_leaks
from workloads.worker_leaks import SAMPLE_BYTES, Augmenting, Worker0Cache

from harness.analysis import workers as analysis_workers
from harness.analysis.captures import CaptureData, Window, read_stage_captures
from harness.analysis.findings import copy_on_read
from harness.analysis.load import Capture, Stage, empty_samples, list_captures, load_run, read_events
from harness.layout import CELL_FILE, EVENTS_FILE, PROBE_CONFIG_FILE, STAGE_DIR_ENV, parse_capture_name
from harness.probe import cell as cellmod
from harness.probe import workers
from harness.probe.live import LiveProbe
from harness.records.events import (
    EpochEnd,
    EpochStart,
    MemrayStart,
    MemrayStop,
    StageEnd,
    StageStart,
    WorkerEpochEnd,
)
from harness.records.probe_config import ProbeConfig
from harness.records.scenario import CudaConfig, MemrayConfig, TensorsConfig
from harness.records.vocab import PHASES

SOURCE = Path(worker_leaks.__file__).name
KEPT = 8 * SAMPLE_BYTES  # a planted dataset's bytes kept in one worker's window
OVERHEAD = 16 * 1024  # what memray counts besides the samples' data (tensor and dict bookkeeping)


def _stage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **memray: Any) -> Path:
    memray = {"train_start": 4, "train_steps": 8, "epochs": "every", **memray}
    cfg = ProbeConfig(stage="train", device="cpu", memray=MemrayConfig(**memray),
                      tensors=TensorsConfig(trace_steps=0, trace_every=0, snapshots=False,
                                            composition=False),
                      cuda=CudaConfig())
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / PROBE_CONFIG_FILE).write_text(json.dumps(cfg.model_dump(mode="json")))
    cellmod.create(tmp_path / CELL_FILE)
    monkeypatch.setenv(STAGE_DIR_ENV, str(tmp_path))  # what `harness run` sets; workers inherit it
    return tmp_path


def _train(stage: Path, data: Dataset[torch.Tensor], epochs: int, **loader: Any) -> None:
    probe = LiveProbe(stage)
    try:
        dl = DataLoader(data, batch_size=2, num_workers=2, **loader)
        for epoch in range(1, epochs + 1):
            with probe.epoch(epoch):
                for _ in probe.iterate(dl):
                    probe.phase("forward")
        del dl  # persistent workers are told to exit and joined
    finally:
        probe.close()


def _read(stage_dir: Path) -> tuple[list[Any], dict[str, CaptureData]]:
    """The stage's events and its worker-own captures, read as the report reads them."""
    events = read_events(stage_dir / EVENTS_FILE, [])
    stage = Stage("train", stage_dir, None, empty_samples(), events, {},
                  list_captures("train", stage_dir))
    got = {f"{c.capture.name}.{c.pid}": c for c in read_stage_captures(stage)
           if c.window.worker is not None}
    return events, got


def _kept(c: CaptureData, line: str) -> int:
    """Bytes the capture found alive at its end, allocated at ``line`` of the workloads file."""
    s = c.sites
    return int(s.loc[s["workload_line"].str.endswith(f"{SOURCE}:{line})"), "leaked_bytes"].sum())


def _line(text: str) -> int:
    """The line of workloads/worker_leaks.py holding ``text``."""
    lines = Path(worker_leaks.__file__).read_text().splitlines()
    return next(i for i, ln in enumerate(lines, 1) if text in ln)


@pytest.mark.parametrize("keep", [True, False], ids=["planted", "clean"])
def test_persistent_workers_forked_before_any_window_track_their_own(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keep: bool) -> None:
    # GIVEN persistent workers, forked at step 0 before any main window (train_start 4)
    stage = _stage(tmp_path, monkeypatch)
    _train(stage, Augmenting(32, keep=keep), epochs=2, persistent_workers=True)
    events, got = _read(stage)
    # THEN each worker tracked batches 4-11 of each epoch, in one process all along
    starts = [e for e in events if isinstance(e, MemrayStart) and e.worker is not None]
    stops = {(e.capture, e.pid): e for e in events if isinstance(e, MemrayStop) and e.worker is not None}
    assert sorted((e.epoch, e.worker, e.step) for e in starts) == [
        (epoch, w, 4 + w) for epoch in (1, 2) for w in (0, 1)]
    assert {e.worker: e.pid for e in starts if e.epoch == 1} == {e.worker: e.pid for e in starts if e.epoch == 2}
    assert all(stops[(e.capture, e.pid)].batches == 4 for e in starts)
    assert sorted(got) == sorted(f"train-e{e.epoch}-train-w{e.worker}.{e.pid}" for e in starts)
    assert parse_capture_name("train", "train-e2-train-w1").worker == 1
    # and read its own memory as each epoch's 8 batches were all fetched (told of epoch 2; to exit)
    ends = [e for e in events if isinstance(e, WorkerEpochEnd)]
    assert sorted((e.epoch, e.worker, e.pid, e.batches) for e in ends) == sorted(
        (e.epoch, e.worker, e.pid, 8) for e in starts)
    assert all(0 < e.uss < e.rss and 0 < e.shared < e.rss for e in ends)
    assert all(e.exiting == (e.epoch == 2) for e in ends)
    assert all(r.t >= stops[(f"train-e{r.epoch}-train-w{r.worker}", r.pid)].t for r in ends)
    kept = _line("self.kept.append")
    for c in got.values():
        assert c.error is None and c.leaks_read
        if keep:  # the line that keeps them, in every worker's every window
            assert KEPT <= _kept(c, kept) < KEPT + OVERHEAD, c.capture.name
        else:
            assert c.sites["leaked_bytes"].max() < SAMPLE_BYTES


@pytest.mark.parametrize("grow", [True, False], ids=["planted", "clean"])
def test_a_cache_that_grows_in_worker_0_only_is_named_in_worker_0_only(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, grow: bool) -> None:
    stage = _stage(tmp_path, monkeypatch)
    _train(stage, Worker0Cache(32, grow=grow), epochs=1, persistent_workers=True)
    _, got = _read(stage)
    line = _line("decoded = bytearray")  # where the cached buffers are allocated (both workers)
    by_worker = {w: [c for c in got.values() if c.window.worker == w] for w in (0, 1)}
    assert [len(v) for v in by_worker.values()] == [1, 1]
    for c in by_worker[0]:
        assert (KEPT <= _kept(c, line) < KEPT + OVERHEAD) if grow else _kept(c, line) == 0
    assert all(_kept(c, line) == 0 for c in by_worker[1])


@pytest.mark.parametrize("keep", [True, False], ids=["planted", "clean"])
def test_a_spawned_worker_tracks_its_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         keep: bool) -> None:
    # GIVEN one spawned worker (exec'd: memray's follow_fork never reaches it), persistent, so
    # it fetches every batch: 8 in the window, 2 samples each
    stage = _stage(tmp_path, monkeypatch)
    probe = LiveProbe(stage)
    try:
        dl = DataLoader(Augmenting(32, keep=keep), batch_size=2, num_workers=1,
                        multiprocessing_context="spawn", persistent_workers=True)
        for epoch in (1, 2):
            with probe.epoch(epoch):
                for _ in probe.iterate(dl):
                    probe.phase("forward")
        del dl
    finally:
        probe.close()
    events, got = _read(stage)
    assert sorted(n.split(".")[0] for n in got) == ["train-e1-train-w0", "train-e2-train-w0"]
    assert [(e.epoch, e.worker, e.batches, e.exiting) for e in events if isinstance(e, WorkerEpochEnd)] == [
        (1, 0, 16, False), (2, 0, 16, True)]
    for c in got.values():
        assert c.window.batches == 8
        kept = _kept(c, _line("self.kept.append"))
        assert (2 * KEPT <= kept < 2 * KEPT + OVERHEAD) if keep else kept == 0


def test_a_worker_killed_inside_its_window_leaves_a_finished_capture(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a loop left (break) inside the window, its workers then ended as multiprocessing ends
    # daemonic workers at exit: SIGTERM
    stage = _stage(tmp_path, monkeypatch, train_start=2, train_steps=32)
    probe = LiveProbe(stage)
    dl = DataLoader(Augmenting(128, keep=True), batch_size=2, num_workers=2, persistent_workers=True)
    with probe.epoch(1):
        for step, _ in enumerate(probe.iterate(dl)):
            if step == 6:
                break
    pids = [w.pid for w in dl._iterator._workers]  # type: ignore[union-attr]
    _remove_worker_pids(id(dl._iterator))  # the loader's SIGCHLD watch would raise here
    for pid in pids:
        os.kill(pid, signal.SIGTERM)
    for w in dl._iterator._workers:  # type: ignore[union-attr]
        w.join(10)
    dl._iterator._shutdown = True  # type: ignore[union-attr]  # its workers are gone
    assert [w.exitcode for w in dl._iterator._workers] == [-signal.SIGTERM] * 2  # type: ignore[union-attr]
    probe.close()
    events, got = _read(stage)
    # THEN each capture is whole (memray closed it), and its stop says the batches it saw
    stops = [e for e in events if isinstance(e, MemrayStop) and e.worker is not None]
    assert sorted(e.pid for e in stops) == sorted(pids)
    assert all(e.batches is not None and e.batches >= 2 for e in stops)
    assert sorted(got) == sorted(f"train-e1-train-w{e.worker}.{e.pid}" for e in stops)
    for c in got.values():
        assert c.error is None
        assert _kept(c, _line("self.kept.append")) >= 2 * SAMPLE_BYTES * 2


def test_a_worker_memray_follows_from_a_main_window_keeps_that_tracking(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a main window open before the fork (train_start 0): memray follows the workers
    stage = _stage(tmp_path, monkeypatch, train_start=0, train_steps=8)
    _train(stage, Augmenting(32, keep=False), epochs=1)
    names = sorted(p.name.split(".bin")[0] for p in (stage / "memray").iterdir())
    # THEN no worker starts a second tracker (memray runs one a process): no own window
    assert names == ["train-e1-train"] * 3


def test_workers_off_and_install_undone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from torch.utils.data._utils import worker

    original = worker._worker_loop
    stage = _stage(tmp_path, monkeypatch, workers=False)
    _train(stage, Augmenting(32, keep=True), epochs=1, persistent_workers=True)
    assert not any("-w" in p.name for p in (stage / "memray").iterdir())
    assert worker._worker_loop is original
    workers.install()
    assert worker._worker_loop is workers.worker_loop
    workers.uninstall()
    assert worker._worker_loop is original


# -- the finding, from samples and captures written by hand ------------------------------------

def _tick(t: float, pid: int, role: str, epoch: int, uss: int, anon: int, phase: str = "data") -> Any:
    return sample_row(t=t, pid=pid, ppid=100, role=role, rss=(anon + 100) * MiB, shared=100 * MiB,
                      uss=uss * MiB, stage="train", epoch=epoch, step=1, phase=phase)


def _worker_run(tmp_path: Path, uss: dict[int, list[int]], anon: dict[int, list[int]] | None = None,
                end: float = 1100.0, tail: int = 0, own: dict[int, list[int]] | None = None,
                own_anon: dict[int, list[int]] | None = None, parent: bool = False) -> Any:
    """Workers pid 201 and 202 (persistent), epochs 1-3, two USS ticks an epoch: ``uss[pid]`` the
    six readings (MiB), ``anon`` their anonymous RSS (default: as USS); ``tail``: a last tick
    in teardown that much above; ``own[pid]``: the worker's own readings at the ends of epochs
    1-3 (``worker_epoch_end``, MiB; the last as it was told to exit), ``own_anon`` their
    anonymous RSS (default: as USS); ``parent``: the main process ticked beside them, flat."""
    rows = [sample_row(t=1000.0, pid=100, ppid=1, role="main", rss=600 * MiB, stage="train",
                       epoch=0, step=0, phase="setup")]
    if parent:
        rows += [sample_row(t=1000.0 + 10 * i + 5, pid=100, ppid=1, role="main", rss=600 * MiB,
                            stage="train", epoch=1 + i // 2, step=1, phase="data") for i in range(6)]
    for pid, values in uss.items():
        role = f"worker {pid - 201}"
        for i, u in enumerate(values):
            a = (anon or uss)[pid][i]
            rows.append(_tick(1000.0 + 10 * i + pid % 2, pid, role, 1 + i // 2, u, a))
        if tail:
            rows.append(_tick(1090.0, pid, role, 3, values[-1] + tail, values[-1] + tail, "teardown"))
    events = [StageStart(t=999.0, stage="train", pid=100)]
    for e in (1, 2, 3):
        events += [EpochStart(t=1000.0 + 20 * (e - 1) - 1, epoch=e), EpochEnd(t=1000.0 + 20 * e - 2, epoch=e)]
    events += [MemrayStart(t=1040.0, capture="train-e3-train-w0", epoch=3, step=100, worker=0, pid=201),
               MemrayStop(t=1041.0, capture="train-e3-train-w0", epoch=3, step=250, batches=75, worker=0,
                          pid=201)]
    for pid, values in (own or {}).items():
        anons = (own_anon or own or {})[pid]
        events += [WorkerEpochEnd(t=1000.0 + 20 * e - 3, epoch=e, worker=pid - 201, pid=pid, batches=96,
                                  rss=(a + 100) * MiB, shared=100 * MiB, uss=v * MiB, exiting=e == len(values))
                   for e, (v, a) in enumerate(zip(values, anons, strict=True), 1)]
    events += [StageEnd(t=end, stage="train")]
    return load_run(write_run(tmp_path, rows=rows, events=events))


def _worker_capture(kept_per_batch: int, batches: int = 75) -> CaptureData:
    sites = pd.DataFrame([
        {"stage": "train", "capture": "train-e3-train-w0", "process": "worker", "pid": 201,
         "phase": "data", "site": "__getitem__ (data.py:42)", "workload_line": "__getitem__ (data.py:42)",
         "source": "self.kept.append(x)", "bytes_at_peak": kept_per_batch * batches,
         "allocations_at_peak": 2 * batches, "leaked_bytes": kept_per_batch * batches,
         "leaked_allocations": 2 * batches}])
    cap = Capture("train", "train-e3-train-w0", Path("x.bin.201"), 201, 0)
    return CaptureData(cap, Window(3, None, 100, 250, 1040.0, 1041.0, worker=0, batches=batches),
                       pid=201, sites=sites, leaks_read=True)


def test_worker_leak_names_the_growing_worker_and_its_line(tmp_path: Path) -> None:
    # GIVEN worker 0 up 24 MiB in each epoch (its USS and its anonymous RSS), worker 1 flat after
    # its first epoch's warm-up
    run = _worker_run(tmp_path, {201: [20, 40, 52, 64, 76, 88], 202: [20, 30, 30, 30, 31, 31]})
    f = analysis_workers.worker_leak(run, [_worker_capture(512 * 1024)])
    assert f is not None
    (w,) = f.numbers["workers"]
    assert (w["pid"], w["worker"], w["epochs"], w["growth_per_epoch"]) == (201, 0, [2, 3], 24 * MiB)
    (line,) = w["lines"]
    assert (line["where"], line["bytes_per_batch"], line["allocations_per_batch"]) == (
        "__getitem__ (data.py:42)", 512 * 1024, 2.0)
    assert "worker 0 (pid 201, train) grows 24.0 MiB an epoch" in f.text
    assert "line __getitem__ (data.py:42) `self.kept.append(x)` keeps 524,288 bytes" in f.text


def test_worker_leak_takes_an_epochs_end_from_the_workers_own_reading(tmp_path: Path) -> None:
    # GIVEN worker 0 up 24 MiB in each epoch, but the sampler's ticks of epoch 3 both came early in
    # it (64, 65 MiB): on a loaded machine the sampler's thread went seconds without a tick while
    # the rest of the last epoch was fetched (CI: worker 0 not named)
    ticks = {201: [20, 40, 52, 64, 64, 65], 202: [20, 30, 30, 30, 31, 31]}
    assert analysis_workers.worker_leak(_worker_run(tmp_path / "a", ticks), []) is None
    # WHEN the worker read its own memory as each epoch's batches were all fetched (40, 64, 88)
    run = _worker_run(tmp_path / "b", ticks, own={201: [40, 64, 88], 202: [30, 30, 31]})
    f = analysis_workers.worker_leak(run, [])
    # THEN those are its epochs' ends: 24 MiB an epoch, and worker 1 is flat
    assert f is not None
    (w,) = f.numbers["workers"]
    assert (w["worker"], w["epochs"], w["growth_per_epoch"], w["read_by_worker"]) == (0, [2, 3], 24 * MiB, [1, 2, 3])
    assert w["uss_growth"] == {"1": 20 * MiB, "2": 24 * MiB, "3": 24 * MiB}
    # a worker measured by its own readings alone (no tick of it) is measured all the same
    g = {x.pid: x for x in analysis_workers.worker_growth(
        _worker_run(tmp_path / "c", {202: ticks[202]}, own={201: [40, 64, 88]}))}
    assert (g[201].worker, g[201].anon_growth, g[201].leaking()) == (0, {2: 24 * MiB, 3: 24 * MiB}, True)


def test_worker_leak_judged_on_what_the_worker_allocated_not_on_pages_it_was_left(tmp_path: Path) -> None:
    # GIVEN worker 0's anonymous RSS up 12 MiB a tick (24 an epoch), and its USS up 84 MiB more in
    # epoch 3's last tick: pages it shared with the parent and worker 1, written by them, left to
    # it alone (measured: +68 MiB in one tick, its anonymous RSS +12)
    run = _worker_run(tmp_path, {201: [20, 40, 52, 64, 76, 172], 202: [20, 30, 30, 30, 31, 31]},
                      {201: [20, 40, 52, 64, 76, 88], 202: [20, 30, 30, 30, 31, 31]})
    f = analysis_workers.worker_leak(run, [])
    assert f is not None
    (w,) = f.numbers["workers"]
    # THEN it leaks 24 MiB an epoch (what it allocated), its USS shown as it was
    assert (w["worker"], w["growth_per_epoch"]) == (0, 24 * MiB)
    assert (w["uss_growth"]["3"], w["anon_rss_growth"]["3"]) == (108 * MiB, 24 * MiB)
    assert "USS 40.0 MiB, 64.0 MiB, 172.0 MiB at the ends of epochs 1, 2, 3" in f.text


def test_copy_on_read_ends_a_worker_at_its_own_reading_as_it_was_told_to_exit(tmp_path: Path) -> None:
    # GIVEN clean workers, worker 1's last tick labelled inside epoch 3 but read as worker 0 had
    # exited (a tick's reads come up to a second after its start on a loaded machine): the pages
    # the two shared left to it, USS +35 MiB, its anonymous RSS flat (CI, loaded: copy_on_read
    # named it in the clean run)
    flat = [20, 30, 30, 30, 31, 31]
    ticks = {201: flat, 202: [*flat[:5], 66]}
    anon = {201: flat, 202: flat}
    assert copy_on_read(_worker_run(tmp_path / "a", ticks, anon, parent=True), []) is not None
    # WHEN each worker read itself at its epochs' ends, the last as it was told to exit
    run = _worker_run(tmp_path / "b", ticks, anon, parent=True, own={201: [30, 30, 31], 202: [30, 30, 31]})
    # THEN that is its end: nothing copied, and no tick of an exiting worker counts
    assert copy_on_read(run, []) is None
    # a worker that does copy the parent's pages as it reads them is found, to that reading
    grows = {202: [20, 40, 52, 64, 76, 88]}
    run = _worker_run(tmp_path / "c", grows, {202: [20, 21, 21, 21, 21, 21]}, parent=True,
                      own={202: [40, 64, 100]}, own_anon={202: [21, 21, 21]})
    f = copy_on_read(run, [])
    assert f is not None
    (w,) = f.numbers["workers"]
    assert (w["pid"], w["uss_start"], w["uss_end"], w["anon_rss_growth"]) == (202, 20 * MiB, 100 * MiB, 1 * MiB)


def test_no_worker_leak_when_clean_copying_or_only_at_teardown(tmp_path: Path) -> None:
    flat = {201: [20, 30, 31, 31, 32, 32], 202: [20, 30, 30, 30, 31, 31]}
    assert analysis_workers.worker_leak(_worker_run(tmp_path / "a", flat), []) is None
    # copy-on-read: USS up 24 MiB an epoch, its anonymous RSS flat
    grows = {201: [20, 40, 52, 64, 76, 88]}
    assert analysis_workers.worker_leak(
        _worker_run(tmp_path / "b", grows, {201: [20, 21, 21, 21, 21, 21]}), []) is None
    # growth in one epoch after the first only (the stage ended before epoch 3's ticks)
    assert analysis_workers.worker_leak(_worker_run(tmp_path / "c", grows, end=1035.0), []) is None
    # a jump in teardown, and after stage_end, is no reading
    run = _worker_run(tmp_path / "d", flat, tail=200)
    assert analysis_workers.worker_leak(run, []) is None
    assert copy_on_read(run, []) is None


@pytest.fixture(scope="module")
def script_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The unchanged script (no probe calls) under `harness run`, planted and clean: 3 epochs of
    768 samples, persistent forked workers, each keeping 384 x 64 KiB = 24 MiB an epoch planted."""
    import yaml

    from harness import cli

    root = tmp_path_factory.mktemp("worker-script")
    out = {}
    for name, args in (("planted", ["--keep"]), ("clean", [])):
        scenario = {"name": f"workers-{name}", "stages": ["main"],
                    "workload": {"entry": worker_leaks.__file__,
                                 "args": ["--samples", "768", *args]},
                    "sampling": {"full_hz": 20},
                    "tensors": {"trace_steps": 0, "trace_every": 0, "snapshots": False},
                    "memray": {"train_start": 8, "train_steps": 32, "epochs": "every"}}
        path = root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(scenario), encoding="utf-8")
        assert cli.main(["run", str(path), "--reports", str(root / "reports"), "--quiet"]) == 0
        (run_dir,) = (root / "reports" / scenario["name"]).iterdir()
        out[name] = run_dir
    return out


def _findings(run_dir: Path) -> dict[str, Any]:
    """The worker and copy-on-read findings, as the report computes them (not the whole report:
    its flamegraphs are test_report_*'s)."""
    run = load_run(run_dir)
    captures = [c for st in run.stages for c in read_stage_captures(st)]
    found = [analysis_workers.worker_leak(run, captures), copy_on_read(run, captures)]
    return {f.kind: f.to_dict() for f in found if f is not None}


@pytest.mark.slow
def test_unchanged_script_worker_leak_named_by_its_line(script_runs: dict[str, Path]) -> None:
    f = _findings(script_runs["planted"])["worker_leak"]
    found = {w["worker"]: w for w in f["numbers"]["workers"]}
    assert sorted(found) == [0, 1]
    kept = _line("self.kept.append")
    for w in found.values():
        # 24 MiB of samples planted; the freed augmentations between them keep malloc's heap
        # fragmented, so USS grows by up to about twice that (42 MiB measured)
        assert 20 * MiB <= w["growth_per_epoch"] <= 64 * MiB
        top = w["lines"][0]
        assert top["where"].endswith(f"{SOURCE}:{kept})")
        # the script's batches are of 4: 4 samples of 64 KiB a batch it fetched
        assert 4 * SAMPLE_BYTES <= top["bytes_per_batch"] < 4 * SAMPLE_BYTES + 4096
    assert f"{SOURCE}:{kept}" in f["text"]


@pytest.mark.slow
def test_unchanged_script_clean_workers_no_worker_finding(script_runs: dict[str, Path]) -> None:
    found = _findings(script_runs["clean"])
    assert "worker_leak" not in found and "copy_on_read" not in found
    names = sorted(p.name.split(".bin")[0] for p in (script_runs["clean"] / "stages" / "main" / "memray").iterdir())
    assert [n for n in names if "-w" in n] == [f"main-e{e}-train-w{w}" for e in (1, 2, 3) for w in (0, 1)]



class _Trackers:
    """Fake memray trackers: the files opened and closed, in order."""

    def __init__(self) -> None:
        self.log: list[str] = []

    def __call__(self, path: Path, cfg: MemrayConfig) -> Any:
        log = self.log

        class Tracker:
            def __enter__(self) -> None:
                log.append(f"open {path.name}")

            def __exit__(self, *exc: object) -> None:
                log.append(f"close {path.name}")

        return Tracker()


def test_worker_windows_follow_the_main_process_plan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a worker's windows over messages as its index queue gives them, the main process's
    # epoch, loop length and phase in the cell; training window 4-11 (train_start 4, 8 steps),
    # validation passes tracked in epoch 1 only, their first 3 batches (eval_batches)
    stage = _stage(tmp_path, monkeypatch, eval_batches=3, validation_epochs=(1,))
    _mm, cell = cellmod.open_cell(stage / CELL_FILE)
    trackers = _Trackers()
    w = workers.WorkerWindows(stage, worker_id=1, tracker=trackers)
    pid = os.getpid()

    def loop(epoch: int, phase: str, indices: range, total: int = 16) -> None:
        cell.epoch, cell.total, cell.phase = epoch, total, PHASES.index(phase)
        for idx in indices:
            w.on_message((idx, [2 * idx, 2 * idx + 1]))

    loop(1, "data", range(1, 16, 2))  # worker 1 of 2: odd batches
    loop(1, "validate", range(0, 8, 2))  # a persistent validation loader's worker, same id
    w.on_message(object())  # _ResumeIteration: the training loader's next epoch ...
    loop(1, "data", range(1, 16, 2))  # ... before the main process marked epoch 2
    loop(2, "validate", range(0, 8, 2))  # not tracked in epoch 2
    loop(3, "data", range(1, 5, 2), total=4)  # a 4-batch epoch: the window fits it, 0-3
    w.on_message(None)  # told to exit inside it
    assert trackers.log == [
        f"open train-e1-train-w1.bin.{pid}", f"close train-e1-train-w1.bin.{pid}",
        f"open train-e1-validate-w1.bin.{pid}", f"close train-e1-validate-w1.bin.{pid}",
        f"open train-e2-train-w1.bin.{pid}", f"close train-e2-train-w1.bin.{pid}",
        f"open train-e3-train-w1.bin.{pid}", f"close train-e3-train-w1.bin.{pid}",
    ]
    events = read_events(stage / EVENTS_FILE, [])
    stops = [(e.capture, e.step, e.batches) for e in events if isinstance(e, MemrayStop)]
    assert stops == [("train-e1-train-w1", 13, 4), ("train-e1-validate-w1", 4, 2),
                     ("train-e2-train-w1", 13, 4), ("train-e3-train-w1", 4, 2)]
    starts = [(e.capture, e.step, e.section, e.reason) for e in events if isinstance(e, MemrayStart)]
    assert starts == [("train-e1-train-w1", 5, None, "every"), ("train-e1-validate-w1", 0, "validate", None),
                      ("train-e2-train-w1", 5, None, "every"), ("train-e3-train-w1", 1, None, "every")]
