"""Plain-language diagnoses, each computed from the recorded data with the numbers behind it.

Every detector returns ``None`` when the data does not support its finding, and registers itself
with :func:`harness.analysis.finding.finding` (its kind, severity, doc anchor). Thresholds are
module constants so tests and the README can name them.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from harness.analysis import account, device
from harness.analysis import workers as _workers  # also registers the worker_leak detector
from harness.analysis.captures import CaptureData
from harness.analysis.finding import Finding, detectors, finding, mib
from harness.analysis.load import Run
from harness.analysis.peaks import (
    WHOSE,
    after_stage_end,
    rise_kind,
    running_ticks,
    teardown_peak,
    tick_peak,
)
from harness.analysis.snapshot_metrics import epoch_growth, growth_per_epoch, is_epoch_snapshot
from harness.analysis.ticks import settled
from harness.analysis.trend import (  # importing it registers the trend detector
    LEAK_MIN_KEPT_STEPS,
    LEAK_MIN_MARKED_STEPS,
    LEAK_MIN_STEP_BYTES,
    LEAK_STEP_PARTS,
    step_leaks,
)
from harness.layout import HARNESS_PHASES, Event
from harness.records.composition import PART_KEYS, Moment, ProcessComposition
from harness.records.events import LoopEnd, SnapshotEvent
from harness.sizes import MiB, format_size

# leak: the main process's live tensors or RSS up at every one of >= 2 epoch boundaries (the
# LEAK_MIN_* of harness.analysis.snapshot_metrics, where growth is defined for the gate too), or
LEAK_MIN_SITE_RATE = 1.0  # a site that keeps this many allocations per step of a window
LEAK_MIN_WINDOW_STEPS = 20  # (in a window of at least this many steps, in epoch 2 or later)
LEAK_MIN_SITE_WINDOWS = 2  # windows of different epochs a site must keep memory in to be a
# finding on its own (with one window, it only names the sites behind a snapshot growth)
# (those two for captures without step marks; where the probe marked each step's end, a window
# is read step by step: harness.analysis.trend.step_leaks and its LEAK_* thresholds)
RSS_KINDS = {"anonymous": "main_anon", "file-backed": "main_file", "shared memory": "main_shmem"}
# copy-on-read: a worker's private memory grows ...
COW_MIN_USS_GROWTH = 32 * MiB  # ... by at least this,
COW_MIN_SHARE_FROM_SHARED = 0.5  # mostly in pages it already had (its anonymous RSS flat),
COW_PARENT_FLAT_BYTES = 8 * MiB  # while the parent's heap (or RSS) moves less than this
COW_PARENT_FLAT_FRACTION = 0.25  # or this fraction of the worker's growth.


def _steps_per_epoch(run: Run, stage: str) -> int | None:
    for st in run.stages:
        if st.name == stage:
            steps = [e.steps for e in st.events_of(LoopEnd)]
            return max(steps) if steps else None
    return None


def _grown_kinds(run: Run, tk: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Per stage, how much each part of the main process's RSS (anonymous, file-backed, shared
    memory: the sampler's tick nearest each epoch-end snapshot) grew an epoch, from the first
    epoch-end snapshot to the last; stages whose ticks lack the parts are left out."""
    out: dict[str, dict[str, float]] = {}
    if tk.empty:
        return out
    for st in run.stages:
        snaps = sorted((s.epoch, s.t) for label, s in st.snapshots.items() if is_epoch_snapshot(label))
        mine = tk[tk["stage"] == st.name]
        if len(snaps) < 2 or mine.empty:
            continue
        (e0, t0), (e1, t1) = snaps[0], snaps[-1]
        at = [mine.loc[(mine["t"] - t).abs().idxmin()] for t in (t0, t1)]
        grew = {kind: (float(at[1][c]) - float(at[0][c])) / max(e1 - e0, 1)
                for kind, c in RSS_KINDS.items() if pd.notna(at[0][c]) and pd.notna(at[1][c])}
        if grew:
            out[st.name] = grew
    return out


