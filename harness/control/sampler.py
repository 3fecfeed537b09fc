"""Process-tree sampling, in the harness process.

Every tick finds the stage's process tree and names each process (:mod:`harness.probe.processes`,
the rule epoch snapshots use too) and reads each process's ``/proc/<pid>/status``: RSS and its
anonymous, file and shared-memory parts, and the figures ``statm`` gives, all kernel counters, no
page walk. USS, PSS and swap need ``smaps_rollup``, a walk of every page table of the process
(10-30 ms for an 800 MB one, holding its ``mmap_lock`` meanwhile, which the DataLoader's
shared-memory batches need every step); each process gets one at least every ``1/full_hz`` s, one
process at a tick in rotation rather than all in one tick. Each row carries the wall clock and the
workload's stage, epoch, step and phase, read from the probe cell. Rows go to a
:class:`~harness.control.samples.SamplesWriter`.
"""

from __future__ import annotations

import math
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psutil

from harness.control import diskfull
from harness.control.distributed import RankCells
from harness.control.samples import SamplesWriter
from harness.probe.cell import CellReader, CellState
from harness.probe.processes import AgentRoles, Roles, start_method, tree_of
from harness.records.samples import SampleRow

_STATUS = re.compile(rb"^(VmSize|VmRSS|RssAnon|RssFile|RssShmem|VmData|VmStk|VmExe):\s+(\d+)", re.M)
_ROLLUP = re.compile(rb"^(Pss|Private_Clean|Private_Dirty|Private_Hugetlb|Swap):\s+(\d+)", re.M)
_GONE = (FileNotFoundError, ProcessLookupError, PermissionError)


def _read(path: str) -> bytes:
    """One file of /proc in one read (both files read here are 1-2 KB; the kernel formats
    them whole at the first read)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, 16384)
    finally:
        os.close(fd)


def read_status(pid: int) -> dict[bytes, int] | None:
    """``/proc/<pid>/status``'s memory counters in bytes; None for a zombie (they are gone)."""
    fields = {k: int(v) * 1024 for k, v in _STATUS.findall(_read(f"/proc/{pid}/status"))}
    return fields if b"VmRSS" in fields else None


def read_rollup(pid: int) -> tuple[int, int, int] | None:
    """(USS, PSS, swap) in bytes from ``/proc/<pid>/smaps_rollup``, as psutil's
    ``memory_full_info`` computes them; None when the process has no memory map left."""
    fields = {k: int(v) * 1024 for k, v in _ROLLUP.findall(_read(f"/proc/{pid}/smaps_rollup"))}
    if b"Pss" not in fields:
        return None
    uss = fields[b"Private_Clean"] + fields[b"Private_Dirty"] + fields.get(b"Private_Hugetlb", 0)
    return uss, fields[b"Pss"], fields.get(b"Swap", 0)


@dataclass
class TreeTotals:
    """What the last tick saw, for progress lines and limits."""

    t: float = 0.0
    main_rss: int = 0
    tree_rss: int = 0
    processes: int = 0
    peak_main_rss: int = 0
    peak_tree_rss: int = 0
    cell: CellState | None = None  # distributed: the lowest rank's
    rank_rss: dict[int, int] = field(default_factory=dict)  # distributed: RSS of each rank's tree


