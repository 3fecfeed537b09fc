"""harness sweep: the grid, its table and its plot (the runs themselves are faked here)."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pandas as pd
import pytest
from _gate import MiB, fake_model

from harness.analysis.summary_model import Summary
from harness.cli import main
from harness.errors import UsageError
from harness.gate import output as render
from harness.gate.sweep import Knob, SweepResult, grid, parse_knobs, parse_vary, run_grid, with_arg
from harness.records import scenario as scenario_mod


@pytest.mark.parametrize(("text", "key", "values"), [
    ("train.batch_size=4,16,64", "train.batch_size", ("4", "16", "64")),
    ("data.num_workers=0", "data.num_workers", ("0",)),
    ("data.split=[0.8,0.1,0.1],[0.6,0.2,0.2]", "data.split", ("[0.8,0.1,0.1]", "[0.6,0.2,0.2]")),
    ("memray.mode=off, windows", "memray.mode", ("off", "windows")),
])
def test_parse_vary(text: str, key: str, values: tuple[str, ...]) -> None:
    k = parse_vary(text)
    assert (k.key, k.raw) == (key, values)


def test_knob_values_are_read_as_yaml() -> None:
    assert parse_vary("train.batch_size=4,16").values == (4, 16)
    assert parse_vary("data.split=[0.8,0.1,0.1]").values == ([0.8, 0.1, 0.1],)


@pytest.mark.parametrize(("varies", "sets", "message"), [
    (["train.batch_size"], [], "expected KEY=V1,V2"),
    (["=4,16"], [], "expected KEY=V1,V2"),
    (["train batch=4"], [], "expected KEY=V1,V2"),
    (["train.batch_size="], [], "comma-separated"),
    (["train.batch_size=4,,16"], [], "comma-separated"),
    (["train.batch_size=4,4"], [], "repeated"),
    (["train.batch_size=4", "train.batch_size=8"], [], "varied twice"),
    (["train.batch_size=4,8"], ["train.batch_size=2"], "also given with --set"),
    (["train.lr=[1"], [], "not valid YAML"),
    ([], [], "at least one --vary"),
])
def test_bad_vary_is_bad_input(varies: list[str], sets: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_knobs(varies, sets)


def test_grid_first_knob_varies_slowest() -> None:
    knobs = [Knob("a", ("1", "2")), Knob("b", ("x", "y", "z"))]
    assert grid(knobs) == [["a=1", "b=x"], ["a=1", "b=y"], ["a=1", "b=z"],
                           ["a=2", "b=x"], ["a=2", "b=y"], ["a=2", "b=z"]]


def _fake_run(point: list[str]) -> tuple[str, str, Summary | None, pd.DataFrame | None]:
    knobs = dict(p.split("=") for p in point)
    bs = int(knobs["train.batch_size"])
    w = int(knobs.get("data.num_workers", 0))
    procs = pd.DataFrame({"stage": ["train"] * (1 + w), "pid": list(range(1 + w)),
                          "role": ["main"] + [f"worker {i}" for i in range(w)],
                          "peak_rss": [700 * MiB] + [400 * MiB + bs * MiB] * w})
    if bs == 256 and w == 2:
        return "runs/x", "limit", None, None  # a point that was stopped
    return (f"runs/{bs}-{w}", "ok",
            fake_model(main=700 * MiB + bs * MiB, tensors=bs * 75_000, workers_uss=w * bs * MiB), procs)


def test_run_grid_tabulates_each_point_and_the_plot_is_written(tmp_path: Path) -> None:
    knobs = parse_knobs(["train.batch_size=4,16,64,256", "data.num_workers=0,2"], [])
    seen: list[str] = []
    tables: list[pd.DataFrame] = []
    df = run_grid(knobs, _fake_run, seen.append, tables.append)
    assert len(df) == 8 and len(seen) == 8 and seen[0].startswith("harness: sweep 1/8")
    assert [len(t) for t in tables] == list(range(1, 9))  # the CSV is rewritten after each point
    assert list(df["train.batch_size"]) == [4, 4, 16, 16, 64, 64, 256, 256]
    ok = df[df.status == "ok"]
    assert ok.sort_values("train.batch_size")["peak_live_tensor_bytes"].is_monotonic_increasing
    assert df.loc[(df["train.batch_size"] == 64) & (df["data.num_workers"] == 2), "peak_worker_rss"].item() \
        == 464 * MiB
    stopped = df[df.status == "limit"]
    assert len(stopped) == 1 and pd.isna(stopped["peak_main_rss"].item())
    png = render.sweep_plot(SweepResult("t", knobs, df), tmp_path / "sweep.png", "t")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = render.sweep_text(SweepResult("t", knobs, df))
    assert "train.batch_size" in text and "limit" in text


def test_plot_with_a_categorical_knob(tmp_path: Path) -> None:
    knobs = parse_knobs(["memray.mode=off,windows", "train.batch_size=4"], [])
    df = run_grid(knobs, lambda p: _fake_run([p[1]]))
    png = render.sweep_plot(SweepResult("t", knobs, df), tmp_path / "s.png", "t")
    assert png.stat().st_size > 1000


# A script's own arguments as knobs: --vary --batch=8,16


@pytest.mark.parametrize(("args", "flag", "value", "expected"), [
    (["--batch", "4", "--lr", "0.1"], "--batch", "8", ["--batch", "8", "--lr", "0.1"]),
    (["--lr", "0.1", "--batch=4"], "--batch", "8", ["--lr", "0.1", "--batch=8"]),
    (["--lr", "0.1"], "--batch", "8", ["--lr", "0.1", "--batch", "8"]),
    (["--batch-size", "4"], "--batch", "8", ["--batch-size", "4", "--batch", "8"]),  # another flag
    (["-b", "4", "-b", "5"], "-b", "8", ["-b", "8", "-b", "8"]),
    ([], "--batch", "8", ["--batch", "8"]),
])
def test_with_arg(args: list[str], flag: str, value: str, expected: list[str]) -> None:
    assert with_arg(args, flag, value) == expected


def test_a_script_argument_is_a_knob() -> None:
    k = parse_vary("--batch=8,16")
    assert (k.key, k.raw, k.is_arg, k.values) == ("--batch", ("8", "16"), True, (8, 16))
    assert parse_vary("--opt=sgd,adam").values == ("sgd", "adam")  # text stays text
    assert not parse_vary("train.batch_size=4").is_arg
    with pytest.raises(UsageError, match="while workload.args is varied whole"):
        parse_knobs(["--batch=8", "workload.args=[]"], [])


def test_script_argument_grid_gives_workload_args_whole(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text("print('hi')\n")
    scenario = tmp_path / "s.yaml"
    scenario.write_text(f"name: s\nstages: [main]\nworkload: {{entry: {script}, "
                        "args: ['--batch', '4', '--epochs=2']}\n")
    knobs = parse_knobs(["train.epochs=1,2", "--batch=8,16"], [])
    points = grid(knobs, ["--batch", "4", "--epochs=2"])
    assert points[1] == ["train.epochs=1", 'workload.args=["--batch", "16", "--epochs=2"]']
    loaded = scenario_mod.load(scenario, points[1])
    assert loaded.workload.args == ("--batch", "16", "--epochs=2") and loaded.train.epochs == 1


def test_script_argument_sweep_table_and_plot_labels_are_the_values(tmp_path: Path) -> None:
    knobs = parse_knobs(["--batch=8,16,64"], [])
    seen: list[str] = []
    calls: list[list[str]] = []

    def fake(point: list[str]) -> tuple[str, str, Summary | None, pd.DataFrame | None]:
        calls.append(point)
        bs = int(json.loads(point[0].partition("=")[2])[1])
        return f"runs/{bs}", "ok", fake_model(tree=800 * MiB + bs * MiB), None

    df = run_grid(knobs, fake, seen.append, args=["--batch", "4"])
    assert calls[0] == ['workload.args=["--batch", "8"]']
    assert seen[2] == "harness: sweep 3/3: --batch=64"
    assert list(df["--batch"]) == [8, 16, 64]
    assert list(df["peak_tree_rss"]) == [808 * MiB, 816 * MiB, 864 * MiB]
    xs, labels, log = render._x_positions(list(df["--batch"]))
    assert labels == ["8", "16", "64"] and xs == [8.0, 16.0, 64.0] and log
    png = render.sweep_plot(SweepResult("t", knobs, df), tmp_path / "s.png", "t")
    assert png.stat().st_size > 1000


def test_a_script_argument_for_the_builtin_workload_is_refused(tmp_path: Path) -> None:
    smoke = Path(__file__).parent.parent / "scenarios" / "smoke.yaml"
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["sweep", str(smoke), "--vary", "--batch=8,16", "--reports", str(tmp_path)])
    assert code == 2
    assert "--vary --batch: a script argument, but the scenario runs the built-in workload" in err.getvalue()
    assert not any(tmp_path.iterdir())  # refused before anything ran
