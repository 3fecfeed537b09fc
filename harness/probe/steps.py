"""The live probe's parts: the event writer, the cell writer and the step hooks, each usable alone.

A *step hook* does something on a few steps of a training loop (``probe.iterate`` outside a
section). When the loop starts, each hook says which steps it acts on (:class:`Steps`); the loop
then compares the step number with the next of those and, on every other step, does nothing but
the cell's stores. The hooks acting on a step are *live* for it, and ``LiveProbe``
(:mod:`harness.probe.live`) drives them in the fixed order of ``LiveProbe._hooks``
(:class:`TensorTracer`, :class:`MemrayWindow`, :class:`DeviceReader`, :class:`HistoryWindow`)::

    begin(step), in that order    the tracer enters, a memray window opens, the device peak resets
    phase("data") ... the step    each phase() tells the live hooks that listen (tracer, device)
    end(step), in reverse order   the history window starts or dumps, the device reader reads the
                                  step's last phase, the memray window closes, the tracer writes
                                  the step's event (with the device readings just taken)

The reverse order nests them: the tracer's own bookkeeping stays outside the memray window, and
the device reader's last reading is in before the tracer's event carries it.
"""

from __future__ import annotations

import contextlib
import gc
import os
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from harness.layout import (
    CUDA_HISTORY_DIR,
    MEMRAY_DIR,
    STEP_MARK_SIZE,
    capture_name,
    cuda_history_name,
)
from harness.probe import cell as cellmod
from harness.records.events import (
    CudaHistory,
    CudaReading,
    EventRecord,
    MemrayStart,
    MemrayStop,
    PhaseTensors,
    TracedStep,
    dump,
)
from harness.records.scenario import CudaConfig, MemrayConfig, TensorsConfig
from harness.records.vocab import PHASE_CODE
from harness.records.windows import fit_window
from harness.sizes import MiB

if TYPE_CHECKING:
    from harness.probe.cell import CellLayout
    from harness.probe.tensors import AllocationTracer

NEVER = 2**62  # a step no loop reaches


class Events(Protocol):
    """Where the hooks write events: an :class:`EventWriter`, or a list in a test."""

    def write(self, event: EventRecord) -> None: ...


