"""``harness sweep``: a scenario run over a grid of settings, one run after another.

Every grid point is an ordinary run directory; the sweep adds a table (``sweep.csv``) and a plot
(``sweep.png``) of peak memory by process role against each knob, in
``reports/<name>/sweep-<UTC time>/``. The runs share ``data.root``, so the data is unpacked once.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from harness.errors import UsageError
from harness.gate import metrics as m
from harness.records import yaml_safe

if TYPE_CHECKING:
    from harness.analysis.summary_model import Summary

# What the table and the plot show for each run, by process role.
ROLE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("peak_main_rss", "main process RSS"),
    ("peak_tree_rss", "process tree RSS"),
    ("peak_worker_rss", "largest worker's RSS"),
    ("peak_workers_uss", "workers' USS, summed"),
)
ALLOCATION_COLUMNS: tuple[tuple[str, str], ...] = (
    ("peak_live_tensor_bytes", "live tensors in a step (activations)"),
    ("peak_heap", "heap (memray)"),
)


@dataclass(frozen=True)
class Knob:
    key: str  # dotted scenario key
    raw: tuple[str, ...]  # the values as written, each read as YAML by --set

    @property
    def values(self) -> tuple[Any, ...]:
        return tuple(yaml_safe.load_text(v, self.key) for v in self.raw)


@dataclass
class SweepResult:
    scenario: str
    knobs: list[Knob]
    table: pd.DataFrame  # one row per grid point
    out_dir: Path | None = None
    files: dict[str, Path] = field(default_factory=dict)


def _split_values(text: str) -> list[str]:
    """``4,16,[1,2]`` -> ``["4", "16", "[1,2]"]``: commas inside brackets or braces stay."""
    out, depth, cur = [], 0, ""
    for ch in text:
        if ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    out.append(cur.strip())
    return out


def parse_vary(text: str) -> Knob:
    """``train.batch_size=4,16,64`` -> Knob("train.batch_size", ("4", "16", "64"))."""
    key, sep, raw = text.partition("=")
    if not sep or not re.fullmatch(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*", key):
        raise UsageError(f"--vary {text}: expected KEY=V1,V2,... with a dotted key, e.g. "
                         "train.batch_size=4,16,64")
    values = _split_values(raw)
    if not raw or any(v == "" for v in values):
        raise UsageError(f"--vary {key}: expected comma-separated values, got {raw!r}")
    if len(set(values)) != len(values):
        raise UsageError(f"--vary {key}: a value is repeated in {raw!r}")
    for v in values:
        try:  # the scenario's own reader, as each value becomes a --set
            yaml_safe.load_text(v, key)
        except yaml_safe.YamlInputError as exc:
            raise UsageError(exc.format("--vary", lines=False)) from None
    return Knob(key, tuple(values))


def parse_knobs(varies: Sequence[str], sets: Sequence[str]) -> list[Knob]:
    """Every ``--vary``; a key varied twice, or both varied and ``--set``, is refused."""
    knobs = [parse_vary(v) for v in varies]
    if not knobs:
        raise UsageError("sweep: give at least one --vary KEY=V1,V2,...")
    keys = [k.key for k in knobs]
    dup = next((k for k in keys if keys.count(k) > 1), None)
    if dup:
        raise UsageError(f"--vary {dup}: the key is varied twice")
    set_keys = {s.partition("=")[0] for s in sets}
    both = next((k for k in keys if k in set_keys), None)
    if both:
        raise UsageError(f"--vary {both}: the key is also given with --set")
    return knobs


def grid(knobs: Sequence[Knob]) -> list[list[str]]:
    """The grid's points in run order (the first knob varies slowest), each as ``--set`` overrides."""
    return [[f"{k.key}={v}" for k, v in zip(knobs, combo)]
            for combo in itertools.product(*(k.raw for k in knobs))]


def row(point: Sequence[str], knobs: Sequence[Knob], run_dir: str, status: str,
        summary: Summary | None, processes: pd.DataFrame | None) -> dict[str, Any]:
    """One line of the sweep's table: the knobs' values, where the run is, its peaks by role."""
    out: dict[str, Any] = {}
    for k, text in zip(knobs, point):
        out[k.key] = yaml_safe.load_text(text.partition("=")[2], k.key)
    out["status"] = status
    out["run_dir"] = run_dir
    metrics = m.from_summary(summary) if summary is not None else {}
    for key, _ in ROLE_COLUMNS + ALLOCATION_COLUMNS:
        out[key] = metrics.get(key)
    out["peak_worker_rss"] = None
    if processes is not None and not processes.empty:
        workers = processes[processes["role"].astype(str).str.startswith("worker")]
        if not workers.empty:
            out["peak_worker_rss"] = int(workers["peak_rss"].max())
    for phase in ("forward", "backward"):
        out[f"{phase}_live_tensor_bytes"] = metrics.get(m.phase_name(phase, "peak_live_tensor_bytes"))
    out["growth_per_epoch"] = metrics.get("growth_per_epoch")
    out["wall_s"] = summary.durations.wall_s if summary is not None else None
    return out


def table(rows: Sequence[Mapping[str, Any]], knobs: Sequence[Knob]) -> pd.DataFrame:
    cols = [k.key for k in knobs] + ["status", "run_dir"] + [c for c, _ in ROLE_COLUMNS + ALLOCATION_COLUMNS] + [
        "forward_live_tensor_bytes", "backward_live_tensor_bytes", "growth_per_epoch", "wall_s"]
    df = pd.DataFrame(list(rows))
    for c in cols:
        if c not in df.columns:
            df[c] = None
    return df[cols]


RunPoint = Callable[[list[str]], tuple[str, str, "Summary | None", "pd.DataFrame | None"]]


def run_grid(knobs: Sequence[Knob], run_point: RunPoint,
             progress: Callable[[str], None] = lambda s: None,
             on_table: Callable[[pd.DataFrame], None] = lambda t: None) -> pd.DataFrame:
    """Run every grid point with ``run_point`` (overrides -> run dir, status, summary, processes);
    ``on_table`` gets the table so far after each point."""
    points = grid(knobs)
    rows = []
    for i, point in enumerate(points, 1):
        progress(f"harness: sweep {i}/{len(points)}: {' '.join(point)}")
        run_dir, status, summary, procs = run_point(point)
        rows.append(row(point, knobs, run_dir, status, summary, procs))
        on_table(table(rows, knobs))
    return table(rows, knobs)
