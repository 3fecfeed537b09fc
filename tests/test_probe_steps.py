"""The live probe's parts alone (harness.probe.steps), then the order LiveProbe drives them in.

Each hook is driven the way LiveProbe drives it: ``start_loop`` when a training loop starts,
``begin``/``end`` only on the steps it asked for, ``finish`` when the loop ends. No memray, no
device: memray trackers and ``harness.probe.cuda``'s device calls are replaced by recordings.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import read_events

from harness.control.runner import _probe_config
from harness.layout import CELL_FILE, PROBE_CONFIG_FILE
from harness.probe import cell as cellmod
from harness.probe import cuda
from harness.probe.live import LiveProbe
from harness.probe.steps import (
    NEVER,
    CellWriter,
    DeviceReader,
    HistoryWindow,
    MemrayWindow,
    StepHook,
    Steps,
    TensorTracer,
    fit_window,
)
from harness.records.events import EventRecord
from harness.records.probe_config import ProbeConfig
from harness.records.scenario import CudaConfig, MemrayConfig, Scenario, TensorsConfig

MB = 1_000_000


class RecordedEvents:
    """Stands in for the EventWriter: keeps the events."""

    def __init__(self) -> None:
        self.written: list[EventRecord] = []

    def write(self, event: EventRecord) -> None:
        self.written.append(event)

    def kinds(self) -> list[str]:
        return [e.kind for e in self.written]

    def of(self, kind: str) -> list[dict[str, Any]]:
        """The fields of each event of ``kind``, but ``t`` and ``kind``."""
        return [e.model_dump(exclude={"t", "kind"}) for e in self.written if e.kind == kind]


def drive(hook: StepHook, epoch: int, steps: int, calls: list[str] | None = None) -> Steps | None:
    """One training loop of ``steps`` steps, as LiveProbe runs it for this one hook."""
    plan = hook.start_loop(epoch)
    for step in range(steps):
        if plan is not None and step in plan:
            if calls is not None:
                calls.append(f"begin {step}")
            hook.begin(step)
            hook.on_phase("data")
            hook.on_phase("forward")
            hook.end(step)
    hook.finish(steps)
    return plan


# -- Steps ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("steps", "members"),
    [
        (Steps(), []),
        (Steps(first=3), [0, 1, 2]),
        (Steps(every=(4,)), [0, 4, 8]),
        (Steps(first=2, every=(5,)), [0, 1, 5, 10]),
        (Steps(at=frozenset({3, 7})), [3, 7]),
        (Steps(first=2, every=(5,)) | Steps(every=(3,)), [0, 1, 3, 5, 6, 9, 10]),
        (Steps(at=frozenset({4})) | Steps(first=1), [0, 4]),
    ],
)
def test_steps_membership_and_next_agree(steps: Steps, members: list[int]) -> None:
    assert [s for s in range(11) if s in steps] == members
    for s in range(11):
        after = [m for m in members if m >= s]
        expected = after[0] if after else None
        got = steps.next(s)
        assert got == expected or (expected is None and (got > 10 or got == NEVER)), s


def test_steps_with_nothing_left_is_never() -> None:
    assert Steps(first=2, at=frozenset({5})).next(6) == NEVER


# -- the cell and the settings -------------------------------------------------------------------
def test_cell_writer_marks_the_cell_for_the_sampler(tmp_path: Path) -> None:
    cellmod.create(tmp_path / CELL_FILE)
    reader = cellmod.CellReader(tmp_path / CELL_FILE)
    assert reader.read() is None  # no magic yet
    writer = CellWriter(tmp_path / CELL_FILE)
    writer.slots.step = 9
    writer.start_loop(120)
    state = reader.read()
    assert state is not None
    assert (state.phase, state.total, state.step, state.pid > 0) == ("setup", 120, 0, True)


def test_probe_json_holds_the_scenario_sections_and_reads_back_typed(tmp_path: Path) -> None:
    scenario = Scenario(
        name="s", device="cuda:1",
        memray=MemrayConfig(epochs=(1, 3), validation_epochs=None),
        tensors=TensorsConfig(trace_every=0), cuda=CudaConfig(history_max_mb=8),
    )
    raw = _probe_config(scenario, "train")
    assert list(raw) == ["stage", "device", "memray", "tensors", "cuda"]
    assert raw["memray"] == scenario.memray.model_dump(mode="json")
    (tmp_path / PROBE_CONFIG_FILE).write_text(json.dumps(raw, indent=1))
    cfg = ProbeConfig.read(tmp_path)
    assert (cfg.stage, cfg.device, cfg.on_cuda) == ("train", "cuda:1", True)
    assert (cfg.memray, cfg.tensors, cfg.cuda) == (scenario.memray, scenario.tensors, scenario.cuda)


# -- MemrayWindow --------------------------------------------------------------------------------
def _span(start: int, stop: int) -> Steps:
    """A training window's steps ``[start, stop)``: each one's end is marked in its capture."""
    return Steps(at=frozenset(range(start, stop)))


class Trackers:
    """Stands in for memray.Tracker: keeps what was entered and exited, in order."""

    def __init__(self) -> None:
        self.log: list[str] = []

    def __call__(self, path: Path, cfg: MemrayConfig) -> Any:
        log = self.log

        class Tracker:
            def __enter__(self) -> None:
                log.append(f"open {path.name}")

            def __exit__(self, *exc: object) -> None:
                log.append(f"close {path.name}")

        return Tracker()


def _window(tmp_path: Path, **cfg: Any) -> tuple[MemrayWindow, Trackers, RecordedEvents]:
    trackers, events = Trackers(), RecordedEvents()
    window = MemrayWindow(MemrayConfig(**cfg), "train", tmp_path, events, trackers)
    return window, trackers, events


def test_memray_window_opens_at_train_start_and_closes_after_train_steps(tmp_path: Path) -> None:
    window, trackers, events = _window(tmp_path, train_start=2, train_steps=3)
    calls: list[str] = []
    plan = drive(window, 1, 10, calls)
    assert plan == _span(2, 5)
    assert calls == ["begin 2", "begin 3", "begin 4"]  # each step of the window, no other
    assert trackers.log == ["open train-e1-train.bin", "close train-e1-train.bin"]
    assert events.of("memray_start") == [{"capture": "train-e1-train", "file": "memray/train-e1-train.bin",
                                          "epoch": 1, "step": 2, "section": None, "reason": "first"}]
    assert events.of("memray_stop") == [{"capture": "train-e1-train", "epoch": 1, "step": 5}]
    assert (tmp_path / "memray").is_dir()


def test_memray_window_from_step_zero_opens_before_the_loader_starts(tmp_path: Path) -> None:
    window, trackers, events = _window(tmp_path, train_start=0, train_steps=2, epochs="every")
    window.start_loop(3)
    assert trackers.log == ["open train-e3-train.bin"]  # before any step: DataLoader workers fork later
    window.begin(0)  # already open: nothing more
    window.end(0)
    window.begin(1)
    assert trackers.log == ["open train-e3-train.bin"]
    window.end(1)
    window.finish(2)
    assert trackers.log == ["open train-e3-train.bin", "close train-e3-train.bin"]


def test_memray_window_closed_by_a_loop_that_ends_inside_it(tmp_path: Path) -> None:
    window, trackers, events = _window(tmp_path, train_start=1, train_steps=100)
    drive(window, 1, 7)
    assert trackers.log == ["open train-e1-train.bin", "close train-e1-train.bin"]
    assert events.of("memray_stop")[0]["step"] == 7


@pytest.mark.parametrize(
    ("start", "steps", "total", "window"),
    [
        (100, 300, 1000, (100, 400)),  # fits: as configured
        (100, 300, 400, (100, 400)),  # fits exactly
        (100, 300, 64, (0, 300)),  # too short to reach the start: the whole epoch, from step 0
        (100, 300, 200, (0, 300)),  # too short for the whole window: ends with the epoch
        (100, 50, 120, (70, 120)),  # 50 steps that end with the epoch
        (0, 50, 20, (0, 50)),
        (100, 300, None, (100, 400)),  # unknown: as configured
        (100, 300, 0, None),  # no step: no window
    ],
)
def test_fit_window(start: int, steps: int, total: int | None, window: tuple[int, int] | None) -> None:
    assert fit_window(start, steps, total) == window


def test_memray_window_fits_a_64_step_epoch_from_step_zero(tmp_path: Path) -> None:
    # GIVEN the default window (steps 100-249) and a loop of 64 steps
    window, trackers, events = _window(tmp_path)
    window.expect_steps(64)
    # WHEN the loop starts THEN the window opens at once, before the loader forks its workers
    plan = drive(window, 1, 64)
    assert plan == _span(0, 150)
    assert trackers.log == ["open train-e1-train.bin", "close train-e1-train.bin"]
    assert [e["step"] for e in events.of("memray_start")] == [0]
    assert events.of("memray_stop")[0]["step"] == 64


def test_memray_window_as_configured_in_a_long_loop(tmp_path: Path) -> None:
    window, trackers, events = _window(tmp_path)
    window.expect_steps(1000)
    calls: list[str] = []
    assert drive(window, 1, 1000, calls) == _span(100, 250)
    assert calls == [f"begin {step}" for step in range(100, 250)]
    assert [e["step"] for e in events.of("memray_start")] == [100]
    assert [e["step"] for e in events.of("memray_stop")] == [250]


def test_memray_window_of_an_unknown_length_loop_learns_from_the_epoch_before(tmp_path: Path) -> None:
    # GIVEN a loader without len(): 64 steps an epoch, unknown beforehand
    window, trackers, events = _window(tmp_path)
    # WHEN epoch 1 runs THEN its window is planned as configured and never opens
    assert drive(window, 1, 64) == _span(100, 250)
    assert trackers.log == []
    # WHEN epoch 2 runs THEN it is planned for the 64 steps epoch 1 ran: from step 0
    window.expect_steps(-1)
    assert drive(window, 2, 64) == _span(0, 150)
    assert trackers.log == ["open train-e2-train.bin", "close train-e2-train.bin"]


def test_memray_window_told_the_length_of_one_loop_only(tmp_path: Path) -> None:
    window, _, _ = _window(tmp_path, train_start=10, train_steps=5, epochs="every")
    window.expect_steps(8)
    assert drive(window, 1, 8) == _span(3, 8)
    # the next loop is not told: planned for the 8 steps the last one ran, not told twice
    assert drive(window, 2, 30) == _span(3, 8)
    window.expect_steps(30)
    assert drive(window, 3, 30) == _span(10, 15)


@pytest.mark.parametrize(("epochs", "reason"), [((1,), "replaces"), (None, "first")])
def test_memray_window_a_loop_stopped_before_is_replaced_in_the_next(
        tmp_path: Path, epochs: tuple[int, ...] | None, reason: str) -> None:
    # GIVEN loops of a 200-step loader each left with `break` after 20 steps; a window asked for
    # in epoch 1 only (or by the default policy: epochs 1 and 2, not 3)
    window, trackers, events = _window(tmp_path, epochs=epochs)
    # WHEN epoch 1 runs THEN its window is planned for the last 150 of 200 steps and never opens
    window.expect_steps(200)
    assert drive(window, 1, 20) == _span(50, 200)
    assert trackers.log == []
    # WHEN epoch 2 runs, told 200 steps again THEN its window fits the 20 steps epoch 1 ran
    window.expect_steps(200)
    assert drive(window, 2, 20) == _span(0, 150)
    assert trackers.log == ["open train-e2-train.bin", "close train-e2-train.bin"]
    assert [e["reason"] for e in events.of("memray_start")] == [reason]
    # WHEN epoch 3 runs THEN the window opened in epoch 2: nothing is owed
    window.expect_steps(200)
    assert drive(window, 3, 20) is None


@pytest.mark.parametrize(
    "cfg",
    [{"epochs": (2,)}, {"train_steps": 0}, {"mode": "off"}, {"mode": "full"}],
    ids=["other-epoch", "no-steps", "off", "full"],
)
def test_memray_window_has_no_training_window(tmp_path: Path, cfg: dict[str, Any]) -> None:
    window, trackers, _ = _window(tmp_path, train_start=0, **cfg)
    assert drive(window, 1, 5) is None
    assert trackers.log == []


def test_memray_sections_follow_the_scenario(tmp_path: Path) -> None:
    window, trackers, events = _window(tmp_path, validation_epochs=(1,))
    assert window.open_section("validate", 1)
    assert not window.open_section("test", 0)  # one capture at a time
    window.close(epoch=1, step=30)
    assert not window.open_section("validate", 2)  # not in memray.validation_epochs
    assert not window.open_section("forward", 1)
    assert window.open_section("test", 0)
    window.close(epoch=0, step=30)
    assert trackers.log == ["open train-e1-validate.bin", "close train-e1-validate.bin",
                            "open train-test.bin", "close train-test.bin"]
    assert [e["section"] for e in events.of("memray_start")] == ["validate", "test"]


def test_memray_full_mode_is_one_capture_of_the_stage(tmp_path: Path) -> None:
    window, trackers, _ = _window(tmp_path, mode="full")
    window.start_stage()
    assert window.active
    assert not window.open_section("validate", 1)
    window.close(epoch=2, step=0)
    assert trackers.log == ["open train.bin", "close train.bin"] and not window.active


# -- TensorTracer --------------------------------------------------------------------------------
def test_tracer_traces_the_first_steps_and_every_nth() -> None:
    tracer = TensorTracer(TensorsConfig(trace_steps=3, trace_every=4), RecordedEvents(), list)
    calls: list[str] = []
    drive(tracer, 1, 10, calls)
    assert calls == ["begin 0", "begin 1", "begin 2", "begin 4", "begin 8"]
    off = TensorTracer(TensorsConfig(trace_steps=0, trace_every=0), RecordedEvents(), list)
    assert off.start_loop(1) is None


def test_tracer_writes_one_event_a_step_with_each_phases_bytes() -> None:
    events = RecordedEvents()
    tracer = TensorTracer(TensorsConfig(trace_steps=1, trace_every=0), events, list)
    tracer.start_loop(2)
    tracer.begin(0)
    tracer.on_phase("forward")
    keep = torch.zeros(100)  # 400 bytes
    tracer.on_phase("backward")
    keep2 = torch.zeros(25, dtype=torch.float64)  # 200 bytes
    tracer.end(0)
    (event,) = events.of("traced_step")
    assert (event["epoch"], event["step"], event["phases"]) == (2, 0, ["forward", "backward"])
    assert event["tensors"]["forward"]["bytes"] == 400 and event["tensors"]["backward"]["bytes"] == 200
    assert "cuda" not in event
    totals = tracer.totals()
    assert totals["traced_steps"] == 1 and totals["tensors"]["forward"]["count"] == 1
    assert tracer.totals() == {"tensors": {}, "traced_steps": 0}  # a new span starts from zero
    del keep, keep2


def test_tracer_records_nothing_for_a_step_that_never_came() -> None:
    events = RecordedEvents()
    tracer = TensorTracer(TensorsConfig(trace_steps=5, trace_every=0), events, list)
    tracer.start_loop(1)
    tracer.begin(0)
    tracer.on_phase("data")
    tracer.abandon(0)
    tracer.finish(0)
    assert events.written == [] and tracer.totals()["traced_steps"] == 0
    torch.zeros(3)  # the dispatch mode is off again


# -- DeviceReader (fake device functions) --------------------------------------------------------
class FakeDevice:
    """allocated = 10 MB more per reading, the peak 5 MB above it."""

    def __init__(self) -> None:
        self.readings = 0
        self.resets = 0

    def sample(self, device: str, driver: bool = True) -> dict[str, Any]:
        self.readings += 1
        alloc = 10 * MB * self.readings
        return {"t": 0.0, "allocated": alloc, "reserved": 100 * MB, "peak_allocated": alloc + 5 * MB,
                "peak_reserved": 100 * MB, "active": alloc, "inactive_split": 0, "retries": 0, "ooms": 0}

    def reset(self, device: str) -> None:
        self.resets += 1


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeDevice:
    dev = FakeDevice()
    monkeypatch.setattr(cuda, "device_sample", dev.sample)
    monkeypatch.setattr(cuda, "reset_phase_peak", dev.reset)
    return dev


def _cell(tmp_path: Path) -> Any:
    cellmod.create(tmp_path / CELL_FILE)
    return CellWriter(tmp_path / CELL_FILE).slots


def test_device_reader_reads_each_phase_of_its_steps(tmp_path: Path, fake: FakeDevice) -> None:
    cell = _cell(tmp_path)
    reader = DeviceReader(CudaConfig(sample_every=4), "cuda", cell)
    calls: list[str] = []
    drive(reader, 1, 10, calls)
    assert calls == ["begin 0", "begin 4", "begin 8"]
    # each step: data read when forward begins, forward at the step's end
    assert fake.readings == 3 * 2
    assert fake.resets == 3 * (1 + 2)  # when the step begins, and after each reading
    assert list(reader.step) == ["data", "forward"] and reader.step["forward"]["allocated"] == 60 * MB
    assert (cell.cuda_allocated, cell.cuda_reserved) == (60 * MB, 100 * MB)
    totals = reader.totals()
    assert totals["cuda_steps"] == 3
    assert totals["cuda"]["data"]["readings"] == 3
    assert totals["cuda"]["forward"]["peak_allocated"] == 65 * MB
    assert totals["cuda"]["data"]["allocated"] == 50 * MB  # the latest
    assert reader.totals() == {"cuda": {}, "cuda_steps": 0}


def test_device_reader_abandoned_step_reads_and_counts_nothing(tmp_path: Path, fake: FakeDevice) -> None:
    reader = DeviceReader(CudaConfig(sample_every=1), "cuda", _cell(tmp_path))
    reader.start_loop(1)
    reader.begin(0)
    reader.on_phase("data")
    reader.abandon(0)
    assert (fake.readings, fake.resets) == (0, 1)
    assert reader.totals() == {"cuda": {}, "cuda_steps": 0}


def test_device_reader_section_is_one_window(tmp_path: Path, fake: FakeDevice) -> None:
    reader = DeviceReader(CudaConfig(), "cuda", _cell(tmp_path))
    reader.section_begin()
    reader.section_end("validate")
    assert (fake.readings, fake.resets) == (1, 2)
    assert reader.totals()["cuda"]["validate"]["readings"] == 1


# -- HistoryWindow -------------------------------------------------------------------------------
@pytest.fixture
def history(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    log: list[str] = []
    monkeypatch.setattr(cuda, "start_history", lambda **kw: log.append(f"start {kw['device']}"))

    def dump(path: Any, max_bytes: int, **kw: Any) -> Any:
        log.append(f"dump {Path(path).parent.name}/{Path(path).name} {max_bytes}")
        return type("Dump", (), {"bytes": 10, "entries_kept": 5, "entries_dropped": 1})()

    monkeypatch.setattr(cuda, "dump_history", dump)
    return log


def test_history_window_records_its_steps_of_its_epoch(tmp_path: Path, history: list[str]) -> None:
    events = RecordedEvents()
    hook = HistoryWindow(CudaConfig(history_epoch=2, history_start=3, history_steps=4, history_max_mb=0.5),
                         "train", "cuda:0", tmp_path, events)
    assert drive(hook, 1, 20) is None
    calls: list[str] = []
    drive(hook, 2, 20, calls)
    assert calls == ["begin 2", "begin 6"]  # after 3 steps are done, and after 7
    assert history == ["start cuda:0", f"dump cuda/train-e2-steps3-7.pickle {512 * 1024}"]
    assert events.of("cuda_history") == [{"epoch": 2, "start": 3, "stop": 7,
                                          "file": "cuda/train-e2-steps3-7.pickle", "bytes": 10,
                                          "entries_kept": 5, "entries_dropped": 1}]


def test_history_window_dumped_when_the_loop_ends_inside_it(tmp_path: Path, history: list[str]) -> None:
    events = RecordedEvents()
    hook = HistoryWindow(CudaConfig(history_epoch=1, history_start=2, history_steps=50), "t", "cuda",
                         tmp_path, events)
    drive(hook, 1, 10)
    assert history == ["start cuda", f"dump cuda/t-e1-steps2-10.pickle {64 * 1024 * 1024}"]
    assert HistoryWindow(CudaConfig(history_epoch=0), "t", "cuda", tmp_path, events).start_loop(0) is None


# -- LiveProbe: the order it drives the hooks in --------------------------------------------------
class Recorder(StepHook):
    listens = True

    def __init__(self, name: str, steps: Steps, log: list[str]) -> None:
        self.name, self.steps, self.log = name, steps, log

    def start_loop(self, epoch: int) -> Steps | None:
        self.log.append(f"{self.name} start_loop {epoch}")
        return self.steps

    def begin(self, step: int) -> None:
        self.log.append(f"{self.name} begin {step}")

    def on_phase(self, name: str) -> None:
        self.log.append(f"{self.name} {name}")

    def end(self, step: int) -> None:
        self.log.append(f"{self.name} end {step}")

    def abandon(self, step: int) -> None:
        self.log.append(f"{self.name} abandon {step}")

    def finish(self, steps: int) -> None:
        self.log.append(f"{self.name} finish {steps}")


def _live(tmp_path: Path, tensors: TensorsConfig) -> LiveProbe:
    cfg = ProbeConfig(stage="train", device="cpu", memray=MemrayConfig(mode="off"), tensors=tensors,
                      cuda=CudaConfig())
    (tmp_path / PROBE_CONFIG_FILE).write_text(json.dumps(cfg.model_dump(mode="json")))
    cellmod.create(tmp_path / CELL_FILE)
    return LiveProbe(tmp_path)


def test_live_probe_calls_hooks_only_on_their_steps_in_a_fixed_order(tmp_path: Path) -> None:
    p = _live(tmp_path, TensorsConfig(trace_steps=0, trace_every=0, snapshots=False, composition=False))
    log: list[str] = []
    p._hooks = (Recorder("a", Steps(at=frozenset({1})), log),
                Recorder("b", Steps(at=frozenset({1, 3})), log))
    with p.epoch(1):
        for _ in p.iterate(range(4)):
            p.phase("forward")
    p.close()
    assert log == [
        "a start_loop 1", "b start_loop 1",
        "a begin 1", "b begin 1", "a data", "b data", "a forward", "b forward", "b end 1", "a end 1",
        "b begin 3", "b data", "b forward", "b end 3",
        "b finish 4", "a finish 4",
    ]


def test_live_probe_abandons_a_step_the_loader_never_gave(tmp_path: Path) -> None:
    p = _live(tmp_path, TensorsConfig(trace_steps=0, trace_every=0, snapshots=False, composition=False))
    log: list[str] = []
    p._hooks = (Recorder("a", Steps(every=(2,)), log),)
    for _ in p.iterate(range(2)):
        pass
    p.close()
    assert log[-4:] == ["a begin 2", "a data", "a abandon 2", "a finish 2"]


def test_live_probe_traced_steps_and_phase_totals(tmp_path: Path) -> None:
    p = _live(tmp_path, TensorsConfig(trace_steps=2, trace_every=3, snapshots=False, composition=False))
    with p.epoch(1):
        for _ in p.iterate(range(6)):  # step 6 would be traced: the loader ends first
            p.phase("forward")
            torch.zeros(10)
    p.close()
    events = read_events(tmp_path)
    traced = [e for e in events if e["kind"] == "traced_step"]
    assert [e["step"] for e in traced] == [0, 1, 3]
    assert all(e["phases"] == ["data", "forward"] for e in traced)
    totals = next(e for e in events if e["kind"] == "phase_totals")
    assert totals["traced_steps"] == 3 and totals["tensors"]["forward"]["bytes"] == 3 * 40
    assert totals["transitions"] == {"data": 7, "forward": 6}  # step 6 waited for data, got none
    assert "cuda" not in totals
    loop_end = next(e for e in events if e["kind"] == "loop_end")
    assert (loop_end["steps"], loop_end["total"]) == (6, 6)


def _live_memray(tmp_path: Path) -> tuple[LiveProbe, Trackers]:
    cfg = ProbeConfig(stage="train", device="cpu", memray=MemrayConfig(),
                      tensors=TensorsConfig(trace_steps=0, trace_every=0, snapshots=False, composition=False),
                      cuda=CudaConfig())
    (tmp_path / PROBE_CONFIG_FILE).write_text(json.dumps(cfg.model_dump(mode="json")))
    cellmod.create(tmp_path / CELL_FILE)
    p = LiveProbe(tmp_path)
    trackers = Trackers()
    p._memray._tracker = trackers
    return p, trackers


def test_live_probe_fits_the_default_window_to_64_step_epochs(tmp_path: Path) -> None:
    p, trackers = _live_memray(tmp_path)
    for epoch in (1, 2):
        with p.epoch(epoch):
            for _ in p.iterate(range(64)):
                p.phase("forward")
    p.close()
    assert trackers.log == ["open train-e1-train.bin", "close train-e1-train.bin",
                            "open train-e2-train.bin", "close train-e2-train.bin"]
    starts = [e for e in read_events(tmp_path) if e["kind"] == "memray_start"]
    assert [(e["epoch"], e["step"]) for e in starts] == [(1, 0), (2, 0)]


def test_live_probe_window_of_a_loader_without_len_opens_in_the_next_epoch(tmp_path: Path) -> None:
    p, trackers = _live_memray(tmp_path)
    for epoch in (1, 2):
        with p.epoch(epoch):
            for _ in p.iterate(iter(range(64))):
                p.phase("forward")
    p.close()
    assert trackers.log == ["open train-e2-train.bin", "close train-e2-train.bin"]


def test_live_probe_window_fits_the_step_limit(tmp_path: Path) -> None:
    p, trackers = _live_memray(tmp_path)
    with p.epoch(1):
        for _ in p.iterate(range(1000), limit=120):
            p.phase("forward")
    p.close()
    (start,) = [e for e in read_events(tmp_path) if e["kind"] == "memray_start"]
    (stop,) = [e for e in read_events(tmp_path) if e["kind"] == "memray_stop"]
    assert (start["step"], stop["step"]) == (0, 120)
