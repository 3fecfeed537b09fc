"""Training windows the scenario asked memray for that never opened, each said in one line.

A window is asked for when ``memray.mode`` is ``windows`` and ``memray.train_steps`` is above 0,
in the epochs the probe picked (each training loop's ``loop_end`` event says why, in
``memray_reason``; a run written before that field asked in every epoch, or in those in
``memray.epochs``). The probe fits it to a loop of known length
(``harness.probe.steps.fit_window``), so one missing here means the loop ran no step of it: the
loader had no length and the loop ended before ``memray.train_start``, the workload left the loop
early, the epoch never ran, or the workload has no ``probe.iterate`` training loop at all.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.analysis.load import Run, Stage
from harness.layout import STAGE_LOG_FILE, TRAIN_WINDOW, capture_name
from harness.records.events import EpochStart, LoopEnd, MemrayStart, MemrayStop, TracedStep
from harness.records.scenario import Scenario
from harness.records.vocab import Status
from harness.records.windows import fit_window


@dataclass(frozen=True)
class _Asked:
    """The manifest's ``memray`` settings that decide the training windows."""

    start: int
    steps: int
    epochs: tuple[int, ...] | None  # None: every epoch, or those the probe picked

    def wants(self, epoch: int, loops: list[LoopEnd]) -> bool:
        """Whether a window was asked for in ``epoch``, whose training loops ended with ``loops``."""
        picked = [e.memray_reason for e in loops if "memray_reason" in e.model_fields_set]
        if picked:  # the probe said which epochs it picked
            return any(picked)
        return self.epochs is None or epoch in self.epochs

    @property
    def keys(self) -> str:
        return f"memray.train_start {self.start}, train_steps {self.steps}"


def _asked(scenario: Scenario | None) -> _Asked | None:
    """The training windows the resolved scenario asks for; None when it asks for none (or the
    run's scenario could not be read)."""
    if scenario is None:
        return None
    memray = scenario.memray
    if memray.mode != "windows" or memray.train_steps <= 0:
        return None
    # none given or "every": judged as every epoch, which only adds notes
    epochs = memray.epochs if isinstance(memray.epochs, tuple) else None
    return _Asked(memray.train_start, memray.train_steps, epochs)


def _int(v: Any, default: int) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) else default


def _why(loops: list[LoopEnd], asked: _Asked) -> str:
    """Why the window did not open in an epoch whose training loops are ``loops``."""
    ran = [e.steps for e in loops]
    totals = [e.total for e in loops]
    if not any(ran):
        return "its training loop ran no step"
    steps = max(ran)
    loop = f"its training loop ran {steps} step{'s' if steps != 1 else ''}"
    if all(t < 0 for t in totals):
        return (f"{loop}, its length not known in advance (no loader, or a loader without len()), "
                f"so its window was planned as configured ({asked.keys}); later epochs' windows fit "
                "the steps it ran")
    for done, total in zip(ran, totals):
        window = fit_window(asked.start, asked.steps, total) if total >= 0 else None
        if window is not None and done <= window[0]:
            return (f"{loop} of {total}: the workload left the loop before the window's first "
                    f"step ({window[0]}); the next loop's window fits the steps it ran")
    return f"{loop}, yet no training capture was opened (another memray capture was running?)"


def unopened_windows(run: Run) -> list[str]:
    """One line for each stage and epoch where a training window asked for did not open."""
    if run.manifest.kind != "run":
        return []  # a bare run records nothing: no window was to open
    asked = _asked(run.scenario)
    if asked is None:
        return []
    notes: list[str] = []
    any_loop = any_capture = False
    for stage in run.stages:
        notes += _stage_notes(stage, asked)
        any_loop = any_loop or bool(stage.events_of(LoopEnd))
        any_capture = any_capture or bool(stage.events_of(MemrayStart))
    if not notes and not any_loop and not any_capture and any(s.events for s in run.stages):
        notes.append(
            "memray: no capture at all: the workload runs no training loop through probe.iterate, "
            f"where the training windows open ({asked.keys}); memray.mode: full captures each "
            "stage whole")
    return notes


def cut_short(run: Run) -> dict[str, str]:
    """Captures still open when their stage stopped (failed, killed, interrupted): capture name ->
    how the stage ended. They hold the allocations up to the stop only."""
    out: dict[str, str] = {}
    for stage in run.stages:
        status = stage.outcome.status if stage.outcome is not None else None
        if status in (None, Status.OK):
            continue
        stopped = {ev.capture for ev in stage.events_of(MemrayStop)}
        for ev in stage.events_of(MemrayStart):
            name = ev.capture
            if isinstance(name, str) and name not in stopped:
                out[name] = str(status)
    return out


