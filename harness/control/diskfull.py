"""A disk that fills while a stage runs, seen as it happens.

memray does not fail its process when its capture cannot grow: it prints ``Memray ERROR: Failed
to grow output file <path> by N bytes: No space left on device`` and ``... deactivating
tracking``, and the stage runs on to exit 0 with a capture that stopped partway. The harness reads
the stage's output line by line anyway (``runner._pump``); a :class:`Watch` there notes those lines
and when they came, and notes a log the harness itself could not write. After the stage,
:func:`judge` turns a stage that ended ``ok`` on a full disk into ``failed``, ``disk full writing
<path>``, with the time memray stopped tracking, which the report shows on the capture.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from harness.errors import DiskFull
from harness.records.atomic import is_disk_full
from harness.records.manifest import DiskFullRecord, StageOutcome
from harness.records.vocab import Status

__all__ = ["Watch", "as_error", "at_start", "harness_outcome", "is_disk_full", "judge", "watch"]

_GROW = re.compile(rb"Failed to grow output file (?P<path>\S+) by \d+ bytes: No space left on device")
_DEACTIVATED = re.compile(rb"deactivating tracking")
# A stage's own error on a full disk, as the probe records it: OSError: [Errno 28] ...: 'path'
_ERRNO_28 = re.compile(r"\[Errno 28\] No space left on device(?:: '(?P<path>[^']*)')?")


@dataclass
class Watch:
    """What a stage's output, and the harness's own writes for it, said about the disk."""

    memray_path: str | None = None  # the capture memray could not grow
    memray_stopped: float | None = None  # wall clock of memray's "deactivating tracking"
    unwritten: str | None = None  # a file of the harness's own (the log, samples) the full disk refused
    failed_write: str | None = None  # another error writing such a file: said, never silent

    def lost(self, exc: OSError, path: Path | str) -> None:
        """A write of the harness's own failed: noted when the disk was full (the first such)."""
        if is_disk_full(exc):
            self.unwritten = self.unwritten or str(exc.filename or path)
        elif self.failed_write is None:
            self.failed_write = f"cannot write {exc.filename or path}: {exc.strerror or exc}"

    def line(self, raw: bytes) -> None:
        """One line of the stage's output: memray's words about its capture, and when."""
        m = _GROW.search(raw)
        if m:
            self.memray_path = self.memray_path or m.group("path").decode("utf-8", "replace")
        if self.memray_stopped is None and _DEACTIVATED.search(raw):
            self.memray_stopped = time.time()

    @property
    def full(self) -> bool:
        return self.memray_stopped is not None or self.memray_path is not None or bool(self.unwritten)


_lock = threading.Lock()
_watches: dict[Path, Watch] = {}


def watch(path: Path) -> Watch:
    """The watch of a file of a stage (its log, its samples folder), made on first use; a stage's
    watches are :func:`judge`\'d together."""
    with _lock:
        return _watches.setdefault(Path(path), Watch())


def _take(stage_path: Path) -> list[Watch]:
    with _lock:
        mine = [p for p in _watches if p.is_relative_to(stage_path)]
        return [_watches.pop(p) for p in mine]


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="milliseconds")


def judge(outcome: StageOutcome, stage_path: Path) -> StageOutcome:
    """``outcome``, failed with ``disk full writing <path>`` where the disk filled during the stage
    (its ``disk_full`` says where, and when memray stopped tracking)."""
    watches = _take(stage_path)
    seen = next((w for w in watches if w.full), None)
    errno28 = _ERRNO_28.search(outcome.message or "")
    if seen is None and errno28 is None:
        other = next((w.failed_write for w in watches if w.failed_write), None)
        if other is not None and outcome.status == "ok":  # the record is not whole: not ok
            return outcome.model_copy(update={"status": Status.FAILED, "message": other})
        return outcome
    path = (seen.memray_path or seen.unwritten) if seen is not None else None
    if path is None and errno28 is not None:
        path = errno28.group("path")
    if path is None:  # memray said it stopped, not which file: the stage's captures
        path = str(stage_path / "memray")
    record = DiskFullRecord(path=path)
    if seen is not None and seen.memray_stopped is not None:
        record.memray_stopped = _iso(seen.memray_stopped)
    if seen is not None and seen.unwritten:
        record.unwritten = seen.unwritten
    message = f"disk full writing {path}"
    if outcome.status == "ok":
        return outcome.model_copy(update={"status": Status.FAILED, "message": message, "disk_full": record})
    if errno28 is not None:  # the stage failed on it: said plainly, its type kept
        return outcome.model_copy(update={"message": message, "disk_full": record})
    return outcome.model_copy(update={"disk_full": record})


@contextlib.contextmanager
def at_start(run_dir: Path) -> Iterator[None]:
    """The run directory's first files: on a full disk the folder, new and holding nothing that
    a report could read, is removed and the error is one line (:class:`DiskFull`)."""
    try:
        yield
    except OSError as exc:
        if not is_disk_full(exc):
            raise
        shutil.rmtree(run_dir, ignore_errors=True)
        raise DiskFull(exc.filename or run_dir) from None


@contextlib.contextmanager
def as_error() -> Iterator[None]:
    """A write of the harness's own that finds the disk full is :class:`DiskFull`, one line."""
    try:
        yield
    except OSError as exc:
        if not is_disk_full(exc):
            raise
        raise DiskFull(exc.filename or "the run directory") from None


def harness_outcome(cls: type[StageOutcome], stage: str, exc: OSError) -> StageOutcome:
    """The record of ``stage`` stopped by a full disk while the harness itself wrote."""
    now = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")
    return cls(name=stage, status=Status.FAILED, exit_code=None, signal=None, started=now, ended=now,
               wall_s=0.0, last=None, message=f"disk full writing {exc.filename}", sampling=None,
               peak_tree_rss=None, peak_main_rss=None,
               disk_full=DiskFullRecord(path=None if exc.filename is None else str(exc.filename)))
