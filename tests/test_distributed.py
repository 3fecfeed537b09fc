"""Distributed stages under torchrun: the scenario section, the roles, the census, the runs.

The fast tests feed the pure parts (roles, which failure came first, the census of a DDP or FSDP2
model in a one-rank process group); the slow ones start real 2-rank jobs (gloo on the CPU).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import yaml
from conftest import WORKLOADS, assert_gone, latest_run, read_events, write_scenario

from harness.analysis.load import read_samples
from harness.control import distributed
from harness.errors import ScenarioError
from harness.layout import AGENT_PID_ENV, SAMPLES_DIR
from harness.probe import epoch_snapshot, tensors
from harness.probe.processes import AgentRoles
from harness.records import scenario
from harness.records.manifest import RankFailure

PARAM_BYTES = 27_528  # the tutorial net: 6,882 float32 parameters


# -- the scenario's distributed section ---------------------------------------------------------
def test_default_is_not_distributed(tmp_path: Path) -> None:
    assert scenario.load(write_scenario(tmp_path / "s.yaml")).distributed is None


def test_set_switches_it_on(tmp_path: Path) -> None:
    sc = scenario.load(write_scenario(tmp_path / "s.yaml"), ["distributed.nproc_per_node=2"])
    assert sc.distributed is not None
    assert (sc.distributed.nproc_per_node, sc.distributed.backend, sc.distributed.strategy) == (2, "gloo", "ddp")


@pytest.mark.parametrize(("override", "key", "text"), [
    ("distributed.nproc_per_node=0", "distributed.nproc_per_node", "greater than or equal to 1"),
    ("distributed.backend=mpi", "distributed.backend", "'gloo' or 'nccl'"),
    ("distributed.strategy=zero", "distributed.strategy", "'ddp' or 'fsdp'"),
    ("distributed.rdzv_endpoint=nohost", "distributed.rdzv_endpoint", "HOST:PORT"),
    ("distributed.rdzv_endpoint=h:70000", "distributed.rdzv_endpoint", "port out of range"),
    ("distributed.rdzv_timeout_s=0", "distributed.rdzv_timeout_s", "greater than 0"),
    ("distributed.node_rank=1", "distributed", "not below nnodes"),
    ("distributed.nnodes=2", "distributed", "need rdzv_endpoint"),
    ("distributed.workers=2", "distributed.workers", "unknown key"),
])
def test_bad_values_are_one_line(tmp_path: Path, override: str, key: str, text: str) -> None:
    with pytest.raises(ScenarioError) as err:
        scenario.load(write_scenario(tmp_path / "s.yaml"), [override])
    message = str(err.value)
    assert "\n" not in message
    assert f": {key}: " in message and text in message


def _dist_scenario(tmp_path: Path, **dist: Any) -> Path:
    return write_scenario(tmp_path / "s.yaml", memray={"mode": "off"}, distributed=dist)


def test_nccl_without_cuda_exits_2(tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, _, err = cli("run", str(_dist_scenario(tmp_path, nproc_per_node=2, backend="nccl")),
                       "--reports", str(tmp_path / "r"))
    assert code == 2
    assert err.strip().count("\n") == 0 and "distributed.backend: 'nccl' needs CUDA" in err
    assert not (tmp_path / "r").exists()  # checked before a run directory is made


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_endpoint_exits_2_within_the_timeout(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    path = _dist_scenario(tmp_path, nnodes=2, node_rank=1, rdzv_endpoint=f"127.0.0.1:{_closed_port()}",
                          rdzv_timeout_s=1)
    t0 = time.monotonic()
    code, _, err = cli("run", str(path), "--reports", str(tmp_path / "r"))
    assert code == 2
    assert time.monotonic() - t0 < 10
    assert err.strip().count("\n") == 0
    assert "distributed.rdzv_endpoint: nothing answers at 127.0.0.1:" in err and "within 1 s" in err


def test_unresolvable_endpoint_exits_2(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    code, _, err = cli("run", str(_dist_scenario(tmp_path, rdzv_endpoint="no-such-host.invalid:29400")),
                       "--reports", str(tmp_path / "r"))
    assert code == 2 and "distributed.rdzv_endpoint: cannot resolve 'no-such-host.invalid'" in err


def test_node_zero_on_a_local_endpoint_hosts_the_store() -> None:
    dist = scenario.DistributedConfig(nnodes=2, node_rank=0, rdzv_endpoint="127.0.0.1:29400")
    assert distributed.hosts_store(dist)
    assert not distributed.hosts_store(dist.model_copy(update={"node_rank": 1}))
    assert distributed.hosts_store(scenario.DistributedConfig())


# -- roles --------------------------------------------------------------------------------------
AGENT, R0, R1, W00, W01, W10, TRACKER = 100, 110, 120, 111, 112, 121, 130
RANK_CMD = ["python", "-u", "-m", "harness.probe.stage", "/run", "train", "--rank"]
CMDLINES = {
    AGENT: ["python", "-m", "harness.control.agent", "/run", "train"],
    R0: RANK_CMD, R1: RANK_CMD, W00: RANK_CMD, W01: RANK_CMD, W10: RANK_CMD,
    TRACKER: ["python", "-c", "from multiprocessing.resource_tracker import main; main(3)"],
}


def test_agent_roles_name_ranks_and_their_workers() -> None:
    # GIVEN an agent with two ranks (rank 1's pid first in the tree), their forked workers and
    # another child of the agent
    cmdlines = dict(CMDLINES)
    roles = AgentRoles(AGENT, cmdline=cmdlines.get, age=lambda pid: 5.0, rank_of={R0: 1, R1: 0}.get)
    tree = [(AGENT, 0), (R0, AGENT), (R1, AGENT), (TRACKER, AGENT), (W00, R0), (W01, R0), (W10, R1)]
    # WHEN each is named
    named = {pid: roles.role(pid, ppid) for pid, ppid in tree}
    # THEN ranks come from the environment, workers take slots within their rank
    assert named == {AGENT: "agent", R0: "rank 1", R1: "rank 0", TRACKER: "child",
                     W00: "rank 1 worker 0", W01: "rank 1 worker 1", W10: "rank 0 worker 0"}
    assert [roles.rank(p) for p in (AGENT, R0, W01, R1, W10, TRACKER)] == [None, 1, 1, 0, 0, None]
    assert roles.methods_seen == {"fork"} and roles.methods[W10] == "fork"
    # and a gone worker's slot goes to the rank's next new worker
    roles.forget(W00)
    cmdlines[131] = RANK_CMD
    assert roles.role(131, R0) == "rank 1 worker 0"
    assert roles.rank(131) == 1


def test_a_child_of_the_agent_not_yet_execd_is_asked_again() -> None:
    cmdlines = dict(CMDLINES)
    cmdlines[R0] = CMDLINES[AGENT]  # forked by the agent, exec not yet done
    roles = AgentRoles(AGENT, cmdline=cmdlines.get, age=lambda pid: 0.01, rank_of={R0: 0}.get)
    assert roles.role(R0, AGENT) is None
    cmdlines[R0] = RANK_CMD
    assert roles.role(R0, AGENT) == "rank 0"


def test_a_rank_whose_environment_cannot_be_read_is_asked_again() -> None:
    ranks: dict[int, int] = {}
    roles = AgentRoles(AGENT, cmdline=CMDLINES.get, age=lambda pid: 5.0, rank_of=ranks.get)
    assert roles.role(R0, AGENT) is None
    ranks[R0] = 3
    assert roles.role(R0, AGENT) == "rank 3"


# -- which failure came first -------------------------------------------------------------------
def _failure(exitcode: int, timestamp: int = 100, pid: int = 1) -> SimpleNamespace:
    return SimpleNamespace(local_rank=0, pid=pid, exitcode=exitcode, timestamp=timestamp)


@pytest.mark.parametrize(("failures", "times", "first"), [
    ({0: _failure(-15), 1: _failure(-9)}, {}, 1),  # torchrun's SIGTERM is a consequence
    ({0: _failure(1), 1: _failure(-9)}, {}, 1),  # a rank left in a collective fails after
    ({0: _failure(1), 1: _failure(1)}, {0: 5.0, 1: 4.0}, 1),  # the earlier error
    ({0: _failure(1), 1: _failure(-9, timestamp=101)}, {}, 0),  # an earlier second wins
    ({2: _failure(1), 3: _failure(1)}, {}, 2),
])
def test_first_failure(failures: dict[int, Any], times: dict[int, float], first: int) -> None:
    got = distributed.first_failure(failures, times.get)
    assert got.rank == first
    assert got.ranks_failed == sorted(failures)


def test_a_rank_torchrun_stopped_itself_comes_after_the_one_it_did_not() -> None:
    # GIVEN rank 1 (pid 321) killed by the OOM killer and rank 0 (pid 300), which torchrun then
    # stopped, ending by SIGKILL in the same second: alike in torchrun's records
    failures = {0: _failure(-9, pid=300), 1: _failure(-9, pid=321)}
    assert distributed.first_failure(failures).rank == 0  # the tie, by rank
    # WHEN torchrun's log said it sent rank 0 its closing signal
    with distributed.StoppedRanks() as stopped:
        logging.getLogger("torch.distributed.elastic.multiprocessing.api").warning(
            "Sending process %s closing signal %s", 300, "SIGTERM")
        logging.getLogger("torch.distributed.elastic.multiprocessing.api").warning("other %s", 5)
    logging.getLogger("torch.distributed.elastic.multiprocessing.api").warning(
        "Sending process %s closing signal %s", 321, "SIGTERM")  # once removed, not heard
    # THEN rank 1 failed first, and the record says whom torchrun stopped
    assert stopped.pids == {300}
    got = distributed.first_failure(failures, stopped=stopped.pids)
    assert (got.rank, got.pid, got.ranks_failed, got.ranks_stopped) == (1, 321, [0, 1], [0])


def test_describe() -> None:
    killed = RankFailure(rank=1, local_rank=1, pid=7, exit_code=-9, signal="SIGKILL")
    assert distributed.describe(killed) == "rank 1 (local rank 1, pid 7) was killed by SIGKILL"
    exited = killed.model_copy(update={"exit_code": 1, "signal": None})
    assert distributed.describe(exited).endswith("exited with 1")
    assert distributed.describe(None) == "no rank failed"


# -- the census of a wrapped model, in a one-rank process group -----------------------------------
@pytest.fixture
def group(tmp_path: Path):  # type: ignore[no-untyped-def]
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def _train_step(net: torch.nn.Module) -> torch.optim.Optimizer:
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    net(torch.randn(2, 3, 32, 32)).sum().backward()
    optimizer.step()
    return optimizer


def test_ddp_census_counts_parameters_gradients_and_buckets(group: None) -> None:
    from model.net import Net

    net = torch.nn.parallel.DistributedDataParallel(Net())
    optimizer = _train_step(net)
    snap = epoch_snapshot.take("epoch-1", stage="train", epoch=1, model=net, optimizer=optimizer,
                               device="cpu", memray_active=False)
    tb = snap.tensor_bytes
    assert (tb["parameters"], tb["gradients"], tb["optimizer_state"]) == (PARAM_BYTES,) * 3
    assert snap.ddp is not None
    assert snap.ddp.model_dump() == {"bucket_sizes": [PARAM_BYTES], "gradient_as_bucket_view": False}
    assert tb["ddp_buckets"] == PARAM_BYTES


def test_ddp_buckets_that_are_the_gradients_are_not_counted_twice(group: None) -> None:
    from model.net import Net

    net = torch.nn.parallel.DistributedDataParallel(Net(), gradient_as_bucket_view=True)
    _train_step(net)
    snap = epoch_snapshot.take("x", stage="train", epoch=1, model=net, optimizer=None, device="cpu",
                               memray_active=False)
    assert snap.ddp is not None and snap.ddp.gradient_as_bucket_view is True
    assert "ddp_buckets" not in snap.tensor_bytes
    assert tensors.ddp_buckets(net.module) is None  # a plain module has none


def test_fsdp_census_counts_local_shards(group: None) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from model.net import Net

    net = Net()
    fully_shard(net, mesh=init_device_mesh("cpu", (1,)))
    optimizer = _train_step(net)
    records = tensors.census(net, optimizer)
    by = tensors.bytes_by_category(records)
    # one rank holds the whole of each shard: the DTensors' local tensors, counted once each
    assert (by["parameters"], by["gradients"], by["optimizer_state"]) == (PARAM_BYTES,) * 3
    assert all(r.address for r in records)


# -- real jobs ------------------------------------------------------------------------------------
def _samples(stage_path: Path) -> Any:
    problems: list[str] = []
    df = read_samples(stage_path / SAMPLES_DIR, problems)
    assert not problems
    return df


def _census(run: Path, stage: str, rank: int, label: str = "epoch-1") -> dict[str, int]:
    snap = json.loads((run / "stages" / stage / f"rank{rank}" / "snapshots" / f"{label}.json").read_text())
    assert snap["rank"] == rank
    return dict(snap["tensor_bytes"])


def _assert_gone(pids: set[int]) -> None:
    assert_gone(pids, "left running")


@pytest.mark.slow
def test_ddp_run_samples_and_census_each_rank(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    path = write_scenario(tmp_path / "s.yaml", data={"num_workers": 1, "size": 600},
                          train={"max_steps": 40}, memray={"mode": "off"},
                          distributed={"nproc_per_node": 2})
    code, out, err = cli("run", str(path), "--reports", str(tmp_path / "r"), "--no-report")
    assert code == 0, err
    run = latest_run(tmp_path / "r")
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "ok"
    train = manifest["stages"][0]
    assert train["node"] == 0 and set(train["ranks"]) == {"0", "1"}
    for stage in ("train", "test"):
        df = _samples(run / "stages" / stage)
        roles = set(df["role"])
        # a worker younger than 0.2 s is not named yet (processes.FORK_EXEC_GRACE_S): the test
        # stage's 6 batches may end sooner
        want = {"agent", "rank 0", "rank 1"} | ({"rank 0 worker 0", "rank 1 worker 0"} if stage == "train" else set())
        assert want <= roles, roles
        ranks = df.groupby("role")["rank"].agg(lambda s: set(s.dropna().astype(int)))
        assert ranks["rank 0"] == {0} and ranks["rank 1"] == {1} and ranks["agent"] == set()
        if stage == "train":
            assert ranks["rank 0 worker 0"] == {0} and ranks["rank 1 worker 0"] == {1}
        assert (df[df.role == "agent"]["phase"].fillna("") == "").all()  # the agent has no cell
    df = _samples(run / "stages" / "train")
    for r in (0, 1):  # each rank's rows carry its own cell's phases
        phases = set(df[df["rank"] == r]["phase"].dropna())
        assert {"forward", "backward", "validate"} & phases, phases
        census = _census(run, "train", r)
        assert census["parameters"] == PARAM_BYTES and census["gradients"] == PARAM_BYTES
        assert census["ddp_buckets"] == PARAM_BYTES
    # validation and test counts are summed over the ranks: the whole held-out set
    for stage, metric, size in (("train", "val_accuracy", 60), ("test", "test_accuracy", 60)):
        for r in (0, 1):
            [m] = [e for e in read_events(run / "stages" / stage / f"rank{r}")
                   if e["kind"] == "metric" and e["name"] == metric]
            assert m["total"] == size
    log = (run / "stages/train/log.txt").read_text()
    assert log.count("Finished Training") == 1  # rank 0 alone prints
    assert (run / "checkpoint.pt").exists()


@pytest.mark.slow
def test_fsdp_ranks_hold_half_the_parameters(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    path = write_scenario(tmp_path / "s.yaml", stages=["train"], data={"num_workers": 0},
                          train={"max_steps": 6}, memray={"mode": "off"},
                          distributed={"nproc_per_node": 2, "strategy": "fsdp"})
    code, _, err = cli("run", str(path), "--reports", str(tmp_path / "r"), "--no-report")
    assert code == 0, err
    run = latest_run(tmp_path / "r")
    for r in (0, 1):
        census = _census(run, "train", r)
        assert census["parameters"] == PARAM_BYTES // 2
        assert census["gradients"] == PARAM_BYTES // 2
        assert census["optimizer_state"] == PARAM_BYTES // 2  # momentum
        assert "ddp_buckets" not in census


def _script_scenario(tmp_path: Path, *args: str) -> Path:
    s = {"name": "ddp-script", "stages": ["main"],
         "workload": {"entry": str(WORKLOADS / "ddp_script.py"), "args": list(args)},
         "memray": {"mode": "off"}, "distributed": {"nproc_per_node": 2}}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(s), encoding="utf-8")
    return path


@pytest.mark.slow
def test_script_under_torchrun_gets_automatic_phases(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    code, _, err = cli("run", str(_script_scenario(tmp_path)), "--reports", str(tmp_path / "r"), "--no-report")
    assert code == 0, err
    run = latest_run(tmp_path / "r")
    for r in (0, 1):
        events = read_events(run / "stages/main" / f"rank{r}")
        epochs = [e["epoch"] for e in events if e["kind"] == "epoch_start"]
        assert epochs == [1, 2]
        totals = [e for e in events if e["kind"] == "phase_totals" and e.get("span") == "epoch"]
        assert totals, "no per-epoch phase totals"
        for phase in ("data", "forward", "loss", "backward", "optimizer"):
            assert totals[0]["transitions"].get(phase, 0) >= 16, (r, phase, totals[0]["transitions"])
        census = _census(run, "main", r)
        assert census["parameters"] == census["gradients"] == census["ddp_buckets"] == 7_120


@pytest.mark.slow
def test_sigkill_of_rank_1_ends_the_job(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    code, _, err = cli("run", str(_script_scenario(tmp_path, "--kill-rank", "1", "--kill-step", "5")),
                       "--reports", str(tmp_path / "r"), "--no-report")
    assert code == 1
    assert err.strip().count("\n") == 0
    assert "was killed at rank 1, epoch 1, step 5" in err and "SIGKILL" in err
    run = latest_run(tmp_path / "r")
    manifest = json.loads((run / "manifest.json").read_text())
    failure = manifest["failure"]
    assert manifest["status"] == "killed"
    assert (failure["stage"], failure["rank"], failure["node"]) == ("main", 1, 0)
    assert failure["where"]["epoch"] == 1 and failure["where"]["step"] == 5
    assert failure["where"]["phase"] in ("data", "forward", "loss", "backward", "optimizer")
    agent = json.loads((run / "stages/main/agent.json").read_text())
    assert agent["failure"]["signal"] == "SIGKILL" and agent["failure"]["rank"] == 1
    df = _samples(run / "stages/main")
    assert {"agent", "rank 0", "rank 1", "rank 1 worker 0"} <= set(df["role"])
    _assert_gone(set(df["pid"].astype(int)))
    # what rank 0 recorded before torchrun stopped it is kept
    assert [e["epoch"] for e in read_events(run / "stages/main/rank0") if e["kind"] == "epoch_start"] == [1]


def test_a_rank_watches_the_agent(tmp_path: Path) -> None:
    """A rank started by a process that is not the agent named in its environment ends at once."""
    import subprocess
    import sys

    code = ("import os, time; from harness.probe.stage import watch_agent; watch_agent(); "
            "time.sleep(30)")
    env = {**os.environ, AGENT_PID_ENV: "1"}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, start_new_session=True)
    assert proc.wait(timeout=30) == -signal.SIGKILL


@pytest.mark.slow
def test_two_nodes_on_localhost_merge_into_one_report(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    # GIVEN a 2-node job of 1 rank each, both nodes on this machine with the rendezvous on 127.0.0.1
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = write_scenario(tmp_path / "s.yaml", data={"num_workers": 1, "size": 600},
                          train={"max_steps": 30}, memray={"mode": "off"},
                          distributed={"nnodes": 2, "rdzv_endpoint": f"127.0.0.1:{port}"})
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    # WHEN node 1 starts first (it waits for node 0's store) and node 0 a moment later
    procs = {}
    for node in (1, 0):
        procs[node] = subprocess.Popen(
            [sys.executable, "-m", "harness", "run", str(path), "--reports", str(tmp_path / f"n{node}"),
             "--set", f"distributed.node_rank={node}", "--quiet"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        time.sleep(1)
    outs = {node: p.communicate(timeout=600)[0] for node, p in procs.items()}
    for node, p in procs.items():
        assert p.returncode == 0, outs[node]
    assert "harness merge" in outs[1]  # node 1 leaves the report to the merge
    runs = {node: latest_run(tmp_path / f"n{node}") if node == 0 else
            next((tmp_path / "n1").glob("*/*")) for node in (0, 1)}
    # THEN node K's ranks are global rank K (the static rendezvous follows node_rank)
    for node in (0, 1):
        assert sorted(p.name for p in (runs[node] / "stages" / "train").iterdir()) == [f"node{node}", f"rank{node}"]
    # AND the merge gives one run directory whose report covers both nodes and both ranks
    code, out, err = cli("merge", str(runs[0]), str(runs[1]), "-o", str(tmp_path / "merged"))
    assert code == 0, err
    summary = json.loads((tmp_path / "merged" / "report" / "summary.json").read_text())
    assert {(r["rank"], r["node"]) for r in summary["ranks"]} == {(0, 0), (1, 1)}
    assert {s["name"]: s["status"] for s in summary["stages"]} == {"train": "ok", "test": "ok"}
    for r in (0, 1):
        census = _census(tmp_path / "merged", "train", r)
        assert census["parameters"] == PARAM_BYTES and census["gradients"] == PARAM_BYTES


@pytest.mark.slow
@pytest.mark.parametrize("hoard", [True, False])
def test_a_rank_that_hoards_in_validation_is_named(tmp_path: Path, cli, hoard: bool) -> None:  # type: ignore[no-untyped-def]
    # GIVEN a plain DDP script (automatic phases) whose rank 0 keeps 50 MiB in validation, or not
    path = write_scenario(tmp_path / "s.yaml", stages=["main"],
                          workload={"entry": str(WORKLOADS / "ddp_skew.py"), "args": ["--hoard"] if hoard else []},
                          distributed={"nproc_per_node": 2})
    # WHEN it runs under the harness and the report is written
    code, _, err = cli("run", str(path), "--reports", str(tmp_path / "r"))
    assert code == 0, err
    run = latest_run(tmp_path / "r")
    summary = json.loads((run / "report" / "summary.json").read_text())
    skews = [f for f in summary["findings"] if f["kind"] == "rank_skew"]
    # THEN the hoarding run gets one skew finding: rank 0, phase validate, the script's own line
    if not hoard:
        assert skews == []
        return
    assert len(skews) == 1, summary["findings"]
    [hit] = skews[0]["numbers"]["ranks"]
    assert (hit["rank"], hit["phase"]) == (0, "validate")
    assert 40 * 2**20 <= hit["excess"] <= 70 * 2**20
    line = next(i for i, text in enumerate((WORKLOADS / "ddp_skew.py").read_text().splitlines(), 1)
                if "kept.append" in text)
    assert f"ddp_skew.py:{line}" in " ".join(s["where"] for s in hit["sites"]), hit["sites"]