def cut_short_notes(run: Run) -> list[str]:
    """One line for each capture :func:`cut_short` finds."""
    return [f"memray: capture {name} was still open when its stage was {status}: it holds the "
            "allocations until then only, so its heap is a lower bound"
            for name, status in cut_short(run).items()]


def tracking_stopped(run: Run) -> list[str]:
    """One line for each stage whose memray tracker deactivated itself (it could not write its
    capture: a full disk) while the stage ran on: the capture ends early, so the record is not
    whole. When it stopped comes from the harness, which saw memray say so
    (``disk_full.memray_stopped`` in the stage's manifest entry); an older run's log still shows
    memray's line, without the time."""
    out: list[str] = []
    for stage in run.stages:
        record = stage.outcome.disk_full if stage.outcome is not None else None
        said = _log_says_deactivated(stage.dir / STAGE_LOG_FILE)
        stopped = record.memray_stopped if record is not None else None
        if not stopped and not said:
            continue
        path = record.path if record is not None else None
        what = f"memray stopped tracking stage {stage.name}"
        when = _when(stopped, stage.outcome.started if stage.outcome is not None else None)
        where = _rel(path, run.dir) if isinstance(path, str) and path else "its capture"
        out.append(f"{what}{when}: it could not write {where} (disk full), which holds the "
                   "allocations until then only")
    return out


def _log_says_deactivated(log: Path) -> bool:
    """Whether memray's "deactivating tracking" is anywhere in the log, read in bounded chunks."""
    needle = b"deactivating tracking"  # memray's words when its writer fails
    tail = b""
    try:
        with open(log, "rb") as f:
            while chunk := f.read(1 << 20):
                if needle in tail + chunk:
                    return True
                tail = chunk[-len(needle):]
    except OSError:
        return False
    return False


def _when(stopped: Any, started: Any) -> str:
    """`` at 23:47:15 UTC, 2.3 s into the stage`` from two ISO times; ``""`` where unknown."""
    if not isinstance(stopped, str):
        return " partway (this run did not record when)"
    try:
        t = dt.datetime.fromisoformat(stopped)
    except ValueError:
        return ""
    text = f" at {t:%H:%M:%S} UTC"
    try:
        into = (t - dt.datetime.fromisoformat(str(started))).total_seconds()
    except ValueError:
        return text
    return text + f", {into:.1f} s into the stage"


def _rel(path: str, run_dir: Path) -> str:
    try:
        return str(Path(path).relative_to(run_dir))
    except ValueError:
        return path


def _stage_notes(stage: Stage, asked: _Asked) -> list[str]:
    loops: dict[int, list[LoopEnd]] = {}
    for ev in stage.events_of(LoopEnd):
        loops.setdefault(ev.epoch, []).append(ev)
    opened = {ev.epoch for ev in stage.events_of(MemrayStart)
              if not ev.section and ev.capture == capture_name(stage.name, ev.epoch, TRAIN_WINDOW)}
    out = [f"memray: stage {stage.name}, {f'epoch {epoch}' if epoch else 'outside an epoch'}: "
           f"no training capture: {_why(evs, asked)}"
           for epoch, evs in sorted(loops.items()) if asked.wants(epoch, evs) and epoch not in opened]
    epochs_run = {ev.epoch for ev in stage.events_of(EpochStart)}
    status = stage.outcome.status if stage.outcome is not None else None
    finished = status == Status.OK
    if epochs_run and not loops:
        # A stage stopped inside its loop never wrote the loop's end: a traced step, an opened
        # window or the step it stopped at says that it ran one all the same.
        last = stage.outcome.last if stage.outcome is not None else None
        in_loop = bool(opened or stage.events_of(TracedStep)) or (last is not None and last.step > 0)
        if finished or not in_loop:
            out.append(f"memray: stage {stage.name} ran epochs but no training loop through "
                       "probe.iterate, where the training windows open: no training capture"
                       + ("" if finished else f" before it was {status}"))
        elif not opened:
            at = f"epoch {last.epoch if last else 0}, step {last.step if last else 0}"
            out.append(f"memray: stage {stage.name}: no training capture: the stage was {status} "
                       f"in its training loop ({at}) before the window opened ({asked.keys})")
    if loops and finished and asked.epochs is not None:
        # an epoch the stage never reached because it failed first is said by its failure
        missing = [e for e in asked.epochs if e not in loops]
        if missing:
            ran = sorted(loops)
            out.append(
                f"memray: stage {stage.name}: memray.epochs names epoch{'s' if len(missing) > 1 else ''} "
                f"{', '.join(map(str, missing))}, which the stage did not run (its training loops ran "
                f"in epoch{'s' if len(ran) > 1 else ''} {', '.join(map(str, ran))}): no training "
                "capture there")
    return out
