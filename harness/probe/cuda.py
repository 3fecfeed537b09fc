"""CUDA device memory, read inside the training process: allocator readings and history windows.

Call only where CUDA exists; every helper raises :class:`CudaUnavailable` otherwise. What they
record is read by :mod:`harness.analysis.cuda` (statistics, history summaries, findings).
"""

from __future__ import annotations

import os
import pickle
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import HarnessError
from harness.records.cuda_stats import CudaStats, parse_memory_stats
from harness.sizes import MiB

if TYPE_CHECKING:
    import torch

__all__ = ["CudaStats", "CudaUnavailable", "parse_memory_stats"]

# The allocator history is a ring buffer of this many alloc/free events (PyTorch keeps the most
# recent ones). The two H100 recordings pickle at ~170 bytes per event: torch hands every
# repeated stack frame out as the same object, so pickle stores each distinct frame once and an
# event costs its own fields (~50 bytes) plus a ~4-byte reference per frame. 100,000 events are
# then ~17 MB at the recorded depth (~30 frames) and ~48 MB at 100 frames. For the tutorial net
# that is ~1,100 training steps (87-96 events a step). :func:`dump_history` enforces the byte
# bound whatever the stacks turn out to be.
DEFAULT_MAX_ENTRIES = 100_000
# pytorch.org/memory_viz loads the whole pickle into the browser and struggles past a few
# hundred MB; 64 MiB stays well inside that.
DEFAULT_MAX_BYTES = 64 * MiB


class CudaUnavailable(HarnessError):
    """A device-side helper was called for a non-CUDA device or on a machine without CUDA."""

    exit_code = 2


@dataclass(frozen=True)
class BoundedHistory:
    """A pickled snapshot trimmed to a byte budget, and what was cut to get there."""

    data: bytes
    entries_kept: int
    entries_dropped: int
    block_frames_dropped: bool
    over_budget: bool  # still above max_bytes with no trace left and no block stacks

    @property
    def nbytes(self) -> int:
        return len(self.data)


def _with_traces(snapshot: Mapping[str, Any], keep: Sequence[int]) -> dict[str, Any]:
    out = dict(snapshot)
    traces = snapshot.get("device_traces", [])
    out["device_traces"] = [list(t[len(t) - k:]) if k else [] for t, k in zip(traces, keep)]
    return out


