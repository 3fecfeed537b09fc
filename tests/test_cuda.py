"""CUDA analysis without a GPU: stats, snapshots and findings, checked against H100 recordings.

The recordings (``../shared/data/cuda-h100/``, see ``../shared/data/README.md``) hold
``torch.cuda.memory_stats()`` after every phase of three steps of the tutorial net at batch 4 and
256, and two allocator-history snapshots. Expected figures are read from the files directly,
never through the code under test.
"""

from __future__ import annotations

import json
import os
import pickle
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

from harness.analysis import cuda
from harness.probe import cuda as device

PHASES = ("data", "forward", "loss", "backward", "optimizer")
MB = 1_000_000


def _data_dir() -> Path | None:
    default = Path(__file__).resolve().parents[2] / "shared" / "data" / "cuda-h100"
    if default.is_dir():
        return default
    env = os.environ.get("HARNESS_SHARED_DATA")
    if env:
        for candidate in (Path(env) / "cuda-h100", Path(env)):
            if (candidate / "cuda-memory-stats.json").is_file():
                return candidate
    return None


@pytest.fixture(scope="module")
def data_dir() -> Path:
    found = _data_dir()
    if found is None:
        pytest.skip("H100 recordings not found: expected ../shared/data/cuda-h100 beside the "
                    "repository, or HARNESS_SHARED_DATA pointing at the shared data directory")
    return found


@pytest.fixture(scope="module")
def recorded(data_dir: Path) -> dict[str, Any]:
    return json.loads((data_dir / "cuda-memory-stats.json").read_text(encoding="utf-8"))


def _records(recorded: dict[str, Any], batch: str) -> list[tuple[str, dict[str, Any]]]:
    return [(p, step[p]) for step in recorded["runs"][batch]["phases"] for p in PHASES]


_PHASE_COLUMNS = ("phase", "allocated", "reserved", "peak_allocated", "peak_reserved", "retries",
                  "ooms")


def _phase_table(records: list[tuple[str, dict[str, Any]]]) -> pd.DataFrame:
    """The (phase, stats) records as the device table's columns: device_peak_phase's input."""
    rows = []
    for phase, raw in records:
        st = cuda.parse_memory_stats(raw)
        rows.append((phase, st.allocated, st.reserved, st.peak_allocated, st.peak_reserved,
                     st.num_alloc_retries, st.num_ooms))
    return pd.DataFrame(rows, columns=list(_PHASE_COLUMNS)).astype(
        {c: "int64" for c in _PHASE_COLUMNS[1:]})


def _raw_snapshot(data_dir: Path, batch: int) -> dict[str, Any]:
    with open(data_dir / f"cuda-snapshot-bs{batch}.pickle", "rb") as fh:
        return pickle.load(fh)  # our own recording


# -- memory_stats ----------------------------------------------------------------------------


def test_parse_memory_stats_reads_the_first_forward_at_batch_4(recorded: dict[str, Any]) -> None:
    # GIVEN stats after the first forward at batch 4 (~34.8 MB, mostly a 32 MiB workspace)
    raw = recorded["runs"]["4"]["phases"][0]["forward"]
    # WHEN parsed
    s = cuda.parse_memory_stats(raw)
    # THEN every field is the recorded value
    assert s.allocated == raw["allocated_bytes.all.current"] == 34_860_032
    assert s.reserved == raw["reserved_bytes.all.current"] == 35_651_584
    assert s.peak_allocated == raw["allocated_bytes.all.peak"]
    assert s.peak_reserved == raw["reserved_bytes.all.peak"]
    assert s.active == raw["active_bytes.all.current"]
    assert s.inactive_split == raw["inactive_split_bytes.all.current"] == 791_552
    assert s.reserved_large_pool == raw["reserved_bytes.large_pool.current"] == 32 * cuda.MiB
    assert s.segments == raw["segment.all.current"] == 2
    assert (s.num_alloc_retries, s.num_ooms) == (0, 0)
    assert (s.num_device_alloc, s.num_device_free) == (2, 0)
    assert 34.8 * MB <= s.allocated < 34.9 * MB
    # reserved - allocated is exactly the split free space: no whole free segment yet
    assert s.cached == s.inactive_split


