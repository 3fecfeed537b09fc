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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from harness.analysis import device, ranks, tables
from harness.analysis import findings as findings_mod
from harness.analysis.captures import CaptureData
from harness.analysis.load import Run, load_run
from harness.analysis.stamp import stamp
from harness.analysis.summary import build_summary
from harness.analysis.summary_model import RecordsStamp
from harness.analysis.ticks import ticks
from harness.analysis.windows import unopened_windows
from harness.layout import FLAMEGRAPHS_DIR, REPORT_DIR, SCENARIO_FILE, SUMMARY_FILE, TABLES_DIR
from harness.records import jsonio
from harness.records.scenario import BUILTIN_WORKLOAD
from harness.render import csvs, flamegraphs, html, terminal, timeline
from harness.report import signals, staging
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


TABLE_TITLES = {
    "phases": ("By stage, epoch and phase",
               "Time as the sampler saw it (each tick counts until the next). RSS of the main "
               "process and of the whole tree; workers' USS summed on full ticks; tensor figures "
               "from the traced steps. Epoch 0: before the first epoch, or a stage without epochs."),
    "epochs": ("Epoch-boundary snapshots side by side",
               "Each snapshot as a column; a Δ column is the change from the previous snapshot of "
               "the same stage."),
    "processes": ("By process",
                  "Every process the sampler saw; USS is the process's private memory, PSS its "
                  "share of the pages it shares (so workers' copies show apart from the parent)."),
    "cuda": ("Device memory by stage, epoch and phase (CUDA)",
             "From the probe's device steps (every cuda.sample_every-th training step and every "
             "traced one): each phase's own peak (the allocator's peak counter reset when the "
             "phase began), allocated/reserved/inactive-split at the phase's end on the last "
             "device step, and the allocator's running counts of retries and OOMs. A validation "
             "or test section is one reading."),
    "sites": ("Top allocation sites (memray)",
              "Per capture and process group (workers merged): bytes live at the capture's peak, "
              "and bytes allocated in the window and still live when it closed (leaked). Phase "
              "from the stack; workload_line is the innermost line in the workload's own code."),
}


def _workload_line(prov: object) -> str:
    """The manifest's ``workload`` provenance in one line (older manifests have none)."""
    if not isinstance(prov, Mapping):
        return "not recorded"
    line = str(prov.get("file") or f"{prov.get('entry')} (file not found)")
    if prov.get("sha256"):
        line += f", sha256 {str(prov['sha256'])[:12]}"
    if prov.get("git_revision"):
        line += f", git {prov['git_revision']}{' (the file differs from it)' if prov.get('dirty') else ''}"
    return line


def unfollowed_workers(run: Run) -> list[str]:
    """One line for each stage whose workers memray was asked to follow and could not.

    memray follows forks of the tracked process only; spawned workers are exec'd, and the fork
    server's workers are forks of a process memray never tracked. Said instead of leaving the
    workers' flamegraphs missing unexplained.
    """
    scenario = run.manifest.get("scenario")
    memray = scenario.get("memray") if isinstance(scenario, Mapping) else None
    memray = memray if isinstance(memray, Mapping) else {}
    if (run.manifest.get("kind", "run") != "run" or memray.get("mode", "windows") == "off"
            or not memray.get("follow_fork", True)):
        return []
    notes = []
    for st in run.stages:
        method = (st.outcome or {}).get("worker_start_method")
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
    versions = ", ".join(f"{k} {v}" for k, v in (m.get("versions") or {}).items() if v)
    rows = [
        ("scenario", str(m.get("scenario_name", ""))),
        ("kind", str(m.get("kind", ""))),
        ("command line", " ".join(str(a) for a in m.get("command_line") or [])),
        ("git revision", f"{m.get('git_revision')} (the harness)"),
        ("workload", _workload_line(m.get("workload"))),
        ("started", str(m.get("started"))),
        ("ended", str(m.get("ended"))),
        ("python", str(m.get("python"))),
        ("versions", versions),
        ("host", str(m.get("host"))),
        ("platform", str(m.get("platform"))),
        ("cpu count", str(m.get("cpu_count"))),
    ]
    for st in run.stages:
        o = st.outcome or {}
        rows.append((f"stage {st.name}",
                     f"{o.get('status', 'unknown')}, exit code {o.get('exit_code')}, "
                     f"{o.get('wall_s')} s" + (f", {o['message']}" if o.get("message") else "")
                     + (f", workers started by {o['worker_start_method']}"
                        if o.get("worker_start_method") not in (None, "none") else "")))
    return rows


