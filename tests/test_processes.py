"""The process tree walk and the role rule shared by the sampler and epoch snapshots."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.control.sampler import TreeSampler
from harness.layout import SAMPLES_DIR
from harness.probe import processes
from harness.probe.processes import Roles, children_of, start_method, tree_of

# The parent forks two workers with multiprocessing (fork: they run its own command line), worker 0
# starts a `sleep` of its own, and the parent execs a `sleep` helper. It then snapshots its own tree
# the way an epoch snapshot does, prints what it saw and waits for its stdin to close.
PARENT = textwrap.dedent("""
    import json, multiprocessing, os, subprocess, sys, time

    import psutil

    def work(spawn):
        if spawn:
            subprocess.Popen(["sleep", "120"])
        time.sleep(120)

    if __name__ == "__main__":
        ctx = multiprocessing.get_context("fork")
        workers = [ctx.Process(target=work, args=(i == 0,), daemon=True) for i in range(2)]
        for w in workers:
            w.start()
        helper = subprocess.Popen(["sleep", "120"])  # returns once the exec has happened
        deadline = time.time() + 20
        while not psutil.Process(workers[0].pid).children():
            assert time.time() < deadline, "worker 0 did not start its sleep"
            time.sleep(0.01)
        grandchild = psutil.Process(workers[0].pid).children()[0].pid
        time.sleep(0.3)  # past FORK_EXEC_GRACE_S: a younger fork may yet exec, and is not named

        from harness.probe.epoch_snapshot import process_tree

        print(json.dumps({
            "workers": [w.pid for w in workers], "helper": helper.pid, "grandchild": grandchild,
            "snapshot": [p.model_dump(mode="json", exclude_defaults=True)
                         for p in process_tree(os.getpid())],
        }), flush=True)
        sys.stdin.read()
""")


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A live process tree; ``pid`` is its root."""
    script = tmp_path_factory.mktemp("tree") / "parent.py"
    script.write_text(PARENT, encoding="utf-8")
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        start_new_session=True,  # one process group: the whole tree goes at once in the end
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, f"the parent died (exit {proc.wait()})"
        yield {"pid": proc.pid, **json.loads(line)}
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.mark.slow  # the `tree` fixture starts a Python that imports torch
def test_snapshot_and_sampler_name_the_same_tree_alike(tree: dict[str, Any], tmp_path: Path) -> None:
    # GIVEN the roles an epoch snapshot gave inside the parent
    snapshot = {p["pid"]: p["role"] for p in tree["snapshot"]}
    assert all("gone" not in p and p["rss"] > 0 for p in tree["snapshot"])
    # WHEN the sampler watches the same tree from outside for a few ticks
    sampler = TreeSampler(tree["pid"], "t", tmp_path / SAMPLES_DIR, None, rss_hz=50, full_hz=5)
    sampler.start()
    time.sleep(0.3)
    sampler.stop()
    sampler.join(timeout=10)
    # THEN both name every process alike: forked workers by pid order, exec'd or deeper ones child
    w0, w1 = sorted(tree["workers"])
    expected = {tree["pid"]: "main", w0: "worker 0", w1: "worker 1",
                tree["helper"]: "child", tree["grandchild"]: "child"}
    assert snapshot == expected
    assert sampler.stats.roles == expected


@pytest.mark.slow  # the `tree` fixture starts a Python that imports torch
def test_tree_is_root_first_then_children_in_pid_order(tree: dict[str, Any]) -> None:
    got = tree_of(tree["pid"])
    assert got[0] == (tree["pid"], 0)
    direct = [pid for pid, ppid in got if ppid == tree["pid"]]
    assert direct == sorted([*tree["workers"], tree["helper"]])
    assert (tree["grandchild"], min(tree["workers"])) in got
    assert len(got) == 5


