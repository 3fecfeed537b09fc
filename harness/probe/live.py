"""The live probe: the workload-side half of ``harness run``.

It keeps the hot path to a few attribute stores per phase (the shared cell, a timer), and does
everything expensive (memray windows, tensor tracing, snapshots, event writes) only at step,
epoch or section boundaries chosen by the scenario.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from harness.probe import cell as cellmod
from harness.probe.cell import PHASE_CODE, PHASES

T = TypeVar("T")

CONFIG_FILE = "probe.json"
CELL_FILE = "probe.cell"
EVENTS_FILE = "events.jsonl"


class EventWriter:
    """Appends one JSON object per line, flushed at once, so a killed process loses nothing."""

    def __init__(self, path: Path) -> None:
        self._fh = open(path, "a", encoding="utf-8", buffering=1)

    def write(self, kind: str, **fields: Any) -> None:
        record = {"t": time.time(), "kind": kind, **fields}
        self._fh.write(json.dumps(record, default=str) + "\n")

    def close(self) -> None:
        self._fh.close()


class LiveProbe:
    enabled = True

    def __init__(self, stage_dir: str | os.PathLike[str]) -> None:
        self.dir = Path(stage_dir)
        cfg = json.loads((self.dir / CONFIG_FILE).read_text(encoding="utf-8"))
        self.stage: str = cfg["stage"]
        self.device: str = cfg.get("device", "cpu")
        self.memray_cfg: dict[str, Any] = cfg["memray"]
        self.tensors_cfg: dict[str, Any] = cfg["tensors"]
        self.cuda_cfg: dict[str, Any] = cfg.get("cuda") or {}
        self._cuda = self.device.startswith("cuda")
        self._cuda_step: dict[str, dict[str, Any]] = {}  # this device step: phase -> reading
        self._cuda_epoch: dict[str, dict[str, Any]] = {}  # this epoch: phase -> peaks
        self._cuda_steps = 0  # device steps this epoch
        self._cuda_on = False  # a device step is running: read the device at each phase's end
        self._cuda_history = False
        self._cuda_every = int(self.cuda_cfg.get("sample_every", 25))
        self.events = EventWriter(self.dir / EVENTS_FILE)
        self._mm, self._cell = cellmod.open_cell(self.dir / CELL_FILE)
        self._cell.pid = os.getpid()
        self._cell.total = -1
        self._cell.phase = PHASE_CODE["setup"]
        self._cell.magic = cellmod.MAGIC
        # phase timing: seconds per phase code, since the last epoch flush
        self._seconds = [0.0] * len(PHASES)
        self._counts = [0] * len(PHASES)
        self._cur = PHASE_CODE["setup"]
        self._t = time.perf_counter()
        self._epoch = 0
        self._section: str | None = None
        self._model: Any = None
        self._optimizer: Any = None
        self._tracker: Any = None
        self._tracker_name: str | None = None
        self._tracer: Any = None  # AllocationTracer while a traced step runs
        self._tracer_stats: dict[str, dict[str, int]] = {}
        self._traced_steps = 0
        self.events.write("stage_start", stage=self.stage, pid=os.getpid())
        if self.memray_cfg["mode"] == "full":
            self._memray_start(self.stage)

    # -- the hot path ---------------------------------------------------------------------
    def phase(self, name: str) -> None:
        code = PHASE_CODE[name]
        now = time.perf_counter()
        prev = self._cur
        self._seconds[prev] += now - self._t
        self._counts[code] += 1
        self._t = now
        self._cur = code
        self._cell.phase = code
        if self._cuda_on:
            self._cuda_reading(PHASES[prev])
        if self._tracer is not None:
            self._tracer.set_phase(name)

    def iterate(self, loader: Iterable[T], limit: int | None = None) -> Iterator[T]:
        training = self._section is None
        cell = self._cell
        try:
            total = len(loader)  # type: ignore[arg-type]
        except TypeError:
            total = -1
        if limit is not None:
            total = limit if total < 0 else min(total, limit)
        cell.total = total
        cell.step = 0
        window = self._window_steps() if training else None
        trace = self._trace_schedule() if training else None
        step = 0
        if window is not None and window[0] == 0:
            # Open before iter() forks the DataLoader workers, so memray follows them.
            self._memray_start(f"{self.stage}-e{self._epoch}-train")
        it = iter(loader)
        try:
            while True:
                if step == limit:
                    break
                if training:
                    traced = trace is not None and trace(step)
                    if traced:
                        self._trace_begin()
                    if window is not None and step == window[0] and self._tracker is None:
                        self._memray_start(f"{self.stage}-e{self._epoch}-train")
                    self.phase("data")
                    if self._cuda and (traced or step % self._cuda_every == 0):
                        self._cuda_begin()  # after phase(): the step's first phase closes nothing
                try:
                    batch = next(it)
                except StopIteration:
                    self._cuda_on = False  # no step after all: nothing to read
                    break
                yield batch
                step += 1
                cell.step = step
                cell.heartbeat += 1
                if training:
                    if self._cuda:
                        self._cuda_history_window(step)
                    if self._tracer is not None:
                        self._trace_end()
                    if self._cuda_on:
                        self._cuda_end()
                    if window is not None and step == window[1]:
                        self._memray_stop()
        finally:
            if self._tracer is not None:
                self._trace_end()
            if self._cuda_on:
                self._cuda_end()
            if self._cuda_history:  # the loop ended inside the history window
                self._cuda_history_window(step, end=True)
            if training and window is not None and self._tracker_name is not None:
                if self._tracker_name.endswith("-train"):
                    self._memray_stop()
            if training:
                self.events.write("loop_end", epoch=self._epoch, steps=step, total=total)
            del it

    # -- epochs and sections --------------------------------------------------------------
    @contextlib.contextmanager
    def epoch(self, number: int) -> Iterator[None]:
        self._epoch = number
        self._cell.epoch = number
        self.events.write("epoch_start", epoch=number)
        try:
            yield
        finally:
            self._flush_phases()
            self.events.write("epoch_end", epoch=number)
            self.snapshot(f"epoch-{number}")

    @contextlib.contextmanager
    def section(self, name: str) -> Iterator[None]:
        previous = self._section
        self._section = name
        self.phase(name)
        self.events.write("section_start", section=name, epoch=self._epoch)
        self._cell.step = 0
        opened = False
        key = {"validate": "validation"}.get(name, name)
        wanted = bool(self.memray_cfg.get(key, False))
        if name == "validate":
            epochs = self.memray_cfg.get("validation_epochs")
            wanted = wanted and (epochs is None or self._epoch in epochs)
        if self.memray_cfg["mode"] == "windows" and wanted:
            suffix = f"e{self._epoch}-{name}" if self._epoch else name
            opened = self._memray_start(f"{self.stage}-{suffix}")
        if self._cuda:  # the section is one device window with its own peak
            from harness.probe import cuda

            cuda.reset_phase_peak(self.device)
        try:
            yield
        finally:
            if self._cuda:
                self._cuda_reading(name)
            if opened:
                self._memray_stop()
            self.events.write("section_end", section=name, epoch=self._epoch, steps=self._cell.step)
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
            self.events.write("watch", parameters=n, parameter_bytes=b)

    def record(self, kind: str, **fields: Any) -> None:
        self.events.write(kind, epoch=self._epoch, step=self._cell.step,
                          phase=PHASES[self._cur], **fields)

    def metric(self, name: str, value: float, **fields: Any) -> None:
        fields.setdefault("epoch", self._epoch)
        self.events.write("metric", name=name, value=value, **fields)

    # -- memray windows -------------------------------------------------------------------
    def _window_steps(self) -> tuple[int, int] | None:
        cfg = self.memray_cfg
        if cfg["mode"] != "windows" or cfg["train_steps"] <= 0:
            return None
        epochs = cfg.get("epochs")
        if epochs is not None and self._epoch not in epochs:
            return None
        return cfg["train_start"], cfg["train_start"] + cfg["train_steps"]

    def _memray_start(self, name: str) -> bool:
        if self._tracker is not None:
            return False
        import memray

        out = self.dir / "memray"
        out.mkdir(exist_ok=True)
        path = out / f"{name}.bin"
        tracker = memray.Tracker(
            destination=memray.FileDestination(path, overwrite=True, compress_on_exit=True),
            native_traces=bool(self.memray_cfg["native_traces"]),
            follow_fork=bool(self.memray_cfg["follow_fork"]),
            trace_python_allocators=False,
        )
        tracker.__enter__()
        self._tracker = tracker
        self._tracker_name = name
        self.events.write(
            "memray_start", capture=name, file=f"memray/{path.name}", epoch=self._epoch,
            step=self._cell.step, section=self._section,
        )
        return True

    def _memray_stop(self) -> None:
        if self._tracker is None:
            return
        tracker, name = self._tracker, self._tracker_name
        self._tracker = None
        self._tracker_name = None
        tracker.__exit__(None, None, None)
        self.events.write("memray_stop", capture=name, epoch=self._epoch, step=self._cell.step)

    # -- tensor tracing -------------------------------------------------------------------
    def _trace_schedule(self) -> Any:
        first = int(self.tensors_cfg["trace_steps"])
        every = int(self.tensors_cfg["trace_every"])
        if first <= 0 and every <= 0:
            return None
        return lambda step: step < first or (every > 0 and step % every == 0)

    def _trace_begin(self) -> None:
        from harness.probe.tensors import AllocationTracer, watched

        tracer = AllocationTracer()
        tracer.seed([t for _, _, t in watched(self._model, self._optimizer)])
        tracer.__enter__()
        self._tracer = tracer

    def _trace_end(self) -> None:
        tracer = self._tracer
        if self._cuda_on:  # the step's last phase, read before the event that carries it
            self._cuda_end()
        self._tracer = None
        tracer.__exit__(None, None, None)
        self._traced_steps += 1
        per_phase = tracer.take()
        self.events.write(
            "traced_step", epoch=self._epoch, step=self._cell.step - 1, phases=tracer.order,
            tensors=per_phase, **({"cuda": self._cuda_step} if self._cuda else {}),
        )
        for phase_name, stats in per_phase.items():
            acc = self._tracer_stats.setdefault(
                phase_name, {"count": 0, "bytes": 0, "peak_live_bytes": 0, "steps": 0}
            )
            acc["count"] += stats["count"]
            acc["bytes"] += stats["bytes"]
            acc["steps"] += stats["steps"]
            acc["peak_live_bytes"] = max(acc["peak_live_bytes"], stats["peak_live_bytes"])

    # -- CUDA -----------------------------------------------------------------------------
    # A device step (every ``cuda.sample_every``-th training step, and every traced one) reads
    # the device at the end of each phase with the peak reset when the phase began, so each
    # phase has its own peak; a validation or test section is one window of its own.
    def _cuda_begin(self) -> None:
        from harness.probe import cuda

        self._cuda_step = {}
        cuda.reset_phase_peak(self.device)
        self._cuda_on = True

    def _cuda_end(self) -> None:
        """Close a device step: read the phase running now, its last."""
        self._cuda_reading(PHASES[self._cur])
        self._cuda_on = False
        self._cuda_steps += 1

    def _cuda_reading(self, phase: str) -> None:
        """Device memory at the end of ``phase`` with the peak since it began; resets the peak."""
        from harness.probe import cuda

        reading = cuda.device_sample(self.device, driver=False)
        cuda.reset_phase_peak(self.device)
        self._cuda_step[phase] = reading
        self._cell.cuda_allocated = reading["allocated"]
        self._cell.cuda_reserved = reading["reserved"]
        acc = self._cuda_epoch.setdefault(phase, {"readings": 0, "peak_allocated": 0,
                                                  "peak_reserved": 0})
        acc["readings"] += 1
        acc["peak_allocated"] = max(acc["peak_allocated"], reading["peak_allocated"])
        acc["peak_reserved"] = max(acc["peak_reserved"], reading["peak_reserved"])
        for key in ("allocated", "reserved", "inactive_split", "retries", "ooms"):
            acc[key] = reading[key]  # the latest: the allocator's counters only grow

    def _cuda_history_window(self, step: int, end: bool = False) -> None:
        cfg = self.cuda_cfg
        if not cfg or self._epoch != cfg.get("history_epoch", 1):
            return
        start = int(cfg.get("history_start", 100))
        stop = start + int(cfg.get("history_steps", 50))
        from harness.probe import cuda

        if step == start and not self._cuda_history and not end:
            cuda.start_history(device=self.device)
            self._cuda_history = True
        elif self._cuda_history and (step == stop or end):
            stop = step
            self._cuda_history = False
            name = f"{self.stage}-e{self._epoch}-steps{start}-{stop}.pickle"
            dump = cuda.dump_history(
                self.dir / "cuda" / name, int(float(cfg.get("history_max_mb", 64)) * 1024 * 1024)
            )
            self.events.write(
                "cuda_history", epoch=self._epoch, start=start, stop=stop, file=f"cuda/{name}",
                bytes=dump.bytes, entries_kept=dump.entries_kept,
                entries_dropped=dump.entries_dropped,
            )

    # -- boundaries -----------------------------------------------------------------------
    def _flush_phases(self, span: str = "epoch") -> None:
        now = time.perf_counter()
        self._seconds[self._cur] += now - self._t
        self._t = now
        seconds = {PHASES[i]: round(s, 6) for i, s in enumerate(self._seconds) if s > 0}
        counts = {PHASES[i]: c for i, c in enumerate(self._counts) if c > 0}
        self.events.write(
            "phase_totals",
            epoch=self._epoch,
            span=span,
            seconds=seconds,
            transitions=counts,
            tensors=self._tracer_stats,
            traced_steps=self._traced_steps,
            **({"cuda": self._cuda_epoch, "cuda_steps": self._cuda_steps} if self._cuda else {}),
        )
        self._cuda_epoch = {}
        self._cuda_steps = 0
        self._seconds = [0.0] * len(PHASES)
        self._counts = [0] * len(PHASES)
        self._tracer_stats = {}
        self._traced_steps = 0

    def snapshot(self, label: str) -> None:
        if not self.tensors_cfg.get("snapshots", True):
            return
        from harness.probe import epoch_snapshot as snapshot

        snap = snapshot.take(
            label,
            stage=self.stage,
            epoch=self._epoch,
            model=self._model,
            optimizer=self._optimizer,
            device=self.device,
            memray_active=self._tracker is not None,
        )
        path = snapshot.write(snap, self.dir / "snapshots")
        self.events.write(
            "snapshot", label=label, epoch=self._epoch, file=f"snapshots/{path.name}",
            tensor_bytes=snap["tensor_bytes"],
        )

    def close(self, failed: bool = False) -> None:
        """Flush and stop. After a failure the cell keeps the phase it failed in."""
        if not failed:
            self.phase("teardown")
        self._flush_phases("rest")
        self.snapshot("end")
        self._memray_stop()
        if not failed:
            self._cell.phase = PHASE_CODE["idle"]
        self.events.write("stage_end", stage=self.stage)
        self.events.close()
