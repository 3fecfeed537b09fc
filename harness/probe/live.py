"""The live probe: the workload-side half of ``harness run``.

It keeps the hot path to a few attribute stores per phase (the shared cell, a timer), and does
everything expensive (memray windows, tensor tracing, device readings, snapshots, event writes)
only at step, epoch or section boundaries chosen by the scenario. The things done on some
training steps are step hooks (:mod:`harness.probe.steps`); this class runs them in one order.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import psutil
from pydantic import ValidationError

from harness.layout import CELL_FILE, COMPOSITION_FILE, EVENTS_FILE, SNAPSHOTS_DIR, Event
from harness.probe import composition, workers
from harness.probe.steps import (
    NEVER,
    CellWriter,
    DeviceReader,
    EventWriter,
    HistoryWindow,
    MemrayWindow,
    StepHook,
    Steps,
    TensorTracer,
)
from harness.records.composition import When
from harness.records.events import (
    EVENT_ADAPTER,
    EpochEnd,
    EpochStart,
    LoopEnd,
    PhaseTotals,
    SectionEnd,
    SectionStart,
    SnapshotEvent,
    StageEnd,
    StageStart,
    Watch,
)
from harness.records.probe_config import ProbeConfig
from harness.records.vocab import PHASE_CODE, PHASES

T = TypeVar("T")


class LiveProbe:
    enabled = True

    def __init__(self, stage_dir: str | os.PathLike[str]) -> None:
        self.dir = Path(stage_dir)
        cfg = ProbeConfig.read(self.dir)
        self.cfg = cfg
        self.stage = cfg.stage
        self.device = cfg.device
        self.events = EventWriter(self.dir / EVENTS_FILE)
        self._cell_writer = CellWriter(self.dir / CELL_FILE)
        self._cell = self._cell_writer.slots
        # phase timing: seconds per phase code, since the last span's phase_totals
        self._seconds = [0.0] * len(PHASES)
        self._counts = [0] * len(PHASES)
        self._cur = PHASE_CODE["setup"]
        self._t = time.perf_counter()
        self._epoch = 0
        self._section: str | None = None
        self._model: Any = None
        self._optimizer: Any = None
        self._process = psutil.Process()  # this one: its RSS at each epoch's end
        # The step hooks, in the order they begin a step (they end it in reverse; see steps.py).
        self._memray = MemrayWindow(cfg.memray, self.stage, self.dir, self.events)
        self._device: DeviceReader | None = None
        history: HistoryWindow | None = None
        if cfg.on_cuda:
            self._device = DeviceReader(cfg.cuda, self.device, self._cell)
            history = HistoryWindow(cfg.cuda, self.stage, self.device, self.dir, self.events)
        self._tracer = TensorTracer(cfg.tensors, self.events, self._watched_tensors, self._device,
                                    lambda: PHASES[self._cur])
        self._hooks: tuple[StepHook, ...] = tuple(
            h for h in (self._tracer, self._memray, self._device, history) if h is not None
        )
        self._listeners: tuple[StepHook, ...] = ()  # live hooks told of each phase
        self._oom: Any = None
        if cfg.on_cuda:  # a failed allocation: the allocator's state then (cuda_oom)
            from harness.layout import CUDA_HISTORY_DIR
            from harness.probe.cuda import OomObserver
            from harness.sizes import MiB

            self._oom = OomObserver(self.events.write, self._where, self.stage,
                                    self.dir / CUDA_HISTORY_DIR, int(cfg.cuda.history_max_mb * MiB))
            self._oom.attach()
        # The composition (composition.jsonl): a moment at the first step's start, each epoch
        # snapshot, near the peak (RSS read at each step boundary) and the stage's end.
        self._rss = composition.RssWatch(
            composition.PEAK_MOMENTS if cfg.tensors.composition else 0)
        self._started = False  # the ``start`` moment is taken
        self._trained = 0  # steps done by the latest training loop (an evaluation pass leaves it)
        self.events.write(StageStart(t=time.time(), stage=self.stage, pid=os.getpid()))
        self._memray.start_stage()
        if workers.wanted(cfg):  # each DataLoader worker tracks a window of its own batches
            workers.install()

    # -- the hot path ---------------------------------------------------------------------
    def phase(self, name: str) -> None:
        code = PHASE_CODE[name]
        now = time.perf_counter()
        self._seconds[self._cur] += now - self._t
        self._counts[code] += 1
        self._t = now
        self._cur = code
        self._cell.phase = code
        if self._listeners:
            for hook in self._listeners:
                hook.on_phase(name)

    def iterate(self, loader: Iterable[T], limit: int | None = None) -> Iterator[T]:
        """The training loop outside a section, else a validation or test pass."""
        if self._section is None:
            return self._train(loader, limit)
        return self._evaluate(loader, limit)

    def _start_loop(self, loader: Iterable[T], limit: int | None) -> int:
        try:
            total = len(loader)  # type: ignore[arg-type]
        except TypeError:
            total = -1
        if limit is not None:
            total = limit if total < 0 else min(total, limit)
        self._cell_writer.start_loop(total)
        return total

    def _evaluate(self, loader: Iterable[T], limit: int | None) -> Iterator[T]:
        self._start_loop(loader, limit)
        step = 0
        it = iter(loader)
        try:
            while step != limit:
                try:
                    batch = next(it)
                except StopIteration:
                    break
                yield batch
                step += 1
                self.section_step(step)
        finally:
            del it

    def section_step(self, done: int) -> None:
        """``done`` batches of the running section are over; its capture may end here.

        ``iterate`` calls it after each batch of a section; the automatic phases, which iterate
        the loader themselves, call it too.
        """
        cell = self._cell
        cell.step = done
        cell.heartbeat += 1
        if done >= self._memray.section_stop:  # memray.eval_batches
            self._memray.close(epoch=self._epoch, step=done)

    def train_steps(self, start: int = 0, total: int = -1) -> StepLoop:
        """A training loop driven from outside, whose first ``start`` steps ran already, unseen.

        The automatic phases (:mod:`harness.probe.auto`) drive the step hooks through this: they
        call ``begin`` when a step starts, ``end`` when it is done (an optimizer step), and
        ``close`` when the loop is over.
        """
        self._cell_writer.start_loop(total)
        return StepLoop(self, total, start)

    def _train(self, loader: Iterable[T], limit: int | None, start: int = 0) -> Iterator[T]:
        total = self._start_loop(loader, limit)
        if self._window_opens_at_once(total):
            # the window opens before iter(): the moment's own allocations (the census, smaps)
            # must not be in the workload's capture, so it comes first, without the workers
            self.composition_start()
        loop = StepLoop(self, total, start)  # before iter(): a memray window at step 0 must see the fork
        it = iter(loader)
        self.composition_start()  # after iter(): the DataLoader's workers are in the moment
        try:
            while loop.step != limit:
                loop.begin()
                self.phase("data")
                try:
                    batch = next(it)
                except StopIteration:
                    loop.abandon()  # no step after all: nothing to record
                    break
                yield batch
                loop.end()
        finally:
            loop.close()  # the workload may have left the loop inside a step: it ends there
            del it

    def _plan_loop(self) -> list[tuple[StepHook, Steps]]:
        """The steps each hook acts on in the training loop starting now, in hook order."""
        plans = {hook: hook.start_loop(self._epoch) for hook in self._hooks}
        reader, traced = self._device, plans.get(self._tracer)
        device = plans.get(reader) if reader is not None else None
        if reader is not None and device is not None and traced is not None:
            # A traced step is a device step: its event carries the phases' device readings.
            plans[reader] = device | traced
        return [(hook, steps) for hook, steps in plans.items() if steps is not None]

    def _end_step(self, live: tuple[StepHook, ...], step: int) -> None:
        self._listeners = ()
        for hook in reversed(live):
            hook.end(step)

    # -- epochs and sections --------------------------------------------------------------
    @contextlib.contextmanager
    def epoch(self, number: int) -> Iterator[None]:
        self._epoch = number
        self._cell.epoch = number
        self.events.write(EpochStart(t=time.time(), epoch=number))
        try:
            yield
        finally:
            self._flush_phases()
            rss = self._process.memory_info().rss
            self._memray.epoch_end(number, rss)  # grown: a training window in the next epoch
            self.events.write(EpochEnd(t=time.time(), epoch=number, rss=rss))
            self.snapshot(f"epoch-{number}", "epoch")

    @contextlib.contextmanager
    def section(self, name: str) -> Iterator[None]:
        previous = self._section
        self._section = name
        self.phase(name)
        self.events.write(SectionStart(t=time.time(), section=name, epoch=self._epoch))
        self._cell.step = 0
        opened = self._memray.open_section(name, self._epoch)
        if self._device is not None:  # the section is one device window with its own peak
            self._device.section_begin()
        try:
            yield
        finally:
            if self._device is not None:
                self._device.section_end(name)
            if opened:
                self._memray.close_section(epoch=self._epoch, step=self._cell.step)
            self.events.write(SectionEnd(t=time.time(), section=name, epoch=self._epoch,
                                         steps=self._cell.step))
            self._section = previous
            self.phase("idle")

    def watch(self, model: Any = None, optimizer: Any = None) -> None:
        if model is not None:
            self._model = model
        if optimizer is not None:
            self._optimizer = optimizer
        if model is not None:
            n = sum(p.numel() for p in model.parameters())
            b = sum(p.numel() * p.element_size() for p in model.parameters())
            self.events.write(Watch(t=time.time(), parameters=n, parameter_bytes=b))

    def _watched_tensors(self) -> list[Any]:
        from harness.probe.tensors import watched

        return [t for _, _, t in watched(self._model, self._optimizer)]

    def record(self, kind: str, **fields: Any) -> None:
        self._write_given(f"probe.record({str(kind)!r})", {
            "t": time.time(), "kind": kind, "epoch": self._epoch, "step": self._cell.step,
            "phase": PHASES[self._cur], **fields})

    def metric(self, name: str, value: float, **fields: Any) -> None:
        if not isinstance(value, int | float):  # numpy's or torch's scalar
            with contextlib.suppress(TypeError, ValueError):
                value = float(value)
        self._write_given(f"probe.metric({name!r})", {
            "t": time.time(), "kind": Event.METRIC, "name": name, "value": value,
            "epoch": self._epoch, **fields})

    def _write_given(self, call: str, data: dict[str, Any]) -> None:
        """The event of its kind made of what the caller passed, its integers maybe numpy's or
        torch's (read as Python's). One that does not fit its kind (a metric's value that is no
        number) is said on stderr and not recorded: a probe call never raises into the workload."""
        try:
            event = EVENT_ADAPTER.validate_python(data, strict=False)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"][1:])  # [0]: the kind
            print(f"harness: {call}: {where}: {first['msg']} (not recorded)", file=sys.stderr)
            return
        self.events.write(event)

    # -- boundaries -----------------------------------------------------------------------
    def _flush_phases(self, span: str = "epoch") -> None:
        now = time.perf_counter()
        self._seconds[self._cur] += now - self._t
        self._t = now
        seconds = {PHASES[i]: round(s, 6) for i, s in enumerate(self._seconds) if s > 0}
        counts = {PHASES[i]: c for i, c in enumerate(self._counts) if c > 0}
        fields: dict[str, Any] = {}
        for hook in self._hooks:
            fields.update(hook.totals())
        self.events.write(PhaseTotals(t=time.time(), epoch=self._epoch, span=span, seconds=seconds,
                                      transitions=counts, **fields))
        self._seconds = [0.0] * len(PHASES)
        self._counts = [0] * len(PHASES)

    def snapshot(self, label: str, when: When) -> None:
        """The snapshot ``label`` (if the scenario takes them) and the composition's moment
        ``when``, from the same tensor census."""
        if not self.cfg.tensors.snapshots:
            self._moment(when)
            return
        from harness.probe import epoch_snapshot as snapshot

        storages = composition.Storages()
        snap = snapshot.take(
            label,
            stage=self.stage,
            epoch=self._epoch,
            model=self._model,
            optimizer=self._optimizer,
            device=self.device,
            memray_active=self._memray.active,
            storages=storages,
        )
        path = snap.write(self.dir / SNAPSHOTS_DIR)
        self.events.write(SnapshotEvent(
            t=time.time(), label=label, epoch=self._epoch, file=f"{SNAPSHOTS_DIR}/{path.name}",
            tensor_bytes=snap.tensor_bytes,
        ))
        self._moment(when, storages)

    def _window_opens_at_once(self, total: int) -> bool:
        """Whether this training loop's memray window opens with the loop, at step 0."""
        if self.cfg.memray.mode != "windows" or self._started:
            return False
        window = self._memray.train_window(self._epoch, total)
        return window is not None and window[0] == 0

    def composition_start(self) -> None:
        """The composition's ``start`` moment, unless taken: before the first training step."""
        if not self._started:
            self._moment("start")

    def _moment(self, when: When, storages: composition.Storages | None = None) -> None:
        """Take the composition's moment ``when`` and append it to composition.jsonl;
        ``storages``: the CPU tensors a census just found (else one is taken now)."""
        from harness.probe.epoch_snapshot import global_rank

        if not self.cfg.tensors.composition:
            return
        if storages is None:
            storages = composition.cpu_storages(self._model, self._optimizer)
        # An epoch's (and the end's) moment comes after its evaluation pass, whose batches the
        # cell counts: its step is the training loop's, the steps the epoch trained.
        step = self._cell.step if when in ("start", "peak") else self._trained
        moment = composition.take(
            when, stage=self.stage, stage_dir=self.dir, storages=storages, device=self.device,
            epoch=self._epoch, step=step, phase=PHASES[self._cur], rank=global_rank())
        composition.append(self.dir / COMPOSITION_FILE, moment)
        if when == "start":
            self._started = True
        if when in ("start", "peak"):
            self._rss.arm(moment.processes[0].rss)

    def _where(self) -> tuple[int, int, str]:
        return self._epoch, self._cell.step, PHASES[self._cur]

    def close(self, failed: bool = False) -> None:
        """Flush and stop. After a failure the cell keeps the phase it failed in."""
        if self._oom is not None:
            self._oom.detach()
        if not failed:
            self.phase("teardown")
        self._flush_phases("rest")
        if not self._started:  # the stage never stepped: its start is its end
            self._moment("start")
        self.snapshot("end", "end")
        self._rss.close()
        self._memray.close(epoch=self._epoch, step=self._cell.step)
        workers.uninstall()
        if not failed:
            self._cell.phase = PHASE_CODE["idle"]
        self.events.write(StageEnd(t=time.time(), stage=self.stage))
        self.events.close()


