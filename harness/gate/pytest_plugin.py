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
- A stage imports what the test could: the import paths pytest gave this process (rootdir and
  test directories it inserted, ``pythonpath`` ini entries), the test module's directory and the
  rootdir reach the stage as ``PYTHONPATH``, whatever directory pytest was started from.
- A failure says first which limits were passed, in the units they were written in ("24 MB"),
  then for each where: the stage, epoch, step and phase of the peak and the top allocation sites
  of the workload (the report's ``sites.csv``), then the check's table.
- The plugin's own runs are reported without flamegraphs, which a check never reads (the HTML
  report, its tables and timeline are still written; ``harness report RUN_DIR`` draws them).

The fixture used to be called ``harness``; that name was too generic to take in other
projects' sessions. Imports stay inside the functions: torch, pandas and the harness are not
something to import for every project that has the harness installed.
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    import pandas as pd

    from harness.analysis.summary_model import Summary
    from harness.gate.check import CheckResult, Row
    from harness.records.scenario import BudgetsConfig

FIXTURE = "harness_run"
MARKER = "harness"
REPORTS = "harness_reports"  # the option's dest and the ini key
TOP_SITES = 5  # allocation sites a failure lists under each passed limit
HEADLINE_LIMITS = 3  # passed limits named in a failure's first line
DETAILED_LIMITS = 5  # passed limits a failure details (the table below lists them all)


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
    from harness.records.scenario import from_dict

    return from_dict({"name": "test", "budgets": dict(budgets)}, source).budgets


# --- what a stage imports -------------------------------------------------------------------


def _path_key(path: str) -> str:
    return os.path.normcase(os.path.realpath(path))