def growing_sites(captures: list[CaptureData]) -> pd.DataFrame:
    """Sites that kept at least LEAK_MIN_SITE_RATE allocations per step of a training window
    whose steps were not marked (older run directories; :func:`step_leaks` reads the others).

    Only windows of epoch 2 and later count: the first epoch's warm-up (caches, optimizer
    state, first-call registrations) legitimately keeps memory once.
    """
    rows = []
    for c in captures:
        w = c.window
        steps = w.steps
        if c.error or w.section or steps is None or steps < LEAK_MIN_WINDOW_STEPS:
            continue
        if c.marked_steps is not None:
            continue
        if w.epoch is None or w.epoch < 2 or c.sites.empty:
            continue
        s = c.sites
        hit = s[(s["leaked_allocations"] >= LEAK_MIN_SITE_RATE * steps) & (s["leaked_bytes"] > 0)]
        for r in hit.itertuples(index=False):
            rows.append({
                "stage": r.stage, "capture": r.capture, "process": r.process, "pid": r.pid,
                "epoch": w.epoch, "window_steps": steps, "site": r.site,
                "workload_line": r.workload_line, "source": r.source, "phase": r.phase,
                "leaked_bytes": int(r.leaked_bytes), "leaked_allocations": int(r.leaked_allocations),
                "allocations_per_step": r.leaked_allocations / steps,
                "bytes_per_step": r.leaked_bytes / steps,
            })
    df = pd.DataFrame(rows)
    if not df.empty:
        df = df.sort_values("leaked_bytes", ascending=False, ignore_index=True)
    return df


@finding("leak", severity="warning", doc="reports.md#leak", title="memory grows from epoch to epoch",
         order=10)
