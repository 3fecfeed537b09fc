"""Memory limits and the kernel's OOM killer, seen from the harness process.

A stage with ``limits.memory`` runs in a memory cgroup of its own, made for it under the harness's
own one (cgroup v1's memory controller, else cgroup v2), so that the kernel's OOM killer acts on
the stage's process tree alone and the harness that records the death survives it. Every stage
records the limit in force (:func:`limit_in_force`: that cgroup's, else the smallest limit on the
harness's own cgroup path, else the machine's memory) and reads an OOM-kill counter before and
after (:class:`OomCounter`): a SIGKILL while it rose is the OOM killer's. Which process it killed,
the kernel's log says (:class:`KernelLog`, where this process may read it).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from harness.errors import ScenarioError
from harness.records.manifest import MemoryLimit

CGROUP_ROOT = Path("/sys/fs/cgroup")
# Larger than any machine's memory: cgroup v1 writes "no limit" as a page-rounded 2**63 - 1.
_UNLIMITED = 1 << 60
_OOM_KILL = re.compile(rb"^oom_kill (\d+)$", re.M)
KMSG = Path("/dev/kmsg")
# The OOM killer's lines in the kernel's log (mm/oom_kill.c): "oom-kill:...,task_memcg=/a/b,
# task=python3,pid=123,uid=0" then "Memory cgroup out of memory: Killed process 123 (python3) ..."
# ("Out of memory: ..." for the machine's own; older kernels "Kill process 123 (python3) score").
_KILLED = re.compile(rb"(?:^|: )Killed process (\d+) \(([^)]*)\)")
_TASK_MEMCG = re.compile(rb"^oom-kill:.*?task_memcg=([^,]*),task=.*?,pid=(\d+)")
_KMSG_PREFIX = re.compile(rb"^\d+,\d+,\d+,[^;]*;")  # /dev/kmsg's "priority,seq,usec,flags;"


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii", errors="replace")
    except OSError:
        return None


def _own_paths(pid: int | str = "self") -> dict[str, str]:
    """The process's cgroup path per hierarchy: ``memory`` (v1) and ``""`` (v2), from /proc."""
    text = _read_text(Path(f"/proc/{pid}/cgroup")) or ""
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        for controller in parts[1].split(","):
            out.setdefault(controller, parts[2])
    return out


def own_cgroup() -> str | None:
    """This process's memory cgroup as the kernel's log names it (``/a/b``): v1's, else v2's."""
    own = _own_paths()
    if _v1_mount() is not None and own.get("memory") is not None:
        return own["memory"]
    if _v2_mount() is not None and own.get("") is not None:
        return own[""]
    return None


def _v1_mount() -> Path | None:
    path = CGROUP_ROOT / "memory"
    return path if (path / "memory.limit_in_bytes").exists() else None


def _v2_mount() -> Path | None:
    for path in (CGROUP_ROOT, CGROUP_ROOT / "unified"):
        controllers = _read_text(path / "cgroup.controllers")
        if controllers is not None and "memory" in controllers.split():
            return path
    return None


def machine_memory() -> int:
    """MemTotal, bytes."""
    text = _read_text(Path("/proc/meminfo")) or ""
    match = re.search(r"^MemTotal:\s+(\d+) kB", text, re.M)
    return int(match.group(1)) * 1024 if match else 0


def _limit_file(directory: Path) -> int | None:
    """A cgroup directory's own memory limit, bytes; None where it sets none."""
    for name in ("memory.limit_in_bytes", "memory.max"):
        text = _read_text(directory / name)
        if text is None:
            continue
        text = text.strip()
        if text == "max" or not text.isdigit() or int(text) >= _UNLIMITED:
            return None
        return int(text)
    return None


def _walk(mount: Path, path: str) -> list[Path]:
    """The cgroup's directory and each above it, up to the mount."""
    out, current = [], mount / path.lstrip("/")
    while True:
        out.append(current)
        if current == mount or mount not in current.parents:
            return out
        current = current.parent


