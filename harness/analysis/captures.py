"""Read each memray capture once: its peak records, its leaks, its heap over time.

Only Python frames are read (``stack_trace``): resolving native frames costs seconds per
capture on a libtorch process and the tables and findings need the Python lines only.
"""

from __future__ import annotations

import contextlib
import gc
import os
import struct
import sys
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from harness.analysis.attribution import (
    Frame,
    describe,
    phase_of,
    site_frame,
    source_line,
    workload_frame,
)
from harness.analysis.load import Capture, Stage
from harness.layout import (
    MEMRAY_DIR,
    STAGES_DIR,
    STEP_MARK_FILE,
    STEP_MARK_FUNCTION,
    STEP_MARK_SIZE,
    capture_name,
    parse_capture_name,
)
from harness.records.events import MemrayStart, MemrayStop
from harness.records.text import printable_lines

# memray drops, on the main thread, the frames that were on the stack when tracking started: for
# a window opened inside the probe that is the workload's own loop. Ask for the whole stack.
MAX_FRAMES = 256
RAW_MAGIC = b"memray\x00"  # an uncompressed capture starts so; an lz4-compressed one does not
SITE_COLUMNS = (
    "stage", "capture", "process", "pid", "phase", "site", "workload_line", "source",
    "bytes_at_peak", "allocations_at_peak", "leaked_bytes", "leaked_allocations",
)
# What a training window kept, step by step: per site and window step (0-based, from the window's
# first), the bytes and allocations made in that step and still held when the window closed.
STEP_COLUMNS = ("site", "workload_line", "source", "phase", "step", "bytes", "allocations")
# memray's allocator kinds that give memory back (memray.AllocatorType: PYMALLOC_FREE, FREE, MUNMAP)
_DEALLOCATORS = frozenset({"PYMALLOC_FREE", "FREE", "MUNMAP"})


@dataclass(frozen=True)
class Window:
    """What the event stream says about a capture: when it ran and over which steps."""

    epoch: int | None
    section: str | None
    start_step: int | None
    stop_step: int | None
    t_start: float | None
    t_stop: float | None
    worker: int | None = None  # a worker's own window (harness.probe.workers): its DataLoader worker id
    batches: int | None = None  # ... and the batches it fetched in the window

    @property
    def steps(self) -> int | None:
        if self.start_step is None or self.stop_step is None:
            return None
        return max(self.stop_step - self.start_step, 0)


@dataclass
class CaptureData:
    """One capture file, read and reduced to plain data (picklable: no memray objects)."""

    capture: Capture
    window: Window
    pid: int | None = None
    peak_memory: int | None = None
    total_allocations: int | None = None
    memray_samples: list[tuple[float, int, int]] = field(default_factory=list)  # (t s, rss, heap)
    sites: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=SITE_COLUMNS))
    error: str | None = None
    leaks_read: bool = False  # False: the sites' leaked_* columns were not computed
    # the window's steps as the probe marked them (memray_step_mark); None: not read or no marks
    marked_steps: int | None = None
    step_sites: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=STEP_COLUMNS))


@dataclass
class Records:
    """The memray objects behind a CaptureData, for renderers that need them (flamegraphs)."""

    reader: Any  # kept open: the records resolve their stacks through it
    metadata: Any
    peak: list[Any]
    memray_samples: list[Any]  # memray's MemorySnapshot records (rss and heap over time)


def windows(stage: Stage) -> dict[str, Window]:
    """Capture name -> its window, from memray_start/memray_stop events."""
    starts = {ev.capture: ev for ev in stage.events_of(MemrayStart)}
    stops = {ev.capture: ev for ev in stage.events_of(MemrayStop)}
    out: dict[str, Window] = {}
    for name, st in starts.items():
        sp = stops.get(name)
        out[name] = Window(
            epoch=st.epoch,
            section=st.section or None,
            start_step=st.step,
            stop_step=sp.step if sp is not None else None,
            t_start=st.t,
            t_stop=sp.t if sp is not None else None,
            worker=st.worker,
            batches=sp.batches if sp is not None else None,
        )
    return out


def _guess_window(capture: Capture) -> Window:
    """For a capture without events (a crash before memray_start was flushed): from its name."""
    name = parse_capture_name(capture.stage, capture.name)
    return Window(name.epoch, name.section, None, None, None, None, worker=name.worker)