def test_parse_memory_stats_tolerates_missing_keys() -> None:
    s = cuda.parse_memory_stats({"allocated_bytes.all.current": 10, "num_ooms": None})
    assert s.allocated == 10
    assert s.reserved == s.peak_allocated == s.num_ooms == 0
    assert s.num_device_alloc is None and s.num_sync_all_streams is None
    assert cuda.parse_memory_stats({}).to_dict()["allocated"] == 0


@pytest.mark.parametrize("batch", ["4", "256"])
def test_parsed_stats_equal_the_recorded_values(recorded: dict[str, Any], batch: str) -> None:
    for _phase, raw in _records(recorded, batch):
        s = cuda.parse_memory_stats(raw)
        assert s.allocated == raw["allocated_bytes.all.current"]
        assert s.reserved == raw["reserved_bytes.all.current"]
        assert s.peak_allocated == raw["allocated_bytes.all.peak"]
        assert s.peak_reserved == raw["reserved_bytes.all.peak"]
        assert s.num_alloc_retries == raw["num_alloc_retries"]
        assert s.num_ooms == raw["num_ooms"]


def test_batch_256_peaks_above_batch_4(recorded: dict[str, Any]) -> None:
    peak4 = _phase_table(_records(recorded, "4"))["peak_allocated"].max()
    peak256 = _phase_table(_records(recorded, "256"))["peak_allocated"].max()
    assert peak256 > peak4
    assert peak4 == recorded["runs"]["4"]["final"]["allocated_bytes.all.peak"]
    assert peak256 == recorded["runs"]["256"]["final"]["allocated_bytes.all.peak"]


# -- findings --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("batch", "phase", "row"),
    # running peaks (never reset in the recording): the phase during which the final peak was
    # set, the second step's backward in both runs (rows: 5 phases per step)
    [("4", "backward", 8), ("256", "backward", 8)],
)
def test_device_peak_phase_on_the_recordings(
    recorded: dict[str, Any], batch: str, phase: str, row: int
) -> None:
    total = recorded["info"]["total_memory"]
    finding = cuda.device_peak_phase(_phase_table(_records(recorded, batch)),
                                     device_total=total)
    assert finding is not None
    assert (finding.phase, finding.row) == (phase, row)
    assert finding.peak_allocated == recorded["runs"][batch]["final"]["allocated_bytes.all.peak"]
    assert finding.share_of_device == pytest.approx(finding.peak_allocated / total)
    assert "backward" in finding.text and "MiB" in finding.text


def test_device_peak_phase_with_peaks_reset_per_phase() -> None:
    # GIVEN per-phase peaks (reset at each phase start): forward is the highest
    def stats(peak: int) -> dict[str, int]:
        return {"allocated_bytes.all.peak": peak, "reserved_bytes.all.peak": 2 * peak}

    table = _phase_table([("data", stats(10)), ("forward", stats(50)),
                              ("backward", stats(40)), ("forward", stats(50))])
    finding = cuda.device_peak_phase(table)
    assert finding is not None
    assert (finding.phase, finding.row, finding.peak_reserved) == ("forward", 1, 100)
    assert finding.share_of_device is None


def test_device_peak_phase_needs_data() -> None:
    assert cuda.device_peak_phase(_phase_table([])) is None
    assert cuda.device_peak_phase(_phase_table([("data", {})])) is None


GiB = 1 << 30


def _stats(**fields: int) -> cuda.CudaStats:
    base = cuda.parse_memory_stats({})
    return cuda.CudaStats(**{**base.to_dict(), **fields})


@pytest.mark.parametrize(
    ("fields", "cause"),
    [
        # cache: 8 GiB reserved for 2 GiB now, but the peak needed the 8 GiB (6 GiB whole free)
        (dict(allocated=2 * GiB, reserved=8 * GiB, peak_allocated=7_900 * cuda.MiB,
              peak_reserved=8 * GiB, inactive_split=100 * cuda.MiB), "cache"),
        # fragmentation: most of the gap is split blocks between live tensors
        (dict(allocated=2 * GiB, reserved=8 * GiB, peak_allocated=7_900 * cuda.MiB,
              peak_reserved=8 * GiB, inactive_split=4 * GiB), "fragmentation"),
        # fragmentation: even at the peak the allocator held twice what tensors needed
        (dict(allocated=2 * GiB, reserved=8 * GiB, peak_allocated=4 * GiB,
              peak_reserved=8 * GiB, inactive_split=0), "fragmentation"),
    ],
)
def test_reserved_far_above_allocated_fires(fields: dict[str, int], cause: str) -> None:
    finding = cuda.reserved_far_above_allocated(_stats(**fields))
    assert finding is not None
    assert finding.cause == cause
    assert finding.gap == 6 * GiB and finding.ratio == pytest.approx(4.0)
    assert finding.kind == "cuda_reserved"
    assert "8,192.0 MiB" in finding.text and "2,048.0 MiB" in finding.text


