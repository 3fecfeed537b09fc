"""Process-tree sampling with psutil, in the harness process.

Every tick finds the stage's process tree and names each process (:mod:`harness.control.processes`,
the rule epoch snapshots use too), reads each process's RSS and ``statm`` figures,
and at a lower rate its USS, PSS and swap (``smaps_rollup``). Each row carries the wall clock and
the workload's stage, epoch, step and phase, read from the probe cell.
"""

from __future__ import annotations

import csv
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from harness.control.processes import Roles, start_method, tree_of
from harness.probe.cell import CellReader, CellState

COLUMNS = (
    "t", "pid", "ppid", "role", "rss", "vms", "shared", "text", "data",
    "uss", "pss", "swap", "stage", "epoch", "step", "phase", "cuda_allocated", "cuda_reserved",
)


@dataclass
class TreeTotals:
    """What the last tick saw, for progress lines and limits."""

    t: float = 0.0
    main_rss: int = 0
    tree_rss: int = 0
    processes: int = 0
    peak_main_rss: int = 0
    peak_tree_rss: int = 0
    cell: CellState | None = None


@dataclass
class SamplerStats:
    ticks: int = 0
    full_ticks: int = 0
    started: float = 0.0
    stopped: float = 0.0
    max_tick_s: float = 0.0
    roles: dict[int, str] = field(default_factory=dict)
    start_methods: set[str] = field(default_factory=set)  # how the workers seen were started

    def worker_start_method(self) -> str:
        """fork, spawn or forkserver (several joined by +); none when no worker was seen."""
        return start_method(self.start_methods)

    def rates(self) -> dict[str, float]:
        span = max(self.stopped - self.started, 1e-9)
        return {
            "ticks": self.ticks,
            "full_ticks": self.full_ticks,
            "rss_hz": round(self.ticks / span, 2),
            "full_hz": round(self.full_ticks / span, 2),
            "max_tick_ms": round(self.max_tick_s * 1000, 2),
        }


class TreeSampler(threading.Thread):
    """Samples the tree rooted at ``root`` until :meth:`stop`; rows go to ``csv_path``."""

    def __init__(
        self,
        root: int,
        stage: str,
        csv_path: Path,
        cell_path: Path | None,
        rss_hz: float,
        full_hz: float,
        on_tick: Callable[[TreeTotals], None] | None = None,
    ) -> None:
        super().__init__(name=f"sampler-{stage}", daemon=True)
        self.root = root
        self.stage = stage
        self.csv_path = csv_path
        self.cell_path = cell_path
        self.interval = 1.0 / rss_hz
        self.full_interval = 1.0 / full_hz
        self.on_tick = on_tick
        self.totals = TreeTotals()
        self.stats = SamplerStats()
        self._halt = threading.Event()
        self._procs: dict[int, psutil.Process] = {}
        self._seen: dict[int, float] = {}  # every pid seen in the tree -> its create_time
        self._seen_lock = threading.Lock()
        self._roles = Roles(root, cmdline=self._cmdline)

    def stop(self) -> None:
        self._halt.set()

    def seen(self) -> dict[int, float]:
        """Every process seen in the stage's tree so far (pid -> create_time), the root included.

        The create time tells a process from a later one that reuses its pid.
        """
        with self._seen_lock:
            return dict(self._seen)

    def _cmdline(self, pid: int) -> list[str] | None:
        proc = self._process(pid)
        try:
            return proc.cmdline() if proc is not None else None
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return None

    def _process(self, pid: int) -> psutil.Process | None:
        proc = self._procs.get(pid)
        if proc is None:
            try:
                proc = psutil.Process(pid)
            except psutil.NoSuchProcess:
                return None
            self._procs[pid] = proc
        return proc

    def run(self) -> None:
        cell = None
        if self.cell_path is not None:
            try:
                cell = CellReader(self.cell_path)
            except OSError:
                cell = None
        self.stats.started = time.time()
        next_full = time.monotonic()  # the first tick is a full one
        with open(self.csv_path, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(COLUMNS)
            last_flush = time.monotonic()
            while True:
                tick_start = time.monotonic()
                full = tick_start >= next_full
                if full:
                    # Scheduled from the last due time, not from this tick, so the achieved rate
                    # does not drift below full_hz by a fraction of a fast tick each time.
                    next_full = max(next_full + self.full_interval, tick_start)
                self._tick(writer, cell, full)
                now = time.monotonic()
                self.stats.max_tick_s = max(self.stats.max_tick_s, now - tick_start)
                if now - last_flush > 0.5:
                    fh.flush()
                    last_flush = now
                if self._halt.wait(max(0.0, self.interval - (now - tick_start))):
                    self._tick(writer, cell, True)  # a last full look before the tree is gone
                    break
        self.stats.stopped = time.time()
        if cell is not None:
            self.totals.cell = cell.read()
            cell.close()

    def _tick(self, writer: csv._writer, cell: CellReader | None, full: bool) -> None:  # type: ignore[name-defined]
        t = time.time()
        state = cell.read() if cell is not None else None
        epoch = step = phase = cuda_alloc = cuda_res = ""
        if state is not None:
            epoch, step, phase = str(state.epoch), str(state.step), state.phase
            if state.cuda_reserved:
                cuda_alloc, cuda_res = str(state.cuda_allocated), str(state.cuda_reserved)
        tree = tree_of(self.root)
        alive = set()
        main_rss = tree_rss = 0
        for pid, ppid in tree:
            proc = self._process(pid)
            if proc is None:
                continue
            if pid not in self._seen:
                try:
                    created = proc.create_time()
                except psutil.Error:
                    created = None
                if created is not None:
                    with self._seen_lock:
                        self._seen[pid] = created
            try:
                mem = proc.memory_info()
                fmem = proc.memory_full_info() if full else None
            except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
                continue
            if mem.rss == 0:  # a zombie waiting to be reaped: nothing left to measure
                continue
            role = self._roles.role(pid, ppid)
            if role is None:
                continue
            alive.add(pid)
            self.stats.roles[pid] = role
            method = self._roles.methods.get(pid)
            if method is not None:
                self.stats.start_methods.add(method)
            writer.writerow((
                f"{t:.4f}", pid, ppid, role, mem.rss, mem.vms, mem.shared, mem.text, mem.data,
                fmem.uss if fmem else "", getattr(fmem, "pss", "") if fmem else "",
                getattr(fmem, "swap", "") if fmem else "",
                self.stage, epoch, step, phase,
                cuda_alloc if pid == self.root else "", cuda_res if pid == self.root else "",
            ))
            tree_rss += mem.rss
            if pid == self.root:
                main_rss = mem.rss
        for pid in list(self._procs):
            if pid not in alive:
                del self._procs[pid]
                self._roles.forget(pid)
        self.stats.ticks += 1
        if full:
            self.stats.full_ticks += 1
        tot = self.totals
        tot.t, tot.main_rss, tot.tree_rss, tot.processes, tot.cell = t, main_rss, tree_rss, len(alive), state
        tot.peak_main_rss = max(tot.peak_main_rss, main_rss)
        tot.peak_tree_rss = max(tot.peak_tree_rss, tree_rss)
        if self.on_tick is not None:
            self.on_tick(tot)
