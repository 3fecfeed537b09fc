"""Each finding on data made to show it (with its numbers), and none on data that does not."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
from _synthetic import EVENTS, MiB, snapshot, write_run

from harness.analysis import finding as finding_mod
from harness.analysis import findings
from harness.analysis.captures import CaptureData, Window, aggregate_sites
from harness.analysis.load import Capture, Run, load_run
from harness.analysis.summary import build_summary
from harness.analysis.summary_model import FindingRow, Summary
from harness.analysis.tables import phase_table
from harness.analysis.ticks import ticks
from harness.gate import metrics
from harness.records.events import MemrayStart, SnapshotEvent, StageEnd, StageStart


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


def test_leak_from_rss_growth_needs_every_epoch_to_grow(tmp_path: Path) -> None:
    # _epochs: RSS = USS + 50 MiB, so both grow by 40 MiB an epoch
    grows = load_run(write_run(tmp_path / "a", snapshots=_epochs([5, 5, 5], [300, 340, 380])))
    f = findings.leak(grows, [])
    assert f is not None
    assert f.numbers["stages"]["train"]["main_rss_per_epoch"] == 40 * MiB
    assert f.numbers["stages"]["train"]["growth_per_epoch"] == 40 * MiB
    once = load_run(write_run(tmp_path / "b", snapshots=_epochs([5, 5, 5], [300, 340, 341])))
    assert findings.leak(once, []) is None


def _rss_uss_epochs(rss: list[int], uss: list[int]) -> list[dict]:  # type: ignore[type-arg]
    """Epoch-end snapshots with main RSS and USS given in KiB, live tensors flat."""
    snaps = _epochs([22] * len(rss), [0] * len(rss))
    for snap, r, u in zip(snaps, rss, uss):
        snap["processes"][0].update(rss=r * 1024, uss=u * 1024)
    return snaps


def _gate_growth(run_dir: Path) -> int | None:
    run = load_run(run_dir)
    tk = ticks(run.samples)
    summary = build_summary(run, tk, phase_table(run, tk), [], findings.all_findings(run, tk, []))
    return metrics.from_summary(Summary.model_validate(summary.to_dict(), strict=True)).get("growth_per_epoch")


def test_one_boundary_of_uss_growth_with_flat_rss_is_no_leak_and_the_gate_agrees(tmp_path: Path) -> None:
    # GIVEN the batch-64 smoke run's two epoch-end snapshots: USS up 106 MiB (forked workers
    # still exiting made the parent's pages shared, then private again), RSS up 472 KiB
    snaps = _rss_uss_epochs([761_600, 762_072], [328_000, 436_544])
    run_dir = write_run(tmp_path, snapshots=snaps)
    # WHEN the report and the gate read it
    f = findings.leak(load_run(run_dir), [])
    growth = _gate_growth(run_dir)
    # THEN no leak (one boundary, RSS flat), and the gate's figure is that flat RSS
    assert f is None
    assert growth == 472 * 1024


def test_the_leak_finding_and_the_gate_speak_of_the_same_growth(tmp_path: Path) -> None:
    # GIVEN main RSS up 12 MiB at each of two boundaries (USS moving all over the place)
    snaps = _rss_uss_epochs([700_000, 700_000 + 12 * 1024, 700_000 + 24 * 1024], [400_000, 300_000, 500_000])
    run_dir = write_run(tmp_path, snapshots=snaps)
    f = findings.leak(load_run(run_dir), [])
    assert f is not None
    per = f.numbers["stages"]["train"]
    assert per["main_rss_deltas"] == [12 * MiB, 12 * MiB]
    assert per["growth_per_epoch"] == per["main_rss_per_epoch"] == 12 * MiB == _gate_growth(run_dir)
    assert "each of the 2 epoch boundaries" in f.text
    assert "RSS 12.0 MiB (growth_per_epoch, the figure `harness check` gates)" in f.text


def test_rss_growth_below_the_floor_at_one_boundary_is_no_leak(tmp_path: Path) -> None:
    # 12 MiB, then 2 MiB: the growth does not hold at every boundary
    snaps = _rss_uss_epochs([700_000, 700_000 + 12 * 1024, 700_000 + 14 * 1024], [1, 1, 1])
    run_dir = write_run(tmp_path, snapshots=snaps)
    assert findings.leak(load_run(run_dir), []) is None
    assert _gate_growth(run_dir) == 7 * MiB  # (14 MiB) / 2 epochs, what a budget would see


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
    # sites alone: the finding says what the gate's growth figure is, so the two read together
    assert f.numbers["growth_per_epoch"] == 0
    assert "RSS grew 0.0 MiB per epoch (growth_per_epoch" in f.text


def _cow_rows(worker_rss: list[int], worker_uss: list[int], parent_rss: list[int]) -> list[list]:  # type: ignore[type-arg]
    rows = []
    for i, (wr, wu, pr) in enumerate(zip(worker_rss, worker_uss, parent_rss)):
        t = 2000.0 + i
        rows.append([f"{t:.4f}", 100, 0, "main", pr * MiB, 0, 40 * MiB, 0, 0, 50 * MiB, 60 * MiB,
                     0, "train", 1, i, "data"])
        rows.append([f"{t:.4f}", 201, 100, "worker 0", wr * MiB, 0, 100 * MiB, 0, 0, wu * MiB,
                     (wu + 10) * MiB, 0, "train", 1, i, "data"])
    return rows


# the ticks above fall while the stage runs (t 2000-2003)
COW_EVENTS = [StageStart(t=1999.0, stage="train", pid=100), StageEnd(t=2010.0, stage="train")]


def test_copy_on_read_when_worker_uss_grows_and_its_rss_does_not(tmp_path: Path) -> None:
    rows = _cow_rows([400, 400, 401, 401], [10, 30, 50, 60], [600, 601, 600, 602])
    run = load_run(write_run(tmp_path, rows=rows, events=COW_EVENTS))
    f = findings.copy_on_read(run, [])
    assert f is not None
    (w,) = f.numbers["workers"]
    assert (w["pid"], w["uss_growth"], w["anon_rss_growth"], w["seconds"]) == (201, 50 * MiB, 1 * MiB, 3.0)
    assert (w["parent_change"], w["parent_measure"]) == (2 * MiB, "RSS")


def test_no_copy_on_read_for_a_worker_allocating_its_own_memory(tmp_path: Path) -> None:
    rows = _cow_rows([400, 420, 440, 460], [10, 30, 50, 70], [600, 600, 600, 600])
    assert findings.copy_on_read(load_run(write_run(tmp_path, rows=rows, events=COW_EVENTS)), []) is None


def test_no_copy_on_read_when_the_parent_grows_too(tmp_path: Path) -> None:
    rows = _cow_rows([400, 400, 400, 400], [10, 30, 50, 60], [600, 640, 680, 700])
    assert findings.copy_on_read(load_run(write_run(tmp_path, rows=rows, events=COW_EVENTS)), []) is None


def test_no_copy_on_read_from_ticks_after_stage_end_or_in_teardown(tmp_path: Path) -> None:
    # GIVEN the worker of the first test, its copying seen only as the main process exits: the
    # stage ended at t 2001.5 (ticks 2002, 2003 after it), or the workload had returned (teardown)
    rows = _cow_rows([400, 400, 401, 401], [10, 10, 50, 60], [600, 601, 600, 602])
    ended = [StageStart(t=1999.0, stage="train", pid=100), StageEnd(t=2001.5, stage="train")]
    assert findings.copy_on_read(load_run(write_run(tmp_path / "a", rows=rows, events=ended)), []) is None
    for row in rows[4:]:
        row[-1] = "teardown"
    assert findings.copy_on_read(load_run(write_run(tmp_path / "b", rows=rows, events=COW_EVENTS)), []) is None
    # THEN the same ticks while the workload runs are copy-on-read
    for row in rows[4:]:
        row[-1] = "data"
    assert findings.copy_on_read(load_run(write_run(tmp_path / "c", rows=rows, events=COW_EVENTS)), []) is not None


@pytest.mark.parametrize("late", ["after_stage_end", "teardown", "both"])
def test_no_copy_on_read_from_a_reading_taken_as_the_workload_ends(tmp_path: Path, late: str) -> None:
    # GIVEN a clean worker (USS flat while the workload ran) read once more as the main process
    # exits: its USS 60 MiB up, its RSS flat (the shared pages turned private as the parent left)
    rows = _cow_rows([400, 400, 400, 401], [10, 10, 11, 70], [600, 600, 600, 600])
    end = 2002.5  # after the third tick
    if late in ("teardown", "both"):
        for row in rows[-2:]:
            row[15] = "teardown"
    events = [StageStart(t=2000.0, stage="train", pid=100),
              StageEnd(t=end if late != "teardown" else 2010.0, stage="train")]
    run = load_run(write_run(tmp_path, rows=rows, events=events))
    # THEN no copy-on-read: that reading is the shutdown's
    assert findings.copy_on_read(run, []) is None
    # (the same readings with the workload still running at the last one are a finding)
    run = load_run(write_run(tmp_path / "running", rows=_cow_rows([400, 400, 400, 401],
                                                                  [10, 10, 11, 70], [600] * 4),
                             events=COW_EVENTS))
    assert findings.copy_on_read(run, []) is not None


def _sibling_rows(uss0: list[int], uss1: list[int], ends: tuple[int, int],
                  start: int = 0) -> list[list]:  # type: ignore[type-arg]
    """Main (pid 100) and a loader's two workers (201, 202) over ticks t 2000+i: worker k's RSS
    flat at 400 MiB, its USS as given while it lives (ticks < ends[k], from ``start``)."""
    rows = []
    for i in range(max(ends)):
        t = f"{2000.0 + i:.4f}"
        rows.append([t, 100, 0, "main", 600 * MiB, 0, 40 * MiB, 0, 0, 50 * MiB, 60 * MiB, 0, "train",
                     1, i, "data"])
        for k, (pid, uss) in enumerate(((201, uss0), (202, uss1))):
            if start <= i < ends[k]:
                rows.append([t, pid, 100, f"worker {k}", 400 * MiB, 0, 100 * MiB, 0, 0,
                             uss[i - start] * MiB, (uss[i - start] + 10) * MiB, 0, "train", 1, i, "data"])
    return rows


def test_a_sibling_s_exit_is_no_copy_on_read(tmp_path: Path) -> None:
    # GIVEN two workers of one loader, USS flat at 10 MiB, and worker 0 read once more as worker 1
    # ends (the pages the two shared, which the main process had stopped sharing, now its own)
    rows = _sibling_rows([10, 10, 10, 10, 10, 90], [10, 10, 10, 10, 10, 10], ends=(6, 6))
    run = load_run(write_run(tmp_path / "a", rows=rows, events=COW_EVENTS))
    # THEN that reading is the loader's shutdown: no copy-on-read, and no 80 MiB workers' peak
    assert findings.copy_on_read(run, []) is None
    assert ticks(run.samples)["workers_uss"].max() == 20 * MiB
    # and a tick later than the sibling's last is the shutdown too
    rows = _sibling_rows([10, 10, 10, 10, 10, 10, 90], [10] * 6, ends=(7, 6))
    assert findings.copy_on_read(load_run(write_run(tmp_path / "b", rows=rows, events=COW_EVENTS)), []) is None
    # WHEN the same rise comes while both live (copying as it reads), or the worker lives on long
    # after its sibling died (killed): THEN it is copy-on-read
    rows = _sibling_rows([10, 30, 50, 70, 90, 90], [10] * 6, ends=(6, 6))
    assert findings.copy_on_read(load_run(write_run(tmp_path / "c", rows=rows, events=COW_EVENTS)), []) is not None
    rows = _sibling_rows([10, 10, 10, 50, 70, 90, 90, 90], [10, 10], ends=(8, 2))
    assert findings.copy_on_read(load_run(write_run(tmp_path / "d", rows=rows, events=COW_EVENTS)), []) is not None


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
    events = [*EVENTS, MemrayStart(t=1006.2, capture="x", file="x", epoch=2, step=2, section=None)]
    run = load_run(write_run(tmp_path, events=sorted(events, key=lambda e: e.t)))
    f = findings.peak_phase(ticks(run.samples), run)
    assert f is not None
    assert (f.numbers["main"]["bytes"], f.numbers["main"]["phase"], f.numbers["main"]["epoch"]) == (
        160 * MiB, "backward", 2)
    assert f.numbers["tree"]["bytes"] == 271 * MiB
    assert f.numbers["main_other_phases_max"] == 140 * MiB  # teardown, the largest other phase
    # the memray start 0.2 s and the epoch-2 snapshot 0.5 s after the peak tick
    assert f.numbers["harness_actions_near_peak"] == [
        "started a memray capture", "took the epoch-2 snapshot (an epoch boundary)"]


def test_no_peak_phase_without_probe_phases() -> None:
    tk = pd.DataFrame({"stage": ["s"], "t": [1.0], "epoch": [0], "step": [0], "phase": ["none"],
                       "main_rss": [1.0], "tree_rss": [1.0]})
    assert findings.peak_phase(tk) is None


def _main_tick(t: float, rss: int, phase: str, epoch: int = 0) -> list:  # type: ignore[type-arg]
    return [f"{t:.4f}", 100, 0, "main", rss * MiB, 0, 40 * MiB, 0, 0, "", "", "", "train", epoch, 0, phase]


def test_no_peak_phase_for_a_script_that_marks_no_phases(tmp_path: Path) -> None:
    # GIVEN a script under the probe that never calls probe.phase: the harness's setup, its
    # teardown (closing) and idle after stage_end are all there is; the peak is in teardown
    rows = [_main_tick(1000.0, 100, "setup"), _main_tick(1001.0, 300, "setup"),
            _main_tick(1002.0, 310, "teardown"), _main_tick(1003.5, 400, "idle")]
    events = [StageStart(t=1000.0, stage="train", pid=100),
              SnapshotEvent(t=1002.1, label="end", epoch=0, file="snapshots/end.json", tensor_bytes={}),
              StageEnd(t=1003.0, stage="train")]
    run = load_run(write_run(tmp_path, rows=rows, events=events, snapshots=[]))
    # WHEN / THEN: no "The peak is in phase teardown ... no phase stands out"
    assert findings.peak_phase(ticks(run.samples), run) is None


def test_the_end_of_stage_snapshot_is_not_called_an_epoch_boundary(tmp_path: Path) -> None:
    # GIVEN a loop without epochs whose peak falls 0.3 s before the end-of-stage snapshot
    rows = [_main_tick(1000.0, 100, "setup"), _main_tick(1001.0, 200, "forward"),
            _main_tick(1001.5, 220, "backward"), _main_tick(1001.8, 250, "forward"),
            _main_tick(1002.0, 240, "teardown")]
    events = [StageStart(t=1000.0, stage="train", pid=100),
              SnapshotEvent(t=1002.1, label="end", epoch=0, file="snapshots/end.json", tensor_bytes={}),
              StageEnd(t=1002.2, stage="train")]
    run = load_run(write_run(tmp_path, rows=rows, events=events, snapshots=[]))
    f = findings.peak_phase(ticks(run.samples), run)
    assert f is not None and f.title == "The peak is in phase forward"
    assert f.numbers["harness_actions_near_peak"] == ["took its end-of-stage snapshot"]
    assert "epoch" not in f.text


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


def test_the_device_peak_phase_needs_phases_of_the_workload_s_own(tmp_path: Path) -> None:
    from harness.analysis import device

    run = load_run(write_run(tmp_path))

    def table(phases: list[str]) -> pd.DataFrame:
        return pd.DataFrame([{"stage": "train", "epoch": 0, "phase": p, "readings": 1,
                              "peak_allocated": (i + 1) * MiB, "peak_reserved": 2 * (i + 1) * MiB,
                              "allocated": 0, "reserved": 0, "inactive_split": 0, "retries": 0,
                              "ooms": 0} for i, p in enumerate(phases)], columns=list(device.DEVICE_COLUMNS))

    kinds = [f.kind for f in device.findings(run, table(["setup", "teardown"]))]
    assert "cuda_peak_phase" not in kinds
    (f,) = [f for f in device.findings(run, table(["setup", "forward", "teardown"]))
            if f.kind == "cuda_peak_phase"]
    assert f.title == "Device memory peaks in phase teardown"  # the workload's phases exist: any may hold it


# ---- the registry (harness/analysis/finding.py) -------------------------------------------------

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _registered() -> dict[str, finding_mod.Detector]:
    import harness.analysis.ranks  # noqa: F401 - imports every detector module, as the report does

    return dict(finding_mod.DETECTORS)


def _anchors(text: str) -> set[str]:
    """The anchors a Markdown page has: ``<a id="...">`` and GitHub's heading slugs."""
    ids = set(re.findall(r'<a id="([^"]+)"', text))
    for heading in re.findall(r"^#+ (.+)$", text, flags=re.MULTILINE):
        ids.add(re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-"))
    return ids


def test_every_registered_kind_is_explained_at_its_doc_anchor() -> None:
    registered = _registered()
    assert {"leak", "trend", "copy_on_read", "rss_heap_gap", "peak_phase", "cuda_peak_phase",
            "cuda_reserved", "cuda_pinned_host", "cuda_retries", "rank_skew"} <= set(registered)
    missing = []
    for kind, d in registered.items():
        page, _, anchor = d.doc.partition("#")
        if not (DOCS / page).is_file() or anchor not in _anchors((DOCS / page).read_text(encoding="utf-8")):
            missing.append(f"{kind}: docs/{d.doc}")
    assert missing == []


def test_every_registered_kind_validates_in_summary_json() -> None:
    for kind in _registered():
        row = FindingRow.model_validate({"kind": kind, "title": "t", "text": "x", "numbers": {}})
        assert row.kind == kind


def test_a_kind_registered_twice_or_a_detector_asking_for_what_its_scope_lacks_is_refused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(finding_mod, "DETECTORS", _registered())
    with pytest.raises(ValueError, match="'leak' is registered twice"):
        finding_mod.finding("leak", severity="info", doc="reports.md#leak", title="again")(
            lambda run: None)
    with pytest.raises(TypeError, match="takes tk, which a ranks detector is not given"):
        finding_mod.finding("new_kind", severity="info", doc="reports.md#leak", title="x",
                            scope="ranks")(lambda tk: None)
    with pytest.raises(ValueError, match="not FILE.md#ANCHOR"):
        finding_mod.finding("new_kind", severity="info", doc="leak", title="x")(lambda run: None)


@pytest.mark.parametrize("distributed", [False, True], ids=["plain", "torchrun"])
def test_a_new_detector_registered_in_a_test_reaches_the_report(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, distributed: bool) -> None:
    import _synthetic_ranks

    from harness.analysis.finding import Finding, finding
    from harness.report import build_report

    # GIVEN a detector of a new kind, registered here and nowhere else
    monkeypatch.setattr(finding_mod, "DETECTORS", _registered())

    @finding("planted_test", severity="warning", doc="reports.md#findings-harnessanalysisfindingspy",
             title="a planted finding", order=1)
    def planted(run: Run, tk: pd.DataFrame) -> Finding | None:
        return Finding("planted_test", "Planted <b>here</b>", f"{len(tk)} ticks.", {"ticks": len(tk)})

    # WHEN a plain run's report, and a torchrun run's, are built
    run_dir = (_synthetic_ranks.write_run(tmp_path) if distributed else write_run(tmp_path))
    result = build_report(run_dir, processes=1, flamegraphs=False)

    # THEN summary.json has it (once a rank, named by its rank, where there are ranks), and
    # report.html shows its severity and doc link, its title escaped
    summary = json.loads(result.summary.read_text())
    Summary.model_validate(summary)
    mine = [f for f in summary["findings"] if f["kind"] == "planted_test"]
    titles = ["rank 0: Planted <b>here</b>", "rank 1: Planted <b>here</b>"] if distributed \
        else ["Planted <b>here</b>"]
    assert [f["title"] for f in mine] == titles
    assert all(f["numbers"]["ticks"] > 0 for f in mine)
    page = result.html.read_text()
    assert page.count('<div class="finding warning">\n  <h3>' + ("rank 0: " if distributed else "")
                      + "Planted &lt;b&gt;here&lt;/b&gt;</h3>") == 1
    assert "docs/reports.md#findings-harnessanalysisfindingspy" in page


def _rss_parts_run(tmp_path: Path, grows: str, file_mib: int = 0, other_mib: int = 0) -> Run:
    """Epoch-end snapshots whose main RSS grows 40 MiB an epoch, and the sampler's ticks at them
    with RSS's parts: the growth ``anon`` (allocations) or ``file`` (a memory-mapped file read);
    or ``anon`` / ``shmem`` grows ``other_mib`` and file-backed pages ``file_mib`` an epoch."""
    snaps = [snapshot(f"epoch-{i + 1}", i + 1, 1000.0 + i, other=80, count=20, main_rss=300 + 40 * i,
                      main_uss=250 + 40 * i, heap=10, gc=[0, 0, 0]) for i in range(3)]
    rows = []
    for i in range(3):
        anon, file, shmem = (200 + 40 * i, 100, 0) if grows == "anon" else (200, 100 + 40 * i, 0)
        if file_mib:
            anon, file, shmem = 200, 100 + file_mib * i, 0
            if grows == "anon":
                anon += other_mib * i
            else:
                shmem += other_mib * i
        rows.append([f"{1000.0 + i:.4f}", 100, 0, "main", (300 + 40 * i) * MiB, 0, 40 * MiB, 0, 0,
                     "", "", "", "train", i + 1, 10, "data", "", "", anon * MiB, file * MiB,
                     shmem * MiB])
    return load_run(write_run(tmp_path, rows=rows, snapshots=snaps))


def test_a_leak_says_which_part_of_rss_grew(tmp_path: Path) -> None:
    run = _rss_parts_run(tmp_path, "anon")
    f = findings.leak(run, [], ticks(run.samples))
    assert f is not None
    assert "the memory that grew is anonymous" in f.text
    assert f.numbers["stages"]["train"]["kinds_per_epoch"] == {
        "anonymous": 40 * MiB, "file-backed": 0.0, "shared memory": 0.0}


def test_rss_grown_by_a_memory_mapped_file_being_read_is_no_leak(tmp_path: Path) -> None:
    run = _rss_parts_run(tmp_path, "file")
    assert findings.leak(run, [], ticks(run.samples)) is None
    # without the ticks' parts (an older run directory) the same RSS growth was a leak
    assert findings.leak(run, []) is not None


@pytest.mark.parametrize(("grows", "other", "file", "kind"), [
    ("anon", 16, 24, "anonymous"),  # a leak beside a mapped file read faster than it leaks
    ("shmem", 12, 28, "shared memory"),  # shared memory (a /dev/shm cache) beside it
    ("anon", 4, 36, None),  # the file's pages, and anonymous memory under the 8 MiB floor
])
def test_a_leak_beside_a_memory_mapped_file_is_judged_by_its_anonymous_and_shared_memory(
        tmp_path: Path, grows: str, other: int, file: int, kind: str | None) -> None:
    # GIVEN RSS up 40 MiB an epoch, ``file`` MiB of it a mapped file's pages, ``other`` MiB of it
    # anonymous or shared memory
    run = _rss_parts_run(tmp_path, grows, file_mib=file, other_mib=other)
    f = findings.leak(run, [], ticks(run.samples))
    # THEN a leak where the anonymous or shared part grew by the floor, named; else none
    if kind is None:
        assert f is None
    else:
        assert f is not None
        assert f.numbers["stages"]["train"]["kinds_per_epoch"]["file-backed"] == file * MiB
        assert f"the memory that grew is {kind}" in f.text
        assert f"file-backed pages, not counted: {file:.1f} MiB" in f.text
