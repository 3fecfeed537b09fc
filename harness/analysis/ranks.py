"""The analysis of one process, once per rank, and what sets ranks apart: the report's one path.

A distributed stage's records are per rank (``stages/<stage>/rank<R>/``, loaded as
``Stage.ranks``); its samples carry each row's rank. :func:`views` turns the run into one
:class:`~harness.analysis.load.Run` per rank in which the rank's process is the ``main`` process
and its DataLoader workers the ``worker N`` ones, so that every table and finding of a single
process applies unchanged; a plain run is one view, of rank None. The functions here join the
views' results, with a ``rank`` column (and ``node`` for several nodes) where the views have
ranks. :func:`skew` compares the ranks with each other.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import pandas as pd

from harness.analysis import device, tables
from harness.analysis import findings as _findings  # noqa: F401 - registers the host detectors
from harness.analysis import headroom as _headroom  # noqa: F401 - registers near_limit
from harness.analysis.captures import CaptureData
from harness.analysis.finding import SCOPES, Finding, detectors, finding, mib
from harness.analysis.load import Run, sample_ranks
from harness.analysis.ticks import ticks
from harness.layout import HARNESS_PHASES, SECTIONS
from harness.sizes import MiB

# rank skew: a rank whose process holds, in some phase, at least SKEW_MIN_BYTES more RSS than
# the median of the other ranks, or at least SKEW_MIN_FRACTION more (and SKEW_FLOOR_BYTES, so
# that a small process's noise is not a share). Why these numbers: docs/reports.md.
SKEW_MIN_BYTES = 32 * MiB
SKEW_MIN_FRACTION = 0.20
SKEW_FLOOR_BYTES = 8 * MiB
SKEW_SITE_MIN_BYTES = 1 * MiB  # a site that differs by less is not named
SKEW_MAX_SITES = 5


@dataclass
class RankView:
    """One rank's part of a distributed run, as a run of one process; a plain run is one view
    of rank None (its tables and summary rows then have no rank)."""

    rank: int | None
    node: int | None
    run: Run
    ticks: pd.DataFrame


def rank_ids(run: Run) -> list[int]:
    return sorted({r.rank for s in run.stages for r in s.ranks if r.rank is not None})


def multi_node(run: Run) -> bool:
    return any(r.node is not None for s in run.stages for r in s.ranks)


def views(run: Run) -> list[RankView]:
    """One view a rank; a stage that did not run distributed is counted with the lowest rank.
    A plain run is one view: the run itself, of rank None."""
    ids = rank_ids(run)
    if not ids:
        return [RankView(None, None, run, ticks(run.samples))]
    out = []
    for rank in ids:
        stages = []
        for s in run.stages:
            if s.ranks:
                stages += [r for r in s.ranks if r.rank == rank]
            elif rank == ids[0]:
                stages.append(s)
        nodes = [r.node for r in stages if r.rank == rank and r.node is not None]
        view = Run(run.dir, run.manifest, stages, run.problems, run.node_manifests, run.scenario)
        out.append(RankView(rank, nodes[0] if nodes else None, view, ticks(view.samples)))
    return out


def _tag(df: pd.DataFrame, v: RankView, nodes: bool, after: str = "stage") -> pd.DataFrame:
    """``df`` with the view's ``rank`` (and ``node``) as columns right after ``after``; as it is
    for a view without a rank (a plain run)."""
    if v.rank is None:
        return df
    df = df.copy()
    at = list(df.columns).index(after) + 1 if after in df.columns else 0
    df.insert(at, "rank", v.rank)
    if nodes:
        df.insert(at + 1, "node", v.node if v.node is not None else pd.NA)
    return df


def _join(frames: list[pd.DataFrame], columns: list[str] | None = None) -> pd.DataFrame:
    """The frames one after the other; all empty: the first (its columns), or ``columns``."""
    full = [f for f in frames if not f.empty]
    if len(full) == 1 and len(frames) == 1:
        return full[0]
    if full:
        return pd.concat(full, ignore_index=True)
    return frames[0] if frames else pd.DataFrame(columns=columns or [])


def phase_table(run: Run, vs: list[RankView]) -> pd.DataFrame:
    """The phase table of every rank, one after the other, with ``rank`` after ``stage``."""
    nodes = multi_node(run)
    return _join([_tag(tables.phase_table(v.run, v.ticks), v, nodes) for v in vs])


def epoch_table(vs: list[RankView]) -> pd.DataFrame:
    """Every rank's snapshots side by side, columns ``<stage> rank <R>:<label>``."""
    frames = []
    for v in vs:
        df = tables.epoch_table(v.run)
        if v.rank is not None:
            df.columns = [_rank_column(str(c), v.rank) for c in df.columns]
        frames.append(df)
    if len(frames) == 1:
        return frames[0]
    frames = [f for f in frames if not f.empty]
    if not frames:
        out = pd.DataFrame()
        out.index.name = "metric"
        return out
    out = pd.concat(frames, axis=1)
    out.index.name = "metric"
    return out


