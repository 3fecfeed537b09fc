"""DataLoader workers that grow from epoch to epoch, each named by the line that keeps the memory.

Each worker's memory at the end of each epoch is its own reading (``worker_epoch_end``, written by
the worker as its epoch's batches are all fetched: :mod:`harness.probe.workers`), else its last
sampled tick in the epoch (the sampler reads a worker's USS at ``sampling.full_hz``, the epoch is
the probe cell's; only the ticks while the workload ran count: before ``stage_end``, not in
``teardown``). The sampler alone may miss an epoch's end: on a loaded machine its thread went
seconds without a tick while the rest of the last epoch was fetched. A worker grows in an epoch
when its anonymous RSS at the epoch's end is above that at the previous epoch's end (the same
process: a persistent worker) or, for a worker started in the epoch, above its first tick in it.

Anonymous RSS, not USS, is what it allocated itself: a forked worker's USS also rises when the
parent or a sibling writes a page the three shared (the copy left to the worker becomes its own),
by tens of MiB in one tick at the end of an epoch, the worker allocating nothing; a worker that
reads its inherited pages (copy-on-read, :func:`harness.analysis.findings.copy_on_read`) grows in
USS alone too. The lines come from the workers' own memray windows: the allocations made in a
window that are still alive when it closes, grouped by the worker's source line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from harness.analysis.captures import CaptureData
from harness.analysis.finding import Finding, finding, mib
from harness.analysis.load import Run
from harness.analysis.peaks import running_ticks
from harness.records.events import MemrayStart, WorkerEpochEnd
from harness.sizes import MiB

# worker_leak: a worker's anonymous RSS grows by at least this in every epoch after its first ...
WORKER_LEAK_MIN_EPOCH_GROWTH = 8 * MiB
WORKER_LEAK_MIN_EPOCHS = 2  # ... in at least this many epochs (the first, warm-up, not counted)
WORKER_LEAK_MAX_LINES = 3  # lines named per worker


@dataclass(frozen=True)
class WorkerGrowth:
    """One worker process's growth in each epoch it was sampled through (epoch -> bytes)."""

    stage: str
    pid: int
    role: str  # the sampler's: worker N (N its slot), rank R worker N
    worker: int | None  # the DataLoader's worker id, where a window of its own says it
    uss: dict[int, float]  # USS at the epoch's end
    uss_growth: dict[int, float]
    anon_growth: dict[int, float]
    read_by_worker: frozenset[int] = frozenset()  # the epochs whose end is the worker's own reading
    first_epoch: int | None = None  # the first it was seen in (its warm-up); None: its first measured

    def leaking(self) -> bool:
        """Anonymous RSS up by WORKER_LEAK_MIN_EPOCH_GROWTH in every epoch after the first it was
        measured through, and in at least WORKER_LEAK_MIN_EPOCHS of them."""
        later = self.later_epochs
        if len(later) < WORKER_LEAK_MIN_EPOCHS:
            return False
        return all(self.anon_growth[e] >= WORKER_LEAK_MIN_EPOCH_GROWTH for e in later)

    @property
    def later_epochs(self) -> list[int]:
        """The epochs after the worker's first (its warm-up) and after epoch 1."""
        grown = sorted(self.uss_growth)
        first = self.first_epoch if self.first_epoch is not None else (grown[0] if grown else 0)
        return [e for e in grown if e > first and e >= 2]

    @property
    def per_epoch(self) -> float:
        """The median anonymous growth over :attr:`later_epochs`."""
        later = [self.anon_growth[e] for e in self.later_epochs]
        return float(pd.Series(later).median()) if later else 0.0

    @property
    def name(self) -> str:
        return f"worker {self.worker}" if self.worker is not None else self.role


def _stages(run: Run) -> list[tuple[str, list[Any]]]:
    """Each stage's name and its events, a distributed stage's ranks' own included."""
    return [(st.name, [e for x in (st, *st.ranks) for e in x.events]) for st in run.stages]


