"""pytest integration: a test runs a scenario (or any workload) under the harness and holds it to
budgets or a baseline; a passed limit fails the test with the check's table as its message.

Installing the harness registers this plugin (entry point ``pytest11``, name ``harness``) in every
pytest session of that environment, so it stays inert until a test asks for it. Requesting the
``harness_run`` fixture is the opt-in; there is no ``--harness`` switch as well, because a memory
gate that silently passed whenever a flag was forgotten would be a test that cannot fail::

    def test_training_memory(harness_run):
        run = harness_run.run("scenarios/smoke.yaml", "train.epochs=1")
        run.check(budgets={"peak_main_rss": "1.2 GB", "phases": {"backward": {"peak_live_tensor_bytes": "1 MB"}}})
        run.check(baseline="bench/baselines/smoke.json", tolerance="25%")

A project that never names the fixture sees no change: no fixture named ``harness``, no header
line, nothing imported beyond this module; only ``--help``, ``--fixtures`` and ``--markers`` list
what is here. ``-p no:harness`` unloads the plugin altogether.

- Marker ``harness``: set at collection on every test that uses ``harness_run`` (real runs are
  slow), so ``-m "not harness"`` skips them; it selects, it does nothing by itself.
- ``--harness-reports DIR`` (ini ``harness_reports``, relative to the ini file): keep each test's
  runs under ``DIR/<test id>/`` instead of its ``tmp_path``, e.g. for CI to keep the reports.

The fixture used to be called ``harness``; that name was too generic to take in other
projects' sessions. Imports stay inside the functions: torch, pandas and the harness are not
something to import for every project that has the harness installed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from harness.analysis.summary_model import Summary
    from harness.control.scenario import BudgetsConfig
    from harness.gate.check import CheckResult

FIXTURE = "harness_run"
MARKER = "harness"
REPORTS = "harness_reports"  # the option's dest and the ini key


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("harness", "memory harness (tests using the harness_run fixture)")
    group.addoption("--harness-reports", dest=REPORTS, metavar="DIR", default=None,
                    help="keep the runs of each harness_run test under DIR/<test id>/ "
                         "(default: the test's tmp_path)")
    parser.addini(REPORTS, "as --harness-reports; relative to the ini file", default="")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{MARKER}: runs workloads under the memory harness; set on every test using the "
                   f"{FIXTURE} fixture, so -m 'not {MARKER}' skips them")


def pytest_itemcollected(item: pytest.Item) -> None:
    # Before -m deselects (pytest_collection_modifyitems), so the marker can select these tests.
    if FIXTURE in getattr(item, "fixturenames", ()) and item.get_closest_marker(MARKER) is None:
        item.add_marker(MARKER)


def pytest_report_header(config: pytest.Config) -> str | None:
    root = _reports_root(config)
    return None if root is None else f"harness: {FIXTURE} runs kept under {root}"


def _reports_root(config: pytest.Config) -> Path | None:
    """``--harness-reports`` (relative to where pytest started), else the ini key, else none."""
    option = config.getoption(REPORTS)
    if option:
        return config.invocation_params.dir / Path(option).expanduser()
    ini = str(config.getini(REPORTS))
    if ini:
        base = config.inipath.parent if config.inipath is not None else config.rootpath
        return base / Path(ini).expanduser()
    return None


def _test_folder(nodeid: str) -> str:
    """A folder name for a test id: ``tests/test_a.py::test_b[1]`` → ``tests_test_a.py__test_b_1``."""
    return re.sub(r"[^\w.-]", "_", nodeid).strip("_")[:200] or "test"


def _budgets(budgets: Mapping[str, Any] | None, source: str) -> BudgetsConfig | None:
    """A ``budgets:`` mapping written in the test, validated like a scenario's."""
    if budgets is None:
        return None
    from harness.control.scenario import from_dict

    return from_dict({"name": "test", "budgets": dict(budgets)}, source).budgets


