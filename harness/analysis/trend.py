"""Memory that keeps growing while the workload runs, found without epochs: a robust trend.

The per-epoch leak finding (:func:`harness.analysis.findings.leak`) needs epoch-end snapshots,
which a script without probe calls does not have. This one fits a line to what the sampler and
memray recorded anyway: the main process's RSS, its workers' RSS (summed over the workers of each
tick), and memray's heap of the main process where a capture recorded it. RSS is fitted less its
file-backed pages (a memory-mapped file being read, libraries' code: the page cache's, given back
under pressure, not a leak) where the sampler read them; the finding says how much of the growth
was anonymous memory and how much shared memory (and what the file-backed pages did, beside it).

Each series is cut to the time the workload ran (up to its stage's ``stage_end``: the shutdown
after it is not the workload's) less a warm-up, and fitted against the training steps done (the
probe's step counter, summed over the epochs' loops), not against time: the same leak keeps the
same bytes a step on a fast machine and on a slow one, busy or idle. On that axis a series has
one value a step (:func:`step_grid`: the last reading at or before it), however many readings
each step had: a loaded machine reads an evaluation pass (at one step count) hundreds of times,
an idle one a few, and either way its rise is one rise between two steps. A stage with too few
steps is fitted against time, and then no slope threshold applies (only the rises in bytes). The fit is
the Theil–Sen estimator (the median of the slopes between every pair of points, thinned to at most
:data:`TREND_MAX_POINTS`), which a spike, a garbage collection or a worker restarting moves no more
than any single point.

A series is a trend when it grows at least :data:`TREND_MIN_EPOCH_SLOPE` an epoch (where the
stage's steps per epoch are known; else :data:`TREND_MIN_STEP_SLOPE` a step; the rate is the rise
between its first and last quarters' medians over the steps between them, which a staircase
has as much as a line), and the growth is in the data, not only in the fitted line: the median of its last quarter exceeds the median of its first by
:data:`TREND_MIN_RISE`, and by at least :data:`TREND_MIN_EXPLAINED` of what the line predicts
between those quarters, and the rise is spread: of the rises between the medians of
:data:`TREND_SEGMENTS` consecutive parts of the series (of its steps), none is more than
:data:`TREND_MAX_ONE_RISE` of the whole, nor two side by side more than :data:`TREND_MAX_TWO_RISES`
(a part's median can fall halfway up one step), so one step up between two plateaus (the first
evaluation pass's first use) does not fire it, while a staircase (memory rising at each evaluation
pass, flat between) of two steps or more does, wherever its steps fall.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from harness.analysis.captures import CaptureData
from harness.analysis.finding import Finding, finding, mib
from harness.analysis.load import Run
from harness.analysis.peaks import after_stage_end
from harness.layout import HARNESS_PHASES, capture_name
from harness.records.events import LoopEnd
from harness.records.vocab import TRAINING_STEP_PHASES
from harness.sizes import KiB, MiB, format_size

TREND_GRID_MAX = 20_000  # a series on the steps axis has one point a step, at most this many
TREND_MAX_POINTS = 400  # a series is thinned to this many points: ~80,000 pairs to take slopes of
WARMUP_FRACTION = 0.25  # the first quarter of the running steps (time, without steps) is warm-up
# (imports, first batches, the allocator's and the optimizer's first-use growth), and on the time
WARMUP_MIN_S = 2.0  # axis at least this many seconds
TREND_MIN_POINTS = 20  # points a series needs after warm-up, and
TREND_MIN_SPAN_S = 5.0  # seconds they must span (a smoke test pass's 2 s rose 23 MiB: start-up)
TREND_MIN_STEPS = 20  # training steps a stage needs to be fitted against steps (else: time)
TREND_MIN_EPOCH_SLOPE = 4 * MiB  # bytes an epoch, at least, where epochs are known (a clean
# JPEG baseline's epoch-end RSS moves <= 1.4 MiB an epoch), else
TREND_MIN_STEP_SLOPE = 8 * KiB  # bytes a step, at least
TREND_MIN_RISE = 24 * MiB  # last-quarter median minus first-quarter median, at least (clean: 17)
TREND_MIN_EXPLAINED = 0.5  # ... and at least this share of the fitted line's rise between the
# quarters' middles: the growth is in the data, not only in the line. (It may be more: a staircase
# of a few epochs has most pairs of points on one step, and its Theil-Sen slope is low.)
TREND_SEGMENTS = 8  # the series cut into this many parts, each part's median: no rise between
TREND_MAX_ONE_RISE = 0.6  # two consecutive ones more than this share of the first-to-last rise
TREND_MAX_TWO_RISES = 0.75  # nor two rises side by side more than this (one step read as two)
TREND_MAX_SITES = 5  # sites named in the finding
# Leaks counted per step (step_leaks; the leak finding and this one name them): a line that kept
# memory made in steps throughout one training window whose step ends the probe marked,
LEAK_MIN_MARKED_STEPS = 8  # of at least this many marked steps (its first left out: first calls),
LEAK_STEP_PARTS = 4  # made in each of this many equal parts of its steps (growth, not one fill),
LEAK_MIN_KEPT_STEPS = 4  # in at least this many of its steps,
LEAK_MIN_STEP_BYTES = 512  # at least this many bytes a step on average (a loss kept with its graph: ~9 KB)
SHARED_CACHE_SITE = "torch/multiprocessing/reductions.py"  # torch's SharedCache (step_leaks)
SHARED_CACHE_MAX_ENTRY = 4096  # bytes an allocation there, under which it is its bookkeeping
IMPORT_LINE = r"\s*(import|from)\s"  # a workload line that imports: what it keeps is a module
KINDS = {"anon": "anonymous", "shmem": "shared memory", "file": "file-backed"}


def theil_sen(t: np.ndarray, y: np.ndarray, max_points: int = TREND_MAX_POINTS) -> float | None:
    """The Theil–Sen slope of ``y`` over ``t``: the median of the slopes of all pairs of points.

    Longer series are first thinned to ``max_points`` evenly spaced points. Pairs at the same
    ``t`` have no slope and are left out; None when no pair is left.
    """
    t = np.asarray(t, dtype=float)
    y = np.asarray(y, dtype=float)
    if len(t) > max_points:
        keep = np.unique(np.linspace(0, len(t) - 1, max_points).round().astype(int))
        t, y = t[keep], y[keep]
    i, j = np.triu_indices(len(t), k=1)
    dt = t[j] - t[i]
    ok = dt != 0
    if not ok.any():
        return None
    return float(np.median((y[j] - y[i])[ok] / dt[ok]))


@dataclass(frozen=True)
class Trend:
    """One series' fit: its slope, and how its parts moved."""

    stage: str
    series: str  # main_rss | workers_rss | heap
    capture: str | None  # the memray capture a heap series is from
    axis: str  # "steps": fitted against the training steps done; "seconds": against time
    t0: float
    t1: float
    x0: float  # the fitted span on its axis
    x1: float
    points: int
    slope: float  # Theil-Sen's, bytes a step (axis "steps") or a second (axis "seconds")
    rise: float  # last-quarter median minus first-quarter median, bytes
    quarters_apart: float  # the first and last quarters' middles apart on the axis
    fitted_rise: float  # what the line predicts between the two quarters' middles, bytes
    segment_rises: tuple[float, ...]  # between the medians of consecutive segments, bytes
    steps_per_epoch: float | None  # where epochs are known
    parts: dict[str, float] = field(default_factory=dict)  # anon/file/shmem: each part's rise
    less_file: bool = False  # RSS fitted less its file-backed pages

    @property
    def rate(self) -> float:
        """The growth's rate: the rise between the first and last quarters' medians over the
        distance between their middles, bytes a step (or a second). Theil-Sen's slope is the
        line's, and a staircase's is low (most pairs of points lie on one of its steps)."""
        return self.rise / self.quarters_apart if self.quarters_apart > 0 else 0.0

    @property
    def per_step(self) -> float | None:
        return self.rate if self.axis == "steps" else None

    @property
    def per_epoch(self) -> float | None:
        if self.axis != "steps" or not self.steps_per_epoch:
            return None
        return self.rate * self.steps_per_epoch

    @property
    def steep(self) -> bool:
        """The rate's threshold: per epoch where epochs are known, else per step; none on time."""
        if self.axis != "steps":
            return True
        if self.per_epoch is not None:
            return self.per_epoch >= TREND_MIN_EPOCH_SLOPE
        return self.rate >= TREND_MIN_STEP_SLOPE

    @property
    def spread(self) -> bool:
        """No single rise makes most of the growth, nor two side by side: one step up can be
        read as two where a segment's median falls halfway up it (an even number of points, or
        memory that climbs over a few steps)."""
        rises = self.segment_rises
        total = sum(rises)
        pairs = [a + b for a, b in zip(rises, rises[1:])] or list(rises)
        return (total > 0 and max(rises) <= TREND_MAX_ONE_RISE * total
                and max(pairs) <= TREND_MAX_TWO_RISES * total)

    @property
    def grows(self) -> bool:
        """Steep enough, and the data (not only the line) rose, spread over the run."""
        return (self.steep and self.rise >= TREND_MIN_RISE
                and self.rise >= TREND_MIN_EXPLAINED * self.fitted_rise and self.spread)

    @property
    def kind(self) -> str:
        """Which kind of memory grew most: anonymous, shared memory or file-backed (heap: anonymous)."""
        counted = {k: v for k, v in self.parts.items() if not (self.less_file and k == "file")}
        if not counted:
            return KINDS["anon"] if self.series == "heap" else "resident (parts not recorded)"
        return KINDS[max(counted, key=lambda k: counted[k])]


