"""The stage process: ``python -m harness.probe.stage RUN_DIR STAGE``.

``harness run`` and ``harness train`` both start a stage this way; under ``harness run`` the
environment names the stage directory and the live probe is switched on before the workload is
imported, so a full memray capture sees the imports too.

A stage never outlives the harness that started it: when the harness process ends, however it
ends, a thread here sees the pipe it holds close and kills the stage's whole process group (its
DataLoader workers, its own children).

A distributed stage (scenario ``distributed:``) starts with ``--agent``: this process becomes
torchrun's agent (:mod:`harness.control.distributed`), with no probe of its own, and starts each
rank as ``python -m harness.probe.stage RUN_DIR STAGE --rank``. A rank makes its own directory,
``stages/<stage>/rank<R>/`` (R the global rank torchrun gave it), and goes live there.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import traceback
from pathlib import Path

from harness import probe
from harness.errors import HarnessError, ScenarioError
from harness.layout import (
    CELL_FILE,
    PROBE_CONFIG_FILE,
    SCENARIO_FILE,
    STAGE_DIR_ENV,
    STAGE_LOG_FILE,
    rank_dir_name,
    stage_dir,
)
from harness.probe import cell as cellmod


def watch_harness(fd: int) -> None:
    """Kill this stage's whole process group once the harness that started it is gone.

    The harness holds the only write end of the pipe ``fd`` reads and never writes to it, so the
    read returns (end of file) only when the harness process has ended, however it ended, also
    before this ran. (PR_SET_PDEATHSIG is no substitute: it fires when the harness thread that
    started the stage ends, which on SIGKILL can be before the harness's other threads, while
    the stage's parent still looks alive.)
    """
    os.set_inheritable(fd, False)  # exec'd children of the workload need not hold it

    def watch() -> None:
        try:
            while os.read(fd, 1):
                pass
        except OSError:
            return
        os.killpg(os.getpgrp(), signal.SIGKILL)  # the harness is gone: nobody else will stop us

    threading.Thread(target=watch, name="harness-watch", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="harness.probe.stage")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("stage")
    parser.add_argument("--watch-fd", type=int, default=None,
                        help="a pipe the harness holds open: the stage stops when it closes")
    role = parser.add_mutually_exclusive_group()
    role.add_argument("--agent", action="store_true",
                      help="run the stage's ranks under torchrun (the scenario's distributed section)")
    role.add_argument("--rank", action="store_true",
                      help="one rank of a distributed stage (started by the agent; RANK names it)")
    args = parser.parse_args(argv)
    if args.watch_fd is not None:
        watch_harness(args.watch_fd)
    if args.agent:
        return _agent(args.run_dir, args.stage)
    if args.rank:
        _become_rank(args.run_dir, args.stage)

    probe.activate_from_env()
    error: BaseException | None = None
    code = 0
    try:
        from harness.control import scenario as scenario_mod
        from harness.probe.workload import StageContext, run_stage

        scenario = scenario_mod.load(args.run_dir / SCENARIO_FILE)
        os.environ.setdefault("HARNESS_STAGE", args.stage)
        run_stage(StageContext(stage=args.stage, scenario=scenario, run_dir=args.run_dir))
    except HarnessError as exc:
        error, code = exc, exc.exit_code
        _log_error(args.run_dir, args.stage, exc)
    except SystemExit as exc:  # a script calling sys.exit()
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if code:
            error = exc
    except BaseException as exc:  # the workload's own failure: keep its traceback in the log
        error, code = exc, 1
        traceback.print_exc()
    if error is not None and probe.enabled():
        _record_error(args.stage, error)
    probe.deactivate(failed=error is not None)
    sys.stdout.flush()
    return code


def _agent(run_dir: Path, stage: str) -> int:
    """Run the stage as torchrun's agent; no probe here (each rank has its own)."""
    from harness.control import distributed
    from harness.control import scenario as scenario_mod

    try:
        scenario = scenario_mod.load(run_dir / SCENARIO_FILE)
        if scenario.distributed is None:
            raise ScenarioError(f"{run_dir / SCENARIO_FILE}: --agent: the scenario has no distributed section")
        record_dir = distributed.node_dir(run_dir, stage, scenario.distributed)
        record_dir.mkdir(parents=True, exist_ok=True)
        code = distributed.run_agent(run_dir, stage, scenario, record_dir)
    except HarnessError as exc:
        _log_error(run_dir, stage, exc)
        return exc.exit_code
    sys.stdout.flush()
    return code


def _become_rank(run_dir: Path, stage: str) -> None:
    """Watch the agent and, under ``harness run``, make this rank's directory and point the probe at it.

    The directory is named after the global rank, known only now (c10d orders the nodes as they
    join); its probe.json is the one the harness wrote for the node, its cell a fresh one, put in
    place whole so that a sampler looking for it never maps a short file.
    """
    from harness.control import distributed

    distributed.watch_agent()
    node_dir = os.environ.get(STAGE_DIR_ENV)
    if not node_dir:  # harness train: no probe
        return
    rdir = stage_dir(run_dir, stage) / rank_dir_name(int(os.environ["RANK"]))
    rdir.mkdir(parents=True, exist_ok=True)
    config = (Path(node_dir) / PROBE_CONFIG_FILE).read_bytes()
    (rdir / PROBE_CONFIG_FILE).write_bytes(config)
    tmp = rdir / (CELL_FILE + ".tmp")
    cellmod.create(tmp)
    tmp.replace(rdir / CELL_FILE)
    os.environ[STAGE_DIR_ENV] = str(rdir)


def _log_error(run_dir: Path, stage: str, error: HarnessError) -> None:
    """Write the harness error to the stage's log, not to the output the harness echoes: the
    harness says it once, in its own error line (it reads the type from here in a bare run)."""
    sys.stdout.flush()
    sys.stderr.flush()
    line = f"harness: {type(error).__name__}: {error}"
    try:
        with open(stage_dir(run_dir, stage) / STAGE_LOG_FILE, "a", encoding="utf-8") as log:
            log.write(line + "\n")
    except OSError:  # no stage directory (run by hand): the output is all there is
        print(line, file=sys.stderr)


def _record_error(stage: str, error: BaseException) -> None:
    message = str(error).splitlines()[0] if str(error) else ""
    if isinstance(error, SystemExit):
        message = f"exit code {message}" if isinstance(error.code, int) else message
    probe.record("stage_error", stage=stage, error=type(error).__name__, message=message)


if __name__ == "__main__":
    sys.exit(main())
