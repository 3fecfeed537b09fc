"""Distributed runs (torchrun): loading per rank, per-rank tables and summary, rank skew, per-rank
gate metrics, ``harness merge``. On hand-written run directories (tests/_synthetic_ranks.py)."""

from __future__ import annotations

import json
from pathlib import Path

import _synthetic_ranks as sr
import pandas as pd
import pytest
from _synthetic import MiB

from harness.analysis import ranks
from harness.analysis.captures import CaptureData, Window
from harness.analysis.load import Capture, load_run
from harness.analysis.summary_model import Summary
from harness.cli import main
from harness.control.merge import merge
from harness.errors import UsageError
from harness.gate import check, metrics
from harness.records import scenario as sc
from harness.records.events import StageEnd
from harness.report import build_report


def test_load_reads_every_rank_with_its_own_roles(tmp_path: Path) -> None:
    run = load_run(sr.write_run(tmp_path))
    st = run.stage("train")
    assert run.distributed
    assert [r.rank for r in st.ranks] == [0, 1]
    r1 = st.ranks[1]
    assert set(r1.samples["role"]) == {"main", "worker 0"}
    assert set(r1.samples["pid"]) == {sr.rank_pid(1), sr.rank_pid(1) + 1}
    assert r1.events_of(StageEnd) and list(r1.snapshots) == ["epoch-1", "epoch-2"]
    assert run.complete


def test_a_rank_without_stage_end_is_named(tmp_path: Path) -> None:
    path = sr.write_run(tmp_path)
    events = path / "stages" / "train" / "rank1" / "events.jsonl"
    events.write_text("".join(line + "\n" for line in events.read_text().splitlines()
                              if "stage_end" not in line))
    assert "stage 'train' rank 1 has no stage_end event" in load_run(path).incomplete_reasons()


def test_single_process_run_is_one_view_without_a_rank(tmp_path: Path) -> None:
    import _synthetic

    run = load_run(_synthetic.write_run(tmp_path))
    (view,) = ranks.views(run)
    assert not run.distributed and (view.rank, view.node, view.run) == (None, None, run)


@pytest.fixture
def planted(tmp_path: Path) -> tuple[Path, dict]:
    run = sr.write_run(tmp_path, plant=True)
    result = build_report(run, processes=1)
    return run, json.loads(result.summary.read_text())


def test_tables_and_summary_carry_the_rank(planted: tuple[Path, dict]) -> None:
    run, summary = planted
    Summary.model_validate(summary)
    phases = pd.read_csv(run / "report" / "tables" / "phases.csv")
    assert list(phases.columns[:3]) == ["stage", "rank", "epoch"]
    assert set(phases["rank"]) == {0, 1}
    v1 = phases[(phases["rank"] == 0) & (phases["epoch"] == 1) & (phases["phase"] == "validate")]
    assert int(v1["main_rss_max"].iloc[0]) == 312 * MiB + sr.PLANT
    # every rank's peaks, the run-wide ones the largest over the ranks
    assert [r["rank"] for r in summary["ranks"]] == [0, 1]
    assert summary["peaks"]["main_rss"]["rank"] == 0
    assert summary["peaks"]["main_rss"]["bytes"] == 312 * MiB + sr.PLANT
    assert summary["ranks"][1]["peaks"]["main_rss"]["bytes"] == 324 * MiB  # backward, 322 + 2
    processes = pd.read_csv(run / "report" / "tables" / "processes.csv")
    assert processes.set_index("role")["rank"].drop("agent").astype(int).to_dict() == {
        "rank 0": 0, "rank 1": 1, "rank 0 worker 0": 0, "rank 1 worker 0": 1}
    assert pd.isna(processes.set_index("role").loc["agent", "rank"])