def _rank_column(name: str, rank: int) -> str:
    """``train:epoch-1`` -> ``train rank 0:epoch-1`` (and the same behind a ``Δ``)."""
    delta = name.startswith("Δ ")
    stage, _, label = name.removeprefix("Δ ").partition(":")
    return f"{'Δ ' if delta else ''}{stage} rank {rank}:{label}"


def process_table(run: Run, vs: list[RankView]) -> pd.DataFrame:
    """Every process of the job (the agent, each rank and its workers), with its rank and node
    where the views have ranks."""
    df = tables.process_table(run)
    s = run.samples
    if all(v.rank is None for v in vs):
        return df
    if df.empty:
        return df.assign(rank=pd.Series(dtype="Int64"))
    key = ["stage", "pid"]
    first = s.assign(rank=sample_ranks(s)).sort_values("t", kind="stable").drop_duplicates(key)
    extra = ["rank"] + (["node"] if "node" in s.columns and s["node"].notna().any() else [])
    df = df.merge(first[key + extra], on=key, how="left")
    for c in extra:
        df[c] = df[c].astype("Int64")
    cols = list(df.columns)
    for c in extra:
        cols.remove(c)
    at = cols.index("pid")
    return df[cols[:at] + extra + cols[at:]]


def rank_captures(captures: list[CaptureData], rank: int | None) -> list[CaptureData]:
    return [c for c in captures if c.capture.rank == rank]


def sites_table(run: Run, vs: list[RankView], captures: list[CaptureData]) -> pd.DataFrame:
    """The top sites of each rank's captures, with ``rank`` after ``stage``."""
    nodes = multi_node(run)
    return _join([_tag(tables.sites_table(rank_captures(captures, v.rank)), v, nodes) for v in vs])


# ---- rank skew ----------------------------------------------------------------------------------


def skew_rows(phases: pd.DataFrame, column: str = "main_rss_max") -> pd.DataFrame:
    """Per (stage, epoch, phase, rank): ``column`` against the median of the other ranks, and
    whether the excess is a skew. Phases of the harness's own (setup, teardown...) are left out:
    a rank's start and shutdown differ for reasons of their own."""
    cols = ["stage", "epoch", "phase", "rank", "bytes", "others_median", "excess", "fraction", "skew"]
    if phases.empty or "rank" not in phases.columns:
        return pd.DataFrame(columns=cols)
    p = phases[~phases["phase"].isin(HARNESS_PHASES)].dropna(subset=[column])
    rows = []
    for (stage, epoch, phase), g in p.groupby(["stage", "epoch", "phase"], sort=False):
        if g["rank"].nunique() < 2:
            continue
        per = g.groupby("rank")[column].max()
        for rank, value in per.items():
            # the others' median: with two ranks the median of all would halve every difference
            median = float(per.drop(rank).median())
            excess = float(value) - median
            fraction = excess / median if median > 0 else float("inf")
            skew = excess >= SKEW_MIN_BYTES or (excess >= SKEW_FLOOR_BYTES and fraction >= SKEW_MIN_FRACTION)
            rows.append((stage, int(epoch), phase, int(rank), int(value), median, excess, fraction, skew))
    return pd.DataFrame(rows, columns=cols)


def _window_of(c: CaptureData, stage: str, epoch: int, phase: str) -> bool:
    """Whether capture ``c`` covers ``phase`` of ``epoch``: its section's pass, else the training
    window (or a whole-stage capture)."""
    w = c.window
    if c.capture.stage != stage or c.error or c.capture.pid is not None:
        return False
    if phase in SECTIONS:
        return w.section == phase and (w.epoch or 0) == epoch
    return w.section is None and ((w.epoch or 0) == epoch or w.epoch is None)


def differing_sites(captures: list[CaptureData], rank: int, stage: str, epoch: int,
                    phase: str) -> list[dict[str, Any]]:
    """The sites (the workload's own line where there is one) that ``rank``'s capture of the
    phase's window holds more of at its peak than the median of the other ranks' captures of it."""
    by_rank: dict[int, pd.Series] = {}
    for c in captures:
        if c.capture.rank is None or not _window_of(c, stage, epoch, phase) or c.sites.empty:
            continue
        s = c.sites
        where = s["workload_line"].where(s["workload_line"].fillna("") != "", s["site"])
        per = s.assign(where=where).groupby("where")["bytes_at_peak"].sum()
        by_rank[c.capture.rank] = by_rank[c.capture.rank].add(per, fill_value=0) \
            if c.capture.rank in by_rank else per
    if rank not in by_rank or len(by_rank) < 2:
        return []
    others = pd.concat([s for r, s in by_rank.items() if r != rank], axis=1).fillna(0).median(axis=1)
    mine = by_rank[rank]
    diff = mine.sub(others, fill_value=0).sort_values(ascending=False)
    diff = diff[diff >= SKEW_SITE_MIN_BYTES].head(SKEW_MAX_SITES)
    return [{"where": str(w), "bytes": int(mine.get(w, 0)), "others_median": int(others.get(w, 0)),
             "excess": int(d)} for w, d in diff.items()]