class EventWriter:
    """Appends one event per line (:mod:`harness.records.events`), flushed at once, so a killed
    process loses nothing."""

    def __init__(self, path: Path) -> None:
        self._fh = open(path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 (open until close())

    def write(self, event: EventRecord) -> None:
        self._fh.write(dump(event) + "\n")

    def close(self) -> None:
        self._fh.close()


class CellWriter:
    """The workload's side of the shared cell the sampler reads (:mod:`harness.probe.cell`).

    Hot-path code stores into ``slots`` directly: one 8-byte store a field, no call.
    """

    def __init__(self, path: Path) -> None:
        self._mm, self.slots = cellmod.open_cell(path)
        slots = self.slots
        slots.pid = os.getpid()
        slots.total = -1
        slots.phase = PHASE_CODE["setup"]
        slots.magic = cellmod.MAGIC  # last: the sampler reads nothing before it

    def start_loop(self, total: int) -> None:
        self.slots.total = total
        self.slots.step = 0


@dataclass(frozen=True)
class Steps:
    """Steps of a loop (0-based): the first ``first``, each multiple of an ``every``, and ``at``."""

    first: int = 0
    every: tuple[int, ...] = ()  # each > 0
    at: frozenset[int] = frozenset()

    def __contains__(self, step: int) -> bool:
        return step < self.first or any(step % n == 0 for n in self.every) or step in self.at

    def next(self, step: int) -> int:
        """The first of these steps at or after ``step`` (:data:`NEVER` if none)."""
        if step < self.first:
            return step
        best = min((-(-step // n) * n for n in self.every), default=NEVER)
        return min((a for a in self.at if step <= a < best), default=best)

    def __or__(self, other: Steps) -> Steps:
        return Steps(max(self.first, other.first), tuple(sorted({*self.every, *other.every})),
                     self.at | other.at)


class StepHook:
    """Something done on some steps of each training loop; every method does nothing by default."""

    listens = False  # told of each phase (on_phase) while one of its steps runs

    def start_loop(self, epoch: int) -> Steps | None:
        """A training loop of ``epoch`` starts (its loader not yet iterated): the steps to act on."""
        return None

    def begin(self, step: int) -> None:
        """One of the hook's steps is about to wait for its batch (before its ``data`` phase)."""

    def on_phase(self, name: str) -> None:
        """Phase ``name`` begins within one of the hook's steps."""

    def end(self, step: int) -> None:
        """One of the hook's steps is over: the workload asked for the next batch or left the loop."""

    def abandon(self, step: int) -> None:
        """One of the hook's steps began, but the loader had no batch for it: record nothing."""

    def finish(self, steps: int) -> None:
        """The training loop is over after ``steps`` steps."""

    def totals(self) -> dict[str, Any]:
        """Fields of this span's ``phase_totals`` event; starts the next span from zero."""
        return {}


def memray_tracker(path: Path, cfg: MemrayConfig) -> AbstractContextManager[Any]:
    """A memray tracker writing ``path``, in the all-allocations format (forked workers too)."""
    import memray

    return memray.Tracker(
        destination=memray.FileDestination(path, overwrite=True, compress_on_exit=True),
        native_traces=cfg.native_traces,
        follow_fork=cfg.follow_fork,
        trace_python_allocators=False,
    )


class EpochWindows:
    """Which epochs get a training window, and why (``memray.epochs``, ``memray.regrow_mb``).

    ``epochs`` a tuple: those epochs (reason ``listed``); ``"every"``: each one (``every``);
    None: epochs 1 and 2 (``first``), each power of two after them (``spaced``: 4, 8, 16, ...),
    and the epoch after one whose end found the main process's RSS more than ``regrow`` bytes
    above its RSS at the end of the last epoch with a window (``regrow``; 0: never). A loop
    outside any epoch (epoch 0) counts as the first. So a run of n epochs with steady memory
    gets 1 + floor(log2(n)) windows (7 in 100), and one that grows one more per ``regrow`` bytes.
    """

    def __init__(self, epochs: tuple[int, ...] | Literal["every"] | None, regrow: int) -> None:
        self._epochs = epochs
        self._regrow = regrow
        self._base: int | None = None  # main RSS at the end of the last epoch with a window
        self._grown: tuple[int, int] | None = None  # (epoch, growth since _base) asking for the next

    def reason(self, epoch: int) -> str | None:
        """Why ``epoch`` gets a training window; None: it gets none."""
        epochs = self._epochs
        if epochs == "every":
            return "every"
        if epochs is not None:
            return "listed" if epoch in epochs else None
        if epoch <= 2:
            return "first"
        if epoch & (epoch - 1) == 0:
            return "spaced"
        if self._grown is not None and self._grown[0] == epoch - 1:
            return "regrow"
        return None

    def growth(self, epoch: int) -> int | None:
        """For a ``regrow`` window in ``epoch``: the RSS growth, in bytes, that asked for it."""
        grown = self._grown
        return grown[1] if grown is not None and grown[0] == epoch - 1 else None

    def epoch_end(self, epoch: int, rss: int) -> None:
        """Epoch ``epoch`` ended with the main process's RSS at ``rss`` bytes."""
        if self.reason(epoch) is not None:
            self._base, self._grown = rss, None
        elif self._regrow > 0 and self._base is not None and rss - self._base > self._regrow:
            self._grown = (epoch, rss - self._base)


class _ForkedTracking:
    """Ends, when a capture closes, the tracking of the processes forked while it was open.

    memray's ``follow_fork`` gives each forked child (a DataLoader worker) a tracker of its own,
    writing ``<capture>.bin.<pid>``, which runs until the child exits, whatever the parent does:
    a validation window closed after a few batches would leave its workers tracked for the
    whole pass. So while a capture is open the parent holds a pipe; a child forked meanwhile
    keeps only its read end, on which a thread of its own waits. When the capture closes, the
    parent closes the pipe, and each child's thread ends the child's tracker through the
    ``Tracker`` object it was forked with (memray's own exit: the child's file is finished and
    compressed). A child that forks in turn passes nothing on: its children track to their end.
    """

    def __init__(self, tracker: AbstractContextManager[Any]) -> None:
        self.tracker = tracker
        self.read, self.write = os.pipe()  # not inheritable: an exec'd child never holds them

    def in_child(self) -> None:
        os.close(self.write)
        read, tracker = self.read, self.tracker

        def stop() -> None:
            with contextlib.suppress(OSError):
                while os.read(read, 1):
                    pass
            tracker.__exit__(None, None, None)

        threading.Thread(target=stop, name="harness-memray-stop", daemon=True).start()

    def close(self) -> None:
        os.close(self.write)
        os.close(self.read)


_forking: _ForkedTracking | None = None  # the open capture's, for a child forked now
_marking = False  # a training window is open: memray_step_mark marks its steps


def memray_step_mark() -> None:
    """Mark, in the open training window's capture, that a step ended: one allocation, freed at
    once, whose stack is this function (``harness.layout.STEP_MARK_FUNCTION``). The analysis cuts
    the capture's records at these marks, so that what a window kept is counted step by step.

    Whatever drives the steps calls it at each step's end (the ``probe.iterate`` loop through
    :meth:`MemrayWindow.end`; another step source may call it directly): it does nothing but
    while a training window is open, and costs one small allocation a step while one is.
    """
    if _marking:
        bytearray(STEP_MARK_SIZE - 1)  # and its terminating zero byte
_fork_handler = False


# This process was forked while a capture following forks was open: memray tracks it already,
# to its end or the capture's (harness.probe.workers then starts no window of its own in it).
followed = False


def _after_fork_in_child() -> None:
    global _forking, followed
    forked, _forking = _forking, None
    if forked is not None:
        followed = True
        forked.in_child()


class MemrayWindow(StepHook):
    """Bounded memray captures: training windows, validate/test sections, or the stage.

    The training window is ``memray.train_steps`` steps from ``memray.train_start``, moved
    earlier in a loop too short for it (:func:`fit_window`), so that it opens in every epoch
    :class:`EpochWindows` picks. A loop that stops before its window opens (a ``break``, a step
    cap, a length not known in advance) hands it on: the next loop gets one (reason
    ``replaces``), fitted to the steps the stopped loop ran. A validation or test capture ends after ``memray.eval_batches``
    batches. One capture at a time: an ask to open a second while one runs is refused. A
    process forked while a capture is open (a DataLoader worker) is tracked until it closes.
    """

    def __init__(
        self, cfg: MemrayConfig, stage: str, directory: Path, events: Events,
        tracker: Callable[[Path, MemrayConfig], AbstractContextManager[Any]] = memray_tracker,
    ) -> None:
        self._cfg = cfg
        self._stage = stage
        self._dir = directory / MEMRAY_DIR
        self._events = events
        self._tracker = tracker
        self._epochs = EpochWindows(cfg.epochs, int(cfg.regrow_mb * MiB))
        self._open: tuple[str, AbstractContextManager[Any]] | None = None
        self._forked: _ForkedTracking | None = None  # the open capture's pipe to its forked children
        self._epoch = 0
        self._window = (0, 0)  # this loop's training window: [start, stop) steps
        self._train: str | None = None  # this loop's training capture's name
        self.reason: str | None = None  # why this loop's epoch has a training window (None: it has none)
        self._total = -1  # the coming loop's length (expect_steps), -1 when unknown
        self._last_steps: int | None = None  # steps the previous training loop ran
        self._last_short = False  # the previous loop stopped before its known length (break, a cap)
        self._loop_total = -1  # this loop's length as told
        self._opened = False  # this loop's training window opened
        self._missed = False  # a window planned for an earlier loop never opened: the next replaces it
        self._section: str | None = None  # the running section's capture, while it is open
        self.section_stop = NEVER  # the batch count at which the running section's capture closes

    @property
    def active(self) -> bool:
        return self._open is not None

    def expect_steps(self, total: int) -> None:
        """The training loop about to start runs ``total`` steps (-1: its length is unknown)."""
        self._total = total

    def train_reason(self, epoch: int) -> str | None:
        """Why ``epoch``'s training loops get a window (:class:`EpochWindows`); None: no window."""
        cfg = self._cfg
        if cfg.mode != "windows" or cfg.train_steps <= 0:
            return None
        return self._epochs.reason(epoch)

    def train_window(self, epoch: int, total: int = -1) -> tuple[int, int] | None:
        """The training steps ``[start, stop)`` to capture in ``epoch`` for a loop of ``total`` steps.

        ``total`` -1 (unknown): planned for as many steps as the previous training loop ran, or,
        in the first, as configured; so is a loop whose predecessor stopped before its own known
        length (a ``break``, a step cap), when it ran fewer steps than ``total``. See
        :func:`fit_window`.
        """
        if self.train_reason(epoch) is None and not self._missed:
            return None
        cfg = self._cfg
        last = self._last_steps
        if total < 0 or (self._last_short and last is not None and last < total):
            total = -1 if last is None else last
        return fit_window(cfg.train_start, cfg.train_steps, total if total >= 0 else None)

    def epoch_end(self, epoch: int, rss: int) -> None:
        """Epoch ``epoch`` ended with the main process at ``rss`` bytes: maybe a window in the next."""
        self._epochs.epoch_end(epoch, rss)

    def wants_section(self, name: str, epoch: int) -> bool:
        cfg = self._cfg
        if cfg.mode != "windows":
            return False
        if name == "validate":
            return cfg.validation and (cfg.validation_epochs is None or epoch in cfg.validation_epochs)
        return name == "test" and cfg.test

    def start_stage(self) -> None:
        """Open the whole-stage capture when the mode is ``full``."""
        if self._cfg.mode == "full":
            self.open(capture_name(self._stage), epoch=0, step=0, section=None)

    def open(self, name: str, *, epoch: int, step: int, section: str | None,
             reason: str | None = None, growth: int | None = None) -> bool:
        """Start capture ``name``; False if one is running already. A training window's
        ``reason`` (and ``growth``) go into its event."""
        global _forking, _fork_handler, _marking
        if self._open is not None:
            return False
        self._dir.mkdir(exist_ok=True)
        path = self._dir / f"{name}.bin"
        tracker = self._tracker(path, self._cfg)
        tracker.__enter__()
        self._open = (name, tracker)
        if self._cfg.follow_fork:
            if not _fork_handler:
                os.register_at_fork(after_in_child=_after_fork_in_child)
                _fork_handler = True
            self._forked = _forking = _ForkedTracking(tracker)
        self._events.write(MemrayStart(t=time.time(), capture=name, file=f"{MEMRAY_DIR}/{path.name}",
                                       epoch=epoch, step=step, section=section, reason=reason,
                                       growth=growth))
        _marking = section is None and name != capture_name(self._stage)
        return True

    def close(self, *, epoch: int, step: int) -> None:
        """Stop the running capture, if any, and the tracking of the processes forked meanwhile."""
        global _forking, _marking
        if self._open is None:
            return
        if _marking:
            # What the window's steps left to the cyclic garbage collector (a batch in a reference
            # cycle, freed at some later collection) is no more held than what they freed: collect
            # it while the capture still sees the frees, so "still held when the window closed"
            # means still reachable.
            gc.collect()
        _marking = False
        (name, tracker), self._open = self._open, None
        self._section, self.section_stop = None, NEVER
        tracker.__exit__(None, None, None)
        forked, self._forked = self._forked, None
        if forked is not None:
            if _forking is forked:
                _forking = None
            forked.close()
        self._events.write(MemrayStop(t=time.time(), capture=name, epoch=epoch, step=step))

    def open_section(self, name: str, epoch: int) -> bool:
        """Start the section's capture if the scenario asks for one; True if it started."""
        if not self.wants_section(name, epoch):
            return False
        capture = capture_name(self._stage, epoch, name)
        if not self.open(capture, epoch=epoch, step=0, section=name):
            return False
        self._section = capture
        self.section_stop = self._cfg.eval_batches or NEVER
        return True

    def close_section(self, *, epoch: int, step: int) -> None:
        """The section ends: stop its capture if it is still running."""
        if self._section is not None and self._open is not None and self._open[0] == self._section:
            self.close(epoch=epoch, step=step)

    # -- the training window, as a step hook
    def start_loop(self, epoch: int) -> Steps | None:
        self._epoch = epoch
        self._train = None
        total, self._total = self._total, -1  # told for this loop only
        self._loop_total = total
        self._opened = False
        self.reason = self.train_reason(epoch)
        if self.reason is None and self._missed and self._cfg.mode == "windows":
            self.reason = "replaces"  # the window an earlier loop ended before, fitted to this one
        window = self.train_window(epoch, total)
        if window is None:
            return None
        self._missed = False
        self._window = window
        if window[0] == 0:
            # Open before iter() forks the DataLoader workers, so memray follows them.
            self._open_train(0)
        # Every step of the window: each one's end is marked in the capture (memray_step_mark).
        return Steps(at=frozenset(range(window[0], window[1])))

    def _open_train(self, step: int) -> None:
        name = capture_name(self._stage, self._epoch, "train")
        growth = self._epochs.growth(self._epoch) if self.reason == "regrow" else None
        if self.open(name, epoch=self._epoch, step=step, section=None, reason=self.reason,
                     growth=growth):
            self._train = name
            self._opened = True

    def begin(self, step: int) -> None:
        if step == self._window[0]:
            self._open_train(step)

    def end(self, step: int) -> None:
        memray_step_mark()
        if step + 1 == self._window[1]:
            self.finish(step + 1)

    def finish(self, steps: int) -> None:
        if self._train is not None and self._open is not None and self._open[0] == self._train:
            self.close(epoch=self._epoch, step=steps)
        if self.reason is not None and not self._opened and steps > 0:
            self._missed = True  # the loop stopped first: the next loop gets a window that fits
        self._train = None
        self._last_steps = steps
        self._last_short = 0 <= steps < self._loop_total


class DeviceReader(StepHook):
    """CUDA device steps: the allocator's peak is reset when each phase begins and read when it ends.

    Every ``cuda.sample_every``-th training step is a device step (LiveProbe adds the traced ones);
    a validation or test section is one window of its own. Each reading also goes into the cell.
    """

    listens = True

    def __init__(self, cfg: CudaConfig, device: str, cell: CellLayout) -> None:
        self._every = cfg.sample_every
        self._device = device
        self._cell = cell
        self.step: dict[str, dict[str, Any]] = {}  # this device step: phase -> reading
        self._span: dict[str, dict[str, Any]] = {}  # this span: phase -> peaks and latest figures
        self._steps = 0  # device steps this span
        self._running: str | None = None  # the device step's phase running now

    def start_loop(self, epoch: int) -> Steps | None:
        return Steps(every=(self._every,))

    def begin(self, step: int) -> None:
        from harness.probe import cuda

        self.step = {}
        self._running = None
        cuda.reset_phase_peak(self._device)

    def on_phase(self, name: str) -> None:
        if self._running is not None:
            self.read(self._running)
        self._running = name

    def end(self, step: int) -> None:
        if self._running is not None:
            self.read(self._running)  # the step's last phase
        self._running = None
        self._steps += 1

    def abandon(self, step: int) -> None:
        self._running = None

    def section_begin(self) -> None:
        from harness.probe import cuda

        cuda.reset_phase_peak(self._device)

    def section_end(self, name: str) -> None:
        self.read(name)

    def read(self, phase: str) -> None:
        """Device memory at the end of ``phase`` with the peak since it began; resets the peak."""
        from harness.probe import cuda

        reading = cuda.device_sample(self._device, driver=False)
        cuda.reset_phase_peak(self._device)
        self.step[phase] = reading
        self._cell.cuda_allocated = reading["allocated"]
        self._cell.cuda_reserved = reading["reserved"]
        acc = self._span.setdefault(phase, {"readings": 0, "peak_allocated": 0, "peak_reserved": 0})
        acc["readings"] += 1
        acc["peak_allocated"] = max(acc["peak_allocated"], reading["peak_allocated"])
        acc["peak_reserved"] = max(acc["peak_reserved"], reading["peak_reserved"])
        for key in ("allocated", "reserved", "inactive_split", "retries", "ooms"):
            acc[key] = reading[key]  # the latest: the allocator's counters only grow

    def totals(self) -> dict[str, Any]:
        out = {"cuda": self._span, "cuda_steps": self._steps}
        self._span = {}
        self._steps = 0
        return out


class TensorTracer(StepHook):
    """Traced steps: an AllocationTracer counts each phase's tensor allocations; one event a step.

    The first ``tensors.trace_steps`` steps of each loop are traced, and every ``trace_every``-th.
    """

    listens = True

    def __init__(
        self, cfg: TensorsConfig, events: Events, seeds: Callable[[], Iterable[Any]],
        device: DeviceReader | None = None, running: Callable[[], str] | None = None,
    ) -> None:
        self._first = cfg.trace_steps
        self._every = cfg.trace_every
        self._events = events
        self._seeds = seeds  # the tensors alive before the step (parameters, gradients, state)
        self._device = device  # on CUDA, whose readings the step's event carries
        # the phase running as a step begins: what it allocates before its first phase is that
        # phase's (a step begun at the last one's optimizer step, before its next batch)
        self._running = running
        self._tracer: AllocationTracer | None = None
        self._epoch = 0
        self._span: dict[str, dict[str, int]] = {}  # per phase, summed over this span's steps
        self._steps = 0  # traced steps this span

    def start_loop(self, epoch: int) -> Steps | None:
        self._epoch = epoch
        if self._first <= 0 and self._every <= 0:
            return None
        return Steps(first=self._first, every=(self._every,) if self._every > 0 else ())

    def begin(self, step: int) -> None:
        from harness.probe.tensors import AllocationTracer

        tracer = AllocationTracer()
        tracer.seed(list(self._seeds()))
        if self._running is not None:
            tracer.phase = self._running()
        tracer.__enter__()  # type: ignore[no-untyped-call]
        self._tracer = tracer

    def on_phase(self, name: str) -> None:
        if self._tracer is not None:
            self._tracer.set_phase(name)

    def abandon(self, step: int) -> None:
        tracer, self._tracer = self._tracer, None
        if tracer is not None:
            tracer.__exit__(None, None, None)

    def end(self, step: int) -> None:
        tracer, self._tracer = self._tracer, None
        if tracer is None:
            return
        tracer.__exit__(None, None, None)
        self._steps += 1
        per_phase = tracer.take()
        cuda = ({phase: CudaReading.model_validate(r) for phase, r in self._device.step.items()}
                if self._device is not None else None)
        self._events.write(TracedStep(
            t=time.time(), epoch=self._epoch, step=step, phases=tracer.order, cuda=cuda,
            tensors={phase: PhaseTensors.model_validate(s) for phase, s in per_phase.items()}))
        for phase, stats in per_phase.items():
            acc = self._span.setdefault(phase, {"count": 0, "bytes": 0, "peak_live_bytes": 0, "steps": 0})
            acc["count"] += stats["count"]
            acc["bytes"] += stats["bytes"]
            acc["steps"] += stats["steps"]
            acc["peak_live_bytes"] = max(acc["peak_live_bytes"], stats["peak_live_bytes"])

    def totals(self) -> dict[str, Any]:
        out = {"tensors": self._span, "traced_steps": self._steps}
        self._span = {}
        self._steps = 0
        return out


class HistoryWindow(StepHook):
    """The CUDA allocator's history over ``cuda.history_steps`` training steps, dumped to a pickle.

    Recording starts once ``history_start`` steps of epoch ``history_epoch`` are done and is dumped
    ``history_steps`` steps later, or when the loop ends first.
    """

    def __init__(self, cfg: CudaConfig, stage: str, device: str, directory: Path,
                 events: Events) -> None:
        self._cfg = cfg
        self._stage = stage
        self._device = device
        self._dir = directory / CUDA_HISTORY_DIR
        self._events = events
        self._epoch = 0
        self.recording = False

    def start_loop(self, epoch: int) -> Steps | None:
        cfg = self._cfg
        if cfg.history_epoch == 0 or epoch != cfg.history_epoch:
            return None
        self._epoch = epoch
        # acts at the end of the step after which `start` (then `stop`) steps are done
        ends = {cfg.history_start, cfg.history_start + cfg.history_steps}
        return Steps(at=frozenset(n - 1 for n in ends if n > 0))

    def end(self, step: int) -> None:
        done = step + 1
        if done == self._cfg.history_start and not self.recording:
            from harness.probe import cuda

            cuda.start_history(device=self._device)
            self.recording = True
        elif self.recording and done == self._cfg.history_start + self._cfg.history_steps:
            self._dump(done)

    def finish(self, steps: int) -> None:
        if self.recording:  # the loop ended inside the window
            self._dump(steps)

    def _dump(self, stop: int) -> None:
        from harness.probe import cuda

        self.recording = False
        start = self._cfg.history_start
        name = cuda_history_name(self._stage, self._epoch, start, stop)
        dumped = cuda.dump_history(self._dir / name, int(self._cfg.history_max_mb * MiB))
        self._events.write(CudaHistory(
            t=time.time(), epoch=self._epoch, start=start, stop=stop,
            file=f"{CUDA_HISTORY_DIR}/{name}", bytes=dumped.bytes, entries_kept=dumped.entries_kept,
            entries_dropped=dumped.entries_dropped,
        ))
