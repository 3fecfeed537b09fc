"""PyTorch Lightning and Accelerate run unchanged under the automatic phases (harness.probe.frameworks).

In-process tests drive the hooks with a fake live probe (as tests/test_auto_phases.py does) over
several loop shapes; two end-to-end runs (slow), each a planted stage and its clean twin, check
captures and the leak finding. Each skips without its framework (the ``frameworks`` extra).
"""

from __future__ import annotations

import json
import runpy
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
import test_auto_phases
import torch
import yaml
from conftest import WORKLOADS, latest_run, read_events
from test_auto_phases import FakeProbe
from torch.utils.data import DataLoader, TensorDataset

from harness.probe import auto

STEP = ["data", "forward", "loss", "backward", "optimizer"]

fake = test_auto_phases.fake  # the fixture: a FakeProbe as harness.probe's target


def _loader(batches: int, seed: int = 0, batch: int = 2) -> DataLoader[Any]:
    g = torch.Generator().manual_seed(seed)
    n = batches * batch
    return DataLoader(TensorDataset(torch.randn(n, 4, generator=g), torch.randint(0, 2, (n,), generator=g)),
                      batch_size=batch)


def _steps(fake: FakeProbe) -> list[list[str]]:
    """The fake's training marks cut after each optimizer phase (a ``data`` repeated once: the
    loader's own mark and the training loop's), sections left out."""
    out: list[list[str]] = []
    cur: list[str] = []
    for mark in fake.marks:
        if mark in ("sanity_check", "validate", "test", "idle"):
            cur = []
        elif not (mark == "data" and cur[-1:] == ["data"]):
            cur.append(mark)
            if mark == "optimizer":
                out.append(cur)
                cur = []
    return out


# ---- Lightning, in process ------------------------------------------------------------------


def _lightning() -> Any:
    pl = pytest.importorskip("lightning.pytorch")
    warnings.filterwarnings("ignore", module="lightning")
    return pl


def _module(pl: Any) -> Any:
    class Module(pl.LightningModule):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        def training_step(self, batch: Any, idx: int) -> torch.Tensor:
            return torch.nn.functional.cross_entropy(self(batch[0]), batch[1])

        def validation_step(self, batch: Any, idx: int) -> None:
            self(batch[0])

        def test_step(self, batch: Any, idx: int) -> None:
            self(batch[0])

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    return Module()


def _trainer(pl: Any, **kwargs: Any) -> Any:
    return pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, **kwargs)


def _events(fake: FakeProbe) -> list[tuple[str, Any]]:
    return [e for e in fake.log if e[0] != "watch"]


def test_lightning_fit_sanity_check_epochs_steps_and_validation(fake: FakeProbe) -> None:
    pl = _lightning()
    # GIVEN Trainer.fit over 5 training batches and 3 validation batches, 2 epochs
    with auto.phases("main"):
        _trainer(pl, max_epochs=2).fit(_module(pl), _loader(5), _loader(3, 1))
    # THEN the two sanity-check batches are their own section before epoch 1, each epoch is
    # Lightning's, with 5 steps and its validation pass inside it
    epoch = [("train", 0), ("loop_end", 5), ("section", "validate"), ("section_end", "validate")]
    assert _events(fake) == [
        ("section", "sanity_check"), ("section_end", "sanity_check"),
        ("epoch", 1), *epoch, ("epoch_end", 1), ("epoch", 2), *epoch, ("epoch_end", 2)]
    assert fake.section_batches == 3
    # every step is data, forward, loss, backward, then the optimizer (Lightning's closure runs
    # forward and backward inside optimizer.step)
    assert _steps(fake) == [STEP] * 10
    assert ("watch", "Module") in fake.log and ("watch", "SGD") in fake.log
    # and the hooks came off with the automatic phases: a Trainer built now gets no callback
    assert not any(type(c).__name__ == "HarnessPhases" for c in _trainer(pl).callbacks)


def test_lightning_limited_batches_accumulation_mid_epoch_validation_and_test(fake: FakeProbe) -> None:
    pl = _lightning()
    # GIVEN 12 batches limited to 8, 2 batches a step, validation every 4 batches, 1 epoch; then test
    with auto.phases("main"):
        trainer = _trainer(pl, max_epochs=1, limit_train_batches=8, accumulate_grad_batches=2,
                           val_check_interval=4, num_sanity_val_steps=0)
        trainer.fit(_module(pl), _loader(12), _loader(2, 1))
        trainer.test(_module(pl), _loader(3, 2))
    # THEN 4 steps, in two runs of 2 around a validation pass; the test pass in no epoch
    val = [("section", "validate"), ("section_end", "validate")]
    assert _events(fake) == [("epoch", 1), ("train", 0), ("loop_end", 2), *val, ("train", 2),
                             ("loop_end", 4), *val, ("epoch_end", 1),
                             ("section", "test"), ("section_end", "test")]
    # a step holds two batches' forward and backward, then one optimizer step
    assert _steps(fake) == [["data", "forward", "loss", "backward", "data", "forward", "loss",
                             "backward", "optimizer"]] * 4


