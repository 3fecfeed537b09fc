"""events.jsonl, defined once: one model per event kind, written by the probe, read by analysis.

The live probe (:mod:`harness.probe.live`, :mod:`harness.probe.steps`) constructs these models and
:class:`harness.probe.steps.EventWriter` writes each as one JSON line; :func:`harness.analysis.load.read_events`
reads every line back through :data:`EVENT_ADAPTER` into the same models. A line of a kind the
harness does not write (``probe.record`` with the workload's own kind) is a :class:`WorkloadEvent`.
docs/run-directory.md describes each kind.

Strict, as the writer made them: a number written as a string is wrong. A field not listed passes
unread (and a workload's own fields are kept). A field that runs written before it was added lack
has a default; ``model_fields_set`` tells one written ``null`` from one not written.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, PlainValidator, Tag, TypeAdapter
from pydantic_core import PydanticCustomError

from harness.layout import Event


def _none(value: Any) -> bool:
    return value is None


def _number(value: Any) -> int | float:
    # An int stays an int and a float a float, as they were written (a metric of 40 is 40).
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PydanticCustomError("number_type", "Input should be a valid number")
    return value


Number = Annotated[int | float, PlainValidator(_number)]


def _where_it_applies() -> Any:
    """A field written only where it applies (a CUDA reading on a CUDA run): None is left out of
    the line, as the probe always did."""
    return Field(default=None, exclude_if=_none)


class _Record(BaseModel):
    # NaN and infinity are written as json.dumps writes them (a NaN loss stays a number)
    model_config = ConfigDict(extra="allow", strict=True, ser_json_inf_nan="constants")


class BaseEvent(_Record):
    """Every line: ``t``, the wall clock when it happened, and its ``kind``."""

    t: float


class _Recorded(BaseEvent):
    """Where the probe was when it recorded the event (``probe.record``)."""

    epoch: int
    step: int
    phase: str


# ---- parts ---------------------------------------------------------------------------------------


class PhaseTensors(_Record):
    """A phase's tensor allocations: on one traced step, or summed over a span's traced steps."""

    count: int
    bytes: int
    peak_live_bytes: int  # the most live tensor bytes while the phase ran (a span's: the max)
    steps: int  # times the phase was entered


class CudaReading(_Record):
    """The device at a phase's end on a device step (:func:`harness.probe.cuda.device_sample`)."""

    t: float | None = None
    allocated: int | None = None
    reserved: int | None = None
    peak_allocated: int | None = None  # since the phase began
    peak_reserved: int | None = None
    active: int | None = None
    inactive_split: int | None = None
    retries: int | None = None
    ooms: int | None = None


class CudaPhase(_Record):
    """A phase's device readings over a span: the highest peaks, the latest figures."""

    readings: int | None = None
    peak_allocated: int | None = None
    peak_reserved: int | None = None
    allocated: int | None = None
    reserved: int | None = None
    inactive_split: int | None = None
    retries: int | None = None
    ooms: int | None = None


# ---- the harness's kinds -------------------------------------------------------------------------


class StageStart(BaseEvent):
    """The first line."""

    kind: Literal[Event.STAGE_START] = Event.STAGE_START
    stage: str
    pid: int  # the stage's process


class StageEnd(BaseEvent):
    """The last line, after the workload returned or raised (a killed stage has none)."""

    kind: Literal[Event.STAGE_END] = Event.STAGE_END
    stage: str


class StageError(_Recorded):
    """The workload raised; just before ``stage_end``."""

    kind: Literal[Event.STAGE_ERROR] = Event.STAGE_ERROR
    stage: str
    error: str  # the exception's type, or SystemExit
    message: str  # its first line


class EpochStart(BaseEvent):
    kind: Literal[Event.EPOCH_START] = Event.EPOCH_START
    epoch: int  # 1-based


class EpochEnd(BaseEvent):
    kind: Literal[Event.EPOCH_END] = Event.EPOCH_END
    epoch: int
    rss: int | None = None  # the stage process's RSS as the epoch ended (what memray.regrow_mb compares)


class LoopEnd(BaseEvent):
    """The end of a training loop."""

    kind: Literal[Event.LOOP_END] = Event.LOOP_END
    epoch: int
    steps: int  # done
    total: int  # the loader's length or the step limit; -1 when unknown
    # why the epoch asked for a training window (None: it asked for none); runs written before
    # the field lack it (see model_fields_set)
    memray_reason: str | None = None


class SectionStart(BaseEvent):
    kind: Literal[Event.SECTION_START] = Event.SECTION_START
    section: str  # validate, test
    epoch: int


