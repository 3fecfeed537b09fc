"""Steps from the optimizer, epochs without a loader (issue 26, items 1 and 2).

Each user-style script under tests/workloads/steps_*.py runs in this process under the automatic
phases and a real live probe (memray's trackers replaced by recordings), clean and with its
planted leak, and must give the known answers: steps per epoch, epochs, evaluation sections,
the phases a step's work is marked with, and the training windows that opened.
"""

from __future__ import annotations

import json
import runpy
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from conftest import WORKLOADS, latest_run, read_events

from harness import probe
from harness.analysis.load import load_run
from harness.analysis.windows import unopened_windows
from harness.layout import CELL_FILE, PROBE_CONFIG_FILE
from harness.probe import auto
from harness.probe import cell as cellmod
from harness.probe.live import LiveProbe
from harness.records.probe_config import ProbeConfig
from harness.records.scenario import CudaConfig, MemrayConfig, TensorsConfig

SMALL = {"train_start": 5, "train_steps": 10}  # a window every epoch of 15 steps or more opens


@dataclass
class Ran:
    events: list[dict[str, Any]]
    marks: list[str]
    trackers: list[str]

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["kind"] == kind]

    @property
    def epochs(self) -> list[int]:
        return [e["epoch"] for e in self.of("epoch_end")]

    @property
    def loops(self) -> list[tuple[int, int]]:
        """(epoch, steps) of each training loop."""
        return [(e["epoch"], e["steps"]) for e in self.of("loop_end")]

    @property
    def sections(self) -> list[tuple[str, int]]:
        return [(e["section"], e["epoch"]) for e in self.of("section_start")]

    @property
    def windows(self) -> list[tuple[str, int, int, str | None]]:
        """(capture, step opened, step closed, reason) of each training window."""
        stops = {e["capture"]: e["step"] for e in self.of("memray_stop")}
        return [(e["capture"], e["step"], stops[e["capture"]], e["reason"])
                for e in self.of("memray_start") if e["section"] is None]

    def order(self) -> list[str]:
        """epoch_start/end and section_start/end, in order, with their epoch or name."""
        out = []
        for e in self.events:
            if e["kind"] in ("epoch_start", "epoch_end"):
                out.append(f"{e['kind']} {e['epoch']}")
            elif e["kind"] in ("section_start", "section_end"):
                out.append(f"{e['kind']} {e['section']}")
        return out


def run_script(tmp_path: Path, script: str, *args: str, stage: str = "main",
               memray: dict[str, Any] | None = None) -> Ran:
    """``script`` run as ``__main__`` under the automatic phases and a live probe writing ``tmp_path``."""
    cfg = ProbeConfig(stage=stage, device="cpu",
                      memray=MemrayConfig(**(SMALL if memray is None else memray)),
                      tensors=TensorsConfig(trace_steps=0, trace_every=0, snapshots=False,
                                            composition=False),
                      cuda=CudaConfig())
    (tmp_path / PROBE_CONFIG_FILE).write_text(json.dumps(cfg.model_dump(mode="json")))
    cellmod.create(tmp_path / CELL_FILE)
    live = LiveProbe(tmp_path)
    trackers: list[str] = []

    class Tracker:
        def __init__(self, path: Path, cfg: MemrayConfig) -> None:
            self.name = path.stem

        def __enter__(self) -> None:
            trackers.append(f"open {self.name}")

        def __exit__(self, *exc: object) -> None:
            trackers.append(f"close {self.name}")

    live._memray._tracker = Tracker
    marks: list[str] = []
    phase = live.phase

    def marked(name: str) -> None:
        marks.append(name)
        phase(name)

    live.phase = marked  # type: ignore[method-assign]
    argv = sys.argv
    sys.argv = [script, *args]
    probe._active = live
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: a second thread only waits for the first
    try:
        with auto.phases(stage) as hooks:
            assert hooks is not None
            runpy.run_path(str(WORKLOADS / script), run_name="__main__")
    finally:
        sys.argv = argv
        torch.set_num_threads(threads)
        probe._active = probe.NullProbe()
        live.close()
    return Ran(read_events(tmp_path), marks, trackers)


def _steps(marks: list[str]) -> list[list[str]]:
    """The marks cut at each optimizer mark (a closure's calls each end in one)."""
    out: list[list[str]] = [[]]
    for m in marks:
        out[-1].append(m)
        if m == "optimizer":
            out.append([])
    return out