@pytest.mark.slow  # the `tree` fixture starts a Python that imports torch
def test_children_are_read_from_proc_without_scanning(
    tree: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
) -> None:
    def scan(pid: int) -> list[int]:
        raise AssertionError("psutil's scan of /proc used although the children files exist")

    monkeypatch.setattr(processes, "_psutil_children", scan)
    assert children_of(tree["pid"]) == sorted([*tree["workers"], tree["helper"]])


@pytest.mark.slow  # the `tree` fixture starts a Python that imports torch
def test_children_found_without_proc_children_files(
    tree: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
) -> None:
    # GIVEN a kernel without CONFIG_PROC_CHILDREN: no /proc/<pid>/task/<tid>/children
    asked: list[str] = []

    def missing(pid: int, tid: str) -> str:
        asked.append(tid)
        raise FileNotFoundError(f"/proc/{pid}/task/{tid}/children")

    monkeypatch.setattr(processes, "_read_task_children", missing)
    # WHEN the tree is walked THEN psutil finds the children all the same
    assert children_of(tree["pid"]) == sorted([*tree["workers"], tree["helper"]])
    assert asked
    assert {pid for pid, _ in tree_of(tree["pid"])} == {
        tree["pid"], *tree["workers"], tree["helper"], tree["grandchild"]}


def test_children_of_a_gone_process_is_empty() -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    assert children_of(gone.pid) == []


class FakeCmdlines:
    """Command lines by pid for :class:`Roles`; a pid not listed reads as exiting (None)."""

    def __init__(self, **by_pid: list[str]) -> None:
        self.by_pid = {int(k.lstrip("p")): v for k, v in by_pid.items()}

        self.ages: dict[int, float] = {}  # seconds since the fork; a pid not listed is old

    def __call__(self, pid: int) -> list[str] | None:
        return self.by_pid.get(pid)

    def age(self, pid: int) -> float | None:
        return self.ages.get(pid, 60.0)


MAIN_CMD = ["python", "-m", "harness.probe.stage", "run", "train"]


def test_forked_children_are_workers_exec_d_and_deeper_ones_children() -> None:
    cmd = FakeCmdlines(p1=MAIN_CMD, p10=MAIN_CMD, p11=["ldconfig", "-p"], p12=MAIN_CMD, p20=MAIN_CMD)
    roles = Roles(1, cmdline=cmd, age=cmd.age)
    assert roles.role(1, 0) == "main"
    assert roles.role(10, 1) == "worker 0"
    assert roles.role(11, 1) == "child"  # exec'd: another command line
    assert roles.role(12, 1) == "worker 1"
    assert roles.role(20, 10) == "child"  # a worker's own child, even forked


def test_a_child_already_exiting_gets_no_role_until_it_can_be_told() -> None:
    cmd = FakeCmdlines(p1=MAIN_CMD)
    roles = Roles(1, cmdline=cmd, age=cmd.age)
    assert roles.role(10, 1) is None  # no command line: exiting, or a zombie
    assert roles.role(11, 1) is None
    cmd.by_pid[11] = MAIN_CMD
    assert roles.role(11, 1) == "worker 0"  # the exiting one took no slot


def test_roles_stick_and_a_gone_worker_s_slot_is_reused() -> None:
    cmd = FakeCmdlines(p1=MAIN_CMD, p10=MAIN_CMD, p11=MAIN_CMD, p12=MAIN_CMD, p13=MAIN_CMD)
    roles = Roles(1, cmdline=cmd, age=cmd.age)
    assert [roles.role(p, 1) for p in (10, 11)] == ["worker 0", "worker 1"]
    cmd.by_pid[10] = ["sleep", "1"]
    assert roles.role(10, 1) == "worker 0"  # named once, named for good
    roles.forget(10)
    assert roles.role(12, 1) == "worker 0"
    assert roles.role(13, 1) == "worker 2"
    assert roles.role(11, 1) == "worker 1"


PY = ["/usr/bin/python3.14", "-B"]
SPAWN_CMD = [*PY, "-c", "from multiprocessing.spawn import spawn_main; spawn_main(tracker_fd=5, "
             "pipe_handle=7)", "--multiprocessing-fork"]
