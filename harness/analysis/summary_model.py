"""summary.json, defined once: typed models, the schema id and version, the JSON Schema file.

:func:`harness.analysis.summary.build_summary` builds a :class:`Summary`; the gates read
summary.json back through ``Summary.model_validate``. ``harness/schemas/summary.schema.json`` is
generated from these models; ``python -m harness.analysis.summary_model`` writes it again.

Bump SCHEMA_VERSION on any change a reader could notice (a field removed, renamed or retyped);
adding an optional field does not need a bump. Field order is the order summary.json shows.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    WithJsonSchema,
    field_validator,
)
from pydantic.json_schema import GenerateJsonSchema, SkipJsonSchema
from pydantic_core import PydanticCustomError

SCHEMA_ID = "harness-summary"
SCHEMA_VERSION = 1
SCHEMA_FILE = Path(__file__).resolve().parents[1] / "schemas" / "summary.schema.json"
_SCHEMA_HEAD = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": f"https://harness.local/schemas/summary/{SCHEMA_VERSION}",
    "title": "harness run summary",
    "description": (
        "report/summary.json: the headline numbers of one run directory, written by `harness "
        "report` (harness/analysis/summary.py). Bytes are bytes, times are seconds; `t` is "
        f"wall-clock seconds since the epoch. Version {SCHEMA_VERSION}: bump schema_version on any "
        "change a reader could notice; optional fields may be added without a bump. Generated from "
        "harness/analysis/summary_model.py: python -m harness.analysis.summary_model"),
}


def _number(v: Any) -> int | float:
    # An int stays an int and a float a float, as json.dumps wrote them (a wall time of 7 is 7).
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise PydanticCustomError("number_type", "Input should be a valid number")
    return v


Number = Annotated[int | float, PlainValidator(_number), WithJsonSchema({"type": "number"})]
Bytes = Annotated[int, Field(ge=0)]
Count = Annotated[int, Field(ge=0)]
Epoch = Annotated[int, Field(ge=0)]
Share = Annotated[float, Field(ge=0, le=1)]
Process = Literal["main", "worker"]
# A finding's kind: any kind a detector registered (harness.analysis.finding.DETECTORS, each
# explained at docs/reports.md#<kind>), so that a new kind needs no change here;
# tests/test_analysis_findings.py holds every registered kind to this pattern.
FindingKind = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")]
# Distributed runs (torchrun) only: the global rank and the node a row is of. Absent, never
# null, elsewhere, so that a single process's summary.json is what it was (Summary.to_dict).
RANK_KEYS = ("rank", "node")


def _rank_field() -> Any:
    return Field(None, description="distributed runs only: the global rank (absent otherwise)",
                 json_schema_extra=_no_default)


def _node_field() -> Any:
    return Field(None, description="runs of several nodes only: the node (node_rank)",
                 json_schema_extra=_no_default)


def _no_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RunInfo(_Section):
    """The run as a whole, from its manifest."""

    dir: str
    scenario: str
    kind: str = Field(description="run (instrumented) or bare")
    status: str = Field(description="ok, failed, killed, oom_killed (the kernel's OOM killer), "
                                    "limit, timeout, interrupted (Ctrl-C), "
                                    "terminated (SIGTERM, SIGHUP), or running (the harness "
                                    "itself was killed)")
    complete: bool = Field(description="false for a crashed, killed or stopped run: the report "
                                       "shows what was recorded")
    incomplete_reasons: list[str]
    started: str | None
    ended: str | None
    git_revision: str | None
    harness_version: str | None
    host: str | None


class StageRow(_Section):
    """One stage's outcome."""

    name: str
    status: str
    exit_code: int | None
    signal: str | None
    wall_s: Number | None
    message: str
    peak_main_rss: Bytes | None
    peak_tree_rss: Bytes | None
    worker_start_method: str | None = Field(
        None, description="how its DataLoader workers were started: fork, spawn, forkserver, none, "
                          "several joined by '+'; null when nothing sampled the stage")


