"""Training windows that did not open are said (harness.analysis.windows), and a short-epoch
script gets its training captures by default (end to end, slow)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import WORKLOADS

from harness import cli
from harness.analysis.load import Run, Stage, empty_samples
from harness.analysis.windows import unopened_windows
from harness.records.events import (
    EpochEnd,
    EpochStart,
    EventRecord,
    LoopEnd,
    MemrayStart,
    StageEnd,
    StageStart,
)
from harness.records.manifest import Manifest, StageOutcome
from harness.records.scenario import Scenario
from harness.report import build_report


def _loop(epoch: int, steps: int, total: int, **reason: str | None) -> list[EventRecord]:
    """An epoch with one training loop; ``memray_reason=...`` as the probe says it (a run written
    before the field has none)."""
    return [EpochStart(t=1.0, epoch=epoch),
            LoopEnd(t=2.0, epoch=epoch, steps=steps, total=total, **reason),
            EpochEnd(t=3.0, epoch=epoch)]


def _opened(epoch: int, stage: str = "main") -> MemrayStart:
    return MemrayStart(t=1.5, capture=f"{stage}-e{epoch}-train", epoch=epoch, step=0, section=None)


def _run(tmp_path: Path, events: list[EventRecord], status: str = "ok", kind: str = "run",
         **memray: Any) -> Run:
    stage = Stage("main", tmp_path, StageOutcome(name="main", status=status), empty_samples(),
                  [StageStart(t=0.0, stage="main", pid=1), *events], {}, [])
    scenario = Scenario.model_validate({"name": "s", "memray": {
        "mode": "windows", "train_start": 100, "train_steps": 300, "epochs": None, **memray}})
    return Run(tmp_path, Manifest(kind=kind, status=status), [stage], scenario=scenario)


def test_windows_that_opened_need_no_note(tmp_path: Path) -> None:
    run = _run(tmp_path, [*_loop(1, 64, 64), _opened(1), *_loop(2, 64, 64), _opened(2)])
    assert unopened_windows(run) == []


def test_an_epoch_in_memray_epochs_the_stage_did_not_run_is_noted(tmp_path: Path) -> None:
    # GIVEN memray.epochs [3] and a stage that ran epochs 1 and 2
    run = _run(tmp_path, [*_loop(1, 64, 64), *_loop(2, 64, 64)], epochs=[3])
    # THEN one note names epoch 3 and the epochs that ran; epochs 1 and 2 asked for none
    (note,) = unopened_windows(run)
    assert "stage main" in note and "memray.epochs names epoch 3" in note
    assert "epochs 1, 2" in note


def test_an_epoch_never_reached_by_a_failed_stage_is_left_to_its_failure(tmp_path: Path) -> None:
    run = _run(tmp_path, [*_loop(1, 64, 64), _opened(1)], status="failed", epochs=[1, 2])
    assert unopened_windows(run) == []


def test_epochs_the_probe_did_not_pick_need_no_note(tmp_path: Path) -> None:
    # GIVEN the default policy's picks, said at each loop's end: epochs 1, 2 and 4, not 3
    def loop(epoch: int, reason: str | None) -> list[EventRecord]:
        return _loop(epoch, 64, 64, memray_reason=reason)

    events = [*loop(1, "first"), _opened(1), *loop(2, "first"), _opened(2), *loop(3, None),
              *loop(4, "spaced")]
    # THEN only epoch 4, picked and not opened, is noted
    (note,) = unopened_windows(_run(tmp_path, events))
    assert note.startswith("memray: stage main, epoch 4: no training capture")


def test_a_loader_without_len_misses_the_first_epochs_window(tmp_path: Path) -> None:
    run = _run(tmp_path, [*_loop(1, 64, -1), *_loop(2, 64, -1), _opened(2)])
    (note,) = unopened_windows(run)
    assert note.startswith("memray: stage main, epoch 1: no training capture")
    assert "64 steps" in note and "without len()" in note


def test_a_loop_left_before_the_window_is_noted(tmp_path: Path) -> None:
    run = _run(tmp_path, [*_loop(1, 50, 1000)])
    (note,) = unopened_windows(run)
    assert "ran 50 steps of 1000" in note and "first step (100)" in note


def test_epochs_without_a_training_loop_are_noted(tmp_path: Path) -> None:
    events: list[EventRecord] = [EpochStart(t=1.0, epoch=1), EpochEnd(t=2.0, epoch=1)]
    (note,) = unopened_windows(_run(tmp_path, events))
    assert "ran epochs but no training loop" in note


def test_a_workload_without_a_training_loop_or_any_capture_is_noted(tmp_path: Path) -> None:
    (note,) = unopened_windows(_run(tmp_path, [StageEnd(t=1.0, stage="main")]))
    assert "no capture at all" in note and "memray.mode: full" in note


@pytest.mark.parametrize(("kind", "memray"), [("run", {"mode": "off"}), ("run", {"mode": "full"}),
                                              ("run", {"train_steps": 0}), ("bare", {})],
                         ids=["off", "full", "no-steps", "bare"])
def test_no_window_asked_for_no_note(tmp_path: Path, kind: str, memray: dict[str, Any]) -> None:
    assert unopened_windows(_run(tmp_path, [*_loop(1, 5, 5)], kind=kind, **memray)) == []


# -- end to end ----------------------------------------------------------------------------------
def _harness_run(tmp_path: Path, name: str, args: list[str], **sections: Any) -> Path:
    scenario = {"name": name, "stages": ["main"], "sampling": {"full_hz": 1},
                "tensors": {"trace_steps": 0, "trace_every": 0},
                "workload": {"entry": str(WORKLOADS / "short_epochs.py"), "args": args}, **sections}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(scenario), encoding="utf-8")
    reports = tmp_path / "reports"
    assert cli.main(["run", str(path), "--reports", str(reports), "--quiet", "--no-report"]) == 0
    (run_dir,) = (reports / name).iterdir()
    return run_dir


def _train_captures(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / "stages/main/memray").glob("main-e*-train.bin"))


@pytest.mark.slow
def test_a_64_step_epoch_gets_a_training_capture_by_default(tmp_path: Path) -> None:
    run_dir = _harness_run(tmp_path, "short", [])
    assert _train_captures(run_dir) == ["main-e1-train.bin", "main-e2-train.bin"]
    result = build_report(run_dir)
    assert result.complete and "  note " not in result.text
    assert "no training capture" not in result.html.read_text(encoding="utf-8")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "memray", "captures", "said"),
    [([], {"epochs": [3]}, [], "memray.epochs names epoch 3"),
     (["--no-len"], {}, ["main-e2-train.bin"], "epoch 1: no training capture")],
    ids=["epoch-3-of-2", "no-len"],
)
def test_a_window_that_did_not_open_is_said_in_the_report(
        tmp_path: Path, args: list[str], memray: dict[str, Any], captures: list[str], said: str) -> None:
    run_dir = _harness_run(tmp_path, "missing", args, memray=memray)
    assert _train_captures(run_dir) == captures
    result = build_report(run_dir)
    assert result.complete  # a note, not damage
    assert said in result.text
    assert said in result.html.read_text(encoding="utf-8")
