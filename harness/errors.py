"""Typed errors. Deep code raises these; only ``harness.cli.main`` prints them and exits."""

from __future__ import annotations

import signal
from pathlib import Path


class HarnessError(Exception):
    """An error with a one-line message and the exit code the CLI should return."""

    exit_code = 1


class ScenarioError(HarnessError):
    """A scenario file (or a ``--set`` override) is malformed or points at missing data."""

    exit_code = 2


class UsageError(HarnessError):
    """Bad command-line input that is not a scenario problem (a missing run directory, ...)."""

    exit_code = 2


class DataError(HarnessError):
    """A dataset could not be found, unpacked or downloaded."""

    exit_code = 2


class RunFailed(HarnessError):
    """A stage of the workload failed, was killed, or was stopped by the harness."""

    exit_code = 1

    def __init__(self, message: str, run_dir: Path | None = None) -> None:
        super().__init__(message)
        self.run_dir = run_dir  # what was recorded up to the failure lives here


class OutOfMemory(RunFailed):
    """The kernel's OOM killer killed a process of a stage (status ``oom_killed``): exit 137, as a
    shell reports a process SIGKILL ended, the code container runtimes give an OOM kill."""

    exit_code = 137


class StageInputError(RunFailed):
    """A stage stopped on a DataError or ScenarioError: bad input that only the stage could find."""

    exit_code = 2


class Interrupted(RunFailed):
    """The harness was stopped: Ctrl-C (exit 130) or, as :class:`Terminated`, SIGTERM or SIGHUP."""

    exit_code = 130


class Terminated(Interrupted):
    """SIGTERM or SIGHUP stopped the harness; exits 128 + the signal's number, as a shell would."""

    def __init__(self, message: str, run_dir: Path | None = None, signum: int = 15) -> None:
        super().__init__(message, run_dir)
        self.exit_code = 128 + signum


class SignalReceived(BaseException):  # noqa: N818 - named like KeyboardInterrupt, its sibling
    """Raised by the harness's SIGTERM and SIGHUP handler, as Python raises KeyboardInterrupt.

    A BaseException, so that no ``except Exception`` on the way swallows it; the runner turns it
    into :class:`Terminated` once the stage is stopped, ``harness.cli.main`` anywhere else.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


class DiskFull(HarnessError):
    """The disk (or the user's quota) filled while the harness wrote ``path``."""

    exit_code = 1

    def __init__(self, path: Path | str) -> None:
        super().__init__(f"disk full writing {path}")
        self.path = Path(path)
