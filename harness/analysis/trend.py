"""Memory that keeps growing while the workload runs, found without epochs: a robust trend.

The per-epoch leak finding (:func:`harness.analysis.findings.leak`) needs epoch-end snapshots,
which a script without probe calls does not have. This one fits a line to what the sampler and
memray recorded anyway: the main process's RSS, its workers' RSS (summed over the workers of each
tick), and memray's heap of the main process where a capture recorded it. Each series is cut to
the time the workload ran (up to its stage's ``stage_end``: the shutdown after it is not the
workload's) less a warm-up, thinned to at most :data:`TREND_MAX_POINTS` points and fitted with
the Theil–Sen estimator (the median of the slopes between every pair of points), which a spike,
a garbage collection or a worker restarting moves no more than any single point.

A series is a trend when its slope is at least :data:`TREND_MIN_SLOPE` and the growth is there in
the data, not only in the line: the median of its last quarter exceeds the median of its first
by :data:`TREND_MIN_RISE`, and by at least :data:`TREND_MIN_EXPLAINED` of what the line predicts
between those quarters, with growth in each half (the second quarter above the first
and the fourth above the third by :data:`TREND_MIN_HALF` of the line's), so that one step up
between two plateaus does not fire it. The thresholds come from
clean and leaking runs measured as docs/reports.md (findings) tells.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from harness.analysis.captures import CaptureData
from harness.analysis.finding import Finding, finding, mib
from harness.analysis.load import Run
from harness.analysis.peaks import after_stage_end
from harness.layout import HARNESS_PHASES, capture_name
from harness.records.events import EpochEnd, EpochStart
from harness.sizes import MiB

TREND_MAX_POINTS = 400  # a series is thinned to this many points: ~80,000 pairs to take slopes of
WARMUP_FRACTION = 0.25  # the first quarter of the running time is warm-up (imports, first batches,
WARMUP_MIN_S = 2.0  # the allocator's and the optimizer's first-use growth), and at least this
TREND_MIN_POINTS = 20  # points a series needs after warm-up, and
TREND_MIN_SPAN_S = 5.0  # seconds they must span (a smoke test pass's 2 s rose 23 MiB: start-up)
TREND_MIN_SLOPE = 12 * MiB  # bytes per minute, at least (clean runs: main RSS at most 7.3)
TREND_MIN_RISE = 24 * MiB  # last-quarter median minus first-quarter median, at least (clean: 17)
TREND_MIN_EXPLAINED = 0.5  # ... and at least this share of the fitted line's rise between the
# quarters' middles: the growth is in the data, not only in the line. (It may be more: a staircase
# of a few epochs has most pairs of points on one step, and its Theil-Sen slope is low.)
TREND_MIN_HALF = 0.25  # in each half, the later quarter's median above the earlier's by this share
# of the line's rise between them: growth in both halves, so one step between plateaus is no trend
TREND_MAX_SITES = 5  # sites named in the finding
IMPORT_LINE = r"\s*(import|from)\s"  # a workload line that imports: what it keeps is a module


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
    """One series' fit: slope in bytes per second, and how its quarters moved."""

    stage: str
    series: str  # main_rss | workers_rss | heap
    capture: str | None  # the memray capture a heap series is from
    t0: float
    t1: float
    points: int
    slope: float  # bytes per second
    rise: float  # last-quarter median minus first-quarter median, bytes
    fitted_rise: float  # what the line predicts between the two quarters' middles, bytes
    half_rises: tuple[float, float]  # second minus first quarter's median, fourth minus third's
    fitted_half_rises: tuple[float, float]  # what the line predicts for each
    per_epoch: float | None  # bytes per epoch, where epochs are known

    @property
    def per_minute(self) -> float:
        return self.slope * 60.0

    @property
    def grows(self) -> bool:
        """Steep enough, and the data (not only the line) rose between its first and last quarter."""
        return (self.per_minute >= TREND_MIN_SLOPE and self.rise >= TREND_MIN_RISE
                and self.rise >= TREND_MIN_EXPLAINED * self.fitted_rise
                and all(r >= TREND_MIN_HALF * f for r, f in zip(self.half_rises, self.fitted_half_rises)))