def leak(run: Run, captures: list[CaptureData], tk: pd.DataFrame | None = None) -> Finding | None:
    """Memory that grows from epoch to epoch after the first: how much, where, which sites.

    Growth is :func:`harness.analysis.snapshot_metrics.epoch_growth`'s, the figure the gate's
    ``growth_per_epoch`` reads: the main process's RSS (and live tensors) at epoch-end snapshots.
    """
    evidence: list[str] = []
    numbers: dict[str, Any] = {"stages": {}}
    kinds = _grown_kinds(run, tk if tk is not None else pd.DataFrame())
    for g in epoch_growth(run):
        grew = kinds.get(g.stage, {})
        # Where the ticks have RSS's parts, the growth judged is the anonymous and shared memory's:
        # file-backed pages (a memory-mapped file being read) are the page cache's, not a leak,
        # and do not hide one beside them either.
        held = grew.get("anonymous", 0.0) + grew.get("shared memory", 0.0) if grew else None
        if not (g.tensor_leak or (g.rss_leak and (held is None or held >= g.rss_floor()))):
            continue
        per_epoch: dict[str, Any] = {
            "epochs": [g.boundaries[0].from_epoch] + [b.to_epoch for b in g.boundaries],
            "boundaries": len(g.boundaries),
            "tensor_count_per_epoch": g.per_epoch("tensor_count"),
            "tensor_bytes_per_epoch": g.per_epoch("tensor_bytes"),
            "main_rss_per_epoch": g.main_rss_per_epoch,
            "main_uss_per_epoch": g.per_epoch("main_uss"),
            "main_rss_deltas": [b.main_rss for b in g.boundaries],
            "growth_per_epoch": growth_per_epoch([g]),
        }
        numbers["stages"][g.stage] = per_epoch
        what = []
        if g.tensor_leak:
            what.append(f"{per_epoch['tensor_count_per_epoch']:,.0f} more live tensors "
                        f"({per_epoch['tensor_bytes_per_epoch']:,.0f} bytes of tensor data)")
        what.append(f"RSS {mib(per_epoch['main_rss_per_epoch'])} (growth_per_epoch, the figure "
                    f"`harness check` gates), USS {mib(per_epoch['main_uss_per_epoch'])}")
        held_kinds = {k: v for k, v in grew.items() if k != "file-backed"}
        if grew:
            per_epoch["kinds_per_epoch"] = grew
        if held_kinds:
            top = max(held_kinds, key=lambda k: held_kinds[k])
            what.append("by RSS's parts " + ", ".join(f"{k} {mib(v)}" for k, v in held_kinds.items())
                        + (f" (file-backed pages, not counted: {mib(grew['file-backed'])})"
                           if "file-backed" in grew else "")
                        + f": the memory that grew is {top}")
        evidence.append(
            f"in stage {g.stage!r} the main process grew at each of the {len(g.boundaries)} epoch "
            f"boundaries after the first: per epoch {'; '.join(what)}"
        )
    snapshot_evidence = bool(evidence)
    sites = growing_sites(captures)
    if not sites.empty and not evidence:
        # Without snapshot growth, a site counts only if it kept memory in several epochs.
        epochs = sites.groupby(["process", "site", "workload_line"])["epoch"].transform("nunique")
        sites = sites[epochs >= LEAK_MIN_SITE_WINDOWS]
    if not sites.empty:
        steps_epoch = {st: _steps_per_epoch(run, st) for st in sites["stage"].unique()}
        # One line per place a person would edit: the workload's line, else the site itself.
        sites = sites.assign(where=sites["workload_line"].where(sites["workload_line"] != "",
                                                                sites["site"]))
        per = sites.groupby(["stage", "process", "where", "capture"], sort=False).agg(
            source=("source", "first"), phase=("phase", "first"),
            leaked_bytes=("leaked_bytes", "sum"), leaked_allocations=("leaked_allocations", "sum"),
            window_steps=("window_steps", "first")).reset_index()
        per = per.sort_values("leaked_bytes", ascending=False).drop_duplicates(["process", "where"])
        top = per.head(5)
        lines = []
        for r in top.itertuples(index=False):
            per_step = r.leaked_bytes / r.window_steps
            per_epoch_bytes = per_step * (steps_epoch.get(r.stage) or r.window_steps)
            code = f" `{r.source}`" if r.source else ""
            lines.append(f"{r.where}{code} [{r.process}, phase {r.phase}]: "
                         f"{r.leaked_allocations / r.window_steps:.1f} allocations "
                         f"({per_step:,.0f} bytes) kept per step, about {mib(per_epoch_bytes)} "
                         "per epoch")
        evidence.append("allocation sites that kept memory at every step of a training window: "
                        + "; ".join(lines))
        numbers["sites"] = top.to_dict(orient="records")
    kept = step_leaks(captures)
    if not kept.empty:
        top_kept = kept.drop_duplicates(["process", "where"]).head(5)
        lines = []
        for r in top_kept.itertuples(index=False):
            code = f" `{r.source}`" if r.source else ""
            epoch_steps = _steps_per_epoch(run, r.stage)
            epoch_text = (f", about {mib(r.bytes_per_step * epoch_steps)} per epoch of "
                          f"{epoch_steps} steps" if epoch_steps else "")
            lines.append(f"{r.where}{code} [{r.process}, phase {r.phase}] keeps "
                         f"~{format_size(r.bytes_per_step)} a step ({r.kept_steps} of "
                         f"{r.window_steps} steps of capture {r.capture}){epoch_text}")
        evidence.append("lines that keep, step after step, memory they allocated (made in steps "
                        "throughout a training window, still held when it closed; allocations, so "
                        "anonymous memory): " + "; ".join(lines))
        numbers["step_sites"] = top_kept.to_dict(orient="records")
        numbers["step_thresholds"] = {"min_marked_steps": LEAK_MIN_MARKED_STEPS,
                                      "parts": LEAK_STEP_PARTS, "min_kept_steps": LEAK_MIN_KEPT_STEPS,
                                      "min_bytes_per_step": LEAK_MIN_STEP_BYTES}
    if not evidence:
        return None
    if not snapshot_evidence:
        gate = growth_per_epoch(epoch_growth(run))
        if gate is not None:  # say what the gate's figure is, so that the two are not read apart
            evidence.append(f"at the epoch-end snapshots the main process's RSS grew {mib(gate)} "
                            "per epoch (growth_per_epoch, the figure `harness check` gates), "
                            "too little, or at too few boundaries, to count as a leak on its own")
            numbers["growth_per_epoch"] = gate
    processes = sorted({"main"} | (set(sites["process"]) if not sites.empty else set())
                       | (set(kept["process"]) if not kept.empty else set()))
    numbers["processes"] = processes
    return Finding(
        kind="leak",
        title=("Memory grows from epoch to epoch (a leak)" if snapshot_evidence or kept.empty
               else "A line keeps memory step after step (a leak)"),
        text="Memory that is not given back: " + ". Also, ".join(evidence) + ".",
        numbers=numbers,
    )