LEAK = pytest.mark.parametrize("leak", [(), ("--leak",)], ids=["clean", "planted"])


# -- plain loops over random tensors, no DataLoader ---------------------------------------------
@LEAK
def test_a_plain_loop_without_a_loader_gets_epochs_steps_and_a_validation_kept_with_grad(
        tmp_path: Path, leak: tuple[str, ...]) -> None:
    # GIVEN 2 epochs of 30 Adam steps over random tensors, each followed by 6 forwards with grad
    # enabled and no backward (model.eval(), no no_grad)
    ran = run_script(tmp_path, "steps_plain.py", "--epochs", "2", "--steps", "30", "--eval", "6", *leak)
    # THEN 2 epochs of 30 steps, each ending in its validation; a window in each
    assert ran.epochs == [1, 2]
    assert ran.loops == [(1, 30), (2, 30)]
    assert ran.order() == ["epoch_start 1", "section_start validate", "section_end validate",
                           "epoch_end 1", "epoch_start 2", "section_start validate",
                           "section_end validate", "epoch_end 2"]
    assert ran.windows == [("main-e1-train", 5, 15, "first"), ("main-e2-train", 5, 15, "first")]
    counts = Counter(ran.marks)
    assert counts["backward"] == counts["optimizer"] == 60
    assert counts["data"] == 0  # no loader: nothing waits for a batch


@LEAK
def test_the_default_window_of_short_loader_less_epochs_opens_in_the_next_epoch(
        tmp_path: Path, leak: tuple[str, ...]) -> None:
    # GIVEN 3 epochs of 40 steps, their length unknown in advance, and the default window 100-249
    ran = run_script(tmp_path, "steps_plain.py", "--epochs", "3", "--steps", "40", "--eval", "3",
                     *leak, memray={})
    # THEN epoch 1's window, planned before its length was known, did not open; epoch 2's fits the
    # 40 steps epoch 1 ran; epoch 3, not picked by the policy, replaces none
    assert ran.loops == [(1, 40), (2, 40), (3, 40)]
    assert [s for s, _ in ran.sections] == ["validate"] * 3
    assert ran.windows == [("main-e2-train", 0, 40, "first")]


# -- optimizer.step(closure) --------------------------------------------------------------------
@LEAK
@pytest.mark.parametrize("optimizer", ["sgd", "lbfgs"])
def test_a_closure_keeps_its_forward_and_backward_and_is_one_step(
        tmp_path: Path, optimizer: str, leak: tuple[str, ...]) -> None:
    # GIVEN 2 epochs of 12 steps through optimizer.step(closure), LBFGS calling it up to 3 times
    ran = run_script(tmp_path, "steps_closure.py", "--optimizer", optimizer, "--epochs", "2",
                     "--steps", "12", "--eval", "4", *leak)
    # THEN one step per optimizer.step, whatever the closure calls; validation under no_grad each epoch
    assert ran.loops == [(1, 12), (2, 12)]
    assert ran.sections == [("validate", 1), ("validate", 2)]
    # epoch 1's window, planned for steps 5-14, closes with the loop; epoch 2's fits its 12 steps
    assert ran.windows == [("main-e1-train", 5, 12, "first"), ("main-e2-train", 2, 12, "first")]
    # and each closure call is marked forward, loss, backward, then optimizer when it returns
    train = [m for m in ran.marks[:ran.marks.index("validate")]]
    calls = _steps(train)
    assert calls[-1] == ["forward"]  # the validation's first forward, before its section opened
    assert all(c == ["forward", "loss", "backward", "optimizer"] for c in calls[:-1])
    if optimizer == "sgd":
        assert len(calls[:-1]) == 12
    else:  # LBFGS evaluates the closure more than once a step
        assert len(calls[:-1]) > 12


# -- parameters updated by hand: the LSTM example's shape ---------------------------------------
@LEAK
def test_manual_updates_count_a_step_per_backward_and_validate_each_epoch(
        tmp_path: Path, leak: tuple[str, ...]) -> None:
    # GIVEN batches sliced from one tensor, p.data.add_(p.grad) with no optimizer, a no_grad
    # validation each epoch and a test of the best model's copy at the end
    ran = run_script(tmp_path, "steps_manual.py", "--epochs", "2", "--steps", "25", *leak)
    # THEN 2 epochs of 25 steps, a validation in each, the test after the last epoch
    assert ran.loops == [(1, 25), (2, 25)]
    assert ran.order() == ["epoch_start 1", "section_start validate", "section_end validate",
                           "epoch_end 1", "epoch_start 2", "section_start validate",
                           "section_end validate", "epoch_end 2", "section_start test",
                           "section_end test"]
    assert ran.windows == [("main-e1-train", 5, 15, "first"), ("main-e2-train", 5, 15, "first")]
    assert Counter(ran.marks)["backward"] == 50 and "optimizer" not in ran.marks


