"""What a stage runs: the built-in tutorial, a script path, or ``package.module:function``."""

from __future__ import annotations

import importlib
import inspect
import runpy
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import probe
from harness.errors import ScenarioError
from harness.layout import Event
from harness.probe import auto
from harness.records.scenario import Scenario

CHECKPOINT_FILE = "checkpoint.pt"


@dataclass(frozen=True)
class StageContext:
    """Handed to function workloads: which stage to run, with which scenario, where to write."""

    stage: str
    scenario: Scenario
    run_dir: Path

    @property
    def checkpoint(self) -> Path:
        return self.run_dir / CHECKPOINT_FILE


def resolve(entry: str) -> Callable[[StageContext], Any] | Path:
    """A callable for ``pkg.module:function``, or the path of a script."""
    if entry.endswith(".py"):
        path = Path(entry)
        if not path.is_file():
            raise ScenarioError(f"workload.entry: no such script: {entry}")
        return path
    module_name, sep, func_name = entry.partition(":")
    if not sep or not module_name or not func_name:
        raise ScenarioError(
            f"workload.entry: expected a script path ending in .py or package.module:function, got {entry!r}"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ScenarioError(f"workload.entry: cannot import {module_name!r}: {exc}") from None
    func = getattr(module, func_name, None)
    if not callable(func):
        raise ScenarioError(f"workload.entry: {module_name!r} has no function {func_name!r}")
    return func


def run_stage(ctx: StageContext) -> None:
    """Run one stage in this process; a script or function gets automatic phases (harness.probe.auto)."""
    workload = ctx.scenario.workload
    target = resolve(workload.entry)
    set_threads(ctx.scenario.train.threads)
    with auto.phases(ctx.stage, enabled=workload.auto_phases and not workload.builtin):
        _run(ctx, target)


def set_threads(threads: int | None) -> None:
    """Give torch ``threads`` intra-op and inter-op threads (``train.threads``); record what it runs with.

    Before the workload, so its first operation already runs with them. None keeps torch's
    default, and a workload that has not imported torch yet (a script) is left to import it.
    The inter-op count can be set only before torch's inter-op pool starts; the event says the
    count it kept if it had.
    """
    if threads is None and "torch" not in sys.modules:
        return
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
        if torch.get_num_interop_threads() != threads:
            try:
                torch.set_num_interop_threads(threads)
            except RuntimeError as exc:  # the pool runs already: said below, by the count kept
                print(f"harness: train.threads: inter-op threads stay {torch.get_num_interop_threads()}: "
                      f"{str(exc).splitlines()[0]}", file=sys.stderr)
    probe.record(Event.TORCH_THREADS, threads=torch.get_num_threads(),
                 interop_threads=torch.get_num_interop_threads(), asked=threads)


def _run(ctx: StageContext, target: Callable[[StageContext], Any] | Path) -> None:
    if isinstance(target, Path):
        sys.argv = [str(target), *ctx.scenario.workload.args]
        sys.path.insert(0, str(target.parent))
        runpy.run_path(str(target), run_name="__main__")
        return
    params = inspect.signature(target).parameters
    if params:
        target(ctx)
    else:
        target()  # type: ignore[call-arg]
