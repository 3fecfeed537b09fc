"""The report's tables, as DataFrames: by phase, by epoch, by process, by allocation site."""

from __future__ import annotations

from typing import Any

import pandas as pd

from harness.analysis import account, device
from harness.analysis.captures import SITE_COLUMNS, CaptureData
from harness.analysis.load import Run, Stage
from harness.analysis.peaks import after_stage_end
from harness.analysis.snapshot_metrics import snapshot_metrics
from harness.analysis.ticks import phase_order, ticks
from harness.records.events import TracedStep

PHASE_COLUMNS = (
    "stage", "epoch", "phase", "seconds", "time_share", "ticks",
    "main_rss_min", "main_rss_mean", "main_rss_max",
    "tree_rss_min", "tree_rss_mean", "tree_rss_max", "footprint_max",
    "workers_uss_mean", "workers_uss_max", "cuda_peak_allocated", "cuda_peak_reserved",
    "traced_steps", "tensor_allocations_per_step", "tensor_bytes_per_step", "peak_live_tensor_bytes",
    "parts_grown",
)
PROCESS_COLUMNS = (
    "stage", "pid", "ppid", "role", "start_s", "end_s", "lifetime_s", "samples",
    "born_epoch", "born_phase", "peak_rss", "peak_uss", "peak_pss", "peak_swap",
)


def _tensor_stats(stages: list[Stage]) -> pd.DataFrame:
    """Traced-step tensor figures per (stage, epoch, phase), summed over the traced steps."""
    rows: list[tuple[Any, ...]] = []
    for st in stages:
        for ev in st.events_of(TracedStep):
            for phase, t in ev.tensors.items():
                rows.append((st.name, ev.epoch, phase, t.count, t.bytes, t.peak_live_bytes, t.steps))
    df = pd.DataFrame(rows, columns=["stage", "epoch", "phase", "count", "bytes", "peak", "steps"])
    if df.empty:
        return pd.DataFrame(columns=["stage", "epoch", "phase", "traced_steps",
                                     "tensor_allocations_per_step", "tensor_bytes_per_step",
                                     "peak_live_tensor_bytes"])
    g = df.groupby(["stage", "epoch", "phase"], sort=False)
    out = g.agg(count=("count", "sum"), bytes=("bytes", "sum"), peak=("peak", "max"),
                steps=("steps", "sum")).reset_index()
    steps = out["steps"].where(out["steps"] > 0)
    return pd.DataFrame({
        "stage": out["stage"], "epoch": out["epoch"], "phase": out["phase"],
        "traced_steps": out["steps"],
        "tensor_allocations_per_step": out["count"] / steps,
        "tensor_bytes_per_step": out["bytes"] / steps,
        "peak_live_tensor_bytes": out["peak"],
    })