def fit(stage: str, series: str, t: np.ndarray, y: np.ndarray, *, x: np.ndarray | None = None,
        capture: str | None = None, steps_per_epoch: float | None = None,
        parts: dict[str, np.ndarray] | None = None) -> Trend | None:
    """Fit one series (already cut to the running time after warm-up) against ``x`` (training
    steps done; None: against ``t``); None if too short. ``parts``: RSS's parts at the same
    points, whose rises the trend reports."""
    xs = t if x is None else x
    ok = ~(np.isnan(t) | np.isnan(y) | np.isnan(xs))
    t, y, xs = t[ok], y[ok], xs[ok]
    if len(t) < TREND_MIN_POINTS or t[-1] - t[0] < TREND_MIN_SPAN_S or xs[-1] - xs[0] <= 0:
        return None
    points = int(len(t))
    x0, x1 = float(xs[0]), float(xs[-1])
    kept = {name: values[ok] for name, values in (parts or {}).items()}
    if x is not None:  # one value a training step, however many readings each step had
        xs, at = step_grid(xs)
        if len(xs) < TREND_SEGMENTS:
            return None
        y = y[at]
        kept = {name: v[at] for name, v in kept.items()}
    slope = theil_sen(xs, y)
    if slope is None:
        return None
    mx = [float(np.median(q)) for q in np.array_split(xs, 4)]
    my = [float(np.median(q)) for q in np.array_split(y, 4)]
    seg = [float(np.median(q)) for q in np.array_split(y, TREND_SEGMENTS) if len(q)]
    rises = {}
    for name, v in kept.items():
        if np.isnan(v).any() or not len(v):
            continue
        q = np.array_split(v, 4)
        rises[name] = float(np.median(q[-1]) - np.median(q[0]))
    return Trend(stage=stage, series=series, capture=capture,
                 axis="seconds" if x is None else "steps", t0=float(t[0]), t1=float(t[-1]),
                 x0=x0, x1=x1, points=points, slope=slope,
                 rise=my[3] - my[0], quarters_apart=mx[3] - mx[0],
                 fitted_rise=slope * (mx[3] - mx[0]),
                 segment_rises=tuple(max(b - a, 0.0) for a, b in zip(seg, seg[1:])),
                 steps_per_epoch=steps_per_epoch if x is not None else None,
                 parts=rises, less_file=parts is not None and "file" in rises)


