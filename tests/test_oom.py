"""OOM post-mortems and headroom: who the kernel's OOM killer killed, where, under which limit.

Unit tests on small synthetic records (the victim from the facts, the counters, the limit in
force, the post-mortem's rates, the headroom finding), then real runs under a real memory cgroup
(``limits.memory``), each skipped with the reason where this machine cannot make one.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest
import yaml
from _synthetic import sample_row, write_run

from harness.analysis import headroom as headroom_mod
from harness.analysis.load import load_run
from harness.analysis.oom import post_mortems
from harness.control import memlimit
from harness.control.runner import OomWitnesses, classify_outcome, find_oom_victim
from harness.layout import STAGE_LOG_FILE
from harness.records.composition import Moment, Parts, ProcessComposition
from harness.records.manifest import AgentRecord, MemoryLimit, OomPostMortem, OomVictim
from harness.records.vocab import Status
from harness.render.terminal import oom_lines

MiB = 1 << 20
WORKLOADS = Path(__file__).resolve().parent / "workloads"
GROWTH_LINE = next(i for i, line in enumerate((WORKLOADS / "oom_grow.py").read_text().splitlines(), 1)
                   if line.rstrip().endswith("# the growth"))


# ---- the victim, from the facts ------------------------------------------------------------------

def _agent(signal_name: str | None, exit_code: int = -9) -> AgentRecord:
    return AgentRecord.model_validate({
        "node_rank": 0, "nnodes": 1, "nproc_per_node": 2, "backend": "gloo",
        "rdzv_endpoint": "127.0.0.1:1", "pid": 10, "exit_code": 1,
        "failure": {"rank": 1, "local_rank": 1, "pid": 321, "exit_code": exit_code,
                    "signal": signal_name, "ranks_failed": [1]}})


@pytest.mark.parametrize(("rc", "log", "agent", "expect"), [
    # the main process killed by SIGKILL
    (-9, ["step 3"], None, ("main", 77, None, "killed by SIGKILL")),
    # a worker the kernel killed, as the DataLoader says it in C++ ...
    (1, ["RuntimeError: DataLoader worker (pid 4242) is killed by signal: Killed. "], None,
     ("worker 1", 4242, None, "pid 4242")),
    # ... and as it says it when it finds the worker gone
    (1, ["RuntimeError: DataLoader worker (pid(s) 4242) exited unexpectedly"], None,
     ("worker 1", 4242, None, "exited unexpectedly")),
    # a rank's worker: its role names the rank
    (1, ["DataLoader worker (pid 5151) is killed by signal: Killed."], None,
     ("rank 1 worker 0", 5151, 1, "pid 5151")),
    # a rank torchrun saw killed by SIGKILL
    (1, [], _agent("SIGKILL"), ("rank 1", 321, 1, "torchrun: rank 1")),
])
def test_the_victim_is_named_from_the_signal_the_log_or_torchrun(
        rc: int, log: list[str], agent: AgentRecord | None,
        expect: tuple[str, int, int | None, str]) -> None:
    roles = {77: "main", 4242: "worker 1", 5151: "rank 1 worker 0"}
    found = find_oom_victim(rc, log, roles, 77, agent)
    assert found is not None
    victim, evidence = found
    assert (victim.role, victim.pid, victim.rank) == expect[:3]
    assert expect[3] in evidence


@pytest.mark.parametrize(("rc", "log", "agent"), [
    (1, ["ValueError: a workload's own error"], None),  # an error, no kill
    (-15, [], None),  # SIGTERM is not the OOM killer's
    (1, [], _agent(None, exit_code=1)),  # a rank that exited non-zero
    (1, [], _agent("SIGTERM")),
])
def test_no_victim_without_a_sigkill_or_a_killed_worker(rc: int, log: list[str],
                                                         agent: AgentRecord | None) -> None:
    assert find_oom_victim(rc, log, {}, 77, agent) is None


# The kernel's words as /dev/kmsg gives them (one record a read; "priority,seq,usec,flags;"), from
# this machine's own log: a kill in another job's cgroup, then rank 1's (pid 321) in the stage's.
OURS, THEIRS = "/jobs/harness-9-train", "/jobs/harness-5-main"
KMSG = (
    "6,3270,22885673551,-;python3 invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0, "
    "oom_score_adj=800\n"
    f"6,3271,22885673800,-;oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed"
    f"=0,oom_memcg={THEIRS},task_memcg={THEIRS},task=python3,pid=654,uid=0\n"
    "3,3272,22885673814,-;Memory cgroup out of memory: Killed process 654 (python3) total-vm:3455696kB"
    ", anon-rss:321592kB, file-rss:240400kB, shmem-rss:0kB, UID:0 pgtables:2060kB oom_score_adj:800\n"
    " SUBSYSTEM=memory\n"
    f"6,3280,22891000000,-;oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed"
    f"=0,oom_memcg={OURS},task_memcg={OURS},task=pt_main_thread,pid=321,uid=0\n"
    "3,3281,22891000020,-;Memory cgroup out of memory: Killed process 321 (pt_main_thread) total-vm:"
    "3455696kB, anon-rss:900000kB, file-rss:1kB, shmem-rss:0kB, UID:0 pgtables:2060kB\n"
)


def test_the_kernel_log_s_oom_kills_in_kmsg_and_dmesg_forms() -> None:
    kills = memlimit.parse_kernel_log(KMSG.encode())
    assert [(k.pid, k.task, k.memcg) for k in kills] == [(654, "python3", THEIRS),
                                                         (321, "pt_main_thread", OURS)]
    assert kills[1].line == "Memory cgroup out of memory: Killed process 321 (pt_main_thread)"
    # dmesg's lines, and an older kernel's two lines with no oom-kill: line (no cgroup known)
    dmesg = (b"[21441.634048] Out of memory: Killed process 17765 (pt_data_worker) total-vm:1kB\n"
             b"[ 9.1] Memory cgroup out of memory: Kill process 42 (python) score 800 or sacrifice child\n"
             b"[ 9.2] Killed process 42 (python) total-vm:3578888kB, anon-rss:452584kB\n")
    assert [(k.pid, k.task, k.memcg, k.line) for k in memlimit.parse_kernel_log(dmesg)] == [
        (17765, "pt_data_worker", None, "Out of memory: Killed process 17765 (pt_data_worker)"),
        (42, "python", None, "Killed process 42 (python)")]


def test_the_kernel_log_is_read_from_when_it_was_opened(tmp_path: Path) -> None:
    path = tmp_path / "kmsg"
    path.write_bytes(KMSG.encode())  # logged before the stage: not its
    log = memlimit.KernelLog(path)
    assert (log.error, log.kills()) == (None, [])
    with path.open("ab") as fh:
        fh.write(KMSG.encode().splitlines(keepends=True)[-1])
    assert [k.pid for k in log.kills()] == [321]
    log.close()
    # where it cannot be opened (no /dev/kmsg, or no CAP_SYSLOG): why, and nothing read
    gone = memlimit.KernelLog(tmp_path / "none")
    assert gone.error == f"{tmp_path / 'none'}: No such file or directory" and gone.kills() == []


# rank 0 (pid 300) and rank 1 (pid 321) under the agent (pid 10); torchrun named rank 0 at the tie
RANK_ROLES = {10: "agent", 300: "rank 0", 321: "rank 1", 322: "rank 1 worker 0"}
TORCHRUN_SAYS_0 = AgentRecord.model_validate({
    "node_rank": 0, "nnodes": 1, "nproc_per_node": 2, "backend": "gloo",
    "rdzv_endpoint": "127.0.0.1:1", "pid": 10, "exit_code": 1,
    "failure": {"rank": 0, "local_rank": 0, "pid": 300, "exit_code": -9, "signal": "SIGKILL",
                "ranks_failed": [0, 1]}})
KILLS = tuple(memlimit.parse_kernel_log(KMSG.encode()))
GONE_1_FIRST = {300: 100.20, 321: 100.04, 322: 100.04, 10: 100.5}


@pytest.mark.parametrize(("witnesses", "victim", "evidence"), [
    # the kernel's log names rank 1's pid; the other cgroup's kill before it is passed over
    (OomWitnesses(kills=KILLS, cgroup=OURS), (321, "rank 1", 1),
     "kernel: Memory cgroup out of memory: Killed process 321 (pt_main_thread)"),
    # no cgroup of the stage's own (no limits.memory): the pid alone says it is ours
    (OomWitnesses(kills=KILLS), (321, "rank 1", 1), "kernel: "),
    # no cgroup of the stage's own: the harness's (/jobs), the stage's below it
    (OomWitnesses(kills=KILLS, cgroup="/jobs", stage_cgroup=False), (321, "rank 1", 1), "kernel: "),
    # the harness in the root cgroup: every cgroup is below it, the pid decides
    (OomWitnesses(kills=KILLS, cgroup="/", stage_cgroup=False, last_seen=GONE_1_FIRST),
     (321, "rank 1", 1), "kernel: "),
    # the kernel names cgroups this process does not see (a container's namespace, where the
    # pids may be its own too): its kills are passed over, and rank 1 and 0 went in one tick
    (OomWitnesses(kills=KILLS, cgroup="/docker/abc", stage_cgroup=False,
                  last_seen={300: 100.04, 321: 100.04}), (300, "rank 0", 0), "torchrun: rank 0"),
    # a process of the stage's cgroup the sampler never saw
    (OomWitnesses(kills=(memlimit.KernelKill(999, "x", OURS, "Killed process 999 (x)"),), cgroup=OURS),
     (999, "a process of the stage", None), "kernel: Killed process 999 (x)"),
    # no kernel log to read: rank 1's samples stopped 0.16 s before rank 0's, a tick before the
    # counter was seen higher
    (OomWitnesses(kernel_error="/dev/kmsg: Operation not permitted", last_seen=GONE_1_FIRST,
                  rose_after=100.04, rose_at=100.08), (321, "rank 1", 1),
     "samples: rank 1 (pid 321) was last seen 0.16 s before rank 0, the first of the failed ranks "
     "to go, 0.04 s before the OOM-kill counter was seen higher (the kernel's log was not read: "
     "/dev/kmsg: Operation not permitted)"),
    # a kernel log with only other jobs' kills: the samples decide
    (OomWitnesses(kills=KILLS[:1], cgroup=OURS, last_seen=GONE_1_FIRST), (321, "rank 1", 1), "samples: "),
    # gone in the same tick: no telling them apart; torchrun's pick stands, said as its
    (OomWitnesses(last_seen={300: 100.04, 321: 100.04}), (300, "rank 0", 0), "torchrun: rank 0"),
    # rank 1 had gone before the counter's last unrisen tick (it died of something else)
    (OomWitnesses(last_seen=GONE_1_FIRST, rose_after=100.16, rose_at=100.20), (300, "rank 0", 0),
     "torchrun: rank 0"),
])
def test_the_victim_is_who_the_kernel_or_the_samples_say_not_torchrun_s_tie(
        witnesses: OomWitnesses, victim: tuple[int, str, int | None], evidence: str) -> None:
    found = find_oom_victim(1, [], RANK_ROLES, 10, TORCHRUN_SAYS_0, witnesses)
    assert found is not None
    assert (found[0].pid, found[0].role, found[0].rank) == victim
    assert found[1].startswith(evidence)


def test_torchrun_s_pick_is_evidence_when_it_logged_stopping_the_others() -> None:
    # GIVEN no kernel log, ranks gone in one tick, and torchrun naming rank 1 and having stopped 0
    agent = TORCHRUN_SAYS_0.model_copy(update={"failure": TORCHRUN_SAYS_0.failure.model_copy(  # type: ignore[union-attr]
        update={"rank": 1, "local_rank": 1, "pid": 321, "ranks_stopped": [0]})})
    found = find_oom_victim(1, [], RANK_ROLES, 10, agent, OomWitnesses(last_seen={300: 1.0, 321: 1.0}))
    assert found is not None and (found[0].pid, found[0].rank) == (321, 1)
    assert found[1] == ("torchrun: rank 1 (local rank 1, pid 321) was killed by SIGKILL; it stopped "
                        "rank(s) 0 itself")


def test_the_kernel_s_first_kill_of_the_stage_is_the_victim() -> None:
    # GIVEN the kernel killed the worker (pid 4242), then the main process (pid 77) in the stage's
    # cgroup; the main process's exit code alone would name the main process
    kills = (memlimit.KernelKill(4242, "pt_data_worker", OURS, "Killed process 4242 (pt_data_worker)"),
             memlimit.KernelKill(77, "python3", OURS, "Killed process 77 (python3)"))
    found = find_oom_victim(-9, [], {77: "main", 4242: "worker 0"}, 77, None,
                            OomWitnesses(kills=kills, cgroup=OURS))
    assert found is not None and (found[0].role, found[0].pid) == ("worker 0", 4242)
    # AND without the log, the exit code's word, with why the kernel's was not heard
    found = find_oom_victim(-9, [], {77: "main"}, 77, None, OomWitnesses(kernel_error="/dev/kmsg: x"))
    assert found is not None and found[0].role == "main"
    assert found[1] == "the stage's main process was killed by SIGKILL (the kernel's log was not read: /dev/kmsg: x)"


def _record(**kw: Any) -> OomPostMortem:
    base: dict[str, Any] = {
        "victim": OomVictim(pid=77, role="main"), "epoch": 1, "step": 20, "phase": "forward",
        "t": 1010.0, "victim_rss": 260 * MiB,
        "limit": MemoryLimit(bytes=600 * MiB, source="limits.memory", cgroup="/h-1-train"),
        "counter": "/sys/fs/cgroup/memory/h-1-train/memory.oom_control", "oom_kills": 1,
        "evidence": "the stage's main process was killed by SIGKILL"}
    return OomPostMortem(**{**base, **kw})


def test_an_oom_kill_outranks_the_exit_code_but_not_the_harness_being_stopped() -> None:
    oom = _record(victim=OomVictim(pid=4242, role="worker 0"))
    verdict = classify_outcome(1, oom=oom)
    assert verdict.status == Status.OOM_KILLED
    assert verdict.message == ("the kernel's OOM killer killed worker 0 (pid 4242) under a memory "
                               "limit of 600 MiB (limits.memory: /h-1-train)")
    assert classify_outcome(-9, stopped_by=signal.SIGINT, oom=oom).status == Status.INTERRUPTED
    assert classify_outcome(-9).status == Status.KILLED  # no counter rose: a plain kill


# ---- counters and limits -------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "text", "count"), [
    ("memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n", 3),  # cgroup v1
    ("memory.events", "low 0\nhigh 0\nmax 12\noom 2\noom_kill 2\noom_group_kill 0\n", 2),  # v2
    ("vmstat", "pgfault 99\noom_kill 7\nnr_free_pages 1\n", 7),  # the machine's
    ("empty", "oom_kill_disable 0\n", None),
])
def test_oom_kill_counters_read_from_each_kind_of_file(tmp_path: Path, name: str, text: str,
                                                      count: int | None) -> None:
    (tmp_path / name).write_text(text)
    assert memlimit.OomCounter(tmp_path / name).read() == count


def test_the_limit_in_force_is_the_smallest_on_the_cgroup_path(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a v1 memory hierarchy: the root unlimited, a parent at 1 GiB, the process's at 4 GiB
    mount = tmp_path / "memory"
    own = mount / "jobs" / "mine"
    own.mkdir(parents=True)
    (mount / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    (mount / "jobs" / "memory.limit_in_bytes").write_text(f"{1 << 30}\n")
    (own / "memory.limit_in_bytes").write_text(f"{4 << 30}\n")
    monkeypatch.setattr(memlimit, "CGROUP_ROOT", tmp_path)
    monkeypatch.setattr(memlimit, "_own_paths", lambda pid="self": {"memory": "/jobs/mine"})
    monkeypatch.setattr(memlimit, "machine_memory", lambda: 64 << 30)
    # THEN the parent's limit holds
    assert memlimit.limit_in_force() == MemoryLimit(bytes=1 << 30, source="cgroup", cgroup="/jobs")
    # AND with no limit on the path, the machine's memory
    (mount / "jobs" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    (own / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    assert memlimit.limit_in_force() == MemoryLimit(bytes=64 << 30, source="machine")


# ---- the post-mortem and the headroom from a run's files -----------------------------------------

def _oom_run(tmp_path: Path, *, victim: OomVictim, limit: MemoryLimit, peak_tree_rss: int,
             cuda_reserved: int | None = None) -> Path:
    """A stage whose main process grows 8 MiB a step, two steps a second, for 10 s (pid 100),
    beside a worker that stays at 50 MiB (pid 201); killed at t=1010, step 20."""
    rows = []
    for i in range(21):
        t = 1000.0 + i / 2
        rows.append(sample_row(t=t, pid=100, ppid=1, role="main", rss=(100 + 8 * i) * MiB,
                               stage="train", epoch=1, step=i, phase="forward",
                               rss_anon=(60 + 8 * i) * MiB, rss_file=40 * MiB, rss_shmem=0,
                               cuda_reserved=cuda_reserved, cuda_allocated=cuda_reserved))
        rows.append(sample_row(t=t, pid=201, ppid=100, role="worker 0", rss=50 * MiB,
                               stage="train", epoch=1, step=i, phase="forward"))
    run = write_run(tmp_path, status="oom_killed", rows=rows, events=[], snapshots=[])
    manifest = json.loads((run / "manifest.json").read_text())
    stage = manifest["stages"][0]
    stage.update(status="oom_killed", exit_code=-9, signal="SIGKILL", peak_tree_rss=peak_tree_rss,
                 memory_limit=limit.model_dump(mode="json"))
    stage["oom"] = _record(victim=victim, limit=limit, t=1010.0, victim_rss=None).model_dump(mode="json")
    (run / "manifest.json").write_text(json.dumps(manifest))
    return run


def _moment(when: str, t: float, tensors_mib: int) -> Moment:
    parts = Parts(file_torch=40 * MiB, tensor_other=tensors_mib * MiB)
    return Moment(when=when, stage="train", t=t, processes=[ProcessComposition(  # type: ignore[arg-type]
        pid=100, role="main", source="inside", rss=parts.total(), parts=parts)])


def test_the_post_mortem_gives_the_last_seconds_growth_per_second_and_per_step(tmp_path: Path) -> None:
    limit = MemoryLimit(bytes=600 * MiB, source="limits.memory", cgroup="/h-1-train")
    run_dir = _oom_run(tmp_path, victim=OomVictim(pid=100, role="main"), limit=limit,
                       peak_tree_rss=310 * MiB)
    # composition moments: at 1004 and 1009 (the last before the death at 1010), one after it (not
    # the victim's last), and a line the kill cut short
    moments = [_moment("start", 1004.0, 140), _moment("peak", 1009.0, 220), _moment("peak", 1011.0, 999)]
    (run_dir / "stages" / "train" / "composition.jsonl").write_text(
        "".join(m.model_dump_json() + "\n" for m in moments) + '{"when": "pe')
    run = load_run(run_dir)
    (pm,) = post_mortems(run)
    assert (pm.composition_when, pm.composition_before_s) == ("peak", 1.0)
    assert pm.composition == {"file_torch": 40 * MiB, "tensor_other": 220 * MiB}
    # the main process at its last sample: 100 + 8 * 20 MiB, its parts as the samples say
    assert (pm.victim_rss, pm.victim_anon, pm.victim_file) == (260 * MiB, 220 * MiB, 40 * MiB)
    assert (pm.tree_rss, pm.processes) == (310 * MiB, 2)
    # the last 5 s (t in (1005, 1010]): 16 MiB/s, 8 MiB per step; the tree grew as fast
    assert pm.window_s == 4.5
    assert pm.mib_per_s == pytest.approx(16.0)
    assert pm.mib_per_step == pytest.approx(8.0)
    assert pm.tree_mib_per_s == pytest.approx(16.0)
    text = "\n".join(oom_lines([pm.to_dict()]))
    assert text.startswith("harness: OOM-KILLED: stage 'train': the kernel's OOM killer killed "
                           "main (pid 100) at epoch 1, step 20, phase forward")
    assert "growing    16.0 MiB/s, 8.00 MiB/step over its last 4.5 s" in text
    assert "made of    (peak, 1 s before) tensor_other 220 MiB, file_torch 40 MiB" in text


@pytest.mark.parametrize("before", ["start", "epoch"])
def test_the_rate_per_step_counts_only_the_loop_s_steps(tmp_path: Path, before: str) -> None:
    # GIVEN a main process killed 2 s into its loop, 8 MiB a step at 4 steps a second; before the
    # loop either the stage's start (step 0, RSS rising 40 MiB/s with no step taken) or the end
    # of the previous epoch (steps 30-38 at 2 MiB a step)
    rows = []
    for i in range(12):  # t 1000.0 .. 1002.75
        t = 1000.0 + i / 4
        if before == "start":
            rows.append(sample_row(t=t, pid=100, role="main", rss=(200 + 10 * i) * MiB, stage="train",
                                   epoch=1, step=0, phase="data"))
        else:
            rows.append(sample_row(t=t, pid=100, role="main", rss=(300 + 2 * i) * MiB, stage="train",
                                   epoch=1, step=30 + i, phase="forward"))
    for i in range(8):  # t 1003.0 .. 1004.75: steps 1..8 of the loop it died in
        rows.append(sample_row(t=1003.0 + i / 4, pid=100, role="main", rss=(400 + 8 * i) * MiB,
                               stage="train", epoch=2 if before == "epoch" else 1, step=i + 1,
                               phase="forward"))
    run_dir = write_run(tmp_path, status="oom_killed", rows=rows, events=[], snapshots=[])
    manifest = json.loads((run_dir / "manifest.json").read_text())
    manifest["stages"][0].update(status="oom_killed", exit_code=-9, signal="SIGKILL")
    manifest["stages"][0]["oom"] = _record(victim=OomVictim(pid=100, role="main"), t=1004.75,
                                           victim_rss=None).model_dump(mode="json")
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    (pm,) = post_mortems(load_run(run_dir))
    # THEN the 5 s window holds the rows before the loop, but the rate per step is the loop's
    assert pm.window_s == pytest.approx(4.75)
    assert pm.mib_per_step == pytest.approx(8.0)


def test_a_worker_victim_s_post_mortem_reads_its_own_rows(tmp_path: Path) -> None:
    limit = MemoryLimit(bytes=600 * MiB, source="limits.memory")
    run = load_run(_oom_run(tmp_path, victim=OomVictim(pid=201, role="worker 0"), limit=limit,
                            peak_tree_rss=310 * MiB))
    (pm,) = post_mortems(run)
    assert pm.victim_rss == 50 * MiB
    assert pm.mib_per_s == pytest.approx(0.0)  # the worker held steady; the tree did not
    assert pm.tree_mib_per_s == pytest.approx(16.0)


@pytest.mark.parametrize(("limit", "peak_tree_rss", "cuda", "fires", "measure"), [
    # the cgroup's charge is what the kernel holds to the limit: 95 % fires, whatever tree RSS says
    (MemoryLimit(bytes=1000 * MiB, source="limits.memory", peak_charged=950 * MiB), 2000 * MiB,
     None, True, "cgroup charge"),
    (MemoryLimit(bytes=1000 * MiB, source="limits.memory", peak_charged=500 * MiB), 2000 * MiB,
     None, False, "cgroup charge"),
    # without one, the peak tree RSS against the machine's memory
    (MemoryLimit(bytes=1000 * MiB, source="machine"), 910 * MiB, None, True, "tree RSS"),
    (MemoryLimit(bytes=1000 * MiB, source="cgroup", cgroup="/jobs"), 890 * MiB, None, False, "tree RSS"),
    # a CUDA device near full fires on its own
    (MemoryLimit(bytes=1000 * MiB, source="machine"), 100 * MiB, 950 * MiB, True, "tree RSS"),
])
def test_headroom_shares_and_the_near_limit_finding(tmp_path: Path, limit: MemoryLimit,
                                                    peak_tree_rss: int, cuda: int | None,
                                                    fires: bool, measure: str) -> None:
    run = load_run(_oom_run(tmp_path, victim=OomVictim(pid=100, role="main"), limit=limit,
                            peak_tree_rss=peak_tree_rss, cuda_reserved=cuda))
    device_total = 1000 * MiB if cuda is not None else None
    room = headroom_mod.headroom(run, device_total, cuda)
    (host,) = room.host
    peak = limit.peak_charged if limit.peak_charged is not None else peak_tree_rss
    assert (host.limit, host.peak, host.measure) == (limit.bytes, peak, measure)
    assert host.share == pytest.approx(peak / limit.bytes)
    assert host.main_share == pytest.approx(160 * MiB / limit.bytes)  # the manifest's peak_main_rss
    found = headroom_mod.near_limit(run, device_total)
    assert (found is not None) == fires
    if found is not None and cuda is None:
        assert f"peak {measure}" in found.text and f"{peak / limit.bytes:.0%}" in found.title


# ---- under a real memory cgroup ------------------------------------------------------------------

def _cgroup_reason() -> str | None:
    """Why no memory cgroup can be made here (None: one can)."""
    try:
        memlimit.check(64 * MiB, "test")
    except Exception as exc:  # noqa: BLE001 - any reason is the skip's reason
        return str(exc)
    return None


needs_cgroup = pytest.mark.skipif(_cgroup_reason() is not None,
                                  reason=f"no memory cgroup can be made: {_cgroup_reason()}")


def _run(tmp_path: Path, name: str, args: list[str], limit: str, expect: int,
         report: bool = False, **sections: Any) -> tuple[Path, dict[str, Any]]:
    """``harness run`` of oom_grow.py under ``limits.memory: limit``: its run directory and its
    one stage's manifest entry."""
    from harness import cli

    scenario = {"name": name, "stages": ["main"],
                "workload": {"entry": str(WORKLOADS / "oom_grow.py"), "args": args},
                "memray": {"mode": "off"}, "tensors": {"trace_steps": 0, "trace_every": 0},
                "limits": {"memory": limit}}
    scenario.update(sections)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(scenario), encoding="utf-8")
    reports = tmp_path / "reports"
    argv = ["run", str(path), "--reports", str(reports), "--quiet"] + ([] if report else ["--no-report"])
    assert cli.main(argv) == expect
    (run_dir,) = (reports / name).iterdir()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == manifest["stages"][0]["status"]
    return run_dir, manifest["stages"][0]


