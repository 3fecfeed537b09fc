"""torchrun for a stage: the checks before a distributed run, the agent, and what the agent records.

A distributed stage (scenario ``distributed:``) starts as ``python -m
harness.control.agent RUN STAGE``; that process is torchrun's agent: :func:`run_agent`
calls ``torch.distributed``'s elastic launch in-process (c10d rendezvous, no restarts) with
``-m harness.probe.stage RUN STAGE --rank`` as each rank's program. The agent has no probe; each
rank goes live in ``stages/<stage>/rank<R>/`` (R its global rank, from ``RANK``). When the job
ends the agent writes ``agent.json`` beside the node's log: which rank failed first and how.

torchrun starts every rank in a session of its own, so neither the harness's kill of the stage's
process group nor the stage's watch of the harness reaches a rank; each rank watches the agent
instead (:func:`harness.probe.stage.watch_agent`) and kills its own group when the agent is gone.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import math
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Collection
from functools import partial
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from harness.control import rundir
from harness.errors import ScenarioError
from harness.layout import (
    AGENT_FILE,
    AGENT_PID_ENV,
    CELL_FILE,
    EVENTS_FILE,
    node_dir_name,
    parse_rank_dir,
    rank_dir_name,
    stage_dir,
)
from harness.probe.cell import CellReader, CellState
from harness.records.events import EVENT_ADAPTER, StageError
from harness.records.manifest import AgentRecord, RankFailure, parse_agent_record
from harness.records.scenario import DistributedConfig, Scenario
from harness.records.text import printable

# Seconds torchrun waits for the other ranks to end on SIGTERM after one failed, before SIGKILL.
SHUTDOWN_TIMEOUT_S = 5
# Where torchrun logs each rank it stops once another has failed ("Sending process %s closing
# signal %s", torch/distributed/elastic/multiprocessing/api.py).
_TORCHRUN_LOGGER = "torch.distributed.elastic.multiprocessing.api"
_CLOSING = "Sending process %s closing signal"


class StoppedRanks(logging.Handler):
    """The pids torchrun sent its closing signal: the ranks it stopped itself, after one failed.

    They die too, in the same second (and by SIGKILL where the rank's own handler ends its group),
    so torchrun's failure records alone cannot tell them from the rank that failed first. A torch
    that words or routes the line otherwise leaves this empty: the choice is then by time and kind.
    """

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.pids: set[int] = set()

    def emit(self, record: logging.LogRecord) -> None:
        if isinstance(record.msg, str) and record.msg.startswith(_CLOSING) and record.args:
            args = record.args if isinstance(record.args, tuple) else (record.args,)
            with contextlib.suppress(TypeError, ValueError):
                self.pids.add(int(args[0]))  # type: ignore[call-overload]

    def __enter__(self) -> StoppedRanks:
        logging.getLogger(_TORCHRUN_LOGGER).addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logging.getLogger(_TORCHRUN_LOGGER).removeHandler(self)


def _split(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.rpartition(":")
    return host.strip("[]"), int(port)


def is_local_host(host: str) -> bool:
    """Whether ``host`` names this machine (an address one of its interfaces can bind)."""
    try:
        if ipaddress.ip_address(host).is_loopback:
            return True
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    for family, _, _, _, addr in infos:
        with contextlib.suppress(OSError), socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.bind((addr[0], 0))
            return True
    return False


def hosts_store(dist: DistributedConfig) -> bool:
    """Whether this node's agent hosts the rendezvous store: node 0, on the endpoint's host."""
    if dist.rdzv_endpoint is None:
        return True
    return dist.node_rank == 0 and is_local_host(_split(dist.rdzv_endpoint)[0])


def check(scenario: Scenario, source: str) -> None:
    """Raise ScenarioError (naming ``source`` and the key) for a distributed section no job could run.

    Torch is imported only for the nccl check; the endpoint of a store another node hosts is tried
    for up to ``rdzv_timeout_s``, so a typo or a node 0 that never started is one line, not a hang.
    """
    dist = scenario.distributed
    if dist is None:
        return
    if dist.backend == "nccl":
        import torch

        if not torch.cuda.is_available():
            raise ScenarioError(
                f"{source}: distributed.backend: 'nccl' needs CUDA, and this machine has no CUDA "
                "device (use gloo)"
            )
        if not scenario.device.startswith("cuda"):
            raise ScenarioError(f"{source}: distributed.backend: 'nccl' runs on CUDA; set device: cuda")
        if dist.nproc_per_node > torch.cuda.device_count():
            raise ScenarioError(
                f"{source}: distributed.nproc_per_node: {dist.nproc_per_node} ranks with nccl, but "
                f"only {torch.cuda.device_count()} CUDA device(s) exist"
            )
    if dist.rdzv_endpoint is None:
        return
    host, port = _split(dist.rdzv_endpoint)
    try:
        socket.getaddrinfo(host, port)
    except OSError as exc:
        raise ScenarioError(
            f"{source}: distributed.rdzv_endpoint: cannot resolve {host!r} ({exc.strerror or exc})"
        ) from None
    if hosts_store(dist):
        return
    if not _reachable(host, port, dist.rdzv_timeout_s):
        raise ScenarioError(
            f"{source}: distributed.rdzv_endpoint: nothing answers at {dist.rdzv_endpoint} within "
            f"{dist.rdzv_timeout_s:g} s (distributed.rdzv_timeout_s); is node 0 running?"
        )


def _reachable(host: str, port: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        try:
            with socket.create_connection((host, port), timeout=max(0.1, min(left, 5.0))):
                return True
        except OSError:
            pass
        if time.monotonic() + 0.25 >= deadline:
            return False
        time.sleep(0.25)


def run_agent(run_dir: Path, stage: str, scenario: Scenario, record_dir: Path) -> int:
    """Run the stage's ranks under torchrun's elastic agent, in this process; the exit code.

    0 when every rank ended well, else 1; ``record_dir/agent.json`` says which rank failed.
    """
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous.api import RendezvousError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    dist = scenario.distributed
    assert dist is not None
    endpoint = dist.rdzv_endpoint or "127.0.0.1:0"  # port 0: the store binds a free one
    timeout = max(1, round(dist.rdzv_timeout_s))
    config = LaunchConfig(
        min_nodes=dist.nnodes,
        max_nodes=dist.nnodes,
        nproc_per_node=dist.nproc_per_node,
        # the same on every node (each node's run directory has its own name): the job's name
        run_id=f"harness-{scenario.name}-{stage}",
        # several nodes: the static rendezvous, so that node K's ranks are the K-th block of global
        # ranks (c10d would number nodes in the order they joined); node 0 hosts the store
        rdzv_backend="static" if dist.nnodes > 1 else "c10d",
        rdzv_endpoint=endpoint,
        rdzv_configs=(
            {"rank": dist.node_rank, "timeout": timeout} if dist.nnodes > 1 else
            {"is_host": hosts_store(dist), "join_timeout": timeout, "read_timeout": timeout}
        ),
        max_restarts=0,  # a failed rank ends the job: restarts would hide what it did
        monitor_interval=0.1,
        logs_specs=DefaultLogsSpecs(log_dir=os.devnull),  # the ranks write to this stage's log
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
    )
    os.environ[AGENT_PID_ENV] = str(os.getpid())
    record = AgentRecord(node_rank=dist.node_rank, nnodes=dist.nnodes,
                         nproc_per_node=dist.nproc_per_node, backend=dist.backend,
                         rdzv_endpoint=endpoint, pid=os.getpid())
    args = ("-u", "-m", "harness.probe.stage", str(run_dir), stage, "--rank")
    stopped = StoppedRanks()
    try:
        with stopped:
            elastic_launch(config, sys.executable)(*args)
        record.exit_code = 0
    except RendezvousError as exc:  # the nodes never met: say so in one line, no traceback
        record.exit_code = 1
        first = str(exc).splitlines()[0] if str(exc).strip() else "not every node joined"
        record.rendezvous = (
            f"rendezvous at {endpoint} failed ({type(exc).__name__}: {first}): {dist.nnodes} nodes "
            f"expected within distributed.rdzv_timeout_s ({dist.rdzv_timeout_s:g} s)"
        )
        print(printable(f"harness: {record.rendezvous}"), flush=True)
    except ChildFailedError as exc:
        record.exit_code = 1
        record.failure = first_failure(exc.failures, partial(_error_time, stage_dir(run_dir, stage)),
                                       stopped.pids)
        for failure in exc.failures.values():  # a killed rank's workers are not torchrun's to stop
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(failure.pid, signal.SIGKILL)
        print(printable(f"harness: {record.failure.describe()}"), flush=True)
    finally:
        write_record(record_dir, record)
    return record.exit_code or 0


def first_failure(failures: dict[int, Any], error_time: Callable[[int], float | None] = lambda r: None,
                  stopped: Collection[int] = ()) -> RankFailure:
    """The failure that most likely caused the others.

    A rank torchrun stopped itself (``stopped``: their pids, :class:`StoppedRanks`) comes after any
    it did not. torchrun stamps failures to the second, and those it finds at one look alike. At a tie a rank
    killed by a signal other than SIGTERM (from outside, or by the kernel) comes first, since the
    ranks it leaves in a collective fail because of it; then one that exited non-zero, earliest
    first by the time its stage_error event was written (``error_time``); last the ranks torchrun
    itself stopped with SIGTERM. Which rank the kernel's OOM killer killed is not decided here:
    torchrun stops the other ranks within the second, by SIGKILL too, and this pick can be any of
    them; :func:`harness.control.runner.find_oom_victim` asks the kernel's log and the samples.
    """
    def key(item: tuple[int, Any]) -> tuple[bool, int, int, float, int]:
        rank, f = item
        kind = 2 if f.exitcode == -signal.SIGTERM else 0 if f.exitcode < 0 else 1
        t = error_time(rank)
        return f.pid in stopped, f.timestamp, kind, t if t is not None else math.inf, rank

    rank, f = min(failures.items(), key=key)
    sig = signal.Signals(-f.exitcode).name if f.exitcode < 0 else None
    return RankFailure(rank=rank, local_rank=f.local_rank, pid=f.pid, exit_code=f.exitcode,
                       signal=sig, ranks_failed=sorted(failures),
                       ranks_stopped=sorted(r for r, g in failures.items() if g.pid in stopped))


def _error_time(stage_path: Path, rank: int) -> float | None:
    """When rank ``rank`` recorded its error (its stage_error event); None if it recorded none."""
    try:
        lines = (stage_path / rank_dir_name(rank) / EVENTS_FILE).read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            ev = EVENT_ADAPTER.validate_json(line)
        except ValidationError:  # not JSON, torn, or not an event: the writer was killed mid-line
            continue
        if isinstance(ev, StageError):
            return ev.t
    return None


def describe(failure: RankFailure | None) -> str:
    """One line for a rank's failure: ``rank 1 (local rank 1, pid 123) was killed by SIGKILL``."""
    return "no rank failed" if failure is None else failure.describe()


def write_record(directory: Path, record: AgentRecord) -> None:
    rundir.write_record(directory / AGENT_FILE, record)


def read_record(directory: Path) -> AgentRecord | None:
    """The agent's record in ``directory``; None when it wrote none (killed before the end) or
    what it wrote is not one."""
    try:
        return parse_agent_record(json.loads((directory / AGENT_FILE).read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValidationError):
        return None


def node_dir(run_dir: Path, stage: str, dist: DistributedConfig) -> Path:
    """Where this node's log, samples, probe.json and agent.json go: the stage's directory, or
    with several nodes ``stages/<stage>/node<K>/``."""
    sdir = stage_dir(run_dir, stage)
    return sdir / node_dir_name(dist.node_rank) if dist.nnodes > 1 else sdir


def rank_dirs(stage_path: Path) -> dict[int, Path]:
    """The rank directories of a distributed stage, by global rank."""
    out = {}
    if stage_path.is_dir():
        for child in stage_path.iterdir():
            rank = parse_rank_dir(child.name)
            if rank is not None and child.is_dir():
                out[rank] = child
    return dict(sorted(out.items()))


class RankCells:
    """Each rank's probe cell (``rank<R>/probe.cell`` of a stage), mapped once the rank made it."""

    def __init__(self, stage_path: Path) -> None:
        self.stage_path = stage_path
        self._readers: dict[int, CellReader] = {}

    def read(self, rank: int) -> CellState | None:
        reader = self._readers.get(rank)
        if reader is None:
            try:
                reader = CellReader(self.stage_path / rank_dir_name(rank) / CELL_FILE)
            except (OSError, ValueError):  # not there yet
                return None
            self._readers[rank] = reader
        return reader.read()

    def close(self) -> None:
        for reader in self._readers.values():
            reader.close()
        self._readers.clear()