class StepLoop:
    """One training loop's steps: the step hooks planned when it starts, driven step by step.

    ``begin`` before a step's work (its ``data`` phase), ``end`` once it is done, ``abandon`` for a
    step that never came, ``close`` at the loop's end. Only the steps some hook plans for cost
    more than a comparison and the cell's stores.
    """

    def __init__(self, probe: LiveProbe, total: int, start: int) -> None:
        self._probe = probe
        self.total = total
        self.step = start  # steps done
        probe._memray.expect_steps(total)  # a short loop gets a window that fits it
        self._plans = probe._plan_loop()
        self._due = _next(self._plans, start)  # the next step a hook acts on
        self._live: tuple[StepHook, ...] = ()  # the hooks acting on the running step
        self._closed = False

    def begin(self) -> None:
        """Step ``step`` starts."""
        step = self.step
        if step == self._due and not self._live:
            live = self._live = tuple(h for h, steps in self._plans if step in steps)
            for hook in live:
                hook.begin(step)
            self._probe._listeners = tuple(h for h in live if h.listens)

    def end(self) -> None:
        """The running step is done."""
        self.step += 1
        self._probe._trained = self.step
        cell = self._probe._cell
        cell.step = self.step
        cell.heartbeat += 1
        if self._probe._rss.passed():  # one read of /proc/self/statm: a composition near the peak
            self._probe._moment("peak")
        if self._live:
            ending, self._live = self._live, ()
            self._probe._end_step(ending, self.step - 1)
            self._due = _next(self._plans, self.step)

    def abandon(self) -> None:
        """The step begun never came (the loader ran out, the loop stopped before it trained)."""
        self._probe._listeners = ()
        live, self._live = self._live, ()
        for hook in reversed(live):
            hook.abandon(self.step)

    def close(self) -> None:
        """The loop is over: a step still running ends here; the hooks finish; ``loop_end``."""
        if self._closed:
            return
        self._closed = True
        probe = self._probe
        if self._live:
            live, self._live = self._live, ()
            probe._end_step(live, self.step)
        for hook in reversed(probe._hooks):
            hook.finish(self.step)
        probe.events.write(LoopEnd(t=time.time(), epoch=probe._epoch, steps=self.step,
                                   total=self.total, memray_reason=probe._memray.reason))


def _next(plans: list[tuple[StepHook, Steps]], step: int) -> int:
    """The first step at or after ``step`` on which a hook acts."""
    return min((steps.next(step) for _, steps in plans), default=NEVER)
