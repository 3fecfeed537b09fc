"""Tensor accounting inside the workload process.

Two instruments:

* :func:`census` lists the live tensors the workload handed to the probe (parameters, gradients,
  optimizer state) plus every other tensor the garbage collector can see, each with its category,
  name, shape, dtype, bytes and address. Used at epoch boundaries. A sharded tensor (FSDP2's
  DTensor) counts as the local shard this process holds.
* :class:`AllocationTracer` is a ``TorchDispatchMode`` switched on for a few traced steps. It counts
  the storages each phase allocates (views and in-place results are not allocations) and follows
  their frees through weak references, so it knows the peak of live tensor bytes per phase.
"""

from __future__ import annotations

import gc
import warnings
import weakref
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from harness.records.snapshots import TENSOR_CATEGORIES, DdpBuckets


@dataclass(frozen=True)
class TensorRecord:
    category: str
    name: str
    shape: tuple[int, ...]
    dtype: str
    bytes: int
    address: int
    device: str


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _local(t: torch.Tensor) -> torch.Tensor:
    """The part of ``t`` this process holds: a DTensor's local shard, any other tensor itself."""
    to_local = getattr(t, "to_local", None)
    if to_local is None:
        return t
    with torch.no_grad():
        return to_local()


def _record(category: str, name: str, t: torch.Tensor) -> TensorRecord:
    return TensorRecord(
        category=category,
        name=name,
        shape=tuple(t.shape),
        dtype=str(t.dtype).removeprefix("torch."),
        bytes=_nbytes(t),
        address=t.data_ptr(),
        device=str(t.device),
    )


def watched(
    model: torch.nn.Module | None, optimizer: torch.optim.Optimizer | None
) -> Iterator[tuple[str, str, torch.Tensor]]:
    """(category, name, tensor) for parameters, their gradients and the optimizer's state."""
    names: dict[int, str] = {}
    if model is not None:
        for name, p in model.named_parameters():
            names[id(p)] = name
            yield "parameters", name, _local(p)
            if p.grad is not None:
                yield "gradients", f"{name}.grad", _local(p.grad)
    if optimizer is not None:
        for group in optimizer.param_groups:
            for p in group["params"]:
                pname = names.get(id(p), f"param@{_local(p).data_ptr():#x}")
                for key, value in optimizer.state.get(p, {}).items():
                    if isinstance(value, torch.Tensor) and value.numel() > 0:
                        yield "optimizer_state", f"{pname}.{key}", _local(value)


def watched_tensors(
    model: torch.nn.Module | None, optimizer: torch.optim.Optimizer | None
) -> list[TensorRecord]:
    """Records of the watched tensors, named after the parameters."""
    return [_record(c, n, t) for c, n, t in watched(model, optimizer)]


class StorageSink(Protocol):
    """Told of every tensor a census finds, the watched ones first (the composition's storages)."""

    def add(self, category: str, tensor: torch.Tensor) -> None: ...


def census(
    model: torch.nn.Module | None, optimizer: torch.optim.Optimizer | None,
    storages: StorageSink | None = None,
) -> list[TensorRecord]:
    """Every live tensor: the watched ones by category, then the rest the GC can find as 'other'.
    ``storages``, if given, is told of each tensor listed (one walk serves both)."""
    records = []
    for category, name, t in watched(model, optimizer):
        records.append(_record(category, name, t))
        if storages is not None:
            storages.add(category, t)
    seen = {r.address for r in records}
    with warnings.catch_warnings():
        # isinstance() on some deprecated torch objects warns; the census only asks the type.
        warnings.simplefilter("ignore")
        found = [o for o in gc.get_objects() if _is_tensor(o)]
    for obj in found:
        if hasattr(obj, "to_local"):  # a DTensor: its local shard is a tensor the GC sees too
            continue
        # A storage resized to nothing (FSDP2's unsharded parameters between all-gathers) holds
        # no bytes, whatever the tensor's shape says.
        if obj.is_meta or obj.numel() == 0 or obj.untyped_storage().nbytes() == 0:
            continue
        addr = obj.data_ptr()
        if addr in seen:
            continue
        seen.add(addr)
        records.append(_record("other", "", obj))
        if storages is not None:
            storages.add("other", obj)
    return records


def _is_tensor(obj: object) -> bool:
    try:
        return isinstance(obj, torch.Tensor)
    except ReferenceError:  # a weakproxy to something gone
        return False


