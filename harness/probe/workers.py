"""DataLoader workers tracked from inside: each worker runs a memray window of its own batches.

memray's ``follow_fork`` tracks a worker only when a capture of the main process is open as it is
forked: persistent workers forked at step 0, before any window, and spawned or forkserver workers
(exec'd, or forked from a process memray never tracked) were never tracked. So the probe replaces
``torch.utils.data._utils.worker._worker_loop`` (what every DataLoader worker runs, of any start
method) with :func:`worker_loop`, a module-level function that a spawned worker unpickles by name
and finds here. In the worker it reads the stage's directory from the environment
(``HARNESS_STAGE_DIR``, inherited under spawn and forkserver too) and the probe's settings from
``probe.json``, watches the indices the main process sends it (``(idx, sampler indices)``,
``_ResumeIteration`` when a persistent worker starts a new epoch, ``None`` when it is to exit),
and starts a ``memray.Tracker`` of its own while the batches it fetches fall in the training
window the main process plans: batches ``idx`` in ``[train_start, train_start + train_steps)`` of
each epoch :class:`~harness.probe.steps.EpochWindows` picks (fitted to the loop's length when the
cell knows it), so the worker windows line up with the main ones. The window closes at the first
index past it, at a new epoch, at the exit signal, when the loop returns or raises, and on SIGTERM
(how multiprocessing ends a daemonic worker left running at exit): the capture is always finished.

A worker already tracked through ``follow_fork`` (forked while a main capture was open) keeps that
tracking: memray runs one tracker a process.

Each worker also reads its own memory (RSS, its shared part, USS) as each of its epochs ends: when
a persistent worker is told of the next epoch, or any worker is told to exit, its batches of the
epoch all fetched, and writes it as a ``worker_epoch_end`` event. The sampler's ticks cannot stand
in for this: on a loaded machine the harness's sampler thread may not run for seconds, and a
worker's last epoch then ends unseen (the whole rest of an epoch fetched between two ticks).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from contextlib import AbstractContextManager
from pathlib import Path
from types import FrameType
from typing import Any

from harness.layout import (
    CELL_FILE,
    EVENTS_FILE,
    MEMRAY_DIR,
    SECTIONS,
    STAGE_DIR_ENV,
    TRAIN_WINDOW,
    capture_name,
)
from harness.probe.imports import AfterImport
from harness.records.events import MemrayStart, MemrayStop, WorkerEpochEnd
from harness.records.probe_config import ProbeConfig
from harness.records.vocab import PHASES
from harness.records.windows import fit_window

_original: Any = None  # torch's _worker_loop while ours replaces it (inherited by forked workers)
_INDEX_QUEUE_ARG = 2  # _worker_loop(dataset_kind, dataset, index_queue, ..., worker_id, num_workers, ...)
_WORKER_ID_ARG = 10


def wanted(cfg: ProbeConfig) -> bool:
    """Whether this stage's workers track windows of their own (``memray.workers``)."""
    m = cfg.memray
    return m.mode == "windows" and m.workers and m.train_steps > 0


def install() -> None:
    """Make every DataLoader worker started from now on run :func:`worker_loop`: now if torch is
    imported, else as soon as it is (a workload that never imports torch gets none)."""
    if "torch" in sys.modules:
        _patch()
    else:
        _AFTER_TORCH.add()


def uninstall() -> None:
    """Give torch its own ``_worker_loop`` back."""
    global _original
    _AFTER_TORCH.remove()
    if _original is None:
        return
    from torch.utils.data._utils import worker

    if worker._worker_loop is worker_loop:
        worker._worker_loop = _original
    _original = None


def _patch() -> None:
    global _original
    if _original is not None:
        return
    from torch.utils.data._utils import worker

    _original = worker._worker_loop
    worker._worker_loop = worker_loop


_WORKER_MODULE = "torch.utils.data._utils.worker"


# Keyed on torch's worker module, not on ``torch``, which the automatic phases' finder
# (harness.probe.auto) takes out of the import path once it has run.
_AFTER_TORCH = AfterImport(_WORKER_MODULE, lambda _module: _patch())


