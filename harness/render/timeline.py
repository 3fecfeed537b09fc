"""The timeline plot: memory over the whole run with stages, epochs and validation shaded.

The data for it is computed by :func:`timeline_data` (pure, tested); :func:`render` only draws.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from harness.analysis.captures import CaptureData
from harness.analysis.load import Run
from harness.records.atomic import write_atomic
from harness.records.events import EpochEnd, EpochStart, PhaseTotals, SectionEnd, SectionStart
from harness.sizes import MiB

MAX_POINTS = 4000  # per series: more adds nothing a reader can see, and bloats the SVG
MAX_EPOCH_LABELS = 40  # epochs named along the top; past it, every k-th


@dataclass
class Band:
    start: float
    end: float
    label: str
    kind: str  # stage | epoch | validate | test


@dataclass
class TimelineData:
    """Everything the plot draws, times in seconds from the run's first sample, bytes as bytes."""

    t0: float
    ticks: pd.DataFrame  # stage, x, main_rss, tree_rss, cuda_allocated, cuda_reserved
    workers: pd.DataFrame  # x plus one column per worker slot: USS, 0 when absent
    heap: list[pd.DataFrame] = field(default_factory=list)  # per main capture: x, heap
    cuda: pd.DataFrame = field(default_factory=pd.DataFrame)  # epoch snapshots: x, allocated, reserved
    # per epoch: start, end, the highest phase peak of allocated (the probe's device steps)
    cuda_peaks: list[tuple[float, float, float]] = field(default_factory=list)
    bands: list[Band] = field(default_factory=list)
    # distributed runs: x, rank, rss (each rank's own process), one line a rank
    ranks: pd.DataFrame = field(default_factory=pd.DataFrame)


