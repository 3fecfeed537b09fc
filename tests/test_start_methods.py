"""DataLoader workers under each multiprocessing start method, end to end under ``harness run``.

The same copy-on-read dataset (workloads/many_objects.py), its 2 workers started by fork, spawn or
forkserver: the sampler names them ``worker 0`` and ``worker 1`` in every case, records the start
method for the stage, and copy-on-read is found only where the workers share the parent's pages.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from harness import cli
from harness.analysis.load import load_run
from harness.analysis.tables import process_table
from harness.report import build_report

WORKLOADS = Path(__file__).resolve().parent / "workloads"


def _run(tmp_path: Path, method: str, **sections: Any) -> Path:
    scenario = {"name": f"workers-{method}", "stages": ["main"],
                "workload": {"entry": str(WORKLOADS / "many_objects.py"),
                             "args": ["--start-method", method]},
                "sampling": {"full_hz": 10}, "tensors": {"trace_steps": 0, "trace_every": 0},
                "memray": {"mode": "off"}, **sections}
    path = tmp_path / f"{method}.yaml"
    path.write_text(yaml.safe_dump(scenario), encoding="utf-8")
    reports = tmp_path / "reports"
    assert cli.main(["run", str(path), "--reports", str(reports), "--quiet"]) == 0
    (run_dir,) = (reports / scenario["name"]).iterdir()
    build_report(run_dir)
    return run_dir


def _summary(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "report" / "summary.json").read_text())


def _workers(table: pd.DataFrame, server: bool = False) -> pd.DataFrame:
    # the resource tracker, and any fork on its way to exec, is a child, never a worker
    assert set(table["role"]) <= {"main", "child", "worker 0", "worker 1", *(["forkserver"] * server)}
    workers = table[table["role"].str.startswith("worker")]
    assert sorted(workers["role"]) == ["worker 0", "worker 1"]
    assert (workers["peak_uss"] > 0).all()  # USS read: in the tables and the copy-on-read analysis
    return workers


@pytest.mark.slow
def test_forked_workers_copy_on_read(tmp_path: Path) -> None:
    run_dir = _run(tmp_path, "fork")
    run = load_run(run_dir)
    assert run.stages[0].outcome is not None
    assert run.stages[0].outcome.worker_start_method == "fork"
    table = process_table(run)
    main_pid = int(table.loc[table["role"] == "main", "pid"].iloc[0])
    assert (_workers(table)["ppid"] == main_pid).all()
    summary = _summary(run_dir)
    assert {f["kind"] for f in summary["findings"]} >= {"copy_on_read"}
    assert summary["stages"][0]["worker_start_method"] == "fork"


@pytest.mark.slow
def test_spawned_workers_are_workers_without_copy_on_read(tmp_path: Path) -> None:
    run_dir = _run(tmp_path, "spawn")
    run = load_run(run_dir)
    assert run.stages[0].outcome is not None
    assert run.stages[0].outcome.worker_start_method == "spawn"
    table = process_table(run)
    main_pid = int(table.loc[table["role"] == "main", "pid"].iloc[0])
    assert (_workers(table)["ppid"] == main_pid).all()
    summary = _summary(run_dir)
    assert "copy_on_read" not in {f["kind"] for f in summary["findings"]}
    assert summary["stages"][0]["worker_start_method"] == "spawn"


@pytest.mark.slow
def test_forkserver_workers_are_the_server_s_children(tmp_path: Path) -> None:
    # memray asked to follow forks: it cannot follow processes the fork server made, and says so
    run_dir = _run(tmp_path, "forkserver", memray={"mode": "full", "follow_fork": True})
    run = load_run(run_dir)
    assert run.stages[0].outcome is not None
    assert run.stages[0].outcome.worker_start_method == "forkserver"
    table = process_table(run)
    (server,) = table.loc[table["role"] == "forkserver", "pid"]
    assert (_workers(table, server=True)["ppid"] == server).all()
    assert not any(c.pid is not None for c in run.stages[0].captures)  # no worker captures
    summary = _summary(run_dir)
    assert summary["stages"][0]["worker_start_method"] == "forkserver"
    page = (run_dir / "report" / "report.html").read_text()
    assert "memray could not follow" in page