@dataclass
class HarnessRun:
    """A finished run: its directory, its summary and the metrics the checks read."""

    run_dir: Path
    summary: Summary
    metrics: dict[str, int] = field(default_factory=dict)

    def check(self, budgets: Mapping[str, Any] | None = None, *, baseline: str | Path | None = None,
              tolerance: str | float = "10%", slack: str | int | None = None,
              scenario_budgets: bool = True) -> CheckResult:
        """Hold the run to ``budgets`` (plus its scenario's own, unless ``scenario_budgets`` is
        false) and to ``baseline``; fail the test with the check's table when any limit is passed.
        """
        from harness.errors import HarnessError
        from harness.sizes import SizeError

        try:
            return self._check(budgets, baseline, tolerance, slack, scenario_budgets)
        except (HarnessError, SizeError) as exc:  # bad input: one line, no stack
            message = f"harness: {exc}"
        pytest.fail(message, pytrace=False)

    def _check(self, budgets: Mapping[str, Any] | None, baseline: str | Path | None,
               tolerance: str | float, slack: str | int | None, scenario_budgets: bool) -> CheckResult:
        from harness.control.scenario import BudgetsConfig
        from harness.gate import check, runs
        from harness.render import gate as render
        from harness.sizes import parse_size, parse_tolerance

        merged: dict[str, Any] = {}
        if scenario_budgets:
            own = runs.run_scenario(self.run_dir).budgets
            merged = own.model_dump(exclude_none=True)
        for key, value in (budgets or {}).items():
            if key == "phases":
                phases = merged.setdefault("phases", {})
                for phase, limits in dict(value).items():
                    phases[phase] = {**phases.get(phase, {}), **dict(limits)}
            else:
                merged[key] = value
        config = _budgets(merged, "check(budgets=...)") or BudgetsConfig()
        base = runs.read_baseline(Path(baseline)) if baseline is not None else None
        result = check.check(self.metrics, budgets=config, baseline=base,
                             tolerance=parse_tolerance(tolerance),
                             slack=None if slack is None else parse_size(slack),
                             run_status=self.summary.run.status)
        if not result.ok:
            title = f"harness: check {self.run_dir}" + (f" against {baseline}" if baseline else "")
            pytest.fail(render.check_text(result, title), pytrace=False)
        return result


class Harness:
    """The ``harness_run`` fixture: runs go under ``reports`` (the test's tmp_path by default)."""

    def __init__(self, reports: Path) -> None:
        self.reports = Path(reports)

    def load(self, run_dir: str | Path) -> HarnessRun:
        """An existing run directory (its report is written if it has none)."""
        from harness.gate import metrics, runs

        doc = runs.summary(Path(run_dir))
        return HarnessRun(Path(run_dir), doc, metrics.from_summary(doc))

    def run(self, scenario: str | Path, *overrides: str, quiet: bool = True) -> HarnessRun:
        """Run a scenario file (with ``--set``-style overrides) and report it; a failed run fails
        the test with the stage's error."""
        import sys

        from harness.control import runner
        from harness.control import scenario as scenario_mod
        from harness.control.console import Console
        from harness.errors import HarnessError

        try:
            sc = scenario_mod.load(Path(scenario), list(overrides))
            run_dir = runner.run_scenario(sc, self.reports, instrumented=True,
                                          console=Console(sys.stdout, quiet=quiet))
        except HarnessError as exc:
            message = f"harness: {exc}"
        else:
            return self.load(run_dir)
        pytest.fail(message, pytrace=False)

    def run_workload(self, entry: str | Path, *overrides: str, args: Sequence[str] = (),
                     name: str = "test", quiet: bool = True, **sections: Any) -> HarnessRun:
        """Run any workload — a script ``path/to/train.py`` (``args``: its ``sys.argv[1:]``) or
        ``package.module:function`` with probe calls — as one stage ``main``; ``sections`` are
        scenario sections (``memray={"mode": "off"}``)."""
        import yaml

        if str(entry).endswith(".py"):
            entry = str(Path(entry).resolve())  # the scenario file lives elsewhere
        workload = {"entry": str(entry), "args": [str(a) for a in args]}
        scenario = {"name": name, "stages": ["main"], "workload": workload, **sections}
        path = self.reports / f"{name}.scenario.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(scenario, sort_keys=False), encoding="utf-8")
        return self.run(path, *overrides, quiet=quiet)


@pytest.fixture
def harness_run(request: pytest.FixtureRequest) -> Harness:
    """Run scenarios or workloads under the memory harness and check them:
    ``harness_run.run(...).check(...)``."""
    root = _reports_root(request.config)
    if root is None:
        return Harness(request.getfixturevalue("tmp_path") / "reports")
    return Harness(root / _test_folder(request.node.nodeid))