def test_manual_updates_in_a_test_stage_evaluate_as_the_test(tmp_path: Path) -> None:
    ran = run_script(tmp_path, "steps_manual.py", "--epochs", "1", "--steps", "3", stage="test")
    assert [s for s, _ in ran.sections] == ["test", "test"]


# -- gradient accumulation ----------------------------------------------------------------------
@LEAK
@pytest.mark.parametrize("loader", [(), ("--loader",)], ids=["tensors", "loader"])
def test_gradient_accumulation_is_one_step_per_optimizer_step(
        tmp_path: Path, loader: tuple[str, ...], leak: tuple[str, ...]) -> None:
    # GIVEN 4 backwards per optimizer step, 10 steps an epoch, batches from random tensors or a
    # DataLoader of 40 batches; a validation loader under no_grad
    ran = run_script(tmp_path, "steps_accum.py", "--epochs", "2", "--steps", "10", "--accum", "4",
                     *loader, *leak)
    # THEN 10 steps an epoch (a loader's 40 batches make 10 steps: its loop says so in advance)
    assert ran.loops == [(1, 10), (2, 10)]
    totals = [e["total"] for e in ran.of("loop_end")]
    assert totals == ([10, 10] if loader else [-1, -1])
    assert ran.sections == [("validate", 1), ("validate", 2)]
    counts = Counter(ran.marks)
    assert (counts["backward"], counts["optimizer"]) == (80, 20)
    # a loader's pass ends asking once more; without one, the validation loader's first batch,
    # not yet known to evaluate, is the one batch waited for
    assert counts["data"] == (82 if loader else 1)
    # the loader's 10 steps known in advance: a window over all of them; unknown: steps 5-14 as
    # configured, cut by the loop's end, then fitted to the 10 steps epoch 1 ran
    first = ("main-e1-train", 0, 10, "first") if loader else ("main-e1-train", 5, 10, "first")
    assert ran.windows == [first, ("main-e2-train", 0, 10, "first")]


# -- leaving each epoch early -------------------------------------------------------------------
@LEAK
@pytest.mark.parametrize(("epochs", "windows"), [
    (None, [("main-e2-train", 0, 20, "first")]),
    ([1], [("main-e2-train", 0, 20, "replaces")]),
], ids=["default-policy", "epoch-1-only"])
def test_a_break_after_20_steps_gets_a_window_that_fits_in_the_next_epoch(
        tmp_path: Path, epochs: list[int] | None, windows: list[Any], leak: tuple[str, ...]) -> None:
    # GIVEN a loader of 200 batches left with `break` after 20 steps each epoch, default window
    ran = run_script(tmp_path, "steps_break.py", "--epochs", "3", "--cut", "20", *leak,
                     memray={"epochs": epochs})
    # THEN 3 epochs of 20 steps of 200; the window epoch 1 planned at step 100 never opened, so
    # epoch 2 gets one from its first step over the 20 steps it runs, as the replacement when
    # memray.epochs picks epoch 1 only
    assert ran.loops == [(1, 20), (2, 20), (3, 20)]
    assert [e["total"] for e in ran.of("loop_end")] == [200, 200, 200]
    assert [s for s, _ in ran.sections] == ["validate"] * 3
    assert ran.windows == windows
    assert ran.trackers == ["open main-e1-validate", "close main-e1-validate",
                            "open main-e2-train", "close main-e2-train"]


# -- an endless iterable with a step cap --------------------------------------------------------
@LEAK
def test_an_endless_iterable_with_a_step_cap_gets_epochs_from_its_evaluations(
        tmp_path: Path, leak: tuple[str, ...]) -> None:
    # GIVEN one iterator over an endless IterableDataset, 2 rounds of 15 AdamW steps (2 batches
    # each, clipping, a schedule), each followed by a no_grad evaluation on held-out tensors
    ran = run_script(tmp_path, "steps_endless.py", "--epochs", "2", "--steps", "15", *leak)
    # THEN 2 epochs of 15 steps, each ending in its validation, a window in each
    assert ran.loops == [(1, 15), (2, 15)]
    assert ran.sections == [("validate", 1), ("validate", 2)]
    assert ran.windows == [("main-e1-train", 5, 15, "first"), ("main-e2-train", 5, 15, "first")]
    assert Counter(ran.marks)["data"] == 60


