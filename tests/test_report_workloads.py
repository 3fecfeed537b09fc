"""End to end: real workloads under ``harness run``, then ``harness report`` on their directories."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness import cli
from harness.analysis.load import load_run
from harness.report import build_report

WORKLOADS = Path(__file__).resolve().parent / "workloads"


def _run(tmp_path: Path, name: str, script: str, expect: int = 0, **sections: Any) -> Path:
    scenario = {"name": name, "stages": ["main"],
                "workload": {"entry": str(WORKLOADS / script), "args": sections.pop("args", [])},
                **sections}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(scenario), encoding="utf-8")
    reports = tmp_path / "reports"
    assert cli.main(["run", str(path), "--reports", str(reports), "--quiet"]) == expect
    (run_dir,) = (reports / name).iterdir()
    return run_dir


def _findings(run_dir: Path) -> dict[str, dict[str, Any]]:
    summary = json.loads((run_dir / "report" / "summary.json").read_text())
    return {f["kind"]: f for f in summary["findings"]}


LEAK_LINE = next(i for i, line in enumerate((WORKLOADS / "leaky.py").read_text().splitlines(), 1)
                 if line.rstrip().endswith("# the leak"))


@pytest.mark.slow
@pytest.mark.parametrize("leak", [True, False], ids=["leaky", "clean"])
def test_kept_loss_tensors_are_a_leak_naming_the_line(tmp_path: Path, leak: bool) -> None:
    run_dir = _run(tmp_path, "leaky" if leak else "clean", "leaky.py",
                   args=["--leak"] if leak else [],
                   memray={"train_start": 10, "train_steps": 40},
                   tensors={"trace_steps": 2, "trace_every": 0})
    build_report(run_dir)
    found = _findings(run_dir)
    if not leak:
        assert "leak" not in found
        return
    text = found["leak"]["text"]
    assert f"leaky.py:{LEAK_LINE})" in text
    assert "100 more live tensors" in text  # one loss tensor per step, 100 steps an epoch


@pytest.mark.slow
def test_many_python_objects_read_by_forked_workers_copy_on_read(tmp_path: Path) -> None:
    run_dir = _run(tmp_path, "cow", "many_objects.py", memray={"mode": "off"},
                   sampling={"full_hz": 10}, tensors={"trace_steps": 0, "trace_every": 0})
    build_report(run_dir)
    found = _findings(run_dir)
    assert "copy_on_read" in found
    workers = found["copy_on_read"]["numbers"]["workers"]
    assert {w["role"] for w in workers} <= {"worker 0", "worker 1"}
    assert all(w["uss_growth"] >= 32 * 1024 * 1024 for w in workers)
    assert "leak" not in found


@pytest.mark.slow
def test_report_of_a_killed_run_is_marked_incomplete(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = _run(tmp_path, "killed", "killed.py", expect=1,
                   memray={"train_start": 0, "train_steps": 20},
                   tensors={"trace_steps": 0, "trace_every": 0})
    assert load_run(run_dir).status == "killed"
    capsys.readouterr()
    assert cli.main(["report", str(run_dir)]) == 0
    assert "INCOMPLETE" in capsys.readouterr().out
    page = (run_dir / "report" / "report.html").read_text()
    assert "Incomplete run." in page and "killed" in page
    summary = json.loads((run_dir / "report" / "summary.json").read_text())
    assert summary["run"]["complete"] is False
    # what was recorded up to the kill is there: epoch 2's samples, its open memray capture
    assert any(p["epoch"] == 2 and p["phase"] == "forward" for p in summary["phases"])
    assert any(c["name"] == "main-e2-train" for c in summary["captures"])
