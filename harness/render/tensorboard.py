"""``harness export --tensorboard``: a run's memory series as TensorBoard scalars.

Each stage's figures go on its training-step axis (the steps of every epoch one after another),
one point a step: the largest the sampler saw while that step ran, in MiB. Tags::

    memory/<stage>/footprint_mib          the process tree, shared pages counted once (where recorded)
    memory/<stage>/tree_rss_mib           the process tree's RSS, summed
    memory/<stage>/main_rss_mib           the main process
    memory/<stage>/workers_uss_mib        the DataLoader workers' USS, summed (where read)
    memory/<stage>/cuda_reserved_mib      CUDA runs: the caching allocator's reserved bytes
    memory/<stage>/cuda_allocated_mib
    memory/<stage>/phase/<phase>/{footprint,main_rss,tree_rss}_mib  each phase's own peak in the step

A torchrun run's ranks each have their own, under ``memory/rank<R>/<stage>/...``. The points are
computed from the run's files (:func:`scalars`), then written (:func:`write`) with TensorBoard's own
event-file writer, which needs no torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from harness.analysis.load import Run
from harness.analysis.ranks import views
from harness.errors import UsageError
from harness.sizes import MiB

# tick column -> tag suffix; per phase only the process figures
# (a column the ticks do not have, the footprint in runs read by an older harness, is left out)
SERIES = (("tree_footprint", "footprint_mib"), ("tree_rss", "tree_rss_mib"), ("main_rss", "main_rss_mib"),
          ("workers_uss", "workers_uss_mib"), ("cuda_reserved", "cuda_reserved_mib"),
          ("cuda_allocated", "cuda_allocated_mib"))
PHASE_SERIES = (("tree_footprint", "footprint_mib"), ("main_rss", "main_rss_mib"), ("tree_rss", "tree_rss_mib"))
# Before the first step and after the workload: the interpreter, not training ("none": before
# the probe's first mark; a workload that never marks one keeps its "none" ticks, all at step 0).
OUTSIDE = frozenset({"setup", "teardown", "none"})
SUFFIX = ".harness"  # the event file's name ends .harness-<run dir's name>


@dataclass(frozen=True)
class Scalar:
    tag: str
    step: int
    value: float
    wall_time: float


def global_steps(ticks: pd.DataFrame) -> pd.Series:
    """One stage's ticks on its training-step axis: an epoch's steps follow the epoch before's
    (each epoch counted as far as its ticks' step went)."""
    steps = ticks["step"].astype(int)
    epochs = ticks["epoch"].astype(int)
    counts = steps.groupby(epochs).max()
    offsets = counts.cumsum().shift(1, fill_value=0)
    return steps + epochs.map(offsets).astype(int)


def _tag(prefix: str, stage: str, *parts: str) -> str:
    return "/".join((prefix, _clean(stage), *(_clean(p) for p in parts)))


def _clean(text: str) -> str:
    """A name inside a tag: no slash, which would make a level of its own."""
    return text.replace("/", "_") or "_"


def scalars(run: Run) -> list[Scalar]:
    """The run's memory series, by step: computed from its samples alone."""
    out: list[Scalar] = []
    for view in views(run):
        prefix = "memory" if view.rank is None else f"memory/rank{view.rank}"
        for stage, ticks in view.ticks.groupby("stage", sort=False):
            ticks = ticks.sort_values("t")
            inside = ticks[~ticks["phase"].isin(OUTSIDE)]
            ticks = inside if not inside.empty else ticks
            ticks = ticks.assign(gstep=global_steps(ticks))
            by_step = ticks.groupby("gstep", sort=True)
            first_t = by_step["t"].min()
            for column, name in SERIES:
                if column not in ticks.columns:
                    continue
                peaks = by_step[column].max().dropna()
                out += [Scalar(_tag(prefix, str(stage), name), int(s), float(v) / MiB, float(first_t[s]))
                        for s, v in peaks.items()]
            by_phase = ticks.groupby(["gstep", "phase"], sort=True)
            for column, name in PHASE_SERIES:
                if column not in ticks.columns:
                    continue
                peaks = by_phase[column].max().dropna()
                out += [Scalar(_tag(prefix, str(stage), "phase", str(phase), name), int(s),
                               float(v) / MiB, float(first_t[s]))
                        for (s, phase), v in peaks.items()]
    return sorted(out, key=lambda sc: (sc.step, sc.tag))


def write(points: Sequence[Scalar], logdir: Path, run_name: str) -> Path:
    """Write ``points`` as one event file in ``logdir`` (made if need be), beside whatever the
    training wrote there; an earlier export of the same run is replaced. Returns the file."""
    try:
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.summary.writer.event_file_writer import EventFileWriter
    except ImportError:
        raise UsageError("harness export --tensorboard needs the tensorboard package, which is not "
                         "installed: pip install 'harness[frameworks]' (or pip install tensorboard)") from None
    logdir = Path(logdir)
    if logdir.exists() and not logdir.is_dir():
        raise UsageError(f"{logdir}: a file, not a folder: the event file cannot go there")
    try:
        logdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{logdir}: cannot create the log folder: {exc.strerror}") from None
    suffix = f"{SUFFIX}-{_clean(run_name)}"
    for old in logdir.glob(f"events.out.tfevents.*{suffix}"):
        if old.is_file() and not old.is_symlink():
            old.unlink()  # ours, from an earlier export of this run: its points would show twice
    writer = EventFileWriter(str(logdir), filename_suffix=suffix)
    for p in points:
        summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=p.tag, simple_value=p.value)])
        writer.add_event(event_pb2.Event(wall_time=p.wall_time, step=p.step, summary=summary))
    writer.close()
    return next(logdir.glob(f"events.out.tfevents.*{suffix}"))


@dataclass(frozen=True)
class Exported:
    logdir: Path
    file: Path
    scalars: int
    tags: int


def export(run_dir: Path, logdir: Path) -> Exported:
    """``harness export RUN_DIR --tensorboard LOGDIR``."""
    from harness.analysis import load_run

    run = load_run(Path(run_dir))
    points = scalars(run)
    if not points:
        raise UsageError(f"{run_dir}: no samples recorded: nothing to export")
    path = write(points, logdir, Path(run_dir).resolve().name)
    return Exported(Path(logdir), path, len(points), len({p.tag for p in points}))
