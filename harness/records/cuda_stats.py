"""``torch.cuda.memory_stats()`` read into one typed record: written by the probe on the device side,
read by the analysis on any machine (no torch import here)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class CudaStats:
    """The caching allocator's counters from one ``torch.cuda.memory_stats()`` call (bytes).

    Peaks are since the last ``torch.cuda.reset_peak_memory_stats``: per phase when the probe
    resets at each phase start, since process start otherwise. The three ``num_device_*`` /
    ``num_sync_all_streams`` counters are None where this torch version does not report them.
    """

    allocated: int
    reserved: int
    peak_allocated: int
    peak_reserved: int
    active: int
    peak_active: int
    inactive_split: int
    peak_inactive_split: int
    requested: int
    reserved_large_pool: int
    reserved_small_pool: int
    segments: int
    allocations: int
    num_alloc_retries: int
    num_ooms: int
    num_device_alloc: int | None = None
    num_device_free: int | None = None
    num_sync_all_streams: int | None = None

    @property
    def cached(self) -> int:
        """Reserved but not allocated: whole free segments plus inactive split blocks."""
        return self.reserved - self.allocated

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def stat_int(stats: Mapping[str, Any], key: str) -> int:
    value = stats.get(key)
    return int(value) if value is not None else 0


def _opt_int(stats: Mapping[str, Any], key: str) -> int | None:
    value = stats.get(key)
    return int(value) if value is not None else None


def parse_memory_stats(stats: Mapping[str, Any]) -> CudaStats:
    """Read a flat ``torch.cuda.memory_stats()`` dict; a missing key reads as 0 (or None)."""
    return CudaStats(
        allocated=stat_int(stats, "allocated_bytes.all.current"),
        reserved=stat_int(stats, "reserved_bytes.all.current"),
        peak_allocated=stat_int(stats, "allocated_bytes.all.peak"),
        peak_reserved=stat_int(stats, "reserved_bytes.all.peak"),
        active=stat_int(stats, "active_bytes.all.current"),
        peak_active=stat_int(stats, "active_bytes.all.peak"),
        inactive_split=stat_int(stats, "inactive_split_bytes.all.current"),
        peak_inactive_split=stat_int(stats, "inactive_split_bytes.all.peak"),
        requested=stat_int(stats, "requested_bytes.all.current"),
        reserved_large_pool=stat_int(stats, "reserved_bytes.large_pool.current"),
        reserved_small_pool=stat_int(stats, "reserved_bytes.small_pool.current"),
        segments=stat_int(stats, "segment.all.current"),
        allocations=stat_int(stats, "allocation.all.current"),
        num_alloc_retries=stat_int(stats, "num_alloc_retries"),
        num_ooms=stat_int(stats, "num_ooms"),
        num_device_alloc=_opt_int(stats, "num_device_alloc"),
        num_device_free=_opt_int(stats, "num_device_free"),
        num_sync_all_streams=_opt_int(stats, "num_sync_all_streams"),
    )
