"""`harness run` end to end: the run directory it writes, read back, with known answers."""

from __future__ import annotations

import json
from pathlib import Path

import memray
import pytest
from conftest import REPO, latest_run, read_events, stage_samples, write_scenario
from test_tensors import forward_bytes

from harness.layout import SAMPLES_DIR

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from harness.cli import main

    reports = tmp_path_factory.mktemp("reports")
    code = main(["run", str(REPO / "scenarios/smoke.yaml"), "--reports", str(reports), "--quiet"])
    assert code == 0
    return latest_run(reports)


def test_smoke_run_directory_holds_everything(smoke_run: Path) -> None:
    m = json.loads((smoke_run / "manifest.json").read_text())
    assert m["status"] == "ok" and m["kind"] == "run"
    assert [s["name"] for s in m["stages"]] == ["train", "test"]
    assert all(s["status"] == "ok" and s["exit_code"] == 0 for s in m["stages"])
    for key in ("torch", "torchvision", "memray", "psutil"):
        assert m["versions"][key]
    assert m["cpu_count"] >= 1 and m["host"] and m["command_line"]
    assert m["started"] < m["ended"]
    for s in m["stages"]:  # the stage's processes' CPU (a torch import alone takes over a second)
        cpu = s["cpu_s"]["user"] + s["cpu_s"]["system"]
        assert 0.5 < cpu <= s["wall_s"] * m["cpu_count"] + 0.5, s
        assert 0 <= s["after_exit_s"] < s["wall_s"]
    assert (smoke_run / "scenario.yaml").exists() and (smoke_run / "checkpoint.pt").exists()
    for stage in ("train", "test"):
        d = smoke_run / "stages" / stage
        for name in ("log.txt", "events.jsonl", SAMPLES_DIR, "snapshots/end.json"):
            assert (d / name).exists(), f"{stage}/{name}"
        assert m["stages"][0]["sampling"]["ticks"] > 0 and m["stages"][0]["sampling"]["full_ticks"] > 0
    assert {s["sampling"]["policy"] for s in m["stages"]} == {"batch"}  # sampling.background
    train = smoke_run / "stages/train"
    assert (train / "snapshots/epoch-1.json").exists() and (train / "snapshots/epoch-2.json").exists()
    log = (smoke_run / "stages/test/log.txt").read_text()
    assert "Accuracy of the network on the 120 test images:" in log


def test_samples_table_tags_processes_and_phases(smoke_run: Path) -> None:
    s = stage_samples(smoke_run / "stages/train")
    assert {"t", "pid", "role", "rss", "uss", "pss", "epoch", "step", "phase"} <= set(s.columns)
    assert {"main", "worker 0", "worker 1"} <= set(s.role)
    assert s.groupby("t").role.apply(lambda r: r.str.startswith("worker").sum()).max() == 2
    assert {"data", "forward", "backward", "validate"} <= set(s.phase.dropna())
    assert s.uss.notna().sum() > 0 and (s.rss > 0).all()
    assert s.t.is_monotonic_increasing


def test_the_runs_events_read_back_as_their_models_line_for_line(smoke_run: Path) -> None:
    # GIVEN the events a real run wrote; WHEN analysis reads them; THEN no problem, every line
    # as the model of its kind, and each model written again is its line as the probe wrote it
    from harness.analysis.load import load_run
    from harness.records.events import EVENT_MODELS, dump

    run = load_run(smoke_run)
    assert run.problems == [] and run.complete
    for stage in run.stages:
        lines = read_events(stage.dir)
        assert len(stage.events) == len(lines)
        assert all(type(e) is EVENT_MODELS[e.kind] for e in stage.events)  # no workload kinds here
        assert [json.loads(dump(e)) for e in stage.events] == lines
    kinds = {e.kind for e in run.stage("train").events}
    assert {"stage_start", "watch", "epoch_start", "traced_step", "memray_start", "memray_stop",
            "loop_end", "section_start", "section_end", "metric", "phase_totals", "epoch_end",
            "snapshot", "stage_end"} <= kinds


def test_traced_steps_have_phases_in_order_and_known_forward_bytes(smoke_run: Path) -> None:
    events = read_events(smoke_run / "stages/train")
    traced = [e for e in events if e["kind"] == "traced_step"]
    assert traced, "no traced steps"
    for e in traced:
        assert e["phases"] == ["data", "forward", "loss", "backward", "optimizer"]
        assert e["tensors"]["forward"]["bytes"] == forward_bytes(4)
    first = traced[0]
    assert first["step"] == 0
    assert first["tensors"]["optimizer"]["bytes"] == 27_528  # momentum buffers, first step only
    assert traced[1]["tensors"]["optimizer"]["bytes"] == 0
    watch = next(e for e in events if e["kind"] == "watch")
    assert (watch["parameters"], watch["parameter_bytes"]) == (6882, 27_528)
    totals = [e for e in events if e["kind"] == "phase_totals" and e["span"] == "epoch"]
    assert [e["epoch"] for e in totals] == [1, 2]
    assert totals[0]["transitions"]["forward"] == 240  # 960 images / batch 4
    assert totals[0]["tensors"]["forward"]["bytes"] == forward_bytes(4) * totals[0]["traced_steps"]


