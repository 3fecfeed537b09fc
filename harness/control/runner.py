"""Process control: launch each stage as a subprocess, sample it, enforce limits, record outcomes.

``run_scenario(..., instrumented=True)`` is ``harness run``; ``instrumented=False`` is
``harness train`` (the same launch, no probe, no sampler, no memray: the bare workload).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.control import rundir
from harness.control.console import Console, progress_text
from harness.control.sampler import TreeSampler, TreeTotals
from harness.control.scenario import Scenario, dump
from harness.errors import Interrupted, RunFailed, ScenarioError
from harness.layout import (
    CELL_FILE,
    EVENTS_FILE,
    PROBE_CONFIG_FILE,
    SAMPLES_FILE,
    STAGE_DIR_ENV,
    STAGE_LOG_FILE,
    stage_dir,
)
from harness.probe import cell as cellmod
from harness.probe.config import ProbeConfig
from harness.sizes import MiB, format_size


@dataclass
class StageOutcome:
    name: str
    status: str  # ok | failed | killed | limit | timeout | interrupted
    exit_code: int | None
    signal: str | None
    started: str
    ended: str
    wall_s: float
    last: dict[str, Any] | None
    message: str
    sampling: dict[str, Any] | None
    peak_tree_rss: int | None
    peak_main_rss: int | None

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def check_device(scenario: Scenario, source: str = "scenario") -> None:
    """CUDA asked for where there is none is a scenario error, before anything starts."""
    if not scenario.device.startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        raise ScenarioError(
            f"{source}: device: {scenario.device!r} asked for, but this machine has no CUDA "
            "device (run it on the CPU with --set device=cpu)"
        )
    index = int(scenario.device.partition(":")[2] or 0)
    if index >= torch.cuda.device_count():
        raise ScenarioError(
            f"{source}: device: {scenario.device!r} asked for, but only "
            f"{torch.cuda.device_count()} CUDA device(s) exist"
        )


def _pump(pipe: Any, log_path: Path, console: Console) -> None:
    """Copy the child's output to its log (flushed per line) and to the console."""
    with open(log_path, "ab", buffering=0) as log:
        for raw in iter(pipe.readline, b""):
            log.write(raw)
            console.line(raw.decode("utf-8", errors="replace").rstrip("\n"))
    pipe.close()


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _probe_config(scenario: Scenario, stage: str) -> dict[str, Any]:
    return ProbeConfig.for_stage(scenario, stage).model_dump(mode="json")


def _last_error(stage_path: Path) -> str:
    """The workload's own error line from the event stream or, failing that, the log's tail."""
    events = stage_path / EVENTS_FILE
    if events.exists():
        for line in reversed(events.read_text(encoding="utf-8", errors="replace").splitlines()):
            try:
                ev = json.loads(line)
            except json.JSONDecodeError:
                continue
            if ev.get("kind") == "stage_error":
                return f"{ev.get('error')}: {ev.get('message')}".rstrip(": ")
    log = stage_path / STAGE_LOG_FILE
    if log.exists():
        lines = [ln for ln in log.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
        if lines:
            return lines[-1].strip()[:300]
    return ""


def run_stage(
    scenario: Scenario,
    run_dir: Path,
    stage: str,
    console: Console,
    instrumented: bool,
) -> StageOutcome:
    sdir = stage_dir(run_dir, stage)
    sdir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env.pop(STAGE_DIR_ENV, None)
    if instrumented:
        cellmod.create(sdir / CELL_FILE)
        (sdir / PROBE_CONFIG_FILE).write_text(json.dumps(_probe_config(scenario, stage), indent=1))
        env[STAGE_DIR_ENV] = str(sdir)
    started_iso, t0 = rundir.now_iso(), time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness.probe.stage", str(run_dir), stage],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        start_new_session=True,  # its own process group: we can stop the whole tree at once
    )
    pgid = proc.pid
    pump = threading.Thread(target=_pump, args=(proc.stdout, sdir / STAGE_LOG_FILE, console), daemon=True)
    pump.start()

    stop_reason: list[str] = []
    limit_bytes = scenario.limits.max_rss_mb * MiB if scenario.limits.max_rss_mb else None

    def on_tick(totals: TreeTotals) -> None:
        if limit_bytes is not None and totals.tree_rss > limit_bytes and not stop_reason:
            stop_reason.append(
                f"limit: tree RSS {format_size(totals.tree_rss, unit='MiB', digits=0)} exceeded "
                "limits.max_rss_mb "
                f"({scenario.limits.max_rss_mb:g} MiB)"
            )
            _kill_group(pgid)

    sampler = None
    if instrumented:
        sampler = TreeSampler(
            proc.pid, stage, sdir / SAMPLES_FILE, sdir / CELL_FILE,
            scenario.sampling.rss_hz, scenario.sampling.full_hz, on_tick,
        )
        sampler.start()

    interrupted = False
    timeout = scenario.limits.timeout_s
    try:
        while True:
            try:
                proc.wait(timeout=0.25)
                break
            except subprocess.TimeoutExpired:
                pass
            elapsed = time.monotonic() - t0
            if sampler is not None:
                console.status(progress_text(stage, sampler.totals, elapsed))
            if timeout is not None and elapsed > timeout and not stop_reason:
                stop_reason.append(f"timeout: stage ran past limits.timeout_s ({timeout:g} s)")
                _kill_group(pgid)
    except KeyboardInterrupt:
        interrupted = True
        _kill_group(pgid)
        proc.wait()
    finally:
        # Workers outlive a killed main process only briefly; never leave one behind.
        _kill_group(pgid)
        console.end_status()
    pump.join(timeout=5)
    if sampler is not None:
        sampler.stop()
        sampler.join(timeout=10)
    wall = time.monotonic() - t0
    rc = proc.returncode
    last = None
    if sampler is not None and sampler.totals.cell is not None:
        c = sampler.totals.cell
        last = {"epoch": c.epoch, "step": c.step, "total": c.total, "phase": c.phase}
    sig = signal.Signals(-rc).name if rc is not None and rc < 0 else None
    if interrupted:
        status, message = "interrupted", "interrupted by Ctrl-C"
    elif stop_reason:
        status = stop_reason[0].split(":")[0]
        message = stop_reason[0].partition(": ")[2]
    elif rc == 0:
        status, message = "ok", ""
    elif sig is not None:
        status, message = "killed", f"killed by {sig}"
    else:
        status, message = "failed", _last_error(sdir) or f"exit code {rc}"
    return StageOutcome(
        name=stage,
        status=status,
        exit_code=rc,
        signal=sig,
        started=started_iso,
        ended=rundir.now_iso(),
        wall_s=round(wall, 3),
        last=last,
        message=message,
        sampling=sampler.stats.rates() if sampler is not None else None,
        peak_tree_rss=sampler.totals.peak_tree_rss if sampler is not None else None,
        peak_main_rss=sampler.totals.peak_main_rss if sampler is not None else None,
    )


