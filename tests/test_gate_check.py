"""harness check and harness baseline: limits, tolerance against spread, exit codes.

Runs here are hand-written run directories (tests/_gate.py): the gates read only the summary,
the scenario and the manifest.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from _gate import MiB, fake_model, fake_summary, write_run

from harness.analysis.summary_model import SCHEMA_FILE, SCHEMA_VERSION, Summary
from harness.errors import UsageError
from harness.gate import metrics as m
from harness.gate.baseline import MetricStats, build, from_dict
from harness.gate.check import Row, baseline_limit, check
from harness.records.scenario import BudgetsConfig


# GIVEN a baseline's values, a tolerance and a noise floor, THEN the limit is
# max(mean + |mean|·tol, max + 2·stdev, mean + floor).
@pytest.mark.parametrize(("values", "tol", "floor", "expected"), [
    ((100,), 0.10, 0, 110),                      # one run: the tolerance alone
    ((100,), 0.0, 0, 100),
    ((100,), 0.10, 50, 150),                     # a small metric: the noise floor wins
    ((100, 100, 100), 0.10, 0, 110),             # no spread
    ((90, 100, 110), 0.10, 0, 130),              # spread wider than the tolerance: 110 + 2·10
    ((99, 100, 101), 0.10, 0, 110),              # spread narrower: the tolerance
    ((90, 100, 110), 0.50, 0, 150),              # a generous tolerance covers the spread
    ((-100,), 0.10, 0, -90),                     # a shrinking metric (growth < 0): |mean|
    ((0,), 0.10, 0, 0),
    ((0,), 0.10, 4 * MiB, 4 * MiB),
    ((1000, 1001), 0.0, 0, 1003),                # ceil(1001 + 2·0.707)
])
def test_baseline_limit(values: tuple[int, ...], tol: float, floor: int, expected: int) -> None:
    assert baseline_limit(MetricStats(values), tol, floor) == expected


@pytest.mark.parametrize(("limit", "measured", "source", "status", "margin"), [
    (100, 90, "budget", "pass", 10),
    (100, 100, "budget", "pass", 0),
    (100, 101, "budget", "FAIL", -1),
    (100, None, "budget", "missing", None),
    (100, None, "baseline", "skipped", None),
    (100, 150, "baseline", "FAIL", -50),
])
def test_row_status_and_margin(limit: int, measured: int | None, source: Any, status: str,
                               margin: int | None) -> None:
    row = Row(source, "peak_main_rss", limit, measured, "")
    assert row.status == status and row.margin == margin


@pytest.mark.parametrize(("statuses", "run_status", "exit_code"), [
    ([], "ok", 0),
    ([("budget", 90)], "ok", 0),
    ([("budget", 90), ("baseline", 90)], "ok", 0),
    ([("baseline", None)], "ok", 0),             # skipped
    ([("budget", 110)], "ok", 1),
    ([("baseline", 110)], "ok", 1),
    ([("budget", None)], "ok", 1),               # a budget that cannot be held
    ([("budget", 90)], "failed", 1),             # the run itself did not finish
])
def test_check_exit_codes(statuses: list[tuple[Any, int | None]], run_status: str, exit_code: int) -> None:
    from harness.gate.check import CheckResult

    rows = [Row(src, "peak_main_rss", 100, measured, "") for src, measured in statuses]
    problems = [] if run_status == "ok" else [f"status {run_status}"]
    assert CheckResult(rows, problems).exit_code == exit_code


def test_metrics_from_a_summary() -> None:
    s = fake_model(main=400 * MiB, growth=(2 * MiB, 4 * MiB))
    got = m.from_summary(s)
    assert got["peak_main_rss"] == 400 * MiB
    assert got["growth_per_epoch"] == 3 * MiB  # mean over the epochs
    assert got["phases.backward.peak_live_tensor_bytes"] == 300_000
    assert got["phases.forward.peak_live_tensor_bytes"] == 210_000
    assert "phases.idle.peak_live_tensor_bytes" not in got  # null in the summary
    assert got["phases.idle.peak_main_rss"] == 400 * MiB
    assert "phases.idle.peak_main_rss" not in m.for_baseline(got)  # transitional phase


def test_growth_per_epoch_is_the_largest_stage_mean() -> None:
    s = fake_summary()
    s["growth_per_epoch"] = [
        {"stage": stage, "from_epoch": e0, "to_epoch": e1, "main_rss": rss, "main_uss": 0,
         "tensor_count": 0, "tensor_bytes": 0}
        for stage, e0, e1, rss in (("a", 1, 2, 10), ("a", 2, 3, 30), ("b", 1, 3, 30))]
    assert m.growth_per_epoch(Summary.model_validate(s)) == 20
    assert m.growth_per_epoch(fake_model(growth=())) is None


def test_budgets_pass_and_fail_naming_metric_and_phase() -> None:
    budgets = BudgetsConfig.model_validate({
        "peak_main_rss": "500 MiB", "growth_per_epoch": "1 MiB",
        "phases": {"backward": {"peak_live_tensor_bytes": "100 kB"},
                   "data": {"peak_workers_uss": "64 MiB"}}})
    result = check(m.from_summary(fake_model(growth=(3 * MiB,))), budgets=budgets)
    by = {(r.metric, r.status) for r in result.rows}
    assert ("peak_main_rss", "pass") in by
    assert ("growth_per_epoch", "FAIL") in by
    assert ("phases.backward.peak_live_tensor_bytes", "FAIL") in by
    assert ("phases.data.peak_workers_uss", "pass") in by
    assert result.exit_code == 1


def _baseline(*summaries: Summary) -> Any:
    doc = build(list(summaries), [{"dir": f"r{i}"} for i in range(len(summaries))], {"at": "now"})
    return from_dict(json.loads(json.dumps(doc)), "b.json")


def test_a_much_larger_batch_fails_against_a_baseline_naming_metrics_and_phases() -> None:
    # GIVEN a baseline at batch size 4 and a run whose activations grew 64x (batch 256)
    base = _baseline(fake_model(), fake_model(main=401 * MiB))
    big = fake_model(tensors=300_000 * 64, main=480 * MiB)
    # WHEN it is checked at a 10% tolerance
    result = check(m.from_summary(big), baseline=base, tolerance=0.10)
    failed = {r.metric for r in result.failures}
    # THEN the tensor bytes of every step phase, and the main RSS, regressed
    assert {"peak_live_tensor_bytes", "peak_main_rss", "phases.backward.peak_live_tensor_bytes",
            "phases.forward.peak_live_tensor_bytes", "phases.backward.peak_main_rss"} <= failed
    assert "peak_tree_rss" not in failed and "peak_heap" not in failed
    # AND the same scenario again passes against its own baseline
    assert check(m.from_summary(fake_model(main=402 * MiB)), baseline=base, tolerance=0.10).ok


def test_spread_in_the_baseline_widens_the_limit() -> None:
    # Three noisy runs: 400, 440, 480 MiB; a run at 520 MiB is 21% above the mean of 440 but
    # within max + 2·stdev (480 + 80), so it holds at 10%; at 620 MiB it does not.
    base = _baseline(*(fake_model(main=v * MiB) for v in (400, 440, 480)))
    ok = check(m.from_summary(fake_model(main=520 * MiB)), baseline=base, tolerance=0.10)
    assert next(r for r in ok.rows if r.metric == "peak_main_rss").status == "pass"
    bad = check(m.from_summary(fake_model(main=620 * MiB)), baseline=base, tolerance=0.10)
    assert next(r for r in bad.rows if r.metric == "peak_main_rss").status == "FAIL"


def test_baseline_refuses_mixed_scenarios_and_failed_runs() -> None:
    with pytest.raises(UsageError, match="different scenarios"):
        build([fake_model(scenario="a"), fake_model(scenario="b")], [{}, {}], {})
    with pytest.raises(UsageError, match="finished ok"):
        build([fake_model(status="failed")], [{}], {})


@pytest.mark.parametrize(("doc", "message"), [
    ([], "not a harness baseline"),
    ({"schema": "other"}, "not a harness baseline"),
    ({"schema": "harness-baseline", "schema_version": 9}, "schema_version 9"),
    ({"schema": "harness-baseline", "schema_version": 1, "metrics": {}}, "non-empty mapping"),
    ({"schema": "harness-baseline", "schema_version": 1, "metrics": {"x": {"values": ["1"]}}},
     "metrics.x.values"),
    ({"schema": "harness-baseline", "schema_version": 1, "metrics": {"x": 5}}, "metrics.x.values"),
])
def test_bad_baseline_files(doc: Any, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        from_dict(doc, "b.json")


# ---- the commands, in-process ------------------------------------------------------------


def test_baseline_then_check_passes_and_a_regression_fails(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    a1 = write_run(tmp_path / "a1", fake_summary())
    a2 = write_run(tmp_path / "a2", fake_summary(main=404 * MiB))
    base = tmp_path / "base.json"
    code, out, err = cli("baseline", str(a1), str(a2), "-o", str(base))
    assert code == 0, err
    doc = json.loads(base.read_text())
    assert doc["scenario"] == "fake" and [r["dir"] for r in doc["runs"]] == [str(a1), str(a2)]
    assert doc["metrics"]["peak_main_rss"]["values"] == [400 * MiB, 404 * MiB]
    assert doc["runs"][0]["git_revision"] == "abc" and "at" in doc["created"]

    same = write_run(tmp_path / "same", fake_summary(main=402 * MiB))
    code, out, err = cli("check", str(same), "--baseline", str(base), "--tolerance", "10%")
    assert code == 0, out + err
    assert "check passed" in out

    big = write_run(tmp_path / "big", fake_summary(tensors=300_000 * 64))
    code, out, err = cli("check", str(big), "--baseline", str(base))
    assert code == 1
    fail_lines = [line for line in out.splitlines() if line.startswith("FAIL")]
    assert any("peak_live_tensor_bytes" in line and "backward" in line for line in fail_lines), out
    assert "check FAILED" in out and "peak_live_tensor_bytes [backward]" in out


def _run_with_budgets(tmp_path: Path, budgets: dict[str, Any], **kw: Any) -> Path:
    return write_run(tmp_path / "run", fake_summary(**kw), budgets=budgets)


@pytest.mark.parametrize(("args", "budgets", "kw", "exit_code", "needle"), [
    ([], {"peak_main_rss": "1 GB"}, {}, 0, "check passed"),
    ([], {"peak_main_rss": "100 MB"}, {}, 1, "peak_main_rss"),
    ([], {"growth_per_epoch": "1 MB"}, {"growth": (3 * MiB, 3 * MiB)}, 1, "growth_per_epoch"),
    ([], {"peak_heap": "1 GB"}, {"heap": None}, 1, "not measured"),
    ([], {"peak_main_rss": "1 GB"}, {"status": "failed"}, 1, "status is 'failed'"),
    ([], {}, {}, 2, "nothing to check"),
    (["--tolerance", "ten"], {"peak_main_rss": "1 GB"}, {}, 2, "expected a tolerance"),
    (["--tolerance", "10"], {"peak_main_rss": "1 GB"}, {}, 2, "ambiguous"),
    (["--slack", "lots"], {"peak_main_rss": "1 GB"}, {}, 2, "expected a size"),
    (["--baseline", "/nonexistent/b.json"], {}, {}, 2, "no such file"),
])
def test_check_exit_codes_from_the_command(tmp_path: Path, cli, args: list[str],  # type: ignore[no-untyped-def]
                                          budgets: dict[str, Any], kw: dict[str, Any],
                                          exit_code: int, needle: str) -> None:
    run = _run_with_budgets(tmp_path, budgets, **kw)
    code, out, err = cli("check", str(run), *args)
    assert code == exit_code, out + err
    assert needle in out + err
    if exit_code == 2:
        assert err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize(("make", "needle"), [
    (lambda p: p, "not a run directory"),                                  # empty directory
    (lambda p: p / "missing", "not a run directory"),
])
def test_check_of_a_non_run_directory_is_bad_input(tmp_path: Path, cli, make: Any, needle: str) -> None:  # type: ignore[no-untyped-def]
    code, out, err = cli("check", str(make(tmp_path)))
    assert code == 2 and needle in err and err.count("\n") == 1


def test_check_with_budgets_from_another_scenario(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    run = _run_with_budgets(tmp_path, {})
    sc = tmp_path / "budgets.yaml"
    sc.write_text("name: x\nbudgets: {phases: {backward: {peak_live_tensor_bytes: 100 kB}}}\n")
    code, out, err = cli("check", str(run), "--budgets", str(sc))
    assert code == 1 and "backward" in out
    sc.write_text("name: x\nbudgets: {phases: {backwards: {}}}\n")
    code, out, err = cli("check", str(run), "--budgets", str(sc))
    assert code == 2 and f"{sc}: budgets.phases: unknown phase" in err


def test_baseline_of_a_corrupt_summary_is_bad_input(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    run = write_run(tmp_path / "r", fake_summary())
    (run / "report/summary.json").write_text("{not json")
    code, out, err = cli("baseline", str(run), "-o", str(tmp_path / "b.json"))
    assert code == 2 and "not valid JSON" in err


@pytest.mark.parametrize("kw", [{}, {"heap": None, "status": "failed"}, {"growth": ()}])
def test_the_hand_written_summaries_match_the_summary_schema(kw: dict[str, Any]) -> None:
    # The gates are tested on fake summaries: they must stay the shape the report writes.
    import jsonschema

    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.validate(fake_summary(**kw), schema)
    assert fake_model(**kw).schema_version == SCHEMA_VERSION  # and the gates' model reads them
