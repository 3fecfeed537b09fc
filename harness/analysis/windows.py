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

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from harness.analysis.load import Run, Stage
from harness.layout import TRAIN_WINDOW, capture_name
from harness.records.events import EpochStart, LoopEnd, MemrayStart
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


def _asked(scenario: Any) -> _Asked | None:
    """The training windows the resolved scenario asks for; None when it asks for none."""
    memray = scenario.get("memray") if isinstance(scenario, Mapping) else None
    if not isinstance(memray, Mapping):
        return None
    steps = _int(memray.get("train_steps"), 300)
    if memray.get("mode", "windows") != "windows" or steps <= 0:
        return None
    epochs = memray.get("epochs")
    if not isinstance(epochs, list | tuple) or not all(isinstance(e, int) for e in epochs):
        epochs = None  # none given, "every" or unreadable: judged as every epoch, which only adds notes
    return _Asked(_int(memray.get("train_start"), 100), steps, None if epochs is None else tuple(epochs))


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
        return (f"{loop} from a loader without len(), so its window was planned before its length "
                f"was known ({asked.keys}); later epochs' windows fit the steps it ran")
    for done, total in zip(ran, totals):
        window = fit_window(asked.start, asked.steps, total) if total >= 0 else None
        if window is not None and done <= window[0]:
            return (f"{loop} of {total}: the workload left the loop before the window's first "
                    f"step ({window[0]})")
    return f"{loop}, yet no training capture was opened (another memray capture was running?)"


def unopened_windows(run: Run) -> list[str]:
    """One line for each stage and epoch where a training window asked for did not open."""
    if run.manifest.get("kind", "run") != "run":
        return []  # a bare run records nothing: no window was to open
    asked = _asked(run.manifest.get("scenario"))
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
    if epochs_run and not loops:
        out.append(f"memray: stage {stage.name} ran epochs but no training loop through "
                   "probe.iterate, where the training windows open: no training capture")
    finished = (stage.outcome or {}).get("status") == "ok"
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
