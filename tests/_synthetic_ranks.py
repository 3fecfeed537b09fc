"""A distributed (torchrun) run directory written by hand: one stage, ``train``, two epochs, two ranks.

The layout is the runtime's (docs/run-directory.md): ``stages/train/samples/`` holds the whole
tree (the agent, ``rank R``, ``rank R worker 0``, each row with its ``rank``), and
``stages/train/rank<R>/`` each rank's events and snapshots. Each rank's own RSS, in MiB, at the
ticks (t, epoch, phase):

    1000  0 setup     200
    1001  1 forward   300
    1002  1 backward  320
    1003  1 validate  310
    1004  1 validate  312
    1005  2 forward   300
    1006  2 backward  322
    1007  2 validate  311
    1008  2 teardown  250

rank 1 holds 2 MiB more than rank 0 at every tick (noise, no skew); ``plant`` adds 50 MB (50e6
bytes) to rank 0's validation ticks (a skew). Each rank's worker holds 110 MiB RSS, 10 MiB USS;
the agent 40 MiB. With ``nodes``, each rank runs on its own node: the samples are written under
``stages/train/node<K>/`` (node K holding rank K) and node 1's manifest as manifest-node1.json.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from _synthetic import MiB, as_row, snapshot, write_samples, write_snapshots

from harness.probe.steps import EventWriter
from harness.records.events import (
    EpochEnd,
    EpochStart,
    EventRecord,
    Metric,
    SectionEnd,
    SectionStart,
    SnapshotEvent,
    StageEnd,
    StageStart,
)

COLUMNS = ("t", "pid", "ppid", "role", "rss", "vms", "shared", "text", "data",
           "uss", "pss", "swap", "stage", "epoch", "step", "phase", "rank")
PLANT = 50_000_000
TICKS = [(1000.0, 0, "setup", 200), (1001.0, 1, "forward", 300), (1002.0, 1, "backward", 320),
         (1003.0, 1, "validate", 310), (1004.0, 1, "validate", 312), (1005.0, 2, "forward", 300),
         (1006.0, 2, "backward", 322), (1007.0, 2, "validate", 311), (1008.0, 2, "teardown", 250)]
AGENT_PID = 50
# per epoch: start, validation's start and end, end (each rank alike)
EPOCHS = [(1000.5, 1002.9, 1004.2, 1004.3), (1004.6, 1006.9, 1007.3, 1007.4)]
PARAMS = 27_528  # the tutorial net's parameters, bytes


def rank_pid(rank: int) -> int:
    return 100 + 10 * rank


def rank_rss(rank: int, phase: str, mib: int, plant: bool) -> int:
    extra = PLANT if plant and rank == 0 and phase == "validate" else 0
    return (mib + 2 * rank) * MiB + extra


def samples_rows(ranks: int = 2, plant: bool = False, only: int | None = None) -> list[list[Any]]:
    """The sampler's rows; ``only``: the rows of one node (its agent and rank ``only``)."""
    rows: list[list[Any]] = []
    for t, epoch, phase, mib in TICKS:
        rows.append([f"{t:.4f}", AGENT_PID + (only or 0), 1, "agent", 40 * MiB, 80 * MiB, 20 * MiB,
                     4096, 40 * MiB, 30 * MiB, 35 * MiB, 0, "train", "", "", "", ""])
        for r in range(ranks):
            if only is not None and r != only:
                continue
            rss = rank_rss(r, phase, mib, plant)
            rows.append([f"{t:.4f}", rank_pid(r), AGENT_PID, f"rank {r}", rss, 2 * rss, 40 * MiB, 4096,
                         rss, rss - 100 * MiB, rss - 80 * MiB, 0, "train", epoch, 1, phase, r])
            if phase not in ("setup", "teardown"):
                rows.append([f"{t:.4f}", rank_pid(r) + 1, rank_pid(r), f"rank {r} worker 0",
                             110 * MiB, 220 * MiB, 100 * MiB, 4096, 110 * MiB, 10 * MiB,
                             60 * MiB, 0, "train", epoch, 1, phase, r])
    return rows


def rank_events(rank: int) -> list[EventRecord]:
    out: list[EventRecord] = [StageStart(t=1000.0, stage="train", pid=rank_pid(rank))]
    for epoch, (start, v0, v1, end) in ((1, EPOCHS[0]), (2, EPOCHS[1])):
        out += [
            EpochStart(t=start, epoch=epoch),
            SectionStart(t=v0, section="validate", epoch=epoch),
            SectionEnd(t=v1, section="validate", epoch=epoch, steps=3),
            EpochEnd(t=end, epoch=epoch),
            SnapshotEvent(t=end + 0.05, label=f"epoch-{epoch}", epoch=epoch,
                     file=f"snapshots/epoch-{epoch}.json", tensor_bytes={}),
        ]
        if rank == 0:
            out.append(Metric(t=v1 + 0.01, name="val_accuracy", value=40 + epoch, epoch=epoch))
    out.append(StageEnd(t=1007.9, stage="train"))
    return sorted(out, key=lambda e: e.t)


