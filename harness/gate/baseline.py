"""Baselines: a scenario's metrics over one or more runs, with provenance (``harness baseline``).

A baseline keeps every run's value of every metric; the spread (sample standard deviation over
the runs) is computed from those when a run is checked against it (see ``check.baseline_limit``).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from harness.errors import UsageError
from harness.gate import metrics as m

if TYPE_CHECKING:
    from harness.analysis.summary_model import Summary

SCHEMA_ID = "harness-baseline"
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class MetricStats:
    """One metric over a baseline's runs (bytes)."""

    values: tuple[int, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def stdev(self) -> float:
        """Sample standard deviation; 0 for a single run."""
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0

    @property
    def max(self) -> int:
        return max(self.values)

    @property
    def min(self) -> int:
        return min(self.values)


@dataclass(frozen=True)
class Baseline:
    """A baseline file, read and checked."""

    scenario: str
    metrics: dict[str, MetricStats]
    runs: tuple[dict[str, Any], ...]
    source: str


def build(summaries: Sequence[Summary], runs: Sequence[Mapping[str, Any]],
          created: Mapping[str, Any]) -> dict[str, Any]:
    """The baseline document for ``summaries`` (one per run) with each run's provenance.

    Raises UsageError when the runs are of different scenarios or did not finish well.
    """
    if not summaries:
        raise UsageError("baseline: no runs given")
    names = {s.run.scenario for s in summaries}
    if len(names) > 1:
        raise UsageError(f"baseline: the runs are of different scenarios ({', '.join(sorted(names))})")
    for s in summaries:
        if not s.run.complete:
            why = (f"run status {s.run.status!r}" if s.run.status != "ok"
                   else (s.run.incomplete_reasons or ["its records are incomplete"])[0])
            raise UsageError(f"{s.run.dir}: {why}: a baseline is recorded from runs that finished "
                             "ok with every record whole")
    values: dict[str, list[int]] = {}
    for s in summaries:
        for name, value in m.for_baseline(m.from_summary(s)).items():
            values.setdefault(name, []).append(int(value))
    ordered = sorted(values, key=m.sort_key)
    doc_metrics: dict[str, Any] = {}
    for name in ordered:
        st = MetricStats(tuple(values[name]))
        doc_metrics[name] = {"values": list(st.values), "n": st.n, "mean": round(st.mean, 1),
                             "stdev": round(st.stdev, 1), "min": st.min, "max": st.max}
    return {
        "schema": SCHEMA_ID,
        "schema_version": SCHEMA_VERSION,
        "scenario": names.pop(),
        "created": dict(created),
        "runs": [dict(r) for r in runs],
        "metrics": doc_metrics,
    }


def from_dict(raw: Any, source: str) -> Baseline:
    """Validate a baseline document; every problem is one UsageError line naming ``source``."""
    if not isinstance(raw, dict) or raw.get("schema") != SCHEMA_ID:
        raise UsageError(f"{source}: not a harness baseline (expected \"schema\": \"{SCHEMA_ID}\")")
    if raw.get("schema_version") != SCHEMA_VERSION:
        raise UsageError(f"{source}: schema_version {raw.get('schema_version')!r} is not "
                         f"{SCHEMA_VERSION}; record the baseline again with harness baseline")
    entries = raw.get("metrics")
    if not isinstance(entries, dict) or not entries:
        raise UsageError(f"{source}: metrics: expected a non-empty mapping of metric -> values")
    out: dict[str, MetricStats] = {}
    for name, entry in entries.items():
        vals = entry.get("values") if isinstance(entry, dict) else None
        if (not isinstance(vals, list) or not vals
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                           and math.isfinite(v) for v in vals)):
            raise UsageError(f"{source}: metrics.{name}.values: expected a non-empty list of numbers")
        out[str(name)] = MetricStats(tuple(int(v) for v in vals))
    runs: list[dict[str, Any]] = raw["runs"] if isinstance(raw.get("runs"), list) else []
    return Baseline(str(raw.get("scenario", "")), out, tuple(runs), source)
