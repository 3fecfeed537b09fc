"""The workload's process tree and the one rule that names its processes.

Used by the sampler (in the harness process) and by epoch snapshots (inside the workload), so both
name a process alike. Light on purpose: psutil and the standard library only.

Roles: the stage's root process is ``main``. A DataLoader (or multiprocessing) worker is named
``worker N`` after the lowest slot no living worker holds, new workers taking slots in pid order,
whichever start method made it:

- fork: a direct child of ``main`` running main's own command line (forked, not exec'd);
- spawn: a direct child of ``main`` running ``-c "from multiprocessing.spawn import spawn_main; ..."
  --multiprocessing-fork``;
- forkserver: a child of the fork server (``-c "from multiprocessing.forkserver import main; ..."``,
  a direct child of ``main`` named ``forkserver``) running the server's own command line.

In a distributed stage (:class:`AgentRoles`) the root is torchrun's ``agent``; each rank, a child of
the agent running ``harness.probe.stage ... --rank``, is ``rank R`` (R the global rank, from its
environment's ``RANK``) and its DataLoader workers ``rank R worker N``, by the rule above applied
to the rank's own tree.

Anything else (an exec'd helper such as ``ldconfig`` or a compiler, multiprocessing's resource
tracker, a worker's own children) is ``child``. A process whose command line must be read to name it
and cannot be (already exiting, a zombie) gets no role yet; nor does a child of ``main`` running
main's command line that is younger than :data:`FORK_EXEC_GRACE_S`: between its fork and its exec,
a process about to be exec'd (a spawned worker, the resource tracker, any subprocess) shows its
parent's command line too.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import psutil

MAIN = "main"
CHILD = "child"
FORKSERVER = "forkserver"
AGENT = "agent"

# The ``-c`` programs multiprocessing starts its exec'd processes with (multiprocessing/spawn.py,
# forkserver.py).
_SPAWN_PROGRAM = "from multiprocessing.spawn import spawn_main"
_FORKSERVER_PROGRAM = "from multiprocessing.forkserver import main"

# How old a child running main's command line must be to be a forked worker rather than a fork
# still on its way to exec: far beyond the fork-to-exec time even of a large parent, and short
# enough that a worker's first moments go unsampled at worst.
FORK_EXEC_GRACE_S = 0.2

# Start methods, as a stage's worker_start_method names them (forkserver: FORKSERVER, as the role).
FORK, SPAWN, NO_WORKERS = "fork", "spawn", "none"


def worker(slot: int) -> str:
    """The role of the DataLoader worker in ``slot``."""
    return f"worker {slot}"


def rank_role(rank: int, role: str = MAIN) -> str:
    """``rank R`` for a rank's own process, ``rank R worker N`` for its workers; others unchanged."""
    if role == MAIN:
        return f"rank {rank}"
    if role.startswith("worker "):
        return f"rank {rank} {role}"
    return role


def _program(cmdline: list[str]) -> str:
    """The ``-c`` program of a Python command line; "" if it has none."""
    try:
        return cmdline[cmdline.index("-c") + 1]
    except (ValueError, IndexError):
        return ""


def is_spawn_worker(cmdline: list[str]) -> bool:
    """A process multiprocessing started with the spawn method."""
    return _program(cmdline).startswith(_SPAWN_PROGRAM) and "--multiprocessing-fork" in cmdline


def is_forkserver(cmdline: list[str]) -> bool:
    """multiprocessing's fork server, whose forks are the forkserver method's workers."""
    return _program(cmdline).startswith(_FORKSERVER_PROGRAM)


def start_method(methods: set[str]) -> str:
    """One stage's ``worker_start_method`` from the methods its workers were seen started by."""
    return "+".join(sorted(methods)) if methods else NO_WORKERS


def _read_task_children(pid: int, tid: str) -> str:
    with open(f"/proc/{pid}/task/{tid}/children", encoding="ascii") as fh:
        return fh.read()


def _psutil_children(pid: int) -> list[int]:
    try:
        return [p.pid for p in psutil.Process(pid).children()]
    except psutil.NoSuchProcess:
        return []


