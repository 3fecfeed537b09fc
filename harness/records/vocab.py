"""The words both processes use for a run: phases, a stage's and a run's status."""

from __future__ import annotations

from enum import StrEnum

PHASES: tuple[str, ...] = (
    "idle",
    "setup",
    "data",
    "forward",
    "loss",
    "backward",
    "optimizer",
    "sanity_check",  # a framework's validation batches before training (Lightning's sanity check)
    "validate",
    "test",
    "teardown",
)
PHASE_CODE: dict[str, int] = {name: i for i, name in enumerate(PHASES)}
TRAINING_STEP_PHASES: tuple[str, ...] = ("data", "forward", "loss", "backward", "optimizer")


class Status(StrEnum):
    """How a stage, or the whole run, ended (``manifest.json``'s ``status``)."""

    RUNNING = "running"  # the harness is still at it, or was itself killed before it could say
    OK = "ok"
    FAILED = "failed"  # the workload exited non-zero (or raised)
    KILLED = "killed"  # a signal ended the stage's main process (not the harness's own stop)
    # the kernel's OOM killer killed the stage's main process, a DataLoader worker or a rank
    # (a SIGKILL while an OOM-kill counter rose): manifest's stages[].oom says which and where
    OOM_KILLED = "oom_killed"
    LIMIT = "limit"  # stopped by limits.max_rss_mb
    TIMEOUT = "timeout"  # stopped by limits.timeout_s
    INTERRUPTED = "interrupted"  # Ctrl-C
    TERMINATED = "terminated"  # SIGTERM or SIGHUP to the harness