class Peak(_Section):
    """Where a sampled peak was: the tick with the largest value while the workload ran (from
    its stage's start to its ``stage_end`` event)."""

    bytes: Bytes
    stage: str
    epoch: Epoch = Field(description="0: before the first epoch or outside epochs")
    step: Count
    phase: str = Field(description="a probe phase, or 'none' for a workload without probe calls")
    t: float
    rank: Count | SkipJsonSchema[None] = _rank_field()
    node: Count | SkipJsonSchema[None] = _node_field()


class TeardownPeak(_Section):
    """The largest tick after a stage's ``stage_end`` event: the process shutting down."""

    bytes: Bytes
    stage: str
    t: float
    after_end_s: Annotated[float, Field(ge=0)] = Field(description="seconds after the stage's stage_end")
    rise: int | None = Field(
        description="bytes above the stage's last tick at or before stage_end (null: none)")
    file_backed_rise: int | None = Field(
        description="main process only: the part of the rise in file-backed pages (statm shared: "
                    "shared libraries' code and data, mapped files); null for the tree")
    rank: Count | SkipJsonSchema[None] = _rank_field()
    node: Count | SkipJsonSchema[None] = _node_field()


class HeapPeak(_Section):
    """The largest memray high-water mark of any capture."""

    bytes: Bytes
    stage: str
    capture: str
    process: Process
    pid: int | None
    scope: Literal["windows", "full"] | None = Field(
        None, description="windows: the heap inside the capture windows only (memray.mode "
                          "windows: what was allocated before a window opened is not in it); "
                          "full: the whole stage")
    rank: Count | SkipJsonSchema[None] = _rank_field()
    node: Count | SkipJsonSchema[None] = _node_field()


class PhasePeak(_Section):
    """Where a per-phase peak was: stage, epoch, phase."""

    bytes: Bytes
    stage: str
    epoch: Epoch
    phase: str
    rank: Count | SkipJsonSchema[None] = _rank_field()
    node: Count | SkipJsonSchema[None] = _node_field()


class Peaks(_Section):
    """The run's peaks, each with where it was (null: not measured)."""

    footprint: Peak | None = Field(
        None, description="the process tree's footprint, shared pages counted once (every "
                          "process's USS and the largest RSS - USS of any one: a main process's "
                          "RSS plus its forked workers' USS), while the workload ran")
    main_rss: Peak | None = Field(description="the main process's RSS while the workload ran")
    tree_rss: Peak | None = Field(description="RSS summed over the process tree while the workload "
                                              "ran: a page shared by N processes counts N times")
    workers_uss: Peak | None = Field(description="the workers' USS summed over a full tick")
    heap: HeapPeak | None
    live_tensor_bytes: PhasePeak | None = Field(
        description="the largest peak of live tensor bytes over the traced steps")
    cuda_allocated: PhasePeak | None = Field(
        None, description="CUDA runs: the highest per-phase peak of torch.cuda allocated bytes "
                          "(null on the CPU)")
    cuda_reserved: PhasePeak | None = Field(
        None, description="CUDA runs: the highest per-phase peak of bytes reserved by the caching "
                          "allocator")
    main_rss_teardown: TeardownPeak | None = Field(
        None, description="the main process's RSS after its stage's stage_end (interpreter and "
                          "library teardown); null when no tick came after it")
    tree_rss_teardown: TeardownPeak | None = Field(
        None, description="the process tree's RSS after its stage's stage_end")


class PhaseRow(_Section):
    """One stage x epoch x phase: its time and peaks."""

    stage: str
    epoch: Epoch
    phase: str
    seconds: Annotated[float, Field(ge=0)]
    time_share: Share
    main_rss_max: Bytes | None
    tree_rss_max: Bytes | None
    footprint_max: Bytes | None = Field(
        None, description="the tree's footprint (shared pages once), the phase's highest tick")
    workers_uss_max: Bytes | None
    peak_live_tensor_bytes: Bytes | None
    cuda_peak_allocated: Bytes | None = Field(
        None, description="CUDA runs: the phase's own peak allocated (reset when it began)")
    cuda_peak_reserved: Bytes | None = Field(
        None, description="CUDA runs: the phase's own peak reserved")
    rank: Count | SkipJsonSchema[None] = _rank_field()
    node: Count | SkipJsonSchema[None] = _node_field()