@pytest.mark.parametrize(
    "fields",
    [
        dict(allocated=2 * GiB, reserved=2 * GiB + 255 * cuda.MiB),  # gap under 256 MiB
        dict(allocated=20 * GiB, reserved=24 * GiB),  # 4 GiB gap but only 1.2x
        dict(),  # nothing allocated at all
    ],
)
def test_reserved_far_above_allocated_stays_quiet(fields: dict[str, int]) -> None:
    assert cuda.reserved_far_above_allocated(_stats(**fields)) is None


@pytest.mark.parametrize("batch", ["4", "256"])
def test_reserved_finding_does_not_fire_on_the_recordings(
    recorded: dict[str, Any], batch: str
) -> None:
    # batch 256 ends with 108 MiB reserved for 68 MiB allocated: 1.6x, but only 40 MiB of gap
    final = cuda.parse_memory_stats(recorded["runs"][batch]["final"])
    assert cuda.reserved_far_above_allocated(final) is None
    # a threshold low enough turns it on, and the split share makes it fragmentation
    low = cuda.reserved_far_above_allocated(final, min_gap=1, min_ratio=1.01)
    assert low is not None and low.gap == final.reserved - final.allocated


def test_allocator_retries() -> None:
    assert cuda.allocator_retries(_stats()) is None
    finding = cuda.allocator_retries(_stats(num_alloc_retries=3, num_ooms=1))
    assert finding is not None and (finding.retries, finding.ooms) == (3, 1)
    assert "retried 3" in finding.text


def test_pinned_host_memory_fires_above_threshold() -> None:
    host = {
        "allocated_bytes.current": 64 * cuda.MiB,
        "allocated_bytes.peak": 96 * cuda.MiB,
        "active_bytes.current": 16 * cuda.MiB,
        "allocations.current": 8,
        "num_host_alloc": 12,
    }
    finding = cuda.pinned_host_memory(host, rss=256 * cuda.MiB)
    assert finding is not None
    assert (finding.pinned, finding.peak_pinned, finding.in_use, finding.blocks) == (
        64 * cuda.MiB, 96 * cuda.MiB, 16 * cuda.MiB, 8)
    assert finding.share_of_rss == pytest.approx(0.25)
    assert "64.0 MiB" in finding.text and "25%" in finding.text


@pytest.mark.parametrize(
    "host",
    [
        {},  # what host_memory_stats() returns without CUDA
        {"allocated_bytes.current": 512 * 1024, "allocated_bytes.peak": 512 * 1024},
    ],
)
def test_pinned_host_memory_stays_quiet(host: dict[str, int]) -> None:
    assert cuda.pinned_host_memory(host) is None


# -- allocator snapshots ---------------------------------------------------------------------


@pytest.mark.parametrize("batch", [4, 256])
def test_summarize_history_matches_an_independent_count(data_dir: Path, batch: int) -> None:
    raw = _raw_snapshot(data_dir, batch)
    loaded = cuda.load_history(data_dir / f"cuda-snapshot-bs{batch}.pickle")
    summary = cuda.summarize_history(loaded)

    segments = raw["segments"]
    blocks = [b for s in segments for b in s["blocks"]]
    entries = [e for trace in raw["device_traces"] for e in trace]
    free = [b["size"] for b in blocks if b["state"] == "inactive"]
    assert summary.segments == len(segments)
    assert summary.reserved == sum(s["total_size"] for s in segments)
    assert summary.allocated == sum(s["allocated_size"] for s in segments)
    assert summary.reserved >= summary.allocated
    assert summary.free == sum(free) == summary.reserved - summary.active
    assert summary.largest_free_block == max(free)
    assert summary.fragmentation == pytest.approx(1 - max(free) / sum(free))
    assert summary.trace_entries == len(entries)
    assert summary.trace_actions == dict(Counter(e["action"] for e in entries))
    assert summary.blocks_by_state == dict(Counter(b["state"] for b in blocks))
    assert summary.split_free + summary.whole_free_segments == summary.free
    assert summary.largest_segments[0].total_size == max(s["total_size"] for s in segments)
    assert summary.expandable_segments is False
    alloc_bytes = sum(e["size"] for e in entries if e["action"] == "alloc")
    assert sum(s.bytes for s in summary.top_alloc_sites) <= alloc_bytes
    json.dumps(summary.to_dict())  # JSON-ready for summary.json


