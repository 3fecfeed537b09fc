"""What makes the report fast changes nothing it says: a capture's zero tail, the summary first."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
from _synthetic import write_busy_capture, write_capture, write_run

from harness.analysis import captures
from harness.analysis.load import Capture
from harness.report import build_report


def test_a_zero_tail_is_read_as_memray_reads_it(tmp_path: Path) -> None:
    # GIVEN a raw capture and a copy ending in 200 kB of zeros, as an unclosed worker's does
    path = write_busy_capture(write_run(tmp_path), compress=False)
    assert path.read_bytes().startswith(captures.RAW_MAGIC)
    padded = path.with_name("padded.bin")
    shutil.copyfile(path, padded)
    with open(padded, "ab") as fh:
        fh.write(bytes(200_000))
    before = captures.zero_tail(path)
    assert captures.zero_tail(padded) == before + 200_000

    # WHEN both are read (the padded one through a copy without its tail)
    def read(p: Path) -> captures.CaptureData:
        data, records = captures.read_capture(Capture("train", "train-e1-train", p, None, p.stat().st_size),
                                              None)
        assert records is not None and data.error is None
        return data

    plain, cut = read(path), read(padded)

    # THEN every figure and every site is the same
    assert (cut.peak_memory, cut.total_allocations, cut.memray_samples) == (
        plain.peak_memory, plain.total_allocations, plain.memray_samples)
    assert plain.total_allocations and plain.total_allocations > 1000
    pd.testing.assert_frame_equal(cut.sites, plain.sites)


def test_zero_tail_counts_across_blocks(tmp_path: Path) -> None:
    path = tmp_path / "f"
    for body, zeros in ((b"x", 0), (b"x", 5), (b"", 7), (b"ab\0c", 3)):
        path.write_bytes(body + bytes(zeros))
        assert captures.zero_tail(path, block=2) == zeros + (0 if body.rstrip(b"\0") else len(body))


def test_the_summary_is_handed_over_before_the_files_are_written(tmp_path: Path) -> None:
    run_dir = write_run(tmp_path)
    write_capture(run_dir)
    seen: list[tuple[str, bool]] = []

    def on_summary(text: str) -> None:
        seen.append((text, (run_dir / "report" / "report.html").exists()))

    result = build_report(run_dir, processes=1, on_summary=on_summary)
    assert seen == [(result.text, False)]
    assert result.html.is_file() and str(result.html) in result.text


def test_the_timeline_envelope_keeps_every_peak_and_dip() -> None:
    import numpy as np

    from harness.render import timeline

    # GIVEN a day of ticks in two stages, with one spike and one dip in the middle of the first
    rng = np.random.default_rng(0)
    n = 200_000
    df = pd.DataFrame({"stage": ["train"] * (n - 1000) + ["test"] * 1000, "x": np.arange(n) * 0.4,
                       "main_rss": rng.normal(800e6, 5e6, n), "tree_rss": rng.normal(1.8e9, 9e6, n)})
    df.loc[50_001, "main_rss"], df.loc[70_003, "tree_rss"] = 2e9, 1e6

    # WHEN it is cut down for drawing
    out = timeline._decimate(df, ["main_rss", "tree_rss"])

    # THEN it fits the budget, keeps each stage's extremes and stays in time order
    assert len(out) <= timeline.MAX_POINTS
    for stage, g in df.groupby("stage"):
        o = out[out["stage"] == stage]
        assert (o["main_rss"].max(), o["main_rss"].min()) == (g["main_rss"].max(), g["main_rss"].min())
        assert (o["tree_rss"].max(), o["tree_rss"].min()) == (g["tree_rss"].max(), g["tree_rss"].min())
        assert o["x"].is_monotonic_increasing
    assert timeline._decimate(df.head(100), ["main_rss"]).equals(df.head(100))  # short: as it was
