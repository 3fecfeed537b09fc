"""The probe API: how a training loop tells the harness where it is.

Call these from any training code. Run bare (no ``harness run``), every call is a no-op and
``iterate`` hands back the loader itself. Run under the harness, they mark phases in a shared
memory cell the sampler reads (one 8-byte store per call, no file or pipe write per step), open
bounded memray windows, trace tensor allocations on a few steps and snapshot memory at epoch
boundaries::

    from harness import probe

    probe.watch(model=net, optimizer=optimizer)
    for epoch in range(1, epochs + 1):
        with probe.epoch(epoch):
            for inputs, labels in probe.iterate(trainloader):  # phase "data" while waiting
                probe.phase("forward"); optimizer.zero_grad(); outputs = net(inputs)
                probe.phase("loss"); loss = criterion(outputs, labels)
                probe.phase("backward"); loss.backward()
                probe.phase("optimizer"); optimizer.step()
            with probe.section("validate"):
                evaluate(net, valloader)
        probe.metric("loss", loss.item(), epoch=epoch)
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from harness.layout import STAGE_DIR_ENV
from harness.records.vocab import PHASE_CODE, PHASES

T = TypeVar("T")


__all__ = ["PHASES", "enabled", "epoch", "iterate", "metric", "phase", "section", "watch"]


class NullProbe:
    """What the workload talks to when it runs bare: nothing happens."""

    enabled = False

    def phase(self, name: str) -> None:
        pass

    def iterate(self, loader: Iterable[T], limit: int | None = None) -> Iterable[T]:
        return loader if limit is None else itertools.islice(loader, limit)

    @contextlib.contextmanager
    def epoch(self, number: int) -> Iterator[None]:
        yield

    @contextlib.contextmanager
    def section(self, name: str) -> Iterator[None]:
        yield

    def watch(self, model: Any = None, optimizer: Any = None) -> None:
        pass

    def metric(self, name: str, value: float, **fields: Any) -> None:
        pass

    def record(self, kind: str, **fields: Any) -> None:
        pass

    def close(self, failed: bool = False) -> None:
        pass


_active: Any = NullProbe()


def activate_from_env() -> None:
    """Switch to the live probe when ``harness run`` started this process; idempotent."""
    global _active
    if _active.enabled:
        return
    stage_dir = os.environ.get(STAGE_DIR_ENV)
    if stage_dir:
        from harness.probe.live import LiveProbe

        _active = LiveProbe(stage_dir)


def deactivate(failed: bool = False) -> None:
    """Flush and close the live probe (end of stage)."""
    global _active
    _active.close(failed)
    _active = NullProbe()


def enabled() -> bool:
    """True when running under ``harness run``."""
    return bool(_active.enabled)


def phase(name: str) -> None:
    """Mark the start of a phase: one of ``harness.probe.PHASES``."""
    _active.phase(name)


def iterate(loader: Iterable[T], limit: int | None = None) -> Iterable[T]:
    """Iterate a DataLoader (at most ``limit`` batches), counting steps.

    Outside a section this is the training loop: phase ``data`` is marked while waiting.
    """
    return _active.iterate(loader, limit)


def epoch(number: int) -> contextlib.AbstractContextManager[None]:
    """Bracket epoch ``number`` (1-based); a memory snapshot is taken when it ends."""
    return _active.epoch(number)


def section(name: str) -> contextlib.AbstractContextManager[None]:
    """Bracket a whole ``validate`` or ``test`` pass (its DataLoader workers included)."""
    if name not in PHASE_CODE:
        raise ValueError(f"unknown phase {name!r}; expected one of {', '.join(PHASES)}")
    return _active.section(name)


def watch(model: Any = None, optimizer: Any = None) -> None:
    """Name the model and optimizer so snapshots can tell parameters, gradients and state apart."""
    _active.watch(model, optimizer)


def metric(name: str, value: float, **fields: Any) -> None:
    """Record a metric (loss, accuracy, ...) in the run's event stream."""
    _active.metric(name, value, **fields)


def record(kind: str, **fields: Any) -> None:
    """Append an event of ``kind`` to the run's event stream, with the epoch, step and phase.

    A kind of the workload's own keeps its fields as given (a value JSON has no type for is
    written as its ``str()``; read back as ``harness.records.events.WorkloadEvent``); the
    harness's own kinds (``stage_error``, ``torch_threads``) are held to their models."""
    _active.record(kind, **fields)