def _site_keys(process: str, section: str | None) -> Any:
    """A cached function: a stack's frames -> (site, workload line, its source, phase)."""
    role = "main" if process == "main" else "worker"
    cache: dict[tuple[Frame, ...], tuple[str, str, str, str]] = {}

    def key_of(frames: Sequence[Frame]) -> tuple[str, str, str, str]:
        t = tuple(frames)
        hit = cache.get(t)
        if hit is None:
            where = workload_frame(t)
            site = describe(site_frame(t)) if t else "(no Python frame)"
            hit = (site, describe(where), source_line(where) if where else "",
                   phase_of(t, section=section, role=role))
            cache[t] = hit
        return hit

    return key_of


def is_step_mark(frames: Sequence[Frame]) -> bool:
    """Whether a stack is the probe's step mark (``harness.probe.steps.memray_step_mark``)."""
    if not frames:
        return False
    function, filename, _line = frames[0]
    return function == STEP_MARK_FUNCTION and filename.replace("\\", "/").endswith(STEP_MARK_FILE)


def kept_by_step(records: Iterable[Any], frames: Any) -> tuple[int, dict[tuple[int, int], list[int]]]:
    """What a capture kept, by the step it was made in: ``(marked steps, {(stack id, step):
    [bytes, allocations]})``, over memray allocation records in the order they were made.

    Each step mark (:func:`is_step_mark`) ends a step; what is allocated after the last mark (the
    window closing) is left out. An allocation counts when nothing freed its address before the
    capture ended (a realloc is memray's free of the old address and an allocation of the new).
    ``frames(record)`` resolves a record's stack (and keeps it, for :func:`step_sites`): it is
    asked for the marks' stacks and for those of the allocations counted.
    """
    import memray

    dealloc = frozenset(int(a) for a in memray.AllocatorType if a.name in _DEALLOCATORS)
    marks: dict[int, bool] = {}
    alive: dict[int, tuple[int, Any]] = {}  # address -> (step, its record)
    step = 0
    for r in records:
        if int(r.allocator) in dealloc:
            alive.pop(r.address, None)
            continue
        if r.size == STEP_MARK_SIZE:
            sid = r.stack_id
            if sid not in marks:
                marks[sid] = is_step_mark(frames(r))
            if marks[sid]:
                step += 1
                continue
        alive[r.address] = (step, r)
    out: dict[tuple[int, int], list[int]] = {}
    for made, r in alive.values():
        if made >= step:
            continue
        acc = out.get((r.stack_id, made))
        if acc is None:
            frames(r)  # its stack, for step_sites
            acc = out[(r.stack_id, made)] = [0, 0]
        acc[0] += r.size
        acc[1] += 1
    return step, out


def step_sites(kept: Mapping[tuple[int, int], list[int]], stacks: Mapping[int, Sequence[Frame]], *,
               process: str, section: str | None) -> pd.DataFrame:
    """:func:`kept_by_step`'s counts as rows of :data:`STEP_COLUMNS`, by site and step."""
    key_of = _site_keys(process, section)
    acc: dict[tuple[str, str, int], list[Any]] = {}
    for (sid, made), (size, count) in kept.items():
        site, where, text, phase = key_of(stacks.get(sid, []))
        row = acc.get((site, where, made))
        if row is None:
            row = acc[(site, where, made)] = [text, phase, 0, 0]
        row[2] += size
        row[3] += count
    rows = [(site, where, v[0], v[1], made, v[2], v[3]) for (site, where, made), v in acc.items()]
    return pd.DataFrame(rows, columns=STEP_COLUMNS)


def aggregate_sites(
    peak: Iterable[tuple[Sequence[Frame], int, int]],
    leaked: Iterable[tuple[Sequence[Frame], int, int]],
    *,
    stage: str,
    capture: str,
    process: str,
    pid: int | None,
    section: str | None,
) -> pd.DataFrame:
    """Group (frames, bytes, count) records by site and workload line; attribute each a phase.

    A site is the innermost Python frame; the workload line is the innermost frame in the
    workload's own code (what a person would change).
    """
    key_of = _site_keys(process, section)
    acc: dict[tuple[str, str], list[Any]] = {}
    for column, records in ((0, peak), (2, leaked)):
        for frames, size, count in records:
            site, where, text, phase = key_of(frames)
            row = acc.get((site, where))
            if row is None:
                row = acc[(site, where)] = [text, phase, 0, 0, 0, 0]
            row[2 + column] += int(size)
            row[3 + column] += int(count)
    rows = [
        (stage, capture, process, pid, v[1], site, where, v[0], v[2], v[3], v[4], v[5])
        for (site, where), v in acc.items()
    ]
    df = pd.DataFrame(rows, columns=SITE_COLUMNS)
    return df.sort_values(["bytes_at_peak", "leaked_bytes"], ascending=False, ignore_index=True)


