"""Each finding on data made to show it (with its numbers), and none on data that does not."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from _synthetic import EVENTS, MiB, snapshot, write_run

from harness.analysis import findings
from harness.analysis.captures import CaptureData, Window, aggregate_sites
from harness.analysis.load import Capture, load_run
from harness.analysis.ticks import ticks


def _epochs(counts: list[int], uss: list[int]) -> list[dict]:  # type: ignore[type-arg]
    return [snapshot(f"epoch-{i + 1}", i + 1, 1000.0 + i, other=4 * c, count=c, main_rss=u + 50,
                     main_uss=u, heap=10, gc=[0, 0, 0]) for i, (c, u) in enumerate(zip(counts, uss))]


def test_no_leak_on_flat_epochs(tmp_path: Path) -> None:
    run = load_run(write_run(tmp_path, snapshots=_epochs([20, 24, 21], [300, 301, 302])))
    assert findings.leak(run, []) is None


def test_leak_from_tensor_growth_after_the_first_epoch(tmp_path: Path) -> None:
    # GIVEN 150 more live tensors at each epoch end after the first
    run = load_run(write_run(tmp_path, snapshots=_epochs([22, 172, 322], [300, 301, 302])))
    # WHEN / THEN
    f = findings.leak(run, [])
    assert f is not None and f.kind == "leak"
    per = f.numbers["stages"]["train"]
    assert per["epochs"] == [1, 2, 3]
    assert per["tensor_count_per_epoch"] == 150
    assert per["tensor_bytes_per_epoch"] == 600
    assert per["main_uss_per_epoch"] == 1 * MiB
    assert "150 more live tensors" in f.text


def test_leak_from_uss_growth_needs_every_epoch_to_grow(tmp_path: Path) -> None:
    grows = load_run(write_run(tmp_path / "a", snapshots=_epochs([5, 5, 5], [300, 340, 380])))
    f = findings.leak(grows, [])
    assert f is not None and f.numbers["stages"]["train"]["main_uss_per_epoch"] == 40 * MiB
    once = load_run(write_run(tmp_path / "b", snapshots=_epochs([5, 5, 5], [300, 340, 341])))
    assert findings.leak(once, []) is None


def _window_capture(epoch: int, steps: int, kept: int, line: int) -> CaptureData:
    cap = Capture("train", f"train-e{epoch}-train", Path("x.bin"), None, 1)
    frames = [("cross_entropy", "/v/site-packages/torch/nn/functional.py", 1),
              ("forward", "/v/site-packages/torch/nn/modules/loss.py", 2),
              ("<module>", "/work/leaky.py", line)]
    sites = aggregate_sites([(frames, kept * 100, kept)], [(frames, kept * 100, kept)],
                            stage="train", capture=cap.name, process="main", pid=1, section=None)
    return CaptureData(cap, Window(epoch, None, 10, 10 + steps, None, None), pid=1, sites=sites)


def test_leak_names_the_sites_that_kept_memory_at_every_step(tmp_path: Path) -> None:
    run = load_run(write_run(tmp_path, snapshots=_epochs([22, 172, 322], [300, 301, 302])))
    caps = [_window_capture(1, 100, 900, 36), _window_capture(2, 100, 300, 36),
            _window_capture(3, 100, 300, 36)]
    f = findings.leak(run, caps)
    assert f is not None
    assert "<module> (/work/leaky.py:36)" in f.text
    site = f.numbers["sites"][0]
    assert (site["leaked_allocations"], site["window_steps"], site["phase"]) == (300, 100, "loss")


def test_sites_alone_need_two_epochs_and_not_the_first(tmp_path: Path) -> None:
    flat = load_run(write_run(tmp_path, snapshots=_epochs([5, 5, 5], [300, 300, 300])))
    # The first epoch's warm-up does not count, and one later window is not enough alone.
    assert findings.leak(flat, [_window_capture(1, 100, 900, 36), _window_capture(2, 100, 300, 36)]) is None
    # 0.5 per step is below the threshold.
    assert findings.leak(flat, [_window_capture(2, 100, 50, 36), _window_capture(3, 100, 50, 36)]) is None
    f = findings.leak(flat, [_window_capture(2, 100, 300, 36), _window_capture(3, 100, 300, 36)])
    assert f is not None and f.numbers["processes"] == ["main"]


def _cow_rows(worker_rss: list[int], worker_uss: list[int], parent_rss: list[int]) -> list[list]:  # type: ignore[type-arg]
    rows = []
    for i, (wr, wu, pr) in enumerate(zip(worker_rss, worker_uss, parent_rss)):
        t = 2000.0 + i
        rows.append([f"{t:.4f}", 100, 0, "main", pr * MiB, 0, 40 * MiB, 0, 0, 50 * MiB, 60 * MiB,
                     0, "train", 1, i, "data"])
        rows.append([f"{t:.4f}", 201, 100, "worker 0", wr * MiB, 0, 100 * MiB, 0, 0, wu * MiB,
                     (wu + 10) * MiB, 0, "train", 1, i, "data"])
    return rows


def test_copy_on_read_when_worker_uss_grows_and_its_rss_does_not(tmp_path: Path) -> None:
    rows = _cow_rows([400, 400, 401, 401], [10, 30, 50, 60], [600, 601, 600, 602])
    run = load_run(write_run(tmp_path, rows=rows))
    f = findings.copy_on_read(run, [])
    assert f is not None
    (w,) = f.numbers["workers"]
    assert (w["pid"], w["uss_growth"], w["anon_rss_growth"], w["seconds"]) == (201, 50 * MiB, 1 * MiB, 3.0)
    assert (w["parent_change"], w["parent_measure"]) == (2 * MiB, "RSS")


def test_no_copy_on_read_for_a_worker_allocating_its_own_memory(tmp_path: Path) -> None:
    rows = _cow_rows([400, 420, 440, 460], [10, 30, 50, 70], [600, 600, 600, 600])
    assert findings.copy_on_read(load_run(write_run(tmp_path, rows=rows)), []) is None


def test_no_copy_on_read_when_the_parent_grows_too(tmp_path: Path) -> None:
    rows = _cow_rows([400, 400, 400, 400], [10, 30, 50, 60], [600, 640, 680, 700])
    assert findings.copy_on_read(load_run(write_run(tmp_path, rows=rows)), []) is None


def test_rss_heap_gap_explained_at_the_main_process_largest_rss(tmp_path: Path) -> None:
    run = load_run(write_run(tmp_path))
    tk = ticks(run.samples)
    cap = Capture("train", "train-e2-train", Path("x.bin"), None, 1)
    data = CaptureData(cap, Window(2, None, 0, 5, 1005.0, 1006.9), pid=100,
                       memray_samples=[(1005.1, 130 * MiB, 40 * MiB), (1006.0, 160 * MiB, 50 * MiB)])
    f = findings.rss_heap_gap(tk, [data])
    assert f is not None
    n = f.numbers
    assert (n["rss"], n["heap"], n["gap"]) == (160 * MiB, 50 * MiB, 110 * MiB)
    assert (n["file_backed"], n["anonymous_outside_heap"]) == (40 * MiB, 70 * MiB)
    assert (n["workers_rss"], n["workers_uss"]) == (111 * MiB, 12 * MiB)
    assert findings.rss_heap_gap(tk, []) is None  # no heap, nothing to explain


def test_peak_phase_and_the_harness_actions_near_it(tmp_path: Path) -> None:
    events = EVENTS + [{"t": 1006.2, "kind": "memray_start", "capture": "x", "file": "x",
                        "epoch": 2, "step": 2, "section": None}]
    run = load_run(write_run(tmp_path, events=sorted(events, key=lambda e: e["t"])))
    f = findings.peak_phase(ticks(run.samples), run)
    assert f is not None
    assert (f.numbers["main"]["bytes"], f.numbers["main"]["phase"], f.numbers["main"]["epoch"]) == (
        160 * MiB, "backward", 2)
    assert f.numbers["tree"]["bytes"] == 271 * MiB
    assert f.numbers["main_other_phases_max"] == 140 * MiB  # teardown, the largest other phase
    # the memray start 0.2 s and the epoch-2 snapshot 0.5 s after the peak tick
    assert f.numbers["harness_actions_near_peak"] == [
        "started a memray capture", "took an epoch-boundary snapshot"]


def test_no_peak_phase_without_probe_phases() -> None:
    tk = pd.DataFrame({"stage": ["s"], "t": [1.0], "epoch": [0], "step": [0], "phase": ["none"],
                       "main_rss": [1.0], "tree_rss": [1.0]})
    assert findings.peak_phase(tk) is None


def test_a_peak_after_the_workload_finished_is_set_apart(tmp_path: Path) -> None:
    from _synthetic import samples_rows

    # GIVEN the process shutting down, after stage_end (t 1007), at 500 MiB
    rows = samples_rows() + [["1008.0000", 100, 0, "main", 500 * MiB, 0, 40 * MiB, 0, 0, "", "", "",
                              "train", 2, 3, "idle"]]
    run = load_run(write_run(tmp_path, rows=rows))
    f = findings.peak_phase(ticks(run.samples), run)
    assert f is not None
    assert (f.numbers["main"]["bytes"], f.numbers["main"]["phase"]) == (160 * MiB, "backward")
    assert f.numbers["after_workload"]["bytes"] == 500 * MiB
    assert f.title == "The peak is in phase backward"
