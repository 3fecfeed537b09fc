"""Read a run directory into memory, tolerating what a crash leaves behind.

A killed stage can leave a half-written last line in ``samples.csv`` or ``events.jsonl``, no
snapshots, no ``stage_end`` event, or a manifest still saying ``running``; a copy can be cut short
and a hand edit can put a field of the wrong type anywhere. Loading never fails on those: it keeps
what is whole and notes what was not in :attr:`Run.problems`, naming the file (and line, and
field), and such a run is not :attr:`Run.complete`. Only a manifest that cannot be read is an
error: without it nothing says what the directory holds.
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast, overload

import pandas as pd
from pydantic import BaseModel, ConfigDict, ValidationError

from harness.errors import ScenarioError, UsageError
from harness.layout import (
    COMPOSITION_FILE,
    EVENTS_FILE,
    MANIFEST_FILE,
    MEMRAY_DIR,
    SAMPLES_DIR,
    SAMPLES_FILE,
    SCENARIO_FILE,
    SNAPSHOTS_DIR,
    STAGES_DIR,
    parse_capture_file,
    parse_node_dir,
    parse_node_manifest,
    parse_rank_dir,
    parse_samples_part,
    stage_dir,
)
from harness.records import jsonio
from harness.records import scenario as scenario_mod
from harness.records.composition import Moment
from harness.records.events import EVENT_ADAPTER, BaseEvent, EventRecord, StageEnd
from harness.records.manifest import Manifest, StageOutcome, parse_manifest
from harness.records.problems import error_line
from harness.records.samples import COLUMN_TYPES, SAMPLE_COLUMNS, SAMPLE_TEXT_COLUMNS, SampleRow
from harness.records.scenario import Scenario
from harness.records.snapshots import Snapshot
from harness.records.vocab import Status

E = TypeVar("E", bound=BaseEvent)
R = TypeVar("R")
_NUMERIC = tuple(c for c in SAMPLE_COLUMNS if c not in SAMPLE_TEXT_COLUMNS)


@dataclass(frozen=True)
class Capture:
    """One memray capture file: the main process's (``pid`` None) or a forked worker's."""

    stage: str
    name: str  # the file stem, e.g. ``train-e1-train``
    path: Path
    pid: int | None
    size: int
    damage: str | None = None  # what is wrong with the file itself (cut short), as a problem says
    rank: int | None = None  # the global rank whose folder holds it (distributed runs)

    @property
    def role(self) -> str:
        return "main" if self.pid is None else "worker"


@dataclass
class Stage:
    """Everything one stage recorded."""

    name: str
    dir: Path
    outcome: StageOutcome | None  # the manifest's entry; None if the harness died first
    samples: pd.DataFrame
    events: list[EventRecord]  # in the order written
    snapshots: dict[str, Snapshot]  # label -> snapshot, in the order they were taken
    captures: list[Capture]
    # Distributed runs: a rank's own records (rank<R>/), its samples those of its process and
    # workers with the roles a single process has (main, worker N); see harness.analysis.ranks.
    rank: int | None = None
    node: int | None = None
    ranks: list[Stage] = field(default_factory=list)  # the stage's ranks, on the stage itself
    # composition.jsonl: what each process's RSS is made of at the stage's moments, in order
    composition: list[Moment] = field(default_factory=list)

    @overload
    def events_of(self, kind: type[E]) -> list[E]: ...
    @overload
    def events_of(self, kind: str) -> list[EventRecord]: ...

    def events_of(self, kind: type[E] | str) -> list[E] | list[EventRecord]:
        """The events of one kind: by model (``events_of(EpochEnd)``), or by name, as a
        workload's own kind (``events_of("my_kind")``)."""
        if isinstance(kind, str):
            return [e for e in self.events if e.kind == kind]
        return [cast(E, e) for e in self.events if isinstance(e, kind)]