def _nearest(series: pd.DataFrame, t: float, column: str) -> float | None:
    s = series.dropna(subset=[column])
    if s.empty:
        return None
    i = (s["t"] - t).abs().idxmin()
    return float(s.loc[i, column])


def _start_methods(run: Run) -> dict[str, str]:
    """Each stage's worker start method as the manifest recorded it (fork where not recorded:
    runs from before the field, when only forked workers were recognised)."""
    out = {}
    for st in run.stages:
        method = st.outcome.worker_start_method if st.outcome is not None else None
        out[st.name] = method if method is not None else "fork"
    return out


@finding("copy_on_read", severity="warning", doc="reports.md#copy_on_read",
         title="workers copy the parent's pages", order=30)
def copy_on_read(run: Run, captures: list[CaptureData]) -> Finding | None:
    """Workers' private memory growing from pages they shared while the parent's heap stays flat.

    Workers of any start method are looked at but those of a spawn-only stage: exec'd, they share
    no pages with the parent to copy.
    """
    # only while the workload ran: a tick as the main process exits (its workers' pages freed
    # unevenly, the parent gone) is no reading of a worker copying pages; nor one as its
    # siblings exit (the pages they shared become its own: ticks.loader_shutdown_readings)
    s = running_ticks(run, settled(run.samples))
    if s.empty:
        return None
    methods = _start_methods(run)
    hits = []
    # each worker's first and last full tick, all at once: a long run has thousands of workers
    full = s[s["role"].str.startswith("worker") & s["uss"].notna()].sort_values("t", kind="stable")
    # a worker's end: its own reading as it was told to exit, where it wrote one (a tick of it
    # then may read pages an exited sibling left it), else its last tick
    readings = _workers.own_readings(run)
    full = _workers.before_exit(full, readings)
    keys = ["stage", "pid"]
    first = full.drop_duplicates(keys, keep="first").set_index(keys).sort_index()
    last = full.drop_duplicates(keys, keep="last").set_index(keys).reindex(first.index)
    count = full.groupby(keys).size().reindex(first.index)
    for key, rs in readings.items():
        ends = [r for r in rs if r.exiting]
        if ends and key in last.index:
            r = ends[0]
            last.loc[key, ["t", "uss", "rss", "shared"]] = [r.t, float(r.uss), float(r.rss), float(r.shared)]
            count[key] += 1
    growth = last["uss"] - first["uss"]
    anon = (last["rss"] - last["shared"]) - (first["rss"] - first["shared"])
    shared_part = growth - anon.clip(lower=0.0)
    small = (growth < COW_MIN_USS_GROWTH) | (shared_part < COW_MIN_SHARE_FROM_SHARED * growth)
    for stage, pid in first.index[((count >= 2) & ~small).to_numpy()]:
        method = methods.get(str(stage), "fork")
        if method == "spawn":
            continue
        a, b = first.loc[(stage, pid)], last.loc[(stage, pid)]
        d_uss, d_anon = float(growth[(stage, pid)]), float(anon[(stage, pid)])
        t0, t1 = float(a["t"]), float(b["t"])
        parent, how = _parent_change(s, captures, stage, t0, t1)
        if parent is None or abs(parent) > max(COW_PARENT_FLAT_BYTES, COW_PARENT_FLAT_FRACTION * d_uss):
            continue
        hits.append({"stage": stage, "pid": int(pid), "role": str(a["role"]),
                     "uss_start": float(a["uss"]), "uss_end": float(b["uss"]), "uss_growth": d_uss,
                     "anon_rss_growth": d_anon, "seconds": t1 - t0,
                     "parent_change": parent, "parent_measure": how, "start_method": method})
    if not hits:
        return None
    total = sum(h["uss_growth"] for h in hits)
    per = "; ".join(f"{h['role']} (pid {h['pid']}, {h['stage']}): USS {mib(h['uss_start'])} → "
                    f"{mib(h['uss_end'])} in {h['seconds']:.1f} s" for h in hits[:6])
    parent_how = hits[0]["parent_measure"]
    if {h["start_method"] for h in hits} == {"fork"}:
        who, source = "forked worker(s)", "the parent"
    else:  # forkserver: forked from the fork server, which shares what it imported with them
        started = "/".join(sorted({h["start_method"] for h in hits}))
        who, source = f"worker(s) (started by {started})", "the process they were forked from"
    return Finding(
        kind="copy_on_read",
        title="DataLoader workers copy the parent's memory as they read it (copy-on-read)",
        text=(f"{len(hits)} {who} turned {mib(total)} of pages shared with {source} "
              f"into private copies while the parent's {parent_how} stayed flat: {per}. Reading "
              "Python objects in a forked process writes their reference counts (and the garbage "
              "collector's headers), so every page the dataset's objects live on is copied. "
              "Keep the dataset in a few large buffers (numpy arrays, tensors) instead of many "
              "Python objects, or use fewer workers."),
        numbers={"workers": hits, "total_uss_growth": total},
    )


