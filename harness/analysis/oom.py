"""The OOM post-mortem, from a finished run's files: who the kernel killed, where, under which
limit, what the stage held in its last seconds, how fast it grew, and the lines that grew most.

The harness recorded the kill itself (``stages[].oom`` in the manifest, status ``oom_killed``:
:class:`harness.records.manifest.OomPostMortem`); this module adds what the stage's samples and
its last memray capture say about the seconds before it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from harness.analysis.captures import CaptureData
from harness.analysis.load import Run, Stage
from harness.analysis.summary_model import GrownLine
from harness.layout import COMPOSITION_FILE
from harness.records.composition import PART_KEYS, Moment
from harness.records.events import CudaOom
from harness.records.manifest import OomPostMortem
from harness.sizes import MiB, format_size

# "The last seconds": the window growth rates are read over, before the victim's last sample.
WINDOW_S = 5.0
TOP_LINES = 5


@dataclass(frozen=True)
class PostMortem:
    stage: str
    record: OomPostMortem
    window_s: float  # the seconds the figures below cover (fewer when the stage ran less)
    tree_rss: int | None  # the stage's processes at the victim's last sample
    processes: int | None
    victim_rss: int | None
    victim_anon: int | None  # the victim's RSS by kind (/proc/<pid>/status)
    victim_file: int | None
    victim_shmem: int | None
    mib_per_s: float | None  # the victim's RSS growth over the window
    mib_per_step: float | None  # the same per training step (None: fewer than two steps in it)
    tree_mib_per_s: float | None
    capture: str | None  # the last capture of the victim's process
    lines_measure: str | None  # "still allocated at its end" or "held at its peak"
    lines: list[GrownLine] = field(default_factory=list)  # the workload lines holding the most
    # the victim's accounted composition at the last moment the probe took before its death
    # (composition.jsonl): when, how long before, and its parts (bytes, the non-zero ones)
    composition_when: str | None = None
    composition_before_s: float | None = None
    composition: dict[str, int] = field(default_factory=dict)

    def headline(self) -> str:
        """One line: ``OOM-KILLED: worker 0 (pid 812) at epoch 1, step 35, phase data; limit 600 MiB
        (limits.memory); it held 410 MiB, growing 95 MiB/s (8.0 MiB/step)``."""
        r = self.record
        pid = f" (pid {r.victim.pid})" if r.victim.pid is not None else ""
        where = ", ".join(b for b in (
            f"epoch {r.epoch}" if r.epoch else "", f"step {r.step}" if r.step is not None else "",
            f"phase {r.phase}" if r.phase else "") if b)
        text = f"OOM-KILLED: stage {self.stage!r}: the kernel killed {r.victim.role}{pid}"
        if where:
            text += f" at {where}"
        if r.limit is not None:
            text += f"; limit {_mib(r.limit.bytes)} ({r.limit.source})"
        if self.victim_rss is not None:
            text += f"; it held {_mib(self.victim_rss)}"
            if self.tree_rss is not None and self.processes and self.processes > 1:
                text += f" of the tree's {_mib(self.tree_rss)}"
        if self.mib_per_s is not None:
            text += f", growing {self.mib_per_s:,.1f} MiB/s"
            if self.mib_per_step is not None:
                text += f" ({self.mib_per_step:,.2f} MiB/step)"
        return text

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["record"] = self.record.model_dump(mode="json")
        out["lines"] = [line.model_dump(mode="json") for line in self.lines]
        return out


def _mib(n: int) -> str:
    return format_size(n, unit="MiB", digits=0)


def _slope(x: pd.Series, y: pd.Series) -> float | None:
    """Least-squares slope of y on x; None with fewer than two distinct x."""
    ok = x.notna() & y.notna()
    x, y = x[ok].astype(float), y[ok].astype(float)
    if x.nunique() < 2:
        return None
    return float(np.polyfit(x.to_numpy(), y.to_numpy(), 1)[0])


def _current_loop(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows of the loop the last row is in (since the step count last went down: a new epoch
    or loop), once that loop had taken a step.

    Rows at step 0 are the stage's start or the loop's (imports, the model, the DataLoader's
    workers): memory grown there is no step's, and a stage killed a few seconds into its loop
    had most of its last seconds there, which read the rate per step too high (tests/test_oom.py's
    16 MiB a step read 20-26: killed 1.9 s after its first step, 74 of one run's 121 rows were at
    step 0, RSS rising 30 MiB/s through them; 16.2 without them).
    """
    steps = rows["step"]
    resets = np.flatnonzero((steps.diff() < 0).to_numpy())
    loop = rows.iloc[resets[-1]:] if len(resets) else rows
    return loop[loop["step"] > 0]


def _victim_rows(stage: Stage, pm: OomPostMortem) -> pd.DataFrame:
    s = stage.samples
    if s.empty or pm.victim.pid is None:
        return s.iloc[0:0]
    rows = s[s["pid"] == pm.victim.pid]
    return rows.sort_values("t", kind="stable")


