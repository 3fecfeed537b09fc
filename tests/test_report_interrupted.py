"""An interrupted ``harness report`` keeps the previous report whole and leaves no process behind.

The report is built beside ``report/`` and swapped in when complete; the capture pool is shut
down, its workers terminated, on every way out (issue 13, item 9).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from _synthetic import write_capture, write_run

from harness.errors import UsageError
from harness.report import build, build_report, pool, staging

REPO = Path(__file__).resolve().parents[1]


def _tree(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (relative path) and a hash of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _leftovers(run_dir: Path) -> list[str]:
    return sorted(p.name for p in run_dir.iterdir() if p.name.startswith(".report"))


@pytest.fixture
def reported(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A synthetic run with two captures (two capture jobs) and a finished report."""
    run_dir = write_run(tmp_path)
    write_capture(run_dir, "train-e1-train")
    write_capture(run_dir, "train-e2-train")
    build_report(run_dir, processes=1)
    before = _tree(run_dir / "report")
    for rel in ("report.html", "summary.json", "tables/phases.csv", "tables/sites.csv"):
        assert rel in before, rel
    return run_dir, before


@pytest.mark.parametrize("step", ["build_summary", "write_tables", "render_html"])
def test_an_interrupted_build_keeps_the_previous_report_whole(
        reported: tuple[Path, dict[str, str]], monkeypatch: pytest.MonkeyPatch, step: str) -> None:
    # GIVEN a run with a report, WHEN a second build is interrupted midway
    run_dir, before = reported

    def interrupt(*_args: object, **_kwargs: object) -> None:
        raise KeyboardInterrupt

    target = {"build_summary": (build, "build_summary"),
              "write_tables": (build.csvs, "write_tables"),
              "render_html": (build.html, "render")}[step]
    monkeypatch.setattr(*target, interrupt)
    with pytest.raises(KeyboardInterrupt):
        build_report(run_dir, processes=1)
    # THEN the previous report is there, byte for byte, and nothing half-built is left beside it
    assert _tree(run_dir / "report") == before
    assert _leftovers(run_dir) == []


@pytest.mark.parametrize("processes", [1, pytest.param(2, marks=pytest.mark.slow)],
                         ids=["inline", "pool"])
def test_a_build_replaces_the_report_whole_and_its_links_resolve(
        reported: tuple[Path, dict[str, str]], monkeypatch: pytest.MonkeyPatch, processes: int) -> None:
    run_dir, _ = reported
    monkeypatch.setattr(pool, "INLINE_BELOW_BYTES", 0)  # with 2 processes, one capture is read in the pool
    (run_dir / "report" / "stale.txt").write_text("from an older report", encoding="utf-8")
    handlers = [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)]
    result = build_report(run_dir, processes=processes)
    assert [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)] == handlers
    out = run_dir / "report"
    assert result.report_dir == out and not (out / "stale.txt").exists()
    assert _leftovers(run_dir) == []
    # what build_report returns names the files where they are now, not where they were built
    for path in [result.html, result.summary, result.timeline_png, result.timeline_svg,
                 *result.tables.values(), *(f.path for f in result.flamegraphs if f.path)]:
        assert path is not None and path.is_file() and out in path.parents, path
    assert str(out) in result.text
    page = result.html.read_text(encoding="utf-8")
    hrefs = [h for h in re.findall(r'(?:href|src)="([^"#:]+)"', page) if h]
    assert any(h.startswith("flamegraphs/") for h in hrefs) and any(h.startswith("tables/") for h in hrefs)
    for href in hrefs:
        assert (out / href).resolve().is_file(), href


def test_the_next_build_removes_only_its_own_leftovers(
        reported: tuple[Path, dict[str, str]]) -> None:
    # GIVEN folders a crashed build leaves (the harness's name pattern) and others that look alike
    run_dir, _ = reported
    ours = [run_dir / ".report-0123456789abcdef", run_dir / ".report-fedcba9876543210"]
    theirs = [run_dir / ".report-mine", run_dir / "report-0123456789abcdef",
              run_dir / ".report-0123456789abcdeg", run_dir / ".report-0123456789abcdef0"]
    for folder in ours + theirs:
        (folder / "tables").mkdir(parents=True)
        (folder / "tables" / "x.csv").write_text("a\n1\n", encoding="utf-8")
    (run_dir / ".report-00000000000000aa").write_text("a file, not a folder", encoding="utf-8")
    # WHEN the report is built again
    build_report(run_dir, processes=1)
    # THEN the harness's leftover folders are gone and everything else is as it was
    assert not any(p.exists() for p in ours)
    assert all((p / "tables" / "x.csv").is_file() for p in theirs)
    assert (run_dir / ".report-00000000000000aa").is_file()