def _parent_change(s: pd.DataFrame, captures: list[CaptureData], stage: str,
                   t0: float, t1: float) -> tuple[float | None, str]:
    """How much the parent moved over [t0, t1]: its memray heap where captured, else its RSS.

    Not its USS: forking makes the parent's pages shared, and every page a worker copies turns
    back into the parent's own, so the parent's USS rises with the very effect measured here.
    """
    heap = [(t, h) for c in captures if c.capture.stage == stage and c.capture.pid is None
            for t, _rss, h in c.memray_samples if t0 <= t <= t1]
    if len(heap) >= 2:
        hs = [h for _, h in heap]
        return float(max(hs) - min(hs)), "heap"
    main = s[(s["stage"] == stage) & (s["role"] == "main")]
    main = main[(main["t"] >= t0) & (main["t"] <= t1)]
    if len(main) < 2:
        return None, "RSS"
    return float(main["rss"].max() - main["rss"].min()), "RSS"


@finding("rss_heap_gap", severity="info", doc="reports.md#rss_heap_gap",
         title="why RSS is larger than the heap", order=40)
def rss_heap_gap(tk: pd.DataFrame, captures: list[CaptureData], run: Run | None = None) -> Finding | None:
    """Explain RSS minus the memray heap at the main process's largest RSS under a capture: from
    the account (composition.jsonl) nearest to it where there is one, else from the sampler's
    file-backed figure."""
    best: tuple[int, int, float, CaptureData] | None = None
    for c in captures:
        if c.capture.pid is not None or c.error:
            continue
        for t, rss, heap in c.memray_samples:
            if best is None or rss > best[0]:
                best = (rss, heap, t, c)
    if best is None or tk.empty:
        return None
    rss, heap, t, cap = best
    near = tk[tk["stage"] == cap.capture.stage]
    if near.empty:
        return None
    i = (near["t"] - t).abs().idxmin()
    row = near.loc[i]
    shared = float(row["main_shared"]) if pd.notna(row["main_shared"]) else 0.0
    gap = float(rss - heap)
    untracked = max(gap - shared, 0.0)
    workers_rss = float(row["workers_rss"]) if pd.notna(row["workers_rss"]) else 0.0
    wu = _nearest(near, t, "workers_uss") if workers_rss else None
    windowed = cap.window.start_step is not None and (cap.window.section or cap.window.epoch)
    moment = account.nearest(run, cap.capture.stage, t) if run is not None else None
    main = account.main_process(moment) if moment is not None else None
    if moment is not None and main is not None:
        return _gap_from_account(cap, rss, heap, t, moment, main, bool(windowed), row, near)
    text = (f"At its largest RSS under capture {cap.capture.name} ({mib(rss)}), the main "
            f"process's memray heap was {mib(heap)}: {mib(gap)} of RSS is not live heap. "
            f"{mib(shared)} of it is file-backed pages (shared libraries such as libtorch, mapped "
            f"files), counted in RSS but shared with every process that maps them; the other "
            f"{mib(untracked)} is anonymous memory outside the heap: allocator caches and "
            f"fragmentation, thread stacks, interpreter internals")
    if windowed:
        text += (", and memory allocated before the capture opened (a windowed capture sees "
                 "only what is allocated while it is open)")
    text += "."
    if workers_rss:
        text += (f" Beyond the main process, its {int(row['workers'])} worker(s) hold "
                 f"{mib(workers_rss)} of RSS")
        text += (f", of which {mib(wu)} is private (USS: copies of the parent's pages and their "
                 f"own allocations); the rest is the parent's pages, shared, counted again in "
                 f"each worker's RSS." if wu is not None else ".")
    return Finding(
        kind="rss_heap_gap",
        title="Why RSS is larger than the heap",
        text=text,
        numbers={"capture": cap.capture.name, "t": t, "rss": rss, "heap": heap, "gap": gap,
                 "file_backed": shared, "anonymous_outside_heap": untracked,
                 "windowed_capture": bool(windowed), "workers_rss": workers_rss,
                 "workers_uss": wu},
    )


