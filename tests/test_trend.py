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


def _rows(main_mib: list[float], dt: float = 0.1, start: float = 1000.0) -> list[list[Any]]:
    """samples.csv rows of a main process only, one every ``dt`` s, in no phase of its own."""
    return [[f"{start + i * dt:.4f}", 100, 0, "main", int(m * MiB), 0, 40 * MiB, 4096, 0, "", "",
             "", "train", 0, 0, "setup"] for i, m in enumerate(main_mib)]


def _events(n: int, dt: float = 0.1, start: float = 1000.0,
            epoch_s: float | None = None) -> list[dict[str, Any]]:
    events = [{"t": start, "kind": "stage_start", "stage": "train", "pid": 100}]
    if epoch_s:
        for e in range(int(n * dt / epoch_s)):
            events += [{"t": start + e * epoch_s, "kind": "epoch_start", "epoch": e + 1},
                       {"t": start + (e + 1) * epoch_s - 0.01, "kind": "epoch_end", "epoch": e + 1}]
    return events + [{"t": start + n * dt, "kind": "stage_end", "stage": "train"}]


def _trend(tmp_path: Path, main_mib: list[float], epoch_s: float | None = None) -> Finding | None:
    run = load_run(write_run(tmp_path, rows=_rows(main_mib), snapshots=[],
                             events=_events(len(main_mib), epoch_s=epoch_s)))
    found = [f for f in findings.all_findings(run, ticks(run.samples), []) if f.kind == "trend"]
    return found[0] if found else None


def test_a_staircase_of_20_mib_an_epoch_is_a_trend(tmp_path: Path) -> None:
    # GIVEN 8 "epochs" of 5 s, the main process 20 MiB higher after each, with sampling noise
    rng = np.random.default_rng(1)
    main = [500 + 20 * (i // 50) + rng.normal(0, 2) for i in range(400)]
    # WHEN the findings are drawn
    f = _trend(tmp_path, main)
    # THEN the trend is found at 20 MiB / 5 s = 240 MiB a minute
    assert f is not None
    (main_fit,) = [s for s in f.numbers["series"] if s["series"] == "main_rss"]
    assert main_fit["per_minute"] / MiB == pytest.approx(240, rel=0.15)
    assert main_fit["per_epoch"] is None  # no epoch events
    assert "main process's RSS grew" in f.text


def test_the_trend_per_epoch_where_epochs_are_known(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    main = [500 + 20 * (i // 50) + rng.normal(0, 2) for i in range(400)]
    f = _trend(tmp_path, main, epoch_s=5.0)
    assert f is not None
    (main_fit,) = [s for s in f.numbers["series"] if s["series"] == "main_rss"]
    assert main_fit["per_epoch"] / MiB == pytest.approx(20, rel=0.15)
    assert "per epoch" in f.text


def test_flat_memory_with_noise_is_no_trend(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    main = [500 + rng.normal(0, 4) + (30 if i % 97 == 0 else 0) for i in range(400)]
    assert _trend(tmp_path, main) is None


@pytest.mark.parametrize("at", [175, 250, 325])
def test_one_step_up_is_no_trend(tmp_path: Path, at: int) -> None:
    # a single rise of 60 MiB after warm-up (the first 100 ticks), flat before and after; in the
    # middle, half the pairs of points straddle it and the median slope is steep
    main = [500.0 if i < at else 560.0 for i in range(400)]
    assert _trend(tmp_path, main) is None


def test_two_steps_up_are_a_trend(tmp_path: Path) -> None:
    main = [500.0 + 40 * (i >= 200) + 40 * (i >= 300) for i in range(400)]
    assert _trend(tmp_path, main) is not None


def test_growth_after_the_workload_ended_is_left_out(tmp_path: Path) -> None:
    # flat while running; the shutdown after stage_end climbs steeply
    main = [500.0] * 300 + [500.0 + 2 * i for i in range(100)]
    run = load_run(write_run(tmp_path, rows=_rows(main), events=_events(300), snapshots=[]))
    assert not [f for f in findings.all_findings(run, ticks(run.samples), []) if f.kind == "trend"]


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