def worker_loop(*args: Any, **kwargs: Any) -> None:
    """torch's ``_worker_loop``, its batches watched by a :class:`WorkerWindows` of this worker."""
    original = _original
    if original is None:  # a spawned or forkserver worker: a fresh torch, unpatched
        from torch.utils.data._utils import worker

        original = worker._worker_loop
    stage_dir = os.environ.get(STAGE_DIR_ENV)
    from harness.probe import steps

    if not stage_dir or len(args) <= _WORKER_ID_ARG:
        original(*args, **kwargs)
        return
    try:
        # forked under a capture that follows forks: memray tracks this worker already, and a
        # tracker of its own would fail to start and spoil that capture's ending
        windows = WorkerWindows(Path(stage_dir), int(args[_WORKER_ID_ARG]), track=not steps.followed)
    except (OSError, ValueError):  # no readable probe.json: run untracked, never fail the worker
        original(*args, **kwargs)
        return
    if not windows.enabled:
        original(*args, **kwargs)
        return
    args = (*args[:_INDEX_QUEUE_ARG], _Indices(args[_INDEX_QUEUE_ARG], windows),
            *args[_INDEX_QUEUE_ARG + 1:])
    try:
        original(*args, **kwargs)
    finally:
        windows.finish(exiting=True)


class _Indices:
    """The worker's index queue, telling its :class:`WorkerWindows` of each message taken."""

    def __init__(self, queue: Any, windows: WorkerWindows) -> None:
        self._queue = queue
        self._windows = windows

    def get(self, *args: Any, **kwargs: Any) -> Any:
        message = self._queue.get(*args, **kwargs)
        windows = self._windows
        if windows.enabled:
            try:
                windows.on_message(message)
            except Exception as exc:  # the probe never fails the workload: untracked from here
                windows.enabled = False
                print(f"harness: DataLoader worker {windows.worker}: memray window stopped: "
                      f"{type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
                with contextlib.suppress(Exception):
                    windows.close()
        return message

    def __getattr__(self, name: str) -> Any:
        return getattr(self._queue, name)


class WorkerWindows:
    """One worker's memray windows, over its batches with ``idx`` in the epoch's training window
    (``track``: memray does not follow this worker already), and its memory at each epoch's end."""

    def __init__(self, stage_dir: Path, worker_id: int,
                 tracker: Any = None, track: bool = True) -> None:
        from harness.probe.steps import EpochWindows, memray_tracker

        self.cfg = ProbeConfig.read(stage_dir)
        self.enabled = wanted(self.cfg)
        self.track = track
        self.dir = stage_dir
        self.worker = worker_id
        self.pid = os.getpid()
        self._tracker_of = tracker or memray_tracker
        # the epochs the main process windows, less regrow (its RSS is not known here)
        self._epochs = EpochWindows(self.cfg.memray.epochs, 0)
        self._cell: Any = None
        self._cell_map: Any = None
        self._events: Any = None
        self._epoch = 0  # the epoch whose batches come now: the cell's, or one past the last
        self._resumed = False  # a persistent worker told of its next epoch, no batch of it yet
        self._stop = 0  # the open window's end: the first batch index past it
        self._last = 0  # the last batch index fetched in the open window
        self._fetched = 0  # batches fetched in self._epoch since its memory was last read
        self._open: tuple[str, AbstractContextManager[Any], int, int] | None = None  # name, tracker, first idx, batches
        self._done: set[tuple[int, str]] = set()  # (epoch, window) captured already
        self._previous_handler: Any = None

    # -- what the main process says -------------------------------------------------------
    def _read_cell(self) -> tuple[int, int, str]:
        """The main process's epoch, its loop's length (-1 unknown) and its phase."""
        if self._cell is None:
            from harness.probe.cell import open_cell

            self._cell_map, self._cell = open_cell(self.dir / CELL_FILE)
        c = self._cell
        phase = PHASES[c.phase] if 0 <= c.phase < len(PHASES) else "idle"
        return int(c.epoch), int(c.total), phase

    def on_message(self, message: Any) -> None:
        """The worker took ``message`` from its index queue; called before it acts on it."""
        if message is None:  # told to exit
            self.finish(exiting=True)
            return
        if not isinstance(message, tuple) or len(message) != 2 or not isinstance(message[0], int):
            self.finish()  # _ResumeIteration: a persistent worker's next epoch
            self._resumed = True
            return
        idx = message[0]
        epoch, total, phase = self._read_cell()
        if self._resumed:  # the main process may not have marked the new epoch yet
            epoch = max(epoch, self._epoch + 1)
            self._resumed = False
        if epoch > self._epoch:  # a new epoch without a word to this worker (within one pass)
            self._epoch_end()
        self._epoch = epoch = max(epoch, self._epoch)
        self._fetched += 1
        if not self.track:
            return
        if self._open is not None:
            name, tracker, first, batches = self._open
            if first <= idx < self._stop:
                self._open = (name, tracker, first, batches + 1)
                self._last = idx
                return
            self.close(stop=idx)
        kind = phase if phase in SECTIONS else TRAIN_WINDOW
        window, reason = self._plan(kind, epoch, total)
        if window is None or reason is None or not window[0] <= idx < window[1]:
            return
        if (epoch, kind) in self._done:
            return
        self._done.add((epoch, kind))
        self._start(idx, window[1], kind, reason)

    def _plan(self, kind: str, epoch: int, total: int) -> tuple[tuple[int, int] | None, str | None]:
        """The main process's window for a loop of ``kind`` in ``epoch`` (``total`` batches, -1
        unknown), and why it has one: a training loop's steps ``train_start``.., a validation or
        test pass's first ``eval_batches``, where the main process tracks those passes."""
        m = self.cfg.memray
        if kind == TRAIN_WINDOW:
            reason = self._epochs.reason(epoch)
            return fit_window(m.train_start, m.train_steps, total if total > 0 else None), reason
        wanted = (m.validation and (m.validation_epochs is None or epoch in m.validation_epochs)
                  if kind == "validate" else m.test)
        return ((0, m.eval_batches or 2**62), kind) if wanted else (None, None)

    def _start(self, idx: int, stop: int, kind: str, reason: str) -> None:
        name = capture_name(self.cfg.stage, self._epoch, kind, worker=self.worker)
        (self.dir / MEMRAY_DIR).mkdir(exist_ok=True)
        path = self.dir / MEMRAY_DIR / f"{name}.bin.{self.pid}"
        tracker = self._tracker_of(path, self.cfg.memray.model_copy(update={"follow_fork": False}))
        self._writer()  # opened outside the window: the worker's own bookkeeping is not its leak
        try:
            tracker.__enter__()
        except (RuntimeError, AssertionError):
            # forked while a main capture was open: tracked already (follow_fork), or, not
            # followed, memray's state says a tracker runs (it asserts): no window of its own
            with contextlib.suppress(OSError):
                path.unlink()
            return
        self._open = (name, tracker, idx, 1)
        self._stop = stop
        self._last = idx
        self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)
        self._write(MemrayStart(
            t=time.time(), capture=name, file=f"{MEMRAY_DIR}/{path.name}", epoch=self._epoch,
            step=idx, section=kind if kind in SECTIONS else None,
            reason=reason if kind == TRAIN_WINDOW else None,
            worker=self.worker, pid=self.pid))

    def close(self, stop: int | None = None) -> None:
        """End the open window, if any; ``stop``: the first batch index past it."""
        if self._open is None:
            return
        (name, tracker, _first, batches), self._open = self._open, None
        tracker.__exit__(None, None, None)
        with contextlib.suppress(ValueError):  # not the main thread: nothing was set
            signal.signal(signal.SIGTERM, self._previous_handler or signal.SIG_DFL)
        self._write(MemrayStop(t=time.time(), capture=name, epoch=self._epoch,
                               step=stop if stop is not None else self._last + 1,
                               batches=batches, worker=self.worker, pid=self.pid))

    def finish(self, exiting: bool = False) -> None:
        """The worker's epoch is over (it is told of the next, or to exit): end the open window,
        then read its memory."""
        self.close()
        self._epoch_end(exiting)

    def _epoch_end(self, exiting: bool = False) -> None:
        """Read this worker's memory as its epoch ends, if it fetched batches in that epoch."""
        fetched, self._fetched = self._fetched, 0
        if not fetched or self._epoch < 1:
            return
        import psutil

        mem = psutil.Process(self.pid).memory_full_info()  # smaps_rollup, as the sampler reads USS
        self._write(WorkerEpochEnd(t=time.time(), epoch=self._epoch, worker=self.worker, pid=self.pid,
                                   batches=fetched, rss=mem.rss, shared=mem.shared, uss=mem.uss,
                                   exiting=exiting))

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        """Ended from outside with a window open: finish the capture, then end as asked."""
        self.close()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

    def _writer(self) -> Any:
        from harness.probe.steps import EventWriter

        if self._events is None:
            self._events = EventWriter(self.dir / EVENTS_FILE)
        return self._events

    def _write(self, event: MemrayStart | MemrayStop | WorkerEpochEnd) -> None:
        self._writer().write(event)
