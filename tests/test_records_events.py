"""events.jsonl through its one definition (harness.records.events): what the probe's writer
writes, the reader gives back as the same objects; a line that does not fit its kind is a named
problem; a workload's own kind is kept with its fields."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from harness.analysis.load import Stage, empty_samples, read_events
from harness.layout import CELL_FILE, EVENTS_FILE, PROBE_CONFIG_FILE, Event
from harness.probe import cell as cellmod
from harness.probe.live import LiveProbe
from harness.probe.steps import EventWriter
from harness.records.events import (
    EVENT_MODELS,
    CudaHistory,
    CudaOom,
    CudaPhase,
    CudaReading,
    EpochEnd,
    EpochStart,
    EventRecord,
    LoopEnd,
    MemrayStart,
    MemrayStop,
    Metric,
    PhaseTensors,
    PhaseTotals,
    SectionEnd,
    SectionStart,
    SnapshotEvent,
    StageEnd,
    StageError,
    StageStart,
    TorchThreads,
    TracedStep,
    Watch,
    WorkerEpochEnd,
    WorkloadEvent,
)
from harness.records.probe_config import ProbeConfig
from harness.records.scenario import CudaConfig, MemrayConfig, TensorsConfig

TENSORS = {"forward": PhaseTensors(count=9, bytes=900, peak_live_bytes=5000, steps=1)}
READING = CudaReading(t=1.5, allocated=10, reserved=20, peak_allocated=15, peak_reserved=20, active=10,
                      inactive_split=0, retries=0, ooms=0)

# One of each kind, every field given (the CUDA ones too), then the same written as on the CPU.
EVERY_KIND: list[EventRecord] = [
    StageStart(t=1.0, stage="train", pid=100),
    TorchThreads(t=1.1, epoch=0, step=0, phase="setup", threads=2, interop_threads=2, asked=None),
    Watch(t=1.2, parameters=6882, parameter_bytes=27528),
    EpochStart(t=1.3, epoch=1),
    MemrayStart(t=1.4, capture="train-e1-train", file="memray/train-e1-train.bin", epoch=1, step=0,
                section=None, reason="regrow", growth=40_000_000),
    TracedStep(t=1.5, epoch=1, step=0, phases=["data", "forward"], tensors=TENSORS,
               cuda={"forward": READING}),
    TracedStep(t=1.55, epoch=1, step=1, phases=["data", "forward"], tensors=TENSORS),
    MemrayStop(t=1.6, capture="train-e1-train", epoch=1, step=150),
    WorkerEpochEnd(t=1.62, epoch=1, worker=0, pid=201, batches=96, rss=500 << 20, shared=380 << 20,
                   uss=90 << 20),
    CudaOom(t=1.66, epoch=1, step=151, phase="backward", device=0, requested=2 << 30,
            allocated=70 << 20, reserved=108 << 20, largest_free_block=20 << 20, segments=6,
            device_free=300 << 20, device_total=80 << 30, file="cuda/train-oom1.pickle"),
    CudaHistory(t=1.65, epoch=1, start=100, stop=150, file="cuda/train-e1-steps100-150.pickle",
                bytes=1234, entries_kept=10, entries_dropped=2),
    LoopEnd(t=1.7, epoch=1, steps=12000, total=12000, memray_reason="first"),
    LoopEnd(t=1.71, epoch=1, steps=3, total=-1, memray_reason=None),
    SectionStart(t=1.8, section="validate", epoch=1),
    SectionEnd(t=1.9, section="validate", epoch=1, steps=1500),
    Metric(t=2.0, name="val_accuracy", value=41.5, epoch=1, correct=415, total=1000),
    Metric(t=2.05, name="loss", value=1.25, epoch=1, step=2000),
    Metric(t=2.06, name="count", value=3, epoch=1),
    PhaseTotals(t=2.1, epoch=1, span="epoch", seconds={"data": 1.25, "forward": 0.5},
                transitions={"data": 3, "forward": 2}, tensors=TENSORS, traced_steps=2,
                cuda={"forward": CudaPhase(readings=1, peak_allocated=15, peak_reserved=20, allocated=10,
                                           reserved=20, inactive_split=0, retries=0, ooms=0)},
                cuda_steps=1),
    PhaseTotals(t=2.15, epoch=1, span="rest", seconds={}, transitions={}, tensors={}, traced_steps=0),
    EpochEnd(t=2.2, epoch=1, rss=300_000_000),
    SnapshotEvent(t=2.3, label="epoch-1", epoch=1, file="snapshots/epoch-1.json",
             tensor_bytes={"parameters": 27528, "other": 0}),
    StageError(t=2.4, epoch=1, step=3, phase="forward", stage="train", error="RuntimeError",
               message="boom"),
    WorkloadEvent(t=2.45, kind="my_marker", epoch=1, step=3, phase="forward", note="mine", sizes=[1, 2]),
    StageEnd(t=2.5, stage="train"),
]


def _write(path: Path, events: list[EventRecord]) -> None:
    writer = EventWriter(path)
    for ev in events:
        writer.write(ev)
    writer.close()


def test_every_kind_has_its_model_and_every_model_its_kind() -> None:
    assert set(EVENT_MODELS) == set(Event)
    for kind, model in EVENT_MODELS.items():
        assert model.model_fields["kind"].default == kind
    assert {type(e) for e in EVERY_KIND} == {*EVENT_MODELS.values(), WorkloadEvent}


def test_what_the_writer_writes_the_reader_gives_back(tmp_path: Path) -> None:
    # GIVEN one event of each kind written by the probe's writer
    path = tmp_path / EVENTS_FILE
    _write(path, EVERY_KIND)
    # WHEN the analysis reads the file
    problems: list[str] = []
    got = read_events(path, problems)
    # THEN the same objects, in order, of the same types, and no problem
    assert problems == []
    assert got == EVERY_KIND
    assert [type(e) for e in got] == [type(e) for e in EVERY_KIND]
    # a field that applies only sometimes is left out where it does not (today's lines)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    cpu_step = next(x for x in lines if x["kind"] == "traced_step" and x["step"] == 1)
    assert "cuda" not in cpu_step
    rest = next(x for x in lines if x["kind"] == "phase_totals" and x["span"] == "rest")
    assert "cuda" not in rest and "cuda_steps" not in rest
    # ... and a field written null stays null, told apart from one a run never wrote
    no_window = next(x for x in lines if x["kind"] == "loop_end" and x["total"] == -1)
    assert no_window["memray_reason"] is None
    assert lines[0] == {"t": 1.0, "kind": "stage_start", "stage": "train", "pid": 100}


def test_a_loop_end_without_memray_reason_is_told_from_one_that_asked_for_none(tmp_path: Path) -> None:
    path = tmp_path / EVENTS_FILE
    path.write_text('{"t": 1.0, "kind": "loop_end", "epoch": 1, "steps": 2, "total": 2}\n'
                    '{"t": 2.0, "kind": "loop_end", "epoch": 2, "steps": 2, "total": 2, "memray_reason": null}\n')
    old, new = read_events(path, [])
    assert isinstance(old, LoopEnd) and isinstance(new, LoopEnd)
    assert "memray_reason" not in old.model_fields_set
    assert "memray_reason" in new.model_fields_set and new.memray_reason is None


# A field of the wrong type, one per kind: (line, the field the problem names)
WRONG = [
    ({"t": 1.0, "kind": "stage_start", "stage": "train", "pid": "100"}, "pid"),
    ({"t": 1.0, "kind": "stage_end", "stage": 3}, "stage"),
    ({"t": 1.0, "kind": "stage_error", "epoch": 0, "step": 0, "phase": "setup", "stage": "train",
      "error": None, "message": ""}, "error"),
    ({"t": 1.0, "kind": "epoch_start", "epoch": 1.5}, "epoch"),
    ({"t": 1.0, "kind": "epoch_end", "epoch": 1, "rss": "big"}, "rss"),
    ({"t": 1.0, "kind": "loop_end", "epoch": 1, "steps": "7", "total": 7}, "steps"),
    ({"t": 1.0, "kind": "section_start", "section": ["validate"], "epoch": 1}, "section"),
    ({"t": 1.0, "kind": "section_end", "section": "validate", "epoch": 1, "steps": True}, "steps"),
    ({"t": 1.0, "kind": "watch", "parameters": 1, "parameter_bytes": "4"}, "parameter_bytes"),
    ({"t": 1.0, "kind": "metric", "name": "loss", "value": "0.5", "epoch": 1}, "value"),
    ({"t": 1.0, "kind": "memray_start", "capture": "c", "epoch": 1, "step": 0, "growth": "1"}, "growth"),
    ({"t": 1.0, "kind": "memray_stop", "capture": "c", "epoch": 1, "step": "0"}, "step"),
    ({"t": 1.0, "kind": "worker_epoch_end", "epoch": 1, "worker": 0, "pid": 201, "batches": 96,
      "rss": 1, "shared": 1, "uss": 1.5}, "uss"),
    ({"t": 1.0, "kind": "traced_step", "epoch": 1, "step": 0, "phases": "forward", "tensors": {}},
     "phases"),
    ({"t": 1.0, "kind": "phase_totals", "epoch": 1, "span": "epoch", "seconds": {"data": "1"},
      "transitions": {}}, "seconds.data"),
    ({"t": 1.0, "kind": "snapshot", "label": "end", "epoch": 0, "tensor_bytes": {"other": "1"}},
     "tensor_bytes.other"),
    ({"t": 1.0, "kind": "cuda_history", "epoch": 1, "start": 0, "stop": 1, "file": "f", "bytes": 1,
      "entries_kept": "1"}, "entries_kept"),
    ({"t": 1.0, "kind": "torch_threads", "epoch": 0, "step": 0, "phase": "setup", "threads": "2",
      "interop_threads": 2}, "threads"),
    ({"t": 1.0, "kind": "cuda_oom", "epoch": 1, "step": 3, "phase": "backward", "device": 0,
      "requested": "2 GiB", "allocated": 1, "reserved": 2}, "requested"),
    ({"t": 1.0, "kind": "my_marker", "epoch": "one"}, "epoch"),
    ({"t": "1.0", "kind": "my_marker"}, "t"),
]


def test_every_kind_is_covered_by_a_wrong_field() -> None:
    assert {line["kind"] for line, _ in WRONG} >= set(Event)


@pytest.mark.parametrize(("line", "field"), WRONG, ids=[f"{x['kind']}-{f}" for x, f in WRONG])
def test_a_field_of_the_wrong_type_is_a_problem_naming_file_line_and_field(
        tmp_path: Path, line: dict[str, Any], field: str) -> None:
    # GIVEN a whole event, the bad line, and another whole event
    stage = tmp_path / "stages" / "train"
    stage.mkdir(parents=True)
    path = stage / EVENTS_FILE
    _write(path, [StageStart(t=0.5, stage="train", pid=1)])
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(line) + "\n")
    _write(path, [StageEnd(t=2.0, stage="train")])
    # WHEN it is read
    problems: list[str] = []
    got = read_events(path, problems)
    # THEN the bad line alone is skipped, and the problem names the file, the line and the field
    assert [e.kind for e in got] == ["stage_start", "stage_end"]
    (problem,) = problems
    assert problem.startswith(f"stages/train/{EVENTS_FILE} line 2: {field}: "), problem
    assert line["kind"] + "." not in problem  # the union's tag is not shown as a field


def _live(tmp_path: Path) -> LiveProbe:
    cfg = ProbeConfig(stage="train", device="cpu", memray=MemrayConfig(mode="off"),
                      tensors=TensorsConfig(trace_steps=0, trace_every=0, snapshots=False, composition=False),
                      cuda=CudaConfig())
    (tmp_path / PROBE_CONFIG_FILE).write_text(json.dumps(cfg.model_dump(mode="json")))
    cellmod.create(tmp_path / CELL_FILE)
    return LiveProbe(tmp_path)


def test_a_workloads_own_kind_and_fields_are_kept(tmp_path: Path) -> None:
    # GIVEN a workload recording a kind of its own, and a metric with fields of its own
    p = _live(tmp_path)
    with p.epoch(1):
        p.record("lr_change", lr=0.01, why="plateau", where=Path("/x"))
        p.metric("val_accuracy", np.float32(40.5), correct=np.int64(405), total=1000)
    p.close()
    # WHEN read back
    problems: list[str] = []
    events = read_events(tmp_path / EVENTS_FILE, problems)
    # THEN the workload's event is a WorkloadEvent with the probe's place and its own fields
    assert problems == []
    (mine,) = [e for e in events if e.kind == "lr_change"]
    assert isinstance(mine, WorkloadEvent)
    assert (mine.epoch, mine.step, mine.phase) == (1, 0, "setup")
    assert mine.model_extra == {"lr": 0.01, "why": "plateau", "where": "/x"}  # a Path: its str()
    (metric,) = [e for e in events if isinstance(e, Metric)]
    assert (metric.name, metric.value, metric.epoch) == ("val_accuracy", 40.5, 1)
    assert metric.model_extra == {"correct": "405", "total": 1000}  # numpy's int: its str(), as before
    # ... and a stage hands out each kind by its model, the workload's by its name
    stage = Stage("train", tmp_path, None, empty_samples(), events, {}, [])
    assert stage.events_of(Metric) == [metric] and stage.events_of("lr_change") == [mine]


def test_a_metric_that_is_no_number_is_said_not_raised(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    p = _live(tmp_path)
    p.metric("loss", "low")  # type: ignore[arg-type]
    p.metric("loss", 0.25)
    p.close()
    assert "harness: probe.metric('loss'): value: Input should be a valid number" in capsys.readouterr().err
    assert [e.value for e in read_events(tmp_path / EVENTS_FILE, []) if isinstance(e, Metric)] == [0.25]


def test_a_metric_that_is_not_a_finite_number_reads_as_not_recorded(tmp_path: Path) -> None:
    # a loss gone NaN or inf is what the workload measured, not damage; summary.json holds no NaN
    path = tmp_path / EVENTS_FILE
    _write(path, [Metric(t=1.0, name="loss", value=float("inf"), epoch=1),
                  Metric(t=2.0, name="loss", value=float("nan"), epoch=1)])
    problems: list[str] = []
    assert [e.value for e in read_events(path, problems) if isinstance(e, Metric)] == [None, None]
    assert problems == []
