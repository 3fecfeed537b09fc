"""The pytest plugin: a test holds a harness run to budgets or a baseline; a failure shows the table,
and a project that never asks for the plugin sees no change.

Each case runs a small test project through ``pytester``. The fast ones load hand-written run
directories or none; the slow one runs a workload under the harness for real.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from _gate import MiB, fake_summary, write_run
from conftest import WORKLOADS

# runpytest() runs in this process and afterwards drops the modules the inner run imported;
# numpy's C extension cannot be imported twice, so the gates (and pandas) are imported here first.
import harness.gate.check
import harness.gate.runs
import harness.render.gate  # noqa: F401

pytest_plugins = ["pytester"]


def test_a_budget_that_holds_passes_and_one_that_does_not_fails_with_the_table(
        pytester: pytest.Pytester, tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", fake_summary(main=400 * MiB, growth=(3 * MiB, 3 * MiB)),
                    budgets={"peak_main_rss": "1 GB"})
    pytester.makepyfile(f"""
        def test_holds(harness_run):
            result = harness_run.load({str(run)!r}).check({{"peak_tree_rss": "2 GB"}})
            assert result.ok and len(result.rows) == 2   # the scenario's budget and this one

        def test_leaks(harness_run):
            harness_run.load({str(run)!r}).check({{"growth_per_epoch": "1 MB",
                                                  "phases": {{"backward": {{"peak_live_tensor_bytes": "1 kB"}}}}}})
    """)
    result = pytester.runpytest()  # the installed pytest11 entry point loads the plugin
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([
        "*FAIL*budget*growth_per_epoch*all*",
        "*FAIL*budget*peak_live_tensor_bytes*backward*",
        "*harness: check FAILED: 2 of 3 limit(s)*",
    ])
    assert "Traceback" not in result.stdout.str()  # the table is the message, not a stack


def test_a_baseline_check_fails_naming_the_phase(pytester: pytest.Pytester, tmp_path: Path) -> None:
    base_run = write_run(tmp_path / "base", fake_summary())
    big = write_run(tmp_path / "big", fake_summary(tensors=300_000 * 64))
    from harness.gate.runs import write_baseline

    write_baseline([base_run], tmp_path / "b.json")
    pytester.makepyfile(f"""
        def test_same(harness_run):
            harness_run.load({str(base_run)!r}).check(baseline={str(tmp_path / "b.json")!r}, tolerance="10%")

        def test_bigger(harness_run):
            harness_run.load({str(big)!r}).check(baseline={str(tmp_path / "b.json")!r}, tolerance="10%")
    """)
    result = pytester.runpytest()  # the installed pytest11 entry point loads the plugin
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*FAIL*baseline*peak_live_tensor_bytes*backward*"])


def test_bad_budget_in_a_test_is_reported_in_one_line(pytester: pytest.Pytester, tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", fake_summary())
    pytester.makepyfile(f"""
        def test_typo(harness_run):
            harness_run.load({str(run)!r}).check({{"peak_main_rss": "lots"}})
    """)
    result = pytester.runpytest()  # the installed pytest11 entry point loads the plugin
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*check(budgets=...): budgets.peak_main_rss: expected a size*"])


@pytest.mark.slow
def test_a_real_run_of_a_leaking_workload_fails_its_growth_budget(pytester: pytest.Pytester) -> None:
    script = WORKLOADS / "leaky.py"
    pytester.makepyfile(f"""
        def test_leak(harness_run):
            run = harness_run.run_workload({str(script)!r}, args=["--leak-mb", "12", "--steps", "10"],
                                           memray={{"mode": "off"}})
            run.check({{"growth_per_epoch": "4 MiB"}})
    """)
    result = pytester.runpytest_subprocess()  # the installed entry point loads the plugin
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*FAIL*budget*growth_per_epoch*all*4.00 MiB*"])


def test_the_plugin_is_registered_as_an_entry_point_named_harness(pytester: pytest.Pytester) -> None:
    from importlib.metadata import entry_points

    import harness.gate.pytest_plugin as plugin

    (ep,) = [ep for ep in entry_points(group="pytest11") if ep.name == "harness"]
    assert ep.load() is plugin
    # pytest loads it by that name without -p, and -p no:harness (the documented opt-out) unloads it
    assert pytester.parseconfig().pluginmanager.get_plugin("harness") is plugin
    assert pytester.parseconfig("-p", "no:harness").pluginmanager.get_plugin("harness") is None


PLAIN = """
    import pytest

    def test_ok():
        assert 1 + 1 == 2

    def test_broken():
        assert [1, 2] == [1, 3]

    @pytest.mark.skip(reason="not today")
    def test_skipped():
        pass
