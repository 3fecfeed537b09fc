"""Process control: launch each stage as a subprocess, sample it, enforce limits, record outcomes.

``run_scenario(..., instrumented=True)`` is ``harness run``; ``instrumented=False`` is
``harness train`` (the same launch, no probe, no sampler, no memray: the bare workload).
"""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from harness.control import diskfull, distributed, preflight, rundir
from harness.control.console import Console, progress_text
from harness.control.sampler import TreeSampler, TreeTotals
from harness.errors import (
    Interrupted,
    RunFailed,
    ScenarioError,
    SignalReceived,
    StageInputError,
    Terminated,
)
from harness.layout import (
    CELL_FILE,
    EVENTS_FILE,
    PROBE_CONFIG_FILE,
    SAMPLES_DIR,
    STAGE_DIR_ENV,
    STAGE_LOG_FILE,
    Event,
    node_manifest_name,
    rank_dir_name,
    stage_dir,
)
from harness.probe import cell as cellmod
from harness.records.probe_config import ProbeConfig
from harness.records.scenario import Scenario, dump
from harness.sizes import MiB, format_size

# Errors a stage stops on that say its input was bad (exit 2), not that the workload failed.
INPUT_ERRORS = ("DataError", "ScenarioError")


@dataclass
class StageOutcome:
    name: str
    status: str  # ok | failed | killed | limit | timeout | interrupted | terminated
    exit_code: int | None
    signal: str | None
    started: str
    ended: str
    wall_s: float
    last: dict[str, Any] | None
    message: str
    sampling: dict[str, Any] | None
    peak_tree_rss: int | None
    peak_main_rss: int | None
    error: str | None = None  # the type of the stage's own error (stage_error), when it recorded one
    stopped_by: str | None = None  # the signal that stopped the harness: SIGINT, SIGTERM, SIGHUP
    killed_descendants: list[int] | None = None  # left running by the stage, killed by the harness
    # How the sampler saw its DataLoader workers started: fork | spawn | forkserver | none; None
    # when nothing sampled the stage.
    worker_start_method: str | None = None
    # A distributed stage: the global rank it failed in (the first to fail, or the largest when the
    # tree passed a limit), this node's rank, and each rank's last cell state (epoch, step, ...)
    rank: int | None = None
    node: int | None = None
    ranks: dict[str, Any] | None = None
    # CPU seconds the stage's processes used (user, system), its DataLoader workers included once
    # reaped; and how long the harness took after the stage process exited (the sampler's last
    # look and sealing of its samples, the output pipe), which wall_s includes.
    cpu_s: dict[str, float] | None = None
    after_exit_s: float | None = None
    disk_full: dict[str, Any] | None = None  # the disk filled: where, when memray stopped (diskfull)

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def check_device(scenario: Scenario, source: str = "scenario") -> None:
    """CUDA asked for where there is none is a scenario error, before anything starts."""
    if not scenario.device.startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        raise ScenarioError(
            f"{source}: device: {scenario.device!r} asked for, but this machine has no CUDA "
            "device (run it on the CPU with --set device=cpu)"
        )
    index = int(scenario.device.partition(":")[2] or 0)
    if index >= torch.cuda.device_count():
        raise ScenarioError(
            f"{source}: device: {scenario.device!r} asked for, but only "
            f"{torch.cuda.device_count()} CUDA device(s) exist"
        )


def _pump(pipe: Any, log_path: Path, console: Console) -> None:
    """Copy the child's output to its log (flushed per line) and to the console; the pipe is
    drained to its end even when the log cannot be written (a full disk), so the stage never
    blocks on it."""
    disk, writing = diskfull.watch(log_path), True
    with open(log_path, "ab", buffering=0) as log:
        for raw in iter(pipe.readline, b""):
            disk.line(raw)
            if writing:
                try:
                    log.write(raw)
                except OSError as exc:  # the output still reaches the console, and the pipe drains
                    writing = False
                    disk.lost(exc, log_path)
            console.output(raw.decode("utf-8", errors="replace").rstrip("\n"))
    pipe.close()


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _kill_descendants(seen: dict[int, float], root: int, pgid: int) -> list[int]:
    """SIGKILL what the sampler saw of the stage's tree and still runs outside its process group.

    A descendant in its own session or group is not reached by killpg, and it is the workload's:
    nothing else should outlive the stage. ``seen`` maps pid -> create time, so a pid reused by an
    unrelated process since is left alone. Returns the pids killed.
    """
    found: dict[int, psutil.Process] = {}
    for pid, created in seen.items():
        if pid == root:
            continue
        try:
            proc = psutil.Process(pid)
            if proc.create_time() != created or proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if os.getpgid(pid) == pgid:
                continue  # killpg's SIGKILL is on its way
            proc.suspend()  # stopped first, so it forks nothing we would miss while we look
            found[pid] = proc
        except (psutil.Error, ProcessLookupError, PermissionError):
            continue
    for proc in list(found.values()):
        try:
            for child in proc.children(recursive=True):
                found.setdefault(child.pid, child)
        except psutil.Error:
            pass
    killed = []
    for pid, proc in sorted(found.items()):
        try:
            proc.kill()
            killed.append(pid)
        except psutil.Error:
            pass
    return killed


