"""Planning a report's capture reads: one job per capture and process group, flamegraphs within
the run directory's size budget, jobs split into bins of about equal work for the pool."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from harness.analysis.captures import Window, windows
from harness.analysis.load import Capture, Run
from harness.layout import FLAMEGRAPHS_DIR, parse_capture_name
from harness.render import flamegraphs

FLAMEGRAPH_ESTIMATE = 2 * 1000 * 1000  # one flamegraph's HTML (its scripts are shared)
IMAGE_COST_BYTES = 6 * 1000 * 1000  # memray's first read of a process image costs about this


@dataclass(frozen=True)
class CaptureJob:
    """Read the files of one capture and one process group; draw their flamegraphs."""

    stage: str
    name: str
    group: str  # main | workers
    files: tuple[Capture, ...]
    window: Window | None
    peak_out: Path | None
    temporal_out: Path | None
    native: bool = False  # the memray CLI's flamegraph (native frames, slow) instead


def plan_jobs(
    run: Run, out_dir: Path, budget: int, native: bool = False, draw: bool = True,
) -> tuple[list[CaptureJob], list[flamegraphs.Flamegraph]]:
    """One job per (capture, process group); flamegraphs while the size budget lasts.

    Priority: training windows' main process, then their workers, then validation and test;
    one temporal flamegraph, for the largest training capture small enough to allow it.
    ``draw=False``: the captures are read (sites, heap peaks) but no flamegraph is drawn.
    """
    groups: list[tuple[int, str, str, str, tuple[Capture, ...], Window | None]] = []
    for st in run.recording_stages():  # a distributed stage's captures are its ranks'
        wins = windows(st)
        by_name: dict[str, list[Capture]] = {}
        for c in st.captures:
            by_name.setdefault(c.name, []).append(c)
        for name, caps in by_name.items():
            win = wins.get(name)
            section = win.section if win else parse_capture_name(st.name, name).section
            label = name if st.rank is None else f"{name}-rank{st.rank}"  # ranks' windows share names
            for group in ("main", "workers"):
                files = tuple(c for c in caps if (c.pid is None) == (group == "main"))
                if files:
                    rank = (0 if section is None else 2) + (0 if group == "main" else 1)
                    groups.append((rank, st.name, label, group, files, win))
    declined: list[flamegraphs.Flamegraph] = []
    chosen: set[tuple[str, str, str]] = set()
    left = budget
    for _rank, stage, name, group, _files, _win in sorted(groups, key=lambda g: g[0]):
        if not draw:
            declined.append(flamegraphs.Flamegraph(
                name, group, False, None, 0, "not drawn: the report was built without flamegraphs"))
        elif left >= FLAMEGRAPH_ESTIMATE:
            chosen.add((stage, name, group))
            left -= FLAMEGRAPH_ESTIMATE
        else:
            declined.append(flamegraphs.Flamegraph(
                name, group, False, None, 0, "declined: the run directory's size budget is spent"))
    temporal: tuple[str, str] | None = None
    train_main = [g for g in groups if g[0] == 0 and g[4][0].size <= flamegraphs.TEMPORAL_MAX_CAPTURE_BYTES]
    if draw and train_main and left >= 3 * max(g[4][0].size for g in train_main):
        best = max(train_main, key=lambda g: g[4][0].size)
        temporal = (best[1], best[2])
    jobs = []
    fg_dir = out_dir / FLAMEGRAPHS_DIR
    for _, stage, name, group, files, win in groups:
        peak_out = fg_dir / f"{name}-{group}.html" if (stage, name, group) in chosen else None
        temporal_out = (fg_dir / f"{name}-{group}-temporal.html"
                        if group == "main" and temporal == (stage, name) else None)
        jobs.append(CaptureJob(stage, name, group, files, win, peak_out,
                               None if native else temporal_out, native))
    jobs.sort(key=lambda j: -sum(c.size for c in j.files))  # biggest first: the pool ends together
    return jobs, declined


def partition(jobs: list[CaptureJob], bins: int) -> list[list[CaptureJob]]:
    """Split jobs into ``bins`` of about equal work, keeping each stage's captures together.

    memray spends seconds on the first capture of each process image (a stage's main process
    and its forked workers share one) that a process reads, so a bin that reads a second
    stage pays that again: it counts as IMAGE_COST_BYTES of reading.
    """
    loads = [0] * bins
    images: list[set[str]] = [set() for _ in range(bins)]
    out: list[list[CaptureJob]] = [[] for _ in range(bins)]
    for job in sorted(jobs, key=lambda j: -sum(c.size for c in j.files)):
        size = sum(c.size for c in job.files)

        def cost(b: int, size: int = size, job: CaptureJob = job) -> int:
            return loads[b] + size + (0 if job.stage in images[b] else IMAGE_COST_BYTES)

        b = min(range(bins), key=cost)
        loads[b] = cost(b)
        images[b].add(job.stage)
        out[b].append(job)
    return [b for b in out if b]
