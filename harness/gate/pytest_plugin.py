"""pytest integration: a test runs a scenario (or any workload) under the harness and holds it to
budgets or a baseline; a passed limit fails the test with the check's table as its message.

Loaded through the ``pytest11`` entry point once the project is installed (or with
``-p harness.gate.pytest_plugin``)::

    def test_training_memory(harness):
        run = harness.run("scenarios/smoke.yaml", "train.epochs=1")
        run.check(budgets={"peak_main_rss": "1.2 GB", "phases": {"backward": {"peak_live_tensor_bytes": "1 MB"}}})
        run.check(baseline="bench/baselines/smoke.json", tolerance="25%")

Imports stay inside the functions: pytest loads this module in every session of every project
that has the harness installed, and torch is not something to import for them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from harness.gate.check import CheckResult
    from harness.control.scenario import BudgetsConfig


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
    summary: dict[str, Any]
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
        from harness.gate import check, render, runs
        from harness.control.scenario import BudgetsConfig
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
                             run_status=str(self.summary["run"]["status"]))
        if not result.ok:
            title = f"harness: check {self.run_dir}" + (f" against {baseline}" if baseline else "")
            pytest.fail(render.check_text(result, title), pytrace=False)
        return result


class Harness:
    """The ``harness`` fixture: runs go under ``reports`` (the test's tmp_path by default)."""

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
        from harness.errors import HarnessError

        try:
            sc = scenario_mod.load(Path(scenario), list(overrides))
            run_dir = runner.run_scenario(sc, self.reports, instrumented=True,
                                          console=runner.Console(sys.stdout, quiet=quiet))
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
def harness(tmp_path: Path) -> Harness:
    """Run scenarios under the harness and check them: ``harness.run(...).check(...)``."""
    return Harness(tmp_path / "reports")