def children_of(pid: int) -> list[int]:
    """Direct children of ``pid``, in pid order.

    Read from the kernel's per-thread children lists, which costs far less than psutil's scan of
    all of ``/proc``; on a kernel built without ``CONFIG_PROC_CHILDREN`` those files do not exist,
    and psutil's scan is the only way to see the workers at all.
    """
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:  # gone
        return []
    out: list[int] = []
    for tid in tids:
        try:
            out.extend(int(x) for x in _read_task_children(pid, tid).split())
        except FileNotFoundError:
            if os.path.isdir(f"/proc/{pid}/task/{tid}"):  # the thread is there, its file is not
                return sorted(_psutil_children(pid))
            continue  # the thread ended since the listing
        except OSError:
            continue
    return sorted(out)


def tree_of(root: int) -> list[tuple[int, int]]:
    """(pid, parent pid) for ``root`` and all its descendants: root first, then breadth first."""
    out = [(root, 0)]
    i = 0
    while i < len(out):
        pid = out[i][0]
        out.extend((c, pid) for c in children_of(pid))
        i += 1
    return out


def read_cmdline(pid: int) -> list[str] | None:
    """The command line of ``pid``; None if it cannot be read (gone, a zombie, not ours)."""
    try:
        return psutil.Process(pid).cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):  # ZombieProcess is a NoSuchProcess
        return None


def process_age(pid: int) -> float | None:
    """Seconds since ``pid`` was forked, to the kernel's clock tick; None if it cannot be read.

    From ``/proc`` alone (start time against uptime, one clock), not psutil's create_time, which
    adds the boot time read to the whole second.
    """
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            fields = fh.read().rpartition(")")[2].split()
        with open("/proc/uptime", encoding="ascii") as fh:
            uptime = float(fh.read().split()[0])
        return uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: starttime
    except (OSError, ValueError, IndexError):
        return None


class Roles:
    """Names the processes of the tree rooted at ``root``, remembering names from look to look.

    A name, once given, stays with its pid until :meth:`forget`; a forgotten worker's slot goes to
    the next new worker. Feed pids in :func:`tree_of` order (parents before their children) so that
    new workers take slots in pid order, as a single look (:func:`roles_of`) does.
    """

    def __init__(self, root: int, cmdline: Callable[[int], list[str] | None] = read_cmdline,
                 age: Callable[[int], float | None] = process_age) -> None:
        self.root = root
        self._cmdline = cmdline
        self._age = age
        self._main_cmdline: list[str] | None = None
        self._roles: dict[int, str] = {}
        self._slots: dict[int, int] = {}
        self._servers: dict[int, list[str]] = {}  # fork server pid -> its command line
        self.methods: dict[int, str] = {}  # worker pid -> the start method that made it
        self.methods_seen: set[str] = set()  # every start method a worker was seen made by

    def role(self, pid: int, ppid: int) -> str | None:
        """main, worker N, forkserver or child; None while it cannot be told (already exiting)."""
        if pid == self.root:
            return MAIN
        role = self._roles.get(pid)
        if role is not None:
            return role
        role, method = CHILD, None
        if ppid == self.root or ppid in self._servers:
            cmdline = self._cmdline(pid)
            if not cmdline:  # exiting (or a zombie): its command line is gone; ask again next look
                return None
            if ppid in self._servers:
                if cmdline == self._servers[ppid]:
                    method = FORKSERVER
            else:
                if self._main_cmdline is None:
                    self._main_cmdline = self._cmdline(self.root)
                if cmdline == self._main_cmdline:
                    age = self._age(pid)
                    if age is not None and age < FORK_EXEC_GRACE_S:  # maybe not exec'd yet
                        return None
                    method = FORK
                elif is_spawn_worker(cmdline):
                    method = SPAWN
                elif is_forkserver(cmdline):
                    role = FORKSERVER
                    self._servers[pid] = cmdline
        if method is not None:
            used = set(self._slots.values())
            slot = next(i for i in range(len(used) + 1) if i not in used)
            self._slots[pid] = slot
            self.methods[pid] = method
            self.methods_seen.add(method)
            role = worker(slot)
        self._roles[pid] = role
        return role

    def forget(self, pid: int) -> None:
        """Drop a process that has gone; a worker's slot becomes free."""
        self._roles.pop(pid, None)
        self._slots.pop(pid, None)
        self._servers.pop(pid, None)
        self.methods.pop(pid, None)