@dataclass
class Run:
    """A run directory, loaded."""

    dir: Path
    manifest: Manifest
    stages: list[Stage]
    problems: list[str] = field(default_factory=list)
    node_manifests: dict[int, Manifest] = field(default_factory=dict)  # manifest-node<K>.json
    # The resolved scenario the run was made with (scenario.yaml, read through Scenario); None
    # when neither it nor the manifest's echo of it can be read (a problem says why).
    scenario: Scenario | None = None

    @property
    def status(self) -> Status:
        return self.manifest.status

    @property
    def distributed(self) -> bool:
        """Whether a stage ran under torchrun: its records are per rank (Stage.ranks)."""
        return any(s.ranks for s in self.stages)

    def recording_stages(self) -> list[Stage]:
        """Every stage or rank that wrote events: the ranks of a distributed stage, else the stage."""
        return [r for s in self.stages for r in (s.ranks or [s])]

    @property
    def complete(self) -> bool:
        """The run finished well and every record of it was read whole."""
        return not self.incomplete_reasons()

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
        if self.status == Status.RUNNING:
            out.append("the manifest still says 'running': the harness itself was stopped")
        elif self.status != Status.OK:
            failure = self.manifest.failure
            msg = f"run status {str(self.status)!r}"
            if failure is not None and failure.stage:
                msg += f" in stage {failure.stage!r}"
            if failure is not None and failure.message:
                msg += f": {failure.message}"
            out.append(msg)
        for s in self.recording_stages():
            if s.events and not s.events_of(StageEnd):
                who = f" rank {s.rank}" if s.rank is not None else ""
                out.append(f"stage {s.name!r}{who} has no stage_end event")
        return out + self.problems

    def damage(self) -> list[str]:
        """What is missing or damaged in the records themselves, apart from the run's own failure.

        A run that failed (or was killed) is expected to lack a ``stage_end`` event; one that says
        ``ok`` is not, so there the missing event means the file lost its end.
        """
        out = list(self.problems)
        if self.status == Status.OK:
            out += [f"{_rel(s.dir / EVENTS_FILE, self.dir)} has no stage_end event"
                    for s in self.recording_stages() if s.events and not s.events_of(StageEnd)]
        return out


def empty_samples(columns: Sequence[str] | None = None) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="object" if c in SAMPLE_TEXT_COLUMNS else "float64")
                         for c in (SAMPLE_COLUMNS if columns is None else columns)})


def _rel(path: Path, run_dir: Path) -> str:
    """``path`` as the run directory's documentation names it (``stages/train/samples.csv``)."""
    try:
        return str(path.relative_to(run_dir))
    except ValueError:
        return str(path)


def _where(path: Path) -> str:
    """``path`` relative to its run directory, found from the layout (``stages/<stage>/...``)."""
    parts = path.parts
    if STAGES_DIR in parts:
        return "/".join(parts[len(parts) - 1 - parts[::-1].index(STAGES_DIR):])
    return str(path)


class _Record(BaseModel):
    """The fields analysis reads, with their types; any others pass unread.

    Strict: a number written as a string is as wrong as the writer would have made it.
    """

    model_config = ConfigDict(extra="allow", strict=True)




def _whole_lines(data: bytes) -> tuple[bytes, bool]:
    """Drop a last line without its newline (a write cut short); say whether one was dropped."""
    if not data or data.endswith(b"\n"):
        return data, False
    cut = data.rfind(b"\n")
    return (data[: cut + 1] if cut >= 0 else b""), True


_SKIPPED_LINE = re.compile(r"Skipping line (\d+): (.*)")


def _bad_lines(caught: list[warnings.WarningMessage]) -> list[tuple[int, str]]:
    """(line, what) of the rows pandas skipped for their number of fields."""
    out = []
    for w in caught:
        for m in _SKIPPED_LINE.finditer(str(w.message)):
            out.append((int(m.group(1)), m.group(2).strip()))
    return out