def test_an_evaluation_inside_a_pass_of_known_length_does_not_end_the_epoch(tmp_path: Path) -> None:
    # GIVEN the 20-step epochs of a 200-batch loader, with a no_grad evaluation of 3 held-out
    # batches after steps 8 and 16, and the validation loader after the break
    ran = run_script(tmp_path, "steps_break.py", "--epochs", "2", "--cut", "20", "--every", "8")
    # THEN the epochs are still the loader's passes; each holds 3 evaluations
    assert ran.loops == [(1, 20), (2, 20)]
    assert ran.sections == [("validate", 1)] * 3 + [("validate", 2)] * 3
    assert ran.windows == [("main-e1-train", 5, 15, "first"), ("main-e2-train", 5, 15, "first")]


# -- under harness run --------------------------------------------------------------------------
@pytest.mark.slow
def test_the_lstm_example_under_harness_run_gets_epochs_validations_and_captures(
        tmp_path: Path, cli: Any) -> None:
    # GIVEN the LSTM example's shape (no loader, no optimizer), 2 epochs of 120 steps, default keys
    scenario = {"name": "lstm", "stages": ["main"], "sampling": {"full_hz": 1},
                "tensors": {"trace_steps": 2, "trace_every": 0}, "train": {"threads": 1},
                "workload": {"entry": str(WORKLOADS / "steps_manual.py"),
                             "args": ["--epochs", "2", "--steps", "120"]}}
    path = tmp_path / "lstm.yaml"
    path.write_text(yaml.safe_dump(scenario), encoding="utf-8")
    code, _, err = cli("run", str(path), "--reports", str(tmp_path / "r"), "--quiet", "--no-report")
    assert code == 0, err
    run = latest_run(tmp_path / "r")
    events = read_events(run / "stages/main")

    def of(kind: str) -> list[dict[str, Any]]:
        return [e for e in events if e["kind"] == kind]

    # THEN 2 epochs of 120 steps, a validation in each, the test after them
    assert [e["epoch"] for e in of("epoch_end")] == [1, 2]
    assert [(e["epoch"], e["steps"]) for e in of("loop_end")] == [(1, 120), (2, 120)]
    assert [(e["section"], e["epoch"]) for e in of("section_start")][:2] == [("validate", 1),
                                                                            ("validate", 2)]
    assert [e["section"] for e in of("section_start")][2:] == ["test"]
    # a training capture in each planned epoch: steps 100-119 of the first (its length unknown),
    # then one fitted to the 120 steps it ran; the memray files are there
    starts = [(e["capture"], e["step"]) for e in of("memray_start") if e["section"] is None]
    assert starts == [("main-e1-train", 100), ("main-e2-train", 0)]
    assert {p.name for p in (run / "stages/main/memray").glob("main-e*-train.bin")} == {
        "main-e1-train.bin", "main-e2-train.bin"}
    # the traced steps are whole steps: forward to backward, no optimizer, no loader
    traced = of("traced_step")
    assert traced and all(e["phases"] == ["forward", "loss", "backward"] for e in traced)
    # the update by hand after the backward (clipping's norms) is the backward's, not "idle"
    assert all(set(e["tensors"]) <= {"forward", "loss", "backward"} for e in traced)
    # and no epoch is noted for a window that did not open
    assert unopened_windows(load_run(run)) == []


# -- no false steps, no false evaluations -------------------------------------------------------
@LEAK
def test_two_optimizers_an_iteration_and_a_monitoring_forward_are_one_step_and_no_evaluation(
        tmp_path: Path, leak: tuple[str, ...]) -> None:
    # GIVEN a GAN's 20 iterations: two optimizers stepped each, the discriminator run twice before
    # its backward, a no_grad sample of the generator every 5 iterations
    ran = run_script(tmp_path, "steps_gan.py", "--steps", "20", *leak)
    # THEN 20 steps in one epoch, no evaluation section
    assert ran.loops == [(1, 20)]
    assert ran.sections == []
    assert Counter(ran.marks)["optimizer"] == 40
