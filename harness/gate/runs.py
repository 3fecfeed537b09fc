"""The file side of the gates: a run's summary (reported first if need be), its budgets, baselines."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from pydantic import ValidationError

from harness.analysis import stamp
from harness.analysis.load import load_run, read_manifest
from harness.analysis.summary_model import SCHEMA_ID, SCHEMA_VERSION, RecordsStamp, Summary
from harness.control import rundir
from harness.errors import HarnessError, ScenarioError, UsageError
from harness.gate import baseline as baseline_mod
from harness.layout import REPORT_DIR
from harness.records import jsonio, yaml_safe
from harness.records.atomic import write_atomic
from harness.records.manifest import Manifest, ScenarioEcho
from harness.records.scenario import BudgetsConfig, Scenario, from_dict
from harness.records.text import printable, printable_lines
from harness.records.vocab import Status

if TYPE_CHECKING:
    from harness.gate.fit import FitResult
    from harness.gate.sweep import Knob, SweepResult

SUMMARY = Path("report") / "summary.json"
ARGS_WHERE = "workload.args"


def _read_json(path: Path) -> Any:
    """A JSON file through the one bounded reader: any fault is one RecordError line (exit 2)."""
    return jsonio.read(path)


def _stale(run_dir: Path, data: Any) -> bool:
    """Whether the records changed since this summary was built from them (see
    harness.analysis.stamp); a summary written before it recorded them cannot say: not stale,
    and the gates read the records again for damage (:func:`damage`)."""
    records = data.get("records") if isinstance(data, dict) else None
    if records is None:
        return False
    try:
        recorded = RecordsStamp.model_validate(records, strict=True)
    except ValidationError:
        return False  # the summary's own fault: named when it is read (Summary, below)
    return not stamp.matches(run_dir, recorded)


def summary(run_dir: Path, *, refresh: bool = False) -> Summary:
    """``RUN_DIR/report/summary.json``, writing the report first when it is absent, when the run's
    records changed since it was written (or ``refresh``).

    A file that is not a summary of this schema version, or holds a field of the wrong type, is one
    UsageError naming the file and the first field at fault.
    """
    run_dir = Path(run_dir)
    read_manifest(run_dir)  # a run directory, with a manifest of the types it should have
    check_report_dir(run_dir)
    path = run_dir / SUMMARY
    data = None if refresh or not path.is_file() else _read_json(path)
    if data is None or _stale(run_dir, data):
        from harness.report import build_report

        build_report(run_dir)
        data = _read_json(path)
    if not isinstance(data, dict) or data.get("schema") != SCHEMA_ID:
        raise UsageError(f"{path}: not a harness summary")
    if data.get("schema_version") != SCHEMA_VERSION:
        raise UsageError(f"{path}: summary schema_version {data.get('schema_version')!r} is not "
                         f"{SCHEMA_VERSION}, the one this harness reads; run harness report again")
    try:  # strict: a number written as a string is as wrong as the schema says
        return Summary.model_validate(data, strict=True)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        more = exc.error_count() - 1
        raise UsageError(f"{path}: {where}: {first['msg']}"
                         + (f" (and {more} more)" if more else "")) from None


def check_report_dir(run_dir: Path) -> None:
    """UsageError when ``RUN_DIR/report`` is there but not a folder: it is not ours to replace."""
    path = Path(run_dir) / REPORT_DIR
    if path.exists() and not path.is_dir():
        raise UsageError(f"{path}: not a folder, so the report cannot be written there "
                         "(it is left as it is: move it away)")


def refuse_damage(run_dir: Path, summary_doc: Summary, allowed_by: str | None = None,
                  allow: bool = False) -> list[str]:
    """The damage in a run's records (:func:`damage`); a run that says it finished ``ok`` with any
    is refused in one UsageError naming the first damaged file, unless ``allow``. ``allowed_by``
    says how to go on anyway (``--allow-incomplete checks it on what could be read``)."""
    found = damage(run_dir, summary_doc)
    if found and summary_doc.run.status == "ok" and not allow:
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise UsageError(f"{run_dir}: incomplete record: {found[0]}{more}"
                         + (f"; {allowed_by}" if allowed_by else ""))
    return found


def damage(run_dir: Path, summary_doc: Summary) -> list[str]:
    """What is damaged in a run's records, each naming its file: as they are now (a file may have
    been cut since the report was written) and as the report found them (captures memray read
    only in part)."""
    found = load_run(Path(run_dir)).damage() + list(summary_doc.problems)
    found += [c.error for c in summary_doc.captures if c.error]
    return list(dict.fromkeys(found))


def make_dir(path: Path, what: str) -> Path:
    """``mkdir -p path``; one UsageError naming the file in the way, or why it failed."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            raise UsageError(f"{blocker}: a file, not a folder: {what} cannot go there") from None
        raise UsageError(f"{path}: cannot create {what}: {exc.strerror}") from None
    return path