def _worker_ids(run: Run) -> dict[tuple[str, int], int]:
    """(stage, pid) -> DataLoader worker id, from the workers' own windows and readings."""
    out: dict[tuple[str, int], int] = {}
    for stage, events in _stages(run):
        for ev in events:
            if isinstance(ev, MemrayStart | WorkerEpochEnd) and ev.worker is not None \
                    and ev.pid is not None:
                out[(stage, ev.pid)] = ev.worker
    return out


def own_readings(run: Run) -> dict[tuple[str, int], list[WorkerEpochEnd]]:
    """(stage, pid) -> the worker's own readings as its epochs ended (``worker_epoch_end``), in
    the order written."""
    out: dict[tuple[str, int], list[WorkerEpochEnd]] = {}
    for stage, events in _stages(run):
        for ev in events:
            if isinstance(ev, WorkerEpochEnd):
                out.setdefault((stage, ev.pid), []).append(ev)
    return out


def before_exit(ticks: pd.DataFrame, readings: dict[tuple[str, int], list[WorkerEpochEnd]]) -> pd.DataFrame:
    """A worker's ticks labelled before its own reading as it was told to exit (all of them for
    a worker without one). A tick's time and epoch are its start's, its reads come later (up to a
    second on a loaded machine), and a worker exiting, or its sibling exited, is no reading of its
    work: the pages the two shared become the survivor's own (measured: USS +35 MiB in one tick,
    its anonymous RSS +0.5)."""
    exits = {k: min(r.t for r in rs if r.exiting) for k, rs in readings.items() if any(r.exiting for r in rs)}
    if not exits or ticks.empty:
        return ticks
    limit = [exits.get((str(stage), int(pid)), math.inf) for stage, pid in zip(ticks["stage"], ticks["pid"], strict=True)]
    return ticks[ticks["t"].to_numpy() < limit]


def worker_growth(run: Run) -> list[WorkerGrowth]:
    """Each DataLoader worker's USS and anonymous RSS growth, epoch by epoch, while the workload
    ran."""
    readings = own_readings(run)
    # the last, if an epoch ended twice
    own = {k: {r.epoch: (float(r.uss), float(r.rss - r.shared)) for r in rs if r.epoch >= 1}
           for k, rs in readings.items()}
    s = run.samples
    if s.empty or "uss" not in s.columns:
        s = pd.DataFrame(columns=["t", "stage", "pid", "role", "epoch", "uss", "rss", "shared"])
    else:
        s = running_ticks(run, s)
        s = s[s["role"].astype(str).str.contains("worker") & s["uss"].notna() & (s["epoch"] >= 1)]
        s = before_exit(s, readings)
    s = s.sort_values("t", kind="stable").assign(anon=s["rss"] - s["shared"].fillna(0))
    ids = _worker_ids(run)
    ticks = {(str(stage), int(pid)): rows for (stage, pid), rows in s.groupby(["stage", "pid"], sort=False)}
    out = []
    for key in [*ticks, *(k for k in own if k not in ticks)]:
        rows = ticks.get(key)
        read = own.get(key, {})
        first: dict[int, tuple[float, float]] = {}
        end: dict[int, tuple[float, float]] = {}
        if rows is not None:
            for epoch, r in rows.groupby("epoch"):
                first[int(epoch)] = (float(r["uss"].iloc[0]), float(r["anon"].iloc[0]))
                end[int(epoch)] = (float(r["uss"].iloc[-1]), float(r["anon"].iloc[-1]))
        end.update(read)  # the worker's own reading is its epoch's very end
        uss: dict[int, float] = {}
        d_uss: dict[int, float] = {}
        d_anon: dict[int, float] = {}
        for epoch in sorted(end):
            base = end.get(epoch - 1) or first.get(epoch)
            if base is None:  # started in the epoch and never sampled: nothing to grow from
                continue
            uss[epoch] = end[epoch][0]
            d_uss[epoch] = end[epoch][0] - base[0]
            d_anon[epoch] = end[epoch][1] - base[1]
        role = str(rows["role"].iloc[-1]) if rows is not None else ""
        worker = ids.get(key)
        out.append(WorkerGrowth(key[0], key[1], role or f"worker {worker}", worker, uss, d_uss, d_anon,
                                frozenset(read), min(end) if end else None))
    return out


