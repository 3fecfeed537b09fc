"""Leaks counted per step, end to end: tests/workloads/step_leak.py (batches sliced from one
tensor, no DataLoader, probe.iterate) under ``harness run``, one run a variant, shared by the
assertions on it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import WORKLOADS, latest_run

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def _line(marker: str) -> str:
    lines = (WORKLOADS / "step_leak.py").read_text(encoding="utf-8").splitlines()
    n = next(i for i, text in enumerate(lines, 1) if text.rstrip().endswith(f"# kept: {marker}"))
    return f"step_leak.py:{n})"


def _run(root: Path, *args: str) -> dict[str, Any]:
    s = {"name": "step-leak", "stages": ["main"], "memray": {"epochs": "every"},
         "workload": {"entry": str(WORKLOADS / "step_leak.py"),
                      "args": ["--epochs", "2", "--steps", "24", "--pause", "0.01", *args]}}
    path = root / "s.yaml"
    path.write_text(yaml.safe_dump(s), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "harness.cli", "run", str(path), "--reports",
                           str(root / "r"), "--quiet"], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    summary: dict[str, Any] = json.loads((latest_run(root / "r") / "report" / "summary.json")
                                         .read_text(encoding="utf-8"))
    return summary


@pytest.fixture(scope="module")
def loss(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _run(tmp_path_factory.mktemp("loss"), "--keep", "loss")


@pytest.fixture(scope="module")
def memmap(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _run(tmp_path_factory.mktemp("memmap"), "--keep", "none", "--memmap", "96")


def test_a_loss_kept_each_step_is_named_with_its_bytes_a_step(loss: dict[str, Any]) -> None:
    (f,) = [f for f in loss["findings"] if f["kind"] == "leak"]
    rows = [r for r in f["numbers"]["step_sites"] if r["where"].endswith(_line("loss"))]
    assert rows, f["numbers"]
    (row,) = rows
    # every step of a window of the 24-step loop (its first left out), a few KB each
    assert row["kept_steps"] == row["window_steps"] == 23
    assert 1024 <= row["bytes_per_step"] <= 64 * 1024
    assert "(23 of 23 steps of capture main-e" in f["text"]


def test_a_clean_memory_mapped_reader_gets_no_growth_finding(memmap: dict[str, Any]) -> None:
    kinds = [f["kind"] for f in memmap["findings"]]
    assert "trend" not in kinds and "leak" not in kinds, kinds