@dataclass
class SamplerStats:
    ticks: int = 0
    full_ticks: int = 0  # ticks that read smaps_rollup of at least one process
    started: float = 0.0
    stopped: float = 0.0
    max_tick_s: float = 0.0
    cpu_s: float = 0.0  # the sampler thread's own CPU time (user + system)
    full_interval_s: float = 1.0  # 1 / sampling.full_hz
    roles: dict[int, str] = field(default_factory=dict)
    start_methods: set[str] = field(default_factory=set)  # how the workers seen were started
    full_reads: dict[int, int] = field(default_factory=dict)  # pid -> smaps_rollup reads
    read_times: dict[int, tuple[float, float]] = field(default_factory=dict)  # pid -> first, last read
    max_gap_s: float = 0.0  # the longest time between two smaps_rollup reads of one process
    policy: str = "normal"  # the sampler thread's scheduling policy: normal, or batch (background)

    def note_read(self, pid: int, t: float) -> None:
        self.full_reads[pid] = self.full_reads.get(pid, 0) + 1
        span = self.read_times.get(pid)
        if span is not None:
            self.max_gap_s = max(self.max_gap_s, t - span[1])
        self.read_times[pid] = (span[0] if span else t, t)

    def worker_start_method(self) -> str:
        """fork, spawn or forkserver (several joined by +); none when no worker was seen."""
        return start_method(self.start_methods)

    def full_hz(self) -> float:
        """The lowest USS/PSS rate of a process read three times or more: the rate every process
        got at least (the main process's over the stage when none was read that often).

        A process's rate is one over the mean time between its reads.
        """
        rates = []
        for pid, (first, last) in self.read_times.items():
            n = self.full_reads.get(pid, 0)
            if n >= 3 and last > first:
                rates.append((n - 1) / (last - first))
        if not rates:
            span = max(self.stopped - self.started, 1e-9)
            main = [n for pid, n in self.full_reads.items() if self.roles.get(pid) == "main"]
            return (main[0] if main else 0) / span
        return min(rates)

    def rates(self) -> dict[str, Any]:
        span = max(self.stopped - self.started, 1e-9)
        return {
            "ticks": self.ticks,
            "full_ticks": self.full_ticks,
            "full_reads": sum(self.full_reads.values()),
            "rss_hz": round(self.ticks / span, 2),
            "full_hz": round(self.full_hz(), 2),  # per process: each got USS/PSS this often at least
            "full_max_gap_s": round(self.max_gap_s, 3),
            "max_tick_ms": round(self.max_tick_s * 1000, 2),
            "cpu_ms_per_tick": round(1000 * self.cpu_s / max(self.ticks, 1), 3),
            "policy": self.policy,
        }


def run_in_background() -> str:
    """Make the calling thread SCHED_BATCH; the policy it runs under after ("batch", else "normal").

    A batch thread gets the same share of the CPU as an ordinary one, so the sampler cannot
    starve, even on cores the training keeps busy; but a batch thread that wakes never preempts
    the thread running on its core (the scheduler's tick does, or an idle core takes it), so a
    tick does not cut into a training step. A nice value would also make it give way, but a
    starved sampler can be stopped halfway through a ``smaps_rollup`` walk, which holds the
    stage's ``mmap_lock``, and it holds the harness's GIL meanwhile: with two busy loops on two
    cores, nice 19 stretched a smoke stage from 12 s to 48 s. SCHED_BATCH there: 12.2 s and
    22.9 Hz RSS, against 12.0 s and 23.3 Hz as an ordinary thread (bench/RESULTS.md).
    """
    try:
        os.sched_setscheduler(threading.get_native_id(), os.SCHED_BATCH, os.sched_param(0))
    except (OSError, AttributeError):  # not allowed here, or not Linux: an ordinary thread
        return "normal"
    return "batch"


_T = TypeVar("_T")