def _note_lines(problems: list[str], where: str, bad: list[tuple[int, str]], verb: str) -> None:
    """One problem for a file's bad lines: the first named, the rest counted."""
    if not bad:
        return
    line, what = bad[0]
    more = f"; {len(bad) - 1} more such line(s)" if len(bad) > 1 else ""
    problems.append(f"{where} line {line}: {what} ({verb}{more})")


def samples_record(folder: Path) -> Path | None:
    """Where the samples of a stage's (or node's) folder are: its SAMPLES_DIR, else the
    SAMPLES_FILE of a run directory written before it; None if neither is there."""
    for path in (folder / SAMPLES_DIR, folder / SAMPLES_FILE):
        if path.exists():
            return path
    return None


def read_samples(path: Path, problems: list[str], columns: Sequence[str] | None = None) -> pd.DataFrame:
    """A stage's samples as a DataFrame: numeric columns as numbers (integers where no value is
    missing), text columns as text, rows of vanished processes dropped.

    ``path`` is the stage's SAMPLES_DIR or SAMPLES_FILE (the one written, whichever is named);
    ``columns``: only those, read from Parquet parts alone (default: SAMPLE_COLUMNS).
    """
    want = list(SAMPLE_COLUMNS if columns is None else columns)
    record = samples_record(path.parent) if path.name in (SAMPLES_DIR, SAMPLES_FILE) else path
    if record is None or not record.exists():
        problems.append(f"{_where(path.parent)}/: no {SAMPLES_FILE} or {SAMPLES_DIR}/")
        return empty_samples(want)
    read = [*want, "rss"] if "rss" not in want else want
    if record.is_dir():
        frames = [f for f in _read_parts(record, problems, read) if not f.empty]
        df = pd.concat(frames, ignore_index=True) if frames else None
    else:
        df = _read_csv(record, problems)
    if df is None or df.empty:
        return empty_samples(want)
    for c in read:
        if c not in df.columns:  # a file from before the column (CUDA, rss_anon, ...)
            df[c] = float("nan")
    # The sampler's last look can catch a process already gone: psutil reports zeros for it.
    df = df.loc[df["rss"] > 0, want]
    for c in want:
        if c in SAMPLE_TEXT_COLUMNS:
            df[c] = df[c].fillna("").astype(str)
        elif c != "t" and df[c].dtype != "int64":
            # integers as pandas reads them from a CSV: int64 where none is missing
            df[c] = df[c].astype("int64") if df[c].notna().all() else df[c].astype("float64")
    return df.reset_index(drop=True)


def sample_rows(df: pd.DataFrame) -> list[SampleRow]:
    """The rows of a samples DataFrame (:func:`read_samples`, every column) as the sampler made
    them: numbers as ``int`` (``t`` as ``float``), text as ``str``, an empty field as None."""
    kinds = [COLUMN_TYPES[c] for c in SAMPLE_COLUMNS]
    return [SampleRow._make(None if (v == "" or pd.isna(v)) else kind(v) for kind, v in zip(kinds, values))
            for values in df[list(SAMPLE_COLUMNS)].itertuples(index=False, name=None)]


def _read_parts(folder: Path, problems: list[str], columns: list[str]) -> list[pd.DataFrame]:
    """The parts of a SAMPLES_DIR in order (harness.control.samples): a decimated group over the
    parts it covers, a part's Parquet file over its CSV; a file that cannot be read is a problem."""
    for attempt in range(3):
        noted: list[str] = []
        try:
            frames = _read_parts_once(folder, noted, columns)
        except FileNotFoundError:  # read while a live writer replaced a part: list them again
            if attempt == 2:
                raise
            continue
        problems.extend(noted)
        return frames
    return []


