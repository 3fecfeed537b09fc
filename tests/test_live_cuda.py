"""The live probe's CUDA path, driven in-process with the device calls replaced by recordings.

No GPU is needed: ``harness.probe.cuda``'s device functions are swapped for ones that replay the
H100 figures' shape (allocated grows in forward, peaks in backward), so what is checked is the
probe's bookkeeping: one reading per phase on traced steps, peaks reset per phase, the cell's
device slots, the allocator-history window and the events that carry them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import read_events

from harness.layout import CELL_FILE, PROBE_CONFIG_FILE
from harness.probe import cell as cellmod
from harness.probe import cuda
from harness.probe.live import LiveProbe
from harness.records.probe_config import ProbeConfig
from harness.records.scenario import CudaConfig, MemrayConfig, TensorsConfig

MB = 1_000_000
# allocated at the end of each phase, and the peak inside it (bytes)
PHASE_FIGURES = {
    "data": (68 * MB, 69 * MB),
    "forward": (70 * MB, 71 * MB),
    "loss": (70 * MB, 70 * MB),
    "backward": (68 * MB, 75 * MB),
    "optimizer": (68 * MB, 69 * MB),
}


class FakeDevice:
    def __init__(self) -> None:
        self.phase = "data"
        self.resets = 0
        self.history: list[str] = []

    def sample(self, device: str, driver: bool = True) -> dict[str, Any]:
        alloc, peak = PHASE_FIGURES[self.phase]
        return {"t": 0.0, "allocated": alloc, "reserved": 80 * MB, "peak_allocated": peak,
                "peak_reserved": 80 * MB, "active": alloc, "inactive_split": 0, "retries": 0,
                "ooms": 0, "device_free": 1000 * MB, "device_total": 2000 * MB}

    def reset(self, device: str) -> None:
        self.resets += 1

    def dump(self, path: Any, max_bytes: int, **kw: Any) -> cuda.HistoryDump:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(b"x" * 10)
        self.history.append("dump")
        return cuda.HistoryDump(str(path), 10, 123, 0, False, False)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeDevice:
    dev = FakeDevice()
    monkeypatch.setattr(cuda, "device_sample", dev.sample)
    monkeypatch.setattr(cuda, "reset_phase_peak", dev.reset)
    monkeypatch.setattr(cuda, "start_history", lambda **kw: dev.history.append("start"))
    monkeypatch.setattr(cuda, "dump_history", dev.dump)
    return dev


def _probe(tmp_path: Path) -> LiveProbe:
    cfg = ProbeConfig(
        stage="train", device="cuda",
        memray=MemrayConfig(mode="off"),
        tensors=TensorsConfig(trace_steps=2, trace_every=0, snapshots=False, composition=False),
        cuda=CudaConfig(sample_every=3, history_epoch=1, history_start=2, history_steps=3),
    )
    (tmp_path / PROBE_CONFIG_FILE).write_text(json.dumps(cfg.model_dump(mode="json")))
    cellmod.create(tmp_path / CELL_FILE)
    return LiveProbe(tmp_path)


def test_per_phase_device_readings_on_device_steps(tmp_path: Path, fake: FakeDevice) -> None:
    p = _probe(tmp_path)
    with p.epoch(1):
        for _ in p.iterate(range(6)):
            ending = "data"
            for phase in ("forward", "loss", "backward", "optimizer"):
                fake.phase = ending  # the device figures of the phase that is ending
                p.phase(phase)
                ending = phase
            fake.phase = "optimizer"
        fake.phase = "data"  # validation: the section's own window
        with p.section("validate"):
            for _ in p.iterate(range(3)):
                pass
    p.close()
    events = read_events(tmp_path)
    traced = [e for e in events if e["kind"] == "traced_step"]
    assert len(traced) == 2
    readings = traced[0]["cuda"]
    assert list(readings) == ["data", "forward", "loss", "backward", "optimizer"]
    assert readings["backward"]["peak_allocated"] == 75 * MB
    assert readings["forward"]["allocated"] == 70 * MB
    totals = next(e for e in events if e["kind"] == "phase_totals" and e["span"] == "epoch")
    # device steps: 0 and 1 (traced), 3 (every 3rd); step 6 never came (the loader ended)
    assert totals["cuda_steps"] == 3
    assert totals["cuda"]["backward"]["peak_allocated"] == 75 * MB
    assert totals["cuda"]["backward"]["readings"] == 3
    assert totals["cuda"]["data"]["peak_allocated"] == 69 * MB
    assert totals["cuda"]["optimizer"]["allocated"] == 68 * MB
    assert totals["cuda"]["validate"] == {
        "readings": 1, "peak_allocated": 69 * MB, "peak_reserved": 80 * MB, "allocated": 68 * MB,
        "reserved": 80 * MB, "inactive_split": 0, "retries": 0, "ooms": 0}
    # per device step: one reset when it begins, one after each of its 5 readings; one for step
    # 6, begun before the loader said it had no more; the section's at its start and its end
    assert fake.resets == 3 * (1 + 5) + 1 + 2
    hist = [e for e in events if e["kind"] == "cuda_history"]
    assert fake.history == ["start", "dump"] and hist[0]["start"] == 2 and hist[0]["stop"] == 5
    assert (tmp_path / hist[0]["file"]).exists()
    reader = cellmod.CellReader(tmp_path / CELL_FILE)
    state = reader.read()
    assert state is not None
    # the section's reading was the last to write the cell's device slots
    assert (state.cuda_allocated, state.cuda_reserved) == (68 * MB, 80 * MB)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_cuda_scenario_without_a_device_is_one_line_naming_the_file(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    from conftest import write_scenario

    path = write_scenario(tmp_path / "gpu.yaml", device="cuda")
    reports = tmp_path / "reports"
    code, out, err = cli("run", str(path), "--reports", str(reports), "--quiet")
    assert code == 2
    assert err.strip() == (f"harness: error: {path}: device: 'cuda' asked for, but this machine "
                           "has no CUDA device (run it on the CPU with --set device=cpu)")
    assert not reports.exists()  # nothing started


def test_the_cuda_scenario_runs_on_the_cpu_with_set(tmp_path: Path) -> None:
    from conftest import REPO

    from harness.records import scenario

    archive = REPO.parent / "shared" / "data" / "cifar10-jpg.tar.gz"
    if not archive.is_file():  # scenarios/cuda.yaml trains on the shared JPEG mirror
        pytest.skip(f"{archive} not found: scenarios/cuda.yaml needs ../shared beside the repository")

    assert scenario.load(REPO / "scenarios" / "cuda.yaml").device == "cuda"
    assert scenario.load(REPO / "scenarios" / "cuda.yaml", ["device=cpu"]).device == "cpu"
