"""Nothing left running, no false "ok", bad input said once with exit 2 (issue 13, items 3, 4, 5, 8).

The signal tests run the harness in a subprocess with generous timeouts: a busy machine can take
many seconds to start a stage. Every process a test starts is killed at its end, whatever happened.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml
from _gate import fake_summary, write_run
from conftest import REPO, WORKLOADS, latest_run, read_events, write_scenario

STARTUP_S = 180  # torch-free stages, but a busy 2-core machine is slow to start anything


def _lingering(tmp_path: Path, mode: str, **extra: Any) -> tuple[Path, Path]:
    """A scenario running tests/workloads/lingering.py MODE, and the file it writes pids to."""
    pidfile = tmp_path / "pids.txt"
    s = {
        "name": "lingering",
        "stages": ["main"],
        "workload": {"entry": str(WORKLOADS / "lingering.py"), "args": [mode, str(pidfile)]},
        "memray": {"mode": "off"},
        "sampling": {"rss_hz": 25, "full_hz": 1},
        **extra,
    }
    path = tmp_path / "lingering.yaml"
    path.write_text(yaml.safe_dump(s), encoding="utf-8")
    return path, pidfile


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_gone(pids: list[int], seconds: float) -> list[int]:
    deadline = time.time() + seconds
    left = [p for p in pids if _alive(p)]
    while left and time.time() < deadline:
        time.sleep(0.2)
        left = [p for p in left if _alive(p)]
    return left


@pytest.fixture
def reap() -> Iterator[list[int]]:
    """Pids a test started (directly or through its workload); SIGKILLed at the end if alive."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _start_harness(scenario: Path, reports: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "harness", "run", str(scenario), "--reports", str(reports), "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )


def _wait_for_pids(proc: subprocess.Popen[str], pidfile: Path) -> list[int]:
    deadline = time.time() + STARTUP_S
    while time.time() < deadline and proc.poll() is None:
        if pidfile.exists() and len(text := pidfile.read_text().split()) == 2:
            return [int(p) for p in text]
        time.sleep(0.2)
    raise AssertionError(f"the stage never started (harness exit {proc.poll()})")


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


# --- item 3: SIGTERM and SIGHUP are Ctrl-C; a harness that dies takes its stage along -------------

@pytest.mark.slow
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_sigterm_and_sighup_stop_the_stage_and_record_terminated(
    tmp_path: Path, reap: list[int], sig: signal.Signals, code: int
) -> None:
    scenario, pidfile = _lingering(tmp_path, "quiet")
    proc = _start_harness(scenario, tmp_path / "r")
    reap.append(proc.pid)
    pids = _wait_for_pids(proc, pidfile)
    reap.extend(pids)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    line = _one_line(err)
    assert line.startswith("harness: error: stage 'main' was terminated") and sig.name in line
    assert _wait_gone(pids, 10) == [], "the stage or its child outlived the harness"
    m = json.loads((latest_run(tmp_path / "r") / "manifest.json").read_text())
    assert m["status"] == "terminated" and m["ended"] is not None
    assert [(s["name"], s["status"]) for s in m["stages"]] == [("main", "terminated")]
    assert m["failure"]["status"] == "terminated" and sig.name in m["failure"]["message"]


@pytest.mark.slow
def test_a_killed_harness_takes_its_stage_along(tmp_path: Path, reap: list[int]) -> None:
    scenario, pidfile = _lingering(tmp_path, "quiet")
    proc = _start_harness(scenario, tmp_path / "r")
    reap.append(proc.pid)
    pids = _wait_for_pids(proc, pidfile)
    reap.extend(pids)
    proc.kill()  # SIGKILL: no handler of the harness runs
    proc.communicate(timeout=60)
    assert _wait_gone(pids, 30) == [], "the stage ran on after the harness died"


# --- item 4: no interruption is recorded as ok -----------------------------------------------------

