"""``build_report(run_dir)``: everything under ``<run_dir>/report/``, from the run's files alone.

Compute (``harness.analysis``), then render (``harness.render``). The memray captures are the
slow part: :mod:`harness.report.plan` plans their reads and :mod:`harness.report.pool` runs them
in a pool of processes while this process computes the sample-based tables. The report is
written into a staging folder and swapped in whole (:mod:`harness.report.staging`).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from harness.analysis import device, oom, ranks
from harness.analysis.captures import CaptureData
from harness.analysis.load import Run, load_run
from harness.analysis.stamp import stamp
from harness.analysis.summary import build_summary
from harness.analysis.summary_model import RecordsStamp
from harness.analysis.windows import cut_short, cut_short_notes, tracking_stopped, unopened_windows
from harness.layout import FLAMEGRAPHS_DIR, REPORT_DIR, SCENARIO_FILE, SUMMARY_FILE, TABLES_DIR
from harness.records import jsonio
from harness.records.atomic import disk_full_as_error, write_atomic
from harness.records.manifest import WorkloadProvenance
from harness.records.scenario import Scenario, unread_keys
from harness.records.text import printable
from harness.render import account as account_view
from harness.render import csvs, flamegraphs, html, terminal, timeline
from harness.report import signals, staging
from harness.report import tables as report_tables
from harness.report.plan import plan_jobs
from harness.report.pool import CaptureReading

RUN_DIR_BUDGET = 150 * 1000 * 1000  # the whole run directory, report included


@dataclass
class ReportResult:
    """What build_report wrote, and the terminal summary."""

    report_dir: Path
    html: Path
    summary: Path
    timeline_png: Path | None
    timeline_svg: Path | None
    tables: dict[str, Path]
    flamegraphs: list[flamegraphs.Flamegraph]
    text: str
    complete: bool
    seconds: dict[str, float] = field(default_factory=dict)


def _dir_bytes(path: Path, skip: set[Path]) -> int:
    total = 0
    for root, dirs, files in os.walk(path):
        if Path(root) in skip:
            dirs[:] = []
            continue
        dirs[:] = [d for d in dirs if Path(root, d) not in skip]
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files
                     if os.path.isfile(os.path.join(root, f)))
    return total


def _order_captures(run: Run, datas: list[CaptureData]) -> list[CaptureData]:
    order = {(c.stage, c.path): i for i, c in enumerate(c for st in run.recording_stages()
                                                        for c in st.captures)}
    return sorted(datas, key=lambda d: order.get((d.capture.stage, d.capture.path), 0))


def _workload_line(prov: WorkloadProvenance | None) -> str:
    """The manifest's ``workload`` provenance in one line (older manifests have none)."""
    if prov is None:
        return "not recorded"
    line = prov.file or f"{prov.entry} (file not found)"
    if prov.sha256:
        line += f", sha256 {prov.sha256[:12]}"
    if prov.git_revision:
        line += f", git {prov.git_revision}{' (the file differs from it)' if prov.dirty else ''}"
    return line


def unfollowed_workers(run: Run) -> list[str]:
    """One line for each stage whose workers memray was asked to follow and could not.

    memray follows forks of the tracked process only; spawned workers are exec'd, and the fork
    server's workers are forks of a process memray never tracked. Said instead of leaving the
    workers' flamegraphs missing unexplained.
    """
    memray = run.scenario.memray if run.scenario is not None else None
    if run.manifest.kind != "run" or memray is None or memray.mode == "off" or not memray.follow_fork:
        return []
    notes = []
    for st in run.stages:
        method = st.outcome.worker_start_method if st.outcome is not None else None
        started = [m for m in str(method).split("+") if m in ("spawn", "forkserver")] if method else []
        if not started or any(c.pid is not None for r in (st.ranks or [st]) for c in r.captures):
            continue
        notes.append(f"memray: stage {st.name}: memray could not follow its DataLoader workers "
                     f"(started by {'/'.join(started)}, not forked from the tracked process; "
                     "memray.follow_fork follows forks only): no worker captures. Their RSS, USS "
                     "and PSS are in the processes table")
    return notes


