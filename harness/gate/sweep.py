"""``harness sweep``: a scenario run over a grid of settings, one run after another.

Every grid point is an ordinary run directory; the sweep adds a table (``sweep.csv``) and a plot
(``sweep.png``) of peak memory by process role against each knob, in
``reports/<name>/sweep-<UTC time>/``. The runs share ``data.root``, so the data is unpacked once.

A knob is a dotted scenario key (``train.batch_size=4,16``) or one of a script's own arguments
(``--batch=8,16``): its value is put into ``workload.args`` in place of the one there (``--batch 4``
or ``--batch=4``), or added at the end where the script was given none.
"""

from __future__ import annotations

import itertools
import json
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
    ("peak_footprint", "footprint (shared pages once)"),  # empty where the harness records none
    ("peak_main_rss", "main process RSS"),
    ("peak_tree_rss", "RSS summed over processes"),
    ("peak_worker_rss", "largest worker's RSS"),
    ("peak_workers_uss", "workers' USS, summed"),
)
ALLOCATION_COLUMNS: tuple[tuple[str, str], ...] = (
    ("peak_live_tensor_bytes", "live tensors in a step (activations)"),
    ("peak_heap", "heap (memray)"),
)


KEY_PATTERN = r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*"
FLAG_PATTERN = r"--?[A-Za-z0-9][A-Za-z0-9_.-]*"  # a script's option, as it is spelt in its argv
ARGS_KEY = "workload.args"


@dataclass(frozen=True)
class Knob:
    key: str  # dotted scenario key, or a script's flag (``--batch``): see ``is_arg``
    raw: tuple[str, ...]  # the values as written: each read as YAML by --set, or put in argv as is

    @property
    def is_arg(self) -> bool:
        """Whether the knob is one of the script's own arguments (in ``workload.args``)."""
        return self.key.startswith("-")

    @property
    def values(self) -> tuple[Any, ...]:
        return tuple(value_of(self, v) for v in self.raw)


def is_knob(key: str) -> bool:
    """Whether ``key`` can name a knob: a dotted scenario key, or a script's option."""
    return bool(re.fullmatch(KEY_PATTERN, key) or re.fullmatch(FLAG_PATTERN, key))


def value_of(knob: Knob, text: str) -> Any:
    """A knob's value as the table holds it: a scenario key's read as YAML; a script argument's
    too where it reads as a number (``8`` -> 8), else the text as the script gets it."""
    if not knob.is_arg:
        return yaml_safe.load_text(text, knob.key)
    try:
        value = yaml_safe.load_text(text, knob.key)
    except yaml_safe.YamlInputError:
        return text
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else text


def with_arg(args: Sequence[str], flag: str, value: str) -> list[str]:
    """``args`` with ``flag``'s value replaced (``--batch 4`` or ``--batch=4``, every time it is
    given), or ``flag value`` added at the end where it is not there."""
    out = list(args)
    found = False
    i = 0
    while i < len(out):
        if out[i] == flag and i + 1 < len(out):
            out[i + 1] = value
            found = True
            i += 2
            continue
        if out[i].startswith(flag + "="):
            out[i] = f"{flag}={value}"
            found = True
        i += 1
    return out if found else [*out, flag, value]


@dataclass
class SweepResult:
    scenario: str
    knobs: list[Knob]
    table: pd.DataFrame  # one row per grid point
    out_dir: Path | None = None
    files: dict[str, Path] = field(default_factory=dict)


def split_values(text: str) -> list[str]:
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
    """``train.batch_size=4,16,64`` -> Knob("train.batch_size", ("4", "16", "64"));
    ``--batch=8,16`` -> Knob("--batch", ("8", "16")), a script argument."""
    key, sep, raw = text.partition("=")
    if not sep or not is_knob(key):
        raise UsageError(f"--vary {text}: expected KEY=V1,V2,... with a dotted key, e.g. "
                         "train.batch_size=4,16,64, or a script's argument, e.g. --batch=8,16")
    values = split_values(raw)
    if not raw or any(v == "" for v in values):
        raise UsageError(f"--vary {key}: expected comma-separated values, got {raw!r}")
    if len(set(values)) != len(values):
        raise UsageError(f"--vary {key}: a value is repeated in {raw!r}")
    if key.startswith("-"):
        return Knob(key, tuple(values))  # argv text: the script reads it, not the harness
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
    arg = next((k.key for k in knobs if k.is_arg), None)
    if arg is not None and ARGS_KEY in keys:
        raise UsageError(f"--vary {arg}: a script argument, while {ARGS_KEY} is varied whole")
    return knobs


def overrides(knobs: Sequence[Knob], combo: Sequence[str], args: Sequence[str] = ()) -> list[str]:
    """One grid point's ``--set`` overrides: ``key=value`` for each scenario key; the script's
    arguments varied are put into ``args`` (the scenario's ``workload.args``), given whole."""
    out = [f"{k.key}={v}" for k, v in zip(knobs, combo) if not k.is_arg]
    argv = list(args)
    varied = False
    for k, v in zip(knobs, combo):
        if k.is_arg:
            argv = with_arg(argv, k.key, v)
            varied = True
    if varied:  # JSON is YAML: a flow list of strings, each quoted
        out.append(f"{ARGS_KEY}={json.dumps(argv)}")
    return out


def combos(knobs: Sequence[Knob]) -> list[tuple[str, ...]]:
    """The grid's points in run order (the first knob varies slowest), each knob's value as written."""
    return list(itertools.product(*(k.raw for k in knobs)))


def grid(knobs: Sequence[Knob], args: Sequence[str] = ()) -> list[list[str]]:
    """The grid's points in run order (the first knob varies slowest), each as ``--set`` overrides."""
    return [overrides(knobs, combo, args) for combo in combos(knobs)]


def label(knobs: Sequence[Knob], combo: Sequence[str]) -> str:
    """A point as people read it: ``train.batch_size=4 --batch=8``."""
    return " ".join(f"{k.key}={v}" for k, v in zip(knobs, combo))


def row(combo: Sequence[str], knobs: Sequence[Knob], run_dir: str, status: str,
        summary: Summary | None, processes: pd.DataFrame | None) -> dict[str, Any]:
    """One line of the sweep's table: the knobs' values, where the run is, its peaks by role."""
    out: dict[str, Any] = {}
    for k, text in zip(knobs, combo):
        out[k.key] = value_of(k, text)
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
             on_table: Callable[[pd.DataFrame], None] = lambda t: None,
             args: Sequence[str] = ()) -> pd.DataFrame:
    """Run every grid point with ``run_point`` (overrides -> run dir, status, summary, processes);
    ``on_table`` gets the table so far after each point. ``args``: the scenario's
    ``workload.args``, which the script arguments varied are put into."""
    points = combos(knobs)
    rows = []
    for i, combo in enumerate(points, 1):
        progress(f"harness: sweep {i}/{len(points)}: {label(knobs, combo)}")
        run_dir, status, summary, procs = run_point(overrides(knobs, combo, args))
        rows.append(row(combo, knobs, run_dir, status, summary, procs))
        on_table(table(rows, knobs))
    return table(rows, knobs)
