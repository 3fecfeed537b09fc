"""harness fit end to end, on a script with a known memory model (tests/workloads/fit_linear.py):
a knob whose peak grows 6 MiB a unit (chosen, verified within 5 %), and one whose peak grows
with its square (the model does not hold: nothing is chosen). The runs are shared by the tests
below; the linear fit's verification run is also exported to TensorBoard and read back."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import pytest

from harness.cli import main

pytestmark = pytest.mark.slow
MiB = 1024 * 1024
WORKLOAD = Path(__file__).parent / "workloads" / "fit_linear.py"


def _fit(root: Path, knob: str, budget: str, *more: str) -> tuple[int, str, dict[str, Any], Path]:
    scenario = root / "fit.yaml"
    scenario.write_text(f"name: fit-linear\nstages: [main]\nworkload:\n  entry: {WORKLOAD}\n"
                        "  args: ['--batch', '2', '--square', '4']\n"
                        "sampling: {rss_hz: 50}\ntensors: {snapshots: false}\n", encoding="utf-8")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        # the script's own argument, spelt as a user would: --knob --batch
        code = main(["fit", str(scenario), "--knob", knob, "--budget", budget,
                     "--reports", str(root / "reports"), "--quiet", *more])
    [fit_json] = (root / "reports" / "fit-linear").glob("fit-*/fit.json")
    return code, out.getvalue(), json.loads(fit_json.read_text()), fit_json.parent


@pytest.fixture(scope="module")
def linear(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, str, dict[str, Any], Path]:
    # the tree's RSS: the sum of PSS would move with the other torch processes on the machine
    return _fit(tmp_path_factory.mktemp("linear"), "--batch", "1GiB", "--metric", "peak_tree_rss")


@pytest.fixture(scope="module")
def square(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, str, dict[str, Any], Path]:
    return _fit(tmp_path_factory.mktemp("square"), "--square", "2GiB")  # the default metric


def test_linear_knob_is_fitted_chosen_and_verified(linear: tuple[int, str, dict[str, Any], Path]) -> None:
    code, text, doc, out_dir = linear
    assert code == 0, text
    assert doc["outcome"] == "holds"
    # two runs, a third between them and the budget, then the verification: four in all
    assert [r["value"] for r in doc["runs"][:2]] == [2, 8]
    assert len(doc["runs"]) == 3 and doc["verification"]["status"] == "ok"
    backward = next(p for p in doc["model"]["phases"] if p["phase"] == "backward")
    # the script holds 4 + 2 MiB a unit of --batch in backward, its peak phase
    assert backward["per_unit"] == pytest.approx(6 * MiB, rel=0.05)
    assert backward["holds"] and backward["r2"] > 0.99
    # the largest whole value whose line stays under the budget, and the next is over it
    budget, chosen = doc["budget"], doc["chosen"]
    assert budget == 1024 * MiB
    assert backward["fixed"] + backward["per_unit"] * chosen <= budget
    assert backward["fixed"] + backward["per_unit"] * (chosen + 1) > budget
    assert chosen > doc["runs"][2]["value"] > 8
    # measured within 5 % of the prediction at the chosen value
    assert abs(doc["measured"] - doc["predicted"]) <= 0.05 * doc["predicted"]
    assert doc["error"] == pytest.approx((doc["measured"] - doc["predicted"]) / doc["predicted"], abs=1e-6)
    assert f"largest --batch under 1.00 GiB of peak_tree_rss: {int(chosen)}" in text
    html = (out_dir / "fit.html").read_text()
    assert "--batch" in html and "backward" in html
    assert html.count("/report/report.html'") == 4  # each run's report, linked


def test_square_knob_is_said_not_to_hold(square: tuple[int, str, dict[str, Any], Path]) -> None:
    code, text, doc, _ = square
    assert code == 1
    assert doc["outcome"] == "nonlinear"
    assert doc["chosen"] is None and doc["verification"] is None
    assert [r["value"] for r in doc["runs"][:2]] == [4, 16] and len(doc["runs"]) == 3
    forward = next(p for p in doc["model"]["phases"] if p["phase"] == "forward")
    assert not forward["holds"] and forward["residual"] > forward["tolerance"]
    assert "the model does not hold" in text and "no value chosen" in text


def test_export_reads_back_with_tensorboard(linear: tuple[int, str, dict[str, Any], Path],
                                            tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, _, doc, _ = linear
    run_dir = doc["verification"]["run_dir"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["export", run_dir, "--tensorboard", str(tmp_path / "tb")]) == 0
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"memory/main/tree_rss_mib", "memory/main/main_rss_mib",
            "memory/main/phase/backward/main_rss_mib", "memory/main/phase/forward/main_rss_mib"} <= tags
    backward = acc.Scalars("memory/main/phase/backward/main_rss_mib")
    assert [e.step for e in backward] == [0, 1, 2]  # the script's three steps
    # the step's backward peak is the run's: the same figure the fit measured
    assert max(e.value for e in backward) == pytest.approx(doc["measured"] / MiB, rel=0.01)
