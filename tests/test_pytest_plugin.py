"""The pytest plugin: a test holds a harness run to budgets or a baseline; a failure shows the table.

Each case runs a small test file through ``pytester``. The fast ones load hand-written run
directories; the slow one runs a workload under the harness for real.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _gate import MiB, fake_summary, write_run
from conftest import WORKLOADS

# runpytest() runs in this process and afterwards drops the modules the inner run imported;
# numpy's C extension cannot be imported twice, so the gates (and pandas) are imported here first.
import harness.gate.check  # noqa: F401,E402
import harness.gate.render  # noqa: F401,E402
import harness.gate.runs  # noqa: F401,E402

pytest_plugins = ["pytester"]


def test_a_budget_that_holds_passes_and_one_that_does_not_fails_with_the_table(
        pytester: pytest.Pytester, tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", fake_summary(main=400 * MiB, growth=(3 * MiB, 3 * MiB)),
                    budgets={"peak_main_rss": "1 GB"})
    pytester.makepyfile(f"""
        def test_holds(harness):
            result = harness.load({str(run)!r}).check({{"peak_tree_rss": "2 GB"}})
            assert result.ok and len(result.rows) == 2   # the scenario's budget and this one

        def test_leaks(harness):
            harness.load({str(run)!r}).check({{"growth_per_epoch": "1 MB",
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
        def test_same(harness):
            harness.load({str(base_run)!r}).check(baseline={str(tmp_path / "b.json")!r}, tolerance="10%")

        def test_bigger(harness):
            harness.load({str(big)!r}).check(baseline={str(tmp_path / "b.json")!r}, tolerance="10%")
    """)
    result = pytester.runpytest()  # the installed pytest11 entry point loads the plugin
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*FAIL*baseline*peak_live_tensor_bytes*backward*"])


def test_bad_budget_in_a_test_is_reported_in_one_line(pytester: pytest.Pytester, tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", fake_summary())
    pytester.makepyfile(f"""
        def test_typo(harness):
            harness.load({str(run)!r}).check({{"peak_main_rss": "lots"}})
    """)
    result = pytester.runpytest()  # the installed pytest11 entry point loads the plugin
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*check(budgets=...): budgets.peak_main_rss: expected a size*"])


@pytest.mark.slow
def test_a_real_run_of_a_leaking_workload_fails_its_growth_budget(pytester: pytest.Pytester) -> None:
    script = WORKLOADS / "leaky.py"
    pytester.makepyfile(f"""
        def test_leak(harness):
            run = harness.run_workload({str(script)!r}, args=["--leak-mb", "12", "--steps", "10"],
                                       memray={{"mode": "off"}})
            run.check({{"growth_per_epoch": "4 MiB"}})
    """)
    result = pytester.runpytest_subprocess()  # the installed entry point loads the plugin
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*FAIL*budget*growth_per_epoch*all*4.00 MiB*"])


def test_the_plugin_is_registered_as_an_entry_point() -> None:
    from importlib.metadata import entry_points

    eps = {ep.name: ep.value for ep in entry_points(group="pytest11")}
    assert eps.get("harness") == "harness.gate.pytest_plugin"
    assert json.dumps(eps)  # nothing else to check: the value is what pytest imports
