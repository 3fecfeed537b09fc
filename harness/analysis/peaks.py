"""Sampled peaks, split at each stage's ``stage_end`` event: while the workload ran, and after.

The probe writes ``stage_end`` once the workload has returned and the harness's own end-of-stage
work (the ``end`` snapshot, the last memray window) is done. What the sampler sees after it is
the process shutting down: interpreter finalization and the C++ static destructors of the
libraries it loaded. On a CUDA build of PyTorch those destructors fault in file-backed pages of
its CUDA libraries (cuBLASLt, cuSPARSELt, libtorch_cuda: ~110 MiB on the smoke scenario, even on
the CPU), which no one allocated and which the page cache shares. So the headline peak is the
running one, and the shutdown's is reported beside it as the ``teardown`` peak.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from harness.analysis.load import Run
from harness.records.events import StageEnd

# A teardown rise at least this share file-backed pages is called libraries' pages, not the
# workload's own allocations.
FILE_BACKED_SHARE = 0.5


def stage_ends(run: Run | None) -> dict[str, float]:
    """Each stage's ``stage_end`` time (its first, should there be more); stages without none."""
    out: dict[str, float] = {}
    if run is None:
        return out
    for st in run.stages:
        ends = [e.t for e in st.events_of(StageEnd)]
        if ends:
            out[st.name] = min(ends)
    return out


def after_stage_end(run: Run | None, tk: pd.DataFrame) -> pd.Series:
    """Ticks after their stage's ``stage_end``: the process shutting down, the workload done.

    A stage without the event (it crashed, or was killed) has every tick counted as running.
    """
    after = pd.Series(False, index=tk.index)
    for stage, end in stage_ends(run).items():
        after |= (tk["stage"] == stage) & (tk["t"] > end)
    return after


def tick_peak(tk: pd.DataFrame, column: str) -> dict[str, Any] | None:
    """The tick with the largest ``column``: bytes, stage, epoch, step, phase, t (None if none)."""
    s = tk.dropna(subset=[column]) if column in tk.columns else tk.iloc[0:0]
    if s.empty:
        return None
    row = s.loc[s[column].idxmax()]
    return {"bytes": int(row[column]), "stage": str(row["stage"]), "epoch": int(row["epoch"]),
            "step": int(row["step"]), "phase": str(row["phase"]), "t": float(row["t"])}


def running_peak(run: Run | None, tk: pd.DataFrame, column: str) -> dict[str, Any] | None:
    """The largest ``column`` from a stage's start to its ``stage_end``: the headline peak."""
    if tk.empty:
        return None
    return tick_peak(running_ticks(run, tk), column)


def running_ticks(run: Run | None, tk: pd.DataFrame) -> pd.DataFrame:
    """The ticks while the workload ran: before its stage's ``stage_end`` and not in phase
    ``teardown`` (set when the workload has returned: the harness's end-of-stage snapshot and
    last memray window follow, which belong with what came after)."""
    return tk[~after_stage_end(run, tk) & (tk["phase"] != "teardown")]


def teardown_peak(run: Run | None, tk: pd.DataFrame, column: str) -> dict[str, Any] | None:
    """The largest ``column`` after a stage's ``stage_end``, and how it came about.

    ``after_end_s``: seconds after ``stage_end``; ``rise``: bytes above the stage's last tick at
    or before ``stage_end``; for the main process (``column`` ``main_rss``) ``file_backed_rise``,
    the part of that rise in file-backed pages (statm's shared: libraries' code and data, mapped
    files), else None. None when no tick came after any ``stage_end``.
    """
    if tk.empty:
        return None
    after = after_stage_end(run, tk)
    best = tick_peak(tk[after], column)
    if best is None:
        return None
    end = stage_ends(run)[best["stage"]]
    before = tk[(tk["stage"] == best["stage"]) & ~after].dropna(subset=[column])
    last = before.loc[before["t"].idxmax()] if not before.empty else None
    peak_row = tk[(tk["stage"] == best["stage"]) & (tk["t"] == best["t"])].iloc[0]
    rise = None if last is None else best["bytes"] - int(last[column])
    file_backed = None
    if column == "main_rss" and last is not None and pd.notna(peak_row["main_shared"]) \
            and pd.notna(last["main_shared"]):
        file_backed = int(peak_row["main_shared"]) - int(last["main_shared"])
    return {"bytes": best["bytes"], "stage": best["stage"], "t": best["t"],
            "after_end_s": round(best["t"] - end, 3), "rise": rise, "file_backed_rise": file_backed}


# Whose memory a rise after stage_end is, by what it is made of.
WHOSE = {
    "file-backed": ("shared libraries' code and data, touched by their destructors as the "
                    "interpreter exits (on a CUDA build of PyTorch, its CUDA libraries, even on the "
                    "CPU): pages of files, shared with the page cache, not memory the workload or "
                    "the harness allocated"),
    "anonymous": ("anonymous memory allocated while shutting down: the workload's own exit code "
                  "(atexit handlers, finalizers, threads still running), after the harness had "
                  "finished"),
}


def rise_kind(teardown: dict[str, Any]) -> str | None:
    """``file-backed`` or ``anonymous``: what most of a teardown rise is made of (a key of
    :data:`WHOSE`); None when nothing rose or the pages were not read (the tree)."""
    rise, file_backed = teardown.get("rise"), teardown.get("file_backed_rise")
    if rise is None or rise <= 0 or file_backed is None:
        return None
    return "file-backed" if file_backed >= FILE_BACKED_SHARE * rise else "anonymous"
