"""Which epochs get a memray training window and why, how long a validation or test capture runs,
and that the processes forked during a capture stop tracking when it closes (harness.probe.steps).

No memray here: trackers are recordings (the end-to-end check is in tests/test_probe_threads.py).
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import read_events

from harness.layout import CELL_FILE, PROBE_CONFIG_FILE
from harness.probe import cell as cellmod
from harness.probe.live import LiveProbe
from harness.probe.steps import NEVER, EpochWindows, MemrayWindow
from harness.records.events import EventRecord
from harness.records.probe_config import ProbeConfig
from harness.records.scenario import CudaConfig, MemrayConfig, TensorsConfig

MiB = 1 << 20


def _windows(policy: EpochWindows, rss_mib: Any, epochs: int) -> list[tuple[int, str]]:
    """(epoch, reason) of each window over ``epochs`` epochs whose ends find ``rss_mib(epoch)`` MiB."""
    out = []
    for epoch in range(1, epochs + 1):
        reason = policy.reason(epoch)
        if reason is not None:
            out.append((epoch, reason))
        policy.epoch_end(epoch, int(rss_mib(epoch) * MiB))
    return out


# -- EpochWindows: known answers -----------------------------------------------------------------
def test_steady_memory_gets_the_first_two_epochs_then_powers_of_two() -> None:
    # GIVEN the default policy and an RSS that moves by the noise measured on the baseline
    noise = [0.0, 0.47, 1.3, 1.7, 1.9, 1.9, 2.1, 2.1]
    got = _windows(EpochWindows(None, 32 * MiB), lambda e: 738 + noise[e % 8], 100)
    # THEN epochs 1..100 have windows in 1, 2 and each power of two: 7 of 100
    assert got == [(1, "first"), (2, "first"), (4, "spaced"), (8, "spaced"), (16, "spaced"),
                   (32, "spaced"), (64, "spaced")]


def test_a_step_in_memory_opens_a_window_in_the_next_epoch_once() -> None:
    # GIVEN RSS that jumps by 40 MiB at the end of epoch 5 and stays there
    policy = EpochWindows(None, 32 * MiB)
    got = _windows(policy, lambda e: 800 + (40 if e >= 5 else 0), 20)
    # THEN epoch 6 gets a window for it, and the new level is the baseline from then on
    assert got == [(1, "first"), (2, "first"), (4, "spaced"), (6, "regrow"), (8, "spaced"),
                   (16, "spaced")]


def test_steady_growth_opens_a_window_each_time_it_adds_up_to_regrow_mb() -> None:
    # GIVEN RSS growing 10 MiB an epoch and regrow_mb 32
    policy = EpochWindows(None, 32 * MiB)
    got = []
    for epoch in range(1, 41):
        reason = policy.reason(epoch)
        if reason is not None:
            got.append((epoch, reason, policy.growth(epoch)))
        policy.epoch_end(epoch, (100 + 10 * epoch) * MiB)
    # THEN a regrow window follows each epoch that ends > 32 MiB above the last window's end,
    # counted from whichever window came last (a spaced one resets it too)
    assert got == [(1, "first", None), (2, "first", None), (4, "spaced", None), (8, "spaced", None),
                   (13, "regrow", 40 * MiB), (16, "spaced", None), (21, "regrow", 40 * MiB),
                   (26, "regrow", 40 * MiB), (31, "regrow", 40 * MiB), (32, "spaced", None),
                   (37, "regrow", 40 * MiB)]


def test_growth_of_exactly_regrow_mb_is_not_enough() -> None:
    got = _windows(EpochWindows(None, 32 * MiB), lambda e: 800 + (32 if e >= 3 else 0), 7)
    assert [e for e, _ in got] == [1, 2, 4]


def test_memory_that_shrinks_opens_nothing() -> None:
    got = _windows(EpochWindows(None, 32 * MiB), lambda e: 2000 - 100 * e, 10)
    assert [e for e, _ in got] == [1, 2, 4, 8]


def test_regrow_zero_never_adds_a_window() -> None:
    got = _windows(EpochWindows(None, 0), lambda e: 100 * e, 20)
    assert [e for e, _ in got] == [1, 2, 4, 8, 16]


@pytest.mark.parametrize(
    ("epochs", "expected"),
    [((3, 5), [(3, "listed"), (5, "listed")]),
     ((), []),
     ("every", [(e, "every") for e in range(1, 11)])],
    ids=["listed", "none-listed", "every"],
)
def test_explicit_epochs_keep_their_meaning_whatever_the_memory(
        epochs: tuple[int, ...] | str, expected: list[tuple[int, str]]) -> None:
    got = _windows(EpochWindows(epochs, 32 * MiB), lambda e: 100 * e, 10)  # type: ignore[arg-type]
    assert got == expected


def test_a_loop_outside_any_epoch_counts_as_the_first() -> None:
    assert EpochWindows(None, 32 * MiB).reason(0) == "first"


# -- MemrayWindow --------------------------------------------------------------------------------
class RecordedEvents:
    def __init__(self) -> None:
        self.written: list[EventRecord] = []

    def write(self, event: EventRecord) -> None:
        self.written.append(event)

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e.model_dump(exclude={"t", "kind"}) for e in self.written if e.kind == kind]


class Trackers:
    """Stands in for memray.Tracker: keeps what was entered and exited, and in which process."""

    def __init__(self, directory: Path | None = None) -> None:
        self.log: list[str] = []
        self.directory = directory  # where a forked child notes that it closed its tracker

    def __call__(self, path: Path, cfg: MemrayConfig) -> Any:
        log, directory, parent = self.log, self.directory, os.getpid()

        class Tracker:
            def __enter__(self) -> None:
                log.append(f"open {path.name}")

            def __exit__(self, *exc: object) -> None:
                if os.getpid() != parent and directory is not None:
                    # written whole, then named: the waiting child exits once the name exists
                    done = directory / f"closed-{os.getpid()}"
                    done.with_suffix(".tmp").write_text(path.name)
                    done.with_suffix(".tmp").rename(done)
                log.append(f"close {path.name}")

        return Tracker()


def _window(tmp_path: Path, trackers: Trackers | None = None,
            **cfg: Any) -> tuple[MemrayWindow, Trackers, RecordedEvents]:
    trackers, events = trackers or Trackers(), RecordedEvents()
    return MemrayWindow(MemrayConfig(**cfg), "train", tmp_path, events, trackers), trackers, events


def test_a_regrow_window_says_why_and_by_how_much(tmp_path: Path) -> None:
    # GIVEN epoch ends at these RSS (MiB); epoch 3 ends 40 MiB above epoch 2 (the last window's),
    # epoch 5 60 MiB above epoch 4 (a window, scheduled anyway); epoch 5 runs no training loop
    window, trackers, events = _window(tmp_path, train_start=0, train_steps=2)
    rss = {1: 500, 2: 600, 3: 640, 4: 640, 5: 700}
    for epoch in range(1, 7):
        if epoch != 5:
            planned = window.start_loop(epoch)
            assert (planned is not None) == (epoch != 3)
            window.finish(2)
        if epoch in rss:
            window.epoch_end(epoch, rss[epoch] * MiB)
    # THEN epoch 4's window is the schedule's, epoch 6's the growth's, with the growth in bytes
    assert [(e["epoch"], e["reason"], e.get("growth")) for e in events.of("memray_start")] == [
        (1, "first", None), (2, "first", None), (4, "spaced", None), (6, "regrow", 60 * MiB)]
    assert window.reason == "regrow"


def test_no_reason_without_training_windows(tmp_path: Path) -> None:
    window, _, _ = _window(tmp_path, train_steps=0)
    window.start_loop(1)
    assert window.reason is None


def test_a_section_capture_ends_after_eval_batches(tmp_path: Path) -> None:
    window, trackers, events = _window(tmp_path, eval_batches=3)
    assert window.open_section("validate", 1)
    assert window.section_stop == 3
    window.close(epoch=1, step=3)
    assert window.section_stop == NEVER and not window.active
    window.close_section(epoch=1, step=10)  # the section's end: nothing more to close
    assert trackers.log == ["open train-e1-validate.bin", "close train-e1-validate.bin"]
    assert [e["step"] for e in events.of("memray_stop")] == [3]


@pytest.mark.parametrize("eval_batches", [0, None])
def test_eval_batches_zero_or_none_is_the_whole_pass(tmp_path: Path, eval_batches: int | None) -> None:
    window, _, _ = _window(tmp_path, eval_batches=eval_batches)
    assert window.open_section("test", 0)
    assert window.section_stop == NEVER


def test_the_end_of_a_section_closes_only_its_own_capture(tmp_path: Path) -> None:
    window, trackers, _ = _window(tmp_path, eval_batches=2)
    assert window.open_section("validate", 1)
    window.close(epoch=1, step=2)
    assert window.open("other", epoch=1, step=2, section=None)
    window.close_section(epoch=1, step=9)
    assert window.active  # "other" runs on
    assert trackers.log == ["open train-e1-validate.bin", "close train-e1-validate.bin", "open other.bin"]


# -- LiveProbe -----------------------------------------------------------------------------------
class _Memory:
    """Stands in for psutil.Process: the RSS the next epoch end reads."""

    def __init__(self) -> None:
        self.rss = 700 * MiB

    def memory_info(self) -> Any:
        return type("Info", (), {"rss": self.rss})()


def _live(tmp_path: Path, **memray: Any) -> tuple[LiveProbe, Trackers, _Memory]:
    cfg = ProbeConfig(stage="train", device="cpu", memray=MemrayConfig(**memray),
                      tensors=TensorsConfig(trace_steps=0, trace_every=0, snapshots=False, composition=False),
                      cuda=CudaConfig())
    (tmp_path / PROBE_CONFIG_FILE).write_text(json.dumps(cfg.model_dump(mode="json")))
    cellmod.create(tmp_path / CELL_FILE)
    p = LiveProbe(tmp_path)
    trackers, memory = Trackers(), _Memory()
    p._memray._tracker = trackers
    p._process = memory
    return p, trackers, memory


def test_live_probe_opens_windows_where_the_policy_says_and_records_why(tmp_path: Path) -> None:
    # GIVEN six epochs; the main process grows 50 MiB during epoch 5
    p, trackers, memory = _live(tmp_path, train_start=0, train_steps=4)
    for epoch in range(1, 7):
        if epoch == 5:
            memory.rss += 50 * MiB
        with p.epoch(epoch):
            for _ in p.iterate(range(8)):
                p.phase("forward")
    p.close()
    events = read_events(tmp_path)
    # THEN windows open in epochs 1, 2, 4 (scheduled) and 6 (memory grew), each saying why
    starts = [(e["epoch"], e["reason"]) for e in events if e["kind"] == "memray_start"]
    assert starts == [(1, "first"), (2, "first"), (4, "spaced"), (6, "regrow")]
    assert trackers.log.count("open train-e6-train.bin") == 1
    # AND every loop's end says whether its epoch asked for one; every epoch's end its RSS
    assert [e["memray_reason"] for e in events if e["kind"] == "loop_end"] == [
        "first", "first", None, "spaced", None, "regrow"]
    assert [e["rss"] // MiB for e in events if e["kind"] == "epoch_end"] == [700] * 4 + [750] * 2


def test_live_probe_section_capture_ends_after_eval_batches(tmp_path: Path) -> None:
    p, trackers, _ = _live(tmp_path, eval_batches=3)
    with p.epoch(1), p.section("validate"):
        assert len(list(p.iterate(range(10)))) == 10  # the pass itself runs to its end
    p.close()
    events = read_events(tmp_path)
    (stop,) = [e for e in events if e["kind"] == "memray_stop"]
    (end,) = [e for e in events if e["kind"] == "section_end"]
    assert (stop["capture"], stop["step"], end["steps"]) == ("train-e1-validate", 3, 10)
    assert trackers.log == ["open train-e1-validate.bin", "close train-e1-validate.bin"]


def test_live_probe_section_step_is_how_other_loops_count_batches(tmp_path: Path) -> None:
    # GIVEN a section whose batches the workload's own loop counts (the automatic phases do)
    p, trackers, _ = _live(tmp_path, eval_batches=2)
    with p.epoch(1), p.section("validate"):
        p.section_step(1)
        assert p._memray.active
        p.section_step(2)
        assert not p._memray.active
        p.section_step(3)
    p.close()
    assert p._cell.step == 3
    assert trackers.log == ["open train-e1-validate.bin", "close train-e1-validate.bin"]


# -- processes forked while a capture is open ----------------------------------------------------
def _fork_and_wait_for_close(directory: Path, expect_close: bool) -> int:
    """Fork a child that waits (≤ 10 s) for its tracker's close; returns the child's pid."""
    pid = os.fork()
    if pid == 0:  # the child: exit 0 when what was expected happened
        code = 1
        try:
            deadline = time.monotonic() + (10 if expect_close else 0.5)
            mine = directory / f"closed-{os.getpid()}"
            while time.monotonic() < deadline and not mine.exists():
                time.sleep(0.01)
            watcher = any(t.name == "harness-memray-stop" for t in threading.enumerate())
            code = 0 if mine.exists() == expect_close and (watcher or mine.exists()) == expect_close else 1
        finally:
            os._exit(code)
    return pid


def test_a_child_forked_during_a_capture_stops_tracking_when_it_closes(tmp_path: Path) -> None:
    # GIVEN a validation capture open, and a process forked meanwhile (a DataLoader worker)
    window, trackers, _ = _window(tmp_path, Trackers(tmp_path), eval_batches=3)
    assert window.open_section("validate", 1)
    child = _fork_and_wait_for_close(tmp_path, expect_close=True)
    time.sleep(0.2)  # the child waits, still tracking
    assert not (tmp_path / f"closed-{child}").exists()
    # WHEN the parent's capture closes
    window.close(epoch=1, step=3)
    # THEN the child ends its own tracker (with the Tracker it was forked with), and exits 0
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert (tmp_path / f"closed-{child}").read_text() == "train-e1-validate.bin"


def test_a_child_forked_with_no_capture_open_is_left_alone(tmp_path: Path) -> None:
    window, _, _ = _window(tmp_path, Trackers(tmp_path), eval_batches=3)
    assert window.open_section("validate", 1)
    window.close(epoch=1, step=3)
    child = _fork_and_wait_for_close(tmp_path, expect_close=False)  # no watcher, nothing closed
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_without_follow_fork_no_pipe_is_held(tmp_path: Path) -> None:
    window, _, _ = _window(tmp_path, follow_fork=False)
    assert window.open_section("test", 0)
    assert window._forked is None
    window.close(epoch=0, step=1)