def ddp_buckets(model: Any) -> DdpBuckets | None:
    """The gradient buckets of a DistributedDataParallel model: ``bucket_sizes`` (bytes each) and
    ``gradient_as_bucket_view``; None for any other model.

    The reducer holds its buckets in C++ and hands out no tensor of them (its
    ``_get_zeros_like_grad_buckets`` makes new ones), so the census cannot list them; their sizes
    come from DDP's own logging data. Unless ``gradient_as_bucket_view``, they are memory beside
    the gradients (each backward copies the gradients into them for the all-reduce).
    """
    from torch.nn.parallel import DistributedDataParallel

    if not isinstance(model, DistributedDataParallel):
        return None
    try:
        data = model._get_ddp_logging_data()  # type: ignore[no-untyped-call]
    except (RuntimeError, AttributeError):  # a torch that no longer has it
        return None
    sizes = [int(x) for x in str(data.get("bucket_sizes") or "").split(",") if x.strip()]
    return DdpBuckets(bucket_sizes=sizes, gradient_as_bucket_view=bool(data.get("gradient_as_bucket_view")))


def bytes_by_category(records: list[TensorRecord]) -> dict[str, int]:
    out = dict.fromkeys(TENSOR_CATEGORIES, 0)
    for r in records:
        out[r.category] += r.bytes
    return out


def _storage_ptr(t: torch.Tensor) -> int | None:
    """The address of ``t``'s storage; None for a wrapper with none of its own (a DTensor: the mode
    sees its local tensors' operations too, and counts them there)."""
    try:
        return t.untyped_storage().data_ptr()
    except RuntimeError:
        return None


@dataclass
class PhaseAllocations:
    """What one phase allocated over the traced steps."""

    count: int = 0
    bytes: int = 0
    peak_live_bytes: int = 0
    steps: int = 0  # traced steps in which the phase ran


class AllocationTracer(TorchDispatchMode):  # type: ignore[no-untyped-call]  # torch's __init_subclass__
    """Counts tensor storages allocated per phase and follows live bytes while enabled."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.phase = "idle"
        self.live: dict[int, int] = {}  # storage address -> bytes
        self.live_bytes = 0
        self.by_phase: dict[str, PhaseAllocations] = {}
        self.order: list[str] = []  # phases in the order they were entered
        # One per storage followed. Detached on exit: a parameter's storage outlives the tracer,
        # and its finalizer would keep the tracer (and its bookkeeping) alive as long.
        self._finalizers: list[weakref.finalize[Any, Any]] = []

    # -- live-byte bookkeeping ------------------------------------------------------------
    def _forget(self, key: int) -> None:
        n = self.live.pop(key, 0)
        self.live_bytes -= n

    def _track(self, storage: torch.UntypedStorage) -> int:
        key = storage.data_ptr()
        if key in self.live or key == 0:
            return 0
        n = storage.nbytes()
        self.live[key] = n
        self.live_bytes += n
        self._finalizers.append(weakref.finalize(storage, self._forget, key))
        return n

    def __exit__(self, exc_type: Any, exc_value: Any, traceback: Any) -> None:
        """Leave the mode and stop following the storages (the counts stay as they were)."""
        try:
            super().__exit__(exc_type, exc_value, traceback)  # type: ignore[no-untyped-call]
        finally:
            for finalizer in self._finalizers:
                finalizer.detach()
            self._finalizers = []

    def seed(self, tensors: list[torch.Tensor]) -> None:
        """Count tensors that already exist (parameters, gradients, state) as live."""
        for t in tensors:
            if _storage_ptr(t) is not None:
                self._track(t.untyped_storage())

    def _stats(self, phase: str) -> PhaseAllocations:
        stats = self.by_phase.get(phase)
        if stats is None:
            stats = self.by_phase[phase] = PhaseAllocations()
        return stats

    def set_phase(self, phase: str) -> None:
        self.phase = phase
        self.order.append(phase)
        stats = self._stats(phase)
        stats.steps += 1
        if self.live_bytes > stats.peak_live_bytes:
            stats.peak_live_bytes = self.live_bytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        outputs, _ = tree_flatten(out)
        inputs, _ = tree_flatten((args, kwargs))
        # Views and in-place results share an input's storage: they allocate nothing.
        reused = {_storage_ptr(t) for t in inputs if isinstance(t, torch.Tensor) and not t.is_meta}
        stats = None
        for t in outputs:
            if not isinstance(t, torch.Tensor) or t.is_meta:
                continue
            ptr = _storage_ptr(t)
            if ptr is None or ptr in reused:
                continue
            n = self._track(t.untyped_storage())
            if n:
                if stats is None:
                    stats = self._stats(self.phase)
                stats.count += 1
                stats.bytes += n
                if self.live_bytes > stats.peak_live_bytes:
                    stats.peak_live_bytes = self.live_bytes
        return out

    def take(self) -> dict[str, dict[str, int]]:
        """The per-phase totals since the last call; resets them."""
        out = {k: asdict(v) for k, v in self.by_phase.items()}
        self.by_phase = {}
        return out