def limit_in_force(pid: int | str = "self") -> MemoryLimit:
    """The memory available to a process: the smallest limit of the memory cgroups on its path
    (v1, else v2), else the machine's memory."""
    own = _own_paths(pid)
    for mount, path in ((_v1_mount(), own.get("memory")), (_v2_mount(), own.get(""))):
        if mount is None or path is None:
            continue
        found = [(lim, d) for d in _walk(mount, path) if (lim := _limit_file(d)) is not None]
        if found:
            lim, where = min(found, key=lambda f: f[0])
            return MemoryLimit(bytes=min(lim, machine_memory() or lim), source="cgroup",
                               cgroup="/" + str(where.relative_to(mount)).strip("."))
    return MemoryLimit(bytes=machine_memory(), source="machine")


# ---- OOM-kill counters ---------------------------------------------------------------------------


@dataclass(frozen=True)
class OomCounter:
    """One OOM-kill counter: a cgroup's (v1 ``memory.oom_control``, v2 ``memory.events``) or the
    machine's (``/proc/vmstat``, every OOM kill on the machine). ``name``: the file, as recorded."""

    path: Path

    @property
    def name(self) -> str:
        return str(self.path)

    def read(self) -> int | None:
        try:
            data = self.path.read_bytes()
        except OSError:
            return None
        match = _OOM_KILL.search(data)
        return int(match.group(1)) if match else None


def counter_for(cgroup_dir: Path | None) -> OomCounter:
    """The stage's cgroup's counter, when it has one; else the harness's own cgroup's, else the
    machine's."""
    candidates: list[Path] = []
    if cgroup_dir is not None:
        candidates += [cgroup_dir / "memory.oom_control", cgroup_dir / "memory.events"]
    own = _own_paths()
    mount1, mount2 = _v1_mount(), _v2_mount()
    if mount1 is not None and own.get("memory"):
        candidates.append(mount1 / own["memory"].lstrip("/") / "memory.oom_control")
    if mount2 is not None and own.get("") is not None:
        candidates.append(mount2 / own[""].lstrip("/") / "memory.events")
    for path in candidates:
        counter = OomCounter(path)
        if counter.read() is not None:
            return counter
    return OomCounter(Path("/proc/vmstat"))


# ---- the kernel's log: which process the OOM killer killed ----------------------------------------


@dataclass(frozen=True)
class KernelKill:
    """A process the kernel's OOM killer killed, as the kernel's log says it."""

    pid: int  # as the kernel numbers it (the machine's pid namespace)
    task: str  # its name (comm)
    memcg: str | None  # the memory cgroup it was charged to (``task_memcg``), where the log says
    line: str  # the kernel's words, up to the name: "Memory cgroup out of memory: Killed process 7 (x)"


def parse_kernel_log(data: bytes) -> list[KernelKill]:
    """The OOM kills in kernel log text, in the order logged: /dev/kmsg's records or dmesg's lines."""
    memcg: dict[int, str] = {}
    out = []
    for raw in data.splitlines():
        line = _KMSG_PREFIX.sub(b"", raw, count=1)
        if line.startswith(b"["):  # dmesg's "[  123.456] "
            line = line.partition(b"] ")[2]
        match = _TASK_MEMCG.search(line)
        if match:
            memcg[int(match.group(2))] = match.group(1).decode("utf-8", "replace")
            continue
        match = _KILLED.search(line)
        if match:
            pid = int(match.group(1))
            words = line[:match.end()].decode("utf-8", "replace")
            out.append(KernelKill(pid=pid, task=match.group(2).decode("utf-8", "replace"),
                                  memcg=memcg.get(pid), line=words))
    return out


class KernelLog:
    """The kernel's log from the moment this is made (``/dev/kmsg``, read from its end on).

    Reading it needs CAP_SYSLOG where ``kernel.dmesg_restrict`` is 1 (the usual default) and a
    /dev/kmsg at all (a container may have none): where it cannot be read, ``error`` says why and
    :meth:`kills` finds nothing; the victim is then told by weaker evidence (the runner's
    :func:`~harness.control.runner.find_oom_victim`). The ring buffer is the kernel's: records
    overwritten before they are read are lost (a read says so with EPIPE and goes on).
    """

    def __init__(self, path: Path = KMSG) -> None:
        self.path = path
        self.error: str | None = None
        self._fd: int | None = None
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as exc:
            self.error = f"{path}: {exc.strerror or exc}"
            return
        try:
            os.lseek(fd, 0, os.SEEK_END)  # only what is logged from now on
        except OSError as exc:
            os.close(fd)
            self.error = f"{path}: {exc.strerror or exc}"
            return
        self._fd = fd

    def read(self) -> bytes:
        """What was logged since the last read (each /dev/kmsg read returns one record)."""
        if self._fd is None:
            return b""
        chunks = []
        while True:
            try:
                chunk = os.read(self._fd, 1 << 16)
            except BlockingIOError:  # nothing more
                break
            except BrokenPipeError:  # records overwritten before this read: go on with the rest
                continue
            except OSError as exc:
                self.error = f"{self.path}: {exc.strerror or exc}"
                break
            if not chunk:  # a plain file's end
                break
            chunks.append(chunk if chunk.endswith(b"\n") else chunk + b"\n")
        return b"".join(chunks)

    def kills(self) -> list[KernelKill]:
        """The OOM kills logged since the last read."""
        return parse_kernel_log(self.read())

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


