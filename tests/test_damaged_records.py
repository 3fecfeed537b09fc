"""Damaged records (issue 13, items 7, 10 and 11's ``baseline -o DIR``).

A run whose records are cut short or hold fields of the wrong type is read as far as it can be,
marked incomplete, and says which file and how; the report is still written and the gate refuses
the run (exit 2) unless ``--allow-incomplete`` is given. A malformed manifest or summary, a
``report`` that is a file, a ``--reports`` that is a file: one line, exit 2, never a traceback.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from _gate import fake_summary
from _gate import write_run as write_gate_run
from _synthetic import (
    EVENTS,
    SNAPSHOTS,
    csv_fields,
    samples_rows,
    truncate_to_half,
    write_busy_capture,
    write_run,
)
from conftest import WORKLOADS

from harness.analysis.captures import read_capture
from harness.analysis.load import load_run

CAPTURE = "stages/train/memray/train-e1-train.bin"
EVENTS_FILE = "stages/train/events.jsonl"


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err and lines[0].startswith("harness: error: "), err
    return lines[0]


def _budgets(tmp_path: Path) -> Path:
    path = tmp_path / "budgets.yaml"
    path.write_text("name: b\nbudgets: {peak_main_rss: 1 GB}\n", encoding="utf-8")
    return path


def _summary(run_dir: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((run_dir / "report" / "summary.json").read_text(encoding="utf-8"))
    return doc


# ---- item 10: partial records pass as complete --------------------------------------------


def test_a_capture_truncated_to_half_is_noted_and_the_run_is_incomplete(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    run_dir = write_run(tmp_path)
    size, whole = truncate_to_half(write_busy_capture(run_dir))

    run = load_run(run_dir)
    assert f"{CAPTURE} is truncated ({size} of at least " in "\n".join(run.problems), run.problems
    assert not run.complete

    code, out, err = cli("report", str(run_dir))
    assert code == 0, err
    summary = _summary(run_dir)
    assert summary["run"]["complete"] is False
    assert any(CAPTURE in r and "truncated" in r for r in summary["run"]["incomplete_reasons"])
    [cap] = summary["captures"]
    assert cap["error"] and "partial" in cap["error"]  # its figures are not taken as whole
    assert "INCOMPLETE" in out and "truncated" in out
    assert f"{CAPTURE} is truncated" in (run_dir / "report" / "report.html").read_text(encoding="utf-8")


def test_a_raw_capture_cut_short_is_read_as_partial() -> None:
    # memray says so only on stderr ("Memray ERROR: Failed to process allocation record")
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = write_run(Path(tmp))
        truncate_to_half(write_busy_capture(run_dir, compress=False))
        [cap] = load_run(run_dir).stage("train").captures
        data, _ = read_capture(cap, None)
    assert data.error is not None and CAPTURE in data.error and "partial" in data.error
    assert " allocation records read" in data.error, data.error  # "N of M ...": from the header


def test_a_truncated_events_file_makes_the_run_incomplete_and_the_gate_refuses_it(  # type: ignore[no-untyped-def]
        tmp_path: Path, cli) -> None:
    run_dir = write_run(tmp_path)
    truncate_to_half(run_dir / EVENTS_FILE)

    run = load_run(run_dir)
    assert run.incomplete_reasons() and not run.complete
    assert any(EVENTS_FILE in r for r in run.incomplete_reasons())

    code, out, err = cli("report", str(run_dir))
    assert code == 0, err
    assert _summary(run_dir)["run"]["complete"] is False

    budgets = str(_budgets(tmp_path))
    code, out, err = cli("check", str(run_dir), "--budgets", budgets)
    assert code == 2, out + err
    line = _one_line(err)
    assert EVENTS_FILE in line and "--allow-incomplete" in line

    code, out, err = cli("check", str(run_dir), "--budgets", budgets, "--allow-incomplete")
    assert code == 0, out + err
    assert EVENTS_FILE in out and "check passed" in out


def test_a_stale_summary_does_not_hide_damage_done_since(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    run_dir = write_run(tmp_path, legacy_csv=True)
    code, _, err = cli("report", str(run_dir))
    assert code == 0 and _summary(run_dir)["run"]["complete"] is True, err
    truncate_to_half(run_dir / "stages/train/samples.csv")
    code, out, err = cli("check", str(run_dir), "--budgets", str(_budgets(tmp_path)))
    assert code == 2 and "stages/train/samples.csv" in _one_line(err), out + err


# ---- item 7: fields of the wrong type ------------------------------------------------------


BAD_EVENTS = [
    ({"t": 1000.6, "kind": "epoch_start", "epoch": "x"}, "epoch"),
    ({"t": None, "kind": "epoch_end", "epoch": 1}, "t"),
    ({"t": True, "kind": "epoch_end", "epoch": 1}, "t"),
    ({"kind": "section_start", "section": "validate", "epoch": 1}, "t"),
    ({"t": 1001.3, "kind": 7}, "kind"),
    ({"t": 1001.3, "kind": "traced_step", "epoch": 1, "step": 0, "phases": ["forward"],
      "tensors": "many"}, "tensors"),
    ({"t": 1001.3, "kind": "traced_step", "epoch": 1, "step": 0, "phases": ["forward"],
      "tensors": {"forward": {"count": "nine"}}}, "tensors.forward.count"),
    ({"t": 1001.3, "kind": "phase_totals", "epoch": 1, "span": "epoch", "seconds": {},
      "transitions": {}, "cuda": {"forward": 5}}, "cuda.forward"),
    ({"t": 1001.3, "kind": "memray_start", "capture": "c", "epoch": [1], "step": 0}, "epoch"),
    ({"t": 1001.3, "kind": "metric", "name": "loss", "value": 0.5, "epoch": "two"}, "epoch"),
    ({"t": 1001.3, "kind": "cuda_history", "epoch": 1, "start": "a", "stop": 2,
      "file": "cuda/x.pickle"}, "start"),
    ([1, 2], "not a JSON object"),
]


@pytest.mark.parametrize(("bad", "field"), BAD_EVENTS)
def test_an_event_of_the_wrong_type_is_skipped_and_named(tmp_path: Path, bad: Any, field: str) -> None:
    events: list[Any] = [*EVENTS[:2], bad, *EVENTS[2:]]
    run_dir = write_run(tmp_path, events=events)

    run = load_run(run_dir)
    stage = run.stage("train")
    assert len(stage.events) == len(EVENTS)  # the bad line alone is dropped
    [problem] = [p for p in run.problems if EVENTS_FILE in p]
    assert f"{EVENTS_FILE} line 3" in problem and field in problem, problem
    assert not run.complete

    from harness.report import build_report

    result = build_report(run_dir, processes=1)  # no traceback: the report marks the damage
    assert not result.complete
    assert f"{EVENTS_FILE} line 3" in (run_dir / "report" / "report.html").read_text(encoding="utf-8")


BAD_SNAPSHOT_FIELDS = [
    ("tensor_bytes", "lots", "tensor_bytes"),
    ("tensor_bytes", {"other": "x"}, "tensor_bytes.other"),
    ("t", "noon", "t"),
    ("epoch", "one", "epoch"),
    ("label", 2, "label"),
    ("processes", [{"pid": 100, "role": "main", "rss": "big"}], "processes.0.rss"),
    ("processes", {"main": 1}, "processes"),
    ("gc", {"counts": ["a"]}, "gc.counts.0"),
    ("maps", {"summary": {"heap": {"count": 1, "bytes": "x"}}}, "maps.summary.heap.bytes"),
    ("cuda", {"allocated": "x"}, "cuda.allocated"),
    ("cuda", 5, "cuda"),
]


@pytest.mark.parametrize(("key", "value", "field"), BAD_SNAPSHOT_FIELDS)
def test_a_snapshot_of_the_wrong_type_is_skipped_and_named(tmp_path: Path, key: str, value: Any,
                                                           field: str) -> None:
    bad = {**copy.deepcopy(SNAPSHOTS[1]), key: value}
    bad["label"] = "epoch-2"  # the file's name (a bad label must not change it)
    if key == "label":
        bad["label"] = value
    run_dir = write_run(tmp_path, snapshots=[SNAPSHOTS[0]])
    (run_dir / "stages/train/snapshots/epoch-2.json").write_text(json.dumps(bad), encoding="utf-8")

    run = load_run(run_dir)
    assert list(run.stage("train").snapshots) == ["epoch-1"]
    [problem] = run.problems
    assert "stages/train/snapshots/epoch-2.json" in problem and field in problem, problem

    from harness.report import build_report

    assert not build_report(run_dir, processes=1).complete


def test_a_samples_row_with_extra_fields_is_named_and_the_rest_kept(tmp_path: Path) -> None:
    rows = [csv_fields(r) for r in samples_rows()]
    rows[3] = [*rows[3], "extra"]  # line 5 of the file (the header is line 1)
    run_dir = write_run(tmp_path, rows=rows, legacy_csv=True)

    run = load_run(run_dir)
    samples = run.stage("train").samples
    assert len(samples) == sum(1 for r in samples_rows() if r.rss > 0) - 1
    assert samples["t"].max() == 1007.0
    [problem] = run.problems
    assert "stages/train/samples.csv line 5" in problem and "expected 16 fields, saw 17" in problem, problem
    assert not run.complete


def test_a_samples_value_that_is_not_a_number_is_named(tmp_path: Path) -> None:
    rows = [csv_fields(r) for r in samples_rows()]
    rows[2][4] = "big"  # rss, line 4
    run = load_run(write_run(tmp_path, rows=rows, legacy_csv=True))
    [problem] = run.problems
    assert "stages/train/samples.csv line 4" in problem and "rss" in problem, problem


BAD_MANIFESTS = [
    ("status", 5, "status"),
    ("stages", "train", "stages"),
    ("stages", [{"name": 5}], "stages.0.name"),
    ("stages", ["train"], "stages.0"),
    ("stages", [{"name": "train", "status": "ok", "exit_code": "zero"}], "stages.0.exit_code"),
    ("stages", [{"name": "train", "status": "fine"}], "stages.0.status"),
    ("status", "unknown", "status"),
    ("scenario", "x", "scenario"),
    ("scenario", {"name": "x", "stages": "train"}, "scenario.stages"),
    ("versions", ["torch"], "versions"),
    ("command_line", "harness run", "command_line"),
    ("wall_s", "long", "wall_s"),
    ("failure", "boom", "failure"),
    ("cpu_count", "two", "cpu_count"),
    ("started", 5, "started"),
    ("scenario_name", None, "scenario_name"),
]


def _break_manifest(run_dir: Path, key: str, value: Any) -> None:
    path = run_dir / "manifest.json"
    doc = json.loads(path.read_text(encoding="utf-8"))
    doc[key] = value
    path.write_text(json.dumps(doc), encoding="utf-8")


@pytest.mark.parametrize("command", ["report", "check", "compare", "baseline"])
@pytest.mark.parametrize(("key", "value", "field"), BAD_MANIFESTS)
def test_a_manifest_of_the_wrong_type_is_one_line(tmp_path: Path, cli, command: str, key: str,  # type: ignore[no-untyped-def]
                                                  value: Any, field: str) -> None:
    run_dir = write_run(tmp_path / "a")
    _break_manifest(run_dir, key, value)
    args = {"report": [], "check": ["--budgets", str(_budgets(tmp_path))],
            "compare": [str(write_gate_run(tmp_path / "b", fake_summary())), "--html",
                        str(tmp_path / "c.html")],
            "baseline": ["-o", str(tmp_path / "base.json")]}[command]
    code, out, err = cli(command, str(run_dir), *args)
    assert code == 2, out + err
    line = _one_line(err)
    assert f"{run_dir / 'manifest.json'}: {field}" in line, line


@pytest.mark.parametrize("command", ["check", "compare", "baseline"])
def test_a_summary_of_the_wrong_type_is_one_line(tmp_path: Path, cli, command: str) -> None:  # type: ignore[no-untyped-def]
    doc = fake_summary()
    doc["peaks"]["main_rss"]["bytes"] = "big"
    run_dir = write_gate_run(tmp_path / "a", doc, budgets={"peak_main_rss": "1 GB"})
    args = {"check": [], "compare": [str(write_gate_run(tmp_path / "b", fake_summary())), "--html",
                                     str(tmp_path / "c.html")],
            "baseline": ["-o", str(tmp_path / "base.json")]}[command]
    code, out, err = cli(command, str(run_dir), *args)
    assert code == 2, out + err
    assert "summary.json: peaks.main_rss.bytes" in _one_line(err)


@pytest.mark.parametrize("command", ["report", "check", "compare", "baseline"])
def test_a_report_that_is_a_file_is_one_line_and_kept(tmp_path: Path, cli, command: str) -> None:  # type: ignore[no-untyped-def]
    run_dir = write_run(tmp_path / "a")
    (run_dir / "report").write_text("not the harness's", encoding="utf-8")
    args = {"report": [], "check": ["--budgets", str(_budgets(tmp_path))],
            "compare": [str(write_gate_run(tmp_path / "b", fake_summary())), "--html",
                        str(tmp_path / "c.html")],
            "baseline": ["-o", str(tmp_path / "base.json")]}[command]
    code, out, err = cli(command, str(run_dir), *args)
    assert code == 2, out + err
    assert f"{run_dir / 'report'}" in _one_line(err)
    assert (run_dir / "report").read_text(encoding="utf-8") == "not the harness's"


def _tiny_scenario(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({"name": "tiny", "stages": ["main"],
                                    "workload": {"entry": str(WORKLOADS / "noprobe.py")},
                                    "memray": {"mode": "off"}}), encoding="utf-8")
    return path


@pytest.mark.parametrize("command", ["run", "train", "sweep", "compare"])
def test_reports_naming_a_file_is_one_line(tmp_path: Path, cli, command: str) -> None:  # type: ignore[no-untyped-def]
    blocker = tmp_path / "reports"
    blocker.write_text("a file", encoding="utf-8")
    scenario = str(_tiny_scenario(tmp_path))
    args = {"run": ["run", scenario, "--reports", str(blocker)],
            "train": ["train", scenario, "--reports", str(blocker)],
            "sweep": ["sweep", scenario, "--vary", "seed=0,1", "--reports", str(blocker)],
            "compare": ["compare", str(write_gate_run(tmp_path / "a", fake_summary())),
                        str(write_gate_run(tmp_path / "b", fake_summary())),
                        "--html", str(blocker / "c.html")]}[command]
    code, out, err = cli(*args)
    assert code == 2, out + err
    assert str(blocker) in _one_line(err)
    assert blocker.read_text(encoding="utf-8") == "a file"


# ---- harness check: exit 2 for every malformed input, never 1 -------------------------------


def _truncated_capture(run_dir: Path) -> None:
    truncate_to_half(write_busy_capture(run_dir))


def _truncated_raw_capture(run_dir: Path) -> None:
    truncate_to_half(write_busy_capture(run_dir, compress=False))


def _truncated_events(run_dir: Path) -> None:
    truncate_to_half(run_dir / EVENTS_FILE)


def _bad_event(run_dir: Path) -> None:
    with open(run_dir / EVENTS_FILE, "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"t": None, "kind": "epoch_end", "epoch": "x"}) + "\n")


def _bad_snapshot(run_dir: Path) -> None:
    path = run_dir / "stages/train/snapshots/epoch-2.json"
    path.write_text(json.dumps({**SNAPSHOTS[1], "tensor_bytes": "lots"}), encoding="utf-8")


def _extra_field(run_dir: Path) -> None:
    path = run_dir / "stages/train/samples.csv"
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    lines[3] = lines[3].rstrip("\n") + ",extra\n"
    path.write_text("".join(lines), encoding="utf-8")


def _bad_manifest(run_dir: Path) -> None:
    _break_manifest(run_dir, "stages", [{"name": 5}])


def _bad_summary(run_dir: Path) -> None:
    from harness.report import build_report

    build_report(run_dir, processes=1)
    doc = _summary(run_dir)
    doc["peaks"]["main_rss"]["bytes"] = "big"
    (run_dir / "report" / "summary.json").write_text(json.dumps(doc), encoding="utf-8")


def _report_file(run_dir: Path) -> None:
    (run_dir / "report").write_text("x", encoding="utf-8")


MALFORMED: list[tuple[Callable[[Path], None], str]] = [
    (_truncated_capture, CAPTURE),
    (_truncated_raw_capture, CAPTURE),
    (_truncated_events, EVENTS_FILE),
    (_bad_event, EVENTS_FILE),
    (_bad_snapshot, "stages/train/snapshots/epoch-2.json"),
    (_extra_field, "stages/train/samples.csv"),
    (_bad_manifest, "manifest.json"),
    (_bad_summary, "summary.json"),
    (_report_file, "report"),
]


@pytest.mark.parametrize(("damage", "needle"), MALFORMED, ids=[f.__name__ for f, _ in MALFORMED])
def test_check_exits_2_for_every_malformed_input(tmp_path: Path, cli, damage: Callable[[Path], None],  # type: ignore[no-untyped-def]
                                                 needle: str) -> None:
    run_dir = write_run(tmp_path / "run", legacy_csv=damage is _extra_field)
    damage(run_dir)
    code, out, err = cli("check", str(run_dir), "--budgets", str(_budgets(tmp_path)))
    assert code == 2, out + err
    assert needle in _one_line(err)


# ---- item 11: baseline -o DIR ---------------------------------------------------------------


def test_baseline_into_a_directory_leaves_no_tmp_file(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    run_dir = write_gate_run(tmp_path / "r", fake_summary())
    out = tmp_path / "out"
    out.mkdir()
    code, _, err = cli("baseline", str(run_dir), "-o", str(out))
    assert code == 2 and str(out) in _one_line(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "r"]
    assert list(out.iterdir()) == []