@pytest.mark.slow
@needs_cgroup
def test_main_process_killed_by_the_oom_killer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # a memray window open from step 3: the kill cuts it short, and its lines are read
    run_dir, stage = _run(tmp_path, "oommain", ["--where", "main", "--mib", "16", "--pause", "0.01"],
                          "500 MiB", 137, report=True, memray={"train_start": 3, "train_steps": 500})
    out = capsys.readouterr().out
    assert (stage["status"], stage["signal"]) == ("oom_killed", "SIGKILL")
    oom = stage["oom"]
    assert oom["victim"]["role"] == "main" and oom["victim"]["pid"] is not None
    assert (oom["epoch"], oom["phase"]) == (1, "forward") and oom["step"] > 0
    assert oom["limit"]["bytes"] == 500 * MiB and oom["limit"]["source"] == "limits.memory"
    assert oom["oom_kills"] >= 1 and oom["counter"].endswith("memory.oom_control")
    # the kernel held the charge to the limit; the harness (outside it) wrote the report
    assert 450 * MiB < stage["memory_limit"]["peak_charged"] <= 500 * MiB
    first = out.splitlines()[0]
    assert first.startswith("harness: OOM-KILLED: stage 'main': the kernel's OOM killer killed main (pid ")
    summary = json.loads((run_dir / "report" / "summary.json").read_text())
    (pm,) = summary["oom"]
    # 16 MiB a step planted, read from 25 Hz samples against the cell's step. The kill comes ~2 s
    # into the loop, so most of the 5 s window is the stage's start at step 0 (RSS rising with no
    # step taken), which read 20-26 MiB/step while it counted; over the loop's steps alone 16.1-16.6
    # in 11 runs here.
    # The rest: a row's step is read just before its RSS, so a row can hold the next step's tensor
    assert pm["mib_per_step"] == pytest.approx(16, rel=0.1)
    # the line that grew: 16 MiB a step since the window opened, still allocated when it died
    top = pm["lines"][0]
    assert top["line"].endswith(f"oom_grow.py:{GROWTH_LINE})") and top["bytes"] >= 5 * 16 * MiB
    assert (pm["capture"], pm["lines_measure"]) == ("main-e1-train", "still allocated at its end")
    assert summary["headroom"]["host"][0]["measure"] == "cgroup charge"
    assert "near_limit" in {f["kind"] for f in summary["findings"]}
    assert "Killed by the kernel's OOM killer: main" in (run_dir / "report" / "report.html").read_text()