@pytest.mark.parametrize(
    ("batch", "segments", "entries", "split_free", "whole_free"),
    [(4, 3, 1740, 908_800, 0), (256, 6, 1920, 18_772_480, 23_068_672)],
)
def test_snapshot_known_answers_agree_with_memory_stats(
    data_dir: Path, recorded: dict[str, Any], batch: int, segments: int, entries: int,
    split_free: int, whole_free: int,
) -> None:
    # GIVEN the snapshot taken after the three recorded steps and the final stats of that run
    summary = cuda.summarize_history(_raw_snapshot(data_dir, batch))
    final = recorded["runs"][str(batch)]["final"]
    # THEN the allocator's two views agree
    assert (summary.segments, summary.trace_entries) == (segments, entries)
    assert summary.segments == final["segment.all.current"]
    assert summary.reserved == final["reserved_bytes.all.current"]
    assert summary.allocated == final["allocated_bytes.all.current"]
    assert summary.split_free == final["inactive_split_bytes.all.current"] == split_free
    assert summary.whole_free_segments == whole_free
    # the two 32 MiB workspace blocks predate the recording, so they carry no stack
    assert summary.live_sites[0].site == cuda.NO_STACK
    assert summary.live_sites[0].bytes >= 64 * cuda.MiB


def test_snapshot_allocation_sites_name_user_code_and_autograd_nodes(data_dir: Path) -> None:
    summary = cuda.summarize_history(_raw_snapshot(data_dir, 256))
    sites = {s.site: s for s in summary.top_alloc_sites}
    forward = [s for s in sites if s.endswith(" forward") and "cuda_probe.py" in s]
    assert forward, sites
    assert "autograd ConvolutionBackward0" in sites
    # ranked by bytes
    assert [s.bytes for s in summary.top_alloc_sites] == sorted(
        (s.bytes for s in summary.top_alloc_sites), reverse=True)


@pytest.mark.parametrize(
    ("frames", "site"),
    [
        ([], cuda.NO_STACK),
        ([{"name": "conv2d", "filename": "/v/lib/python3.12/site-packages/torch/f.py", "line": 5},
          {"name": "forward", "filename": "/work/main/model/net.py", "line": 12}],
         "/work/main/model/net.py:12 forward"),
        ([{"name": "conv2d", "filename": "/v/lib/python3.12/site-packages/torch/f.py", "line": 5}],
         "/v/lib/python3.12/site-packages/torch/f.py:5 conv2d"),
        ([{"name": "torch::unwind::unwind()", "filename": "??", "line": 0},
          {"name": "torch::autograd::generated::ReluBackward0::apply(x)", "filename": "",
           "line": 0}],
         "autograd ReluBackward0"),
        ([{"name": "c10::cuda::CUDACachingAllocator::malloc(int)", "filename": "", "line": 0},
          {"name": "at::_ops::sum_dim_IntList::call(at::Tensor const&)", "filename": "",
           "line": 0}],
         "aten::sum_dim_IntList"),
        ([{"name": "c10::cuda::CUDACachingAllocator::malloc(int)", "filename": "", "line": 0},
          {"name": "at::(anonymous namespace)::create_out(int)", "filename": "", "line": 0}],
         "at::{anonymous}::create_out"),
    ],
)
def test_allocation_site(frames: list[dict[str, Any]], site: str) -> None:
    assert cuda.allocation_site(frames) == site