def step_grid(x: np.ndarray, max_points: int = TREND_GRID_MAX) -> tuple[np.ndarray, np.ndarray]:
    """A grid of training steps over ``x`` (steps done at each reading, non-decreasing): every
    step from the first to the last (at most ``max_points`` of them, evenly spaced), and at each
    the index of the last reading taken at or before it: what memory held at that step, after
    everything done at its step count (an evaluation pass, a checkpoint) and before the next.

    A series cut so has one point a step whether the machine took ten readings a step or one
    every ten steps: an evaluation pass's rise is one rise between two steps, however many
    readings it took (on a loaded machine, many), not a ramp that parts cut by readings split.
    """
    first, last = float(np.ceil(x[0])), float(np.floor(x[-1]))
    count = int(last - first) + 1
    grid = (np.linspace(first, last, max_points) if count > max_points
            else first + np.arange(max(count, 1), dtype=float))
    return grid, np.searchsorted(x, grid, side="right") - 1


def steps_done(g: pd.DataFrame) -> np.ndarray:
    """The training steps done by each tick of one stage (in time order): the probe's step counter
    summed over the training loops (it starts again at each loop's first step), held through the
    ticks outside a training step (validation, test, setup)."""
    done = np.empty(len(g))
    total = 0.0
    prev = 0.0
    for i, (phase, step) in enumerate(zip(g["phase"], g["step"].fillna(0))):
        if phase in TRAINING_STEP_PHASES:
            total += step - prev if step >= prev else step
            prev = step
        done[i] = total
    return done