# ---- a memory cgroup for one stage ---------------------------------------------------------------


class StageCgroup:
    """A memory cgroup made for one stage, limited to ``limit`` bytes; :meth:`add` moves a process
    in (its children follow it), :meth:`remove` deletes the cgroup once its processes are gone."""

    def __init__(self, directory: Path, limit: int, version: int) -> None:
        self.dir = directory
        self.limit = limit
        self.version = version

    @classmethod
    def create(cls, name: str, limit: int, source: str = "scenario") -> StageCgroup:
        """Make the cgroup under the harness's own one; a ScenarioError says why it cannot be."""
        own = _own_paths()
        mount1, mount2 = _v1_mount(), _v2_mount()
        if mount1 is not None and own.get("memory") is not None:
            mount, parent, version = mount1, own["memory"], 1
        elif mount2 is not None and own.get("") is not None:
            mount, parent, version = mount2, own[""], 2
        else:
            raise ScenarioError(f"{source}: limits.memory: this machine has no memory cgroup "
                                f"controller mounted under {CGROUP_ROOT} to limit a stage with")
        directory = mount / parent.lstrip("/") / name
        try:
            directory.mkdir()
        except FileExistsError:
            pass
        except OSError as exc:
            raise ScenarioError(f"{source}: limits.memory: cannot make the memory cgroup "
                                f"{directory}: {exc.strerror or exc} (it needs root, or a "
                                "delegated cgroup)") from None
        cg = cls(directory, limit, version)
        try:
            if version == 1:
                (directory / "memory.limit_in_bytes").write_text(str(limit))
                memsw = directory / "memory.memsw.limit_in_bytes"
                if memsw.exists():  # no swapping past the limit instead of an OOM kill
                    with contextlib.suppress(OSError):
                        memsw.write_text(str(limit))
            else:
                (directory / "memory.max").write_text(str(limit))
                with contextlib.suppress(OSError):
                    (directory / "memory.swap.max").write_text("0")
        except OSError as exc:
            cg.remove()
            raise ScenarioError(f"{source}: limits.memory: cannot set the limit of {directory}: "
                                f"{exc.strerror or exc}") from None
        return cg

    def add(self, pid: int) -> None:
        (self.dir / "cgroup.procs").write_text(str(pid))

    def limit_record(self) -> MemoryLimit:
        mount = _v1_mount() if self.version == 1 else _v2_mount()
        rel = "/" + str(self.dir.relative_to(mount)) if mount is not None else str(self.dir)
        return MemoryLimit(bytes=self.limit, source="limits.memory", cgroup=rel)

    def counter(self) -> OomCounter:
        return OomCounter(self.dir / ("memory.oom_control" if self.version == 1 else "memory.events"))

    def peak(self) -> int | None:
        """The most the cgroup was charged, bytes (None where the kernel keeps no such counter)."""
        for name in ("memory.max_usage_in_bytes", "memory.peak"):
            text = _read_text(self.dir / name)
            if text is not None and text.strip().isdigit():
                return int(text.strip())
        return None

    def remove(self, wait_s: float = 2.0) -> None:
        """rmdir the cgroup, waiting briefly for the last processes to leave (reaped zombies)."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                self.dir.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError as exc:
                if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                    return  # left behind empty-handed; named in no record, harmless
            time.sleep(0.05)


def check(limit: int | None, source: str) -> None:
    """Before a run directory exists: ``limits.memory`` asked for where no cgroup can be made."""
    if limit is None:
        return
    cg = StageCgroup.create(f"harness-check-{os.getpid()}", limit, source)
    cg.remove()