def _provenance(run: Run) -> list[tuple[str, str]]:
    m = run.manifest
    versions = ", ".join(f"{k} {v}" for k, v in (m.versions or {}).items() if v)
    rows = [
        ("scenario", m.scenario_name),
        ("kind", m.kind),
        ("command line", " ".join(m.command_line or [])),
        ("git revision", f"{m.git_revision} (the harness)"),
        ("workload", _workload_line(m.workload)),
        ("started", str(m.started)),
        ("ended", str(m.ended)),
        ("python", str(m.python)),
        ("versions", versions),
        ("host", str(m.host)),
        ("platform", str(m.platform)),
        ("cpu count", str(m.cpu_count)),
    ]
    for st in run.stages:
        o = st.outcome
        if o is None:
            rows.append((f"stage {st.name}", "unknown, exit code None, None s"))
            continue
        rows.append((f"stage {st.name}",
                     f"{o.status}, exit code {o.exit_code}, {o.wall_s} s"
                     + (f", {o.message}" if o.message else "")
                     + (f", workers started by {o.worker_start_method}"
                        if o.worker_start_method not in (None, "none") else "")))
    return rows


# The sections only the built-in workload reads (model/stages.py): a script is handed no
# scenario; a function entry is handed it whole (StageContext), but these are the tutorial's.
BUILTIN_ONLY = ("seed", "data", "train")


def scenario_in_effect(scenario: Scenario) -> tuple[dict[str, Any], list[str]]:
    """The resolved ``scenario`` with only the keys in effect for its workload and device, and
    what was left out, one line each with why (which data and memray keys are read where is
    the model's to say: :func:`harness.records.scenario.unread_keys`)."""
    workload = scenario.workload
    script = workload.entry.endswith(".py")
    kept = scenario.to_dict()
    left: list[str] = []
    if not workload.builtin:
        gone = [k for k in BUILTIN_ONLY if kept.pop(k, None) is not None]
        if gone:
            what = "a script" if script else "a function entry"
            left.append(f"{', '.join(gone)}: read by the built-in workload only, not by {what}")
    if not script:
        kept["workload"] = {k: v for k, v in kept["workload"].items() if k != "args"}
        left.append("workload.args: passed to a script only")
    if not scenario.device.startswith("cuda"):
        kept.pop("cuda")
        left.append(f"cuda: the device is {scenario.device}")
    if "data" in kept:
        unread = unread_keys(scenario.data)
        kept["data"] = {k: v for k, v in kept["data"].items() if k not in unread}
        if unread:
            left.append(f"data.{', data.'.join(unread)}: not read from source {scenario.data.source}")
    unread = unread_keys(scenario.memray)
    kept["memray"] = {k: v for k, v in kept["memray"].items() if k not in unread}
    if unread:
        left.append(f"memray.{', memray.'.join(unread)}: not read in mode {scenario.memray.mode}")
    return kept, left


def scenario_text(run: Run) -> str:
    """The run's resolved scenario as YAML, only the keys in effect, with a comment on the rest.

    The run's scenario.yaml as written when it cannot be read back through the scenario model.
    """
    if run.scenario is None:
        path = run.dir / SCENARIO_FILE
        return path.read_text(encoding="utf-8", errors="replace") if path.is_file() else ""
    kept, left = scenario_in_effect(run.scenario)
    head = "".join(["# the keys in effect; left out:\n", *(f"#   {line}\n" for line in left)] if left else [])
    return head + yaml.safe_dump(kept, sort_keys=False)


def _with_notes(text: str, notes: list[str]) -> str:
    """The terminal summary with ``notes`` before its last line (where the report is)."""
    if not notes:
        return text
    body, _, last = text.rpartition("\n")
    return "\n".join([body, *(f"  note       {printable(n)}" for n in notes), last])


