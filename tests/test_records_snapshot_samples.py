"""One definition of a snapshot and of a samples row: what the writer writes, the reader returns.

A snapshot taken by the probe, written by ``Snapshot.write`` and read by ``load.read_snapshots``
comes back equal; so do sample rows written by the samples writer, from its CSV part (being
written) and from its Parquet part (sealed). The row type's fields are the columns, in order.
"""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import pytest
from _synthetic import SNAPSHOTS, sample_row

from harness.analysis.load import read_samples, read_snapshots, sample_rows
from harness.control.samples import SamplesWriter
from harness.layout import SAMPLES_DIR, SNAPSHOTS_DIR
from harness.records.probe_config import ProbeConfig
from harness.records.samples import SAMPLE_COLUMNS, SAMPLE_TEXT_COLUMNS, SampleRow, arrow_schema
from harness.records.scenario import from_dict as scenario_from_dict
from harness.records.snapshots import (
    DdpBuckets,
    ProcessMemory,
    Snapshot,
    SnapshotCuda,
    TensorEntry,
    TensorMapping,
)

# The columns as the files of earlier versions hold them: a reader of any of those depends on
# this order (columns are only ever added at the end).
WRITTEN_BEFORE = ("t", "pid", "ppid", "role", "rss", "vms", "shared", "text", "data", "uss", "pss",
                  "swap", "stage", "epoch", "step", "phase", "cuda_allocated", "cuda_reserved",
                  "rss_anon", "rss_file", "rss_shmem", "rank")


# ---- snapshots -----------------------------------------------------------------------------------


def _full_snapshot() -> Snapshot:
    """Every field of a snapshot used: a CPU tensor's mapping, a gone worker, CUDA, DDP."""
    base = Snapshot.model_validate(copy.deepcopy(SNAPSHOTS[0]))
    return base.model_copy(update={
        "rank": 1,
        "ddp": DdpBuckets(bucket_sizes=[1000, 24], gradient_as_bucket_view=False),
        "tensor_bytes": {**base.tensor_bytes, "ddp_buckets": 1024},
        "tensors": [
            TensorEntry(category="parameters", name="fc.weight", shape=[10, 2], dtype="float32",
                        bytes=80, address=0x7F00_0000_1000, device="cpu",
                        mapping=TensorMapping(start=0x7F00_0000_0000, end=0x7F00_0001_0000,
                                              kind="anonymous", path="")),
            TensorEntry(category="other", name="", shape=[], dtype="int64", bytes=8,
                        address=0x7000_0000, device="cuda:0"),
        ],
        "processes": [*base.processes, ProcessMemory(pid=201, role="worker 0", gone=True)],
        "cuda": SnapshotCuda(allocated=1 << 20, reserved=2 << 20, t=1004.5, peak_allocated=3 << 20,
                             peak_reserved=4 << 20, active=1 << 20, inactive_split=0, retries=0,
                             ooms=0, device_free=10 << 30, device_total=80 << 30, name="H100",
                             stats={"allocated": 1 << 20, "num_device_alloc": None},
                             host={"allocated_bytes.peak": 4096, "host_alloc_time.avg": 1.5}),
    })


@pytest.mark.parametrize("make", [lambda: Snapshot.model_validate(SNAPSHOTS[0]), _full_snapshot],
                         ids=["synthetic", "every-field"])
def test_a_snapshot_reads_back_equal_to_what_was_written(tmp_path: Path, make) -> None:  # type: ignore[no-untyped-def]
    snap = make()
    snap.write(tmp_path / SNAPSHOTS_DIR)
    problems: list[str] = []
    assert read_snapshots(tmp_path, problems) == {snap.label: snap}
    assert problems == []


def test_a_snapshot_taken_by_the_probe_reads_back_equal(tmp_path: Path) -> None:
    import torch

    from harness.probe import epoch_snapshot

    net = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(torch.ones(3, 4)).sum().backward()
    opt.step()
    snap = epoch_snapshot.take("epoch-1", stage="train", epoch=1, model=net, optimizer=opt,
                               device="cpu", memray_active=False)
    assert snap.tensor_bytes["optimizer_state"] == snap.tensor_bytes["parameters"] == 40
    path = snap.write(tmp_path / SNAPSHOTS_DIR)
    problems: list[str] = []
    assert read_snapshots(tmp_path, problems) == {"epoch-1": snap} and problems == []
    # the file is as it was before the model: a live process has no `gone`, no `rank` outside torchrun
    raw = json.loads(path.read_text(encoding="utf-8"))
    assert "gone" not in raw["processes"][0] and "rank" not in raw and raw["cuda"] is None


