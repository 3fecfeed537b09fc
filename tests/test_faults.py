"""Faults: a workload that raises, exits non-zero, is killed, hogs memory, hangs; Ctrl-C.

In every case: a readable run directory, the right status in the manifest, no process left
behind, a non-zero exit and one clear line.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO, WORKLOADS, assert_gone, latest_run, read_events, stage_samples

from harness.analysis.load import read_samples
from harness.layout import SAMPLES_DIR

pytestmark = pytest.mark.slow


def _scenario(tmp_path: Path, *args: str, **extra: object) -> Path:
    s = {
        "name": "faulty",
        "stages": ["main", "after"],
        "workload": {"entry": str(WORKLOADS / "faulty.py"), "args": list(args)},
        "memray": {"mode": "off"},
        **extra,
    }
    path = tmp_path / "faulty.yaml"
    path.write_text(yaml.safe_dump(s), encoding="utf-8")
    return path


def _workers_seen(run: Path) -> bool:
    """The sampler saw both DataLoader workers of the main stage (also while it still writes)."""
    samples = run / "stages/main" / SAMPLES_DIR
    if not samples.exists():
        return False
    # the part being written may be empty or end mid-row
    roles = set(read_samples(samples, [], columns=["role"])["role"])
    return {"worker 0", "worker 1"} <= roles


def _assert_nothing_left(run: Path) -> None:
    pids = set(stage_samples(run / "stages/main").pid)
    assert len(pids) >= 3  # the main process and its two DataLoader workers were seen
    assert_gone(pids)


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize(
    ("args", "status", "exit_code", "needle"),
    [
        (("raise", "5"), "failed", 1, "RuntimeError: boom at step 5"),
        (("exit", "5"), "failed", 3, "exit code 3"),
        (("kill", "5"), "killed", -9, "killed by SIGKILL"),
    ],
)
def test_failing_workload_is_recorded_and_cleaned_up(
    tmp_path: Path, cli, args: tuple[str, ...], status: str, exit_code: int, needle: str  # type: ignore[no-untyped-def]
) -> None:
    code, _, err = cli("run", str(_scenario(tmp_path, *args)), "--reports", str(tmp_path / "r"), "--quiet")
    assert code == 1
    line = _one_line(err)
    assert line.startswith("harness: error: stage 'main' ")
    assert needle in line and "log: " in line
    run = latest_run(tmp_path / "r")
    m = json.loads((run / "manifest.json").read_text())
    assert m["status"] == status
    assert [s["name"] for s in m["stages"]] == ["main"]  # the next stage did not start
    stage = m["stages"][0]
    assert stage["exit_code"] == exit_code
    assert stage["last"]["epoch"] == 1 and stage["last"]["phase"] == "forward"
    assert stage["last"]["step"] == 5
    assert m["failure"]["stage"] == "main" and m["failure"]["where"]["step"] == 5
    assert "at epoch 1, step 5, phase forward" in line
    assert read_events(run / "stages/main")[0]["kind"] == "stage_start"  # still readable
    _assert_nothing_left(run)


def test_rss_limit_stops_the_whole_tree(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    path = _scenario(tmp_path, "hog", "-1", limits={"max_rss_mb": 2500})
    code, _, err = cli("run", str(path), "--reports", str(tmp_path / "r"), "--quiet")
    assert code == 1
    line = _one_line(err)
    assert "was stopped by the harness" in line and "exceeded limits.max_rss_mb (2500 MiB)" in line
    run = latest_run(tmp_path / "r")
    m = json.loads((run / "manifest.json").read_text())
    assert m["status"] == "limit" and m["stages"][0]["signal"] == "SIGKILL"
    assert m["stages"][0]["peak_tree_rss"] > 2500 * 1024 * 1024
    _assert_nothing_left(run)


def test_timeout_stops_a_hung_stage(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    # The limit counts from the stage's start, torch's import and the workers' fork included,
    # which a busy machine can stretch past a short one; so a run whose workers were not up yet
    # when it was stopped proves little about them and is tried again with a longer limit.
    for timeout_s in (8, 30, 120):
        path = _scenario(tmp_path, "hang", limits={"timeout_s": timeout_s})
        reports = tmp_path / f"r{timeout_s}"
        code, _, err = cli("run", str(path), "--reports", str(reports), "--quiet")
        assert code == 1
        assert f"limits.timeout_s ({timeout_s} s)" in _one_line(err)
        run = latest_run(reports)
        assert json.loads((run / "manifest.json").read_text())["status"] == "timeout"
        if _workers_seen(run):
            break
    _assert_nothing_left(run)


def test_ctrl_c_on_the_harness(tmp_path: Path) -> None:
    path = _scenario(tmp_path, "hang")
    reports = tmp_path / "r"
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness", "run", str(path), "--reports", str(reports), "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )
    # Interrupt once the sampler has seen the workers (torch's import and the workers' fork can
    # take long on a busy machine), so the test shows that they are stopped too.
    deadline = time.time() + 120
    started = False
    while time.time() < deadline and proc.poll() is None:
        runs = list(reports.glob("*/*/stages/main"))
        if runs and _workers_seen(runs[0].parent.parent):
            started = True
            break
        time.sleep(0.2)
    assert started, "the stage's DataLoader workers never showed in its samples"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    line = _one_line(err)
    assert "was interrupted" in line
    run = latest_run(reports)
    m = json.loads((run / "manifest.json").read_text())
    assert m["status"] == "interrupted" and m["stages"][0]["status"] == "interrupted"
    assert m["ended"] is not None
    _assert_nothing_left(run)