SERVER_CMD = [*PY, "-c", "from multiprocessing.forkserver import main; main(5, 6, ['__main__'], "
              "**{'sys_path': []})"]
TRACKER_CMD = [*PY, "-c", "from multiprocessing.resource_tracker import main;main(4)"]


def test_spawned_children_are_workers_and_the_resource_tracker_is_not() -> None:
    cmd = FakeCmdlines(p1=MAIN_CMD, p10=TRACKER_CMD, p11=SPAWN_CMD, p12=SPAWN_CMD,
                       p13=[*PY, "-c", "print('from multiprocessing.spawn import spawn_main')"],
                       p20=SPAWN_CMD)
    roles = Roles(1, cmdline=cmd, age=cmd.age)
    assert [roles.role(p, 1) for p in (10, 11, 12, 13)] == ["child", "worker 0", "worker 1", "child"]
    assert roles.role(20, 11) == "child"  # a spawned worker's own child
    assert roles.methods == {11: "spawn", 12: "spawn"}
    assert start_method(roles.methods_seen) == "spawn"


def test_the_fork_server_s_children_are_workers_and_the_server_is_not() -> None:
    cmd = FakeCmdlines(p1=MAIN_CMD, p10=TRACKER_CMD, p11=SERVER_CMD, p20=SERVER_CMD, p21=SERVER_CMD,
                       p22=["sh", "-c", "true"], p30=SERVER_CMD, p40=SERVER_CMD)
    roles = Roles(1, cmdline=cmd, age=cmd.age)
    assert [roles.role(p, 1) for p in (10, 11)] == ["child", "forkserver"]
    assert [roles.role(p, 11) for p in (20, 21, 22)] == ["worker 0", "worker 1", "child"]
    assert roles.role(30, 20) == "child"  # a worker's own fork
    assert roles.role(40, 10) == "child"  # the server's command line, but not the server's child
    assert roles.methods == {20: "forkserver", 21: "forkserver"}
    assert start_method(roles.methods_seen) == "forkserver"
    roles.forget(20)
    cmd.by_pid[23] = SERVER_CMD
    assert roles.role(23, 11) == "worker 0"  # one slot rule for every start method


def test_start_methods_seen_together_and_none() -> None:
    cmd = FakeCmdlines(p1=MAIN_CMD, p10=MAIN_CMD, p11=SPAWN_CMD)
    roles = Roles(1, cmdline=cmd, age=cmd.age)
    assert start_method(roles.methods_seen) == "none"
    assert [roles.role(p, 1) for p in (10, 11)] == ["worker 0", "worker 1"]
    assert start_method(roles.methods_seen) == "fork+spawn"


def test_a_young_child_with_main_s_command_line_is_not_named_until_it_cannot_be_an_exec() -> None:
    # GIVEN a child forked a moment ago, still running main's command line: maybe on its way to exec
    cmd = FakeCmdlines(p1=MAIN_CMD, p10=MAIN_CMD, p11=MAIN_CMD)
    cmd.ages[10] = cmd.ages[11] = 0.01
    roles = Roles(1, cmdline=cmd, age=cmd.age)
    assert roles.role(10, 1) is None
    # WHEN one execs (the spawn method) and the other stays as it is past the grace
    cmd.by_pid[10] = SPAWN_CMD
    assert roles.role(10, 1) == "worker 0"  # an exec'd spawn worker is named at any age
    assert roles.role(11, 1) is None
    cmd.ages[11] = processes.FORK_EXEC_GRACE_S
    # THEN the one still running main's command line is a forked worker
    assert roles.role(11, 1) == "worker 1"
    assert roles.methods == {10: "spawn", 11: "fork"}


def test_process_age_reads_proc() -> None:
    age = processes.process_age(os.getpid())
    assert age is not None and 0 < age < time.monotonic() + 1
    gone = subprocess.Popen(["true"])
    gone.wait()
    assert processes.process_age(gone.pid) is None
