"""Which flamegraphs a report draws within its size budget, and how capture reading is split."""

from __future__ import annotations

import json
from pathlib import Path

from _synthetic import write_capture, write_run

from harness.analysis.load import Capture, load_run
from harness.render import flamegraphs
from harness.report.plan import FLAMEGRAPH_ESTIMATE, CaptureJob, partition, plan_jobs


def _job(stage: str, size: int) -> CaptureJob:
    cap = Capture(stage, f"{stage}-{size}", Path("x.bin"), None, size)
    return CaptureJob(stage, cap.name, "main", (cap,), None, None, None)


def test_partition_balances_counting_each_process_image_once_per_bin() -> None:
    mb = 1_000_000
    jobs = [_job("test", 1 * mb), _job("train", 6 * mb), _job("train", 8 * mb), _job("train", 7 * mb)]
    bins = partition(jobs, 2)
    # costs with IMAGE_COST_BYTES = 6 MB: [train 8 + test 1 + two images] vs [train 7 + 6 + one]
    assert [[j.name for j in b] for b in bins] == [
        [f"train-{8 * mb}", f"test-{1 * mb}"], [f"train-{7 * mb}", f"train-{6 * mb}"]]


def test_plan_declines_flamegraphs_past_the_budget(tmp_path: Path) -> None:
    run_dir = write_run(tmp_path)
    write_capture(run_dir, "train-e1-train")
    write_capture(run_dir, "train-e2-train")
    run = load_run(run_dir)
    jobs, declined = plan_jobs(run, tmp_path / "out", budget=FLAMEGRAPH_ESTIMATE)
    assert len(jobs) == 2 and sum(j.peak_out is not None for j in jobs) == 1
    assert [d.note for d in declined] == ["declined: the run directory's size budget is spent"]
    jobs, declined = plan_jobs(run, tmp_path / "out", budget=10 * FLAMEGRAPH_ESTIMATE)
    assert declined == [] and all(j.peak_out is not None for j in jobs)
    assert sum(j.temporal_out is not None for j in jobs) == 1  # one temporal, small captures


def test_flamegraph_from_the_memray_cli_and_shared_assets(tmp_path: Path) -> None:
    run_dir = write_run(tmp_path)
    capture = write_capture(run_dir)
    fg = flamegraphs.write_with_cli(capture, tmp_path / "fg" / "cli.html", capture="c", group="main")
    assert fg.path is not None and 0 < fg.bytes < flamegraphs.MAX_HTML_BYTES
    copied = flamegraphs.copy_assets(tmp_path / "fg")
    assert copied > 0 and (tmp_path / "fg" / "assets" / "plotly.min.js").is_file()
    page = '<script src="https://cdn.jsdelivr.net/npm/plotly.js@2.11.1/dist/plotly.min.js"></script>'
    assert flamegraphs.localize(page, {"plotly.min.js"}) == '<script src="assets/plotly.min.js"></script>'
    assert json.dumps(flamegraphs.localize(page, set())) == json.dumps(page)  # unknown: left as is


def test_largest_records_are_drawn_and_the_rest_said(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from types import SimpleNamespace

    monkeypatch.setattr(flamegraphs, "MAX_RECORDS", 3)
    records = [SimpleNamespace(size=s) for s in (1, 1000, 10, 100, 5000)]
    kept, note = flamegraphs.largest(records)
    assert [r.size for r in kept] == [5000, 1000, 100]
    assert note == "the 2 smallest of 5 allocation sites (0.2 % of the peak's bytes) left out"
    assert flamegraphs.largest(records[:3]) == (records[:3], "")