def worker_lines(captures: list[CaptureData], stage: str, pid: int) -> list[dict[str, Any]]:
    """The lines whose allocations a worker's own windows found alive at their end, most first:
    bytes and allocations per batch the worker fetched, over its windows of epoch 2 and later
    (all its windows when it has none of those)."""
    own = [c for c in captures if c.capture.stage == stage and c.pid == pid and not c.error
           and c.window.worker is not None and c.leaks_read and c.window.batches]
    later = [c for c in own if (c.window.epoch or 0) >= 2]
    rows = []
    for c in later or own:
        sites = c.sites[c.sites["leaked_bytes"] > 0]
        for r in sites.itertuples(index=False):
            where = r.workload_line or r.site
            rows.append({"where": where, "source": r.source, "capture": c.capture.name,
                         "epoch": c.window.epoch, "batches": c.window.batches,
                         "leaked_bytes": int(r.leaked_bytes),
                         "leaked_allocations": int(r.leaked_allocations)})
    if not rows:
        return []
    df = pd.DataFrame(rows)
    per = df.groupby("where", sort=False).agg(
        source=("source", "first"), leaked_bytes=("leaked_bytes", "sum"),
        leaked_allocations=("leaked_allocations", "sum"), windows=("capture", "nunique")).reset_index()
    batches = df.drop_duplicates("capture")["batches"].sum()
    per = per.assign(bytes_per_batch=per["leaked_bytes"] / batches,
                     allocations_per_batch=per["leaked_allocations"] / batches,
                     batches=int(batches))
    return list(per.sort_values("leaked_bytes", ascending=False).to_dict(orient="records"))


@finding("worker_leak", severity="warning", doc="reports.md#worker_leak",
         title="a DataLoader worker grows from epoch to epoch", order=12)
def worker_leak(run: Run, captures: list[CaptureData]) -> Finding | None:
    """DataLoader workers whose USS grows in every epoch after the first, with the lines that keep it."""
    hits = [g for g in worker_growth(run) if g.leaking()]
    if not hits:
        return None
    said = []
    workers = []
    for g in hits:
        lines = worker_lines(captures, g.stage, g.pid)[:WORKER_LEAK_MAX_LINES]
        epochs = g.later_epochs
        text = (f"{g.name} (pid {g.pid}, {g.stage}) grows {mib(g.per_epoch)} an epoch in anonymous "
                f"RSS, memory it allocated (USS {', '.join(mib(g.uss[e]) for e in sorted(g.uss))} "
                f"at the ends of epochs {', '.join(str(e) for e in sorted(g.uss))})")
        if lines:
            text += "; " + "; ".join(
                f"line {ln['where']}{' `' + ln['source'] + '`' if ln['source'] else ''} keeps "
                f"{ln['bytes_per_batch']:,.0f} bytes ({ln['allocations_per_batch']:.1f} allocations) "
                f"a batch it fetches" for ln in lines)
        else:
            text += "; no window of its own names a line (memray.workers off, or its epochs untracked)"
        said.append(text)
        workers.append({"stage": g.stage, "pid": g.pid, "role": g.role, "worker": g.worker,
                        "growth_per_epoch": g.per_epoch, "epochs": epochs,
                        "uss_growth": {str(e): v for e, v in g.uss_growth.items()},
                        "anon_rss_growth": {str(e): v for e, v in g.anon_growth.items()},
                        "read_by_worker": sorted(g.read_by_worker),
                        "lines": lines})
    return Finding(
        kind="worker_leak",
        title="DataLoader workers grow from epoch to epoch (a leak in the worker)",
        text=("Memory a DataLoader worker keeps, in every epoch after the first: "
              + ". ".join(said) + ". A worker holds its own copy of the Dataset: whatever "
              "__getitem__ stores on it (a list of samples, a cache) grows in that worker only, "
              "unseen by the main process."),
        numbers={"workers": workers},
    )
