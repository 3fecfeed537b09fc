"""A run's summary flattened into named metrics: ``peak_heap``, ``phases.backward.peak_main_rss``...

Names follow the scenario's ``budgets:`` keys, so a budget, a baseline entry and a check row
all speak of the same thing. Every value is in bytes. Only the keys in ``PHASE_METRICS`` have
per-phase names; ``peak_heap``, ``growth_per_epoch`` and the ``*_teardown`` peaks are run-wide
only. ``peak_main_rss`` and ``peak_tree_rss`` are the peaks while the workload ran (up to each
stage's ``stage_end``); ``peak_main_rss_teardown`` and ``peak_tree_rss_teardown`` the shutdown's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from harness.layout import HARNESS_PHASES
from harness.sizes import MiB

if TYPE_CHECKING:
    from harness.analysis.summary_model import (
        HeapPeak,
        Peak,
        Peaks,
        PhasePeak,
        PhaseRow,
        Summary,
        TeardownPeak,
    )


@dataclass(frozen=True)
class MetricDef:
    """One metric: its budget key, what it measures, the noise a baseline check forgives."""

    key: str
    label: str
    noise_floor: int  # absolute slack a baseline limit never goes below (bytes), see check.limit


# Run-wide metrics, in the order tables show them. Floors: process memory on a shared machine
# moves by a few MiB from run to run (allocator arenas, page cache, when the sampler looks);
# memray's heap and the traced tensor bytes are nearly deterministic.
RUN_METRICS: tuple[MetricDef, ...] = (
    # the tree's footprint, shared pages counted once (analysis/ticks.py): moves like the tree's RSS
    MetricDef("peak_footprint", "peak footprint, process tree (shared pages once)", 32 * MiB),
    MetricDef("peak_main_rss", "peak RSS, main process", 16 * MiB),
    MetricDef("peak_tree_rss", "peak RSS summed over processes", 32 * MiB),
    MetricDef("peak_workers_uss", "peak USS, workers summed", 8 * MiB),
    MetricDef("peak_heap", "peak heap (memray)", 1 * MiB),
    MetricDef("peak_live_tensor_bytes", "peak live tensor bytes", 64 * 1024),
    # CUDA runs: the caching allocator's counters are exact and, for a fixed workload, nearly
    # the same from run to run; reserved moves in whole segments (2 MiB in the small pool).
    MetricDef("peak_cuda_allocated", "peak CUDA allocated", 1 * MiB),
    MetricDef("peak_cuda_reserved", "peak CUDA reserved", 2 * MiB),
    MetricDef("growth_per_epoch", "growth per epoch, main RSS", 4 * MiB),
    # After a stage's stage_end: interpreter and library teardown (file-backed pages that the
    # libraries' destructors touch, 110-160 MiB on the smoke scenario and as noisy as the
    # timing of the last tick). Gated only when a budget names them; baselines leave them out.
    MetricDef("peak_main_rss_teardown", "peak RSS, main process, after stage_end", 32 * MiB),
    MetricDef("peak_tree_rss_teardown", "peak RSS, process tree, after stage_end", 32 * MiB),
)
_DEFS = {m.key: m for m in RUN_METRICS}
# Per phase: the phase table's columns behind each budget key.
PHASE_METRICS: tuple[tuple[MetricDef, str], ...] = (
    (_DEFS["peak_footprint"], "footprint_max"),
    (_DEFS["peak_main_rss"], "main_rss_max"),
    (_DEFS["peak_tree_rss"], "tree_rss_max"),
    (_DEFS["peak_workers_uss"], "workers_uss_max"),
    (_DEFS["peak_live_tensor_bytes"], "peak_live_tensor_bytes"),
    (_DEFS["peak_cuda_allocated"], "cuda_peak_allocated"),
    (_DEFS["peak_cuda_reserved"], "cuda_peak_reserved"),
)
# The figures after stage_end: a budget may name them, a baseline does not record them (the
# running peaks are what a baseline holds a run to).
TEARDOWN_KEYS = frozenset({"peak_main_rss_teardown", "peak_tree_rss_teardown"})
# Phases between the workload's own steps (and a no-probe stage's "none"): short, host the
# epoch snapshots, and seen by the sampler at a few ticks; a baseline records their process
# memory only at run level, where the noise is averaged in, never per phase.
# Counted, not sampled: exact in any phase, so a baseline records them in the transitional ones too.
EXACT_KEYS = frozenset({"peak_live_tensor_bytes", "peak_cuda_allocated", "peak_cuda_reserved"})


RANK_PREFIX = "ranks."  # ranks.<R>.<metric>: one rank's own figure (distributed runs)


def rank_name(rank: int, name: str) -> str:
    return f"{RANK_PREFIX}{rank}.{name}"


def split_rank(name: str) -> tuple[int | None, str]:
    """``ranks.1.peak_main_rss`` -> (1, ``peak_main_rss``); a name of no rank -> (None, name)."""
    if name.startswith(RANK_PREFIX):
        rank, _, rest = name.removeprefix(RANK_PREFIX).partition(".")
        if rank.isdigit():
            return int(rank), rest
    return None, name


def split_name(name: str) -> tuple[str | None, str]:
    """``phases.backward.peak_main_rss`` -> (``backward``, ``peak_main_rss``); run-wide -> (None, name).
    A rank's (``ranks.1.phases.backward.peak_main_rss``) splits as the name it is that rank's of."""
    name = split_rank(name)[1]
    if name.startswith("phases."):
        _, phase, key = name.split(".", 2)
        return phase, key
    return None, name


def phase_name(phase: str, key: str) -> str:
    return f"phases.{phase}.{key}"


def definition(name: str) -> MetricDef:
    """The definition behind a flat metric name; unknown names get a zero noise floor."""
    _, key = split_name(name)
    return _DEFS.get(key, MetricDef(key, key, 0))


def label(name: str) -> str:
    phase, _ = split_name(name)
    rank, _ = split_rank(name)
    text = definition(name).label
    text = f"{text} [{phase}]" if phase else text
    return f"{text}, rank {rank}" if rank is not None else text


def _bytes(peak: Peak | HeapPeak | PhasePeak | TeardownPeak | None) -> int | None:
    return None if peak is None else peak.bytes


def growth_per_epoch(summary: Summary) -> int | None:
    """Mean growth of the main process's RSS from one epoch-end snapshot to the next.

    Per stage (per stage and rank in a distributed run): (RSS at the last epoch's end - RSS at the
    first epoch's end) / epochs between; the largest over them. None when no stage has two epoch
    snapshots. The definition is the leak finding's too: :mod:`harness.analysis.snapshot_metrics`.
    """
    from harness.analysis import snapshot_metrics as sm

    # each rank's boundaries apart: pooled, the ranks' growth would be averaged, not the largest
    rows = ((g.stage if g.rank is None else f"{g.stage} rank {g.rank}", sm.Boundary(from_epoch=g.from_epoch, to_epoch=g.to_epoch, main_rss=g.main_rss,
                                  main_uss=g.main_uss, tensor_count=g.tensor_count,
                                  tensor_bytes=g.tensor_bytes))
            for g in summary.growth_per_epoch)
    return sm.growth_per_epoch(sm.growth_from_rows(rows))


def from_summary(summary: Summary) -> dict[str, int]:
    """Every metric the summary can give, by flat name. Absent figures are left out.

    A distributed run's names without a rank are the largest over its ranks; each rank's own
    are ``ranks.<R>.<name>`` (run-wide and per phase; growth_per_epoch is run-wide only).
    """
    out = {**_peaks_metrics(summary.peaks, growth_per_epoch(summary)), **_phase_metrics(summary.phases)}
    for r in summary.ranks or []:
        own = {**_peaks_metrics(r.peaks), **_phase_metrics([p for p in summary.phases if p.rank == r.rank])}
        out.update({rank_name(r.rank, k): v for k, v in own.items()})
    return out


def _peaks_metrics(peaks: Peaks, growth: int | None = None) -> dict[str, int]:
    raw: dict[str, int | None] = {
        "peak_footprint": _bytes(peaks.footprint),
        "peak_main_rss": _bytes(peaks.main_rss),
        "peak_tree_rss": _bytes(peaks.tree_rss),
        "peak_workers_uss": _bytes(peaks.workers_uss),
        "peak_heap": _bytes(peaks.heap),
        "peak_live_tensor_bytes": _bytes(peaks.live_tensor_bytes),
        "peak_cuda_allocated": _bytes(peaks.cuda_allocated),
        "peak_cuda_reserved": _bytes(peaks.cuda_reserved),
        "growth_per_epoch": growth,
        "peak_main_rss_teardown": _bytes(peaks.main_rss_teardown),
        "peak_tree_rss_teardown": _bytes(peaks.tree_rss_teardown),
    }
    return {k: v for k, v in raw.items() if v is not None}


def _phase_metrics(phases: list[PhaseRow]) -> dict[str, int]:
    """Per phase, the largest over the rows (stages, epochs and, distributed, ranks)."""
    out: dict[str, int] = {}
    for row in phases:
        for mdef, column in PHASE_METRICS:
            value = getattr(row, column)
            if value is None:
                continue
            name = phase_name(row.phase, mdef.key)
            out[name] = max(out.get(name, value), value)
    return out


def for_baseline(metrics: Mapping[str, int]) -> dict[str, int]:
    """The metrics a baseline records: all but process memory of the transitional phases and
    the peaks after stage_end."""
    out = {}
    for name, value in metrics.items():
        phase, key = split_name(name)
        if phase in HARNESS_PHASES and key not in EXACT_KEYS:
            continue
        if key in TEARDOWN_KEYS:
            continue
        out[name] = value
    return out


def sort_key(name: str) -> tuple[int, int, int, int]:
    """Run-wide metrics first, then phases in the order a step goes through them."""
    from harness.records.vocab import PHASES

    phase, key = split_name(name)
    rank, _ = split_rank(name)
    r = -1 if rank is None else rank  # the largest over ranks first, then each rank's own
    order = [m.key for m in RUN_METRICS]
    k = order.index(key) if key in order else len(order)
    if phase is None:
        return (r, 0, 0, k)
    p = PHASES.index(phase) if phase in PHASES else len(PHASES)
    return (r, 1, p, k)