def wants_leaks(window: Window, role: str = "main") -> bool:
    """Leaks are read for training windows, and for the main process's validation and test
    captures.

    Reading them is a full pass over the file, the dearest of the three; a training window's
    leaks are what the leak finding compares from epoch to epoch, and what a main process's
    evaluation pass still holds at its capture's end is what a staircase (memory rising at each
    evaluation pass) keeps. A worker's validation or test capture spans its whole life, so nearly
    everything it keeps is freed with it.
    """
    return window.section is None or role == "main"


def marks_steps(capture: Capture, window: Window) -> bool:
    """Whether the probe marked the steps of this capture (``memray_step_mark``): a training
    window of the main process, not a whole-stage capture (``memray.mode: full``)."""
    return (window.section is None and capture.pid is None
            and capture.name != capture_name(capture.stage))


@contextlib.contextmanager
def _memray_complaints() -> Iterator[list[str]]:
    """Collect what memray logs meanwhile: a capture it can read only in part ends its records
    early with "Memray ERROR: ..." on stderr (file descriptor 2) and no exception. Anything else
    written there is passed on."""
    said: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield said
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            lines = tmp.read().decode("utf-8", errors="replace").splitlines()
            said += [line.removeprefix("Memray ERROR:").strip() for line in lines
                     if line.startswith("Memray ERROR")]
            others = [line for line in lines if not line.startswith("Memray ERROR")]
            if others:
                # memray's words about a capture file that may be crafted: shown, not obeyed
                print(printable_lines("\n".join(others)), file=sys.stderr, flush=True)


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic garbage collection meanwhile: reading a capture makes hundreds of thousands of
    small objects (records, frames) and none of them cyclic, so each collection it would trigger
    walks the whole heap for nothing."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _recorded_allocations(path: Path, meta: Any) -> int | None:
    """How many allocations the tracker counted when it closed a raw (uncompressed) capture.

    memray keeps that count in the file's header and reports the number it read instead. The
    header's stats are ``n_allocations, n_frames, start_time, end_time`` (8 bytes each); they are
    found by the start and end times memray does report, so another layout finds nothing (None)
    rather than a wrong number.
    """
    start = round(meta.start_time.timestamp() * 1000)
    end = round(meta.end_time.timestamp() * 1000)
    with open(path, "rb") as fh:
        head = fh.read(4096)
    if not head.startswith(RAW_MAGIC):
        return None  # compressed: load.lz4_damage walks those
    at = head.find(struct.pack("<qq", start, end))
    if at < 16:
        return None
    count: int = struct.unpack_from("<Q", head, at - 16)[0]
    return count or None  # 0: never closed (its process was killed)


ZERO_TAIL_COPY_BYTES = 16 * 1024  # a raw capture's zero tail past this is cut off before memray opens it


def zero_tail(path: Path, block: int = 64 * 1024) -> int:
    """How many zero bytes end the file at ``path``."""
    n = 0
    with open(path, "rb") as fh:
        end = fh.seek(0, os.SEEK_END)
        while end > 0:
            start = max(end - block, 0)
            fh.seek(start)
            chunk = fh.read(end - start)
            kept = len(chunk.rstrip(b"\0"))
            n += len(chunk) - kept
            if kept:
                break
            end = start
    return n


