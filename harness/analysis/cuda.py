"""CUDA device memory from recorded data: allocator statistics, allocator history, GPU findings.

Pure functions, so the analysis runs on a machine without a GPU (the device-side readings that
produce the data are in :mod:`harness.probe.cuda`):

* :func:`parse_memory_stats` reads a ``torch.cuda.memory_stats()`` dict;
* :func:`summarize_history` reads an allocator history (``torch.cuda.memory._dump_snapshot``'s
  pickle, which PyTorch calls a snapshot; here "snapshot" means only the epoch snapshot);
* the findings (:func:`reserved_far_above_allocated`, :func:`device_peak_phase`,
  :func:`pinned_host_memory`, :func:`allocator_retries`) turn them into sentences with the numbers
  behind them.

Vocabulary (PyTorch's): *allocated* bytes are held by live tensors; *reserved* bytes are what the
caching allocator obtained from the driver (``cudaMalloc``) in segments, allocated or not; *active*
is allocated plus blocks freed but still waiting for their stream; *inactive split* bytes are free
blocks inside segments that also hold live blocks: ``torch.cuda.empty_cache()`` cannot return them.
"""

from __future__ import annotations

import os
import pickle
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from harness.analysis.finding import mib
from harness.errors import HarnessError
from harness.records.cuda_stats import CudaStats, parse_memory_stats, stat_int
from harness.sizes import MiB

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["CudaStats", "parse_memory_stats"]  # re-exported: the analysis reads device stats here

# Findings thresholds (see each finding's docstring).
RESERVED_MIN_GAP = 256 * MiB
RESERVED_MIN_RATIO = 1.5
PINNED_MIN_BYTES = 1 * MiB

# A block or event without frames: allocated before the recording started, or on a thread
# without Python frames (the autograd engine's, in backward) when only Python stacks are kept.
NO_STACK = "<no stack>"


class HistoryFormatError(HarnessError):
    """A file is not an allocator history as ``torch.cuda.memory._dump_snapshot`` writes it."""

    exit_code = 2


# --------------------------------------------------------------------------------------------
# memory_stats()


# --------------------------------------------------------------------------------------------
# Allocator snapshots (torch.cuda.memory._snapshot / _dump_snapshot)


@dataclass(frozen=True)
class SegmentInfo:
    """One segment obtained from the driver, as the snapshot lists it."""

    device: int
    address: int
    pool: str  # "large" or "small"
    total_size: int
    allocated_size: int
    active_size: int
    blocks: int
    largest_free_block: int


@dataclass(frozen=True)
class SiteBytes:
    """Bytes and number of allocations attributed to one allocation site."""

    site: str
    bytes: int
    count: int