def _probe_config(scenario: Scenario, stage: str) -> dict[str, Any]:
    return ProbeConfig.for_stage(scenario, stage).model_dump(mode="json")


# The line the stage writes to its log when it stops on a harness error (harness.probe.stage).
_HARNESS_ERROR_LINE = re.compile(r"^harness: ([A-Za-z]+Error): (.*)$")


def _stage_error(stage_path: Path, instrumented: bool) -> tuple[str, str] | None:
    """(error type, message) of the stage's own error: its stage_error event, or in a bare run,
    where there are no events, the harness error line the stage wrote to its log."""
    if instrumented:
        events = stage_path / EVENTS_FILE
        if events.exists():
            for line in reversed(events.read_text(encoding="utf-8", errors="replace").splitlines()):
                try:
                    ev = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(ev, dict) and ev.get("kind") == Event.STAGE_ERROR:
                    return str(ev.get("error")), str(ev.get("message") or "")
        return None
    for line in reversed(_log_lines(stage_path)):
        match = _HARNESS_ERROR_LINE.match(line)
        if match:
            return match.group(1), match.group(2)
    return None


def _log_lines(stage_path: Path) -> list[str]:
    log = stage_path / STAGE_LOG_FILE
    if not log.exists():
        return []
    return [ln.strip() for ln in log.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]


def _failure_message(stage_path: Path, rc: int | None, instrumented: bool) -> tuple[str, str | None]:
    """What a stage that exited non-zero said, and its error type when it recorded one.

    Without a recorded error (``os._exit``, a crash in C) the exit code is the fact; the last
    line printed is only a hint, and only a bare run, which has no events, shows it.
    """
    error = _stage_error(stage_path, instrumented)
    if error is not None:
        kind, message = error
        return f"{kind}: {message}".rstrip(": "), kind
    text = f"exit code {rc}"
    if not instrumented:
        lines = _log_lines(stage_path)
        if lines:
            text += f" (last output: {lines[-1][:300]})"
    return text, None


