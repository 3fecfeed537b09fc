"""The headline peak is the one while the workload ran; what came after ``stage_end`` (the process
shutting down) is the teardown peak, reported and gated apart. Known answers on the synthetic run
(tests/_synthetic.py: stage_end at t 1007, running peak 160 MiB in backward, epoch 2, tree 271
MiB), and one real workload that allocates 200 MiB while shutting down."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from _synthetic import EVENTS, MiB, samples_rows, write_run
from conftest import WORKLOADS, latest_run

from harness.analysis import findings, peaks
from harness.analysis.load import Run, load_run
from harness.analysis.summary import build_summary
from harness.analysis.summary_model import Summary
from harness.analysis.tables import phase_table
from harness.analysis.ticks import ticks
from harness.gate import metrics as m
from harness.gate.check import check
from harness.records.scenario import BudgetsConfig
from harness.render.terminal import summary_text


def _tick(t: float, rss: int, shared: int, phase: str = "idle") -> list[Any]:
    return [f"{t:.4f}", 100, 0, "main", rss * MiB, 0, shared * MiB, 0, 0, "", "", "", "train", 2, 3, phase]


def _shutdown_rows(shared: tuple[int, int]) -> list[list[Any]]:
    """The synthetic ticks and two after stage_end (t 1007): 300 then 340 MiB of RSS, with the
    statm shared (file-backed) figure at ``shared`` (it is 40 MiB before)."""
    return samples_rows() + [_tick(1007.5, 300, shared[0]), _tick(1008.0, 340, shared[1])]


def _summary(run: Run) -> Summary:
    tk = ticks(run.samples)
    found = findings.all_findings(run, tk, [])
    return build_summary(run, tk, phase_table(run, tk), [], found)


def test_the_headline_peak_is_the_running_one_and_the_shutdown_is_set_apart(tmp_path: Path) -> None:
    # GIVEN the process shutting down after stage_end, its RSS rising by 200 MiB, 190 of them
    # file-backed pages (libraries' code and data touched by their destructors)
    run = load_run(write_run(tmp_path, rows=_shutdown_rows((200, 230))))
    # WHEN the summary is built
    s = _summary(run)
    # THEN the headline peaks are those up to stage_end ...
    assert s.peaks.main_rss is not None and s.peaks.tree_rss is not None
    assert (s.peaks.main_rss.bytes, s.peaks.main_rss.phase, s.peaks.main_rss.epoch) == (160 * MiB, "backward", 2)
    assert s.peaks.tree_rss.bytes == 271 * MiB
    # ... and the teardown peak says when and how it came: 1 s after stage_end, 200 MiB above
    # the last tick before it (140 MiB, t 1007), 190 MiB of it file-backed
    td = s.peaks.main_rss_teardown
    assert td is not None
    assert (td.bytes, td.stage, td.t, td.after_end_s) == (340 * MiB, "train", 1008.0, 1.0)
    assert (td.rise, td.file_backed_rise) == (200 * MiB, 190 * MiB)
    tree = s.peaks.tree_rss_teardown
    assert tree is not None and (tree.bytes, tree.rise, tree.file_backed_rise) == (340 * MiB, 200 * MiB, None)


def test_the_gate_reads_the_running_peak_and_names_the_teardown_apart(tmp_path: Path) -> None:
    run = load_run(write_run(tmp_path, rows=_shutdown_rows((200, 230))))
    got = m.from_summary(_summary(run))
    assert got["peak_main_rss"] == 160 * MiB
    assert got["peak_tree_rss"] == 271 * MiB
    assert got["peak_main_rss_teardown"] == 340 * MiB
    assert got["peak_tree_rss_teardown"] == 340 * MiB
    # a baseline holds a run to its running peaks, not to its shutdown
    kept = m.for_baseline(got)
    assert "peak_main_rss" in kept and "peak_main_rss_teardown" not in kept
    assert "peak_tree_rss_teardown" not in kept
    # a budget can name either
    running_ok = check(got, budgets=BudgetsConfig.model_validate({"peak_main_rss": "200 MiB"}))
    assert running_ok.ok
    shutdown = check(got, budgets=BudgetsConfig.model_validate(
        {"peak_main_rss": "200 MiB", "peak_main_rss_teardown": "300 MiB"}))
    assert not shutdown.ok
    assert [(r.metric, r.status) for r in shutdown.rows] == [
        ("peak_main_rss", "pass"), ("peak_main_rss_teardown", "FAIL")]


def test_terminal_and_peak_finding_agree_and_say_whose_memory_it_is(tmp_path: Path) -> None:
    run = load_run(write_run(tmp_path, rows=_shutdown_rows((200, 230))))
    s = _summary(run).to_dict()
    text = summary_text(s, Path("report.html"))
    assert ("peak RSS   main 160 MiB (train, epoch 2, backward), summed over processes 271 MiB "
            "(train, epoch 2, backward)") in text
    assert "teardown   main 340 MiB, 1.0 s after train's stage_end (+200 MiB, 190 MiB of it file-backed)\n" in text
    (f,) = [f for f in s["findings"] if f["kind"] == "peak_phase"]
    assert f["title"] == "The peak is in phase backward"
    assert "peaked at 160.0 MiB in phase backward" in f["text"]
    assert "reached 340.0 MiB, 1.0 s after stage train's stage_end, 200.0 MiB above" in f["text"]
    assert "190.0 MiB of that in file-backed pages: shared libraries' code and data" in f["text"]
    assert f["numbers"]["after_workload"]["bytes"] == 340 * MiB


def test_an_anonymous_rise_while_shutting_down_is_the_workload_s_own(tmp_path: Path) -> None:
    # GIVEN the same rise with the file-backed pages flat: memory allocated while shutting down
    run = load_run(write_run(tmp_path, rows=_shutdown_rows((40, 41))))
    f = findings.peak_phase(ticks(run.samples), run)
    assert f is not None
    assert "anonymous memory allocated while shutting down" in f.text
    assert "file-backed pages" not in f.text


def test_no_tick_after_stage_end_means_no_teardown_peak(tmp_path: Path) -> None:
    run = load_run(write_run(tmp_path))
    s = _summary(run)
    assert s.peaks.main_rss_teardown is None and s.peaks.tree_rss_teardown is None
    assert "peak_main_rss_teardown" not in m.from_summary(s)
    assert "teardown " not in summary_text(s.to_dict(), Path("report.html"))
    # a budget on it cannot be held: it is missing, as any budgeted figure a run lacks
    res = check(m.from_summary(s), budgets=BudgetsConfig.model_validate({"peak_main_rss_teardown": "1 GiB"}))
    assert [r.status for r in res.rows] == ["missing"]


def test_a_stage_without_stage_end_counts_every_tick_as_running(tmp_path: Path) -> None:
    # a crashed stage: no stage_end, so nothing is set apart as shutdown
    events = [e for e in EVENTS if e.kind != "stage_end"]
    run = load_run(write_run(tmp_path, rows=_shutdown_rows((200, 230)), events=events))
    tk = ticks(run.samples)
    assert not peaks.after_stage_end(run, tk).any()
    assert peaks.teardown_peak(run, tk, "main_rss") is None
    peak = peaks.running_peak(run, tk, "main_rss")
    assert peak is not None and peak["bytes"] == 340 * MiB


# ---- the known answer, for real ---------------------------------------------------------------


@pytest.mark.slow
def test_a_workload_allocating_200_mib_while_shutting_down(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    # GIVEN a script whose atexit handler holds 200 MiB after its last phase (after stage_end)
    scenario = {"name": "shutdown", "stages": ["main"],
                "workload": {"entry": str(WORKLOADS / "shutdown_alloc.py")},
                "memray": {"mode": "off"}, "tensors": {"trace_steps": 0, "trace_every": 0},
                "budgets": {"peak_main_rss_teardown": "1 MiB"}}
    path = tmp_path / "shutdown.yaml"
    path.write_text(yaml.safe_dump(scenario), encoding="utf-8")
    reports = tmp_path / "r"
    code, out, err = cli("run", str(path), "--reports", str(reports), "--quiet")
    assert code == 0, out + err
    run_dir = latest_run(reports)
    doc = json.loads((run_dir / "report" / "summary.json").read_text(encoding="utf-8"))
    # THEN the running peak is without it and the teardown peak with it
    running, td = doc["peaks"]["main_rss"], doc["peaks"]["main_rss_teardown"]
    assert td is not None, doc["peaks"]
    assert td["bytes"] - running["bytes"] >= 150 * MiB, (running, td)
    assert td["rise"] >= 180 * MiB
    assert td["file_backed_rise"] < td["rise"] / 2  # the workload's own, anonymous memory
    assert running["phase"] in {"forward", "backward", "optimizer", "data"}
    (f,) = [f for f in doc["findings"] if f["kind"] == "peak_phase"]
    assert "anonymous memory allocated while shutting down" in f["text"]
    # the gate: the running peak by default, the teardown peak where a budget names it
    code, out, err = cli("check", str(run_dir))
    assert code == 1 and "peak_main_rss_teardown" in out + err
