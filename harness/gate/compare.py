"""``harness compare``: two runs side by side by phase, epoch and process, and the sites that grew.

Pure: summaries (:class:`Summary`), the report's process and site tables (DataFrames) and the
runs' manifests in, a :class:`Comparison` out. Figures missing from one run stay ``None``. Which
changes stand out of the noise is decided here (:meth:`Column.beyond_noise`), with the floors the
baseline check forgives (:mod:`harness.gate.metrics`), so that a renderer only has to colour them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd

from harness.gate import metrics as m
from harness.records import jsonio
from harness.records.manifest import Manifest

if TYPE_CHECKING:
    from harness.analysis.summary_model import PhaseRow, Summary

Unit = Literal["bytes", "seconds", "count"]
Pair = tuple[float | None, float | None]

# Times move with the machine's load, not with a floor in seconds: a change counts when it is
# more than this share of A's time, and more than the timer's reach for very short phases.
SECONDS_RELATIVE = 0.10
SECONDS_MIN = 0.1
ABSENT = "(absent)"


@dataclass(frozen=True)
class Column:
    """One metric of a section; ``noise_floor`` (bytes or a count) is the change that is still noise."""

    name: str
    label: str
    unit: Unit
    noise_floor: float = 0.0

    def beyond_noise(self, pair: Pair) -> bool:
        """Whether A → B changed by more than run-to-run noise: the metric's noise floor for
        bytes (as ``harness check`` forgives it), any change for a count, and for seconds more
        than :data:`SECONDS_RELATIVE` of A (and :data:`SECONDS_MIN`)."""
        d = delta(pair)
        if d is None or d == 0:
            return False
        if self.unit == "seconds":
            return abs(d) > max(SECONDS_RELATIVE * abs(pair[0] or 0.0), SECONDS_MIN)
        return abs(d) > self.noise_floor


@dataclass
class Section:
    """One table: key columns, then for each metric the value in A and in B."""

    title: str
    keys: list[str]
    columns: list[Column]
    rows: list[tuple[tuple[str, ...], list[Pair]]] = field(default_factory=list)


@dataclass
class SiteDelta:
    stage: str
    capture: str
    process: str
    phase: str
    site: str
    workload_line: str
    a: int
    b: int

    @property
    def delta(self) -> int:
        return self.b - self.a

    @property
    def beyond_noise(self) -> bool:
        """Grew by more than memray's heap noise floor."""
        return abs(self.delta) > m.definition("peak_heap").noise_floor


@dataclass(frozen=True)
class Change:
    """One setting that differs between the runs: its flat key (``train.batch_size``) and its value
    in each, as YAML would write it, or :data:`ABSENT`."""

    key: str
    a: str
    b: str


@dataclass
class Comparison:
    a: dict[str, Any]  # the summaries' "run" blocks
    b: dict[str, Any]
    sections: list[Section]
    sites: list[SiteDelta]
    notes: list[str] = field(default_factory=list)
    # None: a run's manifest did not record its scenario (or no manifests were given)
    scenario_changes: list[Change] | None = None
    version_changes: list[Change] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)  # A's, by flat key: python, torch, git_revision


def delta(pair: Pair) -> float | None:
    a, b = pair
    return None if a is None or b is None else b - a


def ratio(pair: Pair) -> float | None:
    a, b = pair
    return None if a is None or b is None or a == 0 else (b - a) / abs(a)


def _num(v: Any) -> float | None:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return float(v)


def _join(title: str, keys: list[str], columns: list[Column],
          a: Mapping[tuple[str, ...], Mapping[str, Any]],
          b: Mapping[tuple[str, ...], Mapping[str, Any]]) -> Section:
    order = list(a) + [k for k in b if k not in a]
    # A figure neither run has (CUDA on the CPU) is not a column.
    columns = [c for c in columns if c.name in ("seconds", "wall_s") or any(
        _num(r.get(c.name)) is not None for side in (a, b) for r in side.values())]
    rows = []
    for k in order:
        ra, rb = a.get(k, {}), b.get(k, {})
        rows.append((k, [(_num(ra.get(c.name)), _num(rb.get(c.name))) for c in columns]))
    return Section(title, keys, columns, rows)


def _floor(metric: str) -> int:
    return m.definition(metric).noise_floor


_RUN_COLUMNS = [Column(d.key, d.label, "bytes", d.noise_floor) for d in m.RUN_METRICS] + [
    Column("wall_s", "wall time", "seconds")]