def test_epoch_snapshot_has_census_and_tensor_map(smoke_run: Path) -> None:
    snap = json.loads((smoke_run / "stages/train/snapshots/epoch-1.json").read_text())
    tb = snap["tensor_bytes"]
    assert (tb["parameters"], tb["gradients"], tb["optimizer_state"]) == (27_528, 27_528, 27_528)
    by_name = {t["name"]: t for t in snap["tensors"] if t["name"]}
    w = by_name["conv1.weight"]
    assert w["shape"] == [6, 3, 5, 5] and w["bytes"] == 1800 and w["dtype"] == "float32"
    assert by_name["conv1.weight.momentum_buffer"]["category"] == "optimizer_state"
    assert w["mapping"]["start"] <= w["address"] < w["mapping"]["end"]
    assert w["mapping"]["kind"] in ("heap", "anonymous")
    assert snap["processes"][0]["role"] == "main" and snap["processes"][0]["uss"] > 0
    assert {"anonymous", "file"} <= set(snap["maps"]["summary"])
    assert len(snap["gc"]["counts"]) == 3


def test_memray_windows_capture_main_and_workers(smoke_run: Path) -> None:
    mem = smoke_run / "stages/train/memray"
    names = sorted(p.name for p in mem.iterdir())
    assert "train-e1-train.bin" in names and "train-e1-validate.bin" in names
    assert "train-e2-train.bin" in names
    assert "train-e2-validate.bin" not in names  # memray.validation_epochs defaults to [1]
    workers = [n for n in names if n.startswith("train-e1-train.bin.")]
    assert len(workers) == 2  # smoke opens its window at step 0: the forked workers are followed
    reader = memray.FileReader(mem / "train-e1-train.bin")
    assert not reader.metadata.has_native_traces  # memray.native_traces: off by default
    assert any(True for _ in reader.get_high_watermark_allocation_records())
    test_mem = sorted(p.name for p in (smoke_run / "stages/test/memray").iterdir())
    assert "test-test.bin" in test_mem and len(test_mem) == 3


@pytest.mark.parametrize("workers", [0, 2, 4])
def test_sampler_sees_exactly_the_scenario_worker_count(tmp_path: Path, cli, workers: int) -> None:  # type: ignore[no-untyped-def]
    # 2,400 images: ~480 training steps, so that the workers outlive the sampler's fork-to-exec
    # grace (processes.FORK_EXEC_GRACE_S) however fast the machine; with 240 a fast one ran the
    # 48 steps in 0.17 s and the workers were gone before they could be named.
    path = write_scenario(
        tmp_path / "s.yaml", stages=["train"], data={"num_workers": workers, "size": 2400},
        memray={"mode": "off"}, sampling={"rss_hz": 100},
    )
    code, _, err = cli("run", str(path), "--reports", str(tmp_path / "r"), "--quiet")
    assert code == 0, err
    s = stage_samples(latest_run(tmp_path / "r") / "stages/train")
    per_tick = s.groupby("t").role.apply(lambda r: r.str.startswith("worker").sum())
    assert per_tick.max() == workers
    # Other children (an exec'd helper such as ldconfig during setup) are "child", not workers.
    workers_seen = {r for r in s.role if r.startswith("worker")}
    assert workers_seen == {f"worker {i}" for i in range(workers)}
    assert "main" in set(s.role)


def test_bare_train_hands_the_checkpoint_to_the_test_stage(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    path = write_scenario(tmp_path / "s.yaml")
    code, out, err = cli("train", str(path), "--reports", str(tmp_path / "r"))
    assert code == 0, err
    run = latest_run(tmp_path / "r")
    assert run.name.endswith("-bare")
    m = json.loads((run / "manifest.json").read_text())
    assert m["kind"] == "bare" and [s["status"] for s in m["stages"]] == ["ok", "ok"]
    assert all(s["cpu_s"]["user"] > 0.5 for s in m["stages"])  # measured the same way as a run
    assert (run / "checkpoint.pt").exists()
    assert not (run / "stages/train/events.jsonl").exists()  # no instrumentation at all
    assert not (run / "stages/train" / SAMPLES_DIR).exists() and not (run / "stages/train/samples.csv").exists()
    assert "[1,    10] loss:" in out and "Finished Training" in out
    assert "Accuracy of the network on the 12 test images:" in out