def new_dir(path: Path, what: str) -> Path:
    """A new folder at ``path`` (or beside it, ``path-<6 hex>``, where something is there already:
    a folder or a link planted at a name that is easy to guess is never written into)."""
    import secrets

    make_dir(path.parent, what)
    candidate = path
    while True:
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            candidate = path.with_name(f"{path.name}-{secrets.token_hex(3)}")
        except OSError as exc:
            raise UsageError(f"{candidate}: cannot create {what}: {exc.strerror}") from None


def _read_yaml(path: Path, error: type[HarnessError], missing: str) -> Any:
    """Safe-load a YAML file; a missing or unreadable one raises ``error`` in one line."""
    try:
        return yaml_safe.load_file(path)  # the scenario reader: no repeated keys, aliases capped
    except FileNotFoundError:
        raise error(f"{path}: {missing}") from None
    except yaml_safe.YamlInputError as exc:
        raise error(exc.format(str(path))) from None
    except OSError as exc:
        raise error(f"{path}: cannot read: {exc.__class__.__name__}") from None


def run_scenario(run_dir: Path) -> Scenario:
    """The resolved scenario a run was made with (its ``scenario.yaml``)."""
    path = Path(run_dir) / rundir.SCENARIO
    raw = _read_yaml(path, UsageError, "no such file (not a run directory?)")
    return from_dict(raw, str(path))


def budgets_from(path: Path) -> BudgetsConfig:
    """The ``budgets:`` section of a scenario file (validated like any scenario key).

    Its data need not be reachable: only the budgets are read.
    """
    path = Path(path)
    raw = _read_yaml(path, ScenarioError, "no such scenario file")
    return from_dict(raw, str(path), path.resolve().parent).budgets


def read_baseline(path: Path) -> baseline_mod.Baseline:
    return baseline_mod.from_dict(_read_json(Path(path)), str(path))


def _shown_path(path: Path) -> str:
    """Relative to the current directory where it lies below it: baselines get committed."""
    p = Path(path).resolve()
    try:
        return str(p.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p)


def run_provenance(run_dir: Path, summary_doc: Summary) -> dict[str, Any]:
    """What a baseline keeps about each run it was recorded from."""
    manifest = read_manifest(Path(run_dir))
    run = summary_doc.run
    return {
        "dir": _shown_path(run_dir),
        "status": run.status,
        "started": run.started,
        "wall_s": manifest.wall_s,
        "git_revision": run.git_revision,  # the harness checkout's
        # the workload's file, sha256 and git revision
        "workload": manifest.workload.model_dump(mode="json") if manifest.workload else None,
        "harness_version": run.harness_version,
        "host": run.host,
        "cpu_count": manifest.cpu_count,
        "versions": manifest.versions,
        "command_line": manifest.command_line,
        "scenario": manifest.scenario.as_dict() if manifest.scenario else None,
    }


def write_baseline(run_dirs: list[Path], out: Path) -> dict[str, Any]:
    """Record a baseline from ``run_dirs`` into ``out`` (written whole, atomically)."""
    for d in run_dirs:
        # The manifest is the record of how the run ended; a summary.json can be older than it.
        status = read_manifest(Path(d)).status
        if status != Status.OK:
            raise UsageError(f"{d}: run status {str(status)!r}: a baseline is recorded from runs "
                             "that finished ok")
    summaries = [summary(d) for d in run_dirs]
    for d, s in zip(run_dirs, summaries):
        refuse_damage(d, s, "a baseline is recorded from runs with every record whole")
    prov = [run_provenance(d, s) for d, s in zip(run_dirs, summaries)]
    created = {**{k: v for k, v in rundir.provenance().items()
                  if k in ("host", "git_revision", "command_line")},
               "at": rundir.now_iso()}
    doc = baseline_mod.build(summaries, prov, created)
    out = Path(out)
    make_dir(out.parent, "the baseline")
    write_atomic(out, jsonio.dumps(doc, str(out), indent=1) + "\n")
    return doc