def run_stage(
    scenario: Scenario,
    run_dir: Path,
    stage: str,
    console: Console,
    instrumented: bool,
) -> StageOutcome:
    dist = scenario.distributed
    # The stage's log and samples; a distributed stage's ranks each have a directory beside them.
    sdir = stage_dir(run_dir, stage) if dist is None else distributed.node_dir(run_dir, stage, dist)
    sdir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env.pop(STAGE_DIR_ENV, None)
    if instrumented:
        if dist is None:  # a rank makes its own cell, once it knows its rank
            cellmod.create(sdir / CELL_FILE)
        (sdir / PROBE_CONFIG_FILE).write_text(json.dumps(_probe_config(scenario, stage), indent=1))
        env[STAGE_DIR_ENV] = str(sdir)
    started_iso, t0 = rundir.now_iso(), time.monotonic()
    usage0 = resource.getrusage(resource.RUSAGE_CHILDREN)  # the stage is this process's one child
    # The stage reads the other end of this pipe and stops its whole group when it closes: when
    # this process ends, however it ends (SIGKILL included), no stage runs on.
    watch_read, watch_write = os.pipe()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "harness.probe.stage" if dist is None else "harness.control.agent",
             str(run_dir), stage, "--watch-fd", str(watch_read)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # its own process group: we can stop the whole tree at once
            pass_fds=(watch_read,),
        )
    except BaseException:
        os.close(watch_write)
        raise
    finally:
        os.close(watch_read)
    pgid = proc.pid
    pump = threading.Thread(target=_pump, args=(proc.stdout, sdir / STAGE_LOG_FILE, console), daemon=True)

    stop_reason: list[str] = []
    limit_rank: list[int] = []  # distributed: the rank holding most when the tree passed the limit
    limit_bytes = scenario.limits.max_rss_mb * MiB if scenario.limits.max_rss_mb else None
    sampler: TreeSampler | None = None

    def stop_tree() -> None:
        _kill_group(pgid)
        if dist is not None and sampler is not None:  # torchrun put each rank in a session of its own
            _kill_rank_groups(sampler)

    def on_tick(totals: TreeTotals) -> None:
        if limit_bytes is not None and totals.tree_rss > limit_bytes and not stop_reason:
            largest = ""
            if totals.rank_rss:
                rank, rss = max(totals.rank_rss.items(), key=lambda kv: (kv[1], -kv[0]))
                limit_rank.append(rank)
                largest = f"; rank {rank} held the most ({format_size(rss, unit='MiB', digits=0)})"
            stop_reason.append(
                f"limit: tree RSS {format_size(totals.tree_rss, unit='MiB', digits=0)} exceeded "
                "limits.max_rss_mb "
                f"({scenario.limits.max_rss_mb:g} MiB){largest}"
            )
            stop_tree()

    stopped_by: signal.Signals | None = None
    killed: list[int] = []
    timeout = scenario.limits.timeout_s
    try:
        pump.start()
        if instrumented:
            sampler = TreeSampler(
                proc.pid, stage, sdir / SAMPLES_DIR, sdir / CELL_FILE if dist is None else None,
                scenario.sampling.rss_hz, scenario.sampling.full_hz, on_tick,
                ranks=stage_dir(run_dir, stage) if dist is not None else None,
                background=scenario.sampling.background,
            )
            sampler.start()
        try:
            while True:
                try:
                    proc.wait(timeout=0.25)
                    break
                except subprocess.TimeoutExpired:
                    pass
                elapsed = time.monotonic() - t0
                if sampler is not None:
                    console.status(progress_text(stage, sampler.totals, elapsed))
                if timeout is not None and elapsed > timeout and not stop_reason:
                    stop_reason.append(f"timeout: stage ran past limits.timeout_s ({timeout:g} s)")
                    stop_tree()
        except KeyboardInterrupt:
            stopped_by = signal.SIGINT
        except SignalReceived as exc:
            stopped_by = signal.Signals(exc.signum)
        finally:
            # Workers outlive a killed main process only briefly; never leave one behind.
            stop_tree()
            console.end_status()
        proc.wait()
        exited = time.monotonic()
    finally:
        # Also when a second interruption lands here: the stage is over, whatever it left runs no
        # longer, and the sampler stops writing.
        stop_tree()  # a no-op unless the clean-up above was cut short
        if sampler is not None:
            sampler.stop()
            sampler.join(timeout=10)
            killed = _kill_descendants(sampler.seen(), proc.pid, pgid)
        os.close(watch_write)
    # Whatever held the stage's output pipe open is gone now, so this does not wait for long.
    pump.join(timeout=5)
    if killed:
        note = (f"harness: stage {stage!r} left {len(killed)} process(es) running; killed "
                + ", ".join(str(pid) for pid in killed))
        with open(sdir / STAGE_LOG_FILE, "a", encoding="utf-8") as log:
            log.write(note + "\n")
        console.line(note)
    wall = time.monotonic() - t0
    usage1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = {"user": round(usage1.ru_utime - usage0.ru_utime, 3),
           "system": round(usage1.ru_stime - usage0.ru_stime, 3)}
    rc = proc.returncode
    last = None
    if sampler is not None and sampler.totals.cell is not None and dist is None:
        c = sampler.totals.cell
        last = {"epoch": c.epoch, "step": c.step, "total": c.total, "phase": c.phase}
    sig = signal.Signals(-rc).name if rc is not None and rc < 0 else None
    error: str | None = None
    if stopped_by is not None:
        status, message = _stopped(stopped_by)
    elif stop_reason:
        status = stop_reason[0].split(":")[0]
        message = stop_reason[0].partition(": ")[2]
    elif rc == 0:
        status, message = "ok", ""
    elif sig is not None:
        status, message = "killed", f"killed by {sig}"
    else:
        status = "failed"
        message, error = _failure_message(sdir, rc, instrumented)
    rank: int | None = None
    ranks: dict[str, Any] | None = None
    if dist is not None:
        rank, ranks, rank_last, rank_status = _rank_outcome(run_dir, stage, sdir, instrumented,
                                                       limit_rank[0] if limit_rank else None)
        if rank_status is not None and stopped_by is None and not stop_reason and rc != 0:
            status, message, error = rank_status
        if instrumented:
            last = rank_last
    return StageOutcome(
        name=stage,
        status=status,
        exit_code=rc,
        signal=sig,
        started=started_iso,
        ended=rundir.now_iso(),
        wall_s=round(wall, 3),
        last=last,
        message=message,
        sampling=sampler.stats.rates() if sampler is not None else None,
        peak_tree_rss=sampler.totals.peak_tree_rss if sampler is not None else None,
        peak_main_rss=sampler.totals.peak_main_rss if sampler is not None else None,
        error=error,
        stopped_by=stopped_by.name if stopped_by is not None else None,
        killed_descendants=killed,
        worker_start_method=sampler.stats.worker_start_method() if sampler is not None else None,
        rank=rank,
        node=dist.node_rank if dist is not None else None,
        ranks=ranks,
        cpu_s=cpu,
        after_exit_s=round(t0 + wall - exited, 3),
    )