def _steps_per_epoch(run: Run, stage: str, g: pd.DataFrame) -> float | None:
    """The stage's training steps an epoch: its loops' (loop_end events), else the steps over the
    epochs its ticks saw; None without epochs."""
    for st in run.stages:
        if st.name == stage:
            loops = [e.steps for e in st.events_of(LoopEnd) if e.epoch]
            if loops:
                return float(np.median(loops))
    epochs = g.loc[g["phase"].isin(TRAINING_STEP_PHASES), "epoch"]
    epochs = epochs[epochs > 0]
    if epochs.empty:
        return None
    return float(g["done"].max()) / epochs.nunique()


def _cut(x: pd.Series, t: pd.Series, phase: pd.Series | None = None, *, by_steps: bool) -> float:
    """Where warm-up ends on axis ``x``: after a fraction of the span (of the training steps, or
    of the time and at least :data:`WARMUP_MIN_S` in), and after the stage's setup where the
    workload marks phases of its own (its imports, model and data set-up are not the training
    loop's growth). On the steps axis no time counts: a fast machine's first 2 s are more steps
    than a slow one's."""
    x0, x1 = float(x.min()), float(x.max())
    cut = x0 + WARMUP_FRACTION * (x1 - x0)
    t = t.reset_index(drop=True)
    xs = x.reset_index(drop=True)
    if not by_steps:
        late = xs[t >= float(t.min()) + WARMUP_MIN_S]
        cut = max(cut, float(late.min()) if not late.empty else x1)
    if phase is not None:
        own = xs[~phase.reset_index(drop=True).isin(HARNESS_PHASES)]
        if not own.empty:
            cut = max(cut, float(own.min()))
    return cut


