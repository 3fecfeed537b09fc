"""Damage never reads as clean (issue 22, item 4): every command reads a run the same way.

Each damaged record is tried on each command that reads it, in-process through ``main([...])``:
``report`` marks the run incomplete (exit 0) where it can still write the report, and exits 2
where it cannot; ``check``, ``baseline``, ``compare`` and ``merge`` exit 2. Always one line on
stderr naming the file (and the field), never a traceback, never exit 0 from the gates.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import _synthetic_ranks as sr
import pytest
from _synthetic import write_run

from harness.records import jsonio

EVENTS = "stages/train/events.jsonl"
GATES = ["check", "baseline", "compare"]

# the value written into a field, and what the one line says of it
DEEP = "[" * 100_000 + "]" * 100_000
VALUES = {
    "deep": (DEEP, "nested more than 64 levels deep"),
    "huge_int": ("9" * 5000, "integer of 5000 digits"),
    "inf": ("1e400", "not a finite number (1e400)"),
    "nan": ("NaN", "not a finite number (NaN)"),
}


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err and lines[0].startswith("harness: error: "), err
    return lines[0]


def _summary(run_dir: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((run_dir / "report" / "summary.json").read_text(encoding="utf-8"))
    return doc


def _gate(cli, command: str, run_dir: Path, tmp_path: Path, *extra: str):  # type: ignore[no-untyped-def]
    """``harness COMMAND`` on ``run_dir``; compare puts a clean run beside it."""
    budgets = tmp_path / "budgets.yaml"
    budgets.write_text("name: b\nbudgets: {peak_main_rss: 1 GB}\n", encoding="utf-8")
    clean = tmp_path / "clean" / "run"
    if command == "compare" and not clean.exists():
        write_run(clean.parent)
    args = {"check": ["check", str(run_dir), "--budgets", str(budgets)],
            "baseline": ["baseline", str(run_dir), "-o", str(tmp_path / "base.json")],
            "compare": ["compare", str(run_dir), str(clean),
                        "--html", str(tmp_path / "c.html")],
            "report": ["report", str(run_dir)]}[command]
    code, out, err = cli(*args, *extra)
    if command == "baseline" and code != 0:
        assert not (tmp_path / "base.json").exists()
    return code, out, err


def _put(path: Path, field: str, raw: str) -> None:
    """Write ``raw`` (JSON text, taken as it is) as the value of the dotted ``field`` of the JSON
    file ``path``."""
    doc = json.loads(path.read_text(encoding="utf-8"))
    *parents, last = field.split(".")
    node: Any = doc
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if isinstance(node, list):
        node[int(last)] = "@@here@@"
    else:
        node[last] = "@@here@@"
    path.write_text(json.dumps(doc).replace('"@@here@@"', raw), encoding="utf-8")


def _names(line: str, file: str | Path, field: str, kind: str) -> bool:
    """Whether ``line`` names the file, the field (for a deep value, the first levels of it, as
    far as the line shows) and what is wrong."""
    said = VALUES[kind][1]
    if kind == "deep":
        return f"{file}: {field}.0.0" in line and f"...: {said}" in line
    return f"{file}: {field}: {said}" in line


# ---- events.jsonl missing or empty in a stage that ended ok ---------------------------------


def _no_events(run_dir: Path) -> None:
    (run_dir / EVENTS).unlink()


def _empty_events(run_dir: Path) -> None:
    (run_dir / EVENTS).write_text("", encoding="utf-8")


@pytest.mark.parametrize(("damage", "said"), [(_no_events, "is missing"), (_empty_events, "is empty")],
                         ids=["missing", "empty"])
def test_a_stage_that_ended_ok_without_events_is_incomplete_in_the_report(  # type: ignore[no-untyped-def]
        tmp_path: Path, cli, damage, said: str) -> None:
    run_dir = write_run(tmp_path)
    damage(run_dir)
    code, out, err = cli("report", str(run_dir))
    assert code == 0 and "Traceback" not in err, err
    run = _summary(run_dir)["run"]
    assert run["complete"] is False
    assert f"{EVENTS} {said}" in run["incomplete_reasons"]
    assert "INCOMPLETE" in out


@pytest.mark.parametrize("command", GATES)
@pytest.mark.parametrize(("damage", "said"), [(_no_events, "is missing"), (_empty_events, "is empty")],
                         ids=["missing", "empty"])
@pytest.mark.parametrize("reported", [False, True], ids=["unreported", "reported-before"])
def test_a_stage_that_ended_ok_without_events_is_refused_by_the_gates(  # type: ignore[no-untyped-def]
        tmp_path: Path, cli, command: str, damage, said: str, reported: bool) -> None:
    run_dir = write_run(tmp_path)
    if reported:  # a summary written while the events were whole must not vouch for them
        assert cli("report", str(run_dir))[0] == 0
    damage(run_dir)
    code, out, err = _gate(cli, command, run_dir, tmp_path)
    assert code == 2, out + err
    assert f"{EVENTS} {said}" in _one_line(err)


def test_check_and_compare_go_on_with_allow_incomplete(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    run_dir = write_run(tmp_path)
    _no_events(run_dir)
    for command in ("check", "compare"):
        code, out, err = _gate(cli, command, run_dir, tmp_path, "--allow-incomplete")
        assert code == 0, out + err
        assert f"harness: warning: incomplete record: {EVENTS} is missing" in out


def test_a_bare_run_has_no_events_and_is_whole(tmp_path: Path) -> None:
    from harness.analysis.load import load_run

    run_dir = write_run(tmp_path)
    _break_json(run_dir / "manifest.json", "kind", '"bare"')
    _no_events(run_dir)
    assert not any("events.jsonl" in p for p in load_run(run_dir).problems)


def _break_json(path: Path, field: str, raw: str) -> None:
    _put(path, field, raw)


# ---- a stale summary.json ---------------------------------------------------------------------


@pytest.mark.parametrize("command", GATES)
@pytest.mark.parametrize("line", ["{\"t\": 1007.5, \"kind\": \"epoch_end\", \"epoch\": \"x\"}",
                                  "{not json", "{\"t\": 1e400, \"kind\": \"metric\", \"name\": \"x\"}",
                                  "{\"t\": " + DEEP + "}"],
                         ids=["wrong-type", "not-json", "inf", "deep"])
def test_events_damaged_after_the_report_are_seen(tmp_path: Path, cli, command: str, line: str) -> None:  # type: ignore[no-untyped-def]
    run_dir = write_run(tmp_path)
    assert cli("report", str(run_dir))[0] == 0 and _summary(run_dir)["run"]["complete"]
    with open(run_dir / EVENTS, "a", encoding="utf-8") as fh:
        fh.write(line + "\n")
    code, out, err = _gate(cli, command, run_dir, tmp_path)
    assert code == 2, out + err
    assert f"{EVENTS} line 15" in _one_line(err)
    assert _summary(run_dir)["run"]["complete"] is False  # written again, from the records as they are


def test_a_summary_older_than_its_records_is_written_again(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    # GIVEN a run reported while its main process peaked at 160 MiB
    run_dir = write_run(tmp_path, legacy_csv=True)  # one CSV file to rewrite by hand
    assert cli("report", str(run_dir))[0] == 0
    assert _summary(run_dir)["records"]["files"] == 6
    budgets = tmp_path / "budgets.yaml"
    budgets.write_text("name: b\nbudgets: {peak_main_rss: 200 MiB}\n", encoding="utf-8")
    assert cli("check", str(run_dir), "--budgets", str(budgets))[0] == 0
    # WHEN its samples are replaced by whole ones peaking at 320 MiB
    samples = run_dir / "stages/train/samples.csv"
    lines = samples.read_text(encoding="utf-8").splitlines()
    head, rows = lines[0], [r.split(",") for r in lines[1:]]
    for r in rows:
        r[4] = str(int(r[4]) * 2)
    samples.write_text("\n".join([head, *(",".join(r) for r in rows)]) + "\n", encoding="utf-8")
    # THEN check reads the new figures, not the old summary's
    code, out, err = cli("check", str(run_dir), "--budgets", str(budgets))
    assert code == 1 and "peak_main_rss" in out, out + err
    assert _summary(run_dir)["peaks"]["main_rss"]["bytes"] == 320 * 1024 * 1024


def test_a_copy_that_kept_the_bytes_but_not_the_times_is_not_reported_again(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    import os
    import shutil

    run_dir = write_run(tmp_path / "a")
    assert cli("report", str(run_dir))[0] == 0
    copy = tmp_path / "b" / "run"
    shutil.copytree(run_dir, copy, copy_function=shutil.copyfile)  # new modification times
    for path in (copy / "stages").rglob("*"):
        os.utime(path, ns=(1, 1))
    summary = copy / "report/summary.json"
    before = summary.stat().st_mtime_ns
    code, out, err = _gate(cli, "check", copy, tmp_path)
    assert code == 0, out + err
    assert summary.stat().st_mtime_ns == before  # taken as it was: the records are the same bytes


def test_a_summary_without_a_stamp_is_still_checked_against_the_records(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    # summaries written before the stamp: the records are read again for damage
    run_dir = write_run(tmp_path)
    assert cli("report", str(run_dir))[0] == 0
    doc = _summary(run_dir)
    del doc["records"]
    (run_dir / "report/summary.json").write_text(json.dumps(doc), encoding="utf-8")
    _no_events(run_dir)
    code, out, err = _gate(cli, "check", run_dir, tmp_path)
    assert code == 2 and f"{EVENTS} is missing" in _one_line(err), out + err


# ---- scenario.yaml inside the run ---------------------------------------------------------------


SCENARIOS = {
    "garbage": (b": : :\n\t- [", "scenario.yaml: not valid YAML"),
    "not-utf8": (b"name: caf\xe9\nstages: [train]\n", "scenario.yaml: name: not UTF-8: byte 0xe9"),
    "python-tag": (b"name: !!python/object/apply:os.system ['true']\n",
                   "scenario.yaml: name: tag 'tag:yaml.org,2002:python/object/apply:os.system' is not allowed"),
    "wrong-type": (b"name: synthetic\ntrain: {epochs: two}\n", "scenario.yaml: train.epochs:"),
}


def _write_scenario(run_dir: Path, data: bytes) -> None:
    (run_dir / "scenario.yaml").write_bytes(data)


@pytest.mark.parametrize("case", list(SCENARIOS))
def test_a_damaged_scenario_yaml_marks_the_report_incomplete(tmp_path: Path, cli, case: str) -> None:  # type: ignore[no-untyped-def]
    data, said = SCENARIOS[case]
    run_dir = write_run(tmp_path)
    _write_scenario(run_dir, data)
    code, out, err = cli("report", str(run_dir))
    assert code == 0 and "Traceback" not in err, err
    run = _summary(run_dir)["run"]
    assert run["complete"] is False
    assert any(said in r for r in run["incomplete_reasons"]), run["incomplete_reasons"]


@pytest.mark.parametrize("command", GATES)
@pytest.mark.parametrize("case", list(SCENARIOS))
def test_a_damaged_scenario_yaml_is_refused_by_the_gates(tmp_path: Path, cli, command: str, case: str) -> None:  # type: ignore[no-untyped-def]
    data, said = SCENARIOS[case]
    run_dir = write_run(tmp_path)
    assert cli("report", str(run_dir))[0] == 0
    _write_scenario(run_dir, data)
    code, out, err = _gate(cli, command, run_dir, tmp_path)
    assert code == 2, out + err
    assert said in _one_line(err)


def test_check_reading_the_budgets_of_a_damaged_scenario_yaml_is_one_line(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    run_dir = write_run(tmp_path)
    _write_scenario(run_dir, SCENARIOS["python-tag"][0])
    code, out, err = cli("check", str(run_dir), "--allow-incomplete")
    assert code == 2, out + err
    assert f"{run_dir / 'scenario.yaml'}: name: tag " in _one_line(err)


# ---- JSON past the reader's limits: manifest, summary, events, baseline -----------------------


@pytest.mark.parametrize("command", ["report", *GATES])
@pytest.mark.parametrize("kind", list(VALUES))
@pytest.mark.parametrize("field", ["wall_s", "stages.0.wall_s"])
def test_a_manifest_past_the_limits_is_one_line(tmp_path: Path, cli, command: str, kind: str,  # type: ignore[no-untyped-def]
                                                field: str) -> None:
    raw, said = VALUES[kind]
    run_dir = write_run(tmp_path)
    _put(run_dir / "manifest.json", field, raw)
    code, out, err = _gate(cli, command, run_dir, tmp_path)
    assert code == 2, out + err
    line = _one_line(err)
    assert _names(line, run_dir / "manifest.json", field, kind), line
    assert not (run_dir / "report").exists()  # nothing written from it, Infinity least of all


@pytest.mark.parametrize("kind", list(VALUES))
@pytest.mark.parametrize("node", [0, 1])
def test_merge_of_a_manifest_past_the_limits_is_one_line(tmp_path: Path, cli, kind: str, node: int) -> None:  # type: ignore[no-untyped-def]
    raw, said = VALUES[kind]
    nodes = [sr.write_node_run(tmp_path, 0), sr.write_node_run(tmp_path, 1)]
    path = nodes[node] / ("manifest.json" if node == 0 else "manifest-node1.json")
    _put(path, "wall_s", raw)
    code, out, err = cli("merge", *map(str, nodes), "-o", str(tmp_path / "joined"))
    assert code == 2, out + err
    assert _names(_one_line(err), path, "wall_s", kind), err
    assert not (tmp_path / "joined").exists()


@pytest.mark.parametrize("command", GATES)
@pytest.mark.parametrize("kind", list(VALUES))
def test_a_summary_past_the_limits_is_one_line(tmp_path: Path, cli, command: str, kind: str) -> None:  # type: ignore[no-untyped-def]
    raw, said = VALUES[kind]
    run_dir = write_run(tmp_path)
    assert cli("report", str(run_dir))[0] == 0
    path = run_dir / "report/summary.json"
    _put(path, "durations.wall_s", raw)
    code, out, err = _gate(cli, command, run_dir, tmp_path)
    assert code == 2, out + err
    assert _names(_one_line(err), path, "durations.wall_s", kind), err


@pytest.mark.parametrize("kind", list(VALUES))
def test_events_past_the_limits_mark_the_report_incomplete(tmp_path: Path, cli, kind: str) -> None:  # type: ignore[no-untyped-def]
    raw, said = VALUES[kind]
    run_dir = write_run(tmp_path)
    with open(run_dir / EVENTS, "a", encoding="utf-8") as fh:
        fh.write('{"t": ' + raw + ', "kind": "metric", "name": "x"}\n')
    code, out, err = cli("report", str(run_dir))
    assert code == 0 and "Traceback" not in err, err
    run = _summary(run_dir)["run"]
    assert run["complete"] is False
    assert any(_names(r, f"{EVENTS} line 15", "t", kind) for r in run["incomplete_reasons"]), run

    assert "Infinity" not in (run_dir / "report/summary.json").read_text(encoding="utf-8")


@pytest.mark.parametrize("command", GATES)
@pytest.mark.parametrize("kind", list(VALUES))
def test_events_past_the_limits_are_refused_by_the_gates(tmp_path: Path, cli, command: str, kind: str) -> None:  # type: ignore[no-untyped-def]
    raw, said = VALUES[kind]
    run_dir = write_run(tmp_path)
    with open(run_dir / EVENTS, "a", encoding="utf-8") as fh:
        fh.write('{"t": ' + raw + ', "kind": "metric", "name": "x"}\n')
    code, out, err = _gate(cli, command, run_dir, tmp_path)
    assert code == 2, out + err
    assert _names(_one_line(err), f"{EVENTS} line 15", "t", kind), err


@pytest.mark.parametrize("kind", list(VALUES))
def test_merge_of_events_past_the_limits_reports_the_joined_run_incomplete(  # type: ignore[no-untyped-def]
        tmp_path: Path, cli, kind: str) -> None:
    raw, said = VALUES[kind]
    nodes = [sr.write_node_run(tmp_path, 0), sr.write_node_run(tmp_path, 1)]
    with open(nodes[1] / "stages/train/rank1/events.jsonl", "a", encoding="utf-8") as fh:
        fh.write('{"t": ' + raw + ', "kind": "metric", "name": "x"}\n')
    code, out, err = cli("merge", *map(str, nodes), "-o", str(tmp_path / "joined"))
    assert code == 0 and "Traceback" not in err, out + err
    reasons = _summary(tmp_path / "joined")["run"]["incomplete_reasons"]
    assert any(r.startswith("stages/train/rank1/events.jsonl line ") and said in r for r in reasons), reasons


def test_merge_of_a_rank_without_events_reports_the_joined_run_incomplete(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    nodes = [sr.write_node_run(tmp_path, 0), sr.write_node_run(tmp_path, 1)]
    (nodes[1] / "stages/train/rank1/events.jsonl").unlink()
    code, out, err = cli("merge", *map(str, nodes), "-o", str(tmp_path / "joined"))
    assert code == 0 and "Traceback" not in err, out + err
    assert "stages/train/rank1/events.jsonl is missing" in _summary(tmp_path / "joined")["run"]["incomplete_reasons"]


@pytest.mark.parametrize("kind", list(VALUES))
def test_a_baseline_file_past_the_limits_is_one_line(tmp_path: Path, cli, kind: str) -> None:  # type: ignore[no-untyped-def]
    raw, said = VALUES[kind]
    run_dir = write_run(tmp_path)
    base = tmp_path / "base.json"
    assert cli("baseline", str(run_dir), "-o", str(base))[0] == 0
    _put(base, "metrics.peak_main_rss.values.0", raw)
    code, out, err = cli("check", str(run_dir), "--baseline", str(base))
    assert code == 2, out + err
    assert _names(_one_line(err), base, "metrics.peak_main_rss.values.0", kind), err


# ---- the writer ---------------------------------------------------------------------------------


def test_the_writer_names_a_non_finite_field_instead_of_writing_it() -> None:
    with pytest.raises(jsonio.RecordError, match=r"^summary.json: peaks.main_rss.t: not a finite number"):
        jsonio.dumps({"peaks": {"main_rss": {"bytes": 1, "t": float("inf")}}}, "summary.json")
    assert jsonio.dumps({"a": [1.5]}, "x") == '{"a": [1.5]}'


@pytest.mark.parametrize(("text", "said"), [
    ("[" * 65 + "]" * 65, "0.0.0.0.0.0....: nested more than 64 levels deep"),
    ('{"a": "' + "[" * 100 + '"}', None),  # brackets in a string are text
    ("[" * 64 + "]" * 64, None),
    ('{"n": 99999999999999999999}', None),
    ('{"n": -999999999999999999999}', "n: integer of 21 digits"),
    ('{"n": 1e308}', None),
    ('{"a": [1, {"n": -Infinity}]}', "a.1.n: not a finite number (-Infinity)"),
    ('{"a": 1', "not valid JSON"),
])
def test_the_reader_s_limits(text: str, said: str | None) -> None:
    if said is None:
        jsonio.loads(text, "f.json")
    else:
        with pytest.raises(jsonio.RecordError, match="^" + re.escape("f.json: " + said)):
            jsonio.loads(text, "f.json")


def test_the_pytest_plugin_s_check_refuses_a_damaged_run_in_one_line(tmp_path: Path) -> None:
    from harness.gate.pytest_plugin import Harness

    run_dir = write_run(tmp_path)
    _no_events(run_dir)
    run = Harness(tmp_path / "reports").load(run_dir)
    with pytest.raises(pytest.fail.Exception, match=f"incomplete record: {EVENTS} is missing") as failed:
        run.check({"peak_main_rss": "1 GB"})
    assert len(str(failed.value).splitlines()) == 1


@pytest.mark.parametrize("kind", list(VALUES))
def test_a_snapshot_past_the_limits_is_skipped_and_named(tmp_path: Path, cli, kind: str) -> None:  # type: ignore[no-untyped-def]
    run_dir = write_run(tmp_path)
    path = "stages/train/snapshots/epoch-2.json"
    _put(run_dir / path, "t", VALUES[kind][0])
    code, out, err = cli("report", str(run_dir))
    assert code == 0 and "Traceback" not in err, err
    reasons = _summary(run_dir)["run"]["incomplete_reasons"]
    assert any(_names(r, path, "t", kind) and r.endswith("(skipped)") for r in reasons), reasons


def test_an_events_line_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    from harness.analysis.load import load_run

    run_dir = write_run(tmp_path)
    with open(run_dir / EVENTS, "ab") as fh:
        fh.write(b'{"t": 1008.0, "kind": "metric", "name": "caf\xe9"}\n')
    assert f"{EVENTS} line 15: not UTF-8: byte 0xe9 (unreadable line skipped)" in load_run(run_dir).problems


@pytest.mark.parametrize(("nnodes", "said"), [
    ('"two"', "manifest.json: scenario.distributed.nnodes: expected a whole number"),
    ("1000000000000000000", "node(s) 2, 3, 4, 5, 6, 7, 8, 9, 10, 11 missing"),
])
def test_merge_of_a_node_count_out_of_reason_is_one_line(tmp_path: Path, cli, nnodes: str, said: str) -> None:  # type: ignore[no-untyped-def]
    nodes = [sr.write_node_run(tmp_path, 0), sr.write_node_run(tmp_path, 1)]
    for path in (nodes[0] / "manifest.json", nodes[1] / "manifest-node1.json"):
        _put(path, "scenario.distributed.nnodes", nnodes)
    code, out, err = cli("merge", *map(str, nodes), "-o", str(tmp_path / "joined"))
    assert code == 2, out + err
    assert said in _one_line(err)


@pytest.mark.parametrize("command", ["report", *GATES])
@pytest.mark.parametrize("value", ["1e400", "-inf", "nan"])
def test_a_samples_value_past_a_float_s_range_is_named_not_taken(tmp_path: Path, cli, command: str,  # type: ignore[no-untyped-def]
                                                                 value: str) -> None:
    # a CSV number that reads as inf would otherwise reach summary.json as Infinity
    run_dir = write_run(tmp_path, legacy_csv=True)
    path = run_dir / "stages/train/samples.csv"
    lines = path.read_text(encoding="utf-8").splitlines()
    fields = lines[3].split(",")
    fields[4] = value  # rss
    lines[3] = ",".join(fields)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    code, out, err = _gate(cli, command, run_dir, tmp_path)
    said = "stages/train/samples.csv line 4: rss "
    if command == "report":
        assert code == 0 and "Traceback" not in err, err
        assert any(r.startswith(said) for r in _summary(run_dir)["run"]["incomplete_reasons"])
        assert "Infinity" not in (run_dir / "report/summary.json").read_text(encoding="utf-8")
    else:
        assert code == 2, out + err
        assert said in _one_line(err)


@pytest.mark.parametrize(("table", "text", "said"), [
    ("processes", b"stage,role\n\xff\xfe,1\n", "processes.csv: cannot read: UnicodeDecodeError"),
    ("processes", b"stage,role\ntrain,main\n", "processes.csv: pid: missing"),
    ("processes", b"stage,pid,role,peak_rss,peak_uss,peak_pss\ntrain,1,main,1e400,1,1\n",
     "processes.csv: peak_rss: expected finite numbers"),
    ("processes", b"stage,pid,role,peak_rss,peak_uss,peak_pss\ntrain,1,main,big,1,1\n",
     "processes.csv: peak_rss: expected finite numbers"),
    ("sites", b"stage,capture,process,site,phase,workload_line,bytes_at_peak\ntrain,c,main,s,,,x\n",
     "sites.csv: bytes_at_peak: expected finite numbers"),
])
def test_compare_of_a_damaged_report_table_is_one_line(tmp_path: Path, cli, table: str, text: bytes,  # type: ignore[no-untyped-def]
                                                       said: str) -> None:
    run_dir = write_run(tmp_path)
    assert cli("report", str(run_dir))[0] == 0
    (run_dir / "report/tables" / f"{table}.csv").write_bytes(text)
    code, out, err = _gate(cli, "compare", run_dir, tmp_path)
    assert code == 2, out + err
    assert f"{run_dir / 'report/tables'}/{said}" in _one_line(err)


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_a_metric_gone_nan_is_a_reading_not_damage(tmp_path: Path, cli, value: str) -> None:  # type: ignore[no-untyped-def]
    # GIVEN a workload whose loss went NaN, as the probe writes it
    run_dir = write_run(tmp_path)
    with open(run_dir / EVENTS, "a", encoding="utf-8") as fh:
        fh.write('{"t": 1007.5, "kind": "metric", "name": "loss", "value": ' + value + ', "epoch": 2}\n')
    # THEN the run is whole, the value is not recorded, and summary.json is JSON
    code, out, err = cli("report", str(run_dir))
    assert code == 0, err
    summary = _summary(run_dir)
    assert summary["run"]["complete"] is True, summary["run"]["incomplete_reasons"]
    assert summary["metrics"]["final"]["loss"] == 0.5  # the last finite one
    text = (run_dir / "report/summary.json").read_text(encoding="utf-8")
    assert "NaN" not in text and "Infinity" not in text
    assert _gate(cli, "check", run_dir, tmp_path)[0] == 0