def _read_parts_once(folder: Path, problems: list[str], columns: list[str]) -> list[pd.DataFrame]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    found: dict[tuple[int, int, str], Path] = {}
    for p in folder.iterdir():
        parsed = parse_samples_part(p.name)
        if parsed is not None:
            found[parsed] = p
    groups = sorted((first, last) for first, last, ext in found if ext == "parquet" and last > first)
    covered = {i for first, last in groups for i in range(first, last + 1)}
    chosen: list[tuple[int, Path]] = [(first, found[(first, last, "parquet")]) for first, last in groups]
    for first, last, ext in found:
        if first != last or first in covered:
            continue
        if ext == "parquet" or (first, first, "parquet") not in found:
            chosen.append((first, found[(first, last, ext)]))
    frames = []
    for _, p in sorted(chosen):
        if p.suffix == ".csv":
            df = _read_csv(p, problems)
            if df is not None:
                frames.append(df)
            continue
        try:
            names = set(pq.read_schema(p).names)
            frames.append(pq.read_table(p, columns=[c for c in columns if c in names]).to_pandas())
        except FileNotFoundError:
            raise
        except (pa.ArrowException, OSError) as exc:
            problems.append(f"{_where(p)}: cannot be read ({type(exc).__name__}; skipped)")
    return frames


def _read_csv(path: Path, problems: list[str]) -> pd.DataFrame | None:
    """A samples CSV (an older run's samples.csv or a part being written) with every column,
    numeric columns as numbers; a partial last line, a row with too many fields and a value that
    is not a number are dropped and named. None when there is nothing to read."""
    where = _where(path)
    data, cut = _whole_lines(path.read_bytes())
    if cut:
        problems.append(f"{where} ends in a partial line (dropped)")
    if not data.strip():
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", pd.errors.ParserWarning)
        try:
            df = pd.read_csv(io.BytesIO(data),
                             dtype={c: "string" for c in SAMPLE_TEXT_COLUMNS},
                             keep_default_na=False, na_values={c: [""] for c in _NUMERIC},
                             on_bad_lines="warn", encoding_errors="replace")
        except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as exc:
            problems.append(f"{where}: cannot be read ({str(exc).strip()})")
            return None
    # A row with more fields than the header is skipped (the rest are kept), and named.
    skipped = _bad_lines(caught)
    _note_lines(problems, where, skipped, "skipped")
    for c in SAMPLE_COLUMNS:
        if c not in df.columns:  # older run directories have no CUDA columns
            df[c] = float("nan")
    df = df[list(SAMPLE_COLUMNS)].reset_index(drop=True)
    bad: list[tuple[int, str]] = []
    for c in _NUMERIC:
        text = df[c]
        if not pd.api.types.is_numeric_dtype(text):  # parsed as text: some value is not a number
            df[c] = pd.to_numeric(text, errors="coerce")
        infinite = df[c].abs() == float("inf")  # 1e400 reads as inf: not a reading either
        if infinite.any():
            df[c] = df[c].where(~infinite)
        wrong = df[c].isna() & text.notna()
        if wrong.any():
            i = int(wrong.to_numpy().argmax())
            line = i + 2  # the header is line 1
            for n, _ in skipped:
                line += n <= line
            bad.append((line, f"{c} {str(text.iloc[i])!r} is not a number"))
    _note_lines(problems, where, sorted(bad), "read as empty")
    return df


# A metric's value that is not a finite number (a loss gone NaN) is what the workload measured,
# not damage: read as not recorded, so that summary.json never holds NaN.
_UNKNOWN_AT = frozenset({"value"})