@pytest.mark.slow
@needs_cgroup
def test_worker_killed_by_the_oom_killer(tmp_path: Path) -> None:
    run_dir, stage = _run(tmp_path, "oomworker", ["--where", "worker", "--mib", "16", "--pause", "0.01"],
                          "500 MiB", 137)
    assert stage["status"] == "oom_killed" and stage["exit_code"] == 1  # the main saw the worker die
    oom = stage["oom"]
    assert oom["victim"]["role"] == "worker 0"
    pid = oom["victim"]["pid"]
    if memlimit.KernelLog().error is None:  # the kernel's word first
        assert oom["evidence"].startswith(f"kernel: Memory cgroup out of memory: Killed process {pid} (")
    else:  # else the DataLoader's
        assert f"pid(s) {pid})" in oom["evidence"] or f"pid {pid})" in oom["evidence"]
    log = (run_dir / "stages" / "main" / STAGE_LOG_FILE).read_text()
    assert f"DataLoader worker (pid {pid}) is killed by signal" in log or f"pid(s) {pid})" in log
    assert oom["phase"] in ("data", "forward") and oom["epoch"] == 1


@pytest.mark.slow
@needs_cgroup
def test_a_generous_limit_is_a_clean_run_with_its_headroom(tmp_path: Path) -> None:
    run_dir, stage = _run(tmp_path, "roomy", ["--where", "worker", "--mib", "4", "--steps", "10"],
                          "4 GiB", 0)
    assert stage["status"] == "ok" and stage["oom"] is None
    limit = stage["memory_limit"]
    assert (limit["bytes"], limit["source"]) == (4 << 30, "limits.memory")
    # the charge is the tree's memory, well under the limit: no near_limit
    assert 100 * MiB < limit["peak_charged"] < 2 << 30
    room = headroom_mod.headroom(load_run(run_dir))
    assert room.host[0].share is not None and room.host[0].share < 0.5
    assert headroom_mod.near_limit(load_run(run_dir)) is None