class GrowthRow(_Section):
    """Change between two consecutive epoch-end snapshots of a stage (negative: shrank)."""

    stage: str
    from_epoch: int
    to_epoch: int
    main_rss: int
    main_uss: int
    tensor_count: int
    tensor_bytes: int
    rank: Count | SkipJsonSchema[None] = _rank_field()
    node: Count | SkipJsonSchema[None] = _node_field()


class EpochSeconds(_Section):
    stage: str
    epoch: int
    seconds: float


class Durations(_Section):
    wall_s: Number | None
    stages: dict[str, Number | None] = Field(description="each stage's wall time, by name")
    epochs: list[EpochSeconds]


class MetricPoint(_Section):
    """One ``probe.metric`` value."""

    stage: str
    name: str
    value: Number
    epoch: int | None
    step: int | None


class Metrics(_Section):
    final: dict[str, Number] = Field(
        description="each metric's last value (loss, val_accuracy, test_accuracy, ...)")
    series: list[MetricPoint]


class FindingRow(_Section):
    """One diagnosis, by a registered detector (harness.analysis.finding)."""

    kind: FindingKind = Field(description="what was found; explained at docs/reports.md#<kind>")
    title: str
    text: str
    numbers: dict[str, Any] = Field(
        description="the figures behind the finding; their keys depend on the kind")


class CaptureRow(_Section):
    """One memray capture file."""

    stage: str
    name: str
    process: Process
    pid: int | None
    file: str
    file_bytes: Bytes
    peak_heap: Bytes | None
    allocations: Count | None
    error: str | None
    rank: Count | SkipJsonSchema[None] = _rank_field()
    node: Count | SkipJsonSchema[None] = _node_field()


class TopSite(_Section):
    site: str
    bytes: Bytes
    count: Count


class HistoryRow(_Section):
    """One allocator-history window the probe dumped, and what its pickle shows at the end."""

    stage: str
    epoch: Epoch
    start: Count
    stop: Count
    file: str = Field(description="relative to the run directory; opens at https://pytorch.org/memory_viz")
    bytes: Bytes
    entries_kept: Count
    entries_dropped: Count
    error: str | None
    segments: Count | None
    reserved: Bytes | None
    allocated: Bytes | None
    free: Bytes | None
    largest_free_block: Bytes | None
    fragmentation: Share | None
    top_sites: list[TopSite]


class Cuda(_Section):
    """CUDA runs only: the device and the allocator-history windows."""

    device: str = Field(description="the scenario's device: cuda or cuda:N")
    name: str | None
    total: Bytes | None = Field(description="the device's memory, from the driver")
    free_min: Bytes | None = Field(description="the least free memory the driver reported at a snapshot")
    retries: Count | None
    ooms: Count | None
    pinned_host_peak: Bytes | None = Field(
        description="torch.cuda.host_memory_stats peak: host memory pinned for transfers")
    history: list[HistoryRow]


class HostHeadroom(_Section):
    """One stage's host memory against the limit in force (harness/analysis/headroom.py)."""

    stage: str
    limit: Bytes = Field(description="the memory available to the stage's processes")
    source: Literal["limits.memory", "cgroup", "machine"] = Field(
        description="limits.memory: a cgroup the harness made for the stage; cgroup: the one the "
                    "harness ran in; machine: MemTotal")
    cgroup: str | None
    peak: Bytes | None
    measure: Literal["cgroup charge", "footprint", "tree RSS"] = Field(
        description="what peak is: the most the stage's cgroup was charged, else its peak "
                    "footprint (shared pages once), else its peak tree RSS")
    share: Annotated[float, Field(ge=0)] | None = Field(description="peak / limit")
    main_peak: Bytes | None = Field(description="the main process's peak RSS")
    main_share: Annotated[float, Field(ge=0)] | None = Field(description="main_peak / limit")