@functools.cache
def _interpreter_path() -> frozenset[str]:
    """What a fresh interpreter of this environment has on ``sys.path`` without PYTHONPATH (the
    standard library, site-packages and what their .pth files add): a stage has these anyway."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    try:
        done = subprocess.run([sys.executable, "-c", "import json, sys; print(json.dumps(sys.path))"],
                              env=env, capture_output=True, text=True, timeout=60, check=True)
        paths = [str(p) for p in json.loads(done.stdout)]
    except (OSError, subprocess.SubprocessError, json.JSONDecodeError):
        # Only a longer PYTHONPATH follows from this: the environment's own directories.
        paths = [p for p in sys.path if p.startswith((sys.prefix, sys.base_prefix, sys.exec_prefix))]
    return frozenset(_path_key(p) for p in paths if p)


def stage_pythonpath(search_path: Iterable[str], extra: Iterable[str | Path], current: str,
                     interpreter: frozenset[str]) -> str:
    """PYTHONPATH for a stage started from this process: the entries of ``search_path`` (its
    ``sys.path``) a fresh interpreter would lack, then ``extra``, then ``current`` (PYTHONPATH as
    set now); each existing entry once, absolute, in that order.

    ``""`` (the working directory) is left out: ``python -m`` puts the stage's working directory,
    this process's, first on its path anyway.
    """
    out: list[str] = []
    seen = set(interpreter)
    for entry in [*search_path, *map(str, extra), *current.split(os.pathsep)]:
        if not entry or not os.path.exists(entry):
            continue
        key = _path_key(entry)
        if key not in seen:
            seen.add(key)
            out.append(os.path.abspath(entry))
    return os.pathsep.join(out)


# --- limits as written, and where they were passed ------------------------------------------

_UNIT_NAMES = {
    "": "B", "b": "B", "byte": "B", "bytes": "B", "k": "kB", "kb": "kB", "m": "MB", "mb": "MB",
    "g": "GB", "gb": "GB", "t": "TB", "tb": "TB", "ki": "KiB", "kib": "KiB", "mi": "MiB",
    "mib": "MiB", "gi": "GiB", "gib": "GiB", "ti": "TiB", "tib": "TiB",
}
_WRITTEN = re.compile(r"^\s*[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?\s*([A-Za-z]*)\s*$")
_CODE_LINE = re.compile(r"^(?P<func>.*) \((?P<file>.+):(?P<line>\d+)\)$")
# The sampler's per-tick figure behind each process-memory metric.
_TICK_COLUMNS = {"peak_main_rss": "main_rss", "peak_tree_rss": "tree_rss", "peak_workers_uss": "workers_uss",
                 "peak_footprint": "tree_footprint"}


def budget_texts(budgets: Mapping[str, Any] | None) -> dict[str, str]:
    """The limits of a ``budgets:`` mapping written as text, by flat metric name:
    ``{"phases": {"backward": {"peak_main_rss": "1 GB"}}}`` -> ``{"phases.backward.peak_main_rss": "1 GB"}``.

    A bare number (bytes) is left out: it is shown as ``format_size`` writes bytes.
    """
    from harness.gate.metrics import phase_name

    out: dict[str, str] = {}
    for key, value in (budgets or {}).items():
        if key == "phases" and isinstance(value, Mapping):
            for phase, limits in value.items():
                if isinstance(limits, Mapping):
                    out.update({phase_name(str(phase), str(k)): v.strip()
                                for k, v in limits.items() if isinstance(v, str)})
        elif isinstance(value, str):
            out[str(key)] = value.strip()
    return out


def _scenario_budget_texts(path: Path, overrides: Sequence[str]) -> dict[str, str]:
    """The budgets of a scenario file (with its ``--set`` overrides) as written; the file was
    read and validated by ``scenario.load`` just before."""
    from harness.records import scenario as scenario_mod
    from harness.records import yaml_safe

    raw = yaml_safe.load_file(path)
    if not isinstance(raw, dict):
        return {}
    raw = scenario_mod.apply_overrides(raw, list(overrides))
    budgets = raw.get("budgets")
    return budget_texts(budgets) if isinstance(budgets, Mapping) else {}


def written_unit(text: str | None) -> str | None:
    """The unit a limit was written in: ``"24 MB"`` -> ``MB``, ``"1gib"`` -> ``GiB``, ``"1000"`` -> ``B``."""
    m = _WRITTEN.match(text or "")
    return _UNIT_NAMES.get(m[1].lower()) if m else None


def in_unit(n: float, unit: str | None) -> str:
    """``n`` bytes in ``unit`` (three significant digits), or as ``format_size`` writes it."""
    from harness.sizes import UNITS, format_size

    if unit is None:
        return format_size(n)
    if unit == "B":
        return format_size(n, unit="B", digits=0)
    v = abs(n) / UNITS[unit.lower()]
    return format_size(n, unit=unit, digits=0 if v >= 100 else 1 if v >= 10 else 2)


@dataclass(frozen=True)
class Where:
    """Where a figure peaked: as much of stage, epoch, step, phase and capture as is known."""

    stage: str | None = None
    epoch: int | None = None
    step: int | None = None
    phase: str | None = None
    capture: str | None = None
    process: str | None = None
    note: str | None = None

    def text(self) -> str:
        bits = [f"stage {self.stage}" if self.stage else "",
                f"epoch {self.epoch}" if self.epoch else "",  # 0: before or outside epochs
                f"step {self.step}" if self.step is not None else "",
                f"phase {self.phase}" if self.phase else "",
                f"memray capture {self.capture}" if self.capture else "",
                f"{self.process} process" if self.process else "",
                self.note or ""]
        return ", ".join(b for b in bits if b)


def locate(name: str, summary: Summary) -> Where | None:
    """Where the summary says metric ``name`` peaked; None when it does not say."""
    from harness.gate import metrics as m

    phase, key = m.split_name(name)
    if key == "growth_per_epoch":
        growth = list(summary.growth_per_epoch)
        if not growth:
            return None
        g = max(growth, key=lambda g: g.main_rss / max(g.to_epoch - g.from_epoch, 1))
        return Where(stage=g.stage, note=f"from the end of epoch {g.from_epoch} to the end of epoch {g.to_epoch}")
    if phase is None:
        peak = getattr(summary.peaks, key.removeprefix("peak_"), None)
        if peak is None:
            return None
        after = getattr(peak, "after_end_s", None)
        return Where(stage=getattr(peak, "stage", None), epoch=getattr(peak, "epoch", None),
                     step=getattr(peak, "step", None), phase=getattr(peak, "phase", None),
                     capture=getattr(peak, "capture", None), process=getattr(peak, "process", None),
                     note=None if after is None else f"{after:.1f} s after the stage's end")
    column = {d.key: c for d, c in m.PHASE_METRICS}.get(key)
    if column is None:
        return None
    rows = [r for r in summary.phases if r.phase == phase and getattr(r, column) is not None]
    if not rows:
        return None
    row = max(rows, key=lambda r: getattr(r, column))
    return Where(stage=row.stage, epoch=row.epoch, phase=row.phase)


def peak_step(run_dir: Path, key: str, where: Where) -> int | None:
    """The step in which ``key`` peaked in ``where``'s stage, epoch and phase: the traced step
    with the most live tensor bytes, or the sampler's tick with the most memory."""
    from harness.analysis.load import load_run
    from harness.analysis.ticks import ticks
    from harness.records.events import TracedStep

    run = load_run(run_dir)
    stage = next((s for s in run.stages if s.name == where.stage), None)
    if stage is None or where.phase is None:
        return None
    epoch = where.epoch or 0
    if key == "peak_live_tensor_bytes":
        best: tuple[int, int] | None = None
        for ev in stage.events_of(TracedStep):
            tensors = ev.tensors.get(where.phase)
            if ev.epoch == epoch and tensors is not None:
                if best is None or tensors.peak_live_bytes > best[0]:
                    best = (tensors.peak_live_bytes, ev.step)
        return None if best is None else best[1]
    column = _TICK_COLUMNS.get(key)
    if column is None or stage.samples.empty:
        return None
    tk = ticks(stage.samples)
    tk = tk[(tk["epoch"] == epoch) & (tk["phase"] == where.phase)].dropna(subset=[column])
    return None if tk.empty else int(tk.loc[tk[column].idxmax(), "step"])