def manifest(run_dir: Path) -> Manifest:
    """A run's manifest, as ``harness compare`` reads its scenario and versions; the resolved
    scenario from ``scenario.yaml`` where the manifest holds none."""
    doc = read_manifest(Path(run_dir))
    path = Path(run_dir) / rundir.SCENARIO
    if doc.scenario is None and path.is_file():
        raw = _read_yaml(path, UsageError, "no such file")
        if isinstance(raw, dict):
            doc = doc.model_copy(update={"scenario": ScenarioEcho.model_construct(**raw)})
    return doc


def report_table(run_dir: Path, name: str) -> pd.DataFrame | None:
    """``report/tables/<name>.csv`` (processes, sites) or None when the report has none."""
    path = Path(run_dir) / "report" / "tables" / f"{name}.csv"
    if not path.is_file():
        return None
    try:
        df = pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError) as exc:
        raise UsageError(f"{path}: cannot read: {str(exc).strip()}") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise UsageError(f"{path}: cannot read: {type(exc).__name__}") from None
    _check_table(df, path, *_TABLE_COLUMNS.get(name, ((), ())))
    return df


# The columns compare reads of each report table: text, and numbers.
_TABLE_COLUMNS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "processes": (("stage", "role"), ("pid", "peak_rss", "peak_uss", "peak_pss")),
    "sites": (("stage", "capture", "process", "site", "phase", "workload_line"), ("bytes_at_peak",)),
}


def _check_table(df: pd.DataFrame, path: Path, text: tuple[str, ...], numbers: tuple[str, ...]) -> None:
    """A report table with the columns compare reads, its numbers finite numbers (or empty): else
    one RecordError naming the column (the report's tables are written again by harness report)."""
    for column in (*text, *numbers):
        if column not in df.columns:
            raise jsonio.RecordError(str(path), column, "missing; harness report writes the table again")
    for column in numbers:
        values = pd.to_numeric(df[column], errors="coerce")
        if (values.isna() & df[column].notna()).any() or (values.abs() == float("inf")).any():
            raise jsonio.RecordError(str(path), column, "expected finite numbers; harness report "
                                     "writes the table again")


def processes(run_dir: Path) -> pd.DataFrame:
    """The run's process table: the report's CSV, else computed from the samples."""
    df = report_table(run_dir, "processes")
    if df is not None:
        return df
    from harness.analysis import load_run
    from harness.analysis.tables import process_table

    return process_table(load_run(Path(run_dir)))


def sites(run_dir: Path) -> pd.DataFrame | None:
    """The report's top allocation sites, or None when the run has no memray captures."""
    df = report_table(run_dir, "sites")
    return None if df is None or df.empty else df


def write_text(path: Path, text: str) -> Path:
    """Write an output file whole, never through a link at its path (harness.records.atomic)."""
    make_dir(path.parent, path.name)
    return write_atomic(path, text)


PointResult = tuple[str, str, "Summary | None", "pd.DataFrame | None"]


def run_point(sc: Scenario, reports: Path, console: Any, what: str) -> PointResult:
    """One run of a sweep or a fit, reported: (run dir, status, summary, processes). A run that
    fails stays a point (where the cost curve ends is worth seeing); Ctrl-C, SIGTERM and SIGHUP
    stop the whole command, not just this point."""
    from harness.control import runner
    from harness.errors import Interrupted, RunFailed

    name = sc.name
    before = set((Path(reports) / name).glob("*/" + rundir.MANIFEST))
    try:
        run_dir = runner.run_scenario(sc, Path(reports), instrumented=True, console=console)
        status = "ok"
    except Interrupted:
        raise
    except RunFailed as exc:
        print(printable(f"harness: {what}: {exc}"), flush=True)
        new = sorted(set((Path(reports) / name).glob("*/" + rundir.MANIFEST)) - before)
        if not new:
            return "", "failed", None, None
        run_dir = new[-1].parent
        status = str(read_manifest(run_dir).status)
    try:
        doc = summary(run_dir, refresh=True)
    except UsageError as exc:
        print(printable(f"harness: {what}: no report for {run_dir}: {exc}"), flush=True)
        return str(run_dir), status, None, None
    return str(run_dir), status, doc, processes(run_dir)