def test_a_snapshot_of_an_older_version_still_reads(tmp_path: Path) -> None:
    # GIVEN a snapshot as the first CUDA version wrote it: max_allocated, no stats or host
    old = copy.deepcopy(SNAPSHOTS[0])
    old["cuda"] = {"allocated": 100, "reserved": 200, "max_allocated": 150, "max_reserved": 250,
                   "num_alloc_retries": 0, "num_ooms": 0, "device_free": 1, "device_total": 2}
    (tmp_path / SNAPSHOTS_DIR).mkdir()
    (tmp_path / SNAPSHOTS_DIR / "epoch-1.json").write_text(json.dumps(old), encoding="utf-8")
    # WHEN read THEN what the model knows is kept, the rest ignored
    problems: list[str] = []
    [snap] = read_snapshots(tmp_path, problems).values()
    assert problems == [] and snap.cuda is not None
    assert (snap.cuda.allocated, snap.cuda.device_total, snap.cuda.stats) == (100, 2, None)
    assert snap.cuda.cuda_stats() is None


# ---- samples -------------------------------------------------------------------------------------


def test_the_row_type_is_the_column_list() -> None:
    assert SAMPLE_COLUMNS == SampleRow._fields == WRITTEN_BEFORE
    assert SAMPLE_TEXT_COLUMNS == {"role", "stage", "phase"}
    assert arrow_schema().names == list(SAMPLE_COLUMNS)
    assert [str(arrow_schema().field(c).type) for c in ("t", "rss", "role")] == ["double", "int64", "string"]


def _rows() -> list[SampleRow]:
    """Two ticks of a main process and a worker: text, integers, empty fields, a rank."""
    out = []
    for t, epoch, phase in ((1000.25, 1, "forward"), (1000.5, 1, None)):
        out.append(sample_row(t=t, pid=100, ppid=1, role="main", rss=500 << 20, vms=900 << 20,
                              shared=40 << 20, text=4096, data=300 << 20, uss=400 << 20,
                              pss=420 << 20, swap=0, stage="train", epoch=epoch, step=7, phase=phase,
                              cuda_allocated=1 << 20, cuda_reserved=2 << 20, rss_anon=460 << 20,
                              rss_file=30 << 20, rss_shmem=10 << 20, rank=0))
        out.append(sample_row(t=t, pid=101, ppid=100, role="worker 0", rss=100 << 20,
                              stage="train", epoch=epoch, step=7, phase=phase, rank=0))
    return out


def test_sample_rows_read_back_equal_from_the_csv_part_and_the_parquet_part(tmp_path: Path) -> None:
    rows = _rows()
    folder = tmp_path / SAMPLES_DIR
    writer = SamplesWriter(folder)
    writer.write(rows[:2])
    writer.write(rows[2:])
    writer.flush()
    # WHEN read while the part is still being written: its CSV, the header the columns
    with open(folder / "000001.csv", encoding="utf-8") as fh:
        assert tuple(next(csv.reader(fh))) == SAMPLE_COLUMNS
    problems: list[str] = []
    assert sample_rows(read_samples(folder, problems)) == rows and problems == []
    # WHEN read once sealed: its Parquet file, of the columns' schema
    writer.close()
    assert [p.name for p in folder.iterdir()] == ["000001.parquet"]
    import pyarrow.parquet as pq

    assert pq.read_schema(folder / "000001.parquet") == arrow_schema()
    assert sample_rows(read_samples(folder, problems)) == rows and problems == []


# ---- probe.json ----------------------------------------------------------------------------------


def test_probe_json_is_written_and_read_through_one_model(tmp_path: Path) -> None:
    from harness.control.runner import _probe_config

    scenario = scenario_from_dict({"name": "x", "device": "cpu"}, "x.yaml")
    (tmp_path / "probe.json").write_text(json.dumps(_probe_config(scenario, "train")), encoding="utf-8")
    assert ProbeConfig.read(tmp_path) == ProbeConfig.for_stage(scenario, "train")
