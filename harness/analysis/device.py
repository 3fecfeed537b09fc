"""CUDA device memory, from a finished run's files: per-phase peaks, history windows, findings.

Everything here reads what the probe wrote on a ``device: cuda`` run (``phase_totals`` events'
``cuda`` per phase, ``cuda_history`` events and their pickles, snapshots' ``cuda``) and returns
nothing (empty tables, no findings) for a CPU run. The parsing and the findings themselves live
in :mod:`harness.probe.cuda`, which the recorded H100 data tests on machines without a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from harness.analysis import cuda
from harness.analysis.finding import Finding, detectors, finding
from harness.analysis.load import Run
from harness.analysis.ticks import phase_order
from harness.layout import HARNESS_PHASES
from harness.records.events import CudaHistory, PhaseTotals
from harness.records.snapshots import SnapshotCuda

DEVICE_COLUMNS = (
    "stage", "epoch", "phase", "readings", "peak_allocated", "peak_reserved",
    "allocated", "reserved", "inactive_split", "retries", "ooms",
)
MEMORY_VIZ = "https://pytorch.org/memory_viz"


def is_cuda(run: Run) -> bool:
    """Whether the run asked for a CUDA device (its scenario's ``device``)."""
    return run.scenario is not None and run.scenario.device.startswith("cuda")


def device_table(run: Run) -> pd.DataFrame:
    """Per stage x epoch x phase: the device's peaks (each phase its own) and its latest state.

    From the probe's device steps (every ``cuda.sample_every``-th training step and every
    traced one; a validation or test section is one reading). ``allocated``/``reserved`` are
    at the phase's end on the last device step; ``retries``/``ooms`` are the allocator's
    running counts then. Empty on the CPU.
    """
    rows = []
    for st in run.stages:
        for ev in st.events_of(PhaseTotals):
            for phase, c in (ev.cuda or {}).items():
                rows.append({"stage": st.name, "epoch": ev.epoch, "phase": phase,
                             **{k: getattr(c, k) for k in DEVICE_COLUMNS[3:]}})
    df = pd.DataFrame(rows, columns=list(DEVICE_COLUMNS))
    if df.empty:
        return df
    # A stage's epoch 0 can be flushed twice (before the first epoch, and the "rest" at the end).
    df = df.groupby(["stage", "epoch", "phase"], sort=False, as_index=False).agg(
        readings=("readings", "sum"), peak_allocated=("peak_allocated", "max"),
        peak_reserved=("peak_reserved", "max"), allocated=("allocated", "last"),
        reserved=("reserved", "last"), inactive_split=("inactive_split", "last"),
        retries=("retries", "max"), ooms=("ooms", "max"))
    order = {s.name: i for i, s in enumerate(run.stages)}
    df["_s"] = df["stage"].map(order)
    df["_p"] = df["phase"].map(phase_order)
    return df.sort_values(["_s", "epoch", "_p"], ignore_index=True).drop(columns=["_s", "_p"])


def _device_snapshots(run: Run) -> list[tuple[str, str, SnapshotCuda]]:
    """(stage, label, snapshot's ``cuda``) for every snapshot that read the device, in order."""
    return [(st.name, label, snap.cuda) for st in run.stages
            for label, snap in st.snapshots.items() if snap.cuda is not None]


@dataclass
class HistoryWindow:
    """One allocator-history pickle the probe wrote, and what it shows."""

    stage: str
    epoch: int
    start: int
    stop: int
    file: str  # relative to the run directory
    bytes: int
    entries_kept: int
    entries_dropped: int
    summary: cuda.HistorySummary | None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        s = self.summary
        return {
            "stage": self.stage, "epoch": self.epoch, "start": self.start, "stop": self.stop,
            "file": self.file, "bytes": self.bytes, "entries_kept": self.entries_kept,
            "entries_dropped": self.entries_dropped, "error": self.error,
            "segments": s.segments if s else None, "reserved": s.reserved if s else None,
            "allocated": s.allocated if s else None, "free": s.free if s else None,
            "largest_free_block": s.largest_free_block if s else None,
            "fragmentation": s.fragmentation if s else None,
            "top_sites": [{"site": t.site, "bytes": t.bytes, "count": t.count}
                          for t in s.top_alloc_sites[:5]] if s else [],
        }


def history_windows(run: Run) -> list[HistoryWindow]:
    """Every ``cuda_history`` window, its pickle summarised (a broken file is noted, not fatal).

    The pickles are loaded with :func:`harness.probe.cuda.load_history`: they are this harness's own
    recordings in a run directory the user pointed at.
    """
    out = []
    for st in run.stages:
        stage_dir = st.dir
        for ev in st.events_of(CudaHistory):
            rel = ev.file
            path = stage_dir / rel
            summary, error = None, None
            try:
                summary = cuda.summarize_history(cuda.load_history(path))
            except FileNotFoundError:
                error = "the file is missing"
            except Exception as exc:  # noqa: BLE001 - one unreadable pickle costs its summary
                error = f"{type(exc).__name__}: {exc}"
            out.append(HistoryWindow(
                st.name, ev.epoch, ev.start, ev.stop, str(path.relative_to(run.dir)),
                ev.bytes, ev.entries_kept, ev.entries_dropped or 0, summary, error))
    return out


def device_info(run: Run) -> dict[str, Any] | None:
    """The device's name and total memory, the least free the driver reported; None on the CPU."""
    snaps = _device_snapshots(run)
    if not snaps and not is_cuda(run):
        return None
    free = [c.device_free for _, _, c in snaps if c.device_free is not None]
    total = next((c.device_total for _, _, c in snaps if c.device_total), None)
    name = next((c.name for _, _, c in snaps if c.name), None)
    last = snaps[-1][2].cuda_stats() if snaps else None
    pinned = [int((c.host or {}).get("allocated_bytes.peak") or 0) for _, _, c in snaps]
    return {
        "device": run.scenario.device if run.scenario is not None else "cuda", "name": name, "total": total,
        "free_min": min(free) if free else None,
        "retries": last.num_alloc_retries if last else None,
        "ooms": last.num_ooms if last else None,
        "pinned_host_peak": max(pinned) if pinned else None,
    }


def summary_section(info: dict[str, Any] | None,
                    windows: list[HistoryWindow]) -> dict[str, Any] | None:
    """summary.json's ``cuda``: :func:`device_info` and the history windows; None on the CPU."""
    return None if info is None else {**info, "history": [w.to_dict() for w in windows]}


def _finding(kind: str, title: str, f: Any, **extra: Any) -> Finding:
    numbers = {k: v for k, v in vars(f).items() if k not in ("text", "kind")}
    return Finding(kind=kind, title=title, text=f.text, numbers={**numbers, **extra})


@finding("cuda_peak_phase", severity="info", doc="reports.md#cuda_peak_phase",
         title="the phase holding the device's peak", scope="device", order=10)
def _peak_phase(device_table: pd.DataFrame, device_total: int | None) -> Finding | None:
    table = device_table
    if table.empty or table["phase"].isin(HARNESS_PHASES).all():
        return None  # no phases of the workload's own to name
    peak = cuda.device_peak_phase(table, device_total=device_total)
    if peak is None:
        return None
    row = table.iloc[peak.row]
    where = f" (stage {row['stage']}" + (f", epoch {row['epoch']})" if row["epoch"] else ")")
    return Finding(
        kind="cuda_peak_phase", title=f"Device memory peaks in phase {peak.phase}",
        text=peak.text.rstrip(".") + where + ".",
        numbers={"phase": peak.phase, "stage": str(row["stage"]), "epoch": int(row["epoch"]),
                 "peak_allocated": peak.peak_allocated, "peak_reserved": peak.peak_reserved,
                 "share_of_device": peak.share_of_device})


@finding("cuda_pinned_host", severity="warning", doc="reports.md#cuda_pinned_host",
         title="host memory pinned for transfers", scope="device", order=40)
def _pinned_host(run: Run) -> Finding | None:
    """The snapshot with the most host memory pinned, if any held enough to be a finding."""
    best = None
    for st in run.stages:
        for label, snap in st.snapshots.items():
            main = snap.main()
            rss = main.rss if main is not None else None
            f = cuda.pinned_host_memory((snap.cuda.host if snap.cuda else None) or {}, rss=rss)
            if f is not None and (best is None or f.peak_pinned > best[0].peak_pinned):
                best = (f, st.name, label)
    if best is None:
        return None
    return _finding("cuda_pinned_host", "Host memory pinned for transfers", best[0],
                    stage=best[1], snapshot=best[2])


def _parsed_snapshots(run: Run) -> list[tuple[str, str, cuda.CudaStats]]:
    return [(stage, label, stats) for stage, label, c in _device_snapshots(run)
            if (stats := c.cuda_stats()) is not None]


@finding("cuda_reserved", severity="warning", doc="reports.md#cuda_reserved",
         title="reserved far above allocated", scope="device", order=20)
def _reserved(run: Run) -> Finding | None:
    """Reserved far above allocated, at the snapshot where the gap was widest."""
    parsed = _parsed_snapshots(run)
    if not parsed:
        return None
    stage, label, stats = max(parsed, key=lambda r: r[2].reserved - r[2].allocated)
    gap = cuda.reserved_far_above_allocated(stats)
    if gap is None:
        return None
    return _finding("cuda_reserved", f"Reserved far above allocated ({gap.cause})", gap,
                    stage=stage, snapshot=label)


@finding("cuda_retries", severity="warning", doc="reports.md#cuda_retries",
         title="allocator retries and out-of-memory errors", scope="device", order=30)
def _retries(run: Run) -> Finding | None:
    """Allocator retries or OOMs, at the last snapshot."""
    parsed = _parsed_snapshots(run)
    if not parsed:
        return None
    stage, label, stats = parsed[-1]
    retries = cuda.allocator_retries(stats)
    if retries is None:
        return None
    title = ("The CUDA device ran out of memory" if retries.ooms
             else "The CUDA allocator had to free its cache and retry")
    return _finding("cuda_retries", title, retries, stage=stage, snapshot=label)


def findings(run: Run, table: pd.DataFrame, device_total: int | None = None) -> list[Finding]:
    """The GPU findings of one process: every registered ``device`` detector, in order (the
    phase holding the device peak, reserved far above allocated, allocator retries or OOMs,
    pinned host memory)."""
    arguments = {"run": run, "device_table": table, "device_total": device_total}
    found = [d(arguments) for d in detectors("device")]
    return [f for f in found if f is not None]