# memray's heap is what was allocated while a capture was open and still live: the parts it can
# hold, in the order its bytes are taken from them (activations first, then Python's, native)
_HEAP_PARTS = ("tensor_other", "python_objects", "native_heap")
_TENSORS_BEFORE = ("tensor_parameters", "tensor_gradients", "tensor_optimizer_state")


def _gap_parts(parts: dict[str, int], heap: int, windowed: bool) -> list[tuple[str, float]]:
    """What is not in the heap, part by part: (words, bytes), largest first, unexplained last."""
    left = dict(parts)
    rest = float(heap)
    for k in _HEAP_PARTS:
        take = min(max(left[k], 0), rest)
        left[k] -= int(take)
        rest -= take
    tensors = sum(left[k] for k in _TENSORS_BEFORE)
    named = ", ".join(f"{account.GROWTH_WORDS[k]} {mib(left[k])}" for k in _TENSORS_BEFORE if left[k] >= MiB)
    when = " allocated before the capture" if windowed else ""
    out: list[tuple[str, float]] = []
    if tensors:
        out.append((f"tensors{when}" + (f" ({named})" if named else ""), float(tensors)))
    for k in PART_KEYS:
        if k in _TENSORS_BEFORE or k == "unexplained":
            continue
        words = account.PART_LABELS[k] + (" outside the heap" if k in _HEAP_PARTS else "")
        out.append((words, float(left[k])))
    out = sorted((w for w in out if w[1] >= MiB), key=lambda w: -w[1])
    return [*out, ("unexplained", float(left["unexplained"] - rest))]  # a heap larger than its parts


