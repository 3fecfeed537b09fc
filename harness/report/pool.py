"""Reading the captures: each capture is read once, in a pool of spawned processes (one per core)
that also draws its flamegraphs from the records it read."""

from __future__ import annotations

import multiprocessing
import signal
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import resource_tracker
from types import TracebackType
from typing import Any

from harness.analysis.captures import CaptureData, read_capture
from harness.render import flamegraphs
from harness.report import signals
from harness.report.plan import CaptureJob, partition

INLINE_BELOW_BYTES = 8 * 1000 * 1000  # captures smaller than this in all: no process pool


def _run_job(job: CaptureJob) -> tuple[list[CaptureData], list[flamegraphs.Flamegraph]]:
    datas: list[CaptureData] = []
    records = []
    for cap in job.files:
        data, rec = read_capture(cap, job.window)
        datas.append(data)
        if rec is not None:
            records.append(rec)
    out: list[flamegraphs.Flamegraph] = []
    if job.native and job.peak_out is not None:
        # The CLI reads one file: for the workers, the first worker stands for them all.
        return datas, [flamegraphs.write_with_cli(job.files[0].path, job.peak_out,
                                                  capture=job.name, group=job.group)]
    if records and job.peak_out is not None:
        peak = [r for rec in records for r in rec.peak]
        out.append(_guarded(lambda: flamegraphs.write_peak(
            peak, records[0].memray_samples, records[0].metadata, job.peak_out,
            capture=job.name, group=job.group), job, temporal=False))
    if records and job.temporal_out is not None:
        first = records[0]
        out.append(_guarded(lambda: flamegraphs.write_temporal(
            first.reader, job.files[0].path, first.metadata, first.memray_samples,
            job.temporal_out, capture=job.name, group=job.group, peak_records=len(first.peak)),
            job, temporal=True))
    return datas, out


def _guarded(draw: Any, job: CaptureJob, temporal: bool) -> flamegraphs.Flamegraph:
    # memray's reporter is a third-party renderer: its failure costs one flamegraph, not the report.
    try:
        result: flamegraphs.Flamegraph = draw()
        return result
    except Exception as exc:  # noqa: BLE001 - recorded in the report, never silent
        return flamegraphs.Flamegraph(job.name, job.group, temporal, None, 0,
                                      f"failed: {type(exc).__name__}: {exc}")


def _run_jobs(jobs: list[CaptureJob]) -> list[tuple[list[CaptureData], list[flamegraphs.Flamegraph]]]:
    return [_run_job(j) for j in jobs]


# Ctrl-C, or a hangup, reaches the whole process group: the parent alone decides, and terminates
# the workers (SIGTERM). Held back while they start, then ignored, so that no worker dies on its
# own and no resource tracker started with them (it ignores SIGINT and SIGTERM, not SIGHUP) is
# killed and relaunched with a page of warnings.
_PARENT_DECIDES = {signal.SIGINT, signal.SIGHUP}


def _worker_init() -> None:
    for sig in _PARENT_DECIDES:
        signal.signal(sig, signal.SIG_IGN)


class CaptureReading:
    """Reading the captures: :meth:`start` begins the spawned share, :meth:`collect` reads the rest here.

    Use it as a context manager and call :meth:`start` first thing inside, before the sample
    tables are computed, so that the spawned process's start-up (imports) overlaps that work.
    Leaving it normally waits for the pool to finish; leaving it by an exception
    (KeyboardInterrupt, SignalReceived, an error) terminates the workers at once, whatever they
    were reading. The constructor starts nothing: a signal handled after a constructor that
    started the pool and before the ``with`` took it (``__enter__``'s first line is such a point)
    would leave the workers reading, and the interpreter waiting for them at exit.
    """

    def __init__(self, jobs: list[CaptureJob], processes: int) -> None:
        total = sum(c.size for j in jobs for c in j.files)
        self._pool: ProcessPoolExecutor | None = None
        self._futures: list[Future[Any]] = []
        self._here = jobs
        self._bins = partition(jobs, processes) \
            if processes > 1 and len(jobs) > 1 and total >= INLINE_BELOW_BYTES else []

    def __enter__(self) -> CaptureReading:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def start(self) -> None:
        """Start the pool on the spawned share (none when the captures are few or small)."""
        if len(self._bins) < 2 or self._pool is not None:
            return
        # spawn, not fork: the caller (harness run) may still hold threads and open files.
        ctx = multiprocessing.get_context("spawn")
        # deferred: a stop arriving half way through submit() would leave an executor whose
        # thread never started (shutdown then fails); it is raised once all is up, and __exit__
        # (or the except below, outside a with) terminates what started.
        try:
            with signals.deferred(signals.ANY_STOP):
                with signals.held(_PARENT_DECIDES):  # the tracker keeps SIGHUP blocked for good
                    resource_tracker.ensure_running()
                # Held again: the tracker's launch unblocks SIGINT and SIGTERM on its way out,
                # which would let a Ctrl-C kill a worker still importing, with a traceback.
                with signals.held(_PARENT_DECIDES):
                    self._pool = ProcessPoolExecutor(max_workers=len(self._bins) - 1, mp_context=ctx,
                                                     initializer=_worker_init)
                    self._futures = [self._pool.submit(_run_jobs, b) for b in self._bins[1:]]
                    self._here = self._bins[0]
        except BaseException:
            self.abort()
            raise

    def collect(self) -> tuple[list[CaptureData], list[flamegraphs.Flamegraph]]:
        try:
            results = _run_jobs(self._here)
            for f in self._futures:
                results += f.result()
        except BaseException:
            self.abort()
            raise
        self.close()
        return [d for r in results for d in r[0]], [f for r in results for f in r[1]]

    def close(self) -> None:
        """Wait for the pool's work to end, and its processes with it."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def abort(self) -> None:
        """Stop now: cancel what has not started and terminate the workers, reading or not.

        ``shutdown(cancel_futures=True)`` alone waits for the jobs that run, and a capture can
        take minutes to read; the executor keeps its processes in ``_processes`` only.
        """
        pool, self._pool = self._pool, None
        if pool is None:
            return
        procs = list((pool._processes or {}).values())
        for f in self._futures:
            f.cancel()
        for p in procs:
            p.terminate()
        # The executor's own thread sees the workers gone and winds down; wait for it, then them.
        try:
            pool.shutdown(wait=True, cancel_futures=True)
        except RuntimeError:  # stopped before its thread started: nothing of it to wait for
            pass
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():  # stuck where SIGTERM does not reach
                p.kill()
                p.join()