class DeviceHeadroom(_Section):
    """A CUDA device's memory against the allocator's peak reserved bytes."""

    device: str
    total: Bytes
    peak_reserved: Bytes | None
    share: Annotated[float, Field(ge=0)] | None


class Headroom(_Section):
    """The memory available to the job and each peak as a share of it."""

    host: list[HostHeadroom]
    cuda: list[DeviceHeadroom]


class GrownLine(_Section):
    line: str
    bytes: Bytes
    allocations: Count


class OomVictim(_Section):
    pid: int | None
    role: str
    rank: Count | None


class OomLimit(_Section):
    bytes: Bytes
    source: Literal["limits.memory", "cgroup", "machine"]
    cgroup: str | None
    peak_charged: Bytes | None


class OomRecord(_Section):
    """The manifest's post-mortem (harness/records/manifest.py OomPostMortem)."""

    victim: OomVictim
    epoch: int | None
    step: int | None
    phase: str | None
    t: float | None
    victim_rss: Bytes | None
    limit: OomLimit | None
    counter: str
    oom_kills: Count
    evidence: str


class OomPostMortem(_Section):
    """Status oom_killed: who the kernel killed, where, and the last seconds before it."""

    stage: str
    record: OomRecord
    window_s: Annotated[float, Field(ge=0)] = Field(description="the seconds the figures cover")
    tree_rss: Bytes | None
    processes: Count | None
    victim_rss: Bytes | None
    victim_anon: Bytes | None
    victim_file: Bytes | None
    victim_shmem: Bytes | None
    mib_per_s: float | None = Field(description="the victim's RSS growth over the window")
    mib_per_step: float | None
    tree_mib_per_s: float | None
    capture: str | None = Field(description="the victim's last memray capture")
    lines_measure: str | None
    lines: list[GrownLine] = Field(description="the workload lines holding the most in it")
    composition_when: str | None = Field(
        description="the victim's last composition moment before its death (composition.jsonl)")
    composition_before_s: Annotated[float, Field(ge=0)] | None
    composition: dict[str, Bytes] = Field(description="its parts then, bytes (non-zero ones)")


class CudaOomRow(_Section):
    """A CUDA allocation that failed (a ``cuda_oom`` event): the allocator's state at that moment."""

    stage: str
    rank: Count | SkipJsonSchema[None] = _rank_field()
    t: float
    epoch: int
    step: int
    phase: str
    device: Count
    requested: Bytes = Field(description="the allocation that failed")
    allocated: Bytes
    reserved: Bytes
    largest_free_block: Bytes | None = Field(description="the largest free block in reserved segments")
    segments: Count | None
    device_free: Bytes | None = Field(description="free on the device, as the driver said")
    device_total: Bytes | None
    file: str | None = Field(description="the allocator snapshot then, for pytorch.org/memory_viz")


class RankRow(_Section):
    """One rank of a distributed run: its own peaks (each also carries the rank)."""

    rank: Count
    node: Count | SkipJsonSchema[None] = _node_field()
    peaks: Peaks


class RecordsStamp(_Section):
    """Which records a summary was built from (harness/analysis/stamp.py)."""

    files: Count
    digest: str = Field(description="sha256 of each record file's name, size and modification time")
    content: str = Field(description="sha256 of each record file's name and bytes")


