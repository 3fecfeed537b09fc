"""The run directory's vocabulary, in one place: file and folder names, event kinds, capture names.

Written by the harness process (:mod:`harness.control`) and the training process
(:mod:`harness.probe`), read by :mod:`harness.analysis`, :mod:`harness.report` and
:mod:`harness.gate`; docs/run-directory.md describes each file. Nothing here imports torch,
pandas or any other part of the harness, so every process can import it cheaply.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

# `harness run` sets this in a stage's environment: the stage's directory (below). The probe goes
# live when it is set and stays a no-op otherwise.
STAGE_DIR_ENV = "HARNESS_STAGE_DIR"
# Set by torchrun's agent in each rank's environment: the pid each rank watches.
AGENT_PID_ENV = "HARNESS_AGENT_PID"

# The run directory: reports/<name>/<UTC time>-<id>/
MANIFEST_FILE = "manifest.json"  # provenance, each stage's outcome
SCENARIO_FILE = "scenario.yaml"  # the resolved scenario
REPORT_DIR = "report"  # written by `harness report`
SUMMARY_FILE = "summary.json"  # in REPORT_DIR
TABLES_DIR = "tables"  # in REPORT_DIR: one CSV a table
FLAMEGRAPHS_DIR = "flamegraphs"  # in REPORT_DIR

# A stage's directory: <run dir>/stages/<stage>/
STAGES_DIR = "stages"
STAGE_LOG_FILE = "log.txt"  # the workload's stdout and stderr
SAMPLES_DIR = "samples"  # the sampler's rows (harness.records.samples), in parts (below)
SAMPLES_FILE = "samples.csv"  # the same rows in one CSV: run directories from before SAMPLES_DIR
EVENTS_FILE = "events.jsonl"  # the probe's events, one JSON object a line
PROBE_CONFIG_FILE = "probe.json"  # the probe's settings, written by the runner
CELL_FILE = "probe.cell"  # the shared-memory cell: phase, epoch, step (harness.probe.cell)
MEMRAY_DIR = "memray"  # memray captures: <capture>.bin, workers' <capture>.bin.<pid> (below)
SNAPSHOTS_DIR = "snapshots"  # epoch snapshots: <label>.json
COMPOSITION_FILE = "composition.jsonl"  # what each process's RSS is made of (harness.records.composition)
CUDA_HISTORY_DIR = "cuda"  # CUDA allocator history windows: <stage>-e<N>-steps<a>-<b>.pickle
CHECKPOINT_FILE = "checkpoint.pt"  # written by the built-in train stage, read by its test stage

# SAMPLES_DIR holds numbered parts, each about a minute of rows: <N>.csv the part being written
# (flushed twice a second), <N>.parquet a finished one at the full rate, and <N>-<M>.parquet parts
# N..M decimated into one file (harness.control.samples says what is kept). Numbers have six digits.
_SAMPLES_PART = re.compile(r"^(\d{6})(?:-(\d{6}))?\.(csv|parquet)$")


def samples_part_name(first: int, ext: str, last: int | None = None) -> str:
    """The file name of samples part ``first`` (``ext`` csv or parquet), or of parts first..last."""
    return f"{first:06d}" + (f"-{last:06d}" if last is not None else "") + f".{ext}"


def parse_samples_part(filename: str) -> tuple[int, int, str] | None:
    """``(first part, last part, ext)`` of a file in SAMPLES_DIR, or ``None`` if not a part."""
    m = _SAMPLES_PART.match(filename)
    if m is None:
        return None
    first = int(m.group(1))
    return first, int(m.group(2)) if m.group(2) else first, m.group(3)


# The phases the harness itself sets, not the workload: before, between and after its own.
HARNESS_PHASES = frozenset({"setup", "teardown", "idle", "none"})


class Event(StrEnum):
    """The ``kind`` of each line of events.jsonl (every line also has ``t``, the wall clock); each
    kind's fields: :mod:`harness.records.events`."""

    STAGE_START = "stage_start"
    STAGE_END = "stage_end"
    STAGE_ERROR = "stage_error"
    EPOCH_START = "epoch_start"
    EPOCH_END = "epoch_end"
    LOOP_END = "loop_end"
    SECTION_START = "section_start"
    SECTION_END = "section_end"
    WATCH = "watch"
    METRIC = "metric"
    MEMRAY_START = "memray_start"
    MEMRAY_STOP = "memray_stop"
    WORKER_EPOCH_END = "worker_epoch_end"  # a DataLoader worker's own memory as its epoch ended
    TRACED_STEP = "traced_step"
    PHASE_TOTALS = "phase_totals"
    SNAPSHOT = "snapshot"
    CUDA_HISTORY = "cuda_history"
    TORCH_THREADS = "torch_threads"  # the intra-op and inter-op threads the stage ran with
    CUDA_OOM = "cuda_oom"  # a CUDA allocation failed: the allocator's state at that moment


