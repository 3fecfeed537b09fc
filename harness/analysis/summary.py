"""summary.json: the run's headline numbers for machines, built as a :class:`Summary`.

The fields, their types, the schema id and version: :mod:`harness.analysis.summary_model`.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.analysis.captures import CaptureData
from harness.analysis.finding import Finding
from harness.analysis.headroom import headroom
from harness.analysis.load import Run
from harness.analysis.oom import PostMortem, cuda_ooms
from harness.analysis.peaks import running_peak, teardown_peak
from harness.analysis.ranks import RankView
from harness.analysis.snapshot_metrics import epoch_growth
from harness.analysis.summary_model import SCHEMA_ID, SCHEMA_VERSION, Summary
from harness.records.events import EpochEnd, EpochStart, Metric


def _plain(obj: Any) -> Any:
    """numpy scalars to Python, NaN to null, paths to strings: free-form figures made JSON-ready."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and (math.isnan(obj) or math.isinf(obj)):
        return None
    if isinstance(obj, Path):
        return str(obj)
    if obj is pd.NA or obj is pd.NaT:
        return None
    return obj


def _num(v: Any) -> float | int | None:
    """JSON-safe number: NaN and missing become null; whole floats stay floats."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    if pd.isna(v):
        return None
    if isinstance(v, (int, bool)):
        return int(v)
    return float(v)


def _int(v: Any) -> int | None:
    n = _num(v)
    return None if n is None else int(n)


def _peak_heap(captures: list[CaptureData], scope: str | None = None) -> dict[str, Any] | None:
    best: CaptureData | None = None
    for c in captures:
        if c.error or c.peak_memory is None:
            continue
        if best is None or c.peak_memory > (best.peak_memory or 0):
            best = c
    if best is None:
        return None
    return {"bytes": int(best.peak_memory or 0), "stage": best.capture.stage,
            "capture": best.capture.name, "process": best.capture.role, "pid": best.pid,
            "rank": best.capture.rank, "scope": scope}


def _peak_in_phases(phases: pd.DataFrame, column: str,
                    tiebreak: str | None = None) -> dict[str, Any] | None:
    """The phase row with the largest ``column``; among equals, the largest ``tiebreak``
    (reserved memory stays level over many phases: name the one where allocations peaked)."""
    s = phases.dropna(subset=[column]) if column in phases.columns else phases.iloc[0:0]
    if s.empty:
        return None
    keys = [column] + ([tiebreak] if tiebreak else [])
    s = s.assign(**{k: s[k].astype("float64").fillna(-1.0) for k in keys})
    row = s.sort_values(keys, ascending=False, kind="stable").iloc[0]
    return {"bytes": int(row[column]), "stage": str(row["stage"]),
            "epoch": int(row["epoch"]), "phase": str(row["phase"]), **_rank_of(row)}


def _rank_of(row: Any) -> dict[str, int | None]:
    """A table row's ``rank`` and ``node`` where it has them (distributed runs), else nothing."""
    have = row.index if isinstance(row, pd.Series) else row  # a Series or a plain dict
    return {k: _int(row[k]) for k in ("rank", "node") if k in have}


def _growth(run: Run) -> list[dict[str, Any]]:
    return [{"stage": g.stage, **dataclasses.asdict(b)} for g in epoch_growth(run) for b in g.boundaries]


def _epoch_durations(run: Run) -> list[dict[str, Any]]:
    out = []
    for st in run.stages:
        starts = {e.epoch: e.t for e in st.events_of(EpochStart)}
        for e in st.events_of(EpochEnd):
            t0 = starts.get(e.epoch)
            if t0 is not None:
                out.append({"stage": st.name, "epoch": e.epoch, "seconds": round(e.t - t0, 3)})
    return out


def _metrics(run: Run) -> dict[str, Any]:
    series = []
    final: dict[str, float] = {}
    for st in run.stages:
        for e in st.events_of(Metric):
            value = _num(e.value)
            if value is None:
                continue
            item = {"stage": st.name, "name": e.name, "value": value, "epoch": e.epoch, "step": e.step}
            series.append(item)
            final[e.name] = value
    return {"final": final, "series": series}


def _sampled_peaks(run: Run, tk: pd.DataFrame) -> dict[str, Any]:
    return {"footprint": running_peak(run, tk, "tree_footprint"),
            "main_rss": running_peak(run, tk, "main_rss"), "tree_rss": running_peak(run, tk, "tree_rss"),
            "workers_uss": running_peak(run, tk, "workers_uss"),
            "main_rss_teardown": teardown_peak(run, tk, "main_rss"),
            "tree_rss_teardown": teardown_peak(run, tk, "tree_rss")}