def _decimate(df: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """At most about MAX_POINTS rows: a min/max envelope of each column.

    Each stage's time is cut into bins (narrower than a pixel at MAX_POINTS / 2 in all), each
    drawn as two rows: the bin's lowest value of every column at its first time, then its highest
    at its last. A line through them spans every value the bin held, so every peak and every dip
    stays visible however long the run.
    """
    if len(df) <= MAX_POINTS:
        return df
    parts = []
    per = max(MAX_POINTS // 2 // max(df["stage"].nunique(), 1), 10)
    for _, g in df.groupby("stage", sort=False):
        if len(g) <= 2 * per:
            parts.append(g)
            continue
        by = g.groupby(pd.cut(g["x"], per, labels=False))
        low = by.agg({"stage": "first", "x": "first", **{c: "min" for c in columns}})
        high = by.agg({"stage": "first", "x": "last", **{c: "max" for c in columns}})
        parts.append(pd.concat([low, high]).sort_index(kind="stable"))  # bin by bin: low, high
    return pd.concat(parts, ignore_index=True)


def _worker_uss(run: Run, t0: float, tk: pd.DataFrame) -> pd.DataFrame:
    """USS of each worker slot at every tick (forward-filled between full ticks, within a pid)."""
    s = run.samples
    w = s[s["role"].str.startswith("worker")].sort_values("t")
    if w.empty:
        return pd.DataFrame({"stage": tk["stage"], "x": tk["t"] - t0})
    # filled within each pid, all pids at once (a long run has thousands of workers)
    w = w.assign(uss=w.groupby("pid")["uss"].ffill().groupby(w["pid"]).bfill())
    wide = w.pivot_table(index=["stage", "t"], columns="role", values="uss", aggfunc="sum")
    wide = wide.reindex(pd.MultiIndex.from_frame(tk[["stage", "t"]])).fillna(0.0)
    wide = wide.reset_index()
    wide.insert(1, "x", wide["t"] - t0)
    return wide.drop(columns=["t"])


def _bands(run: Run, t0: float, tk: pd.DataFrame) -> list[Band]:
    out: list[Band] = []
    for st in run.stages:
        ts = tk[tk["stage"] == st.name]["t"]
        if not ts.empty:
            out.append(Band(float(ts.min()) - t0, float(ts.max()) - t0, st.name, "stage"))
        starts: dict[Any, float] = {}
        for e in st.events:
            if isinstance(e, EpochStart):
                starts[("epoch", e.epoch)] = e.t
            elif isinstance(e, EpochEnd) and ("epoch", e.epoch) in starts:
                out.append(Band(starts.pop(("epoch", e.epoch)) - t0, e.t - t0,
                                f"epoch {e.epoch}", "epoch"))
            elif isinstance(e, SectionStart):
                starts[("section", e.section)] = e.t
            elif isinstance(e, SectionEnd) and ("section", e.section) in starts:
                sec = e.section
                out.append(Band(starts.pop(("section", sec)) - t0, e.t - t0, sec,
                                sec if sec in ("validate", "test") else "validate"))
        # A crash leaves epochs and sections open: draw them to the stage's last sample.
        end = float(ts.max()) - t0 if not ts.empty else None
        for (kind, name), start in starts.items():
            if end is not None:
                label = f"epoch {name}" if kind == "epoch" else str(name)
                out.append(Band(start - t0, end, label + " (unfinished)",
                                "epoch" if kind == "epoch" else "validate"))
    return out


def timeline_data(run: Run, tk: pd.DataFrame, captures: list[CaptureData]) -> TimelineData:
    t0 = float(tk["t"].min()) if not tk.empty else 0.0
    base = pd.DataFrame({"stage": tk["stage"], "x": tk["t"] - t0, "main_rss": tk["main_rss"],
                         "tree_rss": tk["tree_rss"], "cuda_allocated": tk["cuda_allocated"],
                         "cuda_reserved": tk["cuda_reserved"]})
    workers = _worker_uss(run, t0, tk)
    slots = [c for c in workers.columns if c not in ("stage", "x")]
    both = pd.concat([base, workers[slots]], axis=1)
    both = _decimate(both, ["main_rss", "tree_rss", "cuda_allocated", "cuda_reserved", *slots])
    heap = []
    for c in captures:
        if c.capture.pid is None and c.memray_samples:
            h = pd.DataFrame(c.memray_samples, columns=["t", "rss", "heap"])
            h["x"] = h["t"] - t0
            heap.append(h[["x", "heap"]])
    cuda_rows = []
    for st in run.stages:
        for snap in st.snapshots.values():
            if snap.cuda is not None:
                cuda_rows.append((snap.t - t0, float(snap.cuda.allocated), float(snap.cuda.reserved)))
    cuda = pd.DataFrame(cuda_rows, columns=["x", "allocated", "reserved"])
    cuda_peaks = []
    for st in run.stages:
        starts = {e.epoch: e.t for e in st.events_of(EpochStart)}
        for e in st.events_of(PhaseTotals):
            peaks = [c.peak_allocated or 0 for c in (e.cuda or {}).values()]
            if peaks and e.span == "epoch" and e.epoch in starts:
                cuda_peaks.append((starts[e.epoch] - t0, e.t - t0, float(max(peaks))))
    return TimelineData(
        t0=t0,
        ticks=both[["stage", "x", "main_rss", "tree_rss", "cuda_allocated", "cuda_reserved"]],
        workers=both[["stage", "x", *slots]],
        heap=heap,
        cuda=cuda,
        cuda_peaks=cuda_peaks,
        bands=_bands(run, t0, tk),
    )


def has_device(data: TimelineData) -> bool:
    """Whether there is device memory to draw (a CUDA run): then it gets an axis of its own."""
    return bool(data.ticks["cuda_allocated"].notna().any()) or not data.cuda.empty


def render(data: TimelineData, png: Path, svg: Path, title: str) -> None:
    """Draw the timeline into ``png`` and ``svg``; on CUDA, device memory in a panel below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Names and titles come from the run: a `$` in them is text, not mathtext to parse (an odd
    # `$\frac{$` in a scenario name would stop the report).
    with matplotlib.rc_context({"text.parse_math": False}):
        _render(plt, data, png, svg, title)


def _render(plt: Any, data: TimelineData, png: Path, svg: Path, title: str) -> None:
    if has_device(data):
        fig, (ax, dax) = plt.subplots(2, 1, figsize=(14, 8), dpi=100, sharex=True,
                                      gridspec_kw={"height_ratios": [3, 1.4]})
    else:
        fig, ax = plt.subplots(figsize=(14, 6), dpi=100)
        dax = None
    try:
        _draw(ax, data, title)
        if dax is not None:
            _draw_device(dax, data)
            ax.set_xlabel("")
        fig.tight_layout()
        for path, fmt in ((png, "png"), (svg, "svg")):
            buf = io.BytesIO()
            fig.savefig(buf, format=fmt)
            write_atomic(path, buf.getvalue())
    finally:
        plt.close(fig)


RANK_COLORS = ["#08519c", "#a63603", "#006d2c", "#54278f", "#b30000", "#525252"]
BAND_COLORS = {"stage": "#f2f2f2", "epoch": "#e3ecf7", "validate": "#fbe5c8", "test": "#e6f2e1"}


def _spans(ax: Any, spans: list[tuple[float, float]], **style: Any) -> None:
    """Full-height bands over ``spans`` (start, end), as axvspan draws them, in one collection:
    a day's run has thousands of epochs, each its own patch under axvspan (seconds to draw)."""
    from matplotlib.collections import PolyCollection

    if not spans:
        return
    verts = [[(a, 0.0), (a, 1.0), (b, 1.0), (b, 0.0)] for a, b in spans]
    ax.add_collection(PolyCollection(verts, transform=ax.get_xaxis_transform(), linewidths=0,
                                     **style), autolim=False)
    ax.update_datalim([(min(a for a, _ in spans), 0.0), (max(b for _, b in spans), 0.0)], updatey=False)


def _shade(ax: Any, bands: list[Band]) -> None:
    """Stages, then epochs (alternating shades), then validation and test passes on top."""
    _spans(ax, [(b.start, b.end) for b in bands if b.kind == "stage"], color=BAND_COLORS["stage"],
           zorder=0)
    epochs = [(b.start, b.end) for b in bands if b.kind == "epoch"]
    for parity in (0, 1):
        _spans(ax, epochs[parity::2], color=BAND_COLORS["epoch"], alpha=0.5 + 0.3 * parity, zorder=0.5)
    for kind in ("validate", "test"):
        _spans(ax, [(b.start, b.end) for b in bands if b.kind == kind], color=BAND_COLORS[kind],
               zorder=0.7)


def _draw_device(ax: Any, data: TimelineData) -> None:
    """Device memory of the main process: allocated and reserved, same clock as the host axis."""
    _shade(ax, data.bands)
    ymax = 1.0
    for i, (start, end, peak) in enumerate(data.cuda_peaks):
        ax.hlines(peak / MiB, start, end, color="#6a3d9a", lw=1, ls="--", zorder=4,
                  label="epoch's highest phase peak, allocated" if i == 0 else None)
        ymax = max(ymax, peak / MiB)
    sampled = data.ticks.dropna(subset=["cuda_allocated"])
    for n, (_, g) in enumerate(sampled.groupby("stage", sort=False)):
        ax.plot(g["x"], g["cuda_reserved"] / MiB, color="#cab2d6", lw=1.2, zorder=3,
                drawstyle="steps-post", label="reserved (caching allocator)" if n == 0 else None)
        ax.plot(g["x"], g["cuda_allocated"] / MiB, color="#6a3d9a", lw=1.4, zorder=4,
                drawstyle="steps-post", label="allocated (tensors)" if n == 0 else None)
        ymax = max(ymax, float((g[["cuda_allocated", "cuda_reserved"]].max().max()) / MiB))
    if not data.cuda.empty:
        ax.plot(data.cuda["x"], data.cuda["allocated"] / MiB, "D", color="#6a3d9a", zorder=5,
                ms=5, label="allocated at epoch snapshots")
        ymax = max(ymax, float(data.cuda[["allocated", "reserved"]].max().max() / MiB))
    ax.set_ylim(0, ymax * 1.15)
    ax.set_ylabel("device MiB")
    ax.set_xlabel("seconds since the run's first sample")
    ax.grid(True, axis="y", color="#dddddd", lw=0.5)
    ax.set_title("CUDA device memory (main process; read on device steps, phase ends and snapshots)",
                 fontsize=9, loc="left")
    ax.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=8, frameon=False)


def _draw(ax: Any, data: TimelineData, title: str) -> None:
    ymax = 1.0
    _shade(ax, data.bands)
    tk = data.ticks
    segs = list(tk.groupby("stage", sort=False))
    w = data.workers
    slots = [c for c in w.columns if c not in ("stage", "x")]
    palette = ["#fd8d3c", "#74c476", "#9e9ac8", "#fdd0a2", "#c7e9c0", "#dadaeb"]
    for n, (_stage, g) in enumerate(segs):
        x = g["x"].to_numpy()
        base = (g["main_rss"].fillna(0) / MiB).to_numpy()
        ax.fill_between(x, 0, base, color="#3182bd", alpha=0.25, lw=0, zorder=1,
                        label="main RSS" if n == 0 else None)
        ax.plot(x, base, color="#08519c", lw=1.2, zorder=3)
        wg = w.loc[g.index]
        for i, slot in enumerate(slots):
            top = base + (wg[slot].fillna(0) / MiB).to_numpy()
            ax.fill_between(x, base, top, color=palette[i % len(palette)], lw=0, zorder=2,
                            label=f"{slot} USS (stacked)" if n == 0 else None)
            base = top
        tree = (g["tree_rss"] / MiB).to_numpy()
        ax.plot(x, tree, color="#636363", lw=0.8, ls=":", zorder=3,
                label="tree RSS (shared pages counted per process)" if n == 0 else None)
        ymax = max(ymax, float(max(base.max(initial=0), tree.max(initial=0))))
    if not data.ranks.empty:
        for i, (rank, g) in enumerate(data.ranks.groupby("rank", sort=True)):
            # one segment a stage: no line drawn across the gap between two stages' processes
            parts = g.groupby("stage", sort=False) if "stage" in g else [(None, g)]
            for j, (_, part) in enumerate(parts):
                y = (part["rss"] / MiB).to_numpy()
                ax.plot(part["x"], y, color=RANK_COLORS[i % len(RANK_COLORS)], lw=1.3, zorder=4,
                        label=f"rank {rank} RSS" if j == 0 else None)
                ymax = max(ymax, float(y.max(initial=0)))
    for i, h in enumerate(data.heap):
        ax.plot(h["x"], h["heap"] / MiB, color="#d62728", lw=1.8, zorder=4,
                label="memray heap (main, captured windows)" if i == 0 else None)
    top = ymax * 1.12
    ax.set_ylim(0, top)
    # a long run's epochs are too many to name each: every k-th, so the names never overlap
    every = -(-sum(b.kind == "epoch" for b in data.bands) // MAX_EPOCH_LABELS)
    epoch_no = 0
    for band in data.bands:
        if band.kind == "stage":
            ax.text(band.start, top * 0.985, f" {band.label}", va="top", ha="left", fontsize=9,
                    fontweight="bold", color="#444444")
        elif band.kind == "epoch":
            epoch_no += 1
            if (epoch_no - 1) % every == 0:
                ax.text((band.start + band.end) / 2, top * 0.94, band.label, va="top", ha="center",
                        fontsize=8, color="#2b5d8a")
    ax.set_xlabel("seconds since the run's first sample")
    ax.set_ylabel("MiB")
    ax.set_title(title, fontsize=11)
    ax.grid(True, axis="y", color="#dddddd", lw=0.5)
    ax.margins(x=0.01)
    handles, labels = ax.get_legend_handles_labels()
    import matplotlib.patches as mpatches

    for kind, text in (("epoch", "epoch"), ("validate", "validation"), ("test", "test")):
        if any(b.kind == kind for b in data.bands):
            handles.append(mpatches.Patch(color=BAND_COLORS[kind], label=text))
            labels.append(text)
    ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=8,
              frameon=False)