class _Guarded:
    """Calls into the samples writer; the first OSError is noted (a full disk: for the stage's
    judgement, harness.control.diskfull) and ends the writing."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.ok = True

    def call(self, func: Callable[..., _T], *args: Any) -> _T | None:
        if not self.ok:
            return None
        try:
            return func(*args)
        except OSError as exc:
            self.ok = False
            diskfull.watch(self.path).lost(exc, self.path)
            return None


class TreeSampler(threading.Thread):
    """Samples the tree rooted at ``root`` until :meth:`stop`; rows go into the folder ``samples_dir``.

    ``rotate`` False reads every due process's ``smaps_rollup`` in the same tick, the way it was
    done before (kept for bench/sampler_cost.py).
    """

    def __init__(
        self,
        root: int,
        stage: str,
        samples_dir: Path,
        cell_path: Path | None,
        rss_hz: float,
        full_hz: float,
        on_tick: Callable[[TreeTotals], None] | None = None,
        *,
        rotate: bool = True,
        ranks: Path | None = None,
        background: bool = False,
    ) -> None:
        """``ranks``: a distributed stage's directory; ``root`` is then torchrun's agent, and each
        row of a rank's tree carries the rank and the epoch, step and phase of its own cell.
        ``background``: the thread runs as SCHED_BATCH (:func:`run_in_background`)."""
        super().__init__(name=f"sampler-{stage}", daemon=True)
        self.root = root
        self.stage = stage
        self.samples_dir = samples_dir
        self.cell_path = cell_path
        self.interval = 1.0 / rss_hz
        self.full_interval = 1.0 / full_hz
        # a process's reads are due this often: a tick early, since a read may come a tick late
        self._full_every = max(self.full_interval - self.interval, 0.0)
        self.rotate = rotate
        self.background = background
        self.on_tick = on_tick
        self.totals = TreeTotals()
        self.stats = SamplerStats(full_interval_s=self.full_interval)
        self._halt = threading.Event()
        self._seen: dict[int, float] = {}  # every pid seen in the tree -> its create_time
        self._seen_lock = threading.Lock()
        self._roles: Roles | AgentRoles = Roles(root, cmdline=self._cmdline)
        self._rank_cells: RankCells | None = None
        if ranks is not None:
            self._roles = AgentRoles(root, cmdline=self._cmdline)
            self._rank_cells = RankCells(ranks)
        self._alive: set[int] = set()
        # each process's last row: where a process was when it died (an OOM kill's victim)
        self.last_rows: dict[int, SampleRow] = {}
        self._full_due: dict[int, float] = {}  # pid -> when its next smaps_rollup is due (monotonic)

    def stop(self) -> None:
        self._halt.set()

    def seen(self) -> dict[int, float]:
        """Every process seen in the stage's tree so far (pid -> create_time), the root included.

        The create time tells a process from a later one that reuses its pid.
        """
        with self._seen_lock:
            return dict(self._seen)

    def rates(self) -> dict[str, Any]:
        """What the stage's manifest records as ``sampling``."""
        return self.stats.rates()

    @staticmethod
    def _cmdline(pid: int) -> list[str] | None:
        try:
            return psutil.Process(pid).cmdline()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return None

    def run(self) -> None:
        if self.background:
            self.stats.policy = run_in_background()
        cell = None
        if self.cell_path is not None:
            try:
                cell = CellReader(self.cell_path)
            except OSError:
                cell = None
        self.stats.started = time.time()
        cpu0 = time.thread_time()
        # A full disk stops the writing, never the sampling: the limits and the live line go on,
        # and the stage is judged by harness.control.diskfull when it ends.
        writes = _Guarded(self.samples_dir)
        writer = writes.call(SamplesWriter, self.samples_dir)
        try:
            while True:
                tick_start = time.monotonic()
                rows = self._tick(cell, tick_start, last=False)
                if writer is not None:
                    writes.call(writer.write, rows)
                now = time.monotonic()
                self.stats.max_tick_s = max(self.stats.max_tick_s, now - tick_start)
                if self._halt.wait(max(0.0, self.interval - (now - tick_start))):
                    # a last full look before the tree is gone
                    rows = self._tick(cell, time.monotonic(), last=True)
                    if writer is not None:
                        writes.call(writer.write, rows)
                    break
            self.stats.cpu_s = time.thread_time() - cpu0  # the ticks', not the last part's sealing
        finally:
            if writer is not None:
                writes.call(writer.close)
        self.stats.stopped = time.time()
        if cell is not None:
            self.totals.cell = cell.read()
            cell.close()
        if self._rank_cells is not None:
            self._rank_cells.close()

    def _rank_where(
        self, pid: int, role: str, states: dict[int, CellState | None]
    ) -> tuple[int | None, tuple[Any, ...]]:
        """A distributed stage's process: its rank, and its (epoch, step, phase, CUDA allocated,
        reserved) from that rank's own cell (each cell read once a tick); none for the agent."""
        assert isinstance(self._roles, AgentRoles) and self._rank_cells is not None
        rank = self._roles.rank(pid)
        if rank is None:
            return None, (None,) * 5
        if rank not in states:
            states[rank] = self._rank_cells.read(rank)
        rs = states[rank]
        if rs is None:
            return rank, (None,) * 5
        own = role == f"rank {rank}" and rs.cuda_reserved  # device bytes on the rank's own rows
        return rank, (rs.epoch, rs.step, rs.phase, rs.cuda_allocated if own else None,
                      rs.cuda_reserved if own else None)

    def _full_reads(self, alive: list[int], now: float, last: bool) -> set[int]:
        """The processes whose smaps_rollup this tick reads.

        Each process is due every full interval less one tick, scheduled from its last due time
        (not from the tick that read it, so the rate cannot drift): a read comes at the first tick
        at or after its due time, up to a tick late, and a short-lived process (a validation
        pass's worker) would otherwise come out just under ``full_hz``. A new process is due at
        once. In rotation a tick reads the most overdue, or as many as keep up with a tree too
        large for one a tick.
        """
        if last:
            return set(alive)
        due = self._full_due
        for pid in alive:
            due.setdefault(pid, now)
        ready = sorted((due[pid], pid) for pid in alive if due[pid] <= now)
        if not self.rotate:
            chosen = [pid for _, pid in ready]
        else:
            per_tick = max(1, math.ceil(len(alive) * self.interval / self.full_interval))
            chosen = [pid for _, pid in ready[:per_tick]]
        for pid in chosen:
            due[pid] = max(due[pid] + self._full_every, now)
        return set(chosen)

    def _tick(self, cell: CellReader | None, now: float, last: bool) -> list[SampleRow]:
        t = round(time.time(), 4)
        state = cell.read() if cell is not None else None
        epoch = step = phase = cuda_alloc = cuda_res = None
        if state is not None:
            epoch, step, phase = state.epoch, state.step, state.phase
            if state.cuda_reserved:
                cuda_alloc, cuda_res = state.cuda_allocated, state.cuda_reserved
        tree = tree_of(self.root)
        found: list[tuple[int, int, str, dict[bytes, int]]] = []
        for pid, ppid in tree:
            if pid not in self._seen:
                try:
                    created = psutil.Process(pid).create_time()
                except psutil.Error:
                    continue
                with self._seen_lock:
                    self._seen[pid] = created
            try:
                status = read_status(pid)
            except _GONE:
                continue
            if status is None:  # a zombie waiting to be reaped: nothing left to measure
                continue
            role = self._roles.role(pid, ppid)
            if role is None:
                continue
            found.append((pid, ppid, role, status))
        full = self._full_reads([f[0] for f in found], now, last)
        rows: list[SampleRow] = []
        alive = set()
        main_rss = tree_rss = 0
        rank_states: dict[int, CellState | None] = {}
        rank_rss: dict[int, int] = {}
        stats = self.stats
        methods = self._roles.methods  # a distributed stage's is built from every rank's: once a tick
        for pid, ppid, role, st in found:
            rollup = None
            if pid in full:
                try:
                    rollup = read_rollup(pid)
                except _GONE:
                    continue
                stats.note_read(pid, t)
            alive.add(pid)
            rss = st[b"VmRSS"]
            anon, file, shmem = st.get(b"RssAnon"), st.get(b"RssFile", 0), st.get(b"RssShmem", 0)
            is_root = pid == self.root
            rank = None
            where = (epoch, step, phase, cuda_alloc if is_root else None, cuda_res if is_root else None)
            if isinstance(self._roles, AgentRoles):
                rank, where = self._rank_where(pid, role, rank_states)
                if rank is not None:
                    rank_rss[rank] = rank_rss.get(rank, 0) + rss
            uss, pss, swap = rollup or (None, None, None)
            w_epoch, w_step, w_phase, w_alloc, w_res = where
            rows.append(SampleRow(
                t=t, pid=pid, ppid=ppid, role=role, rss=rss, vms=st.get(b"VmSize"),
                shared=file + shmem, text=st.get(b"VmExe"),
                data=st.get(b"VmData", 0) + st.get(b"VmStk", 0), uss=uss, pss=pss, swap=swap,
                stage=self.stage, epoch=w_epoch, step=w_step, phase=w_phase,
                cuda_allocated=w_alloc, cuda_reserved=w_res,
                rss_anon=anon, rss_file=file, rss_shmem=shmem, rank=rank,
            ))
            tree_rss += rss
            if is_root:
                main_rss = rss
            stats.roles[pid] = role
            method = methods.get(pid)
            if method is not None:
                stats.start_methods.add(method)
        last_rows = self.last_rows
        for row in rows:
            last_rows[row.pid] = row
        for pid in self._alive - alive:
            self._roles.forget(pid)
            self._full_due.pop(pid, None)
        self._alive = alive
        stats.ticks += 1
        if full:
            stats.full_ticks += 1
        tot = self.totals
        tot.t, tot.main_rss, tot.tree_rss, tot.processes, tot.cell = t, main_rss, tree_rss, len(alive), state
        if self._rank_cells is not None:
            tot.rank_rss = rank_rss
            tot.cell = next((rank_states[r] for r in sorted(rank_states) if rank_states[r]), None)
        tot.peak_main_rss = max(tot.peak_main_rss, main_rss)
        tot.peak_tree_rss = max(tot.peak_tree_rss, tree_rss)
        if self.on_tick is not None:
            self.on_tick(tot)
        return rows