def _largest(peaks: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    found = [p for p in peaks if p is not None]
    return max(found, key=lambda p: p["bytes"]) if found else None


def _heap_scope(run: Run) -> str | None:
    """What memray's heap figure covers: ``full`` (the whole stage) or ``windows`` (only what the
    capture windows saw); None when the scenario is unknown."""
    if run.scenario is None:
        return None
    return "full" if run.scenario.memray.mode == "full" else "windows"


def _rank_sections(views: list[RankView], phases: pd.DataFrame,
                   captures: list[CaptureData]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The run-wide peaks (each the largest over the ranks) and every rank's own."""
    rows: list[dict[str, Any]] = []
    for v in views:
        where = {"rank": v.rank, "node": v.node}
        sampled = {k: None if p is None else {**p, **where}
                   for k, p in _sampled_peaks(v.run, v.ticks).items()}
        own = phases if v.rank is None else (
            phases[phases["rank"] == v.rank] if "rank" in phases.columns else phases.iloc[0:0])
        rows.append({"rank": v.rank, "node": v.node, "peaks": {
            **sampled,
            "heap": _peak_heap([c for c in captures if c.capture.rank == v.rank], _heap_scope(v.run)),
            "live_tensor_bytes": _peak_in_phases(own, "peak_live_tensor_bytes"),
            "cuda_allocated": _peak_in_phases(own, "cuda_peak_allocated"),
            "cuda_reserved": _peak_in_phases(own, "cuda_peak_reserved", "cuda_peak_allocated"),
        }})
    keys = list(rows[0]["peaks"]) if rows else []
    return {k: _largest([r["peaks"][k] for r in rows]) for k in keys}, rows


def build_summary(run: Run, tk: pd.DataFrame, phases: pd.DataFrame,
                  captures: list[CaptureData], findings: list[Finding],
                  cuda: dict[str, Any] | None = None,
                  views: list[RankView] | None = None,
                  device_total: int | None = None,
                  post_mortems: list[PostMortem] | None = None) -> Summary:
    """The summary (``.to_dict()`` is what summary.json holds). ``cuda``: the device section (CUDA
    runs only), as :func:`harness.analysis.device.summary_section` gives it. ``views``: the run's
    ranks (:func:`harness.analysis.ranks.views`; None: the run as one view of rank None, ``tk``
    its ticks). With ranks, ``phases`` has a rank column, the peaks are the largest over the ranks,
    each naming its rank, and ``ranks`` holds each rank's own; a view of rank None adds no rank
    key anywhere (Summary.to_dict leaves unknown ranks out). ``device_total``: the CUDA device's
    memory, for the headroom; ``post_mortems``: the run's OOM post-mortems
    (:func:`harness.analysis.oom.post_mortems`)."""
    m = run.manifest
    views = views or [RankView(None, None, run, tk)]
    peaks, rank_rows = _rank_sections(views, phases, captures)
    ranks = rank_rows if any(v.rank is not None for v in views) else None
    first = views[0].run  # the lowest rank: rank 0 logs the metrics and times the epochs
    growth = [{**g, "rank": v.rank, "node": v.node} for v in views for g in _growth(v.run)]
    order = ("footprint", "main_rss", "tree_rss", "workers_uss", "heap", "live_tensor_bytes", "cuda_allocated",
             "cuda_reserved", "main_rss_teardown", "tree_rss_teardown")
    peaks = {k: peaks[k] for k in order}
    stages: list[dict[str, Any]] = []
    for st in run.stages:
        o = st.outcome
        if o is None:  # the manifest never recorded the stage's end
            stages.append({"name": st.name, "status": "unknown", "exit_code": None, "signal": None,
                           "wall_s": None, "message": "", "peak_main_rss": None,
                           "peak_tree_rss": None, "worker_start_method": None})
            continue
        stages.append({"name": st.name, "status": str(o.status), "exit_code": o.exit_code,
                       "signal": o.signal, "wall_s": _num(o.wall_s), "message": o.message,
                       "peak_main_rss": o.peak_main_rss, "peak_tree_rss": o.peak_tree_rss,
                       "worker_start_method": o.worker_start_method})
    phase_rows = [{
        "stage": str(r.stage), "epoch": int(r.epoch), "phase": str(r.phase),
        "seconds": round(float(r.seconds), 4), "time_share": round(float(r.time_share), 4),
        "main_rss_max": _int(r.main_rss_max), "tree_rss_max": _int(r.tree_rss_max),
        "footprint_max": _int(r.footprint_max),
        "workers_uss_max": _int(r.workers_uss_max),
        "peak_live_tensor_bytes": _int(r.peak_live_tensor_bytes),
        "cuda_peak_allocated": _int(r.cuda_peak_allocated),
        "cuda_peak_reserved": _int(r.cuda_peak_reserved),
        **_rank_of(r._asdict()),  # a dict: a Series a row costs seconds on a day's phases
    } for r in phases.itertuples(index=False)]
    return Summary.model_validate({
        "schema": SCHEMA_ID,
        "schema_version": SCHEMA_VERSION,
        "run": {
            "dir": str(run.dir),
            "scenario": m.scenario_name,
            "kind": m.kind,
            "status": str(run.status),
            "complete": run.complete,
            "incomplete_reasons": run.incomplete_reasons(),
            "started": m.started,
            "ended": m.ended,
            "git_revision": m.git_revision,
            "harness_version": (m.versions or {}).get("harness"),
            "host": m.host,
        },
        "stages": stages,
        "peaks": peaks,
        "phases": phase_rows,
        "growth_per_epoch": growth,
        "durations": {
            "wall_s": _num(m.wall_s),
            "stages": {s["name"]: s["wall_s"] for s in stages},
            "epochs": _epoch_durations(first),
        },
        "metrics": _metrics(first),
        "findings": [_plain(f.to_dict()) for f in findings],
        "captures": [{"stage": c.capture.stage, "name": c.capture.name, "process": c.capture.role,
                      "pid": c.pid, "file": str(c.capture.path.relative_to(run.dir)),
                      "file_bytes": c.capture.size, "peak_heap": c.peak_memory,
                      "allocations": c.total_allocations, "error": c.error,
                      "rank": c.capture.rank} for c in captures],
        "problems": list(run.problems),
        **({"ranks": ranks} if ranks is not None else {}),
        **({"cuda": _plain(cuda)} if cuda is not None else {}),
        "headroom": headroom(run, device_total,
                             (peaks["cuda_reserved"] or {}).get("bytes")).to_dict(),
        **({"oom": [p.to_dict() for p in post_mortems]} if post_mortems else {}),
        **({"cuda_oom": ooms} if (ooms := cuda_ooms(run)) else {}),
    })