def _fake_run_stage(raise_in: str, exc: BaseException) -> Any:
    from harness.control.runner import StageOutcome

    def run_stage(scenario: Any, run_dir: Path, stage: str, console: Any, instrumented: bool) -> StageOutcome:
        if stage == raise_in:
            raise exc
        return StageOutcome(name=stage, status="ok", exit_code=0, signal=None, started="", ended="",
                            wall_s=0.1, last=None, message="", sampling=None, peak_tree_rss=None,
                            peak_main_rss=None)

    return run_stage


def _interrupt(kind: str) -> tuple[BaseException, str, int]:
    if kind == "ctrl-c":
        return KeyboardInterrupt(), "interrupted", 130
    from harness.errors import SignalReceived

    return SignalReceived(signal.SIGTERM), "terminated", 143


@pytest.mark.parametrize("kind", ["ctrl-c", "sigterm"])
def test_an_interruption_outside_the_wait_loop_is_not_ok(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    # GIVEN an interruption that escapes run_stage (as Ctrl-C did while the harness waited 5 s
    # for a detached descendant's output)
    from harness.control import runner
    from harness.control.console import Console
    from harness.errors import RunFailed
    from harness.records import scenario

    exc, status, code = _interrupt(kind)
    monkeypatch.setattr(runner, "run_stage", _fake_run_stage("after", exc))
    path, _ = _lingering(tmp_path, "quiet", stages=["main", "after"])
    sc = scenario.load(path)
    # WHEN the scenario runs
    try:
        runner.run_scenario(sc, tmp_path / "r", instrumented=True, console=Console(io.StringIO()))
    except RunFailed as raised:
        assert raised.exit_code == code
    except BaseException as other:  # noqa: BLE001 - what escaped is the finding
        pytest.fail(f"{type(other).__name__} escaped run_scenario instead of a RunFailed")
    else:
        pytest.fail("run_scenario returned as if the run had finished")
    # THEN the run and the stage are recorded as interrupted, never ok with a stage missing
    m = json.loads((latest_run(tmp_path / "r") / "manifest.json").read_text())
    assert m["status"] == status and m["ended"] is not None
    assert [(s["name"], s["status"]) for s in m["stages"]] == [("main", "ok"), ("after", status)]
    assert m["failure"]["stage"] == "after"


def test_an_error_of_the_harness_itself_is_not_ok(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN the harness failing while it stops a stage (a terminal gone after SIGHUP: EIO)
    from harness.control import runner
    from harness.control.console import Console
    from harness.records import scenario

    monkeypatch.setattr(runner, "run_stage", _fake_run_stage("main", OSError(5, "Input/output error")))
    path, _ = _lingering(tmp_path, "quiet")
    # WHEN the scenario runs THEN the error goes on, and the manifest does not say ok
    with pytest.raises(OSError):
        runner.run_scenario(scenario.load(path), tmp_path / "r", instrumented=True,
                            console=Console(io.StringIO()))
    m = json.loads((latest_run(tmp_path / "r") / "manifest.json").read_text())
    assert m["status"] == "failed" and m["failure"]["stage"] == "main"


class _SignalOnLine(io.StringIO):
    """Standard output that raises ``sig`` in this process when a line holding ``text`` is written."""

    def __init__(self, text: str, sig: signal.Signals) -> None:
        super().__init__()
        self.text, self.sig = text, sig

    def write(self, s: str) -> int:
        n = super().write(s)
        if self.text in s:
            signal.raise_signal(self.sig)
        return n


@pytest.mark.parametrize("when", ["while the report is written", "after the report is written"])
@pytest.mark.parametrize(("sig", "status", "code"), [(signal.SIGTERM, "terminated", 143),
                                                     (signal.SIGINT, "interrupted", 130)])
def test_a_stop_after_every_stage_ended_is_recorded_as_the_exit_code_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, when: str, sig: signal.Signals, status: str,
    code: int,
) -> None:
    # GIVEN a run whose stages all end ok (issue 23: a SIGTERM that landed after the report was
    # written exited 143 while the manifest said ok)
    from harness import cli, report
    from harness.control import runner

    monkeypatch.setattr(runner, "run_stage", _fake_run_stage("none", RuntimeError()))
    written: list[Path] = []

    def build_report(run_dir: Path, **kw: Any) -> None:
        written.append(run_dir)
        if when.startswith("while"):
            signal.raise_signal(sig)

    monkeypatch.setattr(report, "build_report", build_report)
    monkeypatch.setattr(sys, "stdout", _SignalOnLine("harness: run finished", sig))
    path, _ = _lingering(tmp_path, "quiet")
    # WHEN the signal lands while or after the report is written
    code_got = cli.main(["run", str(path), "--reports", str(tmp_path / "r"), "--quiet"])
    # THEN the exit code and the manifest agree: the run says how it was stopped, its stages ok
    assert written and code_got == code
    m = json.loads((latest_run(tmp_path / "r") / "manifest.json").read_text())
    assert m["status"] == status, m
    assert [(s["name"], s["status"]) for s in m["stages"]] == [("main", "ok")]
    assert m["failure"]["status"] == status and m["failure"]["stage"] is None
    assert "after every stage had ended ok" in m["failure"]["message"]


def test_baseline_refuses_a_run_whose_manifest_is_not_ok(tmp_path: Path) -> None:
    # GIVEN a run whose summary.json says ok but whose manifest says it was interrupted
    from harness.errors import UsageError
    from harness.gate.runs import write_baseline

    run = write_run(tmp_path / "run", fake_summary())
    manifest = json.loads((run / "manifest.json").read_text())
    (run / "manifest.json").write_text(json.dumps({**manifest, "status": "interrupted"}))
    # WHEN a baseline is recorded from it THEN it is refused
    with pytest.raises(UsageError, match="interrupted"):
        write_baseline([run], tmp_path / "b.json")
    assert not (tmp_path / "b.json").exists()


# --- item 5: descendants that outlive the stage are killed and named --------------------------------

@pytest.mark.slow
def test_descendants_left_behind_are_killed_and_named(tmp_path: Path, cli, reap: list[int]) -> None:  # type: ignore[no-untyped-def]
    scenario, pidfile = _lingering(tmp_path, "detached")
    _assert_killed_and_named(tmp_path, cli, reap, scenario, pidfile, "the detached grandchild")


def _assert_killed_and_named(tmp_path: Path, cli, reap: list[int], scenario: Path,  # type: ignore[no-untyped-def]
                             pidfile: Path, what: str) -> None:
    """Run ``scenario``, whose workload leaves the process written to ``pidfile`` running: the run
    is ok, and the process was killed and named in the manifest and the stage's log."""
    try:
        code, _, err = cli("run", str(scenario), "--reports", str(tmp_path / "r"), "--quiet", "--no-report")
    finally:
        if pidfile.exists():
            reap.append(int(pidfile.read_text()))
    assert code == 0, err
    left = int(pidfile.read_text())
    assert _wait_gone([left], 5) == [], f"{what} outlived the run"
    run = latest_run(tmp_path / "r")
    stage = json.loads((run / "manifest.json").read_text())["stages"][0]
    assert stage["killed_descendants"] == [left]
    assert f"killed {left}" in (run / "stages/main/log.txt").read_text()


@pytest.mark.slow
def test_a_double_forked_daemon_is_found_killed_and_named(tmp_path: Path, cli, reap: list[int]) -> None:  # type: ignore[no-untyped-def]
    # GIVEN a workload that forks, calls setsid(), forks again and leaves the grandchild sleeping,
    # its parent gone (issue 23): an orphan, re-parented at once
    pidfile = tmp_path / "daemon.pid"
    scenario = tmp_path / "daemon.yaml"
    scenario.write_text(yaml.safe_dump({
        "name": "daemon", "stages": ["main"], "memray": {"mode": "off"},
        "workload": {"entry": str(WORKLOADS / "daemon.py"), "args": [str(pidfile)]}}), encoding="utf-8")
    # WHEN it runs THEN the stage adopted it (a child subreaper), so it was seen, killed and named
    _assert_killed_and_named(tmp_path, cli, reap, scenario, pidfile, "the daemon")


# --- item 8: bad input is exit 2, before the run directory exists, said once -------------------------

def _bad_archive(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / "images.tar.gz"
    if kind == "garbage":
        path.write_bytes(b"this is not an archive\n" * 10)
    elif kind == "gzip, not tar":
        path.write_bytes(gzip.compress(b"plain text, not a tar file\n" * 100))
    elif kind == "empty":
        path.write_bytes(b"")
    return path


@pytest.mark.parametrize(("sections", "key"), [
    ({"workload": {"entry": "no/such/script.py"}, "stages": ["main"]}, "workload.entry"),
    ({"workload": {"entry": "no_such_package.stages:run"}, "stages": ["main"]}, "workload.entry"),
    ({"seed": 2**64}, "seed"),
    ({"seed": -1}, "seed"),
    ({"data": {"source": "folder", "path": "ARCHIVE:garbage"}}, "data.path"),
    ({"data": {"source": "folder", "path": "ARCHIVE:gzip, not tar"}}, "data.path"),
    ({"data": {"source": "folder", "path": "ARCHIVE:empty"}}, "data.path"),
])
def test_bad_input_is_exit_2_before_the_run_directory_exists(
    tmp_path: Path, cli, sections: dict[str, Any], key: str  # type: ignore[no-untyped-def]
) -> None:
    path_value = sections.get("data", {}).get("path", "")
    if path_value.startswith("ARCHIVE:"):
        sections = {**sections, "data": {**sections["data"],
                                         "path": str(_bad_archive(tmp_path, path_value[8:]))}}
    scenario = write_scenario(tmp_path / "s.yaml", **sections)
    code, _, err = cli("run", str(scenario), "--reports", str(tmp_path / "r"), "--quiet")
    assert code == 2, err
    line = _one_line(err)
    assert line.startswith(f"harness: error: {scenario}: {key}: "), line
    assert not (tmp_path / "r").exists(), "a run directory was made for a scenario that cannot run"


def test_a_readable_archive_passes_the_preflight(tmp_path: Path) -> None:
    from harness.control import preflight
    from harness.records import scenario

    archive = tmp_path / "images.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("images/train/cat/0.png")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"png"))
    path = write_scenario(tmp_path / "s.yaml", data={"source": "folder", "path": str(archive)},
                          seed=2**64 - 1)
    preflight.check(scenario.load(path), str(path))  # no error


@pytest.mark.slow
def test_a_data_error_inside_the_stage_is_exit_2_said_once(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    # GIVEN an archive that reads well but is not laid out train/<class>/, test/<class>/: only the
    # stage finds out
    archive = tmp_path / "images.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("images/readme.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    path = write_scenario(tmp_path / "s.yaml", data={"source": "folder", "path": str(archive),
                                                     "root": str(tmp_path / "data")})
    # WHEN it runs, its output echoed (not --quiet)
    code, out, err = cli("run", str(path), "--reports", str(tmp_path / "r"))
    # THEN exit 2, one error line, and the data error is said once in all that was printed
    assert code == 2, err
    line = _one_line(err)
    assert "DataError" in line and "expected a train/<class>/ folder" in line
    assert (out + err).count("expected a train/<class>/ folder") == 1, out + err
    run = latest_run(tmp_path / "r")
    errors = [e for e in read_events(run / "stages/train") if e["kind"] == "stage_error"]
    assert [e["error"] for e in errors] == ["DataError"]
    assert "expected a train/<class>/ folder" in (run / "stages/train/log.txt").read_text()


# --- item 11: a process that ends without a word is described by its exit code ----------------------

@pytest.mark.slow
def test_os_exit_is_reported_by_its_exit_code_not_its_last_line(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    scenario, _ = _lingering(tmp_path, "os_exit")
    code, _, err = cli("run", str(scenario), "--reports", str(tmp_path / "r"), "--quiet", "--no-report")
    assert code == 1
    line = _one_line(err)
    assert "exit code 3" in line and "the last line printed" not in line