def _open_reader(path: Path) -> Any:
    """A memray FileReader of ``path``; a raw capture with a long zero tail is read from a copy
    without it, in memory.

    A tracker that never closed its file (a DataLoader worker's, ended by its parent) leaves the
    file's last preallocated chunk zero-filled, often 100-200 KB. memray finds where the data
    ends by stepping back over that tail one byte at a time, two system calls a byte, on every
    pass over the file: 0.3 s a pass for such a worker capture, against 0.1 s for the rest of
    it. The copy ends at the last non-zero byte, where memray's search stops anyway, so the
    records read are the same.
    """
    import memray

    memfd = getattr(os, "memfd_create", None)
    if memfd is None or not sys.platform.startswith("linux"):
        return memray.FileReader(str(path), report_progress=False)
    with open(path, "rb") as src:
        magic = src.read(len(RAW_MAGIC))
    if magic != RAW_MAGIC:  # lz4-compressed: memray does not search those for a zero tail
        return memray.FileReader(str(path), report_progress=False)
    tail = zero_tail(path)
    if tail < ZERO_TAIL_COPY_BYTES:
        return memray.FileReader(str(path), report_progress=False)
    with open(memfd("memray-capture"), "wb") as copy, open(path, "rb") as src:
        left = path.stat().st_size - tail
        while left > 0 and (chunk := src.read(min(left, 1 << 20))):
            copy.write(chunk)
            left -= len(chunk)
        copy.flush()
        # The reader opens the copy again; that descriptor keeps it alive once this one closes.
        return memray.FileReader(f"/proc/self/fd/{copy.fileno()}", report_progress=False)


def read_capture(capture: Capture, window: Window | None) -> tuple[CaptureData, Records | None]:
    """Read one capture once: high-watermark records, memory snapshots, leaks where wanted.

    A capture memray reads only in part keeps what was read, with ``error`` saying so: its
    figures are not the window's, and the findings leave it out.
    """
    win = window or _guess_window(capture)
    data = CaptureData(capture=capture, window=win)
    where = f"{STAGES_DIR}/{capture.stage}/{MEMRAY_DIR}/{capture.path.name}"
    try:
        with _memray_complaints() as said, _gc_paused():
            reader = _open_reader(capture.path)
            meta = reader.metadata
            peak = list(reader.get_high_watermark_allocation_records(merge_threads=True))
            leaks = wants_leaks(win, capture.role)
            leaked = list(reader.get_leaked_allocation_records(merge_threads=True)) if leaks else []
            snaps = list(reader.get_memory_snapshots())
            stacks: dict[int, list[Frame]] = {}

            def frames(r: Any) -> list[Frame]:
                # Records of one Python stack differ by thread, allocator or native stack: read it once.
                got = stacks.get(r.stack_id)
                if got is None:
                    got = stacks[r.stack_id] = r.stack_trace(MAX_FRAMES)
                return got

            # what a training window kept, step by step (the probe marks its steps in the main
            # process's windows; a whole-stage capture and a worker's have no marks)
            by_step = (kept_by_step(reader.get_allocation_records(), frames)
                       if marks_steps(capture, win) else None)
    except (OSError, RuntimeError, ValueError) as exc:
        # A capture cut short by a kill may not parse: say so and go on with the rest.
        data.error = f"{where}: unreadable ({exc})"
        return data, None
    recorded = _recorded_allocations(capture.path, meta)
    why = capture.damage
    if why is None and recorded is not None and recorded > int(meta.total_allocations):
        why = f"{where}: {int(meta.total_allocations)} of {recorded} allocation records read"
    if why is None and said:
        why = f"{where}: memray: {said[0]}"
    if why is not None:
        data.error = f"{why}: its records are partial, read as far as they go"
    data.pid = int(meta.pid)
    data.peak_memory = int(meta.peak_memory)
    data.total_allocations = int(meta.total_allocations)
    data.memray_samples = [(s.time / 1000.0, int(s.rss), int(s.heap)) for s in snaps]
    data.leaks_read = leaks
    with _gc_paused():
        if by_step is not None and by_step[0] > 0:
            data.marked_steps = by_step[0]
            data.step_sites = step_sites(by_step[1], stacks, process=capture.role,
                                         section=win.section)
        data.sites = aggregate_sites(
            ((frames(r), r.size, r.n_allocations) for r in peak),
            ((frames(r), r.size, r.n_allocations) for r in leaked),
            stage=capture.stage,
            capture=capture.name,
            process=capture.role,
            pid=data.pid,
            section=win.section,
        )
    if not data.leaks_read:
        data.sites[["leaked_bytes", "leaked_allocations"]] = float("nan")
    return data, Records(reader, meta, peak, snaps)


def read_stage_captures(stage: Stage) -> list[CaptureData]:
    wins = windows(stage)
    return [read_capture(c, wins.get(c.name))[0] for c in stage.captures]