def test_census_per_rank_with_ddp_buckets(planted: tuple[Path, dict]) -> None:
    run, _ = planted
    epochs = pd.read_csv(run / "report" / "tables" / "epochs.csv", index_col="metric")
    for rank in (0, 1):
        col = f"train rank {rank}:epoch-1"
        assert epochs.loc["tensor_bytes_parameters", col] == sr.PARAMS
        assert epochs.loc["tensor_bytes_gradients", col] == sr.PARAMS
        assert epochs.loc["tensor_bytes_optimizer_state", col] == sr.PARAMS
        assert epochs.loc["tensor_bytes_ddp_buckets", col] == sr.PARAMS


def test_planted_skew_is_found_and_named(planted: tuple[Path, dict]) -> None:
    _, summary = planted
    skews = [f for f in summary["findings"] if f["kind"] == "rank_skew"]
    assert len(skews) == 1
    hit = skews[0]["numbers"]["ranks"]
    assert [(h["rank"], h["phase"], h["stage"]) for h in hit] == [(0, "validate", "train")]
    # rank 0's 312 MiB + 50 MB against rank 1's 314 MiB
    assert hit[0]["excess"] == 312 * MiB + sr.PLANT - 314 * MiB
    assert "rank 0 in phase validate" in skews[0]["text"]


def test_no_skew_without_a_plant(tmp_path: Path) -> None:
    result = build_report(sr.write_run(tmp_path), processes=1)
    summary = json.loads(result.summary.read_text())
    assert not [f for f in summary["findings"] if f["kind"] == "rank_skew"]
    # each rank's own findings are named by rank
    assert {f["numbers"]["rank"] for f in summary["findings"]} == {0, 1}


@pytest.mark.parametrize(("others", "mine", "skew"), [
    ([300], 300 + 32, True),  # SKEW_MIN_BYTES
    ([300], 300 + 31, False),  # below it, and 10 % of the others
    ([40], 40 + 8, True),  # 20 %, and SKEW_FLOOR_BYTES
    ([30], 30 + 7, False),  # 23 %, but under the floor
    ([300, 302, 301], 340, True),  # the others' median, 301
    ([300, 340, 301], 330, False),  # one other rank high does not lift the median
])
def test_skew_thresholds(others: list[int], mine: int, skew: bool) -> None:
    phases = pd.DataFrame({"stage": "train", "epoch": 1, "phase": "validate",
                           "rank": range(len(others) + 1),
                           "main_rss_max": [m * MiB for m in [mine, *others]]})
    rows = ranks.skew_rows(phases)
    assert bool(rows[rows["rank"] == 0]["skew"].iloc[0]) is skew


def _capture(tmp_path: Path, rank: int, sites: dict[str, int]) -> CaptureData:
    cap = Capture("train", "train-e1-validate", tmp_path / f"r{rank}.bin", None, 1, rank=rank)
    df = pd.DataFrame({"workload_line": list(sites), "site": "x", "bytes_at_peak": list(sites.values())})
    return CaptureData(cap, Window(1, "validate", 0, 3, 0.0, 1.0), sites=df)


def test_the_skew_names_the_sites_that_differ(tmp_path: Path) -> None:
    caps = [_capture(tmp_path, 0, {"model/stages.py:88": 50_000_000, "model/net.py:10": 2 * MiB}),
            _capture(tmp_path, 1, {"model/net.py:10": 2 * MiB})]
    phases = pd.DataFrame({"stage": "train", "epoch": 1, "phase": "validate", "rank": [0, 1],
                           "main_rss_max": [360 * MiB, 312 * MiB]})
    found = ranks.skew(phases, caps)
    assert found is not None
    sites = found.numbers["ranks"][0]["sites"]
    assert [s["where"] for s in sites] == ["model/stages.py:88"]
    assert "model/stages.py:88" in found.text