class SectionEnd(BaseEvent):
    kind: Literal[Event.SECTION_END] = Event.SECTION_END
    section: str
    epoch: int
    steps: int  # batches of the section's last loop


class Watch(BaseEvent):
    """The workload named its model."""

    kind: Literal[Event.WATCH] = Event.WATCH
    parameters: int  # count
    parameter_bytes: int


class Metric(BaseEvent):
    """A figure the workload recorded (``probe.metric``), with any fields of its own."""

    kind: Literal[Event.METRIC] = Event.METRIC
    name: str
    value: Number | None  # None: not a finite number (a loss gone NaN), as the reader reads it
    epoch: int
    step: int | None = _where_it_applies()  # the workload's own, where it gives one (the built-in's loss)


class MemrayStart(BaseEvent):
    kind: Literal[Event.MEMRAY_START] = Event.MEMRAY_START
    capture: str  # the file stem
    file: str | None = None  # relative to the stage's directory
    epoch: int
    step: int  # steps done in the loop
    section: str | None = None  # None outside one
    reason: str | None = _where_it_applies()  # a training window: first, spaced, regrow, listed, every
    growth: int | None = _where_it_applies()  # a regrow window: the RSS growth (bytes) that asked for it
    worker: int | None = _where_it_applies()  # a worker's own window: its DataLoader worker id
    pid: int | None = _where_it_applies()  # a worker's own window: the worker's pid


class MemrayStop(BaseEvent):
    kind: Literal[Event.MEMRAY_STOP] = Event.MEMRAY_STOP
    capture: str
    epoch: int
    step: int  # a validation or test capture: the batches it covered
    batches: int | None = _where_it_applies()  # a worker's own window: the batches it fetched in it
    worker: int | None = _where_it_applies()
    pid: int | None = _where_it_applies()


class WorkerEpochEnd(BaseEvent):
    """A DataLoader worker's own reading of its memory as its epoch ended (written by the worker,
    :mod:`harness.probe.workers`): told of the next epoch, or to exit."""

    kind: Literal[Event.WORKER_EPOCH_END] = Event.WORKER_EPOCH_END
    epoch: int
    worker: int  # its DataLoader worker id
    pid: int
    batches: int  # the batches it fetched in the epoch
    rss: int  # bytes
    shared: int  # the resident part of rss in files and shared memory (statm's shared)
    uss: int  # from its smaps_rollup
    # told to exit: its last reading; a sampler tick of it after is of a process exiting, and
    # may read, as its own, pages a sibling that exited first shared with it
    exiting: bool = False


class TracedStep(BaseEvent):
    kind: Literal[Event.TRACED_STEP] = Event.TRACED_STEP
    epoch: int
    step: int  # 0-based, in the epoch's training loop
    phases: list[str]  # in the order entered
    tensors: dict[str, PhaseTensors]
    cuda: dict[str, CudaReading] | None = _where_it_applies()  # CUDA only: each phase's reading at its end


class PhaseTotals(BaseEvent):
    """Per phase over a span: ``epoch`` (since the previous phase_totals) or ``rest``."""

    kind: Literal[Event.PHASE_TOTALS] = Event.PHASE_TOTALS
    epoch: int
    span: str
    seconds: dict[str, float]
    transitions: dict[str, int]  # times each phase was entered
    tensors: dict[str, PhaseTensors] = {}  # summed over the traced steps (peak_live_bytes: the max)
    traced_steps: int = 0
    cuda: dict[str, CudaPhase] | None = _where_it_applies()  # CUDA only
    cuda_steps: int | None = _where_it_applies()  # CUDA only: device steps in the span


class SnapshotEvent(BaseEvent):
    """An epoch-boundary snapshot was taken: the file holds it, its tensor bytes are repeated here."""

    kind: Literal[Event.SNAPSHOT] = Event.SNAPSHOT
    label: str
    epoch: int
    file: str | None = None  # relative to the stage's directory
    tensor_bytes: dict[str, int]  # by category


class CudaHistory(BaseEvent):
    """CUDA only: an allocator-history pickle over a window of steps."""

    kind: Literal[Event.CUDA_HISTORY] = Event.CUDA_HISTORY
    epoch: int
    start: int  # steps
    stop: int
    file: str
    bytes: int
    entries_kept: int
    entries_dropped: int | None = None