def rank_snapshots(rank: int, buckets: bool = True) -> list[dict[str, Any]]:
    out = []
    for epoch, t in ((1, EPOCHS[0][3] + 0.05), (2, EPOCHS[1][3] + 0.05)):
        snap = snapshot(f"epoch-{epoch}", epoch, t, other=500, count=10, main_rss=300 + 2 * rank,
                        main_uss=200, heap=10, gc=[1, 2, 3])
        snap["pid"] = rank_pid(rank)
        snap["tensor_bytes"] = {"parameters": PARAMS, "gradients": PARAMS, "optimizer_state": PARAMS,
                                "other": 500, **({"ddp_buckets": PARAMS} if buckets else {})}
        out.append(snap)
    return out


def manifest(name: str = "ddp", node: int | None = None, nnodes: int = 1) -> dict[str, Any]:
    stage = {"name": "train", "status": "ok", "exit_code": 0, "signal": None, "wall_s": 8.0,
             "message": "", "peak_tree_rss": 900 * MiB, "peak_main_rss": 400 * MiB}
    distributed = {"nproc_per_node": 2 if nnodes == 1 else 1, "nnodes": nnodes, "backend": "gloo",
                   **({"node_rank": node} if node is not None else {})}
    return {
        "manifest_version": 1, "kind": "run", "scenario_name": name,
        "scenario": {"name": name, "stages": ["train"], "distributed": distributed},
        "python": "3.11.7", "versions": {"harness": "0.1.0"}, "host": f"node{node or 0}",
        "platform": "linux", "cpu_count": 2, "git_revision": "abc",
        "command_line": ["harness", "run", "ddp.yaml"], "started": "2026-01-01T00:00:00.000+00:00",
        "ended": "2026-01-01T00:00:08.000+00:00", "wall_s": 8.0, "status": "ok", "stages": [stage],
    }


def _write_samples(folder: Path, rows: list[list[Any]]) -> None:
    """The rows (in COLUMNS order) through the samples writer into ``folder``/samples/."""
    write_samples(folder, [as_row(r, COLUMNS) for r in rows])


def _write_rank(sdir: Path, rank: int, buckets: bool) -> None:
    rdir = sdir / f"rank{rank}"
    rdir.mkdir(parents=True)
    events = EventWriter(rdir / "events.jsonl")
    for ev in rank_events(rank):
        events.write(ev)
    events.close()
    write_snapshots(rdir, rank_snapshots(rank, buckets))


def write_run(root: Path, *, plant: bool = False, ranks: int = 2, nodes: bool = False,
              name: str = "ddp", buckets: bool = True) -> Path:
    """The run directory under ``root`` (one harness, or with ``nodes`` a shared one of two)."""
    run = root / "run"
    sdir = run / "stages" / "train"
    sdir.mkdir(parents=True)
    (run / "manifest.json").write_text(json.dumps(manifest(name, 0 if nodes else None,
                                                           ranks if nodes else 1)), encoding="utf-8")
    (run / "scenario.yaml").write_text(f"name: {name}\nstages: [train]\n", encoding="utf-8")
    if nodes:
        for k in range(ranks):
            _write_samples(sdir / f"node{k}", samples_rows(ranks, plant, only=k))
            (sdir / f"node{k}" / "log.txt").write_text(f"node {k}\n", encoding="utf-8")
            if k:
                (run / f"manifest-node{k}.json").write_text(json.dumps(manifest(name, k, ranks)),
                                                            encoding="utf-8")
    else:
        _write_samples(sdir, samples_rows(ranks, plant))
    for r in range(ranks):
        _write_rank(sdir, r, buckets)
    return run


def write_node_run(root: Path, node: int, *, nnodes: int = 2, name: str = "ddp",
                   plant: bool = False) -> Path:
    """What ``harness run`` with ``distributed.node_rank`` = ``node`` writes on its own storage:
    its samples and log under node<K>/, its ranks' folders (here one rank a node: rank ``node``),
    node K > 0 its manifest as manifest-node<K>.json."""
    run = root / f"node{node}-run"
    sdir = run / "stages" / "train"
    sdir.mkdir(parents=True)
    text = json.dumps(manifest(name, node, nnodes))
    (run / ("manifest.json" if node == 0 else f"manifest-node{node}.json")).write_text(text, encoding="utf-8")
    (run / "scenario.yaml").write_text(f"name: {name}\nstages: [train]\n", encoding="utf-8")
    _write_samples(sdir / f"node{node}", samples_rows(nnodes, plant, only=node))
    (sdir / f"node{node}" / "log.txt").write_text(f"node {node}\n", encoding="utf-8")
    _write_rank(sdir, node, True)
    return run
