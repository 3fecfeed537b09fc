"""``manifest.json``, ``manifest-node<K>.json`` and ``agent.json``: one model each, written and read.

The harness process (:mod:`harness.control`) constructs these and writes them through one
atomic writer (:func:`harness.control.rundir.write_record`, over
:func:`harness.records.atomic.replace_whole`); every reader (``analysis/``,
``report/``, ``gate/``, ``harness merge``) gets them back from :func:`parse_manifest` or
:func:`parse_agent_record`, never the raw JSON. Fields added later are optional, so a run
directory written before them still reads; fields this harness does not know pass unread.

Strict: a number written as a string is as wrong as the writer would have made it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from harness.records.vocab import Status

MANIFEST_VERSION = 1

# A status is written as its word; strict mode would accept only the enum member itself.
StatusField = Annotated[Status, Field(strict=False)]


class _Record(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class Where(_Record):
    """The stage's last cell state (``last``, ``failure.where``, each of ``ranks``)."""

    epoch: int
    step: int
    total: int
    phase: str


class SamplingRates(_Record):
    """What the sampler achieved in a stage (``sampling``); ``policy``: its thread's scheduling
    policy, ``batch`` (sampling.background) or ``normal``."""

    ticks: int | None = None
    full_ticks: int | None = None
    full_reads: int | None = None
    rss_hz: float | None = None
    full_hz: float | None = None
    full_max_gap_s: float | None = None
    max_tick_ms: float | None = None
    cpu_ms_per_tick: float | None = None
    policy: Literal["normal", "batch"] | None = None


class CpuSeconds(_Record):
    user: float
    system: float


class DiskFullRecord(_Record):
    """Where the disk filled during a stage (``harness.control.diskfull``)."""

    path: str | None = None  # the file that could not be written
    memray_stopped: str | None = None  # ISO time memray said it stopped tracking
    unwritten: str | None = None  # the harness's own file that could not be written


class MemoryLimit(_Record):
    """The memory available to a stage's processes (``memory_limit``, ``oom.limit``): ``bytes``,
    and where the figure comes from: ``limits.memory`` (a memory cgroup the harness made for the
    stage), ``cgroup`` (the memory cgroup the harness itself runs in, the smallest limit on its
    path), or ``machine`` (MemTotal, no cgroup limits it)."""

    bytes: int
    source: Literal["limits.memory", "cgroup", "machine"]
    cgroup: str | None = None  # the cgroup's path under the memory controller's mount
    # limits.memory: the most the stage's cgroup was charged (v1 memory.max_usage_in_bytes, v2
    # memory.peak): its processes' anonymous memory and the page cache they brought in
    peak_charged: int | None = None


class OomVictim(_Record):
    """The process the kernel's OOM killer killed: its pid, its role (main, worker N, rank R,
    rank R worker N) and, in a distributed stage, its rank."""

    pid: int | None = None
    role: str
    rank: int | None = None


class OomPostMortem(_Record):
    """The kernel's OOM killer killed a process of the stage (``oom``): who, where, under which
    limit, and what told the harness so. The footprint, the growth and the allocation sites of the
    last seconds are read from the stage's samples and captures by the analysis
    (:mod:`harness.analysis.oom`)."""

    victim: OomVictim
    # the epoch, step and phase at the victim's last sample (its rank's cell, in a distributed stage)
    epoch: int | None = None
    step: int | None = None
    phase: str | None = None
    t: float | None = None  # wall clock of the victim's last sample, seconds since the epoch
    victim_rss: int | None = None  # the victim's RSS at its last sample
    limit: MemoryLimit | None = None
    counter: str  # the OOM-kill counter that rose: a file of the cgroup, or /proc/vmstat
    oom_kills: int  # by how much it rose during the stage
    evidence: str  # what named the victim: the signal, or the DataLoader's line in the log


