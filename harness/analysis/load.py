"""Read a run directory into memory, tolerating what a crash leaves behind.

A killed stage can leave a half-written last line in ``samples.csv`` or ``events.jsonl``, no
snapshots, no ``stage_end`` event, or a manifest still saying ``running``. Loading never fails on
those: it keeps what is whole and notes what was not in :attr:`Run.problems`.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from harness.errors import UsageError
from harness.layout import (
    EVENTS_FILE,
    MANIFEST_FILE,
    MEMRAY_DIR,
    SAMPLE_COLUMNS,
    SAMPLES_FILE,
    SNAPSHOTS_DIR,
    STAGES_DIR,
    Event,
    parse_capture_file,
    stage_dir,
)

_NUMERIC = ("t", "pid", "ppid", "rss", "vms", "shared", "text", "data", "uss", "pss", "swap",
            "epoch", "step", "cuda_allocated", "cuda_reserved")


@dataclass(frozen=True)
class Capture:
    """One memray capture file: the main process's (``pid`` None) or a forked worker's."""

    stage: str
    name: str  # the file stem, e.g. ``train-e1-train``
    path: Path
    pid: int | None
    size: int

    @property
    def role(self) -> str:
        return "main" if self.pid is None else "worker"


@dataclass
class Stage:
    """Everything one stage recorded."""

    name: str
    dir: Path
    outcome: dict[str, Any] | None  # the manifest's entry; None if the harness died first
    samples: pd.DataFrame
    events: list[dict[str, Any]]
    snapshots: dict[str, dict[str, Any]]  # label -> snapshot, in the order they were taken
    captures: list[Capture]

    def events_of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("kind") == kind]


@dataclass
class Run:
    """A run directory, loaded."""

    dir: Path
    manifest: dict[str, Any]
    stages: list[Stage]
    problems: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        return str(self.manifest.get("status", "unknown"))

    @property
    def complete(self) -> bool:
        return self.status == "ok"

    @property
    def samples(self) -> pd.DataFrame:
        """All stages' samples, in time order."""
        frames = [s.samples for s in self.stages if not s.samples.empty]
        if not frames:
            return empty_samples()
        return pd.concat(frames, ignore_index=True).sort_values("t", kind="stable", ignore_index=True)

    def stage(self, name: str) -> Stage:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(name)

    def incomplete_reasons(self) -> list[str]:
        """Why this run's record is partial; empty for a run that finished well."""
        out: list[str] = []
        if self.status == "running":
            out.append("the manifest still says 'running': the harness itself was stopped")
        elif self.status != "ok":
            failure = self.manifest.get("failure") or {}
            msg = f"run status {self.status!r}"
            if failure.get("stage"):
                msg += f" in stage {failure['stage']!r}"
            if failure.get("message"):
                msg += f": {failure['message']}"
            out.append(msg)
        for s in self.stages:
            if s.events and not s.events_of(Event.STAGE_END):
                out.append(f"stage {s.name!r} has no stage_end event")
        return out


def empty_samples() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="float64" if c in _NUMERIC else "object")
                         for c in SAMPLE_COLUMNS})


def _whole_lines(data: bytes) -> tuple[bytes, bool]:
    """Drop a last line without its newline (a write cut short); say whether one was dropped."""
    if not data or data.endswith(b"\n"):
        return data, False
    cut = data.rfind(b"\n")
    return (data[: cut + 1] if cut >= 0 else b""), True


def read_samples(path: Path, problems: list[str]) -> pd.DataFrame:
    """samples.csv as a DataFrame, numeric columns as numbers, rows of vanished processes dropped."""
    if not path.is_file():
        problems.append(f"{path.parent.name}: no samples.csv")
        return empty_samples()
    data, cut = _whole_lines(path.read_bytes())
    if cut:
        problems.append(f"{path.parent.name}: samples.csv ends in a partial line (dropped)")
    if not data.strip():
        return empty_samples()
    df = pd.read_csv(io.BytesIO(data), dtype={"role": "string", "stage": "string", "phase": "string"},
                     keep_default_na=False, na_values={c: [""] for c in _NUMERIC})
    for c in SAMPLE_COLUMNS:
        if c not in df.columns:  # older run directories have no CUDA columns
            df[c] = float("nan")
    for c in _NUMERIC:
        df[c] = pd.to_numeric(df[c], errors="coerce")
    df = df[list(SAMPLE_COLUMNS)]
    # The sampler's last look can catch a process already gone: psutil reports zeros for it.
    df = df[df["rss"] > 0]
    df["role"] = df["role"].fillna("").astype(str)
    df["stage"] = df["stage"].fillna("").astype(str)
    df["phase"] = df["phase"].fillna("").astype(str)
    return df.reset_index(drop=True)


