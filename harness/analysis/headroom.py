"""Headroom: the memory available to the job and each peak as a share of it.

The host's limit is the one each stage recorded (``memory_limit`` in the manifest: the stage's own
memory cgroup under ``limits.memory``, else the cgroup the harness ran in, else the machine's
memory). The footprint held against it is the most the stage's cgroup was charged where the
harness made one (what the kernel compares with the limit), else the stage's peak footprint (the
process tree with shared pages counted once: ``tree_footprint`` of :mod:`harness.analysis.ticks`),
else its peak tree RSS (the sum of its processes' RSS, which counts a page shared by several
processes once per process, so it can pass a limit the kernel never reached). Each CUDA device's figure is its total memory against
the allocator's peak reserved bytes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from harness.analysis.finding import Finding, finding, mib
from harness.analysis.load import Run
from harness.analysis.peaks import running_ticks
from harness.analysis.ticks import ticks
from harness.records.manifest import MemoryLimit

# A peak above this share of its limit is a finding: the next larger batch, a longer sequence or
# one more worker may be killed for it.
NEAR_LIMIT = 0.9


@dataclass(frozen=True)
class HostHeadroom:
    """One stage's host memory against its limit."""

    stage: str
    limit: int
    source: str  # limits.memory | cgroup | machine
    cgroup: str | None
    peak: int | None
    measure: str  # what ``peak`` is: "cgroup charge", "footprint" or "tree RSS"
    share: float | None
    main_peak: int | None = None  # the main process's peak RSS
    main_share: float | None = None


@dataclass(frozen=True)
class DeviceHeadroom:
    """A CUDA device's memory against the allocator's peak reserved bytes."""

    device: str
    total: int
    peak_reserved: int | None
    share: float | None


@dataclass(frozen=True)
class Headroom:
    host: list[HostHeadroom]
    cuda: list[DeviceHeadroom]

    def largest(self) -> HostHeadroom | None:
        """The stage closest to its limit (the first stage when no share is known)."""
        known = [h for h in self.host if h.share is not None]
        return max(known, key=lambda h: h.share or 0.0) if known else (self.host[0] if self.host else None)

    def to_dict(self) -> dict[str, Any]:
        return {"host": [asdict(h) for h in self.host], "cuda": [asdict(d) for d in self.cuda]}


def _share(peak: int | None, limit: int) -> float | None:
    return round(peak / limit, 4) if peak is not None and limit > 0 else None


def host_headroom(stage: str, limit: MemoryLimit, peak_tree_rss: int | None,
                  peak_main_rss: int | None = None, peak_footprint: int | None = None) -> HostHeadroom:
    peak: int | None
    if limit.peak_charged is not None:
        peak, measure = limit.peak_charged, "cgroup charge"
    elif peak_footprint is not None:
        peak, measure = peak_footprint, "footprint"
    else:
        peak, measure = peak_tree_rss, "tree RSS"
    return HostHeadroom(stage, limit.bytes, limit.source, limit.cgroup, peak, measure,
                        _share(peak, limit.bytes), peak_main_rss, _share(peak_main_rss, limit.bytes))


def headroom(run: Run, device_total: int | None = None, cuda_peak_reserved: int | None = None) -> Headroom:
    """Every stage's host headroom (stages that recorded a limit) and the CUDA device's."""
    footprints = _peak_footprints(run)
    host = [host_headroom(st.name, st.outcome.memory_limit, st.outcome.peak_tree_rss,
                          st.outcome.peak_main_rss, footprints.get(st.name))
            for st in run.stages if st.outcome is not None and st.outcome.memory_limit is not None]
    cuda = []
    if device_total:
        device = run.scenario.device if run.scenario is not None else "cuda"
        cuda.append(DeviceHeadroom(device, device_total, cuda_peak_reserved,
                                   _share(cuda_peak_reserved, device_total)))
    return Headroom(host, cuda)


def _peak_footprints(run: Run) -> dict[str, int]:
    """Each stage's peak footprint while its workload ran, where the samples give one."""
    if run.samples.empty or "pss" not in run.samples:
        return {}
    tk = running_ticks(run, ticks(run.samples))
    if "tree_footprint" not in tk or tk["tree_footprint"].isna().all():
        return {}
    peaks = tk.groupby("stage")["tree_footprint"].max().dropna()
    return {str(stage): int(v) for stage, v in peaks.items()}


def _sampled_cuda_reserved(run: Run) -> int | None:
    s = run.samples
    if s.empty or "cuda_reserved" not in s or s["cuda_reserved"].isna().all():
        return None
    return int(s["cuda_reserved"].max())


@finding("near_limit", severity="warning", doc="reports.md#near_limit",
         title="the peak is near the memory limit", scope="ranks", order=5)
def near_limit(run: Run, device_total: int | None = None) -> Finding | None:
    """A stage's peak footprint above NEAR_LIMIT of the memory available to it (its cgroup's
    limit, else the machine's), or the CUDA allocator's peak reserved above it of the device's."""
    room = headroom(run, device_total, _sampled_cuda_reserved(run))
    near = [h for h in room.host if h.share is not None and h.share > NEAR_LIMIT]
    near_cuda = [d for d in room.cuda if d.share is not None and d.share > NEAR_LIMIT]
    if not near and not near_cuda:
        return None
    bits = [f"stage {h.stage!r}: peak {h.measure} {mib(h.peak or 0)} is {h.share:.0%} of "
            f"{mib(h.limit)} ({h.source}{' ' + h.cgroup if h.cgroup else ''})" for h in near]
    bits += [f"{d.device}: peak reserved {mib(d.peak_reserved or 0)} is {d.share:.0%} of the "
             f"device's {mib(d.total)}" for d in near_cuda]
    worst = max([h.share or 0.0 for h in near] + [d.share or 0.0 for d in near_cuda])
    return Finding(
        "near_limit",
        f"The peak is {worst:.0%} of the memory available",
        "; ".join(bits) + f". Above {NEAR_LIMIT:.0%}, a larger batch, a longer input or one more "
        "DataLoader worker can be killed by the kernel's OOM killer (or fail a CUDA allocation).",
        {"threshold": NEAR_LIMIT, "host": [asdict(h) for h in near],
         "cuda": [asdict(d) for d in near_cuda]},
    )