def build_report(run_dir: Path, *, processes: int | None = None,
                 native_flamegraphs: bool = False, flamegraphs: bool = True,
                 on_summary: Callable[[str], None] | None = None) -> ReportResult:
    """Analyse ``run_dir`` and write ``run_dir/report/``; raises UsageError for a non-run directory.

    The report is built beside the old one and replaces it whole when complete (an interrupted
    build leaves the old report as it was); the capture pool ends with the build, however it
    ends. ``processes``: how many processes read the memray captures (default: up to 2, one per
    core). ``native_flamegraphs``: draw flamegraphs with the memray CLI, native frames
    included (seconds per capture; the default draws Python frames from the records read).
    ``flamegraphs=False``: none drawn (the captures are still read), e.g. for a budget test.
    ``on_summary``: handed the terminal summary (``ReportResult.text``) as soon as it is known,
    before the tables, the timeline and the page are written, so that a person sees it first.
    """
    started = time.perf_counter()
    run_dir = Path(run_dir)
    final = run_dir / REPORT_DIR
    with signals.stop_signals_cleanly():
        records = stamp(run_dir)  # before reading: a file changed while it is read reads as stale
        run = load_run(run_dir)
        staging.check_replaceable(final)
        with disk_full_as_error(final), staging.locked(run_dir):  # a full disk: one line
            staging.remove_leftovers(run_dir)
            out = staging.new_folder(run_dir)
            try:
                result = _write_report(run, run_dir, out, final, processes, native_flamegraphs, started,
                                       draw_flamegraphs=flamegraphs, on_summary=on_summary,
                                       records=records)
                staging.swap_in(out, final)
            except BaseException:
                shutil.rmtree(out, ignore_errors=True)  # gone already once swapped in
                raise
    return result