# Capture names: <stage> (a whole-stage capture), <stage>-e<N>-train (a training window; N is 0
# for a loop outside any epoch), <stage>-e<N>-<section> or, outside epochs, <stage>-<section> (a
# validation or test pass). A DataLoader worker's file is <capture>.bin.<pid>: a worker memray
# followed from a main capture (follow_fork) writes under that capture's name; a worker that
# tracks a window of its own batches (harness.probe.workers) under its own,
# <stage>-e<N>-<window>-w<id>, id the DataLoader's worker id.
TRAIN_WINDOW = "train"
# The function the probe calls at the end of each step of an open training window
# (harness.probe.steps.memray_step_mark): its one allocation in the capture marks where the step
# ended, so the analysis can tell in which step each allocation still held at the end was made.
STEP_MARK_FUNCTION = "memray_step_mark"
STEP_MARK_FILE = "harness/probe/steps.py"  # the file it is defined in, as a stack frame ends
# The mark's size in bytes, as memray records it: above pymalloc's 512-byte limit, so a malloc,
# which memray records without tracing Python's own allocator; only records of this size are
# looked at to find the marks.
STEP_MARK_SIZE = 1021
SECTIONS = ("sanity_check", "validate", "test")
_EPOCH_PART = re.compile(r"^e(\d+)$")
_WORKER_PART = re.compile(r"^w(\d+)$")
_CAPTURE_FILE = re.compile(r"^(?P<name>.+)\.bin(?:\.(?P<pid>\d+))?$")


@dataclass(frozen=True)
class CaptureName:
    """What a capture's name says: its epoch (if any) and the section (``validate``/``test``) or
    ``train`` window it covers (``None``: the whole stage)."""

    epoch: int | None
    window: str | None
    worker: int | None = None  # the DataLoader worker id of a worker's own window

    @property
    def section(self) -> str | None:
        return self.window if self.window in SECTIONS else None


def capture_name(stage: str, epoch: int | None = None, window: str | None = None,
                 worker: int | None = None) -> str:
    """The name of a capture of ``stage``; see :class:`CaptureName`."""
    parts = [stage]
    if epoch or window == TRAIN_WINDOW:
        parts.append(f"e{epoch or 0}")
    if window:
        parts.append(window)
    if worker is not None:
        parts.append(f"w{worker}")
    return "-".join(parts)


def parse_capture_name(stage: str, name: str) -> CaptureName:
    """The inverse of :func:`capture_name` for a capture of ``stage``."""
    rest = name.removeprefix(stage).lstrip("-").split("-") if name.startswith(stage) else name.split("-")
    epoch = None
    window = None
    worker = None
    for part in [p for p in rest if p]:
        m = _EPOCH_PART.match(part)
        w = _WORKER_PART.match(part)
        if m and epoch is None and window is None:
            epoch = int(m.group(1))
        elif w and window is not None and worker is None:
            worker = int(w.group(1))
        else:
            window = part
    return CaptureName(epoch, window, worker)


def parse_capture_file(filename: str) -> tuple[str, int | None] | None:
    """``(capture name, worker pid or None)`` of a file in MEMRAY_DIR, or ``None`` if not a capture."""
    m = _CAPTURE_FILE.match(filename)
    if m is None:
        return None
    return m.group("name"), int(m.group("pid")) if m.group("pid") else None


def cuda_oom_name(stage: str, count: int) -> str:
    """The allocator snapshot taken at a stage's ``count``-th CUDA OOM (1 for the first)."""
    return f"{stage}-oom{count}.pickle"


def cuda_history_name(stage: str, epoch: int, start: int, stop: int) -> str:
    return f"{stage}-e{epoch}-steps{start}-{stop}.pickle"


def stage_dir(run_dir: Path, stage: str) -> Path:
    return run_dir / STAGES_DIR / stage


# Distributed stages (torchrun): stages/<stage>/rank<R>/ holds what a stage's directory holds for
# the one probed process (events, probe.json, probe.cell, memray/, snapshots/, cuda/), R the global
# rank; with several nodes each node's harness writes its log and samples under
# stages/<stage>/node<K>/ and node K > 0 its manifest as manifest-node<K>.json.
AGENT_FILE = "agent.json"  # beside the node's log: the torchrun agent's record (which rank failed)
_RANK_DIR = re.compile(r"^rank(\d+)$")
_NODE_DIR = re.compile(r"^node(\d+)$")
_NODE_MANIFEST = re.compile(r"^manifest-node(\d+)\.json$")


def rank_dir_name(rank: int) -> str:
    return f"rank{rank}"


def node_dir_name(node: int) -> str:
    return f"node{node}"


def node_manifest_name(node: int) -> str:
    return f"manifest-node{node}.json"


def parse_rank_dir(name: str) -> int | None:
    m = _RANK_DIR.match(name)
    return int(m.group(1)) if m else None


def parse_node_dir(name: str) -> int | None:
    m = _NODE_DIR.match(name)
    return int(m.group(1)) if m else None


def parse_node_manifest(name: str) -> int | None:
    m = _NODE_MANIFEST.match(name)
    return int(m.group(1)) if m else None