@pytest.mark.slow
@needs_cgroup
def test_rank_killed_by_the_oom_killer(tmp_path: Path) -> None:
    # torchrun stops the other rank within the second it sees rank 1 die, and can name either
    # first; the kernel's log (or, where it cannot be read, the samples) names rank 1
    run_dir, stage = _run(tmp_path, "oomrank", ["--where", "rank1", "--mib", "16", "--pause", "0.01"],
                          "900 MiB", 137, distributed={"nproc_per_node": 2})
    assert stage["status"] == "oom_killed"
    oom = stage["oom"]
    assert (oom["victim"]["role"], oom["victim"]["rank"]) == ("rank 1", 1)
    assert stage["rank"] == 1
    if memlimit.KernelLog().error is None:
        assert oom["evidence"].startswith("kernel: Memory cgroup out of memory: Killed process "
                                          f"{oom['victim']['pid']} (")
    else:
        assert oom["evidence"].startswith("samples: rank 1 (pid ")
    assert oom["phase"] == "forward"
    # AND the rungs below the kernel's log, from this run's files: torchrun's pick, now that the
    # agent heard it stop rank 0 itself ...
    from harness.control import distributed

    agent = distributed.read_record(run_dir / "stages" / "main")
    assert agent is not None and agent.failure is not None
    assert (agent.failure.rank, agent.failure.ranks_failed, agent.failure.ranks_stopped) == (1, [0, 1], [0])
    samples = load_run(run_dir).stages[0].samples
    roles = samples.groupby("pid")["role"].last().to_dict()
    last_seen = samples.groupby("pid")["t"].max().to_dict()
    no_kernel = OomWitnesses(kernel_error="not asked", last_seen=last_seen)
    found = find_oom_victim(1, [], roles, agent.pid, agent, no_kernel)
    assert found is not None and found[0].rank == 1 and found[1].endswith("it stopped rank(s) 0 itself "
                                                                          "(the kernel's log was not read: not asked)")
    # ... and without that, the samples: rank 1's stopped a tick or more before rank 0's (0.04-0.22
    # s in 34 of 35 runs here; in one both went in one tick, which leaves torchrun's bare pick)
    agent.failure.ranks_stopped = []
    found = find_oom_victim(1, [], roles, agent.pid, agent, no_kernel)
    assert found is not None
    gone = {role: last_seen[pid] for pid, role in roles.items() if role in ("rank 0", "rank 1")}
    if gone["rank 1"] < gone["rank 0"]:
        assert (found[0].rank, found[1].split(" was ")[0]) == (1, f"samples: rank 1 (pid {oom['victim']['pid']})")
    else:
        assert found[1].startswith("torchrun: ")