def phase_table(run: Run, tk: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per stage x epoch x phase: time share, RSS of main and tree, workers' USS, tensor bytes,
    and on CUDA the device's peaks (allocated, reserved; each phase its own, see
    :func:`harness.analysis.device.device_table`). ``parts_grown``: for a phase holding a moment
    near the peak, which parts of the main process's account grew since the moment before
    (:func:`harness.analysis.account.phase_growth`).

    Times are the sampler's: each tick counts until the next one. Epoch 0 is what came before
    the first epoch (setup) or a stage without epochs (test).
    """
    tk = ticks(run.samples) if tk is None else tk
    # what the sampler saw after a stage's stage_end is its process shutting down, not the phase
    # the cell last held (analysis/peaks.py): the table files it under teardown
    late = after_stage_end(run, tk)
    if late.any():
        tk = tk.assign(phase=tk["phase"].where(~late, "teardown"))
    key = ["stage", "epoch", "phase"]
    if tk.empty:
        base = pd.DataFrame(columns=key)
    else:
        g = tk.groupby(key, sort=False)
        base = g.agg(
            seconds=("dt", "sum"), ticks=("t", "size"),
            main_rss_min=("main_rss", "min"), main_rss_mean=("main_rss", "mean"),
            main_rss_max=("main_rss", "max"),
            tree_rss_min=("tree_rss", "min"), tree_rss_mean=("tree_rss", "mean"),
            tree_rss_max=("tree_rss", "max"), footprint_max=("tree_footprint", "max"),
            workers_uss_mean=("workers_uss", "mean"), workers_uss_max=("workers_uss", "max"),
        ).reset_index()
        total = base.groupby(["stage", "epoch"])["seconds"].transform("sum")
        base["time_share"] = (base["seconds"] / total.where(total > 0)).fillna(0.0)
    df = base.merge(_tensor_stats(run.stages), on=key, how="outer")
    dev = device.device_table(run)
    if not dev.empty:
        dev = dev[[*key, "peak_allocated", "peak_reserved"]].rename(columns={
            "peak_allocated": "cuda_peak_allocated", "peak_reserved": "cuda_peak_reserved"})
        df = df.merge(dev, on=key, how="outer")
    grew = account.phase_growth(run).drop(columns="rank")
    sampled = account.sampled_growth(tk)
    # the account's words where a moment was taken in the phase, else what the sampler saw
    grew = pd.concat([grew, sampled[~sampled.set_index(key).index.isin(grew.set_index(key).index)]])
    if not grew.empty:
        grew = grew.rename(columns={"grew": "parts_grown"})
        df = df.merge(grew.drop_duplicates(key, keep="first"), on=key, how="left")
    order = {s.name: i for i, s in enumerate(run.stages)}
    df["_s"] = df["stage"].map(order).fillna(len(order))
    df["_p"] = df["phase"].map(phase_order)
    df = df.sort_values(["_s", "epoch", "_p"], ignore_index=True).drop(columns=["_s", "_p"])
    for c in PHASE_COLUMNS:
        if c not in df.columns:
            df[c] = float("nan")
    df["ticks"] = df["ticks"].fillna(0).astype(int)
    df["seconds"] = df["seconds"].fillna(0.0)
    df["time_share"] = df["time_share"].fillna(0.0)
    return df[list(PHASE_COLUMNS)]


def epoch_table(run: Run) -> pd.DataFrame:
    """Snapshots side by side (one column each, ``stage:label``) with the change from the previous.

    Rows are metrics; a ``Δ stage:label`` column follows each snapshot after a stage's first.
    """
    cols: dict[str, dict[str, float]] = {}
    for st in run.stages:
        prev: dict[str, float] | None = None
        for label, snap in st.snapshots.items():
            cur = snapshot_metrics(snap)
            cols[f"{st.name}:{label}"] = cur
            if prev is not None:
                cols[f"Δ {st.name}:{label}"] = {k: v - prev.get(k, 0.0) for k, v in cur.items()}
            prev = cur
    df = pd.DataFrame(cols)
    df.index.name = "metric"
    return df


def process_table(run: Run) -> pd.DataFrame:
    """Per process: role, lifetime, peak RSS, USS and PSS (times from the run's first sample)."""
    s = run.samples
    if s.empty:
        return pd.DataFrame(columns=PROCESS_COLUMNS)
    t0 = float(s["t"].min())
    s = s.sort_values("t", kind="stable")
    g = s.groupby(["stage", "pid"], sort=False)
    df = g.agg(
        ppid=("ppid", "first"), role=("role", "first"), first=("t", "min"), last=("t", "max"),
        samples=("t", "size"), born_epoch=("epoch", "first"), born_phase=("phase", "first"),
        peak_rss=("rss", "max"), peak_uss=("uss", "max"), peak_pss=("pss", "max"),
        peak_swap=("swap", "max"),
    ).reset_index()
    df["start_s"] = df["first"] - t0
    df["end_s"] = df["last"] - t0
    df["lifetime_s"] = df["last"] - df["first"]
    df["born_epoch"] = df["born_epoch"].fillna(0).astype(int)
    df["pid"] = df["pid"].astype(int)
    df["ppid"] = df["ppid"].fillna(0).astype(int)
    return df.sort_values(["start_s", "pid"], ignore_index=True)[list(PROCESS_COLUMNS)]


def _sum_or_nan(s: pd.Series) -> float:
    return float(s.sum(min_count=1))  # NaN (not read) stays NaN instead of becoming 0


def sites_table(captures: list[CaptureData], top: int = 15) -> pd.DataFrame:
    """Top allocation sites per capture and process group (main; workers merged).

    ``bytes_at_peak``: live at the capture's high-water mark; ``leaked_*``: allocated inside
    the window and still live when it closed.
    """
    frames = [c.sites for c in captures if not c.sites.empty]
    if not frames:
        return pd.DataFrame(columns=[c for c in SITE_COLUMNS if c != "pid"] + ["processes"])
    df = pd.concat(frames, ignore_index=True)
    key = ["stage", "capture", "process", "phase", "site", "workload_line", "source"]
    df = df.groupby(key, sort=False, dropna=False).agg(
        bytes_at_peak=("bytes_at_peak", "sum"), allocations_at_peak=("allocations_at_peak", "sum"),
        leaked_bytes=("leaked_bytes", _sum_or_nan), leaked_allocations=("leaked_allocations", _sum_or_nan),
        processes=("pid", "nunique"),
    ).reset_index()
    df = df.sort_values(["bytes_at_peak", "leaked_bytes"], ascending=False, kind="stable")
    df = df.groupby(["stage", "capture", "process"], sort=False).head(top)
    order = {name: i for i, name in enumerate(dict.fromkeys(c.capture.name for c in captures))}
    df["_c"] = df["capture"].map(order)
    df["_p"] = (df["process"] != "main").astype(int)
    df = df.sort_values(["_c", "_p", "bytes_at_peak"], ascending=[True, True, False],
                        ignore_index=True)
    return df.drop(columns=["_c", "_p"])
