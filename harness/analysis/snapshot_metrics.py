"""The figures of an epoch snapshot worth comparing from epoch to epoch (the epoch table, the leak
finding and the summary's growth all read them from here), and growth: THE definition the leak
finding and the gate's ``growth_per_epoch`` share.

Growth is measured on the main process at its epoch-end snapshots (``epoch-N``; the end-of-stage
snapshot ``end`` is not an epoch's). Its headline is the main process's **RSS** per epoch: (RSS at
the last epoch's end - at the first's) / epochs between, the largest over the stages; that is what
``harness check`` gates. USS is kept beside it but decides nothing: forking makes the parent's
pages shared, and DataLoader workers still exiting at a snapshot move the parent's USS by 100 MiB
either way while its RSS stays flat. A leak needs the growth to hold: RSS up by at least
:data:`LEAK_MIN_RSS_PER_EPOCH` (or live tensors up by :data:`LEAK_MIN_TENSORS_PER_EPOCH`) per
epoch at every boundary, over at least :data:`LEAK_MIN_BOUNDARIES` boundaries: one boundary is
one difference, which noise makes as easily as a leak.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from harness.records.snapshots import TENSOR_CATEGORIES
from harness.sizes import MiB

if TYPE_CHECKING:
    from harness.analysis.load import Run
    from harness.records.snapshots import Snapshot

EPOCH_SNAPSHOT_PREFIX = "epoch-"  # epoch-end snapshots are labelled epoch-<N>; the stage's last is "end"
LEAK_MIN_BOUNDARIES = 2  # epoch boundaries (3 epoch-end snapshots) a leak must grow across
LEAK_MIN_RSS_PER_EPOCH = 8 * MiB  # main RSS growth per epoch at every boundary, at least this
LEAK_MIN_RSS_FRACTION = 0.01  # ... and this fraction of its RSS at the first epoch's end, or
LEAK_MIN_TENSORS_PER_EPOCH = 10  # live tensors more per epoch at every boundary


def snapshot_metrics(snap: Snapshot) -> dict[str, float]:
    """The figures of one snapshot that are worth comparing from epoch to epoch."""
    m: dict[str, float] = {}
    tb = snap.tensor_bytes
    for cat in TENSOR_CATEGORIES:
        m[f"tensor_bytes_{cat}"] = float(tb.get(cat, 0))
    for cat in tb:  # categories of some runs only: a DDP rank's reducer buckets (ddp_buckets)
        if cat not in TENSOR_CATEGORIES:
            m[f"tensor_bytes_{cat}"] = float(tb[cat])
    m["tensor_bytes_total"] = float(sum(tb.values()))
    m["tensor_count"] = float(snap.tensor_count)
    main = snap.main()
    workers = [p for p in snap.processes if not p.gone and p.role != "main"]
    figures = (main.rss, main.uss, main.pss) if main is not None else (None, None, None)
    for k, v in zip(("rss", "uss", "pss"), figures):
        m[f"main_{k}"] = float(v or 0)
    m["workers"] = float(len(workers))
    m["workers_rss"] = float(sum(p.rss or 0 for p in workers))
    m["workers_uss"] = float(sum(p.uss or 0 for p in workers))
    summary = snap.maps.summary
    for kind in ("heap", "anonymous", "file", "shared-memory"):
        found = summary.get(kind)
        m[f"maps_{kind.replace('-', '_')}_bytes"] = float(found.bytes if found is not None else 0)
    for i, c in enumerate(snap.gc.counts[:3]):
        m[f"gc_count_gen{i}"] = float(c)
    if snap.cuda is not None:
        m["cuda_allocated"] = float(snap.cuda.allocated)
        m["cuda_reserved"] = float(snap.cuda.reserved)
    return m


def is_epoch_snapshot(label: str) -> bool:
    """An epoch-end snapshot (``epoch-2``), not the end-of-stage one (``end``)."""
    return label.startswith(EPOCH_SNAPSHOT_PREFIX)


def epoch_metrics(run: Run) -> dict[str, list[tuple[int, dict[str, float]]]]:
    """Per stage, the epoch-end snapshots' metrics in epoch order."""
    out: dict[str, list[tuple[int, dict[str, float]]]] = {}
    for st in run.stages:
        rows = [(s.epoch, snapshot_metrics(s))
                for label, s in st.snapshots.items() if is_epoch_snapshot(label)]
        if rows:
            out[st.name] = sorted(rows, key=lambda r: r[0])
    return out