# ---- a CUDA OutOfMemoryError: the allocator's state, from the recorded H100 data -----------------

H100 = Path(__file__).resolve().parents[2] / "shared" / "data" / "cuda-h100"


@pytest.mark.skipif(not (H100 / "cuda-snapshot-bs256.pickle").exists(), reason="no recorded H100 data")
def test_the_oom_observer_records_the_allocator_state_from_recorded_h100_data(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import pickle
    from types import SimpleNamespace

    import torch

    from harness.analysis.cuda import summarize_history
    from harness.analysis.oom import cuda_ooms
    from harness.probe.cuda import OomObserver
    from harness.probe.steps import EventWriter
    from harness.render.terminal import cuda_oom_lines

    # GIVEN the allocator as recorded on an H100 after 20 steps at batch 256 (our own recording)
    with open(H100 / "cuda-snapshot-bs256.pickle", "rb") as fh:
        snapshot = pickle.load(fh)  # noqa: S301 - our own recording (see its README)
    recorded = json.loads((H100 / "cuda-memory-stats.json").read_text())
    stats, total = recorded["runs"]["256"]["final"], recorded["info"]["total_memory"]
    monkeypatch.setattr(torch.cuda.memory, "_snapshot", lambda *a, **k: snapshot)
    monkeypatch.setattr(torch.cuda, "memory_stats", lambda device=None: stats)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device: SimpleNamespace(total_memory=total))
    run = write_run(tmp_path, status="failed", events=[], snapshots=[])
    sdir = run / "stages" / "train"
    events = EventWriter(sdir / "events.jsonl")
    observer = OomObserver(events.write, lambda: (1, 7, "backward"), "train", sdir / "cuda", 64 * MiB)
    observer.active = True  # attach() needs a driver; torch calls the observer the same way
    # WHEN torch reports a failed allocation of 2 GiB with 300 MiB free on the device
    observer(0, 2 << 30, stats["reserved_bytes.all.current"], 300 * MiB)
    events.close()
    # THEN the event holds the request, reserved vs allocated and the largest free block
    summary_cuda = summarize_history(snapshot)
    rows = [json.loads(line) for line in (sdir / "events.jsonl").read_text().splitlines()]
    (ev,) = [r for r in rows if r["kind"] == "cuda_oom"]
    assert (ev["epoch"], ev["step"], ev["phase"], ev["device"]) == (1, 7, "backward", 0)
    assert (ev["requested"], ev["reserved"], ev["allocated"]) == (2 << 30, 113_246_208, 71_405_056)
    assert ev["largest_free_block"] == 20 * MiB == summary_cuda.largest_free_block
    assert (ev["segments"], ev["device_free"], ev["device_total"]) == (6, 300 * MiB, total)
    assert ev["file"] == "cuda/train-oom1.pickle"
    with open(sdir / ev["file"], "rb") as fh:
        assert len(pickle.load(fh)["segments"]) == 6  # noqa: S301 - written just now
    # AND the report's summary opens with it
    (row,) = cuda_ooms(load_run(run))
    text = "\n".join(cuda_oom_lines([row]))
    assert text.splitlines()[0] == ("harness: CUDA OUT OF MEMORY: stage 'train' (epoch 1, step 7, "
                                    "phase backward) asked for 2,048 MiB on cuda:0")
    assert "reserved 108 MiB, allocated 68 MiB (cached 40 MiB), largest free block 20 MiB" in text


def test_limits_memory_is_a_size_and_a_bad_one_names_the_key(tmp_path: Path) -> None:
    from conftest import write_scenario

    from harness.errors import ScenarioError
    from harness.records import scenario

    path = write_scenario(tmp_path / "s.yaml", limits={"memory": "1.5 GiB"})
    assert scenario.load(path).limits.memory == 3 << 29
    with pytest.raises(ScenarioError, match=r"limits\.memory"):
        scenario.load(write_scenario(tmp_path / "bad.yaml", limits={"memory": "lots"}))


def test_no_memory_controller_is_one_line_naming_the_key(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.errors import ScenarioError

    monkeypatch.setattr(memlimit, "CGROUP_ROOT", tmp_path)  # nothing mounted there
    with pytest.raises(ScenarioError) as caught:
        memlimit.check(512 * MiB, "s.yaml")
    assert str(caught.value) == ("s.yaml: limits.memory: this machine has no memory cgroup "
                                 f"controller mounted under {tmp_path} to limit a stage with")