def read_events(path: Path, problems: list[str]) -> list[dict[str, Any]]:
    """events.jsonl as a list of dicts; a torn line is skipped and noted."""
    if not path.is_file():
        return []
    out: list[dict[str, Any]] = []
    bad = 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            ev = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(ev, dict) and "kind" in ev:
            out.append(ev)
    if bad:
        problems.append(f"{path.parent.name}: {bad} unreadable line(s) in events.jsonl (skipped)")
    return out


def read_snapshots(sdir: Path, problems: list[str]) -> dict[str, dict[str, Any]]:
    """The stage's snapshots by label, in the order they were taken."""
    snap_dir = sdir / SNAPSHOTS_DIR
    if not snap_dir.is_dir():
        return {}
    found: dict[str, dict[str, Any]] = {}
    for path in snap_dir.glob("*.json"):
        try:
            snap = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, OSError):
            problems.append(f"{sdir.name}: unreadable snapshot {path.name} (skipped)")
            continue
        if isinstance(snap, dict):
            found[str(snap.get("label", path.stem))] = snap
    return dict(sorted(found.items(), key=lambda kv: float(kv[1].get("t") or 0.0)))


def list_captures(stage: str, sdir: Path) -> list[Capture]:
    mdir = sdir / MEMRAY_DIR
    if not mdir.is_dir():
        return []
    out: list[Capture] = []
    for path in sorted(mdir.iterdir()):
        parsed = parse_capture_file(path.name)
        if parsed is None or not path.is_file():
            continue
        out.append(Capture(stage, parsed[0], path, parsed[1], path.stat().st_size))
    return out


def read_manifest(run_dir: Path) -> dict[str, Any]:
    """The run's manifest.json as a dict; UsageError when it is missing or not a JSON object."""
    path = run_dir / MANIFEST_FILE
    if not path.is_file():
        raise UsageError(f"{run_dir}: not a run directory (no {MANIFEST_FILE})")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a JSON object")
    return data


def _stage_names(run_dir: Path, manifest: dict[str, Any]) -> list[str]:
    """Stages in the order they ran: the manifest's, then any directory it does not name."""
    names = [str(s.get("name")) for s in manifest.get("stages", []) if isinstance(s, dict)]
    sdir = run_dir / STAGES_DIR
    if sdir.is_dir():
        planned = list((manifest.get("scenario") or {}).get("stages") or [])
        extra = sorted((p.name for p in sdir.iterdir() if p.is_dir() and p.name not in names),
                       key=lambda n: (planned.index(n) if n in planned else len(planned), n))
        names += extra
    return names


def load_run(run_dir: Path) -> Run:
    """Load a run directory; raises UsageError when ``run_dir`` is not one."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UsageError(f"{run_dir}: not a run directory (no such directory)")
    manifest = read_manifest(run_dir)
    problems: list[str] = []
    outcomes = {str(s.get("name")): s for s in manifest.get("stages", []) if isinstance(s, dict)}
    stages: list[Stage] = []
    for name in _stage_names(run_dir, manifest):
        sdir = stage_dir(run_dir, name)
        if not sdir.is_dir():
            problems.append(f"{name}: the manifest names it but stages/{name}/ is missing")
            continue
        events = read_events(sdir / EVENTS_FILE, problems)
        stages.append(Stage(
            name=name,
            dir=sdir,
            outcome=outcomes.get(name),
            samples=read_samples(sdir / SAMPLES_FILE, problems),
            events=events,
            snapshots=read_snapshots(sdir, problems),
            captures=list_captures(name, sdir),
        ))
    return Run(run_dir, manifest, stages, problems)
