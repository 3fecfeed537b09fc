"""``harness fit``: the largest value of a knob whose peak memory stays under a budget.

A few short runs at two or three values of the knob; each phase's peak modelled as a fixed part
plus a part proportional to the knob (least squares, with its R² and largest residual); the
largest value at which every phase's predicted peak stays under the budget; one run at that value
to verify. Where the model does not hold -- a residual beyond what the metric's noise explains,
or the verification off by more than :data:`VERIFY_TOLERANCE` -- the result says so and chooses
nothing. Everything here is pure: the runs are made by :func:`harness.gate.runs.fit`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from harness.errors import UsageError
from harness.gate import metrics as m
from harness.gate.sweep import Knob, value_of

VERIFY_TOLERANCE = 0.05  # measured against predicted at the chosen value
RESIDUAL_SHARE = 0.02  # a fitted point may miss its line by 2 % of the peak, or the metric's noise
GROWTH = 4  # the second run's value: the first's times this
MAX_RUNS = 4  # two or three to fit, one to verify
# Phases after the workload's stage_end: the interpreter shutting down, not the knob's doing.
AFTER_WORKLOAD = frozenset({"teardown"})
# Every running peak a budget can name (not growth, not the teardown's).
METRICS = tuple(d.key for d in m.RUN_METRICS if d.key != "growth_per_epoch" and d.key not in m.TEARDOWN_KEYS)
# The host footprint: the tree with shared pages counted once where the harness records it,
# else the RSS summed over the tree (which counts a page shared by N processes N times).
DEFAULT_METRIC = "peak_footprint" if "peak_footprint" in METRICS else "peak_tree_rss"


@dataclass(frozen=True)
class Line:
    """One metric's peak against the knob: ``fixed + per_unit * value``, least squares."""

    name: str  # the flat metric name: phases.backward.peak_tree_rss, or the run-wide one
    xs: tuple[float, ...]
    ys: tuple[float, ...]
    fixed: float
    per_unit: float
    r2: float | None  # None where the peaks did not move at all
    residual: float  # the largest |measured - line| over the fitted points, bytes
    tolerance: float  # the residual the metric's noise explains (RESIDUAL_SHARE, noise floor)

    @property
    def checked(self) -> bool:
        """Whether the points could disagree with a line at all (three or more values)."""
        return len(set(self.xs)) > 2

    @property
    def holds(self) -> bool:
        return self.residual <= self.tolerance

    @property
    def phase(self) -> str | None:
        return m.split_name(self.name)[0]

    def at(self, x: float) -> float:
        return self.fixed + self.per_unit * x


def fit_line(name: str, xs: Sequence[float], ys: Sequence[float]) -> Line:
    """Least squares through ``(xs, ys)``; at least two distinct ``xs``."""
    n = len(xs)
    if n != len(ys) or len(set(xs)) < 2:
        raise ValueError("a line needs two or more distinct knob values")
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    per_unit = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    fixed = my - per_unit * mx
    res = [y - (fixed + per_unit * x) for x, y in zip(xs, ys)]
    ss_tot = sum((y - my) ** 2 for y in ys)
    r2 = None if ss_tot == 0 else 1.0 - sum(r * r for r in res) / ss_tot
    tolerance = max(RESIDUAL_SHARE * max(abs(y) for y in ys), float(m.definition(name).noise_floor))
    return Line(name, tuple(float(x) for x in xs), tuple(float(y) for y in ys), fixed, per_unit, r2,
                max(abs(r) for r in res), tolerance)


@dataclass(frozen=True)
class Model:
    """The peak as the largest of its phases' lines (a phase can take the lead as the knob grows);
    the run-wide line where the metric has no phases."""

    run: Line
    phases: tuple[Line, ...]

    @property
    def lines(self) -> tuple[Line, ...]:
        return self.phases or (self.run,)

    @property
    def broken(self) -> list[Line]:
        """The lines the points do not follow (empty: the model holds where it could be checked)."""
        return [ln for ln in self.lines if not ln.holds]

    def predict(self, x: float) -> tuple[float, Line]:
        """The predicted peak at ``x`` and the line (phase) that holds it."""
        best = max(self.lines, key=lambda ln: ln.at(x))
        return best.at(x), best


def build_model(metric: str, points: Sequence[tuple[float, Mapping[str, int]]]) -> Model:
    """Lines through each run's ``metric``, run-wide and per phase, over the runs ``points``
    (knob value, the run's metrics); a phase that some run did not reach is left out."""
    xs = [x for x, _ in points]
    missing = [x for x, got in points if metric not in got]
    if missing:
        raise UsageError(f"fit: the run at {fmt_value(missing[0])} recorded no {metric}")
    run = fit_line(metric, xs, [got[metric] for _, got in points])
    names = set.intersection(*(set(got) for _, got in points))
    lines = []
    for name in sorted(names, key=m.sort_key):
        phase, key = m.split_name(name)
        if phase is None or key != metric or phase in AFTER_WORKLOAD or m.split_rank(name)[0] is not None:
            continue
        lines.append(fit_line(name, xs, [got[name] for _, got in points]))
    return Model(run, tuple(lines))