def _read_lines(path: Path, problems: list[str], validate: Callable[[Any], R], *,
                unknown_at: frozenset[str] = frozenset(), skip: int = 0) -> list[R]:
    """A JSON-lines record, each line ``validate``'d, in the order written; a line torn, not JSON,
    past the JSON reader's limits or that ``validate`` rejects (a ValidationError, named from its
    ``skip``'th location part on, or a ValueError's own words) is skipped and noted."""
    if not path.is_file():
        return []
    where = _where(path)
    out: list[R] = []
    bad: list[tuple[int, str]] = []
    # bytes: only \n ends a line (a JSON string may hold U+2028), and a byte that is not UTF-8
    # is damage to name, not to replace
    for n, line in enumerate(path.read_bytes().split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            raw = jsonio.loads(line, where, unknown_at)
        except jsonio.RecordError as exc:
            bad.append((n, exc.detail))
            continue
        try:
            out.append(validate(raw))
        except ValidationError as exc:
            bad.append((n, error_line(exc, skip=skip)))
        except ValueError as exc:
            bad.append((n, str(exc)))
    _note_lines(problems, where, bad, "unreadable line skipped")
    return out


def _event(raw: Any) -> EventRecord:
    if not isinstance(raw, dict):
        raise ValueError("not a JSON object")
    return EVENT_ADAPTER.validate_python(raw)


def read_events(path: Path, problems: list[str]) -> list[EventRecord]:
    """events.jsonl, each line the model of its kind (:mod:`harness.records.events`); a line torn,
    not JSON, past the JSON reader's limits or with a field of the wrong type is skipped and noted."""
    return _read_lines(path, problems, _event, unknown_at=_UNKNOWN_AT, skip=1)  # the kind's tag first


def read_composition(path: Path, problems: list[str]) -> list[Moment]:
    """composition.jsonl, one :class:`Moment` a line, in the order written; a line torn, not
    JSON or not a moment is skipped and noted (a killed stage may leave its last line half)."""
    return _read_lines(path, problems, Moment.model_validate)


def read_snapshots(sdir: Path, problems: list[str]) -> dict[str, Snapshot]:
    """The stage's snapshots by label, in the order they were taken; a damaged one is skipped."""
    snap_dir = sdir / SNAPSHOTS_DIR
    if not snap_dir.is_dir():
        return {}
    found: dict[str, Snapshot] = {}
    for path in sorted(snap_dir.glob("*.json")):
        where = _where(path)
        try:
            snap = jsonio.read(path, where)
        except jsonio.RecordError as exc:
            problems.append(f"{exc} (skipped)")
            continue
        try:
            record = Snapshot.model_validate(snap)
        except ValidationError as exc:
            problems.append(f"{where}: {error_line(exc)} (skipped)")
            continue
        found[record.label or path.stem] = record
    return dict(sorted(found.items(), key=lambda kv: kv[1].t))


_LZ4_MAGIC = b"\x04\x22\x4d\x18"


def lz4_damage(path: Path) -> tuple[int, int] | None:
    """(bytes present, bytes needed at least) when ``path``, an lz4 frame, is cut short; else None.

    The probe's captures are lz4-compressed when memray closes them. A frame is a header, then
    blocks each led by its size, then an end mark: walking the sizes finds a cut without
    decompressing anything (memray itself only logs "Memray ERROR" and reads what it can).
    """
    size = path.stat().st_size
    with open(path, "rb") as fh:
        if fh.read(4) != _LZ4_MAGIC:
            return None
        flags = fh.read(1)
        if not flags:
            return size, 7
        flg = flags[0]
        block_checksum, content_size, content_checksum, dict_id = (
            bool(flg & 0x10), bool(flg & 0x08), bool(flg & 0x04), bool(flg & 0x01))
        pos = 4 + 1 + 1 + (8 if content_size else 0) + (4 if dict_id else 0) + 1  # FLG, BD, HC
        while True:
            if pos + 4 > size:
                return size, pos + 4
            fh.seek(pos)
            block = int.from_bytes(fh.read(4), "little") & 0x7FFFFFFF  # top bit: stored raw
            pos += 4
            if block == 0:  # the end mark
                pos += 4 if content_checksum else 0
                return (size, pos) if pos > size else None
            pos += block + (4 if block_checksum else 0)


def list_captures(stage: str, sdir: Path, problems: list[str] | None = None,
                  rank: int | None = None) -> list[Capture]:
    mdir = sdir / MEMRAY_DIR
    if not mdir.is_dir():
        return []
    out: list[Capture] = []
    for path in sorted(mdir.iterdir()):
        parsed = parse_capture_file(path.name)
        if parsed is None or not path.is_file():
            continue
        damage = None
        cut = lz4_damage(path)
        if cut is not None:
            damage = f"{_where(path)} is truncated ({cut[0]} of at least {cut[1]} bytes present)"
            if problems is not None:
                problems.append(damage)
        out.append(Capture(stage, parsed[0], path, parsed[1], path.stat().st_size, damage, rank))
    return out


def read_manifest(run_dir: Path) -> Manifest:
    """The run's manifest.json; UsageError when it is missing, not a JSON object, or a field has
    the wrong type (naming the first such field)."""
    path = run_dir / MANIFEST_FILE
    if not path.is_file():
        raise UsageError(f"{run_dir}: not a run directory (no {MANIFEST_FILE})")
    data = jsonio.read(path)  # a RecordError (exit 2) names the file and field
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a JSON object")
    try:
        return parse_manifest(data)
    except ValidationError as exc:
        raise UsageError(f"{path}: {error_line(exc)}") from None


def read_scenario(run_dir: Path, manifest: Manifest, problems: list[str]) -> Scenario | None:
    """The run's resolved scenario: its scenario.yaml, else (a run directory without one) the
    manifest's echo, each read through :class:`Scenario`; None and a problem when neither reads."""
    path = run_dir / SCENARIO_FILE
    try:
        if path.is_file() or manifest.scenario is None:
            return scenario_mod.read_resolved(path)
        return scenario_mod.from_dict(manifest.scenario.as_dict(), f"{run_dir / MANIFEST_FILE}: scenario")
    except ScenarioError as exc:
        problems.append(f"{exc} (its settings unknown to the report)")
        return None


def _stage_names(run_dir: Path, manifest: Manifest, scenario: Scenario | None) -> list[str]:
    """Stages in the order they ran: the manifest's, then any directory it does not name."""
    names = [s.name for s in manifest.stages]
    sdir = run_dir / STAGES_DIR
    if sdir.is_dir():
        planned = list(scenario.stages) if scenario is not None else []
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
    scenario = read_scenario(run_dir, manifest, problems)
    outcomes = {s.name: s for s in manifest.stages}
    bare = manifest.kind == "bare"  # `harness train`: no sampler, no probe
    stages: list[Stage] = []
    for name in _stage_names(run_dir, manifest, scenario):
        sdir = stage_dir(run_dir, name)
        if not sdir.is_dir():
            problems.append(f"{STAGES_DIR}/{name}/: missing (the manifest names the stage)")
            continue
        events = read_events(sdir / EVENTS_FILE, problems)
        nodes = _numbered_dirs(sdir, parse_node_dir)
        if nodes:
            samples = _node_samples(sdir, nodes, problems)
        else:
            samples = (empty_samples() if bare and samples_record(sdir) is None
                       else read_samples(sdir / SAMPLES_FILE, problems))
        ranks = [_rank_stage(name, rdir, r, outcomes.get(name), samples, problems)
                 for r, rdir in _numbered_dirs(sdir, parse_rank_dir)]
        stages.append(Stage(
            name=name,
            dir=sdir,
            outcome=outcomes.get(name),
            samples=samples,
            events=events,
            snapshots=read_snapshots(sdir, problems),
            captures=list_captures(name, sdir, problems),
            ranks=ranks,
            composition=read_composition(sdir / COMPOSITION_FILE, problems),
        ))
    problems += record_gaps(run_dir, manifest, stages)
    return Run(run_dir, manifest, stages, problems, _node_manifests(run_dir, problems), scenario)


# ---- distributed stages (torchrun): rank<R>/ and node<K>/ folders ---------------------------------


def _numbered_dirs(sdir: Path, parse: Any) -> list[tuple[int, Path]]:
    """The folders of ``sdir`` whose names ``parse`` reads as a number, in number order."""
    found = [(parse(p.name), p) for p in sdir.iterdir() if p.is_dir()]
    return sorted((n, p) for n, p in found if n is not None)


def _node_samples(sdir: Path, nodes: list[tuple[int, Path]], problems: list[str]) -> pd.DataFrame:
    """Every node's samples of a stage, each row with its ``node``; the stage folder's own too,
    should a single-node harness have written there."""
    frames = []
    if samples_record(sdir) is not None:
        frames.append(read_samples(sdir / SAMPLES_FILE, problems).assign(node=float("nan")))
    for k, ndir in nodes:
        frames.append(read_samples(ndir / SAMPLES_FILE, problems).assign(node=float(k)))
    frames = [f for f in frames if not f.empty]
    if not frames:
        return empty_samples().assign(node=pd.Series(dtype="float64"))
    return pd.concat(frames, ignore_index=True).sort_values("t", kind="stable", ignore_index=True)


_RANK_ROLE = r"^rank (\d+)\b"


def sample_ranks(samples: pd.DataFrame) -> pd.Series:
    """Each row's global rank (NaN: the agent, or no rank): the ``rank`` column, else the role's."""
    from_role = pd.to_numeric(samples["role"].astype(str).str.extract(_RANK_ROLE)[0], errors="coerce")
    if "rank" in samples.columns:
        return pd.to_numeric(samples["rank"], errors="coerce").fillna(from_role)
    return from_role


def rank_samples(samples: pd.DataFrame, rank: int) -> pd.DataFrame:
    """The rows of ``rank``'s process and its workers, with the roles of a single process:
    ``rank R`` becomes ``main``, ``rank R worker N`` becomes ``worker N``."""
    rows = samples[sample_ranks(samples) == rank]
    role = rows["role"].astype(str).str.replace(r"^rank \d+ ?", "", regex=True)
    return rows.assign(role=role.where(role != "", "main")).reset_index(drop=True)


def _rank_stage(name: str, rdir: Path, rank: int, outcome: StageOutcome | None,
                samples: pd.DataFrame, problems: list[str]) -> Stage:
    own = rank_samples(samples, rank)
    node = None
    if "node" in own.columns and own["node"].notna().any():
        node = int(own["node"].dropna().mode().iloc[0])
    return Stage(name=name, dir=rdir, outcome=outcome, samples=own,
                 events=read_events(rdir / EVENTS_FILE, problems),
                 snapshots=read_snapshots(rdir, problems),
                 captures=list_captures(name, rdir, problems, rank), rank=rank, node=node,
                 composition=read_composition(rdir / COMPOSITION_FILE, problems))


def _node_manifests(run_dir: Path, problems: list[str]) -> dict[int, Manifest]:
    """manifest-node<K>.json of nodes K > 0 (several nodes); one unreadable is a problem."""
    out: dict[int, Manifest] = {}
    for path in sorted(run_dir.glob("manifest-node*.json")):
        k = parse_node_manifest(path.name)
        if k is None:
            continue
        try:
            data = jsonio.read(path, path.name)
        except jsonio.RecordError as exc:
            problems.append(str(exc))
            continue
        if not isinstance(data, dict):
            problems.append(f"{path.name}: expected a JSON object")
            continue
        try:
            out[k] = parse_manifest(data)
        except ValidationError as exc:
            problems.append(f"{path.name}: {error_line(exc)}")
    return out


def record_gaps(run_dir: Path, manifest: Manifest, stages: list[Stage]) -> list[str]:
    """What a run cannot lack and still be whole: the events of every stage (each rank of a
    distributed one) whose outcome says ``ok``. (An unreadable resolved scenario is noted where it
    is read, :func:`read_scenario`.)"""
    out: list[str] = []
    if manifest.kind == "bare":  # `harness train` runs no probe: no events
        return out
    for st in stages:
        for who in st.ranks or [st]:
            if who.outcome is None or who.outcome.status != Status.OK:
                continue
            path = who.dir / EVENTS_FILE
            if not path.is_file():
                out.append(f"{_rel(path, run_dir)} is missing")
            elif not who.events and not path.read_bytes().strip():
                out.append(f"{_rel(path, run_dir)} is empty")
    return out
