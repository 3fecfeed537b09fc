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
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from pydantic import ValidationError

from harness.control import diskfull, distributed, memlimit, preflight, rundir
from harness.control.console import Console, progress_text
from harness.control.sampler import TreeSampler, TreeTotals
from harness.errors import (
    Interrupted,
    OutOfMemory,
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
from harness.records import jsonio
from harness.records.manifest import (
    MANIFEST_VERSION,
    AgentRecord,
    CpuSeconds,
    Failure,
    Manifest,
    MemoryLimit,
    OomPostMortem,
    OomVictim,
    Provenance,
    SamplingRates,
    ScenarioEcho,
    StageOutcome,
    Where,
    WorkloadProvenance,
    parse_manifest,
)
from harness.records.probe_config import ProbeConfig
from harness.records.samples import SampleRow
from harness.records.scenario import Scenario, dump
from harness.records.vocab import Status
from harness.sizes import MiB, format_size

# Errors a stage stops on that say its input was bad (exit 2), not that the workload failed.
INPUT_ERRORS = ("DataError", "ScenarioError")


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


def _stage_error(stage_path: Path, instrumented: bool) -> StageError | None:
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
                    return StageError(str(ev.get("error")), str(ev.get("message") or ""))
        return None
    for line in reversed(_log_lines(stage_path)):
        match = _HARNESS_ERROR_LINE.match(line)
        if match:
            return StageError(match.group(1), match.group(2))
    return None


def _log_lines(stage_path: Path) -> list[str]:
    log = stage_path / STAGE_LOG_FILE
    if not log.exists():
        return []
    return [ln.strip() for ln in log.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]


def _last_output(stage_path: Path) -> str | None:
    """The last line a stage printed (a hint for a failure it recorded no error for)."""
    lines = _log_lines(stage_path)
    return lines[-1] if lines else None


# ---- what the harness found, as typed facts ------------------------------------------------------


@dataclass(frozen=True)
class RssLimitPassed:
    """The stage's tree passed limits.max_rss_mb; ``rank``: the rank holding the most, if ranks."""

    tree_rss: int
    limit_mb: float
    rank: int | None = None
    rank_rss: int | None = None

    status = Status.LIMIT

    def message(self) -> str:
        largest = ""
        if self.rank is not None and self.rank_rss is not None:
            largest = f"; rank {self.rank} held the most ({format_size(self.rank_rss, unit='MiB', digits=0)})"
        return (f"tree RSS {format_size(self.tree_rss, unit='MiB', digits=0)} exceeded "
                f"limits.max_rss_mb ({self.limit_mb:g} MiB){largest}")


@dataclass(frozen=True)
class TimeoutPassed:
    """The stage ran past limits.timeout_s."""

    timeout_s: float

    status = Status.TIMEOUT

    def message(self) -> str:
        return f"stage ran past limits.timeout_s ({self.timeout_s:g} s)"


LimitPassed = RssLimitPassed | TimeoutPassed


# The DataLoader's words for a worker the kernel killed (torch/csrc/DataLoader.cpp), and for one
# found gone (torch/utils/data/dataloader.py); both name the pid.
_WORKER_KILLED = re.compile(r"DataLoader worker \(pid\(?s?\)? ?(\d+)[^)]*\) "
                            r"(?:is killed by signal: Killed|exited unexpectedly)")


def _oom_message(r: OomPostMortem) -> str:
    """The one line for a stage whose process the kernel's OOM killer killed."""
    pid = f" (pid {r.victim.pid})" if r.victim.pid is not None else ""
    text = f"the kernel's OOM killer killed {r.victim.role}{pid}"
    if r.limit is not None:
        text += f" under a memory limit of {format_size(r.limit.bytes, unit='MiB', digits=0)}"
        text += f" ({r.limit.source}{': ' + r.limit.cgroup if r.limit.cgroup else ''})"
    return text


@dataclass(frozen=True)
class OomWitnesses:
    """What else saw an OOM kill, beside the stage's log and torchrun: the kernel's log (``kills``
    since the stage started, or ``kernel_error``: why it could not be read), the memory cgroup the
    stage's processes are charged to as the kernel names it (``cgroup``: the stage's own when
    ``stage_cgroup``, else the harness's), when the sampler last saw each process
    (``last_seen``: pid -> t), and the sampler's last tick before the OOM-kill counter was seen
    higher and the tick that saw it (``rose_after``, ``rose_at``; None where it was not watched)."""

    kills: tuple[memlimit.KernelKill, ...] = ()
    kernel_error: str | None = None
    cgroup: str | None = None
    stage_cgroup: bool = True
    last_seen: Mapping[int, float] = field(default_factory=dict)
    rose_after: float | None = None
    rose_at: float | None = None


def _rank_of_role(role: str) -> int | None:
    """``rank 1`` and ``rank 1 worker 0`` belong to rank 1."""
    parts = role.split()
    return int(parts[1]) if len(parts) > 1 and parts[0] == "rank" and parts[1].isdigit() else None


def _victim(pid: int, roles: Mapping[int, str], root: int | None, agent: AgentRecord | None) -> OomVictim:
    role = roles.get(pid) or ("main" if pid == root and agent is None else "a process of the stage")
    return OomVictim(pid=pid, role=role, rank=_rank_of_role(role))


def _kernel_victim(w: OomWitnesses, roles: Mapping[int, str], root: int | None,
                   agent: AgentRecord | None) -> tuple[OomVictim, str] | None:
    """The first process of this stage the kernel's log says its OOM killer killed: a pid of the
    stage's tree charged to its cgroup (or one below), or any process charged to the stage's own
    cgroup (one the sampler never saw). Other processes' kills on the machine (other jobs, other
    stages, a pid reused) are passed over, and so are all where the kernel names cgroups other
    than this process sees them (a container's cgroup namespace: its pids may be its own too)."""
    ours = set(roles) | ({root} if root is not None else set())
    if agent is not None and agent.failure is not None:
        ours.add(agent.failure.pid)
    below = (w.cgroup or "").rstrip("/") + "/"
    for kill in w.kills:
        charged = None if w.cgroup is None or kill.memcg is None else (
            kill.memcg == w.cgroup or kill.memcg.startswith(below))
        if charged is False:
            continue
        if kill.pid in ours or (charged and w.stage_cgroup):
            return _victim(kill.pid, roles, root, agent), f"kernel: {kill.line}"
    return None


def _first_rank_gone(w: OomWitnesses, roles: Mapping[int, str],
                     agent: AgentRecord) -> tuple[OomVictim, str] | None:
    """The failed rank whose samples stopped first, a tick or more before any other's.

    A rank the sampler no longer saw at the last tick before the OOM-kill counter rose had died
    before the kill, of something else: it is passed over. Ranks that stopped within one tick of
    each other cannot be told apart this way (None).
    """
    failed = set(agent.failure.ranks_failed) if agent.failure is not None else set()
    seen = sorted((w.last_seen[pid], rank, pid) for pid, role in roles.items()
                  if (rank := _rank_of_role(role)) is not None and role == f"rank {rank}"
                  and pid in w.last_seen and (not failed or rank in failed)
                  and (w.rose_after is None or w.last_seen[pid] >= w.rose_after))
    if len(seen) < 2 or seen[0][0] >= seen[1][0]:
        return None
    (t, rank, pid), (t_next, other, _) = seen[0], seen[1]
    text = (f"samples: rank {rank} (pid {pid}) was last seen {t_next - t:.2f} s before "
            f"rank {other}, the first of the failed ranks to go")
    if w.rose_at is not None:
        text += f", {w.rose_at - t:.2f} s before the OOM-kill counter was seen higher"
    return OomVictim(pid=pid, role=f"rank {rank}", rank=rank), text


def find_oom_victim(
    rc: int | None,
    log_lines: list[str],
    roles: Mapping[int, str],
    root: int | None,
    agent: AgentRecord | None = None,
    witnesses: OomWitnesses | None = None,
) -> tuple[OomVictim, str] | None:
    """Which process the OOM killer killed, when an OOM-kill counter rose, and what says so: the one
    place that decides. ``roles``: pid -> role as the sampler named them.

    The evidence, strongest first: the kernel's own log naming a process of the stage; a DataLoader
    worker the stage's log names; for a distributed stage, a rank torchrun saw killed by SIGKILL
    when it also logged stopping the others itself (``ranks_stopped``), else the failed rank whose
    samples stopped first (torchrun stamps failures to the second and its stopped ranks die within
    it, so without that its choice of the first is a guess at a tie), else the rank torchrun saw
    killed by SIGKILL; the stage's main process killed by SIGKILL. None when nothing of the stage
    was killed (the counter rose for a process of no stage of ours). Where the kernel's log could
    not be read, the evidence says so.
    """
    w = witnesses or OomWitnesses()
    found = _kernel_victim(w, roles, root, agent)
    if found is not None:
        return found
    found = _log_victim(log_lines, roles) or _signal_victim(rc, roles, root, agent, w)
    if found is not None and w.kernel_error is not None:
        return found[0], f"{found[1]} (the kernel's log was not read: {w.kernel_error})"
    return found


def _log_victim(log_lines: list[str], roles: Mapping[int, str]) -> tuple[OomVictim, str] | None:
    for line in reversed(log_lines):
        match = _WORKER_KILLED.search(line)
        if match:
            pid = int(match.group(1))
            role = roles.get(pid, "worker")
            return OomVictim(pid=pid, role=role, rank=_rank_of_role(role)), match.group(0)
    return None


def _signal_victim(rc: int | None, roles: Mapping[int, str], root: int | None,
                   agent: AgentRecord | None, w: OomWitnesses) -> tuple[OomVictim, str] | None:
    if agent is not None and agent.failure is not None:
        f = agent.failure
        torchrun = OomVictim(pid=f.pid, role=f"rank {f.rank}", rank=f.rank), f"torchrun: {f.describe()}"
        if f.signal == "SIGKILL" and f.ranks_stopped and f.rank not in f.ranks_stopped:
            stopped = ", ".join(str(r) for r in f.ranks_stopped)
            return torchrun[0], f"{torchrun[1]}; it stopped rank(s) {stopped} itself"
        if f.signal is not None or len(f.ranks_failed) > 1:
            found = _first_rank_gone(w, roles, agent)
            if found is not None:
                return found
        if f.signal == "SIGKILL":
            return torchrun
    if agent is None and rc == -signal.SIGKILL:
        return OomVictim(pid=root, role="main"), "the stage's main process was killed by SIGKILL"
    return None


@dataclass(frozen=True)
class StageError:
    """The error a stage (or a rank) recorded of its own: its type and message."""

    kind: str
    message: str

    def text(self) -> str:
        return f"{self.kind}: {self.message}".rstrip(": ")


@dataclass(frozen=True)
class Classified:
    """A stage's status, its one-line message, and the type of its own error when it recorded one."""

    status: Status
    message: str
    error: str | None = None


def stopped(signum: signal.Signals) -> Classified:
    """A stage stopped because the harness was told to stop."""
    if signum == signal.SIGINT:
        return Classified(Status.INTERRUPTED, "interrupted by Ctrl-C")
    return Classified(Status.TERMINATED, f"terminated by {signum.name}")


def classify_outcome(
    rc: int | None,
    *,
    stopped_by: signal.Signals | None = None,
    limit: LimitPassed | None = None,
    stage_error: StageError | None = None,
    last_output: str | None = None,
    agent: AgentRecord | None = None,
    rank_error: StageError | None = None,
    oom: OomPostMortem | None = None,
) -> Classified:
    """How a stage ended, from the facts alone (no file read, nothing parsed back).

    First cause wins: the harness told to stop (``stopped_by``), then a limit the harness stopped
    the stage for, then the exit code. A non-zero exit is described by the error the stage
    recorded (``stage_error``), else by its exit code, with its ``last_output`` as a hint (a bare
    run, which has no events). A distributed stage's non-zero exit is described by its agent's
    record instead: the nodes never met, or which rank failed first and how (``rank_error``: that
    rank's own error).
    An OOM kill (``oom``: a SIGKILL while an OOM-kill counter rose) comes after the harness's own
    stops and before the exit code: the workload's error after it (a DataLoader worker killed) is
    its consequence.
    """
    if stopped_by is not None:
        return stopped(stopped_by)
    if limit is not None:
        return Classified(limit.status, limit.message())
    if oom is not None:
        return Classified(Status.OOM_KILLED, _oom_message(oom))
    if rc == 0:
        return Classified(Status.OK, "")
    if agent is not None:
        if agent.rendezvous:
            return Classified(Status.FAILED, agent.rendezvous, "RendezvousError")
        if agent.failure is not None:
            failure = agent.failure
            if failure.signal:
                return Classified(Status.KILLED, failure.describe())
            if rank_error is not None:
                return Classified(Status.FAILED, f"rank {failure.rank}: {rank_error.text()}",
                                  rank_error.kind)
            return Classified(Status.FAILED, failure.describe())
    if rc is not None and rc < 0:
        return Classified(Status.KILLED, f"killed by {signal.Signals(-rc).name}")
    if stage_error is not None:
        return Classified(Status.FAILED, stage_error.text(), stage_error.kind)
    text = f"exit code {rc}"
    if last_output:
        text += f" (last output: {last_output[:300]})"
    return Classified(Status.FAILED, text)


# ---- the stage's process -------------------------------------------------------------------------


class StageProcess:
    """One stage's process and its tree, from spawn to teardown.

    :meth:`run` starts it (its own session and process group, with a pipe it watches for the
    harness's end), samples it, stops its whole tree when it passes a limit or the harness is
    told to stop, and once it has exited kills what it left running. What happened stays on the
    object as facts (``returncode``, ``stopped_by``, ``limit``, ``killed``) for
    :func:`classify_outcome`.
    """

    def __init__(self, scenario: Scenario, run_dir: Path, stage: str, console: Console,
                 instrumented: bool) -> None:
        self.scenario = scenario
        self.run_dir = run_dir
        self.stage = stage
        self.console = console
        self.instrumented = instrumented
        self.dist = scenario.distributed
        # The stage's log and samples; a distributed stage's ranks each have a directory beside them.
        self.dir = (stage_dir(run_dir, stage) if self.dist is None
                    else distributed.node_dir(run_dir, stage, self.dist))
        self.sampler: TreeSampler | None = None
        self.returncode: int | None = None
        self.stopped_by: signal.Signals | None = None
        self.limit: LimitPassed | None = None
        self.killed: list[int] = []
        self.started_iso = ""
        self.wall_s = 0.0
        self.after_exit_s = 0.0
        self.cpu_s: CpuSeconds | None = None
        self.memory_limit: MemoryLimit | None = None
        self.oom_counter: memlimit.OomCounter | None = None
        self.oom_kills = 0  # by how much the counter rose while the stage ran
        self.kernel_log: memlimit.KernelLog | None = None
        self.kernel_kills: list[memlimit.KernelKill] = []
        # the stage's own cgroup's counter, watched each tick: the ticks either side of its rise
        self._watched: memlimit.OomCounter | None = None
        self._oom_before: int | None = None
        self._tick_t: float | None = None
        self.rose_after: float | None = None
        self.rose_at: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._t0 = 0.0

    def run(self) -> None:
        """Start the stage and wait for it; teardown whatever ends the wait."""
        self.dir.mkdir(parents=True, exist_ok=True)
        env = self._environment()
        self.started_iso, self._t0 = rundir.now_iso(), time.monotonic()
        usage0 = resource.getrusage(resource.RUSAGE_CHILDREN)  # the stage is this process's one child
        # The stage reads the other end of this pipe and stops its whole group when it closes: when
        # this process ends, however it ends (SIGKILL included), no stage runs on.
        cgroup = self._cgroup()
        watch_read, watch_write = os.pipe()
        before = self.oom_counter.read() if self.oom_counter is not None else None
        self._oom_before = before
        if cgroup is not None:
            self._watched = self.oom_counter
        self.kernel_log = memlimit.KernelLog()  # from its end: what the kernel logs from now on
        try:
            proc = self._spawn(env, watch_read)
            if cgroup is not None:
                # Moved in before its interpreter has imported anything; what it starts follows it.
                self._join(proc, cgroup)
        except BaseException:
            os.close(watch_write)
            self.kernel_log.close()
            if cgroup is not None:
                cgroup.remove()
            raise
        finally:
            os.close(watch_read)
        self._proc = proc
        pump = threading.Thread(target=_pump, args=(proc.stdout, self.dir / STAGE_LOG_FILE, self.console),
                                daemon=True)
        try:
            pump.start()
            self._start_sampler(proc.pid)
            self._wait(proc)
            proc.wait()
            exited = time.monotonic()
        finally:
            # Also when a second interruption lands here: the stage is over, whatever it left runs no
            # longer, and the sampler stops writing.
            self._teardown(proc.pid)
            os.close(watch_write)
            after = self.oom_counter.read() if self.oom_counter is not None else None
            if before is not None and after is not None:
                self.oom_kills = max(after - before, 0)
            if self.oom_kills > 0:
                self.kernel_kills = self.kernel_log.kills()
            self.kernel_log.close()
            if cgroup is not None:
                if self.memory_limit is not None:
                    self.memory_limit.peak_charged = cgroup.peak()
                cgroup.remove()
        # Whatever held the stage's output pipe open is gone now, so this does not wait for long.
        pump.join(timeout=5)
        self._name_killed()
        self.wall_s = time.monotonic() - self._t0
        usage1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.cpu_s = CpuSeconds(user=round(usage1.ru_utime - usage0.ru_utime, 3),
                                system=round(usage1.ru_stime - usage0.ru_stime, 3))
        self.returncode = proc.returncode
        self.after_exit_s = round(self._t0 + self.wall_s - exited, 3)

    def _cgroup(self) -> memlimit.StageCgroup | None:
        """The stage's own memory cgroup (limits.memory), and the limit and counter it reads."""
        limit = self.scenario.limits.memory
        cgroup = None
        if limit is not None:
            name = "harness-{}-{}".format(os.getpid(), re.sub(r"[^A-Za-z0-9_.-]", "_", self.stage))
            cgroup = memlimit.StageCgroup.create(name, limit)
            self.memory_limit, self.oom_counter = cgroup.limit_record(), cgroup.counter()
        else:  # the stage runs where the harness does
            self.memory_limit, self.oom_counter = memlimit.limit_in_force(), memlimit.counter_for(None)
        return cgroup

    @staticmethod
    def _join(proc: subprocess.Popen[bytes], cgroup: memlimit.StageCgroup) -> None:
        try:
            cgroup.add(proc.pid)
        except OSError as exc:
            _kill_group(proc.pid)
            proc.wait()
            raise ScenarioError(f"limits.memory: cannot move the stage into {cgroup.dir}: "
                                f"{exc.strerror or exc}") from None

    def oom_post_mortem(self, agent: AgentRecord | None) -> OomPostMortem | None:
        """The OOM kill's facts, when the counter rose and a process of the stage was killed."""
        if self.oom_kills <= 0 or self.stopped_by is not None or self.limit is not None:
            return None
        roles = dict(self.sampler.stats.roles) if self.sampler is not None else {}
        root = self._proc.pid if self._proc is not None else None
        limit = self.memory_limit
        stage_cgroup = limit is not None and limit.source == "limits.memory"
        witnesses = OomWitnesses(
            kills=tuple(self.kernel_kills),
            kernel_error=self.kernel_log.error if self.kernel_log is not None else None,
            cgroup=limit.cgroup if limit is not None and stage_cgroup else memlimit.own_cgroup(),
            stage_cgroup=stage_cgroup,
            last_seen={pid: row.t for pid, row in self.sampler.last_rows.items()}
            if self.sampler is not None else {},
            rose_after=self.rose_after, rose_at=self.rose_at)
        found = find_oom_victim(self.returncode, _log_lines(self.dir), roles, root, agent, witnesses)
        if found is None:
            return None
        victim, evidence = found
        row: SampleRow | None = None
        if self.sampler is not None and victim.pid is not None:
            row = self.sampler.last_rows.get(victim.pid)
        assert self.oom_counter is not None
        return OomPostMortem(
            victim=victim,
            epoch=row.epoch if row is not None else None,
            step=row.step if row is not None else None,
            phase=row.phase if row is not None else None,
            t=row.t if row is not None else None,
            victim_rss=row.rss if row is not None else None,
            limit=self.memory_limit,
            counter=self.oom_counter.name,
            oom_kills=self.oom_kills,
            evidence=evidence,
        )

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        env.pop(STAGE_DIR_ENV, None)
        if self.instrumented:
            if self.dist is None:  # a rank makes its own cell, once it knows its rank
                cellmod.create(self.dir / CELL_FILE)
            (self.dir / PROBE_CONFIG_FILE).write_text(
                json.dumps(_probe_config(self.scenario, self.stage), indent=1))
            env[STAGE_DIR_ENV] = str(self.dir)
        return env

    def _spawn(self, env: dict[str, str], watch_read: int) -> subprocess.Popen[bytes]:
        module = "harness.probe.stage" if self.dist is None else "harness.control.agent"
        return subprocess.Popen(
            [sys.executable, "-m", module, str(self.run_dir), self.stage, "--watch-fd", str(watch_read)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # its own process group: we can stop the whole tree at once
            pass_fds=(watch_read,),
        )

    def _start_sampler(self, pid: int) -> None:
        if not self.instrumented:
            return
        sc = self.scenario
        self.sampler = TreeSampler(
            pid, self.stage, self.dir / SAMPLES_DIR, self.dir / CELL_FILE if self.dist is None else None,
            sc.sampling.rss_hz, sc.sampling.full_hz, self._on_tick,
            ranks=stage_dir(self.run_dir, self.stage) if self.dist is not None else None,
            background=sc.sampling.background,
        )
        self.sampler.start()

    def _wait(self, proc: subprocess.Popen[bytes]) -> None:
        """Poll until the stage exits: progress, the timeout, and the harness told to stop."""
        timeout = self.scenario.limits.timeout_s
        try:
            while True:
                try:
                    proc.wait(timeout=0.25)
                    break
                except subprocess.TimeoutExpired:
                    pass
                elapsed = time.monotonic() - self._t0
                if self.sampler is not None:
                    self.console.status(progress_text(self.stage, self.sampler.totals, elapsed))
                if timeout is not None and elapsed > timeout and self.limit is None:
                    self.limit = TimeoutPassed(timeout)
                    self._stop_tree()
        except KeyboardInterrupt:
            self.stopped_by = signal.SIGINT
        except SignalReceived as exc:
            self.stopped_by = signal.Signals(exc.signum)
        finally:
            # Workers outlive a killed main process only briefly; never leave one behind.
            self._stop_tree()
            self.console.end_status()

    def _on_tick(self, totals: TreeTotals) -> None:
        """The sampler's every tick: note when the OOM-kill counter rose; stop the tree once it
        passes limits.max_rss_mb."""
        if self._watched is not None and self.rose_at is None and self._oom_before is not None:
            count = self._watched.read()
            if count is not None and count > self._oom_before:
                self.rose_after, self.rose_at = self._tick_t, totals.t
            self._tick_t = totals.t
        limit_mb = self.scenario.limits.max_rss_mb
        if not limit_mb or totals.tree_rss <= limit_mb * MiB or self.limit is not None:
            return
        rank = rank_rss = None
        if totals.rank_rss:
            rank, rank_rss = max(totals.rank_rss.items(), key=lambda kv: (kv[1], -kv[0]))
        self.limit = RssLimitPassed(totals.tree_rss, limit_mb, rank, rank_rss)
        self._stop_tree()

    def _stop_tree(self) -> None:
        if self._proc is None:
            return
        _kill_group(self._proc.pid)
        if self.dist is not None and self.sampler is not None:  # torchrun put each rank in a session of its own
            _kill_rank_groups(self.sampler)

    def _teardown(self, pid: int) -> None:
        self._stop_tree()  # a no-op unless the clean-up in _wait was cut short
        if self.sampler is not None:
            self.sampler.stop()
            self.sampler.join(timeout=10)
            self.killed = _kill_descendants(self.sampler.seen(), pid, pid)

    def _name_killed(self) -> None:
        if not self.killed:
            return
        note = (f"harness: stage {self.stage!r} left {len(self.killed)} process(es) running; killed "
                + ", ".join(str(pid) for pid in self.killed))
        with open(self.dir / STAGE_LOG_FILE, "a", encoding="utf-8") as log:
            log.write(note + "\n")
        self.console.line(note)

    def last(self) -> Where | None:
        """The stage's last cell state (one process; a distributed stage's is its ranks')."""
        cell = self.sampler.totals.cell if self.sampler is not None else None
        if cell is None or self.dist is not None:
            return None
        return Where(epoch=cell.epoch, step=cell.step, total=cell.total, phase=cell.phase)


def run_stage(
    scenario: Scenario,
    run_dir: Path,
    stage: str,
    console: Console,
    instrumented: bool,
) -> StageOutcome:
    """Run one stage and say how it ended."""
    sp = StageProcess(scenario, run_dir, stage, console, instrumented)
    sp.run()
    rc, dist, sampler = sp.returncode, scenario.distributed, sp.sampler
    # The files that describe a failure are read only for one (classify_outcome reads none).
    failed = rc != 0 and sp.stopped_by is None and sp.limit is None
    exited_non_zero = failed and rc is not None and rc > 0  # not killed by a signal
    stage_error = _stage_error(sp.dir, instrumented) if exited_non_zero else None
    last_output = _last_output(sp.dir) if exited_non_zero and not instrumented else None
    last = sp.last()
    rank: int | None = None
    ranks: dict[str, Where | None] | None = None
    agent: AgentRecord | None = None
    rank_error: StageError | None = None
    if dist is not None:
        limit_rank = sp.limit.rank if isinstance(sp.limit, RssLimitPassed) else None
        rank, ranks, rank_last, agent = _rank_facts(run_dir, stage, sp.dir, limit_rank)
        if failed and agent is not None and agent.failure is not None and not agent.failure.signal:
            rdir = stage_dir(run_dir, stage) / rank_dir_name(agent.failure.rank)
            rank_error = _stage_error(rdir if instrumented else sp.dir, instrumented)
        if instrumented:
            last = rank_last
    oom = sp.oom_post_mortem(agent)
    if oom is not None and oom.victim.rank is not None and oom.victim.rank != rank:
        # the kernel's victim, not torchrun's pick at a same-second tie
        rank = oom.victim.rank
        if instrumented and ranks is not None:
            last = ranks.get(str(rank))
    verdict = classify_outcome(rc, stopped_by=sp.stopped_by, limit=sp.limit, stage_error=stage_error,
                               last_output=last_output, agent=agent, rank_error=rank_error, oom=oom)
    return StageOutcome(
        name=stage,
        status=verdict.status,
        exit_code=rc,
        signal=signal.Signals(-rc).name if rc is not None and rc < 0 else None,
        started=sp.started_iso,
        ended=rundir.now_iso(),
        wall_s=round(sp.wall_s, 3),
        last=last,
        message=verdict.message,
        sampling=SamplingRates.model_validate(sampler.stats.rates()) if sampler is not None else None,
        peak_tree_rss=sampler.totals.peak_tree_rss if sampler is not None else None,
        peak_main_rss=sampler.totals.peak_main_rss if sampler is not None else None,
        error=verdict.error,
        stopped_by=sp.stopped_by.name if sp.stopped_by is not None else None,
        killed_descendants=sp.killed,
        worker_start_method=sampler.stats.worker_start_method() if sampler is not None else None,
        rank=rank,
        node=dist.node_rank if dist is not None else None,
        ranks=ranks,
        cpu_s=sp.cpu_s,
        after_exit_s=sp.after_exit_s,
        memory_limit=sp.memory_limit,
        oom=oom,
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


def _cell_state(path: Path) -> Where | None:
    """epoch, step, total and phase of a rank's cell file, as ``last`` holds them."""
    try:
        reader = cellmod.CellReader(path)
    except (OSError, ValueError):
        return None
    try:
        c = reader.read()
    finally:
        reader.close()
    return None if c is None else Where(epoch=c.epoch, step=c.step, total=c.total, phase=c.phase)


def _rank_facts(
    run_dir: Path, stage: str, node_path: Path, limit_rank: int | None
) -> tuple[int | None, dict[str, Where | None] | None, Where | None, AgentRecord | None]:
    """(rank, each rank's last cell state, the rank's last state, the agent's record) of a
    distributed stage: the rank that failed first (the agent's record), else the rank that held
    the most when the tree passed a limit."""
    spath = stage_dir(run_dir, stage)
    ranks = {str(r): _cell_state(d / CELL_FILE) for r, d in distributed.rank_dirs(spath).items()} or None
    agent = distributed.read_record(node_path)
    if agent is not None and agent.rendezvous:  # the nodes never met: no rank ran
        return None, ranks, None, agent
    rank = agent.failure.rank if agent is not None and agent.failure is not None else limit_rank
    if rank is None and ranks:
        rank_last = ranks[min(ranks, key=int)]  # the lowest rank's, for progress and the record
    else:
        rank_last = (ranks or {}).get(str(rank))
    return rank, ranks, rank_last, agent


def _where(outcome: StageOutcome) -> str:
    if not outcome.last:
        return f" in rank {outcome.rank}" if outcome.rank is not None else ""
    last = outcome.last
    bits = [f"rank {outcome.rank}"] if outcome.rank is not None else []
    if last.epoch:
        bits.append(f"epoch {last.epoch}")
    bits.append(f"step {last.step}")
    bits.append(f"phase {last.phase}")
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
    memlimit.check(scenario.limits.memory, source)
    check_device(scenario, source)
    distributed.check(scenario, source)
    run_dir = rundir.new_run_dir(reports, scenario.name, "" if instrumented else "-bare")
    dist = scenario.distributed
    name = manifest_name(scenario)
    with diskfull.at_start(run_dir):  # a full disk here leaves no run directory behind
        (run_dir / rundir.SCENARIO).write_text(dump(scenario), encoding="utf-8")
    manifest = Manifest(
        manifest_version=MANIFEST_VERSION,
        kind="run" if instrumented else "bare",
        scenario_name=scenario.name,
        scenario=ScenarioEcho.model_validate(scenario.to_dict()),
        # git_revision: the harness's; the workload's own is beside it
        **Provenance.model_validate(rundir.provenance()).model_dump(),
        workload=WorkloadProvenance.model_validate(rundir.workload_provenance(scenario.workload.entry)),
        started=rundir.now_iso(),
        ended=None,
        status=Status.RUNNING,
        stages=[],
    )
    with diskfull.at_start(run_dir):
        rundir.write_manifest(run_dir, manifest, name)
    console.line(f"harness: run directory {run_dir}")
    t0 = time.monotonic()
    failure: StageOutcome | None = None
    stage = scenario.stages[0]
    completed = False  # only a loop that ran to its end (or to a recorded failure) may say ok
    try:
        for stage in scenario.stages:
            outcome = run_stage(scenario, run_dir, stage, console, instrumented)
            outcome = diskfull.judge(outcome, stage_dir(run_dir, stage))
            manifest.stages.append(outcome)
            rundir.write_manifest(run_dir, manifest, name)
            if outcome.status != Status.OK:
                failure = outcome
                break
        completed = True
    except OSError as exc:
        if not diskfull.is_disk_full(exc):
            raise
        failure = diskfull.harness_outcome(StageOutcome, stage, exc)  # a write of the harness's own
        if manifest.stage(stage) is None:
            manifest.stages.append(failure)
    except (KeyboardInterrupt, SignalReceived) as exc:
        # Stopped outside run_stage's wait (its clean-up, between stages): never recorded as ok.
        signum = signal.SIGINT if isinstance(exc, KeyboardInterrupt) else signal.Signals(exc.signum)
        verdict = stopped(signum)
        now = rundir.now_iso()
        failure = StageOutcome(
            name=stage, status=verdict.status, exit_code=None, signal=None, started=now, ended=now,
            wall_s=0.0, last=None, message=verdict.message, sampling=None, peak_tree_rss=None,
            peak_main_rss=None, stopped_by=signum.name,
        )
        if manifest.stage(stage) is None:
            manifest.stages.append(failure)
    finally:
        manifest.ended = rundir.now_iso()
        manifest.wall_s = round(time.monotonic() - t0, 3)
        if failure is not None:
            manifest.status = failure.status
            manifest.failure = Failure(stage=failure.name, status=failure.status,
                                       message=failure.message, where=failure.last)
            if failure.node is not None:
                manifest.failure.rank, manifest.failure.node = failure.rank, failure.node
        elif completed:
            manifest.status = Status.OK
        else:  # the harness itself failed (an exception of its own): the record is not whole
            manifest.status = Status.FAILED
            manifest.failure = Failure(stage=stage, status=Status.FAILED, where=None,
                                       message="the harness stopped on an error of its own")
        with diskfull.as_error():
            rundir.write_manifest(run_dir, manifest, name)
    if failure is not None:
        log = (stage_dir(run_dir, failure.name) if dist is None
               else distributed.node_dir(run_dir, failure.name, dist)) / STAGE_LOG_FILE
        what = _WHAT[failure.status]
        if failure.error in INPUT_ERRORS:
            what = "stopped on bad input"
        text = f"stage {failure.name!r} {what}{_where(failure)}: {failure.message} (log: {log})"
        if failure.status == Status.TERMINATED and failure.stopped_by is not None:
            raise Terminated(text, run_dir, signal.Signals[failure.stopped_by])
        if failure.status == Status.INTERRUPTED:
            raise Interrupted(text, run_dir)
        if failure.status == Status.OOM_KILLED:
            raise OutOfMemory(text, run_dir)
        if failure.error in INPUT_ERRORS:
            raise StageInputError(text, run_dir)
        raise RunFailed(text, run_dir)
    return run_dir


# How the one-line error says a stage ended.
_WHAT = {
    Status.FAILED: "failed",
    Status.KILLED: "was killed",
    Status.OOM_KILLED: "ran out of memory",
    Status.LIMIT: "was stopped by the harness",
    Status.TIMEOUT: "was stopped by the harness",
    Status.INTERRUPTED: "was interrupted",
    Status.TERMINATED: "was terminated",
}


def manifest_name(scenario: Scenario) -> str:
    """The file the run's manifest goes in: node K > 0 of a job keeps its own beside node 0's
    (harness merge joins them)."""
    dist = scenario.distributed
    return node_manifest_name(dist.node_rank) if dist and dist.node_rank > 0 else rundir.MANIFEST


def record_late_stop(run_dir: Path, scenario: Scenario, signum: int) -> None:
    """Record in an ``ok`` manifest that the harness was stopped after its stages ended (while it
    wrote the report, or after): the run says ``interrupted`` or ``terminated``, as the exit code
    does, and its stages keep their own ``ok``. A manifest that says anything else is left as it is."""
    path = run_dir / manifest_name(scenario)
    try:
        manifest = parse_manifest(jsonio.read(path))
    except (jsonio.RecordError, ValidationError):
        return  # not ours to repair here: the reader names what is wrong with it
    if manifest.status != Status.OK:
        return
    verdict = stopped(signal.Signals(signum))
    manifest.status = verdict.status
    manifest.failure = Failure(status=verdict.status,
                               message=f"{verdict.message} after every stage had ended ok")
    rundir.write_manifest(run_dir, manifest, path.name)