def largest_under(model: Model, budget: float, lo: float, hi: float | None,
                  integer: bool) -> float | None:
    """The largest value in ``[lo, hi]`` whose predicted peak is at most ``budget`` (an integer
    where the knob is one); None where not even ``lo`` fits. Without ``hi``, a model whose peak
    does not grow gives ``math.inf``."""
    bound = math.inf
    for ln in model.lines:
        if ln.per_unit > 0:
            bound = min(bound, (budget - ln.fixed) / ln.per_unit)
    if hi is not None:
        bound = min(bound, hi)
    if integer and math.isfinite(bound):
        bound = math.floor(bound + 1e-9)
    if bound < lo or model.predict(lo)[0] > budget:
        return None
    return bound


def first_values(current: float, lo: float, hi: float | None, integer: bool) -> tuple[float, float]:
    """The first two runs' values: the scenario's own and :data:`GROWTH` times it (within bounds)."""
    v0 = max(current, lo)
    v1 = v0 * GROWTH if v0 > 0 else (GROWTH if integer else 1.0)
    if hi is not None:
        v0, v1 = min(v0, hi), min(v1, hi)
    if v1 == v0:
        v0 = max(lo, v0 / GROWTH)
    if integer:
        v0, v1 = float(math.floor(v0)), float(math.floor(v1))
    if v1 == v0:
        raise UsageError(f"fit: cannot find two values between --min {fmt_value(lo)} and --max "
                         f"{fmt_value(hi)}; give them with --values")
    return v0, v1


def third_value(model: Model, budget: float, done: Sequence[float], lo: float, hi: float | None,
                integer: bool) -> float | None:
    """Where the third run goes: towards the value the first two runs' line allows, no more than
    halfway there on a log scale past the largest value run so far (safe if the curve bends up);
    None where no value is left that was not run."""
    top = max(done)
    target = largest_under(model, budget, lo, hi, integer)
    if target is None:
        cand = lo
    elif not math.isfinite(target):
        cand = top * GROWTH if top > 0 else 1.0
    elif target > top:
        cand = math.sqrt(top * target) if top > 0 else target / 2
    else:
        cand = target
    if hi is not None:
        cand = min(cand, hi)
    cand = max(cand, lo)
    if integer:
        cand = float(round(cand))
    for c in (cand, cand + 1, cand - 1) if integer else (cand,):
        if c not in done and c >= lo and (hi is None or c <= hi):
            return c
    return None


@dataclass
class Probe:
    """One run of the fit."""

    value: float
    run_dir: str
    status: str
    metrics: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok" and bool(self.metrics)


# How a fit ends: the value chosen and verified, or why none was chosen.
HOLDS = "holds"  # verified within VERIFY_TOLERANCE
OFF = "verification_off"  # the run at the chosen value was off by more than that
NONLINEAR = "nonlinear"  # the fitted runs do not lie on lines
NOTHING_FITS = "nothing_fits"  # even the smallest value is predicted over the budget
NO_EFFECT = "no_effect"  # the peak does not grow measurably with the knob, and nothing bounds it
RUN_FAILED = "run_failed"


@dataclass
class FitResult:
    scenario: str
    knob: str
    metric: str
    budget: int
    integer: bool
    lo: float
    hi: float | None
    probes: list[Probe] = field(default_factory=list)
    model: Model | None = None
    chosen: float | None = None  # None: at most hi, the budget does not bound it (see ``unbounded``)
    unbounded: bool = False  # the budget allows more than --max (or the peak does not grow)
    hi_why: str = "--max"  # where ``hi`` came from
    verification: Probe | None = None
    outcome: str = ""
    reason: str = ""  # one sentence: why this outcome
    out_dir: str = ""
    files: dict[str, str] = field(default_factory=dict)

    @property
    def predicted(self) -> float | None:
        if self.model is None or self.chosen is None:
            return None
        return self.model.predict(self.chosen)[0]

    @property
    def measured(self) -> int | None:
        v = self.verification
        return None if v is None else v.metrics.get(self.metric)

    @property
    def error(self) -> float | None:
        """(measured - predicted) / predicted at the chosen value."""
        p, meas = self.predicted, self.measured
        return None if p is None or meas is None or p == 0 else (meas - p) / p

    @property
    def ok(self) -> bool:
        return self.outcome == HOLDS


