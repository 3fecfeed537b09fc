"""A stage runs with the torch threads ``train.threads`` asks for and says so; a bounded validation
or test capture really stops its DataLoader workers' tracking (end to end, slow)."""

from __future__ import annotations

from pathlib import Path

import memray
import pytest
import yaml
from conftest import latest_run, read_events, write_scenario

from harness import cli
from harness.layout import Event


def _run(scenario: Path, reports: Path) -> Path:
    assert cli.main(["run", str(scenario), "--reports", str(reports), "--quiet", "--no-report"]) == 0
    return latest_run(reports)


@pytest.mark.slow
def test_a_script_stage_runs_with_one_thread_and_says_so(tmp_path: Path) -> None:
    # GIVEN a script that never sets threads itself, and train.threads 1
    script = tmp_path / "count.py"
    script.write_text("import torch\nprint('threads', torch.get_num_threads(), flush=True)\n",
                      encoding="utf-8")
    scenario = tmp_path / "s.yaml"
    scenario.write_text(yaml.safe_dump({"name": "threads", "stages": ["main"], "train": {"threads": 1},
                                        "workload": {"entry": str(script)}}), encoding="utf-8")
    run_dir = _run(scenario, tmp_path / "reports")
    # THEN the script ran with 1 thread, and the stage's events say 1 intra-op and 1 inter-op
    stage = run_dir / "stages" / "main"
    assert "threads 1" in (stage / "log.txt").read_text(encoding="utf-8")
    (threads,) = [e for e in read_events(stage) if e["kind"] == Event.TORCH_THREADS]
    assert (threads["threads"], threads["interop_threads"], threads["asked"]) == (1, 1, 1)


@pytest.mark.slow
def test_the_builtin_stages_run_with_two_threads_and_bounded_evaluation_captures(tmp_path: Path) -> None:
    # GIVEN 150-batch validation and test passes with 2 forked workers, captured for 20 batches
    scenario = write_scenario(
        tmp_path / "s.yaml", data={"source": "synthetic", "size": 6000, "num_workers": 2},
        train={"epochs": 1, "batch_size": 4, "log_every": 1000, "max_steps": 30, "threads": 2},
        memray={"train_start": 0, "train_steps": 5, "eval_batches": 20},
        tensors={"trace_steps": 0, "trace_every": 0})
    run_dir = _run(scenario, tmp_path / "reports")
    for stage, section in (("train", "validate"), ("test", "test")):
        events = read_events(run_dir / "stages" / stage)
        # THEN each stage ran with 2 threads
        (threads,) = [e for e in events if e["kind"] == Event.TORCH_THREADS]
        assert (threads["threads"], threads["interop_threads"]) == (2, 2)
        # AND the pass ran whole while its capture stopped after 20 batches
        (end,) = [e for e in events if e["kind"] == Event.SECTION_END]
        (stop,) = [e for e in events if e["kind"] == Event.MEMRAY_STOP and e["capture"].endswith(section)]
        assert (stop["step"], end["steps"]) == (20, 150)
        # AND each worker's capture was finished by memray (not cut off by the worker's exit)
        # after the main capture stopped and before the pass ended
        workers = sorted((run_dir / "stages" / stage / "memray").glob(f"*{section}.bin.*"))
        assert len(workers) == 2, workers
        for path in workers:
            meta = memray.FileReader(str(path)).metadata
            ended = meta.end_time.timestamp()
            assert meta.start_time < meta.end_time, path.name
            assert stop["t"] - 0.01 <= ended < end["t"], (path.name, stop["t"], ended, end["t"])