def _kill_rank_groups(sampler: TreeSampler) -> None:
    """SIGKILL the process group of every rank the sampler saw that still runs (torchrun starts
    each in its own session; its workers share its group)."""
    seen = sampler.seen()
    for pid, role in list(sampler.stats.roles.items()):
        if not (role.startswith("rank ") and " " not in role[5:]) or pid not in seen:
            continue
        try:
            if psutil.Process(pid).create_time() != seen[pid] or os.getpgid(pid) != pid:
                continue  # a reused pid, or not a group leader any more
        except (psutil.Error, ProcessLookupError):
            continue
        _kill_group(pid)


def _cell_state(path: Path) -> dict[str, Any] | None:
    """epoch, step, total and phase of a rank's cell file, as ``last`` holds them."""
    try:
        reader = cellmod.CellReader(path)
    except (OSError, ValueError):
        return None
    try:
        c = reader.read()
    finally:
        reader.close()
    return None if c is None else {"epoch": c.epoch, "step": c.step, "total": c.total, "phase": c.phase}


def _rank_outcome(
    run_dir: Path, stage: str, node_path: Path, instrumented: bool, limit_rank: int | None
) -> tuple[int | None, dict[str, Any] | None, dict[str, Any] | None, tuple[str, str, str | None] | None]:
    """(rank, each rank's last cell state, the rank's last state, (status, message, error)) of a
    distributed stage: the rank that failed first (the agent's record), else the rank that held the
    most when the tree passed a limit. The status is None when the agent recorded no failure."""
    spath = stage_dir(run_dir, stage)
    ranks = {str(r): _cell_state(d / CELL_FILE) for r, d in distributed.rank_dirs(spath).items()} or None
    record = distributed.read_record(node_path)
    failure = record.get("failure") if record else None
    if record and record.get("rendezvous"):  # the nodes never met: no rank ran
        return None, ranks, None, ("failed", str(record["rendezvous"]), "RendezvousError")
    rank: int | None = int(failure["rank"]) if failure else limit_rank
    if rank is None and ranks:
        rank_last = ranks[min(ranks, key=int)]  # the lowest rank's, for progress and the record
    else:
        rank_last = (ranks or {}).get(str(rank))
    if not failure or rank is None:
        return rank, ranks, rank_last, None
    rdir = spath / rank_dir_name(rank)
    if failure.get("signal"):
        return rank, ranks, rank_last, ("killed", distributed.describe(failure), None)
    error = _stage_error(rdir if instrumented else node_path, instrumented)
    if error is not None:
        kind, text = error
        return rank, ranks, rank_last, ("failed", f"rank {rank}: {kind}: {text}".rstrip(": "), kind)
    return rank, ranks, rank_last, ("failed", distributed.describe(failure), None)


def _stopped(signum: signal.Signals) -> tuple[str, str]:
    """The status and message of a stage stopped because the harness was told to stop."""
    if signum == signal.SIGINT:
        return "interrupted", "interrupted by Ctrl-C"
    return "terminated", f"terminated by {signum.name}"


def _where(outcome: StageOutcome) -> str:
    if not outcome.last:
        return f" in rank {outcome.rank}" if outcome.rank is not None else ""
    last = outcome.last
    bits = [f"rank {outcome.rank}"] if outcome.rank is not None else []
    if last.get("epoch"):
        bits.append(f"epoch {last['epoch']}")
    bits.append(f"step {last['step']}")
    bits.append(f"phase {last['phase']}")
    return " at " + ", ".join(bits)