@dataclass(frozen=True)
class HistorySummary:
    """What an allocator snapshot shows: segments, free space and fragmentation, allocation sites.

    ``fragmentation`` is ``1 - largest_free_block / free``: 0 when all free cached memory is one
    block (any request up to that size is served without ``cudaMalloc``), towards 1 when it is
    scattered over many blocks; None when nothing is free. Blocks never merge across segments,
    so this is the share of free bytes that a single request of size ``free`` could not use.
    ``split_free`` (free blocks in segments that also hold live blocks; equal to
    ``inactive_split_bytes`` of ``memory_stats``) is what ``empty_cache()`` cannot return;
    ``whole_free_segments`` is what it can.
    """

    segments: int
    reserved: int
    allocated: int
    active: int
    requested: int
    free: int
    largest_free_block: int
    fragmentation: float | None
    split_free: int
    whole_free_segments: int
    reserved_by_pool: dict[str, int]
    blocks_by_state: dict[str, int]
    largest_segments: tuple[SegmentInfo, ...]
    trace_entries: int
    trace_actions: dict[str, int]
    trace_span_s: float | None
    top_alloc_sites: tuple[SiteBytes, ...]
    live_sites: tuple[SiteBytes, ...]
    expandable_segments: bool | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_history(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load an allocator snapshot pickle written by ``_dump_snapshot`` or :func:`dump_history`.

    Uses ``pickle``, which can run code while loading: only for snapshots this harness (or we)
    recorded, never for files from elsewhere.
    """
    with open(path, "rb") as fh:
        snapshot = pickle.load(fh)  # noqa: S301 - our own recordings only, see docstring
    if not isinstance(snapshot, dict) or "segments" not in snapshot:
        raise HistoryFormatError(f"{path}: not a CUDA allocator snapshot (no 'segments')")
    return snapshot


_LIBRARY_PATH_MARKERS = ("/site-packages/", "/dist-packages/", "/lib/python3")
_AUTOGRAD_NODE = re.compile(r"torch::autograd::generated::(\w+)::apply")
_ATEN_OP = re.compile(r"at::_ops::(\w+)::(?:call|redispatch)\b")
_ALLOCATOR_PREFIXES = ("torch::unwind", "torch::CapturedTraceback", "torch::cuda::",
                       "c10::cuda::CUDACachingAllocator", "at::detail::empty")


def _is_python_frame(frame: Mapping[str, Any]) -> bool:
    return str(frame.get("filename", "")).endswith(".py")


def _is_user_frame(frame: Mapping[str, Any]) -> bool:
    filename = str(frame.get("filename", ""))
    return filename.endswith(".py") and not any(m in filename for m in _LIBRARY_PATH_MARKERS)


def _format_frame(frame: Mapping[str, Any]) -> str:
    return f"{frame.get('filename', '??')}:{frame.get('line', 0)} {frame.get('name', '??')}"


def allocation_site(frames: Sequence[Mapping[str, Any]]) -> str:
    """The innermost frame of the training code itself, as ``file:line function``.

    Frames come innermost first. Library code (site-packages, the standard library) is skipped;
    failing a user frame the innermost Python frame is used. A stack without Python frames runs
    on the autograd engine's thread: it is named after its autograd node (``autograd
    ConvolutionBackward0``), failing that after its ATen operator (``aten::sum_dim_IntList``),
    then after the innermost C++ function outside the allocator and stack capture.
    """
    if not frames:
        return NO_STACK
    for test in (_is_user_frame, _is_python_frame):
        for frame in frames:
            if test(frame):
                return _format_frame(frame)
    for frame in frames:
        match = _AUTOGRAD_NODE.search(str(frame.get("name", "")))
        if match:
            return f"autograd {match.group(1)}"
    for frame in frames:
        match = _ATEN_OP.search(str(frame.get("name", "")))
        if match:
            return f"aten::{match.group(1)}"
    names = [str(f.get("name", "??")).replace("(anonymous namespace)", "{anonymous}")
             for f in frames]
    chosen = next((n for n in names if not n.startswith(_ALLOCATOR_PREFIXES)), names[0])
    return chosen.split("(", 1)[0]


def _top_sites(pairs: Iterable[tuple[str, int]], top: int) -> tuple[SiteBytes, ...]:
    size: Counter[str] = Counter()
    count: Counter[str] = Counter()
    for site, nbytes in pairs:
        size[site] += nbytes
        count[site] += 1
    ranked = sorted(size, key=lambda s: (-size[s], s))[:top]
    return tuple(SiteBytes(s, size[s], count[s]) for s in ranked)


def _segment_info(seg: Mapping[str, Any]) -> SegmentInfo:
    blocks = seg.get("blocks", [])
    free = [int(b["size"]) for b in blocks if b.get("state") == "inactive"]
    return SegmentInfo(
        device=int(seg.get("device", 0)),
        address=int(seg.get("address", 0)),
        pool=str(seg.get("segment_type", "?")),
        total_size=int(seg["total_size"]),
        allocated_size=int(seg.get("allocated_size", 0)),
        active_size=int(seg.get("active_size", 0)),
        blocks=len(blocks),
        largest_free_block=max(free, default=0),
    )


def summarize_history(
    snapshot: Mapping[str, Any], *, device: int | None = None, top: int = 10
) -> HistorySummary:
    """Summarise an allocator snapshot dict (all devices, or only ``device``)."""
    segments = [s for s in snapshot.get("segments", [])
                if device is None or int(s.get("device", 0)) == device]
    infos = [_segment_info(s) for s in segments]
    reserved = sum(i.total_size for i in infos)
    allocated = sum(i.allocated_size for i in infos)
    by_pool: Counter[str] = Counter()
    states: Counter[str] = Counter()
    free = split_free = whole_free = largest_free = 0
    live: list[tuple[str, int]] = []
    for seg, info in zip(segments, infos):
        by_pool[info.pool] += info.total_size
        seg_free = 0
        for block in seg.get("blocks", []):
            state = str(block.get("state", "?"))
            states[state] += 1
            if state == "inactive":
                seg_free += int(block["size"])
            elif state == "active_allocated":
                live.append((allocation_site(block.get("frames", [])), int(block["size"])))
        free += seg_free
        largest_free = max(largest_free, info.largest_free_block)
        if info.allocated_size == 0 and info.active_size == 0:
            whole_free += seg_free
        else:
            split_free += seg_free

    traces = snapshot.get("device_traces", [])
    entries: list[Mapping[str, Any]] = []
    for index, trace in enumerate(traces):
        if device is None or index == device:
            entries.extend(trace)
    actions = Counter(str(e.get("action", "?")) for e in entries)
    times = [int(e["time_us"]) for e in entries if e.get("time_us")]
    span = (max(times) - min(times)) / 1e6 if times else None
    allocs = ((allocation_site(e.get("frames", [])), int(e.get("size", 0)))
              for e in entries if e.get("action") == "alloc")

    settings = snapshot.get("allocator_settings") or {}
    expandable = settings.get("expandable_segments")
    return HistorySummary(
        segments=len(infos),
        reserved=reserved,
        allocated=allocated,
        active=sum(i.active_size for i in infos),
        requested=sum(int(s.get("requested_size", 0)) for s in segments),
        free=free,
        largest_free_block=largest_free,
        fragmentation=(1 - largest_free / free) if free else None,
        split_free=split_free,
        whole_free_segments=whole_free,
        reserved_by_pool=dict(by_pool),
        blocks_by_state=dict(states),
        largest_segments=tuple(sorted(infos, key=lambda i: (-i.total_size, i.address))[:5]),
        trace_entries=len(entries),
        trace_actions=dict(actions),
        trace_span_s=span,
        top_alloc_sites=_top_sites(allocs, top),
        live_sites=_top_sites(live, top),
        expandable_segments=None if expandable is None else bool(expandable),
    )


# --------------------------------------------------------------------------------------------
# Findings: a sentence and the numbers behind it, or None when the data does not support one.


@dataclass(frozen=True)
class ReservedFinding:
    """Reserved memory far above allocated, and whether it is cache or fragmentation."""

    text: str
    allocated: int
    reserved: int
    gap: int
    ratio: float
    peak_allocated: int
    peak_reserved: int
    inactive_split: int
    cause: str  # "fragmentation" or "cache"
    kind: str = field(default="cuda_reserved", init=False)


def reserved_far_above_allocated(
    stats: CudaStats,
    *,
    min_gap: int = RESERVED_MIN_GAP,
    min_ratio: float = RESERVED_MIN_RATIO,
) -> ReservedFinding | None:
    """Fires when reserved exceeds allocated by at least ``min_gap`` bytes and ``min_ratio`` times.

    Thresholds: below 256 MiB the gap is the allocator's normal granularity (2 MiB small-pool
    and 20 MiB large-pool segments, rounding, library workspaces); the ratio 1.5 keeps a large
    model from firing on a few percent of slack. The cause is *fragmentation* when the free
    bytes are mostly split blocks (inactive split >= half the gap: free pieces between live
    tensors, which ``empty_cache()`` cannot return) or when even at the peak reserved was
    ``min_ratio`` times allocated; otherwise it is *cache*: whole segments kept from an earlier
    peak, reusable by this process but not by others until ``torch.cuda.empty_cache()``.
    """
    gap = stats.reserved - stats.allocated
    if gap < min_gap or stats.reserved < min_ratio * max(stats.allocated, 1):
        return None
    ratio = stats.reserved / max(stats.allocated, 1)
    peak_gap = stats.peak_reserved - stats.peak_allocated
    fragmented = stats.inactive_split * 2 >= gap or (
        peak_gap >= min_gap and stats.peak_reserved >= min_ratio * max(stats.peak_allocated, 1)
    )
    if fragmented:
        cause = "fragmentation"
        why = (f"{mib(stats.inactive_split)} of it is free space split between live blocks, "
               f"and at the peak {mib(stats.peak_reserved)} was reserved for "
               f"{mib(stats.peak_allocated)} allocated. Fewer distinct tensor sizes, or "
               "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True, usually shrink it.")
    else:
        cause = "cache"
        why = ("It is cache kept from an earlier, higher peak "
               f"({mib(stats.peak_allocated)} allocated): reusable by this process, not by "
               "others until torch.cuda.empty_cache().")
    text = (f"The CUDA caching allocator holds {mib(stats.reserved)} for "
            f"{mib(stats.allocated)} of live tensors ({ratio:.1f}x, {mib(gap)} more). {why}")
    return ReservedFinding(text, stats.allocated, stats.reserved, gap, ratio, stats.peak_allocated,
                           stats.peak_reserved, stats.inactive_split, cause)


@dataclass(frozen=True)
class PeakPhaseFinding:
    """The phase in which device memory reached its peak."""

    text: str
    phase: str
    row: int
    peak_allocated: int
    peak_reserved: int
    share_of_device: float | None
    kind: str = field(default="cuda_peak_phase", init=False)


def device_peak_phase(
    table: pd.DataFrame, *, device_total: int | None = None
) -> PeakPhaseFinding | None:
    """The phase holding the device's peak allocated bytes, from the device table (:func:`harness.analysis.device.device_table`).

    Works with peaks reset per phase (the highest phase peak) and with running peaks (the first
    row that reached the final peak: the phase during which it was set). None for an empty
    table or one without any allocation.
    """
    if table.empty or int(table["peak_allocated"].max()) <= 0:
        return None
    row = int(table["peak_allocated"].to_numpy().argmax())
    rec = table.iloc[row]
    peak = int(rec["peak_allocated"])
    share = peak / device_total if device_total else None
    of_device = f", {share:.1%} of the device's {mib(device_total)}" if device_total else ""
    text = (f"Device memory peaked in the {rec['phase']} phase: {mib(peak)} allocated"
            f"{of_device}, {mib(int(rec['peak_reserved']))} reserved by the allocator.")
    return PeakPhaseFinding(text, str(rec["phase"]), row, peak, int(rec["peak_reserved"]), share)


@dataclass(frozen=True)
class PinnedHostFinding:
    """Host memory page-locked by PyTorch's pinned-memory allocator for host-to-device copies."""

    text: str
    pinned: int
    peak_pinned: int
    in_use: int
    blocks: int
    share_of_rss: float | None
    kind: str = field(default="cuda_pinned_host", init=False)