@dataclass(frozen=True)
class Boundary:
    """The change from one epoch-end snapshot of a stage to the next (negative: shrank); the
    summary's ``growth_per_epoch`` rows hold these fields."""

    from_epoch: int
    to_epoch: int
    main_rss: int
    main_uss: int
    tensor_count: int
    tensor_bytes: int

    @property
    def epochs(self) -> int:
        return max(self.to_epoch - self.from_epoch, 1)


@dataclass(frozen=True)
class Growth:
    """A stage's growth over its epoch-end snapshots: per epoch, and whether it holds as a leak."""

    stage: str
    boundaries: tuple[Boundary, ...]
    first_main_rss: float | None = None  # RSS at the first epoch's end (None: read from a summary)

    @property
    def epochs(self) -> int:
        """Epochs the boundaries span."""
        return sum(b.epochs for b in self.boundaries)

    def per_epoch(self, figure: str) -> float:
        """(``figure`` at the last epoch's end - at the first's) / epochs between."""
        return sum(getattr(b, figure) for b in self.boundaries) / self.epochs if self.boundaries else 0.0

    @property
    def main_rss_per_epoch(self) -> float:
        """What ``growth_per_epoch`` gates."""
        return self.per_epoch("main_rss")

    def rss_floor(self) -> float:
        return max(LEAK_MIN_RSS_PER_EPOCH, LEAK_MIN_RSS_FRACTION * (self.first_main_rss or 0.0))

    def _holds(self, figure: str, floor: float) -> bool:
        return (len(self.boundaries) >= LEAK_MIN_BOUNDARIES
                and all(getattr(b, figure) >= floor * b.epochs for b in self.boundaries))

    @property
    def rss_leak(self) -> bool:
        """Main RSS grew by the floor per epoch at every one of ≥ LEAK_MIN_BOUNDARIES boundaries."""
        return self._holds("main_rss", self.rss_floor())

    @property
    def tensor_leak(self) -> bool:
        """Live tensors grew at every one of ≥ LEAK_MIN_BOUNDARIES boundaries."""
        return self._holds("tensor_count", LEAK_MIN_TENSORS_PER_EPOCH)


def epoch_growth(run: Run) -> list[Growth]:
    """Per stage with ≥ 2 epoch-end snapshots, its growth from snapshot to snapshot."""
    out = []
    for stage, snaps in epoch_metrics(run).items():
        bounds = tuple(
            Boundary(from_epoch=e0, to_epoch=e1, main_rss=int(b["main_rss"] - a["main_rss"]),
                     main_uss=int(b["main_uss"] - a["main_uss"]),
                     tensor_count=int(b["tensor_count"] - a["tensor_count"]),
                     tensor_bytes=int(b["tensor_bytes_total"] - a["tensor_bytes_total"]))
            for (e0, a), (e1, b) in zip(snaps, snaps[1:]))
        if bounds:
            out.append(Growth(stage, bounds, first_main_rss=snaps[0][1]["main_rss"]))
    return out


def growth_from_rows(rows: Iterable[tuple[str, Boundary]]) -> list[Growth]:
    """Growth per stage from (stage, boundary) pairs, as the summary's rows give them back."""
    per: dict[str, list[Boundary]] = {}
    for stage, b in rows:
        per.setdefault(stage, []).append(b)
    return [Growth(stage, tuple(bs)) for stage, bs in per.items()]


def growth_per_epoch(growth: Iterable[Growth]) -> int | None:
    """The gate's ``growth_per_epoch``: the largest stage's main RSS growth per epoch, rounded;
    None when no stage has two epoch-end snapshots."""
    values = [round(g.main_rss_per_epoch) for g in growth if g.boundaries]
    return max(values) if values else None