def _write_report(run: Run, run_dir: Path, out: Path, final: Path, processes: int | None,
                  native_flamegraphs: bool, started: float, draw_flamegraphs: bool = True,
                  on_summary: Callable[[str], None] | None = None,
                  records: RecordsStamp | None = None) -> ReportResult:
    """Write the report into ``out``; the paths returned are where it will be, under ``final``."""
    clock: dict[str, float] = {}
    t_start = t = started

    def lap(name: str) -> None:
        nonlocal t
        now = time.perf_counter()
        clock[name] = round(now - t, 3)
        t = now

    lap("load")
    drawn = draw_flamegraphs and any(s.captures for s in run.recording_stages())
    assets = flamegraphs.copy_assets(out / FLAMEGRAPHS_DIR) if drawn else 0
    # Whatever the run directory already holds, the report must keep the whole under budget; the
    # old report is about to be replaced and does not count.
    budget = max(RUN_DIR_BUDGET - _dir_bytes(run_dir, {out, final}) - assets - 10 * 1000 * 1000, 0)
    jobs, declined = plan_jobs(run, out, min(budget, 40 * 1000 * 1000), native_flamegraphs,
                               draw=draw_flamegraphs)
    procs = processes if processes is not None else min(os.cpu_count() or 1, 2)

    # One path: every table and finding per view (harness.analysis.ranks: one per rank of a
    # torchrun run, a plain run one view without a rank); the timeline's bands and stacked areas
    # are the first view's, with a line for each rank's RSS. The views' ticks and the tables are
    # computed while the pool reads the captures.
    with CaptureReading(jobs, procs) as reading:
        reading.start()  # inside the with, so that however the build ends, the workers end with it
        vs = ranks.views(run)
        one = vs[0]
        inputs = report_tables.Inputs(run, vs)
        built = report_tables.build(inputs, reads_captures=False)
        history = [w for v in vs for w in device.history_windows(v.run)]
        lap("tables")
        datas, flames = reading.collect()
    datas = _order_captures(run, datas)
    # a capture memray could not read whole is a damaged record: the run is incomplete
    run.problems.extend(f"{d.capture.path.relative_to(run.dir)}: {d.error}" for d in datas
                        if d.error and d.capture.path.is_relative_to(run.dir))
    run.problems.extend(tracking_stopped(run))  # a capture that ends early: not a whole record
    lap("captures")
    built |= report_tables.build(replace(inputs, captures=datas), reads_captures=True)
    phase_df = built["phases"]
    info = device.device_info(one.run)
    found = ranks.all_findings(run, vs, phase_df, datas, (info or {}).get("total"))
    summary = build_summary(run, one.ticks, phase_df, datas, found,
                            device.summary_section(info, history), views=vs,
                            device_total=(info or {}).get("total"),
                            post_mortems=oom.post_mortems(run, datas)).to_dict()
    notes = unopened_windows(run) + cut_short_notes(run) + unfollowed_workers(run)
    html_path = out / "report.html"
    text = _with_notes(terminal.summary_text(summary, final / html_path.relative_to(out),
                                             cut_short(run)), notes)
    lap("findings")
    if on_summary is not None:
        on_summary(text)

    shown = report_tables.shown(built)
    table_paths = csvs.write_tables({t.name: df for t, df in shown}, out / TABLES_DIR,
                                    {t.name: t.csv for t, _ in shown})
    summary_path = out / SUMMARY_FILE
    stamped = {**summary, "records": records.model_dump()} if records is not None else summary
    write_atomic(summary_path, jsonio.dumps(stamped, str(final / SUMMARY_FILE), indent=1))
    png = svg = None
    if not one.ticks.empty:
        png, svg = out / "timeline.png", out / "timeline.svg"
        title = f"{run.manifest.scenario_name}: memory over time ({run.status})"
        data = timeline.timeline_data(one.run, one.ticks,
                                      [d for d in datas if d.capture.rank == one.rank])
        data.ranks = ranks.rank_lines(vs, data.t0)
        timeline.render(data, png, svg, title)
    lap("timeline")

    all_flames = flames + declined
    links = [html.Link(
        f"{f.capture} · {f.group}{' · temporal' if f.temporal else ''}",
        html.href(str(f.path.relative_to(out))) if f.path else "",
        (f"({f.bytes / 1e6:.1f} MB" + (f"; {f.note})" if f.note else ")")) if f.path else f.note)
        for f in all_flames]
    page = html.ReportPage(
        title=f"Memory report: {run.manifest.scenario_name or run_dir.name}",
        summary=summary,
        findings=found,
        timeline_png=png.read_bytes() if png else None,
        timeline_svg=html.href(svg.name) if svg else None,
        tables=[html.html_table(t.name, t.title, t.note, df, html.href(f"{TABLES_DIR}/{t.csv}"),
                                index=t.index)
                for t, df in shown],
        cuda=summary.get("cuda"),
        cuda_history=[html.Link(f"{w.stage}, epoch {w.epoch}, steps {w.start}–{w.stop}",
                                html.href(str(Path("..") / w.file)),
                                f"({w.bytes / 1e6:.1f} MB, {w.entries_kept:,} events"
                                + (f", {w.entries_dropped:,} oldest dropped" if w.entries_dropped
                                   else "") + ")" + (f"; unreadable: {w.error}" if w.error else ""))
                      for w in history],
        flamegraphs=links,
        account=account_view.view(built["account"]),
        provenance=_provenance(run),
        scenario_text=scenario_text(run),
        problems=run.problems + notes,  # the notes are not damage: the run stays complete
    )
    write_atomic(html_path, html.render(page))
    lap("html")
    clock["total"] = round(time.perf_counter() - t_start, 3)

    def moved(path: Path) -> Path:
        return final / path.relative_to(out)

    return ReportResult(
        report_dir=final, html=moved(html_path), summary=moved(summary_path),
        timeline_png=moved(png) if png else None, timeline_svg=moved(svg) if svg else None,
        tables={name: moved(p) for name, p in table_paths.items()},
        flamegraphs=[replace(f, path=moved(f.path)) if f.path else f for f in all_flames],
        text=text,
        complete=run.complete, seconds=clock,
    )