class StageOutcome(_Record):
    """How one stage ended (an entry of ``stages``)."""

    name: str
    status: StatusField
    exit_code: int | None = None
    signal: str | None = None  # the signal that ended the stage's main process
    started: str | None = None
    ended: str | None = None
    wall_s: float | None = None
    last: Where | None = None
    message: str = ""
    sampling: SamplingRates | None = None
    peak_tree_rss: int | None = None
    peak_main_rss: int | None = None
    error: str | None = None  # the type of the stage's own error (stage_error), when it recorded one
    stopped_by: str | None = None  # the signal that stopped the harness: SIGINT, SIGTERM, SIGHUP
    killed_descendants: list[int] | None = None  # left running by the stage, killed by the harness
    # How the sampler saw its DataLoader workers started: fork | spawn | forkserver (joined by "+"
    # when several) | none; None when nothing sampled the stage.
    worker_start_method: str | None = None
    # A distributed stage: the global rank it failed in (the first to fail, or the largest when
    # the tree passed a limit), this node's rank, and each rank's last cell state.
    rank: int | None = None
    node: int | None = None
    ranks: dict[str, Where | None] | None = None
    # CPU seconds the stage's processes used, its DataLoader workers included once reaped; and
    # how long the harness took after the stage process exited, which wall_s includes.
    cpu_s: CpuSeconds | None = None
    after_exit_s: float | None = None
    disk_full: DiskFullRecord | None = None  # the disk filled: where, when memray stopped
    memory_limit: MemoryLimit | None = None  # the memory available to the stage's processes
    oom: OomPostMortem | None = None  # status oom_killed: the post-mortem


class Failure(_Record):
    """The run's failure: the stage, its status and message, where it was (``failure``)."""

    stage: str | None = None
    status: StatusField | None = None
    message: str | None = None
    where: Where | None = None
    rank: int | None = None
    node: int | None = None


class WorkloadProvenance(_Record):
    """Which code a workload ran: its file, the file's sha256, the git revision holding it."""

    entry: str | None = None
    file: str | None = None
    sha256: str | None = None
    git_root: str | None = None
    git_revision: str | None = None
    dirty: bool | None = None


class Provenance(_Record):
    """Where and with what the harness ran; ``git_revision`` is the harness checkout's."""

    python: str | None = None
    versions: dict[str, str | None] | None = None
    host: str | None = None
    platform: str | None = None
    cpu_count: int | None = None
    git_revision: str | None = None
    command_line: list[str] | None = None


class ScenarioEcho(_Record):
    """The manifest's echo of the resolved scenario, as the harness that wrote it had it: any
    keys, of which the name and the stages are held to their types. Values a reader needs come
    from the run's ``scenario.yaml`` through :class:`harness.records.scenario.Scenario`."""

    name: str | None = None
    stages: list[str] | None = None

    def as_dict(self) -> dict[str, Any]:
        """Every key it holds, as written."""
        return self.model_dump(mode="json", exclude_unset=True)


class Manifest(Provenance):
    """``manifest.json`` (and node K's ``manifest-node<K>.json``): provenance, each stage's outcome.

    ``scenario`` echoes the resolved scenario as the run wrote it (``harness compare`` diffs it);
    a value of it is read through the run's ``scenario.yaml`` (:func:`harness.records.scenario.
    read_resolved`), never from here.
    """

    manifest_version: int | None = None
    kind: Literal["run", "bare"] = "run"
    scenario_name: str = ""
    scenario: ScenarioEcho | None = None
    workload: WorkloadProvenance | None = None
    started: str | None = None
    ended: str | None = None
    wall_s: float | None = None
    status: StatusField
    stages: list[StageOutcome] = []
    failure: Failure | None = None
    merged_from: dict[str, str] | None = None  # harness merge: node -> the run directory it came from

    def stage(self, name: str) -> StageOutcome | None:
        return next((s for s in self.stages if s.name == name), None)


class RankFailure(_Record):
    """The rank torchrun saw fail first (``agent.json``'s ``failure``)."""

    rank: int
    local_rank: int
    pid: int
    exit_code: int
    signal: str | None = None
    ranks_failed: list[int] = []
    ranks_stopped: list[int] = []  # those torchrun stopped itself once another had failed

    def describe(self) -> str:
        """One line: ``rank 1 (local rank 1, pid 123) was killed by SIGKILL``."""
        how = f"was killed by {self.signal}" if self.signal else f"exited with {self.exit_code}"
        return f"rank {self.rank} (local rank {self.local_rank}, pid {self.pid}) {how}"


class AgentRecord(_Record):
    """``agent.json``, beside a distributed stage's node log: how torchrun's agent ended."""

    node_rank: int
    nnodes: int
    nproc_per_node: int
    backend: str
    rdzv_endpoint: str
    pid: int
    exit_code: int | None = None
    failure: RankFailure | None = None
    rendezvous: str | None = None  # the nodes never met: why, in one line


def parse_manifest(data: Any) -> Manifest:
    """A manifest from its parsed JSON; pydantic's ValidationError names the field at fault."""
    return Manifest.model_validate(data)


def parse_agent_record(data: Any) -> AgentRecord:
    return AgentRecord.model_validate(data)