def judge_model(result: FitResult) -> None:
    """After the fitting runs: choose the value, or say why none (sets outcome and reason)."""
    model = result.model
    assert model is not None
    broken = model.broken
    if broken:
        worst = max(broken, key=lambda ln: ln.residual / ln.tolerance)
        result.outcome = NONLINEAR
        result.reason = (f"the model does not hold: {m.label(worst.name)} misses its line by "
                         f"{_size(worst.residual)} (more than the {_size(worst.tolerance)} its noise "
                         f"explains) over {result.knob} = "
                         + ", ".join(fmt_value(x) for x in worst.xs)
                         + "; the peak does not grow in proportion to the knob")
        return
    xs = model.run.xs
    grown = max(ln.per_unit * (max(xs) - min(xs)) for ln in model.lines)
    if result.hi is None and all(ln.per_unit * (max(xs) - min(xs)) <= ln.tolerance for ln in model.lines):
        # a slope within the noise would put the answer anywhere: an unbounded knob gets none
        result.outcome = NO_EFFECT
        result.reason = (f"the peak does not grow measurably with {result.knob}: at most "
                         f"{_size(max(grown, 0))} from {fmt_value(min(xs))} to {fmt_value(max(xs))}, "
                         "within the noise; bound it with --max to have the largest value checked")
        return
    chosen = largest_under(model, result.budget, result.lo, result.hi, result.integer)
    if chosen is None:
        pred, ln = model.predict(result.lo)
        result.outcome = NOTHING_FITS
        result.reason = (f"nothing fits: at {result.knob} = {fmt_value(result.lo)} the predicted "
                         f"peak is {_size(pred)} ({m.label(ln.name)}), over the budget")
        return
    if not math.isfinite(chosen):
        result.unbounded = True
        result.outcome = NOTHING_FITS
        result.reason = (f"the peak does not grow with {result.knob}: no value reaches the budget; "
                         "bound it with --max")
        return
    result.unbounded = result.hi is not None and chosen >= result.hi
    result.chosen = chosen


def judge_verification(result: FitResult) -> None:
    v = result.verification
    assert v is not None and result.chosen is not None
    if not v.ok:
        result.outcome = RUN_FAILED
        result.reason = f"the verification run at {fmt_value(result.chosen)} ended {v.status}"
        return
    err = result.error
    if err is None:
        result.outcome = RUN_FAILED
        result.reason = f"the verification run recorded no {result.metric}"
        return
    if abs(err) > VERIFY_TOLERANCE:
        result.outcome = OFF
        result.reason = (f"the model does not hold at {fmt_value(result.chosen)}: measured "
                         f"{_size(result.measured)}, predicted {_size(result.predicted)} "
                         f"({err:+.1%}, beyond ±{VERIFY_TOLERANCE:.0%})")
        return
    result.outcome = HOLDS
    over = (result.measured or 0) > result.budget
    result.reason = (f"measured within {abs(err):.1%} of the prediction"
                     + ("; above the budget, but within the model's error" if over else ""))


def fmt_value(v: float | None) -> str:
    if v is None:
        return "none"
    if math.isinf(v):
        return "unbounded"
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


def _size(n: float | None) -> str:
    from harness.sizes import format_size

    return format_size(n)


def knob_number(knob: Knob, text: str | None, where: str) -> tuple[float, bool]:
    """A knob's value as a number, and whether it is an integer; a value that is not a number is
    one UsageError naming where it came from."""
    if text is None:
        raise UsageError(f"fit: {knob.key} is not in {where}; give the values to run with --values")
    value = value_of(knob, text)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UsageError(f"fit: {knob.key} is {text!r} in {where}: not a number, so nothing grows "
                         "in proportion to it")
    return float(value), isinstance(value, int)


def current_text(knob: Knob, scenario: Mapping[str, Any], args: Sequence[str]) -> str | None:
    """The knob's value in the scenario (a dotted key's), or in the script's arguments."""
    if knob.is_arg:
        for i, a in enumerate(args):
            if a == knob.key and i + 1 < len(args):
                return args[i + 1]
            if a.startswith(knob.key + "="):
                return a.partition("=")[2]
        return None
    node: Any = scenario
    for part in knob.key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise UsageError(f"fit: --knob {knob.key}: not a scenario key")
        node = node[part]
    if isinstance(node, (Mapping, list, tuple)):
        raise UsageError(f"fit: --knob {knob.key}: a section or a list, not one number")
    return None if node is None else str(node)


def to_dict(result: FitResult) -> dict[str, Any]:
    """fit.json: the runs, the lines, the choice and the verification."""
    model = result.model

    def line(ln: Line) -> dict[str, Any]:
        return {"metric": ln.name, "phase": ln.phase, "fixed": round(ln.fixed), "per_unit": ln.per_unit,
                "r2": ln.r2, "residual": round(ln.residual), "tolerance": round(ln.tolerance),
                "checked": ln.checked, "holds": ln.holds}

    def num(v: float | None) -> float | int | None:
        return int(v) if v is not None and result.integer and math.isfinite(v) else v

    def probe(p: Probe) -> dict[str, Any]:
        return {"value": num(p.value), "run_dir": p.run_dir, "status": p.status,
                "peak": p.metrics.get(result.metric)}

    return {
        "scenario": result.scenario, "knob": result.knob, "metric": result.metric,
        "budget": result.budget, "min": num(result.lo), "max": num(result.hi),
        "runs": [probe(p) for p in result.probes],
        "model": None if model is None else {"run": line(model.run),
                                             "phases": [line(ln) for ln in model.phases]},
        "chosen": num(result.chosen), "at_max": result.unbounded, "max_from": result.hi_why,
        "predicted": None if result.predicted is None else round(result.predicted),
        "verification": None if result.verification is None else probe(result.verification),
        "measured": result.measured, "error": result.error,
        "verify_tolerance": VERIFY_TOLERANCE,
        "outcome": result.outcome, "reason": result.reason,
    }
