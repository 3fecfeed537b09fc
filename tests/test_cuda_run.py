"""End to end on a CUDA device that replays the H100 recordings: run, report, summary, check.

``harness run`` on a ``device: cuda`` scenario whose workload (tests/workloads/fake_cuda.py)
replaces the ``torch.cuda`` calls with a replay of ``../shared/data/cuda-h100/`` in its own
process; this process (the runner's "is there a device?" check) is told there is one. Everything
between is the real harness: probe, cell, sampler, snapshots, history dump, analysis, report, check.

Known answers (bytes) from the recordings, where the replay's per-phase peak is the larger of
allocated at the phase's start and end, or the recording's running peak where it rose in the phase:
batch 4, epoch 1: backward 68,520,960 (the recording's final peak, set in step 1's backward),
reserved 69,206,016; forward 68,444,672 (step 1: the first forward's 34.86 MB is smaller);
batch 256: backward 87,359,488, reserved 113,246,208.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import jsonschema
import pandas as pd
import pytest
import torch
import yaml

from harness import cli
from harness.analysis import cuda
from harness.analysis.load import load_run
from harness.analysis.ticks import ticks
from harness.render import timeline

REPO = Path(__file__).resolve().parents[1]
RECORDING = REPO.parent / "shared" / "data" / "cuda-h100"
WORKLOAD = Path(__file__).resolve().parent / "workloads" / "fake_cuda.py"
SCHEMA = REPO / "harness" / "schemas" / "summary.schema.json"
STEPS = 30
SAMPLE_EVERY = 5  # device steps 0, 1 (traced), 5, 10, 15, 20, 25: 7 an epoch
H100 = 85017493504

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not RECORDING.is_dir(), reason="needs ../shared/data/cuda-h100"),
]


def _run(root: Path, name: str, batch: str, *args: str, budgets: dict[str, Any] | None = None,
         expect: int = 0) -> Path:
    scenario = {
        "name": name, "device": "cuda", "stages": ["main"],
        "workload": {"entry": str(WORKLOAD),
                     "args": ["--recording", str(RECORDING), "--batch", batch,
                              "--steps", str(STEPS), *args]},
        "memray": {"mode": "off"},
        "tensors": {"trace_steps": 2, "trace_every": 0},
        "cuda": {"sample_every": SAMPLE_EVERY, "history_epoch": 1, "history_start": 2,
                 "history_steps": 5},
        **({"budgets": budgets} if budgets else {}),
    }
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(scenario), encoding="utf-8")
    reports = root / "reports"
    with pytest.MonkeyPatch.context() as mp:  # the runner's check, in this process
        mp.setattr(torch.cuda, "is_available", lambda: True)
        mp.setattr(torch.cuda, "device_count", lambda: 1)
        assert cli.main(["run", str(path), "--reports", str(reports), "--quiet"]) == expect
    (run_dir,) = (reports / name).iterdir()
    return run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cuda")
    return {
        "bs4": _run(root, "cuda-bs4", "4", budgets={"peak_cuda_allocated": "80 MB",
                                                      "phases": {"backward": {"peak_cuda_reserved": "100 MB"}}}),
        "bs256": _run(root, "cuda-bs256", "256", "--pinned", "8", "--retries", "2",
                      budgets={"peak_cuda_allocated": "80 MB"}),
    }


def _summary(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "report" / "summary.json").read_text())


def _phase(summary: dict[str, Any], epoch: int, phase: str) -> dict[str, Any]:
    return next(r for r in summary["phases"] if r["epoch"] == epoch and r["phase"] == phase)


def test_summary_names_the_device_peak_and_its_phase(runs: dict[str, Path]) -> None:
    s = _summary(runs["bs4"])
    jsonschema.validate(s, json.loads(SCHEMA.read_text()))
    assert s["peaks"]["cuda_allocated"] == {"bytes": 68_520_960, "stage": "main", "epoch": 1,
                                           "phase": "backward"}
    # reserved is level from step 0's backward on: the peak names the phase where allocations peaked
    assert s["peaks"]["cuda_reserved"] == {"bytes": 69_206_016, "stage": "main", "epoch": 1,
                                          "phase": "backward"}
    assert _phase(s, 1, "backward")["cuda_peak_allocated"] == 68_520_960
    assert _phase(s, 1, "forward")["cuda_peak_allocated"] == 68_444_672
    # epoch 2 replays step 2 throughout: backward peaks at loss's end, 68,445,696
    assert _phase(s, 2, "backward")["cuda_peak_allocated"] == 68_445_696
    assert _phase(s, 1, "validate")["cuda_peak_allocated"] == 68_444_672
    c = s["cuda"]
    assert (c["name"], c["total"], c["free_min"]) == ("NVIDIA H100 80GB HBM3", H100, 84_465_090_560)
    assert (c["retries"], c["ooms"]) == (0, 0)
    s256 = _summary(runs["bs256"])
    jsonschema.validate(s256, json.loads(SCHEMA.read_text()))
    assert s256["peaks"]["cuda_allocated"]["bytes"] == 87_359_488
    assert s256["peaks"]["cuda_reserved"]["bytes"] == 113_246_208


def test_device_table_counts_the_device_steps(runs: dict[str, Path]) -> None:
    df = pd.read_csv(runs["bs4"] / "report" / "tables" / "cuda.csv")
    per_epoch = df[df["phase"] == "backward"].set_index("epoch")["readings"].to_dict()
    assert per_epoch == {1: 7, 2: 7}
    assert df[(df["phase"] == "validate")]["readings"].tolist() == [1, 1]
    first = df[(df["epoch"] == 1) & (df["phase"] == "optimizer")].iloc[0]
    assert (first["allocated"], first["reserved"]) == (68_297_216, 69_206_016)


def test_samples_carry_device_memory_on_the_host_clock(runs: dict[str, Path]) -> None:
    run = load_run(runs["bs4"])
    main = run.samples[run.samples["role"] == "main"].dropna(subset=["cuda_allocated"])
    assert not main.empty
    recorded = {int(p[ph]["allocated_bytes.all.current"])
                for p in json.loads((RECORDING / "cuda-memory-stats.json").read_text())["runs"]["4"]["phases"]
                for ph in ("data", "forward", "loss", "backward", "optimizer")}
    assert set(main["cuda_allocated"].astype(int)) <= recorded
    data = timeline.timeline_data(run, ticks(run.samples), [])
    assert timeline.has_device(data)
    # epoch-1, epoch-2 and end snapshots, each after a validation pass that replays a forward
    assert list(data.cuda["allocated"]) == [68_444_672] * 3


def test_snapshots_and_history_window(runs: dict[str, Path]) -> None:
    run_dir = runs["bs4"]
    snap = json.loads((run_dir / "stages" / "main" / "snapshots" / "epoch-1.json").read_text())
    assert snap["cuda"]["name"] == "NVIDIA H100 80GB HBM3"
    assert snap["cuda"]["stats"]["peak_allocated"] >= snap["cuda"]["allocated"]
    pickle_path = run_dir / "stages" / "main" / "cuda" / "main-e1-steps2-7.pickle"
    assert pickle_path.is_file()
    with open(RECORDING / "cuda-snapshot-bs4.pickle", "rb") as fh:
        expected = cuda.summarize_history(pickle.load(fh))  # noqa: S301 - our recording
    (h,) = _summary(run_dir)["cuda"]["history"]
    assert (h["start"], h["stop"], h["error"]) == (2, 7, None)
    assert (h["segments"], h["reserved"], h["allocated"]) == (
        expected.segments, expected.reserved, expected.allocated)


def test_report_page_shows_the_device(runs: dict[str, Path]) -> None:
    page = (runs["bs4"] / "report" / "report.html").read_text()
    assert 'id="cuda"' in page and "NVIDIA H100 80GB HBM3" in page
    assert 'href="https://pytorch.org/memory_viz"' in page
    assert 'href="../stages/main/cuda/main-e1-steps2-7.pickle"' in page
    assert 'id="table-cuda"' in page
    assert "Device memory peaks in phase backward" in page


def test_gpu_findings(runs: dict[str, Path]) -> None:
    found = {f["kind"]: f for f in _summary(runs["bs4"])["findings"]}
    peak = found["cuda_peak_phase"]["numbers"]
    assert (peak["phase"], peak["epoch"], peak["peak_allocated"]) == ("backward", 1, 68_520_960)
    assert peak["share_of_device"] == pytest.approx(68_520_960 / H100)
    assert "cuda_pinned_host" not in found and "cuda_retries" not in found
    found = {f["kind"]: f for f in _summary(runs["bs256"])["findings"]}
    assert found["cuda_pinned_host"]["numbers"]["pinned"] == 8 * 1024 * 1024
    assert found["cuda_retries"]["numbers"]["retries"] == 2
    assert "cuda_reserved" not in found  # 113 MB for 71 MB: below the 256 MiB gap


def test_check_holds_device_memory_to_budgets_and_baselines(
        runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check", str(runs["bs4"])]) == 0
    out = capsys.readouterr().out
    # result, check, metric, phase, measured, limit
    rows = [line.split()[:8] for line in out.splitlines() if line.startswith("pass")]
    assert rows == [["pass", "budget", "peak_cuda_allocated", "all", "65.3", "MiB", "76.3", "MiB"],  # 80 MB
                    ["pass", "budget", "peak_cuda_reserved", "backward", "66.0", "MiB", "95.4", "MiB"]]
    assert cli.main(["check", str(runs["bs256"])]) == 1
    assert "FAIL" in capsys.readouterr().out
    base = tmp_path / "bs4.json"
    assert cli.main(["baseline", str(runs["bs4"]), "-o", str(base)]) == 0
    doc = json.loads(base.read_text())
    assert doc["metrics"]["peak_cuda_allocated"]["values"] == [68_520_960]
    assert doc["metrics"]["phases.validate.peak_cuda_allocated"]["values"] == [68_444_672]
    capsys.readouterr()
    # bs256 is another scenario than the baseline's bs4: compared on purpose
    assert cli.main(["check", str(runs["bs256"]), "--baseline", str(base), "--any-baseline"]) == 1
    failed = [line for line in capsys.readouterr().out.splitlines() if "FAIL" in line]
    assert any(line.split()[2:4] == ["peak_cuda_allocated", "backward"] for line in failed)
    assert any(line.split()[2] == "peak_cuda_reserved" for line in failed)
    assert cli.main(["check", str(runs["bs4"]), "--baseline", str(base)]) == 0


def test_the_composition_carries_the_device_at_each_moment(runs: dict[str, Path]) -> None:
    # the replayed allocator at the stage's start (after the first phase's stats: 79,360 bytes
    # in the small pool's 2 MiB segment) and at each epoch's end (the replay's last step);
    # the context is the recorded device use beyond what the allocator reserved
    run = load_run(runs["bs4"])
    moments = run.stages[0].composition
    assert [m.when for m in moments] == ["start", "epoch", "epoch", "end"]
    free, total = 84_465_090_560, H100
    for m in moments:
        assert m.cuda is not None
        assert m.cuda.allocated <= m.cuda.reserved
        assert m.cuda.context == total - free - m.cuda.reserved
        assert m.processes[0].parts.total() == m.processes[0].rss
    assert (moments[0].cuda.allocated, moments[0].cuda.reserved) == (79_360, 2_097_152)  # type: ignore[union-attr]
