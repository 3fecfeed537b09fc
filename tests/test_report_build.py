"""build_report on a hand-written run directory: the files it writes, summary.json, escaping."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest
from _synthetic import SCRIPT_FILE, MiB, write_capture, write_run

from harness import cli
from harness.report import build_report

SCHEMA = Path(__file__).resolve().parent.parent / "harness" / "schemas" / "summary.schema.json"
EVIL = "<script>alert('name')</script>"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    run_dir = write_run(tmp_path_factory.mktemp("synthetic"), name=EVIL)
    # the manifest carries the name to escape; scenario.yaml must stay one the reader takes
    (run_dir / "scenario.yaml").write_text("name: synthetic\nstages: [train]\n", encoding="utf-8")
    write_capture(run_dir)
    return run_dir, build_report(run_dir, processes=1)


def test_writes_every_file(built) -> None:  # type: ignore[no-untyped-def]
    run_dir, result = built
    out = run_dir / "report"
    for rel in ("report.html", "summary.json", "timeline.png", "timeline.svg",
                "tables/phases.csv", "tables/epochs.csv", "tables/processes.csv",
                "tables/sites.csv", "flamegraphs/train-e1-train-main.html",
                "flamegraphs/train-e1-train-main-temporal.html", "flamegraphs/assets/d3.min.js"):
        assert (out / rel).is_file(), rel
    assert (out / "timeline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert all(f.path is None or f.path.stat().st_size < 20_000_000 for f in result.flamegraphs)
    assert [f.note for f in result.flamegraphs if f.path is None] == []
    assert result.complete
    assert "report" in result.text and "findings" in result.text


def test_summary_validates_and_holds_the_known_numbers(built) -> None:  # type: ignore[no-untyped-def]
    run_dir, _ = built
    summary = json.loads((run_dir / "report" / "summary.json").read_text())
    jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text())).validate(summary)
    peaks = summary["peaks"]
    assert (peaks["main_rss"]["bytes"], peaks["main_rss"]["phase"]) == (160 * MiB, "backward")
    assert peaks["tree_rss"]["bytes"] == 271 * MiB
    assert peaks["workers_uss"]["bytes"] == 14 * MiB
    assert peaks["live_tensor_bytes"] == {"bytes": 6000, "stage": "train", "epoch": 1,
                                          "phase": "backward"}
    assert peaks["heap"]["bytes"] >= 4 * MiB
    assert summary["growth_per_epoch"] == [{
        "stage": "train", "from_epoch": 1, "to_epoch": 2, "main_rss": 2 * MiB,
        "main_uss": 1 * MiB, "tensor_count": 4, "tensor_bytes": 200}]
    assert summary["durations"]["epochs"] == [{"stage": "train", "epoch": 1, "seconds": 3.9},
                                              {"stage": "train", "epoch": 2, "seconds": 1.8}]
    assert summary["metrics"]["final"] == {"val_accuracy": 40, "loss": 0.5}
    assert summary["run"]["complete"] is True
    # a CPU run: no device figures anywhere
    assert peaks["cuda_allocated"] is None and peaks["cuda_reserved"] is None
    assert "cuda" not in summary
    assert all(r["cuda_peak_allocated"] is None for r in summary["phases"])
    page = (run_dir / "report" / "report.html").read_text()
    assert 'id="cuda"' not in page and "cuda_peak" not in page
    assert not (run_dir / "report" / "tables" / "cuda.csv").exists()


def test_the_capture_site_is_attributed(built) -> None:  # type: ignore[no-untyped-def]
    run_dir, _ = built
    sites = (run_dir / "report" / "tables" / "sites.csv").read_text()
    assert f"allocate ({SCRIPT_FILE}:2)" in sites


def test_scenario_name_and_stack_frame_are_escaped(built) -> None:  # type: ignore[no-untyped-def]
    run_dir, _ = built
    page = (run_dir / "report" / "report.html").read_text()
    assert "&lt;script&gt;alert(&#39;name&#39;)&lt;/script&gt;" in page  # the scenario name
    assert "allocate (&lt;script&gt;alert(1)&lt;/script&gt;:2)" in page  # the stack frame
    assert re.search(r"<script", page, re.IGNORECASE) is None  # the page runs no script at all


def test_a_killed_run_is_marked_incomplete(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = write_run(tmp_path, status="killed")
    assert cli.main(["report", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "INCOMPLETE" in out
    page = (run_dir / "report" / "report.html").read_text()
    assert 'id="incomplete"' in page and "Incomplete run." in page
    assert json.loads((run_dir / "report" / "summary.json").read_text())["run"]["complete"] is False


def test_report_of_a_path_that_is_not_a_run_directory(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["report", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a run directory" in err[0]