def _grown_lines(captures: list[CaptureData], stage: str, pm: OomPostMortem,
                 rank: int | None) -> tuple[str | None, str | None, list[GrownLine]]:
    """The last capture of the victim's process and its workload lines holding the most."""
    role = "worker" if "worker" in pm.victim.role else "main"
    mine = [c for c in captures if c.capture.stage == stage and c.capture.role == role
            and c.capture.rank == rank and not c.sites.empty
            and (role == "main" or c.pid is None or c.pid == pm.victim.pid)]
    if not mine:
        return None, None, []
    last = max(mine, key=lambda c: (c.window.t_start or 0.0, c.capture.name))
    sites = last.sites
    if last.leaks_read and sites["leaked_bytes"].fillna(0).sum() > 0:
        column, count, measure = "leaked_bytes", "leaked_allocations", "still allocated at its end"
    else:
        column, count, measure = "bytes_at_peak", "allocations_at_peak", "held at its peak"
    by_line = sites.groupby("workload_line", sort=False)[[column, count]].sum()
    by_line = by_line.sort_values(column, ascending=False, kind="stable").head(TOP_LINES)
    lines = [GrownLine(line=str(line), bytes=int(row[column]), allocations=int(row[count]))
             for line, row in by_line.iterrows() if row[column] > 0]
    return last.capture.name, measure, lines


def _last_composition(stage: Stage, pm: OomPostMortem,
                      end: float | None) -> tuple[str | None, float | None, dict[str, int]]:
    """The victim's parts at the last composition moment before ``end`` (none: no file, or no
    moment that read the victim)."""
    path = stage.dir / COMPOSITION_FILE
    if end is None or pm.victim.pid is None or not path.is_file():
        return None, None, {}
    best: tuple[Moment, Any] | None = None
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            moment = Moment.model_validate_json(line)
        except ValueError:
            continue  # a line cut short by the kill
        if moment.t > end:
            continue
        proc = next((p for p in moment.processes if p.pid == pm.victim.pid), None)
        if proc is not None and (best is None or moment.t >= best[0].t):
            best = (moment, proc)
    if best is None:
        return None, None, {}
    moment, proc = best
    parts = {k: getattr(proc.parts, k) for k in PART_KEYS if getattr(proc.parts, k)}
    return moment.when, round(end - moment.t, 2), parts


def post_mortems(run: Run, captures: list[CaptureData] | None = None) -> list[PostMortem]:
    """One post-mortem per stage the OOM killer ended (the run stops at the first: at most one)."""
    out = []
    for stage in run.stages:
        pm = stage.outcome.oom if stage.outcome is not None else None
        if pm is None:
            continue
        # A distributed stage's victim: its rank's own records hold its samples and captures.
        where = stage
        if pm.victim.rank is not None:
            where = next((r for r in stage.ranks if r.rank == pm.victim.rank), stage)
        rows = _victim_rows(where, pm)
        if rows.empty:
            rows = _victim_rows(stage, pm)
        end = pm.t if pm.t is not None else (float(rows["t"].max()) if not rows.empty else None)
        tree_rss = processes = None
        mib_per_s = mib_per_step = tree_per_s = None
        window = 0.0
        last: Any = None
        if end is not None and not stage.samples.empty:
            s = stage.samples
            recent = s[(s["t"] > end - WINDOW_S) & (s["t"] <= end)]
            if not recent.empty:
                window = round(float(recent["t"].max() - recent["t"].min()), 2)
                tree = recent.groupby("t")["rss"].sum()
                at_end = recent[recent["t"] == recent["t"].max()]
                tree_rss, processes = int(tree.iloc[-1]), len(at_end)
                slope = _slope(pd.Series(tree.index), pd.Series(tree.to_numpy()))
                tree_per_s = round(slope / MiB, 2) if slope is not None else None
            mine = rows[(rows["t"] > end - WINDOW_S) & (rows["t"] <= end)]
            if not mine.empty:
                last = mine.iloc[-1]
                slope = _slope(mine["t"], mine["rss"])
                mib_per_s = round(slope / MiB, 2) if slope is not None else None
                # per step: the stage's step counter over the same rows (a worker's rows carry
                # its main process's step), in the loop it died in, once it had taken a step
                looped = _current_loop(mine)
                per_step = _slope(looped["step"], looped["rss"])
                mib_per_step = round(per_step / MiB, 3) if per_step is not None else None
        name, measure, lines = _grown_lines(captures or [], stage.name, pm, pm.victim.rank)
        when, before, parts = _last_composition(where, pm, end)

        def part(column: str, row: Any = last) -> int | None:
            if row is None or column not in row or pd.isna(row[column]):
                return None
            return int(row[column])

        out.append(PostMortem(
            stage=stage.name, record=pm, window_s=window, tree_rss=tree_rss, processes=processes,
            victim_rss=pm.victim_rss if pm.victim_rss is not None else part("rss"),
            victim_anon=part("rss_anon"), victim_file=part("rss_file"), victim_shmem=part("rss_shmem"),
            mib_per_s=mib_per_s, mib_per_step=mib_per_step, tree_mib_per_s=tree_per_s,
            capture=name, lines_measure=measure, lines=lines,
            composition_when=when, composition_before_s=before, composition=parts,
        ))
    return out


def cuda_ooms(run: Run) -> list[dict[str, Any]]:
    """Each failed CUDA allocation a stage (or rank) recorded (``cuda_oom`` events): where, what
    was asked for, and the allocator's state then; summary.json's ``cuda_oom``."""
    fields = ("t", "epoch", "step", "phase", "device", "requested", "allocated", "reserved",
              "largest_free_block", "segments", "device_free", "device_total", "file")
    out = []
    for stage in run.recording_stages():
        for ev in stage.events_of(CudaOom):
            row = ev.model_dump(mode="json")
            out.append({"stage": stage.name, **({"rank": stage.rank} if stage.rank is not None else {}),
                        **{k: row.get(k) for k in fields}})
    return out