def test_summarize_history_filters_by_device_and_handles_empty() -> None:
    snapshot = {
        "segments": [
            {"device": 0, "total_size": 100, "allocated_size": 60, "active_size": 60,
             "segment_type": "large",
             "blocks": [{"size": 60, "state": "active_allocated"},
                        {"size": 40, "state": "inactive"}]},
            {"device": 1, "total_size": 50, "allocated_size": 0, "active_size": 0,
             "segment_type": "small", "blocks": [{"size": 50, "state": "inactive"}]},
        ],
        "device_traces": [[{"action": "alloc", "size": 60, "time_us": 1}], []],
    }
    both = cuda.summarize_history(snapshot)
    assert (both.segments, both.reserved, both.free, both.largest_free_block) == (2, 150, 90, 50)
    assert both.split_free == 40 and both.whole_free_segments == 50
    assert both.fragmentation == pytest.approx(1 - 50 / 90)
    dev1 = cuda.summarize_history(snapshot, device=1)
    assert (dev1.segments, dev1.trace_entries, dev1.fragmentation) == (1, 0, 0.0)
    empty = cuda.summarize_history({"segments": []})
    assert (empty.reserved, empty.fragmentation, empty.trace_span_s) == (0, None, None)


def test_load_snapshot_rejects_other_pickles(tmp_path: Path) -> None:
    path = tmp_path / "x.pickle"
    path.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(cuda.HistoryFormatError):
        cuda.load_history(path)


# -- bounding the history ---------------------------------------------------------------------


def test_bound_history_keeps_a_small_snapshot_whole(data_dir: Path) -> None:
    raw = _raw_snapshot(data_dir, 4)
    bounded = device.bound_history(raw, device.DEFAULT_MAX_BYTES)
    assert bounded.entries_dropped == 0 and bounded.entries_kept == 1740
    assert pickle.loads(bounded.data) == raw


@pytest.mark.parametrize("max_bytes", [200_000, 100_000, 50_000])
def test_bound_history_drops_the_oldest_events(data_dir: Path, max_bytes: int) -> None:
    raw = _raw_snapshot(data_dir, 256)
    bounded = device.bound_history(raw, max_bytes)
    assert bounded.nbytes <= max_bytes
    kept = pickle.loads(bounded.data)
    trace = kept["device_traces"][0]
    assert 0 < len(trace) == bounded.entries_kept < 1920
    assert bounded.entries_kept + bounded.entries_dropped == 1920
    assert trace == raw["device_traces"][0][-len(trace):]  # the newest ones
    assert kept["segments"] == raw["segments"]
    assert len(raw["device_traces"][0]) == 1920  # the input was not changed


def test_bound_history_drops_block_stacks_last(data_dir: Path) -> None:
    raw = _raw_snapshot(data_dir, 256)
    bounded = device.bound_history(raw, 5_000)
    assert bounded.entries_kept == 0 and bounded.block_frames_dropped
    kept = pickle.loads(bounded.data)
    assert all(b["frames"] == [] for s in kept["segments"] for b in s["blocks"])
    assert cuda.summarize_history(kept).reserved == cuda.summarize_history(raw).reserved
    assert bounded.over_budget == (bounded.nbytes > 5_000)


# -- device-side helpers on a machine without CUDA -------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the guard on a machine without CUDA")
@pytest.mark.parametrize(
    "call",
    [
        lambda: device.device_sample("cuda"),
        lambda: device.device_sample("cuda:0"),
        lambda: device.reset_phase_peak("cuda"),
        lambda: device.start_history(),
        lambda: device.stop_history(),
    ],
)
def test_device_helpers_refuse_without_cuda(call: Any) -> None:
    with pytest.raises(device.CudaUnavailable, match="no CUDA device"):
        call()


def test_device_helpers_refuse_a_cpu_device() -> None:
    with pytest.raises(device.CudaUnavailable, match="not a CUDA device"):
        device.device_sample("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the guard on a machine without CUDA")
def test_dump_history_refuses_without_cuda(tmp_path: Path) -> None:
    with pytest.raises(device.CudaUnavailable):
        device.dump_history(tmp_path / "h.pickle")
    assert not (tmp_path / "h.pickle").exists()