def _gap_from_account(cap: CaptureData, rss: int, heap: int, t: float, moment: Moment,
                      main: ProcessComposition, windowed: bool, row: pd.Series,
                      near: pd.DataFrame) -> Finding:
    parts = main.parts.model_dump()
    gap = float(main.rss - heap)
    listed = _gap_parts(parts, heap, windowed)
    scope = "inside the capture windows" if windowed else "of the capture"
    text = (f"{mib(gap)} are not in the heap: "
            + ", ".join(f"{mib(b)} {w}" for w, b in listed) + ". "
            f"From the account at {account.moment_label(moment)} (the main process's RSS "
            f"{mib(main.rss)}, {abs(moment.t - t):.1f} s from the largest RSS under capture "
            f"{cap.capture.name}, {mib(rss)}), less memray's peak heap {scope} ({mib(heap)}).")
    if windowed:
        text += (" A windowed capture sees only what is allocated while it is open: the tensors "
                 "and objects made before it are outside its heap.")
    workers_rss = float(row["workers_rss"]) if pd.notna(row["workers_rss"]) else 0.0
    wu = _nearest(near, t, "workers_uss") if workers_rss else None
    if workers_rss and wu is not None:
        text += (f" Beyond the main process, its {int(row['workers'])} worker(s) hold "
                 f"{mib(workers_rss)} of RSS, {mib(wu)} of it private (USS).")
    return Finding(
        kind="rss_heap_gap",
        title="Why RSS is larger than the heap",
        text=text,
        numbers={"capture": cap.capture.name, "t": t, "rss": rss, "heap": heap,
                 "gap": gap, "account": account.moment_label(moment), "account_rss": main.rss,
                 "not_in_heap": {w: b for w, b in listed}, "windowed_capture": windowed,
                 "workers_rss": workers_rss, "workers_uss": wu},
    )


INSTRUMENT_EVENTS: dict[str, str] = {Event.MEMRAY_START: "started a memray capture",
                     Event.MEMRAY_STOP: "stopped a memray capture"}
INSTRUMENT_NEAR_S = 1.0  # a peak this close to one of the harness's own actions may be its doing


def _snapshot_action(event: SnapshotEvent) -> str:
    """What a snapshot event was, by its label: an epoch's end, or the stage's end."""
    label = event.label
    if is_epoch_snapshot(label):
        return f"took the {label} snapshot (an epoch boundary)"
    if label == "end":
        return "took its end-of-stage snapshot"
    return f"took a snapshot ({label})" if label else "took a snapshot"


def _instrument_near(run: Run | None, stage: str, t: float) -> list[str]:
    if run is None:
        return []
    out = []
    for st in run.stages:
        if st.name != stage:
            continue
        for e in st.events:
            what = _snapshot_action(e) if isinstance(e, SnapshotEvent) else INSTRUMENT_EVENTS.get(e.kind)
            if what and abs(e.t - t) <= INSTRUMENT_NEAR_S:
                out.append(what)
    return list(dict.fromkeys(out))


def _where(p: dict[str, Any]) -> str:
    epoch = f", epoch {p['epoch']}" if p["epoch"] else ""
    return f"phase {p['phase']} (stage {p['stage']}{epoch}, step {p['step']})"


def _parts_grown(run: Run | None, p: dict[str, Any]) -> str | None:
    """Which parts of the account grew in the peak's phase and epoch (None: no account moment
    near the peak in that phase): :func:`harness.analysis.account.phase_growth`."""
    if run is None:
        return None
    g = account.phase_growth(run)
    g = g[(g["stage"] == p["stage"]) & (g["epoch"] == p["epoch"]) & (g["phase"] == p["phase"])]
    return None if g.empty else str(g["grew"].iloc[-1])


@finding("peak_phase", severity="info", doc="reports.md#peak_phase",
         title="the phase holding the peak", order=50)