def run_scenario(
    scenario: Scenario,
    reports: Path,
    *,
    instrumented: bool,
    console: Console,
    source: str = "scenario",
) -> Path:
    """Run every stage in order into a new run directory; raise RunFailed on the first failure.

    ``source`` names the scenario in errors (its file).
    """
    preflight.check(scenario, source)
    check_device(scenario, source)
    distributed.check(scenario, source)
    run_dir = rundir.new_run_dir(reports, scenario.name, "" if instrumented else "-bare")
    dist = scenario.distributed
    # Node K > 0 of a job keeps its own manifest beside node 0's (harness merge joins them).
    manifest_name = node_manifest_name(dist.node_rank) if dist and dist.node_rank > 0 else rundir.MANIFEST
    with diskfull.at_start(run_dir):  # a full disk here leaves no run directory behind
        (run_dir / rundir.SCENARIO).write_text(dump(scenario), encoding="utf-8")
    manifest: dict[str, Any] = {
        "manifest_version": rundir.MANIFEST_VERSION,
        "kind": "run" if instrumented else "bare",
        "scenario_name": scenario.name,
        "scenario": scenario.to_dict(),
        **rundir.provenance(),  # git_revision: the harness's; the workload's own is beside it
        "workload": rundir.workload_provenance(scenario.workload.entry),
        "started": rundir.now_iso(),
        "ended": None,
        "status": "running",
        "stages": [],
    }
    with diskfull.at_start(run_dir):
        rundir.write_manifest(run_dir, manifest, manifest_name)
    console.line(f"harness: run directory {run_dir}")
    t0 = time.monotonic()
    failure: StageOutcome | None = None
    stage = scenario.stages[0]
    completed = False  # only a loop that ran to its end (or to a recorded failure) may say ok
    try:
        for stage in scenario.stages:
            outcome = run_stage(scenario, run_dir, stage, console, instrumented)
            outcome = diskfull.judge(outcome, stage_dir(run_dir, stage))
            manifest["stages"].append(outcome.to_dict())
            rundir.write_manifest(run_dir, manifest, manifest_name)
            if outcome.status != "ok":
                failure = outcome
                break
        completed = True
    except OSError as exc:
        if not diskfull.is_disk_full(exc):
            raise
        failure = diskfull.harness_outcome(StageOutcome, stage, exc)  # a write of the harness's own
        if all(s["name"] != stage for s in manifest["stages"]):
            manifest["stages"].append(failure.to_dict())
    except (KeyboardInterrupt, SignalReceived) as exc:
        # Stopped outside run_stage's wait (its clean-up, between stages): never recorded as ok.
        signum = signal.SIGINT if isinstance(exc, KeyboardInterrupt) else signal.Signals(exc.signum)
        status, message = _stopped(signum)
        now = rundir.now_iso()
        failure = StageOutcome(
            name=stage, status=status, exit_code=None, signal=None, started=now, ended=now,
            wall_s=0.0, last=None, message=message, sampling=None, peak_tree_rss=None,
            peak_main_rss=None, stopped_by=signum.name,
        )
        if all(s["name"] != stage for s in manifest["stages"]):
            manifest["stages"].append(failure.to_dict())
    finally:
        manifest["ended"] = rundir.now_iso()
        manifest["wall_s"] = round(time.monotonic() - t0, 3)
        if failure is not None:
            manifest["status"] = failure.status
        elif completed:
            manifest["status"] = "ok"
        else:  # the harness itself failed (an exception of its own): the record is not whole
            manifest["status"] = "failed"
            manifest["failure"] = {"stage": stage, "status": "failed", "where": None,
                                   "message": "the harness stopped on an error of its own"}
        if failure is not None:
            manifest["failure"] = {
                "stage": failure.name, "status": failure.status, "message": failure.message,
                "where": failure.last,
            }
            if failure.node is not None:
                manifest["failure"].update(rank=failure.rank, node=failure.node)
        with diskfull.as_error():
            rundir.write_manifest(run_dir, manifest, manifest_name)
    if failure is not None:
        log = (stage_dir(run_dir, failure.name) if dist is None
               else distributed.node_dir(run_dir, failure.name, dist)) / STAGE_LOG_FILE
        what = {
            "failed": "failed",
            "killed": "was killed",
            "limit": "was stopped by the harness",
            "timeout": "was stopped by the harness",
            "interrupted": "was interrupted",
            "terminated": "was terminated",
        }[failure.status]
        if failure.error in INPUT_ERRORS:
            what = "stopped on bad input"
        text = f"stage {failure.name!r} {what}{_where(failure)}: {failure.message} (log: {log})"
        if failure.status == "terminated" and failure.stopped_by is not None:
            raise Terminated(text, run_dir, signal.Signals[failure.stopped_by])
        if failure.status == "interrupted":
            raise Interrupted(text, run_dir)
        if failure.error in INPUT_ERRORS:
            raise StageInputError(text, run_dir)
        raise RunFailed(text, run_dir)
    return run_dir