# The sections only the built-in workload reads (model/stages.py): a script is handed no
# scenario; a function entry is handed it whole (StageContext), but these are the tutorial's.
BUILTIN_ONLY = ("seed", "data", "train")
# data keys each source reads (model/data.py); split and num_workers apply to every source
DATA_KEYS = {"cifar10": ("root", "download"), "folder": ("root", "path"), "synthetic": ("size",)}
# memray keys each mode reads (harness/probe/steps.py); "windows" reads them all
MEMRAY_KEYS = {"off": ("mode",), "full": ("mode", "native_traces", "follow_fork")}


def scenario_in_effect(scenario: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The resolved ``scenario`` with only the keys in effect for its workload and device, and
    what was left out, one line each with why."""
    raw = scenario.get("workload")
    workload: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
    entry = str(workload.get("entry", BUILTIN_WORKLOAD))
    builtin, script = entry == BUILTIN_WORKLOAD, entry.endswith(".py")
    kept: dict[str, Any] = dict(scenario)
    left: list[str] = []
    if not builtin:
        gone = [k for k in BUILTIN_ONLY if kept.pop(k, None) is not None]
        if gone:
            what = "a script" if script else "a function entry"
            left.append(f"{', '.join(gone)}: read by the built-in workload only, not by {what}")
    if not script and "args" in workload:
        kept["workload"] = {k: v for k, v in workload.items() if k != "args"}
        left.append("workload.args: passed to a script only")
    if not str(scenario.get("device", "cpu")).startswith("cuda") and kept.pop("cuda", None) is not None:
        left.append(f"cuda: the device is {scenario.get('device', 'cpu')}")
    data = kept.get("data")
    if isinstance(data, Mapping) and data.get("source") in DATA_KEYS:
        reads = DATA_KEYS[str(data["source"])]
        unread = [k for k in ("root", "path", "download", "size") if k in data and k not in reads]
        kept["data"] = {k: v for k, v in data.items() if k not in unread}
        if unread:
            left.append(f"data.{', data.'.join(unread)}: not read from source {data['source']}")
    memray = kept.get("memray")
    if isinstance(memray, Mapping) and memray.get("mode") in MEMRAY_KEYS:
        reads = MEMRAY_KEYS[str(memray["mode"])]
        unread = [k for k in memray if k not in reads]
        kept["memray"] = {k: v for k, v in memray.items() if k in reads}
        if unread:
            left.append(f"memray.{', memray.'.join(unread)}: not read in mode {memray['mode']}")
    return kept, left


def scenario_text(run: Run) -> str:
    """The run's resolved scenario as YAML, only the keys in effect, with a comment on the rest.

    From the manifest's resolved scenario; the run's scenario.yaml as written when the manifest
    has none.
    """
    scenario = run.manifest.get("scenario")
    if not isinstance(scenario, Mapping):
        path = run.dir / SCENARIO_FILE
        return path.read_text(encoding="utf-8", errors="replace") if path.is_file() else ""
    kept, left = scenario_in_effect(scenario)
    head = "".join(["# the keys in effect; left out:\n", *(f"#   {line}\n" for line in left)] if left else [])
    return head + yaml.safe_dump(kept, sort_keys=False)


def _with_notes(text: str, notes: list[str]) -> str:
    """The terminal summary with ``notes`` before its last line (where the report is)."""
    if not notes:
        return text
    body, _, last = text.rpartition("\n")
    return "\n".join([body, *(f"  note       {n}" for n in notes), last])


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
        with staging.locked(run_dir):
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

    # torchrun: every table per rank (harness.analysis.ranks); the timeline's bands and stacked
    # areas are the lowest rank's, with a line for each rank's RSS
    vs = ranks.views(run) if run.distributed else []
    one = vs[0].run if vs else run
    with CaptureReading(jobs, procs) as reading:
        tk = vs[0].ticks if vs else ticks(run.samples)
        phase_df = ranks.phase_table(run, vs) if vs else tables.phase_table(run, tk)
        epoch_df = ranks.epoch_table(vs) if vs else tables.epoch_table(run)
        process_df = ranks.process_table(run) if vs else tables.process_table(run)
        device_df = ranks.device_table(run, vs) if vs else device.device_table(run)
        history = [w for v in vs for w in device.history_windows(v.run)] if vs else device.history_windows(run)
        lap("tables")
        datas, flames = reading.collect()
    datas = _order_captures(run, datas)
    # a capture memray could not read whole is a damaged record: the run is incomplete
    run.problems.extend(f"{d.capture.path.relative_to(run.dir)}: {d.error}" for d in datas
                        if d.error and d.capture.path.is_relative_to(run.dir))
    lap("captures")
    sites_df = ranks.sites_table(run, vs, datas) if vs else tables.sites_table(datas)
    info = device.device_info(one)
    if vs:
        found = ranks.all_findings(run, vs, phase_df, datas, (info or {}).get("total"))
    else:
        found = findings_mod.all_findings(run, tk, datas) + device.findings(
            run, device_df, (info or {}).get("total"))
    summary = build_summary(run, tk, phase_df, datas, found,
                            device.summary_section(info, history), views=vs or None).to_dict()
    notes = unopened_windows(run) + unfollowed_workers(run)
    html_path = out / "report.html"
    text = _with_notes(terminal.summary_text(summary, final / html_path.relative_to(out)), notes)
    lap("findings")
    if on_summary is not None:
        on_summary(text)

    named = {"phases": phase_df, "epochs": epoch_df, "processes": process_df, "sites": sites_df}
    if not device_df.empty:
        named = {"phases": phase_df, "cuda": device_df, **{k: v for k, v in named.items()
                                                          if k != "phases"}}
    table_paths = csvs.write_tables(named, out / TABLES_DIR)
    summary_path = out / SUMMARY_FILE
    stamped = {**summary, "records": records.model_dump()} if records is not None else summary
    summary_path.write_text(jsonio.dumps(stamped, str(final / SUMMARY_FILE), indent=1), encoding="utf-8")
    png = svg = None
    if not tk.empty:
        png, svg = out / "timeline.png", out / "timeline.svg"
        title = f"{run.manifest.get('scenario_name', '')}: memory over time ({run.status})"
        lowest = vs[0].rank if vs else None
        data = timeline.timeline_data(one, tk, [d for d in datas if d.capture.rank == lowest])
        if vs:
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
        title=f"Memory report: {run.manifest.get('scenario_name', run_dir.name)}",
        summary=summary,
        findings=summary["findings"],
        timeline_png=png.read_bytes() if png else None,
        timeline_svg=html.href(svg.name) if svg else None,
        tables=[html.html_table(name, *TABLE_TITLES[name], df, html.href(f"tables/{name}.csv"),
                                index=name == "epochs")
                for name, df in named.items()],
        cuda=summary.get("cuda"),
        cuda_history=[html.Link(f"{w.stage}, epoch {w.epoch}, steps {w.start}–{w.stop}",
                                html.href(str(Path("..") / w.file)),
                                f"({w.bytes / 1e6:.1f} MB, {w.entries_kept:,} events"
                                + (f", {w.entries_dropped:,} oldest dropped" if w.entries_dropped
                                   else "") + ")" + (f"; unreadable: {w.error}" if w.error else ""))
                      for w in history],
        flamegraphs=links,
        provenance=_provenance(run),
        scenario_text=scenario_text(run),
        problems=run.problems + notes,  # the notes are not damage: the run stays complete
    )
    html_path.write_text(html.render(page), encoding="utf-8")
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
