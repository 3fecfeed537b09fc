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


LOADER_SHUTDOWN_TICKS = 3  # a worker ending this many of the stage's ticks after a sibling ends with it


def loader_shutdown_readings(samples: pd.DataFrame) -> np.ndarray:
    """Which rows are a worker's USS read as its DataLoader's workers were ending: from the last
    tick of the first of its siblings to go, when it went itself within
    :data:`LOADER_SHUTDOWN_TICKS` of the stage's ticks after.

    Pages the main process stopped sharing (its writes gave it copies: a tensor census or a
    garbage collection writes every object's header) stay shared by its workers, in no one's USS;
    when one worker exits they become its siblings' own, and a sibling's USS jumps by all of them
    (~80 MiB on the CIFAR-10 baseline) in the ticks before it exits too. A worker's siblings are
    the other workers (another role) whose lifetime (rows with pages) overlaps its own. A row of
    the tick in which a sibling was last seen counts as the shutdown: the sampler may read it
    after that sibling let go of its pages. A worker that lives on after a sibling died (killed)
    keeps its readings.
    """
    none = np.zeros(len(samples), dtype=bool)
    if samples.empty or "role" not in samples:
        return none
    is_worker = samples["role"].astype(str).str.startswith("worker").to_numpy()
    if not is_worker.any():
        return none
    workers = samples[is_worker]
    alive = workers[workers["rss"] > 0] if "rss" in workers else workers
    span = alive.groupby(["stage", "pid"]).agg(first=("t", "min"), last=("t", "max"),
                                              role=("role", "first")).reset_index()
    out = none.copy()
    cuts: dict[tuple[object, object], float] = {}
    for stage, group in span.groupby("stage"):
        times = np.unique(samples.loc[samples["stage"] == stage, "t"].to_numpy(dtype=float))
        rows = list(group.itertuples(index=False))
        for w in rows:
            went = [v.last for v in rows if v.role != w.role and v.first <= w.last
                    and w.first <= v.last and v.last <= w.last]
            if not went:
                continue
            cut = min(went)
            after = np.searchsorted(times, w.last, side="right") - np.searchsorted(times, cut, side="right")
            if after <= LOADER_SHUTDOWN_TICKS:
                cuts[(stage, w.pid)] = cut
    if not cuts:
        return out
    cut = np.array([cuts.get(k, np.inf) for k in zip(workers["stage"], workers["pid"])], dtype=float)
    out[is_worker] = workers["t"].to_numpy(dtype=float) >= cut
    return out


def settled(samples: pd.DataFrame) -> pd.DataFrame:
    """``samples`` without the workers' USS and PSS read in their loader's shutdown
    (:func:`loader_shutdown_readings`): the peaks, the footprint and the findings read these."""
    mask = loader_shutdown_readings(samples)
    if not mask.any():
        return samples
    out = samples.copy()
    for column in ("uss", "pss"):
        if column in out:
            out[column] = out[column].mask(mask)
    return out


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
    s = settled(samples)
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

    Every process's private pages (its USS) once, and the pages the processes share once: the
    largest shared set of any one process (RSS − USS), on the view that the processes' shared
    pages nest in it (a forked worker shares the pages of the process it was forked from, and
    every process maps the same libraries). For a main process and its forked DataLoader
    workers this is the main process's RSS plus the workers' USS. Unlike the sum of PSS it
    never falls below the RSS of any process of the tree and does not move with what else runs
    on the machine: PSS divides a library's pages among every process that maps them, the
    harness's and other jobs' included (docs/reports.md).

    USS is read one process a tick in rotation (``sampling.full_hz`` each), RSS every tick: the
    main process's (a rank's) private pages are its last USS reading plus its RSS change since (a
    page it touched since is private until another process maps it); a worker's are its last USS
    reading, as it was: a forked worker's RSS rises mostly by mapping pages it shares with its
    parent (reading inherited memory), and carrying that rise as private counted them twice (the
    baseline's footprint read 922 MiB against the main RSS plus the workers' USS of ~800). Each
    is kept between 0 and its RSS. The shared set is the largest of the main process's (ranks'):
    a worker's nests in its parent's; but a rank's anonymous shared pages (shared with its own
    workers; ranks are exec'd and share no anonymous memory) count for every rank, summed. Which pages
    are shared changes when a process joins or leaves the tree (a fork shares all of the parent's
    pages at once, an exit hands them back), so a reading from before the tree last changed is
    stale: a tick is NaN until every process in it has been read since then (at most
    ``1/full_hz`` after a worker starts or ends).
    """
    key = ["stage", "t"]
    if "uss" not in samples.columns or samples.empty:
        return pd.Series(dtype="float64", index=pd.MultiIndex.from_tuples([], names=key))
    s = samples[["stage", "t", "pid", "rss", "uss"]]
    uss = pd.to_numeric(s["uss"], errors="coerce")
    rss = pd.to_numeric(s["rss"], errors="coerce")
    by_pid = [s["stage"], s["pid"]]
    last_uss = uss.groupby(by_pid).ffill()
    rss_then = rss.where(uss.notna()).groupby(by_pid).ffill()
    worker = (samples["role"].astype(str).str.contains("worker") if "role" in samples.columns
              else pd.Series(False, index=s.index))
    grown = (rss - rss_then).where(~worker, 0.0)
    private = np.minimum((last_uss + grown).clip(lower=0), rss)
    # a worker's shared pages are its parent's (it was forked from it): they nest in the parent's
    # shared set, and the worker's stale reading must not make them look larger
    shared = (rss - private).where(~worker, 0.0)
    # Of a main process's (a rank's) shared pages, the anonymous ones are shared with its own
    # forked workers only (torchrun's ranks are exec'd: they share libraries, not anonymous
    # memory): each rank's count, summed; the rest (libraries, files, shared memory) nest, the
    # largest set once. Its private pages are taken as anonymous first.
    if "rss_anon" in samples.columns:
        anon = pd.to_numeric(samples["rss_anon"], errors="coerce")
        anon_shared = np.minimum((anon - private).clip(lower=0), shared).fillna(0.0)
    else:  # runs from before the column: every shared set nests in the largest
        anon_shared = pd.Series(0.0, index=s.index)
    tick = [s["stage"], s["t"]]
    g = private.groupby(tick, sort=True)
    total = (g.sum() + anon_shared.groupby(tick, sort=True).sum()
             + (shared - anon_shared).groupby(tick, sort=True).max())
    # when each tick's set of processes began, and each tick's oldest reading
    members = s.groupby(tick, sort=True)["pid"].agg(lambda p: tuple(sorted(p)))
    changed = (members != members.groupby(level="stage").shift()).to_numpy()
    t_index = members.index.get_level_values("t").to_series(index=members.index)
    since = t_index.where(changed).groupby(level="stage").ffill()
    read_at = s["t"].where(uss.notna()).groupby(by_pid).ffill()
    oldest = read_at.groupby(tick, sort=True).min()
    fresh = (g.count() == g.size()) & (oldest >= since)
    return total.where(fresh)