def test_lightning_without_validation_epochs_from_max_epochs(fake: FakeProbe) -> None:
    pl = _lightning()
    with auto.phases("main"):
        _trainer(pl, max_epochs=3, limit_train_batches=2).fit(_module(pl), _loader(6))
    assert _events(fake) == [e for n in (1, 2, 3)
                             for e in (("epoch", n), ("train", 0), ("loop_end", 2), ("epoch_end", n))]
    assert _steps(fake) == [STEP] * 6


# ---- Accelerate, in process -----------------------------------------------------------------


def _accelerate_loop(accum: int, batches: int, epochs: int = 2) -> None:
    """accelerate_loop.py in this process: ``batches`` training batches, 3 validation batches an epoch."""
    argv = sys.argv
    sys.argv = ["accelerate_loop.py", "--accum", str(accum), "--batches", str(batches),
                "--val-batches", "3", "--epochs", str(epochs)]
    try:
        runpy.run_path(str(WORKLOADS / "accelerate_loop.py"), run_name="__main__")
    finally:
        sys.argv = argv


@pytest.mark.parametrize("accum", [1, 3])
def test_accelerate_prepared_loaders_epochs_validation_and_accumulation(fake: FakeProbe,
                                                                        accum: int) -> None:
    pytest.importorskip("accelerate")
    # GIVEN a prepared model, optimizer and loaders (each fetching a batch ahead), 6 batches an epoch
    with auto.phases("main"):
        _accelerate_loop(accum, 6)
    # THEN the loader's passes train, the validation loader validates inside each epoch
    val = [("section", "validate"), ("section_end", "validate")]
    # a step is an optimizer step: 6 / accum of them an epoch (the first step of the first
    # epoch ran before the loop was known)
    steps = 6 // accum
    assert _events(fake) == [("epoch", 1), ("train", 1), ("loop_end", steps), *val, ("epoch_end", 1),
                             ("epoch", 2), ("train", 0), ("loop_end", steps), *val, ("epoch_end", 2)]
    assert fake.section_batches == 3
    # the prepared optimizer's skipped steps never reach the optimizer: 6 / accum optimizer phases
    # an epoch, every batch a forward, loss and backward
    assert fake.marks.count("optimizer") == 2 * 6 // accum
    assert fake.marks.count("backward") == fake.marks.count("forward") == 12


# ---- under harness run ----------------------------------------------------------------------


def _run(tmp_path: Path, script: str, args: list[str], steps: int) -> Path:
    """``harness run`` (in this process) of ``script``'s planted and clean stages."""
    from harness.cli import main

    s = {"name": "frameworks", "stages": ["planted", "clean"],
         "workload": {"entry": str(WORKLOADS / script), "args": args},
         "memray": {"train_start": 0, "train_steps": steps, "epochs": [2, 3], "validation": False},
         "tensors": {"trace_steps": 2, "trace_every": 0}}
    path = tmp_path / "frameworks.yaml"
    path.write_text(yaml.safe_dump(s), encoding="utf-8")
    assert main(["run", str(path), "--reports", str(tmp_path / "r"), "--quiet"]) == 0
    return latest_run(tmp_path / "r")


def _leak_lines(run: Path) -> dict[str, set[int]]:
    """Per stage, the workload lines the leak finding names (empty: no finding for it)."""
    summary = json.loads((run / "report/summary.json").read_text(encoding="utf-8"))
    out: dict[str, set[int]] = {"planted": set(), "clean": set()}
    for f in summary["findings"]:
        if f["kind"] != "leak":
            continue
        for site in [*f["numbers"].get("sites", []), *f["numbers"].get("step_sites", [])]:
            line = str(site.get("where") or site.get("workload_line")).rsplit(":", 1)[-1].rstrip(")")
            out[site["stage"]].add(int(line) if line.isdigit() else -1)
        for stage in f["numbers"]["stages"]:
            out[stage].add(0)  # epoch-end growth, no line
    return out


