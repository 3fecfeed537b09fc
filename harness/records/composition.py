"""The accounted composition of a process's memory (``composition.jsonl``): what its RSS is made of.

One line of the file is one :class:`Moment`: the stage's processes each split into :data:`PARTS`
at one instant — the stage start (after imports and the workload's set-up, before the first
training step), an epoch snapshot, or a moment near the peak (RSS past the stage's previous peak
by a margin, bounded in number). The probe writes it inside the training process
(:mod:`harness.probe.composition`); analysis reads it through the same model.

Every part is bytes of resident memory, and a process's parts add up to its RSS: ``unexplained``
is the remainder, always written, never folded into another part (it may be negative when two
sources overlap; the reader shows it as it is). A process read only from outside (a DataLoader
worker: ``/proc/<pid>/smaps`` alone) has no tensor, Python or malloc split: its anonymous memory
it cannot name stays in ``unexplained``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# The parts, in the order a stacked bar draws them (bottom up), each with the group it belongs to
# and the words a reader sees. The keys are the record's field names; the report's colours are
# keyed by them, so the same part has the same colour on every page.
PARTS: tuple[tuple[str, str, str], ...] = (
    # file-backed pages, grouped by what is mapped (smaps' Rss of file mappings)
    ("file_torch", "file", "torch's libraries"),
    ("file_cuda", "file", "CUDA libraries"),
    ("file_python", "file", "Python and other shared objects"),
    ("file_data", "file", "memory-mapped data files"),
    # anonymous memory, split by who holds it
    ("tensor_parameters", "anon", "tensors: parameters"),
    ("tensor_gradients", "anon", "tensors: gradients"),
    ("tensor_optimizer_state", "anon", "tensors: optimizer state"),
    ("tensor_other", "anon", "tensors: other (activations, batches)"),
    ("python_objects", "anon", "Python objects"),
    ("native_heap", "anon", "native heap in use (libraries' malloc)"),
    ("malloc_free", "anon", "held free by malloc"),
    ("stacks", "anon", "thread stacks"),
    ("instrument", "anon", "the instrument (memray, the probe)"),
    # shared memory: /dev/shm, memfd (DataLoader batches in flight)
    ("shared_memory", "shared", "shared memory"),
    ("unexplained", "unexplained", "unexplained"),
)
PART_KEYS: tuple[str, ...] = tuple(key for key, _, _ in PARTS)

When = Literal["start", "epoch", "peak", "end"]


class _Record(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)


class Parts(_Record):
    """Bytes by part; see :data:`PARTS`. They add up to the process's RSS."""

    file_torch: int = 0
    file_cuda: int = 0
    file_python: int = 0
    file_data: int = 0
    tensor_parameters: int = 0
    tensor_gradients: int = 0
    tensor_optimizer_state: int = 0
    tensor_other: int = 0
    python_objects: int = 0
    native_heap: int = 0
    malloc_free: int = 0
    stacks: int = 0
    instrument: int = 0
    shared_memory: int = 0
    unexplained: int = 0

    def total(self) -> int:
        return sum(getattr(self, key) for key in PART_KEYS)


class ProcessComposition(_Record):
    """One process at one moment. ``inside``: split by the probe in the process itself (tensors,
    Python objects, malloc); ``outside``: read from ``/proc/<pid>/smaps`` by another process."""

    pid: int
    role: str  # main, worker N, rank R, child (harness.probe.processes)
    source: Literal["inside", "outside"]
    rss: int
    pss: int | None = None  # shared pages divided among the processes that map them
    uss: int | None = None
    parts: Parts
    took_s: float = 0.0  # reading this process's smaps (and, inside, the rest)


class CudaComposition(_Record):
    """On CUDA, the device at the same moment (device memory, not part of RSS)."""

    allocated: int
    reserved: int
    largest_free_block: int | None = None
    context: int | None = None  # the device's used memory not reserved by the caching allocator


class Moment(_Record):
    """One line of composition.jsonl."""

    when: When
    stage: str
    t: float
    epoch: int | None = None
    step: int | None = None
    phase: str | None = None
    rank: int | None = None
    processes: list[ProcessComposition] = Field(default_factory=list)  # the stage's process first
    cuda: CudaComposition | None = None
    took_s: float = 0.0