def _without_block_frames(snapshot: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(snapshot)
    out["segments"] = [
        {**seg, "blocks": [{**b, "frames": []} for b in seg.get("blocks", [])]}
        for seg in snapshot.get("segments", [])
    ]
    return out


def bound_history(snapshot: Mapping[str, Any], max_bytes: int) -> BoundedHistory:
    """Pickle ``snapshot``, dropping the oldest trace events until it fits in ``max_bytes``.

    The newest events are kept (the window ending at the dump), in the same share for every
    device. Should the segments alone exceed the budget, the stacks of live blocks go too; the
    result is then returned even if it is still over (``over_budget``). The input is not changed.
    Pickled with pickle's default protocol, as ``_dump_snapshot`` does, so the viewer reads it.
    """
    lengths = [len(t) for t in snapshot.get("device_traces", [])]
    total = sum(lengths)
    data = pickle.dumps(dict(snapshot))
    if len(data) <= max_bytes:
        return BoundedHistory(data, total, 0, False, False)
    base = len(pickle.dumps(_with_traces(snapshot, [0] * len(lengths))))
    if base < max_bytes and total:
        # Events pickle at a near-constant cost each: scale, then shrink by 10% until it fits.
        share = (max_bytes - base) / (len(data) - base)
        for _ in range(30):
            keep = [int(n * share) for n in lengths]
            if not sum(keep):
                break
            data = pickle.dumps(_with_traces(snapshot, keep))
            if len(data) <= max_bytes:
                return BoundedHistory(data, sum(keep), total - sum(keep), False, False)
            share *= 0.9
    if base <= max_bytes:
        data = pickle.dumps(_with_traces(snapshot, [0] * len(lengths)))
        return BoundedHistory(data, 0, total, False, False)
    data = pickle.dumps(_without_block_frames(_with_traces(snapshot, [0] * len(lengths))))
    return BoundedHistory(data, 0, total, True, len(data) > max_bytes)


# --------------------------------------------------------------------------------------------
# Device-side helpers: call only where CUDA exists.


def _cuda(device: str) -> torch.device:
    """The torch.device for ``device``, or CudaUnavailable when it is not a usable CUDA device."""
    if not device.startswith("cuda"):
        raise CudaUnavailable(f"{device!r} is not a CUDA device")
    import torch

    if not torch.cuda.is_available():
        raise CudaUnavailable(f"{device!r} asked for, but this machine has no CUDA device")
    return torch.device(device)


def usable_device(device: str) -> torch.device | None:
    """The torch.device for ``device``; None where it is not a CUDA device this machine has."""
    try:
        return _cuda(device)
    except CudaUnavailable:
        return None


def device_sample(device: str, *, driver: bool = True) -> dict[str, Any]:
    """Live allocator figures and the driver's free/total for ``device`` (wall clock ``t``).

    One ``memory_stats()`` call (``memory_allocated()`` and friends each make their own) plus,
    with ``driver``, one ``cudaMemGetInfo``; neither synchronises the device. Without
    ``driver`` (the probe's per-phase readings) the two device fields are left out.
    """
    import torch

    dev = _cuda(device)
    stats = parse_memory_stats(torch.cuda.memory_stats(dev))
    reading = {
        "t": time.time(),
        "allocated": stats.allocated,
        "reserved": stats.reserved,
        "peak_allocated": stats.peak_allocated,
        "peak_reserved": stats.peak_reserved,
        "active": stats.active,
        "inactive_split": stats.inactive_split,
        "retries": stats.num_alloc_retries,
        "ooms": stats.num_ooms,
    }
    if driver:
        free, total = torch.cuda.mem_get_info(dev)
        reading["device_free"] = int(free)
        reading["device_total"] = int(total)
    return reading


def reset_phase_peak(device: str) -> None:
    """Start a new peak window for ``device`` (``torch.cuda.reset_peak_memory_stats``)."""
    import torch

    torch.cuda.reset_peak_memory_stats(_cuda(device))


def host_sample() -> dict[str, Any]:
    """``torch.cuda.host_memory_stats()`` where this torch has it; {} otherwise or without CUDA."""
    import torch

    fn = getattr(torch.cuda, "host_memory_stats", None)
    if fn is None or not torch.cuda.is_available():
        return {}
    return dict(fn())


def start_history(
    max_entries: int = DEFAULT_MAX_ENTRIES, *, device: str = "cuda", stacks: str = "python"
) -> None:
    """Start recording allocator history: the newest ``max_entries`` alloc/free events.

    ``stacks="python"`` records Python frames only (enough to name the line of training code;
    backward's allocations, made on the autograd thread, then have no stack); ``"all"`` adds
    C++ frames, as in the H100 recordings, which cost more per event and take longer to
    symbolise when the snapshot is taken.
    """
    import torch

    torch.cuda.memory._record_memory_history(
        enabled="all", context="all", stacks=stacks, max_entries=max_entries,
        device=_cuda(device),
    )


def stop_history() -> None:
    """Stop recording allocator history and drop what was recorded."""
    import torch

    _cuda("cuda")
    torch.cuda.memory._record_memory_history(enabled=None)


@dataclass(frozen=True)
class HistoryDump:
    """Where a history snapshot was written and what bounding it cost."""

    path: str
    bytes: int
    entries_kept: int
    entries_dropped: int
    block_frames_dropped: bool
    over_budget: bool


def dump_history(
    path: str | os.PathLike[str], max_bytes: int = DEFAULT_MAX_BYTES, *, stop: bool = True
) -> HistoryDump:
    """Write the allocator snapshot with its history to ``path``, at most ``max_bytes``.

    Like ``_dump_snapshot`` (same pickle, opens at pytorch.org/memory_viz) but trimmed by
    :func:`bound_history` and written atomically. ``stop`` ends the recording afterwards.
    """
    import torch

    _cuda("cuda")
    bounded = bound_history(torch.cuda.memory._snapshot(), max_bytes)
    if stop:
        stop_history()
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_bytes(bounded.data)
    tmp.replace(target)
    return HistoryDump(str(target), bounded.nbytes, bounded.entries_kept, bounded.entries_dropped,
                       bounded.block_frames_dropped, bounded.over_budget)


# ---- a failed allocation: torch's OOM observer ---------------------------------------------------


@dataclass(frozen=True)
class OomState:
    """The allocator at a failed allocation (bytes): a :class:`harness.records.events.CudaOom`'s
    figures."""

    device: int
    requested: int
    allocated: int
    reserved: int
    largest_free_block: int | None
    segments: int


def oom_state(device: int, requested: int, stats: Mapping[str, Any],
              snapshot: Mapping[str, Any]) -> OomState:
    """The allocator's state when an allocation of ``requested`` bytes failed on ``device``:
    allocated and reserved (``torch.cuda.memory_stats``), and from the snapshot's segments of that
    device how many there are and the largest free block inside them (an allocation larger than it
    needs a new segment from the driver)."""
    from harness.records.cuda_stats import stat_int

    segments = [s for s in snapshot.get("segments", []) if int(s.get("device", 0)) == device]
    free = [int(b["size"]) for s in segments for b in s.get("blocks", []) if b.get("state") == "inactive"]
    return OomState(
        device=device,
        requested=int(requested),
        allocated=stat_int(stats, "allocated_bytes.all.current"),
        reserved=stat_int(stats, "reserved_bytes.all.current"),
        largest_free_block=max(free, default=0) if segments else None,
        segments=len(segments),
    )


class OomObserver:
    """Records the allocator's state at a failed CUDA allocation: torch calls it (through
    ``torch._C._cuda_attach_out_of_memory_observer``) with the device, the bytes asked for, the
    bytes reserved and the device's free bytes, just before it raises ``OutOfMemoryError``.

    ``write`` takes the :class:`harness.records.events.CudaOom` event; ``where`` gives (epoch,
    step, phase) now; the snapshot goes to ``directory`` (trimmed to ``max_bytes`` as the history
    windows are). torch keeps no way to detach an observer: :meth:`detach` leaves it inert.
    """

    def __init__(self, write: Any, where: Any, stage: str, directory: Path, max_bytes: int) -> None:
        self._write = write
        self._where = where
        self._stage = stage
        self._dir = directory
        self._max_bytes = max_bytes
        self.active = False
        self.count = 0

    def attach(self) -> bool:
        """Install it; False where this torch has no OOM observer."""
        import torch

        attach = getattr(torch._C, "_cuda_attach_out_of_memory_observer", None)
        if attach is None:
            return False
        try:
            attach(self)
        except RuntimeError:  # no driver: nothing to observe
            return False
        self.active = True
        return True

    def detach(self) -> None:
        self.active = False

    def __call__(self, device: int, requested: int, reserved: int, device_free: int) -> None:
        if not self.active:
            return
        try:
            self._record(int(device), int(requested), int(device_free))
        except Exception as exc:  # noqa: BLE001 - never a second error inside the allocator's
            print(f"harness: the CUDA OOM observer could not record the allocator's state: {exc}",
                  file=sys.stderr)

    def _record(self, device: int, requested: int, device_free: int) -> None:
        import torch

        from harness.layout import CUDA_HISTORY_DIR, cuda_oom_name
        from harness.records.events import CudaOom

        self.count += 1
        snapshot = torch.cuda.memory._snapshot()
        state = oom_state(device, requested, torch.cuda.memory_stats(device), snapshot)
        name = cuda_oom_name(self._stage, self.count)
        file: str | None = None
        bounded = bound_history(snapshot, self._max_bytes)
        try:
            self._dir.mkdir(parents=True, exist_ok=True)
            (self._dir / name).write_bytes(bounded.data)
            file = f"{CUDA_HISTORY_DIR}/{name}"
        except OSError:
            pass  # the event still says what the state was
        epoch, step, phase = self._where()
        total = int(torch.cuda.get_device_properties(device).total_memory)
        self._write(CudaOom(t=time.time(), epoch=epoch, step=step, phase=phase,
                            device=state.device, requested=state.requested,
                            allocated=state.allocated, reserved=state.reserved,
                            largest_free_block=state.largest_free_block, segments=state.segments,
                            device_free=device_free, device_total=total, file=file))