def _planted_line(script: str) -> int:
    lines = (WORKLOADS / script).read_text(encoding="utf-8").splitlines()
    return next(i for i, text in enumerate(lines, 1) if text.rstrip().endswith("# the leak"))


def _assert_epochs_and_captures(run: Path, stage: str, sections: list[str], steps: int) -> list[dict[str, Any]]:
    events = read_events(run / "stages" / stage)
    assert [e["epoch"] for e in events if e["kind"] == "epoch_end"] == [1, 2, 3]
    assert [e["section"] for e in events if e["kind"] == "section_start"] == sections
    assert [e["steps"] for e in events if e["kind"] == "loop_end"] == [steps] * 3
    captures = {e["capture"] for e in events if e["kind"] == "memray_start"}
    assert captures == {f"{stage}-e{n}-train" for n in (2, 3)}  # the leak finding reads epochs 2+
    return events


@pytest.fixture(scope="module")
def lightning_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("lightning.pytorch")
    return _run(tmp_path_factory.mktemp("lightning"), "lightning_fit.py", [], 22)


@pytest.mark.slow
def test_lightning_fit_under_harness_run(lightning_run: Path) -> None:
    # GIVEN lightning_fit.py (22 batches, 3 epochs, 4 validation batches), kept logits planted
    for stage in ("planted", "clean"):
        events = _assert_epochs_and_captures(lightning_run, stage,
                                             ["sanity_check", "validate", "validate", "validate"], 22)
        traced = [e for e in events if e["kind"] == "traced_step"]
        assert traced and all(e["phases"][:5] == STEP for e in traced), traced
    # THEN the leak finding names the planted line, in forward (training_step runs in the
    # closure), for the planted stage alone
    lines = _leak_lines(lightning_run)
    assert _planted_line("lightning_fit.py") in lines["planted"]
    assert lines["clean"] == set()
    summary = json.loads((lightning_run / "report/summary.json").read_text(encoding="utf-8"))
    leak = next(f for f in summary["findings"] if f["kind"] == "leak")
    # the line kept memory in every step of its window (step_sites: counted step by step)
    site = next(s for s in leak["numbers"]["step_sites"] if s["stage"] == "planted")
    assert site["phase"] == "forward" and site["kept_steps"] == site["window_steps"]
    assert 60_000 < site["bytes_per_step"] < 70_000  # 16 x 1024 x 4 a step


@pytest.fixture(scope="module")
def accelerate_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("accelerate")
    return _run(tmp_path_factory.mktemp("accelerate"), "accelerate_loop.py", ["--accum", "2"], 20)


@pytest.mark.slow
def test_accelerate_with_accumulation_under_harness_run(accelerate_run: Path) -> None:
    # GIVEN accelerate_loop.py (40 batches, 3 epochs, 2 batches a step), kept outputs planted
    for stage in ("planted", "clean"):
        events = _assert_epochs_and_captures(accelerate_run, stage, ["validate"] * 3, 20)
        totals = [e for e in events if e["kind"] == "phase_totals" and e["span"] == "epoch"]
        assert [e["transitions"].get("optimizer") for e in totals] == [20, 20, 20]
        assert [e["transitions"].get("backward") for e in totals] == [40, 40, 40]
        traced = [e for e in events if e["kind"] == "traced_step"]
        assert traced and all(e["phases"] == ["data", "forward", "loss", "backward"] * 2 + ["optimizer"]
                              for e in traced), traced
    lines = _leak_lines(accelerate_run)
    assert _planted_line("accelerate_loop.py") in lines["planted"]
    assert lines["clean"] == set()


def test_an_allocation_in_lightnings_training_step_is_forward_not_optimizer() -> None:
    from harness.analysis.attribution import phase_of

    sp = "/venv/lib/python3.11/site-packages"
    # GIVEN the stack of a line in training_step, run by Lightning's closure inside optimizer.step
    frames = [("training_step", "/home/me/train.py", 42),
              ("training_step", f"{sp}/lightning/pytorch/strategies/strategy.py", 390),
              ("closure", f"{sp}/lightning/pytorch/loops/optimization/automatic.py", 146),
              ("step", f"{sp}/torch/optim/sgd.py", 100),
              ("fit", "/home/me/train.py", 60)]
    assert phase_of(frames, section=None, role="main") == "forward"
    # the closure's backward stays backward, the optimizer's own state stays optimizer
    backward = [("backward", f"{sp}/torch/autograd/__init__.py", 200), *frames[1:]]
    assert phase_of(backward, section=None, role="main") == "backward"
    assert phase_of(frames[3:], section=None, role="main") == "optimizer"