# The phase rows' peaks; an epoch's are the largest of its phases'.
_PEAK_COLUMNS = [
    Column("footprint_max", "footprint", "bytes", _floor("peak_footprint")),
    Column("main_rss_max", "main RSS", "bytes", _floor("peak_main_rss")),
    Column("tree_rss_max", "tree RSS", "bytes", _floor("peak_tree_rss")),
    Column("workers_uss_max", "workers' USS", "bytes", _floor("peak_workers_uss")),
    Column("peak_live_tensor_bytes", "live tensors", "bytes", _floor("peak_live_tensor_bytes")),
    Column("cuda_peak_allocated", "CUDA allocated", "bytes", _floor("peak_cuda_allocated")),
    Column("cuda_peak_reserved", "CUDA reserved", "bytes", _floor("peak_cuda_reserved")),
]
_PHASE_COLUMNS = _PEAK_COLUMNS + [Column("seconds", "time", "seconds")]
_EPOCH_COLUMNS = _PEAK_COLUMNS + [
    Column("growth", "main RSS growth", "bytes", _floor("growth_per_epoch")),
    Column("seconds", "time", "seconds")]
# One process's peaks: RSS and PSS move like the main process's RSS, USS like the workers'.
_PROCESS_COLUMNS = [
    Column("processes", "processes", "count"),
    Column("peak_rss", "peak RSS", "bytes", _floor("peak_main_rss")),
    Column("peak_uss", "peak USS", "bytes", _floor("peak_workers_uss")),
    Column("peak_pss", "peak PSS", "bytes", _floor("peak_main_rss")),
]


def _run_rows(s: Summary) -> dict[tuple[str, ...], dict[str, Any]]:
    values: dict[str, Any] = {k: v for k, v in m.from_summary(s).items() if "." not in k}
    values["wall_s"] = s.durations.wall_s
    return {("run",): values}


def _phase_rows(s: Summary) -> dict[tuple[str, ...], dict[str, Any]]:
    # a distributed run's rows are per rank: rank R of A is set beside rank R of B
    return {(r.stage if r.rank is None else f"{r.stage} rank {r.rank}", str(r.epoch), r.phase): r.model_dump()
            for r in s.phases}


def _max(values: list[Any]) -> float | None:
    nums = [float(v) for v in values if v is not None]
    return max(nums) if nums else None


def _epoch_rows(s: Summary) -> dict[tuple[str, ...], dict[str, Any]]:
    out: dict[tuple[str, ...], dict[str, Any]] = {}
    by_epoch: dict[tuple[str, str], list[PhaseRow]] = {}
    for r in s.phases:
        by_epoch.setdefault((r.stage, str(r.epoch)), []).append(r)
    for key, rows in by_epoch.items():
        out[key] = {c.name: _max([getattr(r, c.name) for r in rows]) for c in _PEAK_COLUMNS}
        out[key]["seconds"] = sum(r.seconds for r in rows)
    for e in s.durations.epochs:
        out.setdefault((e.stage, str(e.epoch)), {})["seconds"] = e.seconds
    for g in s.growth_per_epoch:
        out.setdefault((g.stage, str(g.to_epoch)), {})["growth"] = g.main_rss
    return dict(sorted(out.items(), key=lambda kv: (_stage_rank(s, kv[0][0]), int(kv[0][1]))))


def _stage_rank(s: Summary, stage: str) -> int:
    names = [st.name for st in s.stages]
    return names.index(stage) if stage in names else len(names)


def process_rows(processes: pd.DataFrame) -> dict[tuple[str, ...], dict[str, Any]]:
    """The report's process table by (stage, role): how many, and the largest peaks."""
    if processes.empty:
        return {}
    g = processes.groupby(["stage", "role"], sort=False)
    df = g.agg(processes=("pid", "nunique"), peak_rss=("peak_rss", "max"),
               peak_uss=("peak_uss", "max"), peak_pss=("peak_pss", "max")).reset_index()
    return {(str(r.stage), str(r.role)): r._asdict() for r in df.itertuples(index=False)}


def site_deltas(sites_a: pd.DataFrame, sites_b: pd.DataFrame, top: int = 10) -> list[SiteDelta]:
    """Allocation sites by bytes live at their capture's peak, B minus A, largest growth first."""
    key = ["stage", "capture", "process", "site"]

    def totals(df: pd.DataFrame) -> pd.DataFrame:
        if df.empty:
            return pd.DataFrame(columns=key + ["phase", "workload_line", "bytes"])
        df = df.fillna({"phase": "", "workload_line": ""})
        return df.groupby(key, sort=False, dropna=False).agg(
            phase=("phase", "first"), workload_line=("workload_line", "first"),
            bytes=("bytes_at_peak", "sum")).reset_index()

    ta, tb = totals(sites_a), totals(sites_b)
    j = ta.merge(tb, on=key, how="outer", suffixes=("_a", "_b"))
    if j.empty:
        return []
    j["bytes_a"] = j["bytes_a"].fillna(0).astype(int)
    j["bytes_b"] = j["bytes_b"].fillna(0).astype(int)
    j["delta"] = j["bytes_b"] - j["bytes_a"]
    j = j[j["delta"] > 0].sort_values("delta", ascending=False, kind="stable").head(top)
    out = []
    for r in j.itertuples(index=False):
        phase = r.phase_b if isinstance(r.phase_b, str) else r.phase_a
        line = r.workload_line_b if isinstance(r.workload_line_b, str) else r.workload_line_a
        out.append(SiteDelta(str(r.stage), str(r.capture), str(r.process), str(phase or ""),
                             str(r.site), str(line or ""), int(r.bytes_a), int(r.bytes_b)))
    return out