def trends(run: Run, tk: pd.DataFrame, captures: list[CaptureData]) -> list[Trend]:
    """Every series' fit, stage by stage (those too short to fit left out)."""
    out: list[Trend] = []
    if tk.empty:
        return out
    running = tk[~after_stage_end(run, tk)]
    for stage, g in running.groupby("stage", sort=False):
        stage = str(stage)
        g = g[~g["phase"].isin(("teardown", "idle"))].sort_values("t")
        if g.empty:
            continue
        g = g.assign(done=steps_done(g))
        by_steps = float(g["done"].max()) >= TREND_MIN_STEPS
        axis = "done" if by_steps else "t"
        per_epoch = _steps_per_epoch(run, stage, g) if by_steps else None
        cut = _cut(g[axis], g["t"], g["phase"], by_steps=by_steps)
        end = float(g["t"].max())
        w = g[g[axis] >= cut]
        t = w["t"].to_numpy(dtype=float)
        x = w["done"].to_numpy(dtype=float) if by_steps else None
        for who in ("main", "workers"):
            column = f"{who}_rss"
            rss = w[column].to_numpy(dtype=float)
            parts = {p: w[f"{who}_{p}"].to_numpy(dtype=float) for p in KINDS}
            file_pages = parts["file"]
            has_parts = not np.isnan(file_pages).all()
            y = rss - np.nan_to_num(file_pages) if has_parts else rss
            found = fit(stage, column, t, y, x=x, steps_per_epoch=per_epoch,
                        parts=parts if has_parts else None)
            if found is not None:
                out.append(found)
        for c in captures:
            if c.capture.stage != stage or c.capture.pid is not None or c.error or not c.memray_samples:
                continue
            h = pd.DataFrame(c.memray_samples, columns=["t", "rss", "heap"])
            h = h[(h["t"] <= end) & (h["t"] >= float(g["t"].min()))].sort_values("t")
            if h.empty:
                continue
            hx = np.interp(h["t"], g["t"], g["done"]) if by_steps else h["t"].to_numpy()
            h = h.assign(x=hx)
            h = h[h["x"] >= max(cut, _cut(h["x"], h["t"], by_steps=by_steps))]
            found = fit(stage, "heap", h["t"].to_numpy(dtype=float), h["heap"].to_numpy(dtype=float),
                        x=h["x"].to_numpy(dtype=float) if by_steps else None,
                        capture=c.capture.name, steps_per_epoch=per_epoch)
            if found is not None:
                out.append(found)
    return out