def _where(outcome: StageOutcome) -> str:
    if not outcome.last:
        return ""
    last = outcome.last
    bits = []
    if last.get("epoch"):
        bits.append(f"epoch {last['epoch']}")
    bits.append(f"step {last['step']}")
    bits.append(f"phase {last['phase']}")
    return " at " + ", ".join(bits)


def run_scenario(
    scenario: Scenario,
    reports: Path,
    *,
    instrumented: bool,
    console: Console,
    source: str = "scenario",
) -> Path:
    """Run every stage in order into a new run directory; raise RunFailed on the first failure.

    ``source`` names the scenario in errors (its file).
    """
    check_device(scenario, source)
    run_dir = rundir.new_run_dir(reports, scenario.name, "" if instrumented else "-bare")
    (run_dir / rundir.SCENARIO).write_text(dump(scenario), encoding="utf-8")
    manifest: dict[str, Any] = {
        "manifest_version": rundir.MANIFEST_VERSION,
        "kind": "run" if instrumented else "bare",
        "scenario_name": scenario.name,
        "scenario": scenario.to_dict(),
        **rundir.provenance(),
        "started": rundir.now_iso(),
        "ended": None,
        "status": "running",
        "stages": [],
    }
    rundir.write_manifest(run_dir, manifest)
    console.line(f"harness: run directory {run_dir}")
    t0 = time.monotonic()
    failure: StageOutcome | None = None
    try:
        for stage in scenario.stages:
            outcome = run_stage(scenario, run_dir, stage, console, instrumented)
            manifest["stages"].append(outcome.to_dict())
            rundir.write_manifest(run_dir, manifest)
            if outcome.status != "ok":
                failure = outcome
                break
    finally:
        manifest["ended"] = rundir.now_iso()
        manifest["wall_s"] = round(time.monotonic() - t0, 3)
        manifest["status"] = "ok" if failure is None else failure.status
        if failure is not None:
            manifest["failure"] = {
                "stage": failure.name, "status": failure.status, "message": failure.message,
                "where": failure.last,
            }
        rundir.write_manifest(run_dir, manifest)
    if failure is not None:
        log = stage_dir(run_dir, failure.name) / STAGE_LOG_FILE
        what = {
            "failed": "failed",
            "killed": "was killed",
            "limit": "was stopped by the harness",
            "timeout": "was stopped by the harness",
            "interrupted": "was interrupted",
        }[failure.status]
        text = f"stage {failure.name!r} {what}{_where(failure)}: {failure.message} (log: {log})"
        if failure.status == "interrupted":
            raise Interrupted(text, run_dir)
        raise RunFailed(text, run_dir)
    return run_dir
