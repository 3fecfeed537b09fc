"""The trend finding: a robust slope of RSS and heap over the running time, epochs or not."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from _synthetic import write_run
from conftest import WORKLOADS, latest_run

from harness.analysis import findings, trend
from harness.analysis.finding import Finding
from harness.analysis.load import load_run
from harness.analysis.ticks import ticks

MiB = 1 << 20


def test_theil_sen_is_exact_on_a_line() -> None:
    t = np.linspace(0.0, 60.0, 1000)  # thinned to 400 points first
    assert trend.theil_sen(t, 3.0 * t + 7.0) == pytest.approx(3.0)


def test_theil_sen_ignores_a_fifth_of_outliers() -> None:
    rng = np.random.default_rng(0)
    t = np.linspace(0.0, 100.0, 300)
    y = 2.0 * t + rng.normal(0.0, 0.5, t.size)
    bad = rng.choice(t.size, size=t.size // 5, replace=False)
    y[bad] += rng.uniform(-500.0, 500.0, bad.size)
    assert trend.theil_sen(t, y) == pytest.approx(2.0, abs=0.1)
    assert abs(np.polyfit(t, y, 1)[0] - 2.0) > 0.1  # least squares is pulled off


def test_theil_sen_without_a_pair_in_time() -> None:
    assert trend.theil_sen(np.array([1.0, 1.0]), np.array([0.0, 5.0])) is None


def _rows(main_mib: list[float], dt: float = 0.1, start: float = 1000.0, *, steps_per_tick: int = 0,
          ticks_per_epoch: int = 0, file_mib: list[float] | None = None,
          shmem_mib: list[float] | None = None,
          cells: list[tuple[int, int, str]] | None = None) -> list[list[Any]]:
    """samples rows of a main process only, one every ``dt`` s. ``steps_per_tick`` 0: in no phase of
    its own (no steps); else in a training loop (phase ``data``) that does that many steps a tick,
    its step counter starting again every ``ticks_per_epoch`` ticks (0: never). ``cells``: each
    tick's (epoch, step, phase) given instead. ``file_mib`` and ``shmem_mib``: RSS's file-backed
    and shared parts (the rest anonymous); None: not read."""
    rows = []
    for i, m in enumerate(main_mib):
        f = file_mib[i] if file_mib is not None else None
        sh = shmem_mib[i] if shmem_mib is not None else 0.0
        parts: list[Any] = ["", "", ""]
        if f is not None:
            parts = [int((m - f - sh) * MiB), int(f * MiB), int(sh * MiB)]
        if cells is not None:
            cell: list[Any] = list(cells[i])
        elif steps_per_tick:
            epoch = i // ticks_per_epoch + 1 if ticks_per_epoch else 0
            step = (i % ticks_per_epoch if ticks_per_epoch else i) * steps_per_tick
            cell = [epoch, step, "data"]
        else:
            cell = [0, 0, "setup"]
        rows.append([f"{start + i * dt:.4f}", 100, 0, "main", int(m * MiB), 0, 40 * MiB, 4096, 0,
                     "", "", "", "train", *cell, "", "", *parts])
    return rows


def _events(n: int, dt: float = 0.1, start: float = 1000.0,
            epoch_s: float | None = None) -> list[dict[str, Any]]:
    events = [{"t": start, "kind": "stage_start", "stage": "train", "pid": 100}]
    if epoch_s:
        for e in range(int(n * dt / epoch_s)):
            events += [{"t": start + e * epoch_s, "kind": "epoch_start", "epoch": e + 1},
                       {"t": start + (e + 1) * epoch_s - 0.01, "kind": "epoch_end", "epoch": e + 1}]
    return events + [{"t": start + n * dt, "kind": "stage_end", "stage": "train"}]


def _trend(tmp_path: Path, main_mib: list[float], epoch_s: float | None = None, dt: float = 0.1,
           **rows: Any) -> Finding | None:
    run = load_run(write_run(tmp_path, rows=_rows(main_mib, dt, **rows), snapshots=[],
                             events=_events(len(main_mib), dt, epoch_s=epoch_s)))
    found = [f for f in findings.all_findings(run, ticks(run.samples), []) if f.kind == "trend"]
    return found[0] if found else None


def _main_fit(f: Finding) -> dict[str, Any]:
    (fit,) = [s for s in f.numbers["series"] if s["series"] == "main_rss"]
    return fit


def test_a_staircase_of_20_mib_an_epoch_is_a_trend_counted_per_epoch(tmp_path: Path) -> None:
    # GIVEN 8 epochs of 50 ticks, 2 steps a tick (100 steps an epoch), the main process 20 MiB
    # higher after each epoch (flat between: an evaluation pass that keeps its outputs), with noise
    rng = np.random.default_rng(1)
    main = [500 + 20 * (i // 50) + rng.normal(0, 2) for i in range(400)]
    # WHEN the findings are drawn
    f = _trend(tmp_path, main, steps_per_tick=2, ticks_per_epoch=50)
    # THEN the trend is found at 20 MiB an epoch of 100 steps: 0.2 MiB a step
    assert f is not None
    fit = _main_fit(f)
    assert fit["axis"] == "steps"
    assert fit["steps_per_epoch"] == pytest.approx(100, rel=0.05)
    assert fit["per_epoch"] / MiB == pytest.approx(20, rel=0.15)
    assert fit["per_step"] / MiB == pytest.approx(0.2, rel=0.15)
    assert "MiB an epoch of" in f.text


@pytest.mark.parametrize("dt", [0.05, 0.1, 0.4])
def test_the_same_leak_on_a_fast_and_a_slow_machine_is_the_same_per_step(tmp_path: Path,
                                                                       dt: float) -> None:
    # GIVEN one leak of 64 KiB a step, 4 steps a tick, sampled on machines 8 times apart in speed
    # (the same steps take 20 s or 160 s): per minute it would be 8 times apart
    rng = np.random.default_rng(5)
    main = [400 + i * 4 * 64 / 1024 + rng.normal(0, 1.5) for i in range(400)]
    f = _trend(tmp_path, main, dt=dt, steps_per_tick=4)
    # THEN each finds it, at the same 64 KiB a step (no epochs: the per-step threshold applies)
    assert f is not None
    fit = _main_fit(f)
    assert fit["per_step"] / 1024 == pytest.approx(64, rel=0.1)
    assert fit["per_epoch"] is None


def test_a_slow_drift_per_step_is_no_trend(tmp_path: Path) -> None:
    # 30 MiB over 24,000 steps after warm-up: 1.3 KiB a step, under the 8 KiB threshold, however
    # fast or slow the machine ran them
    main = [500 + 40 * i / 400 for i in range(400)]
    assert _trend(tmp_path, main, steps_per_tick=80) is None


@pytest.mark.parametrize("stairs", [(150, 300), (130, 340), (200, 260, 330)])
def test_a_staircase_of_two_or_three_steps_is_a_trend_wherever_they_fall(
        tmp_path: Path, stairs: tuple[int, ...]) -> None:
    main = [500.0 + sum(40 for s in stairs if i >= s) for i in range(400)]
    f = _trend(tmp_path, main, steps_per_tick=1)
    assert f is not None, stairs


def test_a_staircase_of_seven_epochs_is_found_on_a_loaded_machine(tmp_path: Path) -> None:
    # GIVEN 7 epochs, each a training pass whose steps run slowly (a loaded machine: 3 s a tick)
    # and an evaluation pass (no steps) that keeps 75 MiB; the step counter starts again each epoch
    rng = np.random.default_rng(7)
    main, epochs = [], 7
    for e in range(epochs):
        main += [600 + 75 * e + rng.normal(0, 3) for _ in range(40)]
    f = _trend(tmp_path, main, dt=3.0, steps_per_tick=5, ticks_per_epoch=40)
    assert f is not None
    assert _main_fit(f)["per_epoch"] / MiB == pytest.approx(75, rel=0.2)


def test_flat_memory_with_noise_is_no_trend(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    main = [500 + rng.normal(0, 4) + (30 if i % 97 == 0 else 0) for i in range(400)]
    assert _trend(tmp_path, main) is None
    assert _trend(tmp_path / "steps", main, steps_per_tick=3) is None


@pytest.mark.parametrize("at", [175, 250, 325])
@pytest.mark.parametrize("steps_per_tick", [0, 1])
def test_one_step_up_is_no_trend(tmp_path: Path, at: int, steps_per_tick: int) -> None:
    # a single rise of 60 MiB after warm-up (the first 100 ticks), flat before and after; in the
    # middle, half the pairs of points straddle it and the median slope is steep
    main = [500.0 if i < at else 560.0 for i in range(400)]
    assert _trend(tmp_path, main, steps_per_tick=steps_per_tick) is None


def test_two_steps_up_are_a_trend(tmp_path: Path) -> None:
    main = [500.0 + 40 * (i >= 200) + 40 * (i >= 300) for i in range(400)]
    assert _trend(tmp_path, main) is not None


def test_growth_after_the_workload_ended_is_left_out(tmp_path: Path) -> None:
    # flat while running; the shutdown after stage_end climbs steeply
    main = [500.0] * 300 + [500.0 + 2 * i for i in range(100)]
    run = load_run(write_run(tmp_path, rows=_rows(main, steps_per_tick=1), events=_events(300),
                             snapshots=[]))
    assert not [f for f in findings.all_findings(run, ticks(run.samples), []) if f.kind == "trend"]


@pytest.mark.parametrize("shape", ["linear", "stairs", "fast"])
def test_a_memory_mapped_file_being_read_is_no_trend(tmp_path: Path, shape: str) -> None:
    # GIVEN a clean reader of a memory-mapped data set: RSS climbs 300 MiB, all of it file-backed
    # pages faulted in as the file is read (anonymous memory flat), in three shapes
    n = 400
    if shape == "linear":
        file = [10 + 300 * i / n for i in range(n)]
    elif shape == "stairs":
        file = [10 + 100 * (i // 100) for i in range(n)]
    else:  # read once, fast, over the first half
        file = [10 + 300 * min(i / 200, 1.0) for i in range(n)]
    main = [400 + f for f in file]
    assert _trend(tmp_path, main, steps_per_tick=1, file_mib=file) is None
    # (the same RSS without its parts recorded, as in older run directories, was a trend)
    assert shape == "fast" or _trend(tmp_path / "old", main, steps_per_tick=1) is not None


@pytest.mark.parametrize(("part", "kind"), [("anon", "anonymous"), ("shmem", "shared memory")])
def test_the_trend_says_which_kind_of_memory_grew(tmp_path: Path, part: str, kind: str) -> None:
    n = 400
    growth = [120 * i / n for i in range(n)]
    file = [50 + 20 * i / n for i in range(n)]  # file-backed pages grow a little too: not counted
    shmem = growth if part == "shmem" else [0.0] * n
    main = [400 + g + f for g, f in zip(growth, file)]
    f = _trend(tmp_path, main, steps_per_tick=2, file_mib=file, shmem_mib=shmem)
    assert f is not None
    fit = _main_fit(f)
    assert fit["kind"] == kind
    assert fit["less_file"] is True
    assert fit["parts"]["file"] / MiB == pytest.approx(10, abs=2)
    assert f"the memory that grew is {kind}" in f.text
    assert "less its file-backed pages" in f.text


def _marked(keep: str) -> int:
    lines = (WORKLOADS / "trend_leak.py").read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if line.rstrip().endswith(f"# kept: {keep}"))


def _run(tmp_path: Path, cli: Any, keep: str) -> dict[str, Any]:
    s = {"name": f"trend-{keep}", "stages": ["main"], "memray": {"mode": "full"},
         "workload": {"entry": str(WORKLOADS / "trend_leak.py"), "args": ["--keep", keep]}}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(s), encoding="utf-8")
    code, _, err = cli("run", str(path), "--reports", str(tmp_path / "r"))
    assert code == 0, err
    summary: dict[str, Any] = json.loads((latest_run(tmp_path / "r") / "report" / "summary.json")
                                         .read_text(encoding="utf-8"))
    return summary


@pytest.mark.slow
@pytest.mark.parametrize("keep", ["graph", "list", "cache"])
def test_a_plain_script_that_keeps_memory_gets_the_trend_naming_its_line(
        tmp_path: Path, cli: Any, keep: str) -> None:
    summary = _run(tmp_path, cli, keep)
    (f,) = [f for f in summary["findings"] if f["kind"] == "trend"]
    top = f["numbers"]["sites"][0]
    assert top["where"].endswith(f"trend_leak.py:{_marked(keep)})"), f["numbers"]["sites"]
    assert f"trend_leak.py:{_marked(keep)}" in f["text"]


@pytest.mark.slow
def test_the_same_script_without_the_leak_gets_no_trend(tmp_path: Path, cli: Any) -> None:
    summary = _run(tmp_path, cli, "none")
    assert not [f for f in summary["findings"] if f["kind"] == "trend"]


@pytest.mark.parametrize("at", [0.5, 0.6, 0.7])
def test_one_step_up_straddling_a_segment_edge_is_no_trend(tmp_path: Path, at: float) -> None:
    # GIVEN one step up (40 MiB) at one step count, its ticks many (an evaluation pass on a loaded
    # machine: the steps stand still while the memory rises over ~40 ticks), flat before and after
    n, up = 400, int(400 * at)
    main = [500.0 + 40 * min(max((i - up) / 40, 0.0), 1.0) for i in range(n)]
    # THEN no trend, wherever the rise falls against the segments' edges
    assert _trend(tmp_path, main, steps_per_tick=1) is None


def _epochs(epochs: int, steps: int, *, ticks_per_step: int, eval_ticks: int,
            eval_keeps: list[float], leak_per_step: float = 0.0, file_per_step: float = 2.0,
            ) -> dict[str, Any]:
    """The ticks of a loop like tests/workloads/step_leak.py's: ``epochs`` epochs of ``steps``
    steps (``ticks_per_step`` readings each), each ending in an evaluation pass of ``eval_ticks``
    readings at one step count, whose anonymous memory climbs ``eval_keeps[epoch - 1]`` MiB
    over the pass and stays; anonymous memory grows ``leak_per_step`` MiB a step; a mapped file
    read step by step adds ``file_per_step`` MiB of file-backed pages a step."""
    main, file, cells = [], [], []
    anon, done = 400.0, 0
    for e in range(1, epochs + 1):
        for s in range(1, steps + 1):
            done += 1
            anon += leak_per_step
            for _ in range(ticks_per_step):
                cells.append((e, s, "data"))
                file.append(10 + file_per_step * done)
                main.append(anon + file[-1])
        for k in range(1, eval_ticks + 1):
            cells.append((e, 0, "validate"))
            file.append(10 + file_per_step * done)
            main.append(anon + eval_keeps[e - 1] * k / eval_ticks + file[-1])
        anon += eval_keeps[e - 1]
    return {"main_mib": main, "file_mib": file, "cells": cells}


# The machine's speed in readings: idle (several a step, a short evaluation pass) and loaded (one
# a step, and an evaluation pass of hundreds of readings).
IDLE, LOADED = {"ticks_per_step": 3, "eval_ticks": 20}, {"ticks_per_step": 1, "eval_ticks": 240}


@pytest.mark.parametrize("machine", [IDLE, LOADED], ids=["idle", "loaded"])
def test_a_clean_mapped_reader_whose_evaluation_passes_warm_up_is_no_trend(
        tmp_path: Path, machine: dict[str, int]) -> None:
    # GIVEN tests/workloads/step_leak.py --memmap as CI saw it: 2 epochs of 24 steps, 2 MiB of a
    # mapped file's pages a step, anonymous memory flat but for the evaluation passes' first use
    # (35 MiB at the first: BLAS buffers, the outputs; 16 MiB at the second: malloc keeping them)
    f = _trend(tmp_path, **_epochs(2, 24, eval_keeps=[35, 16], **machine))
    # THEN no trend, on an idle machine or a loaded one (where the first pass's climb, read over
    # hundreds of readings at one step count, spread over most parts of a series cut by readings)
    assert f is None


@pytest.mark.parametrize("machine", [IDLE, LOADED], ids=["idle", "loaded"])
def test_evaluation_passes_that_keep_their_outputs_are_a_trend_idle_or_loaded(
        tmp_path: Path, machine: dict[str, int]) -> None:
    # GIVEN the same reader whose evaluation passes each keep 32 MiB (a staircase), 5 epochs
    f = _trend(tmp_path, **_epochs(5, 24, eval_keeps=[35 + 32] + [32] * 4, **machine))
    # THEN a trend of ~32 MiB an epoch of 24 steps, of anonymous memory, on either machine
    assert f is not None
    fit = _main_fit(f)
    assert fit["steps_per_epoch"] == 24
    assert fit["per_epoch"] / MiB == pytest.approx(32, rel=0.25)
    assert fit["kind"] == "anonymous" and fit["less_file"] is True


@pytest.mark.parametrize("machine", [IDLE, LOADED], ids=["idle", "loaded"])
def test_a_leak_a_step_beside_a_mapped_file_is_a_trend_counted_per_step(
        tmp_path: Path, machine: dict[str, int]) -> None:
    # GIVEN the reader keeping 2 MiB of anonymous memory a step (a copy of each batch), beside its
    # evaluation passes' first use
    f = _trend(tmp_path, **_epochs(2, 24, eval_keeps=[35, 16], leak_per_step=2.0, **machine))
    # THEN found at 2 MiB a step (the first evaluation pass's 35 MiB in its quarters' rise too),
    # anonymous, the file's 2 MiB a step not counted
    assert f is not None
    fit = _main_fit(f)
    assert fit["per_step"] / MiB == pytest.approx(2.0 + 35 / 24, rel=0.25)
    assert fit["kind"] == "anonymous"


def test_the_step_grid_has_one_point_a_step_however_many_readings() -> None:
    # readings at steps 3,3,3,4,7,7,8 (steps 5 and 6 had none; 3 had an evaluation pass)
    grid, at = trend.step_grid(np.array([3.0, 3, 3, 4, 7, 7, 8]))
    assert grid.tolist() == [3, 4, 5, 6, 7, 8]
    assert at.tolist() == [2, 3, 3, 3, 5, 6]  # each step's last reading, held until the next