def pinned_host_memory(
    host_stats: Mapping[str, Any], *, rss: int | None = None, min_bytes: int = PINNED_MIN_BYTES
) -> PinnedHostFinding | None:
    """Fires when the pinned-host allocator held at least ``min_bytes`` (1 MiB) at its peak.

    ``host_stats`` is ``torch.cuda.host_memory_stats()`` (keys ``allocated_bytes.current``,
    ``allocated_bytes.peak``, ``active_bytes.current``, ``allocations.current``); it is empty
    on a machine without CUDA or before anything was pinned, and then nothing fires. Pinned
    pages (``pin_memory=True`` loaders, ``.pin_memory()``, non-blocking copies) count in the
    process's RSS, cannot be swapped, and stay cached by the allocator after use.
    """
    pinned = stat_int(host_stats, "allocated_bytes.current")
    peak = max(stat_int(host_stats, "allocated_bytes.peak"), pinned)
    if peak < min_bytes:
        return None
    in_use = stat_int(host_stats, "active_bytes.current")
    blocks = stat_int(host_stats, "allocations.current")
    share = pinned / rss if rss else None
    of_rss = f" ({share:.0%} of the process's RSS)" if share is not None else ""
    text = (f"{mib(pinned)} of host memory is pinned (page-locked) for transfers to the GPU"
            f"{of_rss}, {mib(in_use)} of it in use, peak {mib(peak)}, in {blocks} blocks. "
            "Pinned pages count in RSS, cannot be swapped, and stay cached after use.")
    return PinnedHostFinding(text, pinned, peak, in_use, blocks, share)


@dataclass(frozen=True)
class RetriesFinding:
    """The allocator had to free its cache and retry (memory pressure), or ran out of memory."""

    text: str
    retries: int
    ooms: int
    kind: str = field(default="cuda_retries", init=False)


def allocator_retries(stats: CudaStats) -> RetriesFinding | None:
    """Fires on any allocation retry or OOM: each retry freed the whole cache and synchronised."""
    if stats.num_alloc_retries <= 0 and stats.num_ooms <= 0:
        return None
    text = (f"The CUDA allocator retried {stats.num_alloc_retries} allocation(s) after "
            f"releasing its cache and raised {stats.num_ooms} out-of-memory error(s): the device "
            "was full; every retry synchronises and slows the step.")
    return RetriesFinding(text, stats.num_alloc_retries, stats.num_ooms)
