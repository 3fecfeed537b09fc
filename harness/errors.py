"""Typed errors. Deep code raises these; only ``harness.cli.main`` prints them and exits."""

from __future__ import annotations

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


class Interrupted(RunFailed):
    """The user pressed Ctrl-C."""

    exit_code = 130