class Summary(_Section):
    """report/summary.json: the headline numbers of one run directory."""

    # SCHEMA_ID and SCHEMA_VERSION spelled out (a Literal takes no names; tests/test_summary_schema.py
    # holds them equal). "schema" would shadow BaseModel.schema: the field keeps it as its alias.
    schema_id: Literal["harness-summary"] = Field(alias="schema")
    schema_version: Literal[1]
    run: RunInfo
    stages: list[StageRow]
    peaks: Peaks
    phases: list[PhaseRow] = Field(description="per stage x epoch x phase peaks (the phases table, abridged)")
    growth_per_epoch: list[GrowthRow] = Field(
        description="change between consecutive epoch-end snapshots (negative: shrank)")
    durations: Durations
    metrics: Metrics
    findings: list[FindingRow]
    captures: list[CaptureRow]
    problems: list[str] = Field(description="files missing, cut short or unreadable")
    # Distributed runs only; the run-wide peaks above are then the largest over the ranks.
    ranks: list[RankRow] | SkipJsonSchema[None] = Field(
        None, description="distributed runs only: each rank's peaks; the run-wide peaks are the "
                          "largest over the ranks", json_schema_extra=_no_default)
    # Absent, never null, on the CPU: the schema shows the object only.
    cuda: Cuda | SkipJsonSchema[None] = Field(
        None, description="CUDA runs only: the device and the allocator-history windows",
        json_schema_extra=_no_default)
    # Absent only in summaries written before them.
    headroom: Headroom | SkipJsonSchema[None] = Field(
        None, description="the memory available to the job and each peak's share of it",
        json_schema_extra=_no_default)
    oom: list[OomPostMortem] | SkipJsonSchema[None] = Field(
        None, description="status oom_killed only: the post-mortem", json_schema_extra=_no_default)
    cuda_oom: list[CudaOomRow] | SkipJsonSchema[None] = Field(
        None, description="CUDA allocations that failed: the allocator's state then",
        json_schema_extra=_no_default)
    # Absent only in summaries written before it: then the gates read the records again instead.
    records: RecordsStamp | SkipJsonSchema[None] = Field(
        None, description="the run's record files as the report read them; the gates write the "
                          "report again when they no longer match", json_schema_extra=_no_default)

    @field_validator("cuda", mode="before")
    @classmethod
    def _absent_not_null(cls, value: Any) -> Any:
        # runs only for a value given: leaving the key out is how a CPU run says "no device"
        if value is None:
            raise PydanticCustomError("cuda_null", "leave cuda out on the CPU rather than null")
        return value

    def to_dict(self) -> dict[str, Any]:
        """What summary.json holds: every field in order, ``cuda`` only on CUDA runs, ``ranks``
        and each row's ``rank`` and ``node`` only where they are known (distributed runs)."""
        exclude = {k for k in ("cuda", "ranks", "records", "headroom", "oom", "cuda_oom") if getattr(self, k) is None}
        out = self.model_dump(mode="json", by_alias=True, exclude=exclude or None)
        return {k: v if k == "findings" else _drop_unknown_ranks(v) for k, v in out.items()}


def _drop_unknown_ranks(obj: Any) -> Any:
    """``obj`` without the RANK_KEYS that are null (the findings' free-form numbers are not walked)."""
    if isinstance(obj, dict):
        return {k: _drop_unknown_ranks(v) for k, v in obj.items() if not (k in RANK_KEYS and v is None)}
    if isinstance(obj, list):
        return [_drop_unknown_ranks(v) for v in obj]
    return obj


class _NoFieldTitles(GenerateJsonSchema):
    """Field titles would only repeat the field names."""

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False


_TOP_ORDER = ("type", "required", "additionalProperties", "properties")


def json_schema() -> dict[str, Any]:
    """The JSON Schema of summary.json, as harness/schemas/summary.schema.json holds it."""
    body = Summary.model_json_schema(by_alias=True, schema_generator=_NoFieldTitles)
    body = {k: v for k, v in body.items() if k not in ("title", "description")}
    return {**_SCHEMA_HEAD, **{k: body.pop(k) for k in _TOP_ORDER if k in body}, **body}


def schema_text() -> str:
    return json.dumps(json_schema(), indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write the schema file (``--check``: exit 1 when the file differs from the models)."""
    args = sys.argv[1:] if argv is None else argv
    text = schema_text()
    if "--check" in args:
        same = SCHEMA_FILE.is_file() and SCHEMA_FILE.read_text(encoding="utf-8") == text
        print(f"{SCHEMA_FILE}: {'up to date' if same else 'differs from the models'}")
        return 0 if same else 1
    SCHEMA_FILE.write_text(text, encoding="utf-8")
    print(f"wrote {SCHEMA_FILE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
