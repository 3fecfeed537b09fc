"""An epoch snapshot (``snapshots/<label>.json``): the one definition its writer and readers share.

The probe (:mod:`harness.probe.epoch_snapshot`) builds a :class:`Snapshot` inside the training
process and writes it with :meth:`Snapshot.write`; :func:`harness.analysis.load.read_snapshots`
validates each file into the same model, and analysis reads its attributes. docs/run-directory.md
describes every field (tests/test_run_directory_doc.py holds the two together).

Strict: a number written as a string is as wrong as the writer would have made it, and the reader
names the field. Keys this model does not know (a field of an older version, ``max_allocated``)
are ignored, so old run directories still read.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from harness.records.cuda_stats import CudaStats

TENSOR_CATEGORIES = ("parameters", "gradients", "optimizer_state", "other")


class _Part(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)


class TensorMapping(_Part):
    """The memory mapping (``/proc/self/maps``) that holds a CPU tensor's data."""

    start: int
    end: int
    kind: str  # anonymous, heap, stack, file, shared-memory, special
    path: str


class TensorEntry(_Part):
    """One live tensor of the census (:func:`harness.probe.tensors.census`)."""

    category: str  # TENSOR_CATEGORIES
    name: str  # a parameter's name (gradients ``<name>.grad``, state ``<name>.<key>``); "" for other
    shape: list[int]
    dtype: str  # without ``torch.``
    bytes: int
    address: int
    device: str
    mapping: TensorMapping | None = None  # CPU tensors whose address a mapping holds


class ProcessMemory(_Part):
    """One process of the stage's tree, named by the sampler's rule; ``gone`` when it ended
    between finding the tree and reading it (then only ``pid`` and ``role``)."""

    pid: int
    role: str
    rss: int | None = None
    uss: int | None = None
    pss: int | None = None
    shared: int | None = None
    swap: int | None = None
    gone: bool = False


class GcState(_Part):
    """``gc.get_count()`` and ``gc.get_stats()`` at the snapshot."""

    counts: list[int]
    stats: list[dict[str, int]]


class MapsKind(_Part):
    count: int
    bytes: int  # virtual size


class HoldingMapping(TensorMapping):
    perms: str


class MapsSummary(_Part):
    """``/proc/self/maps`` by kind, and the mappings that hold tensors."""

    summary: dict[str, MapsKind]
    holding_tensors: list[HoldingMapping]


class DdpBuckets(_Part):
    """A DistributedDataParallel model's reducer buckets (:func:`harness.probe.tensors.ddp_buckets`)."""

    bucket_sizes: list[int]  # bytes each
    gradient_as_bucket_view: bool


class SnapshotCuda(_Part):
    """The device at the snapshot: a reading (:func:`harness.probe.cuda.device_sample`), the
    device's name, the parsed allocator stats and pinned host memory. Only ``allocated`` and
    ``reserved`` are in every version."""

    allocated: int
    reserved: int
    t: float | None = None
    peak_allocated: int | None = None
    peak_reserved: int | None = None
    active: int | None = None
    inactive_split: int | None = None
    retries: int | None = None
    ooms: int | None = None
    device_free: int | None = None
    device_total: int | None = None
    name: str | None = None
    stats: dict[str, int | None] | None = None  # CudaStats' fields
    host: dict[str, int | float] | None = None  # torch.cuda.host_memory_stats()

    def cuda_stats(self) -> CudaStats | None:
        """``stats`` as :class:`CudaStats`; None when absent or from a version lacking a field."""
        if self.stats is None:
            return None
        known = {k: v for k, v in self.stats.items() if k in CudaStats.__dataclass_fields__}
        try:
            return CudaStats(**known)  # type: ignore[arg-type]
        except TypeError:
            return None


class Snapshot(_Part):
    """One epoch-boundary snapshot of the training process (docs/run-directory.md)."""

    label: str  # epoch-<N>, or end
    stage: str
    epoch: int
    t: float  # wall clock when it began
    pid: int
    tensor_bytes: dict[str, int]  # TENSOR_CATEGORIES, and ddp_buckets on a DDP rank
    tensor_count: int
    tensors: list[TensorEntry]
    processes: list[ProcessMemory]  # the stage's process first, then its descendants
    gc: GcState
    maps: MapsSummary
    memray_active: bool
    cuda: SnapshotCuda | None  # None on the CPU
    took_s: float
    rank: int | None = None  # a torchrun rank's global rank
    ddp: DdpBuckets | None = None  # a DistributedDataParallel model's buckets

    def main(self) -> ProcessMemory | None:
        """The stage's (or rank's) own process, unless it is missing or gone."""
        return next((p for p in self.processes if p.role == "main" and not p.gone), None)

    def to_json(self) -> str:
        """The file's text: fields at their defaults (no rank, no mapping, not gone) left out,
        as the writer always wrote them."""
        return json.dumps(self.model_dump(mode="json", exclude_defaults=True), indent=1)

    def write(self, directory: Path) -> Path:
        """Write ``<directory>/<label>.json`` atomically; returns its path."""
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{self.label}.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(self.to_json(), encoding="utf-8")
        tmp.replace(path)
        return path