# The rank program the agent starts (harness.control.distributed.run_agent).
_RANK_PROGRAM = ("harness.probe.stage", "--rank")


def read_rank(pid: int) -> int | None:
    """The global rank torchrun gave ``pid`` (``RANK`` in its environment); None if none or unreadable."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            env = fh.read()
    except OSError:
        return None
    for item in env.split(b"\0"):
        if item.startswith(b"RANK="):
            try:
                return int(item[5:])
            except ValueError:
                return None
    return None


class AgentRoles:
    """Names the tree of a distributed stage, rooted at torchrun's agent, as :class:`Roles` does.

    ``rank(pid)`` is the global rank a process belongs to: a rank's own, its workers' and its
    other descendants' alike; None for the agent and what else it runs.
    """

    def __init__(self, root: int, cmdline: Callable[[int], list[str] | None] = read_cmdline,
                 age: Callable[[int], float | None] = process_age,
                 rank_of: Callable[[int], int | None] = read_rank) -> None:
        self.root = root
        self._cmdline = cmdline
        self._age = age
        self._rank_of = rank_of
        self._ranks: dict[int, Roles] = {}  # rank -> the roles of its tree
        self._owner: dict[int, int] = {}  # pid -> the rank it belongs to
        self._roles: dict[int, str] = {}
        self._agent_cmdline: list[str] | None = None
        self.methods_seen: set[str] = set()

    @property
    def methods(self) -> dict[int, str]:
        """Worker pid -> the start method that made it, over every rank."""
        out: dict[int, str] = {}
        for roles in self._ranks.values():
            out.update(roles.methods)
        return out

    def rank(self, pid: int) -> int | None:
        return self._owner.get(pid)

    def role(self, pid: int, ppid: int) -> str | None:
        """agent, rank R, rank R worker N, forkserver or child; None while it cannot be told."""
        if pid == self.root:
            return AGENT
        owner = self._owner.get(pid, self._owner.get(ppid))
        if owner is not None:
            role = self._ranks[owner].role(pid, ppid)
            if role is None:
                return None
            self._owner[pid] = owner
            self.methods_seen |= self._ranks[owner].methods_seen
            return rank_role(owner, role)
        role = self._roles.get(pid)
        if role is not None:
            return role
        if ppid == self.root:
            cmdline = self._cmdline(pid)
            if not cmdline:
                return None
            if self._agent_cmdline is None:
                self._agent_cmdline = self._cmdline(self.root)
            if cmdline == self._agent_cmdline:  # forked, not yet exec'd: a rank on its way
                return None
            if all(part in cmdline for part in _RANK_PROGRAM):
                rank = self._rank_of(pid)
                if rank is None:  # exiting: its environment is gone; ask again next look
                    return None
                self._ranks[rank] = Roles(pid, self._cmdline, self._age)
                self._owner[pid] = rank
                return rank_role(rank)
        self._roles[pid] = CHILD
        return CHILD

    def forget(self, pid: int) -> None:
        """Drop a process that has gone; a worker's slot becomes free."""
        owner = self._owner.pop(pid, None)
        if owner is not None:
            self._ranks[owner].forget(pid)
        self._roles.pop(pid, None)


def roles_of(root: int) -> list[tuple[int, int, str]]:
    """(pid, parent pid, role) of every process in the tree that has a role, from one look."""
    roles = Roles(root)
    out = []
    for pid, ppid in tree_of(root):
        role = roles.role(pid, ppid)
        if role is not None:
            out.append((pid, ppid, role))
    return out