def _shown_file(path: str) -> str:
    """A workload file relative to the working directory where it lies below it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return path


def _code_line(frame: str) -> str:
    """``train (/abs/pkg/train_fn.py:21)`` -> ``pkg/train_fn.py:21 in train``."""
    m = _CODE_LINE.match(frame)
    return f"{_shown_file(m['file'])}:{m['line']} in {m['func']}" if m else frame


def site_label(row: Mapping[str, Any]) -> tuple[str, str | None]:
    """``("pkg/train_fn.py:21 in train: loss.backward()", "via _engine_run_backward (...)")``: the
    workload's own line where there is one (the report's ``workload_line``) with its code, and
    the innermost Python frame (``site``) where that is elsewhere; else the frame alone."""
    own, site = row.get("workload_line"), str(row.get("site", ""))
    if not isinstance(own, str) or not own:
        return _code_line(site), None
    label = _code_line(own)
    source = row.get("source")
    if isinstance(source, str) and source.strip():
        code = source.strip()
        label += f": {code if len(code) <= 60 else code[:57] + '...'}"
    return label, None if site == own else f"via {site}"


def top_sites(sites: pd.DataFrame, key: str, phase: str | None, where: Where | None,
              top: int = TOP_SITES) -> tuple[str, list[tuple[int, Mapping[str, Any]]]]:
    """The top allocation sites for a passed limit: one capture (the peak's, else the one with
    the most bytes) of the peak's stage and epoch, the metric's processes and phase. Returns a
    header naming what was picked and (bytes, row) pairs, most bytes first.

    ``growth_per_epoch`` ranks by bytes still live when the capture's window closed (leaked);
    everything else by bytes live at the capture's high-water mark.
    """
    from harness.layout import parse_capture_name

    column = "leaked_bytes" if key == "growth_per_epoch" else "bytes_at_peak"
    process = {"peak_workers_uss": "workers", "peak_tree_rss": None, "peak_footprint": None}.get(key, "main")
    if where is not None and where.process:
        process = where.process

    def narrowed(df: pd.DataFrame, keep: Any) -> pd.DataFrame:
        out = df[keep]
        return out if not out.empty else df  # a narrowing that leaves nothing is not applied

    df = sites[sites[column].fillna(0) > 0]
    if process is not None:
        df = df[df["process"] == process]
    if where is not None and where.stage:
        df = narrowed(df, df["stage"] == where.stage)
    if where is not None and where.capture:
        df = narrowed(df, df["capture"] == where.capture)
    elif where is not None and where.epoch:
        df = narrowed(df, [parse_capture_name(str(st), str(c)).epoch == where.epoch
                           for st, c in zip(df["stage"], df["capture"])])
    if phase is not None:
        df = narrowed(df, df["phase"] == phase)
    if df.empty:
        return "", []
    stage, capture = df.groupby(["stage", "capture"], sort=False)[column].sum().idxmax()
    df = df[(df["stage"] == stage) & (df["capture"] == capture)]
    df = df.sort_values(column, ascending=False, kind="stable").head(top)
    what = ("still live when the window closed" if column == "leaked_bytes"
            else "live at the capture's peak")
    procs = "workers" if process == "workers" else "main process" if process == "main" else "all processes"
    header = f"top allocation sites, bytes {what} (memray capture {capture}, {procs}):"
    return header, [(int(r[column]), r) for r in df.to_dict("records")]


@dataclass
class HarnessRun:
    """A finished run: its directory, its summary and the metrics the checks read.

    ``budget_texts``: its scenario's budgets as they were written (flat metric name -> text), so
    that a failure says "24 MB" where the user wrote "24 MB".
    """

    run_dir: Path
    summary: Summary
    metrics: dict[str, int] = field(default_factory=dict)
    budget_texts: dict[str, str] = field(default_factory=dict)

    def check(self, budgets: Mapping[str, Any] | None = None, *, baseline: str | Path | None = None,
              tolerance: str | float = "10%", slack: str | int | None = None,
              scenario_budgets: bool = True, any_baseline: bool = False) -> CheckResult:
        """Hold the run to ``budgets`` (plus its scenario's own, unless ``scenario_budgets`` is
        false) and to ``baseline`` (one of the run's scenario, unless ``any_baseline``); fail the
        test when any limit is passed, saying which, in the units they were written in, where each
        peaked, its top allocation sites and the table.
        """
        from harness.errors import HarnessError
        from harness.sizes import SizeError

        try:
            return self._check(budgets, baseline, tolerance, slack, scenario_budgets, any_baseline)
        except (HarnessError, SizeError) as exc:  # bad input: one line, no stack
            message = f"harness: {exc}"
        pytest.fail(_printable(message), pytrace=False)

    def _check(self, budgets: Mapping[str, Any] | None, baseline: str | Path | None,
               tolerance: str | float, slack: str | int | None, scenario_budgets: bool,
               any_baseline: bool = False) -> CheckResult:
        from harness.gate import check, runs
        from harness.records.scenario import BudgetsConfig
        from harness.sizes import parse_size, parse_tolerance

        # damaged records of a run that says ok pass nothing and fail nothing: one line, as in the CLI
        runs.refuse_damage(self.run_dir, self.summary)
        merged: dict[str, Any] = {}
        texts: dict[str, str] = {}
        if scenario_budgets:
            own = runs.run_scenario(self.run_dir).budgets
            merged = own.model_dump(exclude_none=True)
            texts.update(self.budget_texts)
        for key, value in (budgets or {}).items():
            if key == "phases":
                phases = merged.setdefault("phases", {})
                for phase, limits in dict(value).items():
                    phases[phase] = {**phases.get(phase, {}), **dict(limits)}
            else:
                merged[key] = value
        texts.update(budget_texts(budgets))
        config = _budgets(merged, "check(budgets=...)") or BudgetsConfig()
        base = runs.read_baseline(Path(baseline)) if baseline is not None else None
        if base is not None and not any_baseline:
            check.same_scenario(base, self.summary.run.scenario, str(self.run_dir))
        result = check.check(self.metrics, budgets=config, baseline=base,
                             tolerance=parse_tolerance(tolerance),
                             slack=None if slack is None else parse_size(slack),
                             run_status=self.summary.run.status)
        if not result.ok:
            pytest.fail(_printable(self.failure_text(result, texts, baseline, tolerance)), pytrace=False)
        return result

    def failure_text(self, result: CheckResult, texts: Mapping[str, str], baseline: str | Path | None = None,
                     tolerance: str | float = "10%") -> str:
        """What a failed check says: a first line naming each passed limit (pytest's short
        summary shows it), then each with where it peaked and its top allocation sites, the run's
        report, and the check's table."""
        from harness.errors import HarnessError
        from harness.gate import output as render
        from harness.gate import runs

        failed = result.failures
        head = [_headline(r, texts.get(r.metric)) for r in failed[:HEADLINE_LIMITS]]
        if len(failed) > HEADLINE_LIMITS:
            head.append(f"and {len(failed) - HEADLINE_LIMITS} more")
        lines = ["harness: " + "; ".join(head + list(result.problems))]
        sites: pd.DataFrame | None = None
        memray: str = "off"
        try:  # a run directory the gates could read so far, so an error here is a damaged file
            memray = runs.run_scenario(self.run_dir).memray.mode
            sites = runs.sites(self.run_dir)
        except HarnessError as exc:
            memray = f"{memray}; {exc}"
        for row in failed[:DETAILED_LIMITS]:
            lines += ["", *self._details(row, texts.get(row.metric), sites, tolerance)]
        if len(failed) > DETAILED_LIMITS:
            lines += ["", f"(and {len(failed) - DETAILED_LIMITS} more limit(s) passed: the table lists them)"]
        if failed and sites is None:
            why = "memray.mode is off" if memray == "off" else f"no memray capture (memray.mode: {memray})"
            lines += ["", f"top allocation sites: none recorded, {why}"]
        report = self.run_dir / "report" / "report.html"
        lines += ["", f"report: {report}" if report.is_file() else f"run: {self.run_dir}", ""]
        title = f"harness: check {self.run_dir}" + (f" against {baseline}" if baseline else "")
        lines.append(render.check_text(result, title))
        return "\n".join(lines)

    def _details(self, row: Row, written: str | None, sites: pd.DataFrame | None,
                 tolerance: str | float) -> list[str]:
        from harness.errors import HarnessError
        from harness.gate import metrics as m

        phase, key = m.split_name(row.metric)
        unit = written_unit(written)
        label = f"{key}, {f'phase {phase}' if phase else 'all phases'}"
        if row.source == "budget":
            limit = f"the budget {written or in_unit(row.limit, unit)}"
        else:
            limit = f"the baseline's limit {in_unit(row.limit, unit)} ({row.reference}, tolerance {tolerance})"
        if row.measured is None:
            return [f"{label}: not measured in this run, so {limit} cannot be held"]
        over = in_unit(row.measured - row.limit, unit)
        out = [f"{label}: {in_unit(row.measured, unit)} against {limit}, {over} over"]
        where = locate(row.metric, self.summary)
        if where is not None and where.step is None and where.phase:
            try:
                where = replace(where, step=peak_step(self.run_dir, key, where))
            except HarnessError as exc:  # a damaged record: the rest still says where
                out.append(f"  (no step: {exc})")
        out.append(f"  peak: {where.text()}" if where is not None else "  peak: not located in the summary")
        if sites is None:
            return out  # said once, below all limits
        header, top = top_sites(sites, key, phase, where)
        if not top:
            out.append("  top allocation sites: none in this run's captures for this figure")
            return out
        out.append(f"  {header}")
        width = max(len(in_unit(b, unit)) for b, _ in top)
        for nbytes, site in top:
            extra = [] if phase else [str(site.get("phase"))]
            if site.get("process") != "main":
                extra.append(str(site.get("process")))
            tag = f"  [{', '.join(extra)}]" if extra else ""
            label, via = site_label(site)
            out.append(f"    {in_unit(nbytes, unit):>{width}}  {label}{tag}")
            if via:
                out.append(f"    {'':>{width}}    {via}")
        return out


def _printable(text: str) -> str:
    """A failure's text with the runs' names and messages shown escaped (harness.records.text)."""
    from harness.records.text import printable_lines

    return printable_lines(text)


def _headline(row: Row, written: str | None) -> str:
    """One passed limit in a line: ``peak_live_tensor_bytes 50.7 MB > budget 24 MB``."""
    from harness.gate import metrics as m

    phase, key = m.split_name(row.metric)
    name = key + (f" [{phase}]" if phase else "")
    unit = written_unit(written)
    limit = (f"budget {written or in_unit(row.limit, unit)}" if row.source == "budget"
             else f"baseline limit {in_unit(row.limit, unit)}")
    if row.measured is None:
        return f"{name} not measured ({limit})"
    return f"{name} {in_unit(row.measured, unit)} > {limit}"


class Harness:
    """The ``harness_run`` fixture: runs go under ``reports`` (the test's tmp_path by default).

    ``import_paths``: directories a stage imports from besides this process's own import paths
    (the fixture gives the test module's directory and pytest's rootdir).
    """

    def __init__(self, reports: Path, import_paths: Sequence[str | Path] = ()) -> None:
        self.reports = Path(reports)
        self.import_paths = [Path(p) for p in import_paths]

    def load(self, run_dir: str | Path) -> HarnessRun:
        """An existing run directory (its report is written if it has none)."""
        from harness.gate import metrics, runs

        doc = runs.summary(Path(run_dir))
        return HarnessRun(Path(run_dir), doc, metrics.from_summary(doc))

    def run(self, scenario: str | Path, *overrides: str, quiet: bool = True) -> HarnessRun:
        """Run a scenario file (with ``--set``-style overrides) and report it; a failed run fails
        the test with the stage's error.

        The stage gets this process's import paths (see :func:`stage_pythonpath`) as PYTHONPATH,
        so ``module:function`` workloads import as in the test, from whatever directory pytest
        was started. The report is written without flamegraphs (a check reads none).
        """
        from harness.control import runner
        from harness.control.console import Console
        from harness.errors import HarnessError
        from harness.records import scenario as scenario_mod
        from harness.report import build_report

        try:
            sc = scenario_mod.load(Path(scenario), list(overrides))
            texts = _scenario_budget_texts(Path(scenario), overrides)
            pythonpath = stage_pythonpath(sys.path, self.import_paths, os.environ.get("PYTHONPATH", ""),
                                          _interpreter_path())
            with pytest.MonkeyPatch.context() as env:  # the stage's environment is a copy of ours
                if pythonpath:
                    env.setenv("PYTHONPATH", pythonpath)
                run_dir = runner.run_scenario(sc, self.reports, instrumented=True,
                                              console=Console(sys.stdout, quiet=quiet))
            build_report(run_dir, flamegraphs=False)
            run = self.load(run_dir)
        except HarnessError as exc:
            message = f"harness: {exc}"
        else:
            run.budget_texts = texts
            return run
        pytest.fail(_printable(message), pytrace=False)

    def run_workload(self, entry: str | Path, *overrides: str, args: Sequence[str] = (),
                     name: str = "test", quiet: bool = True, **sections: Any) -> HarnessRun:
        """Run any workload — a script ``path/to/train.py`` (``args``: its ``sys.argv[1:]``) or
        ``package.module:function`` with probe calls — as one stage ``main``; ``sections`` are
        scenario sections (``memray={"mode": "off"}``)."""
        import yaml

        from harness.records.atomic import write_atomic

        if str(entry).endswith(".py"):
            entry = str(Path(entry).resolve())  # the scenario file lives elsewhere
        workload = {"entry": str(entry), "args": [str(a) for a in args]}
        scenario = {"name": name, "stages": ["main"], "workload": workload, **sections}
        path = self.reports / f"{name}.scenario.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, yaml.safe_dump(scenario, sort_keys=False))
        return self.run(path, *overrides, quiet=quiet)


@pytest.fixture
def harness_run(request: pytest.FixtureRequest) -> Harness:
    """Run scenarios or workloads under the memory harness and check them:
    ``harness_run.run(...).check(...)``."""
    config = request.config
    imports = [request.node.path.parent, config.rootpath]
    root = _reports_root(config)
    if root is None:
        return Harness(request.getfixturevalue("tmp_path") / "reports", imports)
    return Harness(root / _test_folder(request.node.nodeid), imports)
