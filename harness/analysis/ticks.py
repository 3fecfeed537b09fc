"""Sampler ticks: one row per tick with the whole tree's figures, from the samples' per-process rows."""

from __future__ import annotations

import numpy as np
import pandas as pd

from harness.records.vocab import PHASES

NO_PHASE = "none"  # ticks of a workload that makes no probe calls
TICK_COLUMNS = (
    "stage", "t", "dt", "epoch", "step", "phase", "main_rss", "main_uss", "main_shared",
    "tree_rss", "tree_footprint", "workers_rss", "workers_uss", "workers", "cuda_allocated",
    "cuda_reserved",
    "main_anon", "main_file", "main_shmem", "workers_anon", "workers_file", "workers_shmem",
)
# RSS's three parts (/proc/<pid>/status RssAnon, RssFile, RssShmem): the ticks' suffix -> column
RSS_PARTS = {"anon": "rss_anon", "file": "rss_file", "shmem": "rss_shmem"}


def phase_order(phase: str) -> int:
    return PHASES.index(phase) if phase in PHASES else len(PHASES)


def ticks(samples: pd.DataFrame) -> pd.DataFrame:
    """Per (stage, tick): main RSS/USS, tree RSS, workers' RSS and USS summed, the cell's state,
    and the RSS's anonymous, file-backed and shared-memory parts (main's, and workers' summed).

    ``dt`` is the time to the stage's next tick (0 for its last), so summing it over a phase
    gives the time spent in it as the sampler saw it. ``workers_uss`` is set on ticks that read a
    worker's USS: every worker's latest reading summed (the sampler reads one process a tick in
    rotation, each within ``1/full_hz``), once every worker of the tick has one.

    ``tree_footprint`` is the tree's footprint with shared pages counted once (:func:`footprint`);
    ``tree_rss`` the RSS summed over its processes, which counts a page shared by N processes N
    times.
    """
    if samples.empty:
        return pd.DataFrame({c: pd.Series(dtype="object" if c in ("stage", "phase") else "float64")
                             for c in TICK_COLUMNS})
    s = samples
    key = ["stage", "t"]
    grouped = s.groupby(key, sort=True)
    out = grouped["rss"].sum().rename("tree_rss").to_frame()
    main = s[s["role"] == "main"].drop_duplicates(key).set_index(key)
    out["main_rss"] = main["rss"]
    out["main_uss"] = main["uss"]
    out["main_shared"] = main["shared"]
    out["cuda_allocated"] = main["cuda_allocated"]  # CUDA only, on the main process's rows
    out["cuda_reserved"] = main["cuda_reserved"]
    for part, column in RSS_PARTS.items():  # empty in run directories from before the columns
        out[f"main_{part}"] = main[column]
    # The cell state is the same for every row of a tick; take it from any row.
    first = grouped[["epoch", "step", "phase"]].first()
    out["epoch"] = first["epoch"].fillna(0).astype(int)
    out["step"] = first["step"].fillna(0).astype(int)
    out["phase"] = first["phase"].replace("", NO_PHASE)
    workers = s[s["role"].str.startswith("worker")]
    workers = workers.assign(latest_uss=workers.groupby(["stage", "pid"])["uss"].ffill())
    wg = workers.groupby(key)
    out["workers_rss"] = wg["rss"].sum()
    for part, column in RSS_PARTS.items():  # summed where every worker of the tick has it
        out[f"workers_{part}"] = wg[column].sum().where(wg[column].count() == wg["pid"].size())
    # Where all workers were read in one tick (run directories before the rotation) this is the
    # sum of that tick's readings, as it always was.
    read = (wg["uss"].count() > 0) & (wg["latest_uss"].count() == wg["pid"].size())
    out["workers_uss"] = wg["latest_uss"].sum().where(read)
    out["tree_footprint"] = footprint(s)
    out["workers"] = wg["pid"].nunique() if not workers.empty else 0
    out["workers"] = out["workers"].fillna(0).astype(int)
    out = out.reset_index()
    nxt = out.groupby("stage", sort=False)["t"].shift(-1)
    out["dt"] = (nxt - out["t"]).fillna(0.0)
    return out[list(TICK_COLUMNS)]


def footprint(samples: pd.DataFrame) -> pd.Series:
    """Per (stage, t): the tree's memory with every shared page counted once.

    The sum of PSS over a tree's processes counts a page shared by N of them as N shares of 1/N:
    once. PSS is read one process a tick in rotation (``sampling.full_hz`` each), RSS every tick;
    so each process contributes its last PSS reading plus its RSS change since that reading (a
    page it touched since is counted whole: private until another process maps it). A tick is
    NaN until every process in it has had a PSS reading (a worker born this tick waits for its
    first, at most a few ticks: a new process is read first).
    """
    key = ["stage", "t"]
    if "pss" not in samples.columns or samples.empty:
        return pd.Series(dtype="float64", index=pd.MultiIndex.from_tuples([], names=key))
    s = samples[["stage", "t", "pid", "rss", "pss"]]
    pss = pd.to_numeric(s["pss"], errors="coerce")
    rss = pd.to_numeric(s["rss"], errors="coerce")
    at_read = rss.where(pss.notna())
    by_pid = [s["stage"], s["pid"]]
    last_pss = pss.groupby(by_pid).ffill()
    rss_then = at_read.groupby(by_pid).ffill()
    # PSS is never more than RSS nor less than nothing (a process leaving has RSS 0)
    own = np.minimum((last_pss + (rss - rss_then)).clip(lower=0), rss)
    g = own.groupby([s["stage"], s["t"]], sort=True)
    return g.sum().where(g.count() == g.size())