class CudaOom(_Recorded):
    """CUDA only: an allocation failed (torch's OOM observer, before ``OutOfMemoryError`` is
    raised): what was asked for and the caching allocator's state at that moment (bytes)."""

    kind: Literal[Event.CUDA_OOM] = Event.CUDA_OOM
    device: int
    requested: int  # the allocation that failed
    allocated: int  # held by tensors
    reserved: int  # held by the caching allocator (allocated + cached)
    largest_free_block: int | None = None  # the largest free block inside reserved segments
    segments: int | None = None
    device_free: int | None = None  # what the driver said was free on the device
    device_total: int | None = None
    file: str | None = None  # the allocator snapshot then, under cuda/ (pytorch.org/memory_viz)


class TorchThreads(_Recorded):
    """The threads torch runs the stage with; before the workload."""

    kind: Literal[Event.TORCH_THREADS] = Event.TORCH_THREADS
    threads: int
    interop_threads: int
    asked: int | None = None  # train.threads; None: torch's default


# ---- the workload's own kinds --------------------------------------------------------------------


class WorkloadEvent(BaseEvent):
    """``probe.record`` with a kind of the workload's own: its fields pass as they are."""

    kind: str
    epoch: int | None = None
    step: int | None = None
    phase: str | None = None


HarnessEvent = (StageStart | StageEnd | StageError | EpochStart | EpochEnd | LoopEnd | SectionStart
                | SectionEnd | Watch | Metric | MemrayStart | MemrayStop | WorkerEpochEnd | TracedStep
                | PhaseTotals | SnapshotEvent | CudaHistory | TorchThreads | CudaOom)

EVENT_MODELS: dict[Event, type[BaseEvent]] = {
    Event.STAGE_START: StageStart, Event.STAGE_END: StageEnd, Event.STAGE_ERROR: StageError,
    Event.EPOCH_START: EpochStart, Event.EPOCH_END: EpochEnd, Event.LOOP_END: LoopEnd,
    Event.SECTION_START: SectionStart, Event.SECTION_END: SectionEnd, Event.WATCH: Watch,
    Event.METRIC: Metric, Event.MEMRAY_START: MemrayStart, Event.MEMRAY_STOP: MemrayStop,
    Event.WORKER_EPOCH_END: WorkerEpochEnd,
    Event.TRACED_STEP: TracedStep, Event.PHASE_TOTALS: PhaseTotals, Event.SNAPSHOT: SnapshotEvent,
    Event.CUDA_HISTORY: CudaHistory, Event.TORCH_THREADS: TorchThreads, Event.CUDA_OOM: CudaOom,
}
_WORKLOAD = "(workload)"  # the tag of any other kind


def _tag(data: Any) -> str:
    kind = data.get("kind") if isinstance(data, dict) else getattr(data, "kind", None)
    return str(kind) if isinstance(kind, str) and kind in EVENT_MODELS else _WORKLOAD


EventRecord = Annotated[
    Annotated[StageStart, Tag(Event.STAGE_START)] | Annotated[StageEnd, Tag(Event.STAGE_END)]
    | Annotated[StageError, Tag(Event.STAGE_ERROR)] | Annotated[EpochStart, Tag(Event.EPOCH_START)]
    | Annotated[EpochEnd, Tag(Event.EPOCH_END)] | Annotated[LoopEnd, Tag(Event.LOOP_END)]
    | Annotated[SectionStart, Tag(Event.SECTION_START)] | Annotated[SectionEnd, Tag(Event.SECTION_END)]
    | Annotated[Watch, Tag(Event.WATCH)] | Annotated[Metric, Tag(Event.METRIC)]
    | Annotated[MemrayStart, Tag(Event.MEMRAY_START)] | Annotated[MemrayStop, Tag(Event.MEMRAY_STOP)]
    | Annotated[WorkerEpochEnd, Tag(Event.WORKER_EPOCH_END)]
    | Annotated[TracedStep, Tag(Event.TRACED_STEP)] | Annotated[PhaseTotals, Tag(Event.PHASE_TOTALS)]
    | Annotated[SnapshotEvent, Tag(Event.SNAPSHOT)] | Annotated[CudaHistory, Tag(Event.CUDA_HISTORY)]
    | Annotated[TorchThreads, Tag(Event.TORCH_THREADS)] | Annotated[CudaOom, Tag(Event.CUDA_OOM)]
    | Annotated[WorkloadEvent, Tag(_WORKLOAD)],
    Discriminator(_tag),
]
"""One line of events.jsonl: the model of its kind, a :class:`WorkloadEvent` for any other kind."""

# Validates one line's JSON object. A ValidationError's locations start with the kind (the tag).
EVENT_ADAPTER: TypeAdapter[EventRecord] = TypeAdapter(EventRecord)

def dump(event: EventRecord) -> str:
    """``event`` as its line of events.jsonl (without the newline). A workload's own field that
    JSON has no type for is written as its ``str()``."""
    return event.model_dump_json(fallback=str)