def test_gate_metrics_per_rank_and_largest_by_default(planted: tuple[Path, dict]) -> None:
    _, summary = planted
    measured = metrics.from_summary(Summary.model_validate(summary))
    assert measured["peak_main_rss"] == measured["ranks.0.peak_main_rss"] == 312 * MiB + sr.PLANT
    assert measured["ranks.1.peak_main_rss"] == 324 * MiB
    assert measured["phases.validate.peak_main_rss"] == 312 * MiB + sr.PLANT
    assert measured["ranks.1.phases.validate.peak_main_rss"] == 314 * MiB  # 312 + 2, epoch 1
    assert metrics.label("ranks.1.phases.validate.peak_main_rss") == "peak RSS, main process [validate], rank 1"
    budgets = sc.from_dict({"name": "x", "budgets": {"peak_main_rss": "1 GiB", "ranks": {
        1: {"peak_main_rss": "300 MiB", "phases": {"validate": {"peak_main_rss": "400 MiB"}}}}}},
        "x.yaml").budgets
    rows = {r.metric: r.status for r in check.check(measured, budgets=budgets).rows}
    assert rows == {"peak_main_rss": "pass", "ranks.1.peak_main_rss": "FAIL",
                    "ranks.1.phases.validate.peak_main_rss": "pass"}


def test_rank_budgets_cannot_nest() -> None:
    from harness.errors import ScenarioError

    with pytest.raises(ScenarioError, match="ranks of their own"):
        sc.from_dict({"name": "x", "budgets": {"ranks": {0: {"ranks": {1: {}}}}}}, "x.yaml")


def test_compare_sets_rank_beside_rank(tmp_path: Path) -> None:
    a = sr.write_run(tmp_path / "a")
    b = sr.write_run(tmp_path / "b", plant=True)
    for run in (a, b):
        build_report(run, processes=1)
    assert main(["compare", str(a), str(b), "--html", str(tmp_path / "c.html")]) == 0
    from harness.gate import compare, runs

    result = compare.compare(runs.summary(a), runs.summary(b), runs.processes(a), runs.processes(b),
                             None, None)
    phase = next(s for s in result.sections if s.title == "By phase")
    keys = [k for k, _ in phase.rows]
    assert ("train rank 0", "1", "validate") in keys and ("train rank 1", "1", "validate") in keys


def test_merge_joins_nodes_into_one_report(tmp_path: Path) -> None:
    n0, n1 = sr.write_node_run(tmp_path, 0), sr.write_node_run(tmp_path, 1)
    out = merge([n1, n0], tmp_path / "joined")
    assert (out / "manifest.json").is_file() and (out / "manifest-node1.json").is_file()
    run = load_run(out)
    assert sorted(run.node_manifests) == [1]
    assert [(r.rank, r.node) for r in run.stage("train").ranks] == [(0, 0), (1, 1)]
    summary = json.loads(build_report(out, processes=1).summary.read_text())
    assert [(r["rank"], r["node"]) for r in summary["ranks"]] == [(0, 0), (1, 1)]
    phases = pd.read_csv(out / "report" / "tables" / "phases.csv")
    assert list(phases.columns[:4]) == ["stage", "rank", "node", "epoch"]
    assert (n0 / "manifest.json").is_file() and not (n0 / "manifest-node1.json").exists()  # inputs kept


def test_shared_storage_run_of_two_nodes(tmp_path: Path) -> None:
    run = load_run(sr.write_run(tmp_path, nodes=True))
    assert [(r.rank, r.node) for r in run.stage("train").ranks] == [(0, 0), (1, 1)]