@finding("rank_skew", severity="warning", doc="reports.md#rank_skew",
         title="one rank holds more than the others", scope="ranks", order=10)
def skew(phases: pd.DataFrame, captures: list[CaptureData]) -> Finding | None:
    """A rank holding more than the others in some phase: which rank, phase, how much, and the
    sites that differ in its memray capture of that window."""
    rows = skew_rows(phases)
    hits = rows[rows["skew"]] if not rows.empty else rows
    if hits.empty:
        return None
    # One line per rank and phase, at its largest excess over the epochs.
    hits = hits.sort_values("excess", ascending=False).drop_duplicates(["stage", "rank", "phase"])
    items = []
    lines = []
    for r in hits.itertuples(index=False):
        sites = differing_sites(captures, int(r.rank), str(r.stage), int(r.epoch), str(r.phase))
        epoch = f", epoch {r.epoch}" if r.epoch else ""
        line = (f"rank {r.rank} in phase {r.phase} (stage {r.stage}{epoch}) peaked at "
                f"{mib(r.bytes)} RSS, {mib(r.excess)} ({r.fraction:.0%}) above the other ranks' "
                f"median of {mib(r.others_median)}")
        if sites:
            line += "; its memray capture of that window holds more at " + "; ".join(
                f"{s['where']} (+{mib(s['excess'])})" for s in sites)
        lines.append(line)
        items.append({"stage": r.stage, "epoch": int(r.epoch), "phase": r.phase, "rank": int(r.rank),
                      "bytes": int(r.bytes), "others_median": int(r.others_median),
                      "excess": int(r.excess), "fraction": round(float(r.fraction), 4), "sites": sites})
    first = items[0]
    return Finding(
        kind="rank_skew",
        title=f"Rank {first['rank']} holds more than the other ranks in phase {first['phase']}",
        text="One rank holds memory the others do not: " + ". ".join(lines) + ". A rank's share of "
             "the work should be alike; what only one rank keeps (rank 0's logging, evaluation or "
             "checkpointing, an uneven shard) is what to look at.",
        numbers={"min_bytes": SKEW_MIN_BYTES, "min_fraction": SKEW_MIN_FRACTION, "ranks": items},
    )


def device_table(run: Run, vs: list[RankView]) -> pd.DataFrame:
    """Each rank's device table (CUDA runs; empty on the CPU), with ``rank`` after ``stage``."""
    nodes = multi_node(run)
    return _join([_tag(device.device_table(v.run), v, nodes) for v in vs])


def all_findings(run: Run, vs: list[RankView], phases: pd.DataFrame, captures: list[CaptureData],
                 device_total: int | None = None) -> list[Finding]:
    """Every registered detector (harness.analysis.finding), scope by scope: what sets the ranks
    apart (``phases``: every view's phase table), then each view's host findings, then each
    view's device findings; a rank's own are named by its rank."""
    out: list[Finding] = []
    for scope in SCOPES:
        given: list[tuple[int | None, dict[str, Any]]]
        if scope == "ranks":
            given = [(None, {"run": run, "phases": phases, "captures": captures,
                             "device_total": device_total})]
        else:
            given = [(v.rank, {"run": v.run, "tk": v.ticks,
                               "captures": rank_captures(captures, v.rank),
                               "device_table": device.device_table(v.run),
                               "device_total": device_total}) for v in vs]
        for rank, arguments in given:
            found = [d(arguments) for d in detectors(scope)]
            out += [f if rank is None else _named(f, rank) for f in found if f is not None]
    return out


def _named(f: Finding, rank: int) -> Finding:
    return replace(f, title=f"rank {rank}: {f.title}", text=f"Rank {rank}: {f.text}",
                   numbers={"rank": rank, **f.numbers})


def rank_lines(vs: list[RankView], t0: float) -> pd.DataFrame:
    """Each rank's own RSS at its ticks, for the timeline: x (seconds from ``t0``), rank, stage, rss,
    in time order within each rank (a rank's ticks come stage by stage, not in time order)."""
    frames = [pd.DataFrame({"x": v.ticks["t"] - t0, "rank": v.rank, "stage": v.ticks["stage"],
                            "rss": v.ticks["main_rss"]})
              for v in vs if v.rank is not None and not v.ticks.empty]
    lines = _join(frames, ["x", "rank", "stage", "rss"]).dropna(subset=["rss"])
    return lines.sort_values(["rank", "x"], kind="stable").reset_index(drop=True)
