"""Known-answer tests: the tables of a hand-written run directory (see tests/_synthetic.py)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
from _synthetic import MiB, write_run

from harness.analysis import tables
from harness.analysis.captures import aggregate_sites
from harness.analysis.load import load_run
from harness.analysis.ticks import ticks


@pytest.fixture()
def run(tmp_path: Path):  # type: ignore[no-untyped-def]
    return load_run(write_run(tmp_path))


def _row(df: pd.DataFrame, epoch: int, phase: str) -> pd.Series:
    hit = df[(df["epoch"] == epoch) & (df["phase"] == phase)]
    assert len(hit) == 1, (epoch, phase, df[["epoch", "phase"]])
    return hit.iloc[0]


def test_ticks_sum_the_tree_and_skip_a_vanished_process(run) -> None:  # type: ignore[no-untyped-def]
    tk = ticks(run.samples)
    assert list(tk["t"]) == [1000.0, 1001.0, 1002.0, 1004.0, 1005.0, 1006.0, 1007.0]
    assert list(tk["dt"]) == [1.0, 1.0, 2.0, 1.0, 1.0, 1.0, 0.0]
    # worker 0's row at 1005 has rss 0 (gone): not counted
    assert list(tk["tree_rss"] / MiB) == [100, 230, 260, 242, 240, 271, 140]
    assert tk.loc[tk["t"] == 1002.0, "workers_uss"].isna().all()  # not a full tick
    assert list(tk["workers"]) == [0, 1, 1, 1, 1, 1, 0]


def test_phase_table_known_answers(run) -> None:  # type: ignore[no-untyped-def]
    df = tables.phase_table(run)
    assert list(zip(df["epoch"], df["phase"])) == [
        (0, "setup"), (1, "forward"), (1, "backward"), (2, "forward"), (2, "backward"),
        (2, "teardown"),
    ]
    r = _row(df, 0, "setup")
    assert (r.seconds, r.time_share, r.ticks) == (1.0, 1.0, 1)
    assert r.main_rss_max == 100 * MiB and math.isnan(r.workers_uss_max)

    r = _row(df, 1, "forward")
    assert (r.seconds, r.time_share, r.ticks) == (2.0, 0.5, 2)
    assert (r.main_rss_min, r.main_rss_mean, r.main_rss_max) == (120 * MiB, 125 * MiB, 130 * MiB)
    assert (r.tree_rss_min, r.tree_rss_mean, r.tree_rss_max) == (230 * MiB, 236 * MiB, 242 * MiB)
    assert (r.workers_uss_mean, r.workers_uss_max) == (12 * MiB, 14 * MiB)
    assert (r.traced_steps, r.tensor_allocations_per_step, r.tensor_bytes_per_step) == (2, 9, 1000)
    assert r.peak_live_tensor_bytes == 5500

    r = _row(df, 1, "backward")
    assert (r.seconds, r.time_share) == (2.0, 0.5)
    assert r.tree_rss_max == 260 * MiB and math.isnan(r.workers_uss_mean)
    assert (r.traced_steps, r.tensor_allocations_per_step, r.tensor_bytes_per_step,
            r.peak_live_tensor_bytes) == (1, 4, 400, 6000)

    r = _row(df, 2, "backward")
    assert (r.seconds, r.time_share, r.main_rss_max, r.tree_rss_max, r.workers_uss_max) == (
        1.0, 0.5, 160 * MiB, 271 * MiB, 12 * MiB)
    r = _row(df, 2, "teardown")
    assert (r.seconds, r.time_share, r.main_rss_max) == (0.0, 0.0, 140 * MiB)


def test_epoch_table_side_by_side_with_deltas(run) -> None:  # type: ignore[no-untyped-def]
    df = tables.epoch_table(run)
    assert list(df.columns) == ["train:epoch-1", "train:epoch-2", "Δ train:epoch-2"]
    assert df.loc["tensor_bytes_other"].tolist() == [500, 700, 200]
    assert df.loc["tensor_bytes_total"].tolist() == [4500, 4700, 200]
    assert df.loc["tensor_count"].tolist() == [10, 14, 4]
    assert df.loc["main_rss"].tolist() == [130 * MiB, 132 * MiB, 2 * MiB]
    assert df.loc["main_uss"].tolist() == [75 * MiB, 76 * MiB, 1 * MiB]
    assert df.loc["main_pss"].tolist() == [95 * MiB, 96 * MiB, 1 * MiB]
    assert df.loc["maps_heap_bytes"].tolist() == [10 * MiB, 12 * MiB, 2 * MiB]
    assert df.loc["gc_count_gen2"].tolist() == [3, 6, 3]


def test_process_table_known_answers(run) -> None:  # type: ignore[no-untyped-def]
    df = tables.process_table(run).set_index("pid")
    assert list(df.index) == [100, 201, 202]
    main = df.loc[100]
    assert (main.role, main.start_s, main.end_s, main.lifetime_s, main.samples) == (
        "main", 0.0, 7.0, 7.0, 7)
    assert (main.peak_rss, main.peak_uss, main.peak_pss) == (160 * MiB, 90 * MiB, 110 * MiB)
    w0 = df.loc[201]
    assert (w0.role, w0.ppid, w0.start_s, w0.end_s, w0.lifetime_s, w0.samples) == (
        "worker 0", 100, 1.0, 4.0, 3.0, 3)
    assert (w0.born_epoch, w0.born_phase) == (1, "forward")
    assert (w0.peak_rss, w0.peak_uss, w0.peak_pss) == (112 * MiB, 14 * MiB, 64 * MiB)
    w1 = df.loc[202]
    assert (w1.start_s, w1.lifetime_s, w1.peak_rss, w1.peak_uss, w1.peak_pss) == (
        5.0, 1.0, 111 * MiB, 12 * MiB, 62 * MiB)


def test_sites_group_by_site_and_workload_line() -> None:
    torch_mm = ("forward", "/x/site-packages/torch/nn/modules/linear.py", 134)
    script = ("<module>", "/work/train.py", 10)
    backward = ("_engine_run_backward", "/x/site-packages/torch/autograd/graph.py", 1)
    peak = [
        ([torch_mm, script], 1000, 2),
        ([torch_mm, script], 500, 1),
        ([backward, ("backward", "/x/site-packages/torch/_tensor.py", 5), script], 300, 3),
    ]
    leaked = [([torch_mm, script], 200, 4)]
    df = aggregate_sites(peak, leaked, stage="train", capture="train-e1-train", process="main",
                         pid=7, section=None).set_index("site")
    fwd = df.loc["forward (torch/nn/modules/linear.py:134)"]
    assert (fwd.phase, fwd.workload_line) == ("forward", "<module> (/work/train.py:10)")
    assert (fwd.bytes_at_peak, fwd.allocations_at_peak, fwd.leaked_bytes,
            fwd.leaked_allocations) == (1500, 3, 200, 4)
    bwd = df.loc["_engine_run_backward (torch/autograd/graph.py:1)"]
    assert (bwd.phase, bwd.bytes_at_peak, bwd.leaked_bytes) == ("backward", 300, 0)


def test_sites_table_merges_workers_and_keeps_top_n() -> None:
    from harness.analysis.captures import CaptureData, Window
    from harness.analysis.load import Capture

    def data(pid: int | None, sizes: list[int]) -> CaptureData:
        cap = Capture("train", "train-e1-train", Path("x.bin"), pid, 1)
        frames = [[("f", "/work/a.py", n)] for n in range(len(sizes))]
        sites = aggregate_sites(zip(frames, sizes, [1] * len(sizes)), [], stage="train",
                                capture=cap.name, process=cap.role, pid=pid or 1, section=None)
        return CaptureData(cap, Window(1, None, 0, 10, None, None), pid=pid or 1, sites=sites)

    df = tables.sites_table([data(None, [5, 50, 500]), data(11, [7, 70]), data(12, [3, 30])], top=2)
    main = df[df["process"] == "main"]
    assert main["bytes_at_peak"].tolist() == [500, 50]
    workers = df[df["process"] == "worker"]
    assert workers["bytes_at_peak"].tolist() == [100, 10]  # a.py:1 in both workers: 70 + 30
    assert workers["processes"].tolist() == [2, 2]
    assert workers["phase"].tolist() == ["data", "data"]
