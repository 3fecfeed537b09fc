"""Epoch-boundary memory snapshots, taken inside the workload process.

A snapshot holds live tensor bytes by category (a DDP rank's reducer buckets as ``ddp_buckets``,
sizes only: :func:`harness.probe.tensors.ddp_buckets`) and a tensor map (category, name, shape, dtype,
bytes, address and the memory mapping that holds it), each process's RSS/USS/PSS, gc counts, a
summary of ``/proc/self/maps`` and, on CUDA, ``torch.cuda`` statistics: a
:class:`harness.records.snapshots.Snapshot`, written by its own ``write``.
"""

from __future__ import annotations

import bisect
import gc
import os
import time
from dataclasses import dataclass
from typing import Any

import psutil

from harness.probe import processes
from harness.probe import tensors as tensor_census
from harness.records.snapshots import (
    GcState,
    HoldingMapping,
    MapsKind,
    MapsSummary,
    ProcessMemory,
    Snapshot,
    SnapshotCuda,
    TensorEntry,
    TensorMapping,
)


@dataclass(frozen=True)
class Mapping:
    start: int
    end: int
    perms: str
    path: str

    @property
    def kind(self) -> str:
        if not self.path:
            return "anonymous"
        if self.path in ("[heap]", "[stack]"):
            return self.path.strip("[]")
        if self.path.startswith("["):
            return "special"
        if self.path.startswith("/dev/shm") or "(deleted)" in self.path:
            return "shared-memory"
        return "file"


def read_maps(pid: int | str = "self") -> list[Mapping]:
    """Parse ``/proc/<pid>/maps`` into mappings sorted by start address."""
    maps: list[Mapping] = []
    with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as fh:
        for line in fh:
            parts = line.split(maxsplit=5)
            lo, hi = parts[0].split("-")
            path = parts[5].strip() if len(parts) > 5 else ""
            maps.append(Mapping(int(lo, 16), int(hi, 16), parts[1], path))
    maps.sort(key=lambda m: m.start)
    return maps


def find_mapping(maps: list[Mapping], address: int) -> Mapping | None:
    starts = [m.start for m in maps]
    i = bisect.bisect_right(starts, address) - 1
    if i >= 0 and maps[i].start <= address < maps[i].end:
        return maps[i]
    return None


def maps_summary(maps: list[Mapping]) -> dict[str, MapsKind]:
    """Virtual size and mapping count by kind (anonymous, heap, stack, file, ...)."""
    counts: dict[str, list[int]] = {}
    for m in maps:
        k = counts.setdefault(m.kind, [0, 0])
        k[0] += 1
        k[1] += m.end - m.start
    return {kind: MapsKind(count=n, bytes=b) for kind, (n, b) in counts.items()}


def process_memory(pid: int, role: str) -> ProcessMemory:
    """RSS, USS, PSS, shared and swap of ``pid``; ``gone`` if it ended since the tree was read."""
    try:
        full = psutil.Process(pid).memory_full_info()
        return ProcessMemory(pid=pid, role=role, rss=full.rss, uss=full.uss,
                             pss=getattr(full, "pss", None), shared=full.shared,
                             swap=getattr(full, "swap", None))
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return ProcessMemory(pid=pid, role=role, gone=True)


def process_tree(pid: int) -> list[ProcessMemory]:
    """Memory of ``pid`` and its descendants, named as the sampler names them; ``pid`` first."""
    return [process_memory(p, role) for p, _, role in processes.roles_of(pid)]


def cuda_stats(device: str) -> SnapshotCuda | None:
    """Device memory for the snapshot: live figures, the full parsed stats, pinned host memory."""
    from harness.probe import cuda

    dev = cuda.usable_device(device)
    if dev is None:
        return None
    import torch

    return SnapshotCuda(
        **cuda.device_sample(device),
        name=torch.cuda.get_device_name(dev),
        stats=cuda.parse_memory_stats(torch.cuda.memory_stats(dev)).to_dict(),
        # numbers only: a key some torch version adds of another kind must not fail the epoch
        host={k: v for k, v in cuda.host_sample().items() if isinstance(v, int | float)},
    )


def take(
    label: str,
    *,
    stage: str,
    epoch: int,
    model: Any,
    optimizer: Any,
    device: str,
    memray_active: bool,
    storages: tensor_census.StorageSink | None = None,
) -> Snapshot:
    """Take one snapshot; :meth:`Snapshot.write` writes it. ``storages`` is told of every tensor
    the census finds (the composition's, from the same walk)."""
    t0 = time.time()
    records = tensor_census.census(model, optimizer, storages)
    maps = read_maps()
    tensor_map = []
    holding: dict[int, Mapping] = {}
    for r in records:
        m = find_mapping(maps, r.address) if r.device == "cpu" else None
        if m is not None:
            holding[m.start] = m
        tensor_map.append(TensorEntry(
            category=r.category, name=r.name, shape=list(r.shape), dtype=r.dtype, bytes=r.bytes,
            address=r.address, device=r.device,
            mapping=None if m is None else TensorMapping(start=m.start, end=m.end, kind=m.kind,
                                                         path=m.path)))
    tensor_bytes = tensor_census.bytes_by_category(records)
    ddp = tensor_census.ddp_buckets(model)
    if ddp is not None and not ddp.gradient_as_bucket_view:  # else they are the gradients
        tensor_bytes["ddp_buckets"] = sum(ddp.bucket_sizes)
    return Snapshot(
        label=label,
        stage=stage,
        epoch=epoch,
        t=t0,
        pid=os.getpid(),
        rank=global_rank(),
        tensor_bytes=tensor_bytes,
        ddp=ddp,
        tensor_count=len(records),
        tensors=tensor_map,
        processes=process_tree(os.getpid()),
        gc=GcState(counts=list(gc.get_count()), stats=gc.get_stats()),
        maps=MapsSummary(
            summary=maps_summary(maps),
            holding_tensors=[
                HoldingMapping(start=m.start, end=m.end, perms=m.perms, kind=m.kind, path=m.path)
                for m in sorted(holding.values(), key=lambda m: m.start)
            ],
        ),
        memray_active=memray_active,
        cuda=cuda_stats(device),
        took_s=round(time.time() - t0, 4),
    )


def global_rank() -> int | None:
    """The global rank of this process in a torchrun job; None outside one."""
    raw = os.environ.get("RANK")
    return int(raw) if raw and raw.isdigit() and "TORCHELASTIC_RUN_ID" in os.environ else None
