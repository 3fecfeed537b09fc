"""``harness check``: a run's metrics held to the scenario's budgets and to a baseline.

A budget is a fixed limit. A baseline limit is

    limit = max(mean + |mean|·tolerance,  max_seen + K·stdev,  mean + noise_floor)

over the baseline's runs: the tolerance is relative to the mean; where the runs spread wider
than the tolerance, the limit is their largest value plus K sample standard deviations; the
noise floor keeps a small metric (a few MiB of growth) from failing on noise alone.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from harness.errors import UsageError
from harness.gate import metrics as m
from harness.gate.baseline import Baseline, MetricStats
from harness.records.scenario import BudgetsConfig
from harness.sizes import format_percent, format_size

K_STDEV = 2.0
Status = Literal["pass", "FAIL", "missing", "skipped"]


@dataclass(frozen=True)
class Row:
    """One line of the check's table."""

    source: Literal["budget", "baseline"]
    metric: str  # flat name, e.g. phases.backward.peak_live_tensor_bytes
    limit: int
    measured: int | None
    reference: str  # "budget", or the baseline's mean, spread and run count
    basis: str = ""  # a baseline limit: which term made it, from what (shown under a failure)

    @property
    def status(self) -> Status:
        """A budget on a figure the run does not have fails (``missing``): it cannot be held.
        A baseline figure the run lacks is ``skipped``: per-phase figures depend on the sampler
        catching the phase (USS is read at ``sampling.full_hz`` only), so runs differ in which
        short phases they have."""
        if self.measured is None:
            return "missing" if self.source == "budget" else "skipped"
        return "pass" if self.measured <= self.limit else "FAIL"

    @property
    def margin(self) -> int | None:
        """Headroom left under the limit (negative: by how much it was passed)."""
        return None if self.measured is None else self.limit - self.measured

    @property
    def margin_fraction(self) -> float | None:
        if self.margin is None or self.limit == 0:
            return None
        return self.margin / self.limit


@dataclass
class CheckResult:
    """The rows, and problems with the run itself (it did not finish, say)."""

    rows: list[Row]
    problems: list[str] = field(default_factory=list)

    @property
    def failures(self) -> list[Row]:
        return [r for r in self.rows if r.status in ("FAIL", "missing")]

    @property
    def rows_failures_first(self) -> list[Row]:
        """The rows as a reader wants them: failures (``FAIL``, ``missing``), then the limits that
        hold, then the baseline figures this run lacks; metric order within each."""
        rank = {"FAIL": 0, "missing": 0, "pass": 1, "skipped": 2}
        return sorted(self.rows, key=lambda r: rank[r.status])

    @property
    def ok(self) -> bool:
        return not self.failures and not self.problems

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1


def baseline_limit(stats: MetricStats, tolerance: float, noise_floor: int) -> int:
    """The largest value a run may show for this metric (see the module docstring)."""
    return math.ceil(max(value for _, value in _terms(stats, tolerance, noise_floor)))


def _terms(stats: MetricStats, tolerance: float, noise_floor: int) -> list[tuple[str, float]]:
    mean = stats.mean
    return [("tolerance", mean + abs(mean) * tolerance), ("spread", stats.max + K_STDEV * stats.stdev),
            ("floor", mean + noise_floor)]


def limit_basis(stats: MetricStats, tolerance: float, noise_floor: int, slack: bool = False) -> str:
    """What a baseline limit was made of, for a reader of a failure: the term that gave it, then
    the baseline (mean, spread, runs) and the other two terms, e.g. ``limit = mean 38.0 MiB +
    noise floor 8.00 MiB (baseline of 1 run, spread 0 B; mean + tolerance 10.0%: 41.8 MiB; ...)``."""
    floor_name = "--slack" if slack else "noise floor"
    said = {
        "tolerance": (f"mean {format_size(stats.mean)} + tolerance {format_percent(tolerance)}",
                      f"mean + tolerance {format_percent(tolerance)}"),
        "spread": (f"largest run {format_size(stats.max)} + {K_STDEV:g} × spread "
                   f"{format_size(stats.stdev)}", f"largest + {K_STDEV:g} × spread"),
        "floor": (f"mean {format_size(stats.mean)} + {floor_name} {format_size(noise_floor)}",
                  f"mean + {floor_name} {format_size(noise_floor)}"),
    }
    terms = _terms(stats, tolerance, noise_floor)
    name, _ = max(terms, key=lambda t: t[1])
    others = "; ".join(f"{said[n][1]}: {format_size(v)}" for n, v in terms if n != name)
    runs = f"{stats.n} run{'s' if stats.n != 1 else ''}"
    return (f"limit = {said[name][0]} (baseline of {runs}, spread {format_size(stats.stdev)}; "
            f"{others})")


def same_scenario(baseline: Baseline, scenario: str, run: str) -> None:
    """UsageError when ``baseline`` was recorded from another scenario than the run's: its limits
    would hold the run to figures of a different job (``--any-baseline`` allows it)."""
    if baseline.scenario != scenario:
        raise UsageError(f"{baseline.source}: a baseline of scenario {baseline.scenario!r}, but "
                         f"{run} is a run of {scenario!r}; --any-baseline checks it anyway")


def budget_limits(budgets: BudgetsConfig) -> dict[str, int]:
    """The scenario's budgets by flat metric name (a rank's: ``ranks.<R>.<name>``)."""
    out: dict[str, int] = {}
    for key, value in budgets.model_dump(exclude={"phases", "ranks"}).items():
        if value is not None:
            out[key] = int(value)
    for phase, pb in budgets.phases.items():
        for key, value in pb.model_dump().items():
            if value is not None:
                out[m.phase_name(phase, key)] = int(value)
    for rank, rb in budgets.ranks.items():
        out.update({m.rank_name(rank, k): v for k, v in budget_limits(rb).items()})
    return out


def check_budgets(budgets: BudgetsConfig, measured: Mapping[str, int]) -> list[Row]:
    return [Row("budget", name, limit, measured.get(name), "budget")
            for name, limit in sorted(budget_limits(budgets).items(), key=lambda kv: m.sort_key(kv[0]))]


def check_baseline(baseline: Baseline, measured: Mapping[str, int], tolerance: float,
                   slack: int | None = None) -> list[Row]:
    """One row per baseline metric; ``slack`` replaces every metric's noise floor."""
    rows = []
    for name in sorted(baseline.metrics, key=m.sort_key):
        stats = baseline.metrics[name]
        floor = m.definition(name).noise_floor if slack is None else slack
        spread = f" ± {format_size(stats.stdev)}" if stats.n > 1 else ""
        ref = f"mean {format_size(stats.mean)}{spread}, n={stats.n}"
        rows.append(Row("baseline", name, baseline_limit(stats, tolerance, floor),
                        measured.get(name), ref, limit_basis(stats, tolerance, floor, slack is not None)))
    return rows


def check(measured: Mapping[str, int], *, budgets: BudgetsConfig | None = None,
          baseline: Baseline | None = None, tolerance: float = 0.10, slack: int | None = None,
          run_status: str = "ok") -> CheckResult:
    """Every budget row, then every baseline row; a run that did not finish is a problem."""
    rows: list[Row] = []
    if budgets is not None:
        rows += check_budgets(budgets, measured)
    if baseline is not None:
        rows += check_baseline(baseline, measured, tolerance, slack)
    problems = [] if run_status == "ok" else [f"the run's status is {run_status!r}, not 'ok'"]
    return CheckResult(rows, problems)