def _script_args(sc: Scenario, knobs: Sequence[Knob], what: str) -> tuple[str, ...]:
    """The scenario's ``workload.args``, which the script arguments varied go into; a script
    argument for the built-in workload, which reads none, is refused."""
    arg = next((k.key for k in knobs if k.is_arg), None)
    if arg is not None and sc.workload.builtin:
        raise UsageError(f"{what} {arg}: a script argument, but the scenario runs the built-in "
                         "workload (workload.entry), which takes none; vary a scenario key")
    return tuple(sc.workload.args)


# CIFAR-10's train and test sets merged: the built-in workload splits these (README, Scenarios)
CIFAR10_IMAGES = 60_000


def _largest_batch(sc: Scenario) -> float | None:
    """The built-in workload's smallest split, in images, where it is known before the data is
    read: a larger batch is that split whole, so the peak stops growing with it there."""
    if not sc.workload.builtin:
        return None
    total = {"synthetic": sc.data.size, "cifar10": CIFAR10_IMAGES}.get(sc.data.source)
    if total is None:
        return None
    return float(max(1, int(total * min(f for f in sc.data.split if f > 0))))


def sweep(scenario_path: Path, varies: list[str], sets: list[str], reports: Path,
          quiet: bool = False) -> SweepResult:
    """Run the grid (every point validated before the first runs), report each run, write the
    sweep's table and plot; returns the SweepResult."""
    import datetime as dt
    import sys

    from harness.control.console import Console
    from harness.gate import output as render
    from harness.gate import sweep as sweep_mod
    from harness.records import scenario

    knobs = sweep_mod.parse_knobs(varies, sets)
    args = _script_args(scenario.load(scenario_path, sets), knobs, "--vary")
    points = sweep_mod.grid(knobs, args)
    loaded = {tuple(p): scenario.load(scenario_path, [*sets, *p]) for p in points}
    name = next(iter(loaded.values())).name
    console = Console(sys.stdout, quiet=quiet)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out_dir = Path(reports) / name / f"sweep-{stamp}"  # made new before the first point, below

    out_dir = new_dir(out_dir, "the sweep's table")
    csv = out_dir / "sweep.csv"

    def save_table(t: pd.DataFrame) -> None:
        write_atomic(csv, t.to_csv(index=False))

    # rewritten after every point: a sweep stopped half-way keeps what it measured
    df = sweep_mod.run_grid(knobs, lambda p: run_point(loaded[tuple(p)], Path(reports), console, "sweep"),
                            lambda text: print(printable_lines(text), flush=True),
                            on_table=save_table, args=args)
    result = sweep_mod.SweepResult(name, knobs, df, out_dir)
    png = render.sweep_plot(result, out_dir / "sweep.png", f"{name}: peak memory against "
                            + ", ".join(k.key for k in knobs))
    result.files = {"csv": csv, "png": png}
    return result


