"""harness fit's arithmetic on known numbers: the lines, the largest value under a budget, where
the runs go, and when the model is said not to hold (the runs themselves: test_fit_run.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from harness.cli import _join_dash_values
from harness.errors import UsageError
from harness.gate import fit as f
from harness.gate import output as render
from harness.gate.sweep import Knob

MiB = 1024 * 1024
TREE = "peak_tree_rss"


def _phase(phase: str) -> str:
    return f"phases.{phase}.{TREE}"


def _metrics(x: float, fwd: float, bwd: float, fixed: float = 500 * MiB) -> dict[str, int]:
    """A run whose forward and backward peaks grow ``fwd`` and ``bwd`` bytes a unit of the knob."""
    f_, b_ = int(fixed + fwd * x), int(fixed + bwd * x)
    return {TREE: max(f_, b_), _phase("forward"): f_, _phase("backward"): b_,
            _phase("setup"): int(fixed), _phase("teardown"): int(fixed + 10 * bwd * x)}


def test_fit_line_exact_points() -> None:
    ln = f.fit_line(TREE, [2, 8, 20], [500 * MiB + 6 * MiB * x for x in (2, 8, 20)])
    assert ln.fixed == pytest.approx(500 * MiB)
    assert ln.per_unit == pytest.approx(6 * MiB)
    assert ln.r2 == pytest.approx(1.0)
    assert ln.residual == pytest.approx(0, abs=1e-3)
    assert ln.checked and ln.holds
    assert ln.tolerance == 32 * MiB  # the tree's noise floor beats 2 % of 620 MiB


def test_fit_line_residual_of_a_square() -> None:
    # y = x^2 MiB at 4, 16, 40: the line 45.7 x - 290.3 misses the middle point by 1296/7 MiB
    xs = [4, 16, 40]
    ln = f.fit_line(TREE, xs, [x * x * MiB for x in xs])
    assert ln.residual / MiB == pytest.approx(1296 / 7)
    assert not ln.holds
    assert ln.r2 is not None and ln.r2 < 0.99


def test_two_values_cannot_be_checked() -> None:
    ln = f.fit_line(TREE, [1, 2], [10.0, 20.0])
    assert not ln.checked and ln.holds and ln.residual == 0
    with pytest.raises(ValueError):
        f.fit_line(TREE, [2, 2], [10.0, 11.0])


def test_flat_peaks_have_no_r2() -> None:
    assert f.fit_line(TREE, [1, 2, 4], [5.0, 5.0, 5.0]).r2 is None


def test_model_is_the_largest_phase_and_leaves_out_teardown() -> None:
    # forward: 600 MiB fixed + 1 MiB a unit; backward: 500 MiB + 6 MiB: backward leads past 20
    points = [(x, {**_metrics(x, 1 * MiB, 6 * MiB), _phase("forward"): int(600 * MiB + MiB * x)})
              for x in (2.0, 8.0, 32.0)]
    for _, got in points:
        got[TREE] = max(got[_phase("forward")], got[_phase("backward")])
    model = f.build_model(TREE, points)
    assert {ln.phase for ln in model.phases} == {"forward", "backward", "setup"}
    assert model.predict(10)[1].phase == "forward"
    assert model.predict(30)[1].phase == "backward"
    assert not model.broken  # each phase is a line; the run's kink at 20 is no fault
    assert not model.run.holds or model.run.residual > 0
    # the budget 800 MiB: backward allows (800 - 500) / 6 = 50, forward 200
    assert f.largest_under(model, 800 * MiB, 1, None, True) == 50


def test_a_run_without_the_metric_is_named() -> None:
    with pytest.raises(UsageError, match="the run at 8 recorded no peak_cuda_reserved"):
        f.build_model("peak_cuda_reserved", [(2.0, {"peak_cuda_reserved": 1}), (8.0, {})])


@pytest.mark.parametrize(("budget", "lo", "hi", "integer", "expected"), [
    (800, 1, None, True, 50),        # (800 - 500) / 6
    (803, 1, None, True, 50),        # 50.5 -> 50 whole
    (803, 1, None, False, 50.5),
    (800, 1, 40, True, 40),          # --max bounds it
    (505, 1, None, True, None),      # at 1: 506 > 505
    (500, 0, None, True, 0),
])
def test_largest_under(budget: int, lo: float, hi: float | None, integer: bool,
                       expected: float | None) -> None:
    model = f.Model(f.fit_line(TREE, [1, 2, 3], [506.0, 512.0, 518.0]), ())
    assert f.largest_under(model, budget, lo, hi, integer) == expected


def test_a_peak_that_does_not_grow_is_unbounded() -> None:
    model = f.Model(f.fit_line(TREE, [1, 2, 3], [500.0, 500.0, 499.0]), ())
    assert f.largest_under(model, 800, 1, None, True) == math.inf
    assert f.largest_under(model, 800, 1, 64, True) == 64


@pytest.mark.parametrize(("current", "lo", "hi", "integer", "expected"), [
    (4, 1, None, True, (4, 16)),
    (0, 0, None, True, (0, 4)),
    (0.5, 0, None, False, (0.5, 2.0)),
    (64, 1, 100, True, (64, 100)),
    (100, 1, 100, True, (25, 100)),
])
def test_first_values(current: float, lo: float, hi: float | None, integer: bool,
                      expected: tuple[float, float]) -> None:
    assert f.first_values(current, lo, hi, integer) == expected


def test_first_values_refuse_a_range_too_narrow() -> None:
    with pytest.raises(UsageError, match="--values"):
        f.first_values(1, 1, 1, True)


def test_third_value_goes_halfway_to_the_target_on_a_log_scale() -> None:
    # 500 + 6x: the budget 800 is met at 50; runs at 2 and 8: the third at sqrt(8 * 50) = 20
    model = f.Model(f.fit_line(TREE, [2, 8], [512.0, 548.0]), ())
    assert f.third_value(model, 800, [2, 8], 1, None, True) == 20
    assert f.third_value(model, 800, [2, 8], 1, 12, True) == 10  # sqrt(8 * 12): --max bounds the target
    assert f.third_value(model, 530, [2, 8], 1, None, True) == 5  # the target itself, below 8
    assert f.third_value(model, 400, [2, 8], 1, None, True) == 1  # nothing fits: the smallest
    assert f.third_value(model, 400, [1, 2], 1, 2, True) is None  # no value left


def _result(points: list[tuple[float, dict[str, int]]], budget: int = 800 * MiB) -> f.FitResult:
    r = f.FitResult("s", "train.batch_size", TREE, budget, True, 1, None,
                    probes=[f.Probe(x, f"run{x}", "ok", got) for x, got in points])
    r.model = f.build_model(TREE, points)
    return r


def test_judge_chooses_then_verifies() -> None:
    r = _result([(x, _metrics(x, 4 * MiB, 6 * MiB)) for x in (2, 8, 20)])
    f.judge_model(r)
    assert r.chosen == 50 and r.predicted == pytest.approx(800 * MiB)
    r.verification = f.Probe(50, "v", "ok", {TREE: int(780 * MiB)})
    f.judge_verification(r)
    assert r.ok and r.error == pytest.approx(-0.025)
    text = render.fit_text(r)
    assert "largest train.batch_size under 800 MiB of peak_tree_rss: 50" in text
    assert "(-2.5%)" in text and "backward" in text
    doc = f.to_dict(r)
    assert doc["chosen"] == 50 and doc["outcome"] == "holds" and doc["measured"] == 780 * MiB


def test_judge_verification_off_by_more_than_5_percent() -> None:
    r = _result([(x, _metrics(x, 4 * MiB, 6 * MiB)) for x in (2, 8, 20)])
    f.judge_model(r)
    r.verification = f.Probe(50, "v", "ok", {TREE: int(900 * MiB)})
    f.judge_verification(r)
    assert r.outcome == f.OFF and "does not hold at 50" in r.reason and "+12.5%" in r.reason


def test_judge_nonlinear_names_the_phase_and_chooses_nothing() -> None:
    points = [(x, _metrics(x, 0, 0)) for x in (4.0, 16.0, 40.0)]
    for x, got in points:
        got[_phase("forward")] = int(500 * MiB + x * x * MiB)
        got[TREE] = got[_phase("forward")]
    r = _result(points, budget=4096 * MiB)
    f.judge_model(r)
    assert r.outcome == f.NONLINEAR and r.chosen is None
    assert "[forward] misses its line by 185 MiB" in r.reason
    assert "no value chosen" in render.fit_text(r)


def test_judge_nothing_fits() -> None:
    r = _result([(x, _metrics(x, 4 * MiB, 6 * MiB)) for x in (2, 8, 20)], budget=400 * MiB)
    f.judge_model(r)
    assert r.outcome == f.NOTHING_FITS and "at train.batch_size = 1" in r.reason


def test_html_escapes_the_knob() -> None:
    r = _result([(x, _metrics(x, 4 * MiB, 6 * MiB)) for x in (2, 8, 20)])
    r.knob = "--<b>"
    f.judge_model(r)
    page = render.fit_html(r)
    assert "--&lt;b&gt;" in page and "--<b>" not in page


@pytest.mark.parametrize(("key", "args", "expected"), [
    ("--batch", ["--batch", "8", "--lr", "0.1"], "8"),
    ("--batch", ["--batch=16"], "16"),
    ("--batch", ["--lr", "0.1"], None),
    ("train.batch_size", [], "4"),
])
def test_current_value(key: str, args: list[str], expected: str | None) -> None:
    sc = {"train": {"batch_size": 4, "lr": 0.001}}
    assert f.current_text(Knob(key, ()), sc, args) == expected


@pytest.mark.parametrize(("key", "text", "message"), [
    ("train.nope", None, "not a scenario key"),
    ("train", None, "a section or a list"),
])
def test_bad_knob_key(key: str, text: str | None, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        f.current_text(Knob(key, ()), {"train": {"batch_size": 4}}, [])


def test_knob_must_be_a_number() -> None:
    assert f.knob_number(Knob("--batch", ()), "8", "x") == (8.0, True)
    assert f.knob_number(Knob("train.lr", ()), "0.5", "x") == (0.5, False)
    with pytest.raises(UsageError, match="not a number"):
        f.knob_number(Knob("--mode", ()), "fast", "workload.args")
    with pytest.raises(UsageError, match="give the values to run with --values"):
        f.knob_number(Knob("--batch", ()), None, "workload.args")


@pytest.mark.parametrize(("argv", "expected"), [
    (["sweep", "s.yaml", "--vary", "--batch=8,16"], ["sweep", "s.yaml", "--vary=--batch=8,16"]),
    (["fit", "s.yaml", "--knob", "--batch"], ["fit", "s.yaml", "--knob=--batch"]),
    (["fit", "s.yaml", "--knob", "train.lr"], ["fit", "s.yaml", "--knob", "train.lr"]),
    (["run", "s.yaml", "--set", "-x"], ["run", "s.yaml", "--set", "-x"]),
])
def test_dash_values_are_joined(argv: list[str], expected: list[str]) -> None:
    assert _join_dash_values(argv) == expected


def test_a_batch_is_bounded_by_the_smallest_split() -> None:
    from harness.gate.runs import _largest_batch
    from harness.records import scenario

    smoke = Path(__file__).parent.parent / "scenarios" / "smoke.yaml"
    assert _largest_batch(scenario.load(smoke)) == 120  # 1,200 images, 10 % to validate
    assert _largest_batch(scenario.load(smoke, ["data.split=[0.5,0.3,0.2]"])) == 240
    assert _largest_batch(scenario.load(smoke, ["data.source=cifar10", "data.download=true"])) == 6000


def test_a_knob_within_the_noise_gets_no_value_unless_bounded() -> None:
    # 200 KiB a unit from 4 to 44: 8 MiB in all, inside the tree's 32 MiB noise floor
    points = [(x, _metrics(x, 0, 200 * 1024)) for x in (4.0, 16.0, 44.0)]
    r = _result(points, budget=2048 * MiB)
    f.judge_model(r)
    assert r.outcome == f.NO_EFFECT and r.chosen is None
    assert "does not grow measurably" in r.reason and "from 4 to 44" in r.reason
    r = _result(points, budget=2048 * MiB)
    r.hi = 120
    f.judge_model(r)
    assert r.chosen == 120 and r.unbounded and not r.outcome


@pytest.mark.parametrize(("argv", "message"), [
    (["--knob", "train batch"], "--knob train batch: expected a dotted scenario key"),
    (["--knob", "train.nope"], "fit: --knob train.nope: not a scenario key"),
    (["--knob", "--batch"], "--knob --batch: a script argument, but the scenario runs the built-in"),
    (["--knob", "data.source"], "data.source is 'synthetic' in"),
    (["--metric", "growth_per_epoch"], "invalid choice"),
    (["--budget", "lots"], "--budget lots: expected a size"),
    (["--values", "4"], "--values: two or three different values"),
    (["--max", "0"], "--max 0 is below --min 1"),
])
def test_bad_fit_input_is_one_line_exit_2(tmp_path: Path, argv: list[str], message: str) -> None:
    import contextlib
    import io

    from harness.cli import main

    smoke = Path(__file__).parent.parent / "scenarios" / "smoke.yaml"
    base = ["fit", str(smoke), "--budget", "1GiB", "--reports", str(tmp_path)]
    if argv[0] == "--budget":
        base = base[:2] + base[4:]
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main([*base, *argv])
        except SystemExit as exc:  # argparse's own refusals
            code = int(exc.code or 0)
    assert code == 2
    assert message in err.getvalue() and "Traceback" not in err.getvalue()
    assert not any(tmp_path.iterdir())  # refused before anything ran


# The orchestration (harness.gate.runs.fit) with the runs faked: which values run, in what order,
# and what is written when one fails.


def _fake_runs(monkeypatch: pytest.MonkeyPatch, peak: Any, status: Any = lambda v: "ok") -> list[float]:
    from _gate import fake_model

    from harness.gate import runs

    ran: list[float] = []

    def fake(sc: Any, reports: Path, console: Any, what: str) -> tuple[str, str, Any, Any]:
        bs = float(sc.train.batch_size)
        ran.append(bs)
        assert sc.memray.mode == "off" and sc.train.epochs == 1 and sc.train.max_steps == 30
        return f"runs/{int(bs)}", status(bs), fake_model(tree=int(peak(bs))), None

    monkeypatch.setattr(runs, "run_point", fake)
    return ran


SMOKE = Path(__file__).parent.parent / "scenarios" / "smoke.yaml"


def test_fit_runs_two_values_a_third_then_verifies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.gate import runs

    ran = _fake_runs(monkeypatch, lambda bs: 900 * MiB + bs * 4 * MiB)
    r = runs.fit(SMOKE, "train.batch_size", 1024 * MiB, TREE, [], tmp_path, steps=30, progress=lambda s: None)
    # 4 (the scenario's), 16; the line meets 1 GiB at 31: the third at sqrt(16 * 31) = 22; then 31
    assert ran == [4, 16, 22, 31]
    assert r.ok and r.chosen == 31 and r.error == pytest.approx(0, abs=1e-9)
    doc = json.loads(Path(r.files["json"]).read_text())
    assert doc["chosen"] == 31 and doc["max"] == 120 and doc["outcome"] == "holds"
    assert Path(r.files["html"]).parent == Path(r.out_dir) and Path(r.out_dir).parent == tmp_path / "smoke"


def test_fit_stops_at_a_failed_run_and_writes_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.gate import runs

    ran = _fake_runs(monkeypatch, lambda bs: 900 * MiB, status=lambda bs: "limit" if bs > 10 else "ok")
    r = runs.fit(SMOKE, "train.batch_size", 1024 * MiB, TREE, [], tmp_path, steps=30, progress=lambda s: None)
    assert ran == [4, 16]
    assert r.outcome == f.RUN_FAILED and r.reason == "the run at train.batch_size = 16 ended limit (runs/16)"
    assert json.loads(Path(r.files["json"]).read_text())["outcome"] == "run_failed"


def test_fit_a_metric_the_runs_do_not_record_is_bad_input(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.gate import runs

    ran = _fake_runs(monkeypatch, lambda bs: 900 * MiB)
    with pytest.raises(UsageError, match="--metric peak_cuda_reserved: the run at train.batch_size = 4 "
                                         "recorded none"):
        runs.fit(SMOKE, "train.batch_size", 1024 * MiB, "peak_cuda_reserved", [], tmp_path, steps=30,
                 progress=lambda s: None)
    assert ran == [4]
