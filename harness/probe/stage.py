"""The stage process: ``python -m harness.probe.stage RUN_DIR STAGE``.

``harness run`` and ``harness train`` both start a stage this way; under ``harness run`` the
environment names the stage directory and the live probe is switched on before the workload is
imported, so a full memray capture sees the imports too.

A stage never outlives the harness that started it: when the harness process ends, however it
ends, a thread here sees the pipe it holds close and kills the stage's whole process group (its
DataLoader workers, its own children).

A distributed stage (scenario ``distributed:``) starts as ``python -m harness.control.agent``
instead: torchrun's agent, with no probe of its own, which starts each rank as ``python -m
harness.probe.stage RUN_DIR STAGE --rank``. A rank makes its own directory,
``stages/<stage>/rank<R>/`` (R the global rank torchrun gave it), and goes live there.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import select
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

from harness import probe
from harness.errors import HarnessError
from harness.layout import (
    AGENT_PID_ENV,
    CELL_FILE,
    PROBE_CONFIG_FILE,
    SCENARIO_FILE,
    STAGE_DIR_ENV,
    STAGE_LOG_FILE,
    Event,
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


# prctl(2): a process that sets this adopts its orphaned descendants instead of init (Linux 3.4+)
_PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Make this process the child subreaper of its tree; whether it is now.

    A daemon the workload starts (fork, setsid, fork again, the middle process gone) is then
    re-parented to this process instead of to init, so it stays in the tree the harness samples
    and is found, killed and named when the stage ends. Elsewhere than Linux, nothing changes.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def watch_agent() -> None:
    """In a rank: kill this rank's process group (its workers too) once the agent is gone.

    torchrun puts each rank in its own session, out of reach of the kill that ends the agent's
    group; a pidfd of the agent becomes readable when the agent ends, however it ends.
    """
    raw = os.environ.get(AGENT_PID_ENV)
    if not raw:
        return
    agent = int(raw)
    if os.getppid() != agent:  # the agent ended before this rank got here
        os.killpg(os.getpgrp(), signal.SIGKILL)
    try:
        fd = os.pidfd_open(agent)
    except (OSError, AttributeError):  # gone already, or a kernel without pidfds: poll the parent
        fd = None

    def watch() -> None:
        if fd is not None:
            select.select([fd], [], [])
        else:
            while os.getppid() == agent:
                time.sleep(0.5)
        os.killpg(os.getpgrp(), signal.SIGKILL)

    threading.Thread(target=watch, name="harness-watch-agent", daemon=True).start()


def stage_parser(prog: str) -> argparse.ArgumentParser:
    """The arguments every stage process takes (this one and torchrun's agent): the run directory,
    the stage, and the pipe the harness holds open (:func:`watch_harness`)."""
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("stage")
    parser.add_argument("--watch-fd", type=int, default=None,
                        help="a pipe the harness holds open: the process stops when it closes")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser("harness.probe.stage")
    parser.add_argument("--rank", action="store_true",
                      help="one rank of a distributed stage (started by the agent; RANK names it)")
    args = parser.parse_args(argv)
    if args.watch_fd is not None:
        watch_harness(args.watch_fd)
    become_subreaper()  # before the workload starts anything
    if args.rank:
        _become_rank(args.run_dir, args.stage)

    probe.activate_from_env()
    error: BaseException | None = None
    code = 0
    try:
        from harness.probe.workload import StageContext, run_stage
        from harness.records import scenario as scenario_mod

        scenario = scenario_mod.load(args.run_dir / SCENARIO_FILE)
        os.environ.setdefault("HARNESS_STAGE", args.stage)
        run_stage(StageContext(stage=args.stage, scenario=scenario, run_dir=args.run_dir))
    except HarnessError as exc:
        error, code = exc, exc.exit_code
        log_error(args.run_dir, args.stage, exc)
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


def _become_rank(run_dir: Path, stage: str) -> None:
    """Watch the agent and, under ``harness run``, make this rank's directory and point the probe at it.

    The directory is named after the global rank, known only now (c10d orders the nodes as they
    join); its probe.json is the one the harness wrote for the node, its cell a fresh one, put in
    place whole so that a sampler looking for it never maps a short file.
    """
    watch_agent()
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


def log_error(run_dir: Path, stage: str, error: HarnessError) -> None:
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
    probe.record(Event.STAGE_ERROR, stage=stage, error=type(error).__name__, message=message)


if __name__ == "__main__":
    sys.exit(main())