def test_host_sample_is_empty_without_cuda() -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA machine has pinned-memory statistics")
    assert device.host_sample() == {}
    assert cuda.pinned_host_memory(device.host_sample()) is None


# -- device-side helpers wired to recorded data (torch.cuda stubbed) --------------------------


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch, recorded: dict[str, Any],
              data_dir: Path) -> list[tuple[str, Any]]:
    """torch.cuda answering with the H100 recordings; returns the calls made to it."""
    calls: list[tuple[str, Any]] = []
    final = recorded["runs"]["256"]["final"]
    free, total = recorded["info"]["mem_get_info"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "memory_stats", lambda dev=None: dict(final))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda dev=None: (free, total))
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats",
                        lambda dev=None: calls.append(("reset", dev)))
    monkeypatch.setattr(torch.cuda.memory, "_record_memory_history",
                        lambda enabled="all", **kw: calls.append(("history", enabled, kw)))
    monkeypatch.setattr(torch.cuda.memory, "_snapshot",
                        lambda device=None, **kw: _raw_snapshot(data_dir, 256))
    return calls


def test_device_sample_reads_one_stats_call(
    fake_cuda: list[tuple[str, Any]], recorded: dict[str, Any]
) -> None:
    final = recorded["runs"]["256"]["final"]
    sample = device.device_sample("cuda:0")
    assert sample["allocated"] == final["allocated_bytes.all.current"]
    assert sample["reserved"] == final["reserved_bytes.all.current"]
    assert sample["peak_allocated"] == final["allocated_bytes.all.peak"]
    assert sample["peak_reserved"] == final["reserved_bytes.all.peak"]
    assert (sample["retries"], sample["ooms"]) == (0, 0)
    assert [sample["device_free"], sample["device_total"]] == recorded["info"]["mem_get_info"]
    json.dumps(sample)
    device.reset_phase_peak("cuda:0")
    assert fake_cuda == [("reset", torch.device("cuda:0"))]


def test_a_snapshot_on_cuda_holds_the_device_as_its_record_says(
    fake_cuda: list[tuple[str, Any]], recorded: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    from harness.analysis.load import read_snapshots
    from harness.probe import epoch_snapshot

    # GIVEN torch.cuda answering with the recordings, a device name and pinned host memory
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda dev=None: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(torch.cuda, "host_memory_stats",
                        lambda: {"allocated_bytes.peak": 4 * cuda.MiB, "host_alloc_time.avg": 12})
    # WHEN the probe takes a snapshot on the device, writes it and analysis reads it back
    snap = epoch_snapshot.take("epoch-1", stage="train", epoch=1, model=None, optimizer=None,
                               device="cuda:0", memray_active=False)
    snap.write(tmp_path / "snapshots")
    problems: list[str] = []
    [back] = read_snapshots(tmp_path, problems).values()
    # THEN the same record, its stats typed
    final = recorded["runs"]["256"]["final"]
    assert problems == [] and back == snap and back.cuda is not None
    assert (back.cuda.allocated, back.cuda.name) == (final["allocated_bytes.all.current"],
                                                     "NVIDIA H100 80GB HBM3")
    stats = back.cuda.cuda_stats()
    assert stats is not None and stats.peak_reserved == final["reserved_bytes.all.peak"]
    assert back.cuda.host == {"allocated_bytes.peak": 4 * cuda.MiB, "host_alloc_time.avg": 12}


def test_history_start_and_bounded_dump(fake_cuda: list[tuple[str, Any]], tmp_path: Path) -> None:
    device.start_history(5_000)
    assert fake_cuda[0][1] == "all"
    assert fake_cuda[0][2]["max_entries"] == 5_000 and fake_cuda[0][2]["stacks"] == "python"
    # WHEN the dump must fit in 100 kB
    dump = device.dump_history(tmp_path / "cuda" / "history.pickle", max_bytes=100_000)
    # THEN the file holds the newest events within budget, and recording was stopped
    path = Path(dump.path)
    assert path.stat().st_size == dump.bytes <= 100_000
    assert dump.entries_kept + dump.entries_dropped == 1920 and dump.entries_dropped > 0
    assert cuda.summarize_history(cuda.load_history(path)).trace_entries == dump.entries_kept
    assert fake_cuda[-1][1] is None
    assert not list(path.parent.glob("*.tmp"))