def value_text(v: Any) -> str:
    """A setting's value as YAML would read it back: ``64``, ``null``, ``[0.8, 0.1]``; a string that
    would read as something else (``"4"``, ``""``) is quoted."""
    if isinstance(v, str):
        try:
            jsonio.loads(v, "")
        except jsonio.NotJson:
            return v or '""'
        except jsonio.RecordError:
            pass  # JSON past the reader's limits (nested 100 deep, say) is JSON still: quoted
        return json.dumps(v, ensure_ascii=False)
    return json.dumps(v, ensure_ascii=False, default=str)


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings to dotted keys (``{"train": {"batch_size": 4}}`` -> ``train.batch_size``);
    lists and empty mappings are values."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _same(x: Any, y: Any) -> bool:
    # 50 and 50.0 are one rate; True and 1 are not one setting
    return bool(x == y) and isinstance(x, bool) == isinstance(y, bool)


def changes(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[Change]:
    """Every flat key whose value differs between ``a`` and ``b``, in A's order, then B's new keys."""
    fa, fb = flatten(a), flatten(b)
    out = []
    for key in list(fa) + [k for k in fb if k not in fa]:
        if key in fa and key in fb and _same(fa[key], fb[key]):
            continue
        out.append(Change(key, value_text(fa[key]) if key in fa else ABSENT,
                          value_text(fb[key]) if key in fb else ABSENT))
    return out


def versions(manifest: Manifest) -> dict[str, Any]:
    """What a run was made with, by flat key: ``python``, each package's version (``torch``,
    ``memray``, ``harness``), the harness's git revision and the workload's code (its file's
    ``workload.sha256``, ``workload.git_revision``, ``workload.dirty``) where recorded."""
    doc = manifest.model_dump(mode="json", exclude_unset=True)  # what the file holds
    out: dict[str, Any] = {}
    if "python" in doc:
        out["python"] = doc["python"]
    pkgs = doc.get("versions")
    if isinstance(pkgs, Mapping):
        out.update(flatten(pkgs))
    for key, value in doc.items():
        if "git" in key:
            out.update(flatten({key: value}) if isinstance(value, Mapping) else {key: value})
    code = doc.get("workload")
    if isinstance(code, Mapping):
        out.update({f"workload.{k}": code[k] for k in ("sha256", "git_revision", "dirty") if k in code})
    return out


def compare(sa: Summary, sb: Summary, procs_a: pd.DataFrame,
            procs_b: pd.DataFrame, sites_a: pd.DataFrame | None, sites_b: pd.DataFrame | None,
            top: int = 10, manifests: tuple[Manifest, Manifest] | None = None,
            ) -> Comparison:
    """Run A against run B: run-wide, by phase, by epoch, by process; the sites that grew; and,
    given the runs' ``manifests``, what differs between their scenarios and versions."""
    sections = [
        _join("Run", ["run"], _RUN_COLUMNS, _run_rows(sa), _run_rows(sb)),
        _join("By phase", ["stage", "epoch", "phase"], _PHASE_COLUMNS, _phase_rows(sa), _phase_rows(sb)),
        _join("By epoch", ["stage", "epoch"], _EPOCH_COLUMNS, _epoch_rows(sa), _epoch_rows(sb)),
        _join("By process", ["stage", "role"], _PROCESS_COLUMNS, process_rows(procs_a),
              process_rows(procs_b)),
    ]
    notes = []
    if sites_a is None or sites_b is None:
        which = " and ".join(n for n, s in (("A", sites_a), ("B", sites_b)) if s is None)
        notes.append(f"no allocation sites for run {which} (memray off, or no captures)")
        sites: list[SiteDelta] = []
    else:
        sites = site_deltas(sites_a, sites_b, top)
    if sa.run.scenario != sb.run.scenario:
        notes.append(f"the runs are of different scenarios: {sa.run.scenario!r} and {sb.run.scenario!r}")
    result = Comparison(sa.run.model_dump(), sb.run.model_dump(), sections, sites, notes)
    if manifests is not None:
        ma, mb = manifests
        if ma.scenario is not None and mb.scenario is not None:
            sc_a, sc_b = ma.scenario.as_dict(), mb.scenario.as_dict()
            result.scenario_changes = changes(sc_a, sc_b)
        va = versions(ma)
        result.version_changes = changes(va, versions(mb))
        result.versions = {k: value_text(v) for k, v in va.items()}
    return result
