"""Any training code, not only ours: scripts with and without probe calls run under the harness."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from conftest import WORKLOADS, latest_run, read_events, stage_samples

pytestmark = pytest.mark.slow


def _scenario(tmp_path: Path, script: str, **extra: object) -> Path:
    s = {"name": "ext", "stages": ["main"], "workload": {"entry": str(WORKLOADS / script)}, **extra}
    path = tmp_path / "ext.yaml"
    path.write_text(yaml.safe_dump(s), encoding="utf-8")
    return path


def test_script_without_probe_gets_the_process_timeline_and_memray(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    no_auto = {"entry": str(WORKLOADS / "noprobe.py"), "auto_phases": False}  # as before auto phases
    code, out, err = cli("run", str(_scenario(tmp_path, "noprobe.py", memray={"mode": "full"},
                                              workload=no_auto)),
                         "--reports", str(tmp_path / "r"))
    assert code == 0, err
    run = latest_run(tmp_path / "r")
    assert "noprobe done 40" in out
    s = stage_samples(run / "stages/main")
    # torch's import runs `/sbin/ldconfig -p` in a child (cuda.pathfinder's find_library("dl")): the
    # sampler may see it for a tick; no worker, no other role
    assert {"main"} <= set(s.role) <= {"main", "child"}
    assert s.phase.dropna().isin(["setup", "teardown", "idle"]).all()
    # the script's 10 MiB of bytearrays show in RSS
    assert s.rss.max() - s.rss.iloc[0] > 10 * 1024 * 1024
    assert (run / "stages/main/memray/main.bin").exists()  # a full capture of the stage
    kinds = [e["kind"] for e in read_events(run / "stages/main")]
    assert "epoch_start" not in kinds and kinds[0] == "stage_start"


def test_script_with_probe_gets_phases_and_epoch_snapshots(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    code, _, err = cli("run", str(_scenario(tmp_path, "withprobe.py")), "--reports", str(tmp_path / "r"))
    assert code == 0, err
    run = latest_run(tmp_path / "r")
    events = read_events(run / "stages/main")
    assert [e["epoch"] for e in events if e["kind"] == "epoch_end"] == [1, 2]
    traced = [e for e in events if e["kind"] == "traced_step"]
    assert traced[0]["phases"] == ["data", "forward", "loss", "backward", "optimizer"]
    snap = json.loads((run / "stages/main/snapshots/epoch-2.json").read_text())
    params = (32 * 64 + 64 + 64 * 4 + 4) * 4
    assert snap["tensor_bytes"]["parameters"] == params
    assert snap["tensor_bytes"]["optimizer_state"] == params
    s = stage_samples(run / "stages/main")
    assert {"worker 0", "worker 1"} <= set(s.role)
    assert {"forward", "backward"} <= set(s.phase.dropna())


def test_function_entry_is_called_with_the_stage_context(  # type: ignore[no-untyped-def]
        tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch) -> None:
    mod = tmp_path / "myworkload.py"
    mod.write_text(
        "def main(ctx):\n    print('stage', ctx.stage, ctx.scenario.name, ctx.run_dir.name != '')\n"
    )
    s = {"name": "fn", "stages": ["alpha", "beta"], "workload": {"entry": "myworkload:main"}}
    path = tmp_path / "fn.yaml"
    path.write_text(yaml.safe_dump(s))
    # Only the stage processes import the module; they inherit this environment, which
    # monkeypatch restores after the test.
    monkeypatch.setenv("PYTHONPATH", str(tmp_path), prepend=os.pathsep)
    code, out, err = cli("run", str(path), "--reports", str(tmp_path / "r"))
    assert code == 0, err
    assert "stage alpha fn True" in out and "stage beta fn True" in out