"""


def _comparable(result: pytest.RunResult) -> list[str]:
    """The run's output without what differs between two runs anyway: pytest's own list of the
    installed plugins and the durations."""
    return [re.sub(r"in [\d.]+s", "in Ns", line).strip("= ") for line in result.outlines
            if not line.startswith("plugins:")]


def test_a_project_that_never_names_the_harness_runs_exactly_as_without_the_plugin(
        pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_plain=PLAIN)
    with_plugin = pytester.runpytest("-ra")
    without = pytester.runpytest("-ra", "-p", "no:harness")
    assert re.search(r"^plugins:.*\bharness-", with_plugin.stdout.str(), re.MULTILINE)  # it was loaded
    with_plugin.assert_outcomes(passed=1, failed=1, skipped=1)
    without.assert_outcomes(passed=1, failed=1, skipped=1)
    assert _comparable(with_plugin) == _comparable(without)  # no header line, no other output
    pytester.runpytest("-m", "harness").assert_outcomes(deselected=3)  # its tests carry no marker


def test_a_project_that_never_names_the_harness_has_no_fixture_called_harness(
        pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_plain=PLAIN)
    result = pytester.runpytest("--fixtures")
    assert result.ret == 0
    names = [line.split()[0] for line in result.outlines if re.match(r"\w+( \[\w+ scope\])? -- ", line)]
    assert "tmp_path" in names and "harness_run" in names  # the listing is what this reads
    assert "harness" not in names
    pytester.makepyfile(test_old="def test_old_name(harness):\n    pass\n")
    old = pytester.runpytest("test_old.py")
    old.assert_outcomes(errors=1)
    old.stdout.fnmatch_lines(["*fixture 'harness' not found*", "*available fixtures:*harness_run*"])


def test_a_run_of_the_project_imports_nothing_heavy_for_the_plugin(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_modules="""
        import sys

        def test_nothing_heavy_is_imported():
            heavy = {"torch", "pandas", "numpy", "yaml", "harness.gate.check", "harness.control.runner"}
            assert "harness.gate.pytest_plugin" in sys.modules
            assert not heavy & set(sys.modules)
    """)
    pytester.runpytest_subprocess().assert_outcomes(passed=1)  # a fresh interpreter: this one has all


def test_tests_using_the_fixture_carry_the_harness_marker(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_mixed="""
        def test_memory(harness_run):
            pass

        def test_plain():
            pass
    """)
    only = pytester.runpytest("-v", "--strict-markers", "-m", "harness")
    only.assert_outcomes(passed=1, deselected=1)
    only.stdout.fnmatch_lines(["*::test_memory PASSED*"])
    rest = pytester.runpytest("-v", "-m", "not harness")
    rest.assert_outcomes(passed=1, deselected=1)
    rest.stdout.fnmatch_lines(["*::test_plain PASSED*"])
    pytester.runpytest("--markers").stdout.fnmatch_lines(["@pytest.mark.harness: *harness_run*"])
    pytester.runpytest("--help").stdout.fnmatch_lines([
        "*--harness-reports=DIR*", "*harness_reports (string):*"])


def test_harness_reports_keeps_each_tests_runs_under_its_own_folder(
        pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makepyfile(test_keep="""
        import os
        from pathlib import Path

        def test_where(harness_run, tmp_path):
            assert harness_run.reports == Path(os.environ["EXPECTED"])
    """)
    monkeypatch.setenv("EXPECTED", str(pytester.path / "kept" / "test_keep.py__test_where"))
    given = pytester.runpytest("--harness-reports", "kept")  # relative to where pytest starts
    given.assert_outcomes(passed=1)
    given.stdout.fnmatch_lines([f"harness: harness_run runs kept under {pytester.path / 'kept'}"])

    pytester.makeini("[pytest]\nharness_reports = from-ini\n")
    monkeypatch.setenv("EXPECTED", str(pytester.path / "from-ini" / "test_keep.py__test_where"))
    pytester.runpytest().assert_outcomes(passed=1)
    monkeypatch.setenv("EXPECTED", str(tmp_path / "cli" / "test_keep.py__test_where"))
    pytester.runpytest("--harness-reports", str(tmp_path / "cli")).assert_outcomes(passed=1)  # over the ini

    pytester.makeini("[pytest]\n")
    pytester.makepyfile(test_keep="""
        def test_where(harness_run, tmp_path):
            assert harness_run.reports == tmp_path / "reports"
    """)
    default = pytester.runpytest()
    default.assert_outcomes(passed=1)
    assert "harness:" not in default.stdout.str()  # no header line unless asked