@pytest.mark.parametrize(("case", "message"), [
    ("duplicate", "node 0 given twice"),
    ("missing_dir", "no such run directory"),
    ("scenario", "a different scenario"),
    ("not_distributed", "not a distributed run"),
])
def test_merge_errors(tmp_path: Path, case: str, message: str) -> None:
    n0, n1 = sr.write_node_run(tmp_path, 0), sr.write_node_run(tmp_path, 1)
    dirs = [n0, n1]
    if case == "duplicate":
        dirs = [n0, n0]
    elif case == "missing_dir":
        dirs = [n0, tmp_path / "nope"]
    elif case == "scenario":
        m = json.loads((n1 / "manifest-node1.json").read_text())
        m["scenario"]["name"] = "other"
        (n1 / "manifest-node1.json").write_text(json.dumps(m))
    elif case == "not_distributed":
        import _synthetic

        dirs = [n0, _synthetic.write_run(tmp_path / "single")]
    with pytest.raises(UsageError, match=message):
        merge(dirs, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    # and through the CLI: one line, exit 2
    assert main(["merge", *map(str, dirs), "-o", str(tmp_path / "out")]) == 2


def test_merge_of_a_missing_node(tmp_path: Path) -> None:
    n0 = sr.write_node_run(tmp_path, 0, nnodes=3)
    n1 = sr.write_node_run(tmp_path, 1, nnodes=3)
    with pytest.raises(UsageError, match=r"node\(s\) 2 missing: the job had nnodes 3"):
        merge([n0, n1], tmp_path / "out")


def test_rank_lines_run_in_time_order_stage_by_stage() -> None:
    # GIVEN one rank's ticks from two stages, the later stage's view first (as views can come)
    from types import SimpleNamespace

    def view(stage: str, ts: list[float], rss: list[int]) -> SimpleNamespace:
        return SimpleNamespace(rank=0, ticks=pd.DataFrame({"stage": stage, "t": ts, "main_rss": rss}))

    vs = [view("test", [120.0, 121.0], [5 * MiB, 6 * MiB]), view("train", [100.0, 101.0, 102.0], [1, 2, 3])]
    # WHEN the timeline's rank lines are made
    lines = ranks.rank_lines(vs, 100.0)  # type: ignore[arg-type]
    # THEN the rank's points run in time order, each with its stage (the timeline draws one
    # segment a stage, never a line across the gap between the two stages' processes)
    assert lines["x"].tolist() == [0.0, 1.0, 2.0, 20.0, 21.0]
    assert lines["stage"].tolist() == ["train"] * 3 + ["test"] * 2
    assert lines["rss"].tolist() == [1, 2, 3, 5 * MiB, 6 * MiB]


def test_growth_per_epoch_is_the_largest_rank_s_not_the_ranks_pooled() -> None:
    # GIVEN a distributed summary's growth rows: rank 0 grows 10 MiB an epoch, rank 1 not at all
    from types import SimpleNamespace

    from harness.analysis.summary_model import GrowthRow

    def row(rank: int, e0: int, rss: int) -> GrowthRow:
        return GrowthRow(stage="train", from_epoch=e0, to_epoch=e0 + 1, main_rss=rss, main_uss=0,
                         tensor_count=0, tensor_bytes=0, rank=rank)

    rows = [row(0, 1, 10 * MiB), row(0, 2, 10 * MiB), row(1, 1, 0), row(1, 2, 0)]
    # WHEN the gate's growth_per_epoch is taken THEN it is rank 0's, the largest over the ranks
    assert metrics.growth_per_epoch(SimpleNamespace(growth_per_epoch=rows)) == 10 * MiB  # type: ignore[arg-type]


@pytest.mark.parametrize("distributed", [False, True], ids=["plain", "torchrun"])
def test_one_report_path_writes_the_declared_tables_with_a_rank_column_only_with_ranks(
        tmp_path: Path, distributed: bool) -> None:
    import _synthetic

    from harness.report.tables import TABLES

    # GIVEN a plain run and a torchrun run, WHEN their reports are built
    run = sr.write_run(tmp_path) if distributed else _synthetic.write_run(tmp_path)
    result = build_report(run, processes=1, flamegraphs=False)

    # THEN each writes the declared tables in order (cuda only on CUDA runs), each with its
    # section on the page, and the per-rank tables carry a rank column exactly when there are ranks
    declared = [t for t in TABLES if t.when_empty]
    assert list(result.tables) == [t.name for t in declared]
    assert [p.name for p in result.tables.values()] == [t.csv for t in declared]
    page = result.html.read_text()
    assert all(f'<h3 id="table-{t.name}">{t.title}' in page for t in declared)
    for name in ("phases", "processes", "sites"):
        assert ("rank" in pd.read_csv(result.tables[name]).columns) == distributed, name
    summary = json.loads(result.summary.read_text())
    assert ("ranks" in summary) == distributed
    assert ("rank" in summary["peaks"]["main_rss"]) == distributed