def _staged_and_final(tmp_path: Path) -> tuple[Path, Path]:
    final, staged = tmp_path / "report", staging.new_folder(tmp_path)
    final.mkdir()
    (final / "summary.json").write_text("old", encoding="utf-8")
    (staged / "summary.json").write_text("new", encoding="utf-8")
    return staged, final


def test_a_signal_during_the_swap_waits_until_the_new_report_is_in_place(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN Ctrl-C arriving just as the old report is renamed aside
    staged, final = _staged_and_final(tmp_path)
    rename = os.rename

    def rename_then_interrupt(src: Path, dst: Path) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        rename(src, dst)

    monkeypatch.setattr(staging.os, "rename", rename_then_interrupt)
    # WHEN the new report is swapped in, THEN the interruption comes after the swap, not between
    with pytest.raises(KeyboardInterrupt):
        staging.swap_in(staged, final)
    assert (final / "summary.json").read_text(encoding="utf-8") == "new"
    assert _leftovers(tmp_path) == []


def test_the_old_report_goes_back_when_the_new_one_cannot_be_renamed_in(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    staged, final = _staged_and_final(tmp_path)
    rename = os.rename

    def rename_fails_for_the_new(src: Path, dst: Path) -> None:
        if Path(src) == staged:
            raise OSError("no")
        rename(src, dst)

    monkeypatch.setattr(staging.os, "rename", rename_fails_for_the_new)
    with pytest.raises(OSError, match="no"):
        staging.swap_in(staged, final)
    assert (final / "summary.json").read_text(encoding="utf-8") == "old"
    assert _leftovers(tmp_path) == [staged.name]  # the caller removes what it staged


def test_a_file_named_report_is_refused_and_left_alone(tmp_path: Path) -> None:
    run_dir = write_run(tmp_path)
    (run_dir / "report").write_text("not a report", encoding="utf-8")
    with pytest.raises(UsageError, match="not a folder"):
        build_report(run_dir, processes=1)
    assert (run_dir / "report").read_text(encoding="utf-8") == "not a report"
    assert _leftovers(run_dir) == []


@pytest.mark.slow
def test_the_pool_is_shut_down_and_its_workers_gone_when_the_build_is_interrupted(
        reported: tuple[Path, dict[str, str]], monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN captures read by a pool of processes, WHEN the build is interrupted while it reads
    run_dir, before = reported
    monkeypatch.setattr(pool, "INLINE_BELOW_BYTES", 0)
    me = psutil.Process()
    seen: list[psutil.Process] = []

    def interrupt(*_args: object, **_kwargs: object) -> None:
        seen.extend(p for p in me.children(recursive=True) if not _is_resource_tracker(p))
        raise KeyboardInterrupt

    from harness.analysis import ranks

    monkeypatch.setattr(ranks, "phase_table", interrupt)  # report/tables.py builds the phases through it
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        build_report(run_dir, processes=2)
    # THEN the worker was terminated, not waited for, and the old report is whole
    assert seen, "the pool did not start"
    _, alive = psutil.wait_procs(seen, timeout=30)
    assert alive == []
    assert time.monotonic() - t0 < 60
    assert _tree(run_dir / "report") == before
    assert _leftovers(run_dir) == []


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["entering", "started"])
def test_an_interruption_as_the_pool_starts_leaves_no_worker(
        reported: tuple[Path, dict[str, str]], monkeypatch: pytest.MonkeyPatch, moment: str) -> None:
    # GIVEN captures read by a pool, WHEN Ctrl-C is handled as the with statement that would end the
    # pool is entered (__enter__'s first line is where Python runs a handler that came just before),
    # or just after the pool started
    run_dir, before = reported
    monkeypatch.setattr(pool, "INLINE_BELOW_BYTES", 0)
    me = psutil.Process()
    seen: list[psutil.Process] = []
    name = {"entering": "__enter__", "started": "start"}[moment]
    original = getattr(pool.CaptureReading, name)

    def interrupted(self: pool.CaptureReading) -> object:
        if moment == "started":
            original(self)
        seen.extend(p for p in me.children(recursive=True) if not _is_resource_tracker(p))
        raise KeyboardInterrupt

    monkeypatch.setattr(pool.CaptureReading, name, interrupted)
    with pytest.raises(KeyboardInterrupt):
        build_report(run_dir, processes=2)
    # THEN no worker runs on: none was started before the with took the pool, or it was terminated
    workers = [p for p in me.children(recursive=True) if not _is_resource_tracker(p)]
    _, alive = psutil.wait_procs(workers, timeout=30)
    assert alive == []
    assert bool(seen) == (moment == "started"), seen
    assert _tree(run_dir / "report") == before
    assert _leftovers(run_dir) == []


def _is_resource_tracker(p: psutil.Process) -> bool:
    try:
        return "resource_tracker" in " ".join(p.cmdline())
    except psutil.Error:
        return False


# `harness report`, or a program calling build_report, with the capture pool in use and busy.
REPORT_WITH_SLOW_POOL = '''
import json
import os
import signal
import sys
import time

import harness.report.pool as pool

pool.INLINE_BELOW_BYTES = 0  # the pool, whatever the captures' size


def slow_read(*args, **kwargs):
    # The readiness point: this worker has its job. It says so, with the signals it has held
    # blocked since it was spawned (so while it imported), in a file renamed into place whole.
    blocked = sorted(int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, []))
    ready = os.environ["REPORT_WORKER_READING"]
    with open(ready + ".part", "w", encoding="utf-8") as f:
        json.dump({"pid": os.getpid(), "blocked": blocked}, f)
    os.replace(ready + ".part", ready)
    time.sleep(600)  # a capture that takes minutes to read: the worker is busy when the signal comes


if __name__ == "__main__":
    if sys.argv[1] == "cli":
        from harness.cli import main

        sys.exit(main(["report", sys.argv[2]]))
    from harness.report import build_report

    build_report(sys.argv[2], processes=2)
else:  # run again as __mp_main__ in each spawned worker, before it takes a job
    pool.read_capture = slow_read
'''


@pytest.mark.slow
@pytest.mark.parametrize("caller", ["cli", "program"])
def test_sigterm_while_the_pool_reads_leaves_no_process_and_the_old_report_whole(
        reported: tuple[Path, dict[str, str]], tmp_path: Path, caller: str) -> None:
    # GIVEN a run with a report, and the report being built again, its pool worker reading
    run_dir, before = reported
    script = tmp_path / "report_slow_pool.py"
    script.write_text(REPORT_WITH_SLOW_POOL, encoding="utf-8")
    ready = tmp_path / "worker-reading.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "REPORT_WORKER_READING": str(ready)}
    err_file = tmp_path / "stderr.txt"
    with open(err_file, "w", encoding="utf-8") as err:
        # Output to a file, not a pipe: a worker left behind would hold a pipe open.
        proc = subprocess.Popen([sys.executable, str(script), caller, str(run_dir)], cwd=REPO, env=env,
                                stdout=subprocess.DEVNULL, stderr=err)
    children: dict[int, psutil.Process] = {}
    try:
        parent = psutil.Process(proc.pid)
        # Wait for the worker to say it reads, not for a child to appear: a child seen just after
        # fork still shows the parent's command line, the resource tracker's included.
        deadline = time.monotonic() + 180  # a cold import of pandas and memray on a busy machine
        while time.monotonic() < deadline and proc.poll() is None and not ready.exists():
            time.sleep(0.05)
        assert proc.poll() is None, "the report ended before its pool worker read"
        assert ready.exists(), "no pool worker read within 180 s"
        worker = json.loads(ready.read_text(encoding="utf-8"))
        children = {c.pid: c for c in parent.children(recursive=True)}
        assert worker["pid"] in children, (worker, children)
        # a Ctrl-C or hangup to the process group is the parent's to act on, even while a worker
        # still imports: the worker was spawned with both held back
        assert {signal.SIGINT, signal.SIGHUP} <= set(worker["blocked"]), worker
        # WHEN it is sent SIGTERM
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=120)
        # THEN every process it started ends, and soon
        _, alive = psutil.wait_procs(list(children.values()), timeout=60)
        assert alive == [], [" ".join(p.cmdline()) for p in alive]
    finally:
        if proc.poll() is None:
            proc.kill()
        for child in children.values():
            try:
                child.kill()  # only after a failure: what was left running
            except psutil.Error:
                pass
        proc.wait()
    # and the old report is there, byte for byte, with nothing half-built beside it
    assert _tree(run_dir / "report") == before
    assert _leftovers(run_dir) == []
    text = err_file.read_text(encoding="utf-8")
    if caller == "cli":  # one line, and the shell's code for SIGTERM
        assert proc.returncode == 128 + signal.SIGTERM, text
        lines = text.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("harness: ") and "SIGTERM" in lines[0], text
    else:  # cleaned up, then ended by the signal as the program would have been without us
        assert proc.returncode == -signal.SIGTERM, text