def fit(stage: str, series: str, t: np.ndarray, y: np.ndarray, *, capture: str | None = None,
        epoch_s: float | None = None) -> Trend | None:
    """Fit one series (already cut to the running time after warm-up); None if too short."""
    ok = ~(np.isnan(t) | np.isnan(y))
    t, y = t[ok], y[ok]
    if len(t) < TREND_MIN_POINTS or t[-1] - t[0] < TREND_MIN_SPAN_S:
        return None
    slope = theil_sen(t, y)
    if slope is None:
        return None
    quarters = [(tq, yq) for tq, yq in zip(np.array_split(t, 4), np.array_split(y, 4))]
    mt = [float(np.median(tq)) for tq, _ in quarters]
    my = [float(np.median(yq)) for _, yq in quarters]
    return Trend(stage=stage, series=series, capture=capture, t0=float(t[0]), t1=float(t[-1]),
                 points=int(len(t)), slope=slope, rise=my[3] - my[0],
                 fitted_rise=slope * (mt[3] - mt[0]),
                 half_rises=(my[1] - my[0], my[3] - my[2]),
                 fitted_half_rises=(slope * (mt[1] - mt[0]), slope * (mt[3] - mt[2])),
                 per_epoch=slope * epoch_s if epoch_s else None)


def _epoch_seconds(run: Run, stage: str) -> float | None:
    """The stage's mean epoch length, from its epoch_start/epoch_end events (None: no epochs)."""
    for st in run.stages:
        if st.name != stage:
            continue
        starts = {e.epoch: e.t for e in st.events_of(EpochStart)}
        spans = [e.t - starts[e.epoch] for e in st.events_of(EpochEnd) if e.epoch in starts]
        spans = [s for s in spans if s > 0]
        return sum(spans) / len(spans) if spans else None
    return None


def _warm(t: pd.Series, phase: pd.Series | None = None) -> float:
    """When warm-up ends for a series running over ``t``: after a fraction of its time, and
    after the stage's setup where the workload marks phases of its own (its imports, model
    and data set-up are not the training loop's growth)."""
    t0, t1 = float(t.min()), float(t.max())
    cut = t0 + max(WARMUP_FRACTION * (t1 - t0), WARMUP_MIN_S)
    if phase is not None:
        own = t[~phase.isin(HARNESS_PHASES)]
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
        cut = _warm(g["t"], g["phase"])
        end = float(g["t"].max())
        epoch_s = _epoch_seconds(run, stage)
        w = g[g["t"] >= cut]
        t = w["t"].to_numpy(dtype=float)
        for column in ("main_rss", "workers_rss"):
            found = fit(stage, column, t, w[column].to_numpy(dtype=float), epoch_s=epoch_s)
            if found is not None:
                out.append(found)
        for c in captures:
            if c.capture.stage != stage or c.capture.pid is not None or c.error or not c.memray_samples:
                continue
            h = pd.DataFrame(c.memray_samples, columns=["t", "rss", "heap"])
            h = h[(h["t"] <= end)]
            if h.empty:
                continue
            h = h[h["t"] >= max(cut, _warm(h["t"]))]
            found = fit(stage, "heap", h["t"].to_numpy(dtype=float), h["heap"].to_numpy(dtype=float),
                        capture=c.capture.name, epoch_s=epoch_s)
            if found is not None:
                out.append(found)
    return out


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
    text = f"{name} grew {mib(tr.per_minute)} per minute"
    if tr.per_epoch is not None:
        text += f" ({mib(tr.per_epoch)} per epoch)"
    return text + (f" over {tr.t1 - tr.t0:.0f} s after warm-up, {mib(tr.rise)} from the first "
                   "quarter of that time to the last")


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
    numbers: dict[str, Any] = {"series": [asdict(tr) | {"per_minute": tr.per_minute}
                                          for tr in growing],
                               "thresholds": {"min_slope_per_minute": TREND_MIN_SLOPE,
                                              "min_rise": TREND_MIN_RISE,
                                              "min_explained": TREND_MIN_EXPLAINED}}
    sites_out: list[dict[str, Any]] = []
    for stage in dict.fromkeys(tr.stage for tr in growing):
        mine = [tr for tr in growing if tr.stage == stage]
        evidence.append(f"in stage {stage!r}, " + "; ".join(_describe(tr) for tr in mine))
        sites = kept_sites(captures, stage).head(TREND_MAX_SITES)
        if sites.empty:
            continue
        lines = []
        for r in sites.itertuples(index=False):
            code = f" `{r.source}`" if r.source else ""
            at = f" (site {r.site})" if r.site != r.where else ""
            lines.append(f"{r.where}{code}{at} [{r.process}]: {mib(r.kept_bytes)} in "
                         f"{int(r.kept_allocations):,} allocations")
        evidence.append(f"Sites allocated inside the memray capture(s) of stage {stage!r} and still "
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
