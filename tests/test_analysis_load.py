"""Loading tolerates what a crash leaves behind, and refuses what is not a run directory."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from _synthetic import write_run

from harness.analysis.load import load_run
from harness.errors import UsageError


def test_truncated_last_lines_are_dropped_and_noted(tmp_path: Path) -> None:
    run_dir = write_run(tmp_path, status="running", legacy_csv=True)
    sdir = run_dir / "stages" / "train"
    with open(sdir / "samples.csv", "a", encoding="utf-8") as fh:
        fh.write("1008.0000,100,0,main,1677")  # a tick cut short by a kill
    with open(sdir / "events.jsonl", "a", encoding="utf-8") as fh:
        fh.write('{"t": 1008.0, "kind": "epo')
    (sdir / "snapshots" / "epoch-2.json").unlink()

    run = load_run(run_dir)

    stage = run.stage("train")
    assert stage.samples["t"].max() == 1007.0
    assert stage.events[-1].kind == "stage_end"
    assert list(stage.snapshots) == ["epoch-1"]
    assert stage.outcome is None  # the manifest never recorded the stage's end
    assert any("partial line" in p for p in run.problems)
    assert any("unreadable line" in p for p in run.problems)
    assert not run.complete
    assert "the harness itself was stopped" in run.incomplete_reasons()[0]


def test_missing_files_give_an_empty_stage(tmp_path: Path) -> None:
    run_dir = write_run(tmp_path)
    sdir = run_dir / "stages" / "train"
    shutil.rmtree(sdir / "samples")
    (sdir / "events.jsonl").unlink()
    run = load_run(run_dir)
    assert run.samples.empty
    assert run.stage("train").events == []
    assert any("no samples.csv" in p for p in run.problems)


def test_a_stage_without_stage_end_is_incomplete(tmp_path: Path) -> None:
    run_dir = write_run(tmp_path)
    events = run_dir / "stages" / "train" / "events.jsonl"
    lines = events.read_text().splitlines()
    events.write_text("\n".join(x for x in lines if "stage_end" not in x) + "\n")
    run = load_run(run_dir)
    assert run.incomplete_reasons() == ["stage 'train' has no stage_end event"]


@pytest.mark.parametrize("content", [None, "not json", "[1, 2]"])
def test_not_a_run_directory(tmp_path: Path, content: str | None) -> None:
    if content is not None:
        (tmp_path / "manifest.json").write_text(content)
    with pytest.raises(UsageError):
        load_run(tmp_path)
    with pytest.raises(UsageError):
        load_run(tmp_path / "missing")


def test_failed_run_reason_names_the_stage(tmp_path: Path) -> None:
    run_dir = write_run(tmp_path, status="killed")
    m = json.loads((run_dir / "manifest.json").read_text())
    m["failure"] = {"stage": "train", "status": "killed", "message": "killed by SIGKILL"}
    (run_dir / "manifest.json").write_text(json.dumps(m))
    assert load_run(run_dir).incomplete_reasons() == [
        "run status 'killed' in stage 'train': killed by SIGKILL"]