def peak_phase(tk: pd.DataFrame, run: Run | None = None) -> Finding | None:
    """The phase (and stage, epoch, step) that holds the peak RSS of the main process and tree
    while the workload ran (until its teardown phase or ``stage_end``): the summary's headline
    peaks.

    Drawn only for a workload that marks phases of its own (a tick outside setup, teardown,
    idle and none). A higher peak after the workload ended (the harness's end-of-stage work, the
    process shutting down) is reported
    beside it, with whose memory it is.
    """
    if tk.empty or tk["main_rss"].isna().all():
        return None
    before_end = tk[~after_stage_end(run, tk)].dropna(subset=["main_rss"])
    running = running_ticks(run, tk).dropna(subset=["main_rss"])
    if running.empty or running["phase"].isin(HARNESS_PHASES).all():
        return None  # no phases of the workload's own to name
    m = tick_peak(running, "main_rss")
    tr = tick_peak(running, "tree_rss")
    if m is None or tr is None:
        return None
    rest = before_end[(before_end["phase"] != m["phase"])
                      & (before_end["stage"] == m["stage"])]["main_rss"]
    other_max = float(rest.max()) if not rest.empty else None
    text = f"While the workload ran, the main process peaked at {mib(m['bytes'])} in {_where(m)}"
    if other_max is not None and not math.isnan(other_max):
        margin = m["bytes"] - other_max
        text += (f", {mib(margin)} above the largest RSS of any other phase" if margin >= MiB
                 else ", level (within 1 MiB) with the other phases: no phase stands out")
    text += f". The RSS summed over the tree's processes peaked at {mib(tr['bytes'])} in {_where(tr)}"
    fp = tick_peak(running.dropna(subset=["tree_footprint"]), "tree_footprint") \
        if "tree_footprint" in running.columns else None
    text += (f"; its footprint, shared pages counted once, at {mib(fp['bytes'])} in {_where(fp)}."
             if fp is not None else ".")
    grew = _parts_grown(run, m)
    if grew is not None:
        text += f" In the account, {m['phase']} grew {grew}."
    near = _instrument_near(run, m["stage"], m["t"])
    if near:
        text += (f" Within {INSTRUMENT_NEAR_S:g} s of that peak the harness {' and '.join(near)}: "
                 "part of it may be the instrument's own memory.")
    td = teardown_peak(run, tk, "main_rss")
    shutdown = td if td is not None and td["bytes"] > m["bytes"] else None
    if shutdown is not None:
        text += (f" After the workload finished, the process shutting down reached "
                 f"{mib(shutdown['bytes'])}, {shutdown['after_end_s']:.1f} s after stage "
                 f"{shutdown['stage']}'s stage_end")
        kind = rise_kind(shutdown)
        if shutdown["rise"] is not None and shutdown["rise"] > 0:
            text += f", {mib(shutdown['rise'])} above its last reading before it"
        if kind == "file-backed":
            text += f", {mib(shutdown['file_backed_rise'])} of that in file-backed pages: {WHOSE[kind]}"
        elif kind == "anonymous":
            text += f", mostly {WHOSE[kind]}"
        text += (". It is reported apart, as the teardown peak, and gated only where a budget "
                 "names it (peak_main_rss_teardown).")
    return Finding(kind="peak_phase", title=f"The peak is in phase {m['phase']}", text=text,
                   numbers={"main": m, "tree": tr, "main_other_phases_max": other_max,
                            "harness_actions_near_peak": near, "after_workload": shutdown,
                            "parts_grown": grew})


def all_findings(run: Run, tk: pd.DataFrame, captures: list[CaptureData]) -> list[Finding]:
    """The host-memory findings of one process: every registered ``process`` detector, in order
    (the report runs them per rank, with the others: :func:`harness.analysis.ranks.all_findings`)."""
    arguments = {"run": run, "tk": tk, "captures": captures,
                 "device_table": device.device_table(run), "device_total": None}
    found = [d(arguments) for d in detectors("process")]
    return [f for f in found if f is not None]