def step_leaks(captures: list[CaptureData]) -> pd.DataFrame:
    """Lines that keep memory step after step: in a training window whose steps the probe marked,
    what each line (the workload's own, else the site) allocated and still held when the window
    closed, counted by the step it was made in.

    A line counts when what it kept was made in at least :data:`LEAK_MIN_KEPT_STEPS` of the
    window's steps, spread over all :data:`LEAK_STEP_PARTS` parts of them (a cache filled once, at
    warm-up or at the last step, is in one part), at :data:`LEAK_MIN_STEP_BYTES` a step or more.
    Any epoch counts, the first too: warm-up keeps its memory once, not in every part. The
    window's first step is left out (a window opened with the loop sees the first calls of its
    code: lazy initialisation, caches filled once). A line must be found so in every such window
    of its stage (``windows``): a bounded cache can fill through one. One row a (capture, line):
    ``kept_steps`` of ``window_steps`` (the steps counted), ``bytes_per_step``, largest first.
    """
    rows = []
    eligible: dict[str, int] = {}  # per stage, its main-process windows read step by step
    for c in captures:
        marked = c.marked_steps
        if (c.error or c.window.section or marked is None or marked < LEAK_MIN_MARKED_STEPS
                or c.capture.pid is not None):
            continue
        eligible[c.capture.stage] = eligible.get(c.capture.stage, 0) + 1
        if c.step_sites.empty:
            continue
        n = marked - 1
        s = c.step_sites[c.step_sites["step"] >= 1]
        # torch's SharedCache keeps a small entry per tensor received from a DataLoader worker until
        # it holds 128 (then drops the dead ones): bookkeeping, kept step after step within a
        # window. The received batches' own pages (a kept batch) are allocated there too, in pages.
        cache = (s["site"].str.contains(SHARED_CACHE_SITE, regex=False)
                 & (s["bytes"] < SHARED_CACHE_MAX_ENTRY * s["allocations"]))
        s = s[~cache]
        s = s.assign(where=s["workload_line"].where(s["workload_line"] != "", s["site"]),
                     part=((s["step"] - 1) * LEAK_STEP_PARTS) // n)
        for where, g in s.groupby("where", sort=False):
            kept_steps = int(g["step"].nunique())
            total = int(g["bytes"].sum())
            if (kept_steps < LEAK_MIN_KEPT_STEPS or g["part"].nunique() < LEAK_STEP_PARTS
                    or total < LEAK_MIN_STEP_BYTES * n):
                continue
            top = g.groupby("site", sort=False)["bytes"].sum().idxmax()
            first = g[g["site"] == top].iloc[0]
            rows.append({
                "stage": c.capture.stage, "capture": c.capture.name, "process": c.capture.role,
                "pid": c.pid, "epoch": c.window.epoch, "where": str(where), "site": str(top),
                "workload_line": str(first["workload_line"]), "source": str(first["source"]),
                "phase": str(first["phase"]), "window_steps": int(n), "kept_steps": kept_steps,
                "kept_bytes": total, "kept_allocations": int(g["allocations"].sum()),
                "bytes_per_step": total / n, "allocations_per_step": float(g["allocations"].sum()) / n,
            })
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    # A line must keep memory so in every window of its stage that was read step by step: a cache
    # bounded above a window's steps (torch's SharedCache of received DataLoader batches, cleaned
    # at 128 entries) fills through one window and not the next.
    key = ["stage", "process", "where"]
    df = df.assign(windows=df.groupby(key)["capture"].transform("nunique"),
                   of_windows=df["stage"].map(eligible))
    df = df[df["windows"] >= df["of_windows"]]
    return df.sort_values("bytes_per_step", ascending=False, ignore_index=True)


def kept_sites(captures: list[CaptureData], stage: str) -> pd.DataFrame:
    """Sites allocated inside a capture of ``stage`` and still held at its end, largest first.

    A window's kept bytes are its ``leaked_bytes``. A whole-stage capture (``memray.mode:
    full``) closes after the workload has returned, when a script's own references (its
    globals) are gone and only what modules hold is left: there ``bytes_at_peak`` stands in,
    what each site held when the heap was largest, which for a growing heap is near the end.
    Lines that import (``import x``, ``from x import y``) are left out: a module is not a leak.
    One row per place a person would edit (the workload's own line, else the site), its kept
    bytes summed over the stage's captures.
    """
    frames = []
    for c in captures:
        if c.capture.stage != stage or c.error or c.sites.empty:
            continue
        whole = c.capture.name == capture_name(stage)
        if not (whole or c.leaks_read):
            continue
        s = c.sites
        kept = s["bytes_at_peak"] if whole else s["leaked_bytes"]
        count = s["allocations_at_peak"] if whole else s["leaked_allocations"]
        frames.append(s.assign(kept_bytes=kept, kept_allocations=count))
    if not frames:
        return pd.DataFrame()
    s = pd.concat(frames, ignore_index=True)
    s = s[(s["kept_bytes"] > 0) & ~s["source"].fillna("").str.match(IMPORT_LINE)]
    if s.empty:
        return pd.DataFrame()
    s = s.assign(where=s["workload_line"].where(s["workload_line"] != "", s["site"]))
    per = s.groupby(["process", "where"], sort=False).agg(
        site=("site", "first"), workload_line=("workload_line", "first"),
        source=("source", "first"), phase=("phase", "first"),
        kept_bytes=("kept_bytes", "sum"), kept_allocations=("kept_allocations", "sum"),
        captures=("capture", "nunique")).reset_index()
    return per.sort_values("kept_bytes", ascending=False, ignore_index=True)


SERIES_NAMES = {"main_rss": "the main process's RSS", "workers_rss": "its workers' RSS (summed)",
                "heap": "memray's heap of the main process"}


def _describe(tr: Trend) -> str:
    name = SERIES_NAMES[tr.series] + (f" (capture {tr.capture})" if tr.capture else "")
    if tr.less_file:
        name += " less its file-backed pages"
    if tr.axis == "steps":
        text = f"{name} grew {format_size(tr.rate)} a step"
        if tr.per_epoch is not None:
            text += f" ({mib(tr.per_epoch)} an epoch of {tr.steps_per_epoch:,.0f} steps)"
        text += f" over {tr.x1 - tr.x0:,.0f} steps after warm-up ({tr.t1 - tr.t0:.0f} s)"
    else:
        text = (f"{name} grew over {tr.t1 - tr.t0:.0f} s after warm-up (too few training steps "
                "to count it by the step)")
    text += f", {mib(tr.rise)} from the first quarter of that span to the last"
    counted = {k: v for k, v in tr.parts.items() if not (tr.less_file and k == "file")}
    if counted:
        text += ": " + ", ".join(f"{KINDS[k]} {mib(v)}" for k, v in counted.items())
        if tr.less_file and "file" in tr.parts:
            text += f" (file-backed pages, not counted: {mib(tr.parts['file'])})"
    return text + f"; the memory that grew is {tr.kind}"


@finding("trend", severity="warning", doc="reports.md#trend",
         title="memory climbs through the run", order=20)
def trend(run: Run, tk: pd.DataFrame, captures: list[CaptureData]) -> Finding | None:
    """Memory that grows steadily while the workload runs, epochs or not: how fast, and which
    sites still held what they allocated when their capture closed."""
    fits = trends(run, tk, captures)
    growing = [tr for tr in fits if tr.grows]
    if not growing:
        return None
    evidence = []
    numbers: dict[str, Any] = {"series": [asdict(tr) | {"per_step": tr.per_step,
                                                        "per_epoch": tr.per_epoch, "kind": tr.kind}
                                          for tr in growing],
                               "thresholds": {"min_slope_per_epoch": TREND_MIN_EPOCH_SLOPE,
                                              "min_slope_per_step": TREND_MIN_STEP_SLOPE,
                                              "min_rise": TREND_MIN_RISE,
                                              "min_explained": TREND_MIN_EXPLAINED,
                                              "max_one_rise": TREND_MAX_ONE_RISE,
                                              "max_two_rises": TREND_MAX_TWO_RISES}}
    sites_out: list[dict[str, Any]] = []
    for stage in dict.fromkeys(tr.stage for tr in growing):
        mine = [tr for tr in growing if tr.stage == stage]
        evidence.append(f"in stage {stage!r}, " + "; ".join(_describe(tr) for tr in mine))
        kept = step_leaks([c for c in captures if c.capture.stage == stage])
        if not kept.empty:
            kept = kept.drop_duplicates(["process", "where"]).head(TREND_MAX_SITES)
            evidence.append("Lines that keep memory step after step (made in steps throughout a "
                            "training window, still held when it closed): " + "; ".join(
                                f"{r.where}" + (f" `{r.source}`" if r.source else "")
                                + f" [{r.process}] ~{format_size(r.bytes_per_step)} a step "
                                f"({r.kept_steps} of {r.window_steps} steps)"
                                for r in kept.itertuples(index=False)))
            numbers.setdefault("step_sites", []).extend(kept.to_dict(orient="records"))
        sites = kept_sites(captures, stage).head(TREND_MAX_SITES)
        if sites.empty:
            continue
        lines = []
        for r in sites.itertuples(index=False):
            code = f" `{r.source}`" if r.source else ""
            at = f" (site {r.site})" if r.site != r.where else ""
            lines.append(f"{r.where}{code}{at} [{r.process}]: {mib(r.kept_bytes)} in "
                         f"{int(r.kept_allocations):,} allocations")
        evidence.append(f"Sites allocated inside the memray capture(s) of stage {stage!r} (its "
                        "training windows, its main process's evaluation passes) and still "
                        "held when they closed (a whole-stage capture: at its heap's peak), largest "
                        "first: " + "; ".join(lines))
        sites_out += [{"stage": stage, **rec} for rec in sites.to_dict(orient="records")]
    numbers["sites"] = sites_out
    return Finding(
        kind="trend",
        title="Memory grows steadily while the workload runs",
        text="Memory keeps growing (a leak, or a cache without bound): " + ". ".join(evidence) + ".",
        numbers=numbers,
    )