def fit(scenario_path: Path, knob_key: str, budget: int, metric: str, sets: list[str],
        reports: Path, *, steps: int | None = None, values: list[str] | None = None,
        lo: float | None = None, hi: float | None = None, quiet: bool = False,
        progress: Any = None) -> FitResult:
    """``harness fit``: runs at two or three values of the knob, the model, the largest value under
    the budget, one run to verify it; writes fit.json and fit.html (see harness.gate.fit)."""
    import datetime as dt
    import math
    import sys

    from harness.control.console import Console
    from harness.gate import fit as fit_mod
    from harness.gate import output as render
    from harness.gate import sweep as sweep_mod
    from harness.records import scenario

    say = progress or (lambda text: print(printable_lines(text), flush=True))
    if metric not in fit_mod.METRICS:
        raise UsageError(f"fit: --metric {metric}: expected one of {', '.join(fit_mod.METRICS)}")
    if not sweep_mod.is_knob(knob_key):
        raise UsageError(f"--knob {knob_key}: expected a dotted scenario key (train.batch_size) or "
                         "a script's own argument (--batch)")
    knob = sweep_mod.Knob(knob_key, ())
    if not knob.is_arg and knob.key in {s.partition("=")[0] for s in sets}:
        raise UsageError(f"fit: --knob {knob.key}: the key is also given with --set")
    # short runs: one epoch of a bounded number of steps, memray off; the user's --set come after
    runs_sets = ["memray.mode=off", "train.epochs=1"]
    if steps is not None:
        runs_sets.append(f"train.max_steps={steps}")
    runs_sets += sets
    base = scenario.load(scenario_path, runs_sets)
    args = _script_args(base, [knob], "--knob")
    where = f"{ARGS_WHERE} of {scenario_path}" if knob.is_arg else str(scenario_path)
    if values:
        given = [fit_mod.knob_number(knob, v, "--values") for v in values]
        if not 2 <= len(given) <= 3 or len({v for v, _ in given}) != len(given):
            raise UsageError("fit: --values: two or three different values")
        integer = all(i for _, i in given)
    else:
        current, integer = fit_mod.knob_number(knob, fit_mod.current_text(knob, base.to_dict(), args), where)
    low = lo if lo is not None else (1.0 if integer else 0.0)
    hi_why = "--max"
    if hi is None and knob.key == "train.batch_size":
        hi = _largest_batch(base)
        hi_why = f"the smallest split of the data, {fit_mod.fmt_value(hi)} images"
    if hi is not None and hi < low:
        raise UsageError(f"fit: --max {fit_mod.fmt_value(hi)} is below --min {fit_mod.fmt_value(low)}")
    result = fit_mod.FitResult(base.name, knob.key, metric, budget, integer, low, hi, hi_why=hi_why)

    def scenario_at(value: float) -> Scenario:
        text = fit_mod.fmt_value(value)
        return scenario.load(scenario_path, [*runs_sets, *sweep_mod.overrides([knob], [text], args)])

    console = Console(sys.stdout, quiet=quiet)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    planned = [v for v, _ in given] if values else list(fit_mod.first_values(current, low, hi, integer))
    for v in planned:
        scenario_at(v)  # every given value is checked before the first run

    def run_at(value: float, what: str) -> fit_mod.Probe:
        n = len(result.probes) + (result.verification is not None) + 1
        say(f"harness: fit run {n}/{fit_mod.MAX_RUNS}: {knob.key}={fit_mod.fmt_value(value)} ({what})")
        run_dir, status, doc, _ = run_point(scenario_at(value), Path(reports), console, "fit")
        from harness.gate import metrics as m

        return fit_mod.Probe(value, run_dir, status, m.from_summary(doc) if doc is not None else {})

    def fitted() -> bool:
        bad = next((p for p in result.probes if not p.ok), None)
        if bad is not None:
            result.outcome = fit_mod.RUN_FAILED
            result.reason = (f"the run at {knob.key} = {fit_mod.fmt_value(bad.value)} ended {bad.status}"
                             + (f" ({bad.run_dir})" if bad.run_dir else ""))
            return False
        result.model = fit_mod.build_model(metric, [(p.value, p.metrics) for p in result.probes])
        return True

    for v in planned:
        probe = run_at(v, "to fit")
        result.probes.append(probe)
        if not probe.ok:
            break  # what was measured so far is written, and why it stopped
        if metric not in probe.metrics:  # not a figure this scenario records: bad input, say so now
            raise UsageError(f"fit: --metric {metric}: the run at {knob.key} = {fit_mod.fmt_value(v)} "
                             f"recorded none ({probe.run_dir})")
    if fitted() and len(result.probes) == 2:
        assert result.model is not None
        third = fit_mod.third_value(result.model, budget, [p.value for p in result.probes], low, hi, integer)
        if third is not None:
            result.probes.append(run_at(third, "to fit, and to check the line"))
            fitted()
    if result.model is not None and not result.outcome:
        fit_mod.judge_model(result)
        if result.chosen is not None and math.isfinite(result.chosen):
            result.verification = run_at(result.chosen, "to verify")
            fit_mod.judge_verification(result)
    out_dir = new_dir(Path(reports) / base.name / f"fit-{stamp}", "the fit's report")
    result.out_dir = str(out_dir)
    doc = fit_mod.to_dict(result)
    json_path = out_dir / "fit.json"
    write_atomic(json_path, jsonio.dumps(doc, str(json_path), indent=1) + "\n")
    html_path = write_atomic(out_dir / "fit.html", render.fit_html(result))
    result.files = {"json": str(json_path), "html": str(html_path)}
    return result
