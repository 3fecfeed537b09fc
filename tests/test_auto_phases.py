"""Automatic phases (harness.probe.auto): plain scripts get phases, epochs and sections from torch's hooks."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from conftest import WORKLOADS, latest_run, read_events, stage_samples
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.dataloader import _BaseDataLoaderIter

from harness import probe
from harness.probe import auto
from harness.probe.auto import AutoPhases

STEP = ["data", "forward", "loss", "backward", "optimizer"]


class FakeProbe:
    """Records what the hooks ask of a live probe."""

    enabled = True

    def __init__(self) -> None:
        self.marks: list[str] = []
        self.section_batches = 0  # the last count the hooks gave the running section
        self.log: list[tuple[str, Any]] = []
        self.loops: list[FakeLoop] = []
        self.starts = 0  # composition_start calls: before each pass's first batch

    def phase(self, name: str) -> None:
        self.marks.append(name)

    def composition_start(self) -> None:
        if not self.log and not self.marks:  # nothing marked yet: before the first step
            self.starts += 1

    @contextlib.contextmanager
    def epoch(self, number: int) -> Iterator[None]:
        self.log.append(("epoch", number))
        yield
        self.log.append(("epoch_end", number))

    @contextlib.contextmanager
    def section(self, name: str) -> Iterator[None]:
        self.log.append(("section", name))
        self.marks.append(name)
        yield
        self.log.append(("section_end", name))
        self.marks.append("idle")

    def metric(self, name: str, value: float, **fields: Any) -> None:
        self.log.append(("metric", name))

    def section_step(self, done: int) -> None:
        self.section_batches = done

    def watch(self, model: Any = None, optimizer: Any = None) -> None:
        self.log.append(("watch", type(model if model is not None else optimizer).__name__))

    def train_steps(self, start: int = 0, total: int = -1) -> FakeLoop:
        self.log.append(("train", start))
        self.loops.append(loop := FakeLoop(self, start, total))
        return loop


class FakeLoop:
    """Records the steps the hooks count: begun, done, abandoned."""

    def __init__(self, fake: FakeProbe, start: int, total: int) -> None:
        self.fake = fake
        self.step = start
        self.total = total
        self.begun = 0

    def begin(self) -> None:
        self.begun += 1

    def end(self) -> None:
        self.step += 1

    def abandon(self) -> None:
        pass

    def close(self) -> None:
        self.fake.log.append(("loop_end", self.step))


@pytest.fixture
def fake() -> Iterator[FakeProbe]:
    """A fake live probe as harness.probe's target, as the stage process has the live one."""
    f = FakeProbe()
    probe._active = f
    try:
        yield f
        assert probe._active is f  # the hooks put the target back
    finally:
        probe._active = probe.NullProbe()


def _loader(n: int, seed: int) -> DataLoader[Any]:
    g = torch.Generator().manual_seed(seed)
    return DataLoader(TensorDataset(torch.randn(n, 4, generator=g), torch.randint(0, 2, (n,), generator=g)),
                      batch_size=2)


def _train_step(net: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    opt.zero_grad()
    out = net(x)
    loss = torch.nn.CrossEntropyLoss()(out, y)  # a module without parameters: not a forward
    loss.backward()
    opt.step()


def _net() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))


def test_tutorial_loop_gets_steps_epochs_and_validation_without_eval_or_no_grad(fake: FakeProbe) -> None:
    # GIVEN a training loader of 3 batches, a validation loader of 2, and no probe calls
    net = _net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    train, val = _loader(6, 0), _loader(4, 1)
    # WHEN two epochs run under the hooks, validating with neither eval() nor no_grad()
    with auto.phases("main") as hooks:
        assert hooks is not None
        for _ in range(2):
            for x, y in train:
                _train_step(net, opt, x, y)
            for x, y in val:
                torch.nn.CrossEntropyLoss()(net(x), y)
    # THEN each step is marked once per phase, nested modules and the loss module included
    assert fake.starts == 1  # the composition's start: before the first batch, nothing marked
    assert fake.marks[:5] == STEP
    assert fake.marks.count("forward") == 6  # only training forwards: validation is one section
    assert fake.marks.count("backward") == 6  # Tensor.backward calls torch.autograd.backward: one mark
    # the first epoch's step hooks begin at step 1 (step 0 told the loader trains); validation is a
    # section from the second pass on and from the first batch of the validation loader
    assert fake.log == [
        ("watch", "Sequential"), ("watch", "SGD"),
        ("epoch", 1), ("train", 1), ("loop_end", 3),
        ("section", "validate"), ("section_end", "validate"),
        ("epoch_end", 1), ("epoch", 2), ("train", 0), ("loop_end", 3),
        ("section", "validate"), ("section_end", "validate"),
        ("epoch_end", 2),
    ]


def test_no_grad_evaluation_first_is_a_section_from_its_first_forward(fake: FakeProbe) -> None:
    net = _net()
    with auto.phases("test"):
        with torch.no_grad():
            for x, _ in _loader(4, 0):
                net(x)
    assert fake.log == [("section", "test"), ("section_end", "test")]
    assert "forward" not in fake.marks


def test_an_eval_loop_first_is_known_at_its_second_batch(fake: FakeProbe) -> None:
    net = _net()
    with auto.phases("main"):
        for x, _ in _loader(6, 0):
            net(x)
    assert fake.log == [("watch", "Sequential"), ("section", "validate"), ("section_end", "validate")]
    assert fake.marks[:3] == ["data", "forward", "loss"]  # the first batch, before it was known


def test_a_second_evaluation_loader_is_the_test(fake: FakeProbe) -> None:
    net = _net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    with auto.phases("main"):
        for x, y in _loader(4, 0):
            _train_step(net, opt, x, y)
        for x, _ in _loader(4, 1):
            net(x)
        for x, _ in _loader(4, 2):
            net(x)
    sections = [name for kind, name in fake.log if kind == "section"]
    assert sections == ["validate", "test"]


def test_a_new_loader_that_trains_is_training_from_its_next_batch(fake: FakeProbe) -> None:
    net = _net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    with auto.phases("main"):
        for x, y in _loader(4, 0):
            _train_step(net, opt, x, y)
        for x, y in _loader(6, 1):  # taken for evaluation until its first backward
            _train_step(net, opt, x, y)
    assert fake.log[-5:] == [("section", "validate"), ("section_end", "validate"), ("train", 1),
                             ("loop_end", 3), ("epoch_end", 1)]


def test_next_by_hand_and_an_exhausted_iterator(fake: FakeProbe) -> None:
    net = _net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    loader = _loader(6, 0)
    with auto.phases("main"):
        for _ in range(2):
            it = iter(loader)
            while (batch := next(it, None)) is not None:
                _train_step(net, opt, *batch)
            assert next(it, None) is None  # asked again after it ran out: no new pass
    assert [e for e in fake.log if e[0] in ("epoch", "train")] == [("epoch", 1), ("train", 1),
                                                                   ("epoch", 2), ("train", 0)]


def test_hooks_come_off_and_never_install_twice(fake: FakeProbe) -> None:
    originals = (torch.Tensor.backward, torch.autograd.backward, _BaseDataLoaderIter.__next__)
    hooks = AutoPhases(fake, "main")
    hooks.install()
    hooks.install()
    assert torch.Tensor.backward.__wrapped__ is originals[0]  # type: ignore[attr-defined]
    assert torch.autograd.backward.__wrapped__ is originals[1]  # type: ignore[attr-defined]
    assert _BaseDataLoaderIter.__next__.__wrapped__ is originals[2]  # type: ignore[attr-defined]
    _net()(torch.randn(2, 4))
    assert fake.marks == ["forward", "loss"]  # once, though installed twice
    hooks.uninstall()
    hooks.uninstall()
    assert (torch.Tensor.backward, torch.autograd.backward, _BaseDataLoaderIter.__next__) == originals
    net = _net()
    net(torch.randn(2, 4)).sum().backward()
    for _ in _loader(2, 0):
        pass
    assert fake.marks == ["forward", "loss"]


def test_the_hooks_do_not_change_what_is_computed(fake: FakeProbe) -> None:
    def run() -> list[torch.Tensor]:
        torch.manual_seed(0)
        net = _net()
        opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        for x, y in _loader(6, 0):
            _train_step(net, opt, x, y)
        return [p.detach().clone() for p in net.parameters()]

    bare = run()
    with auto.phases("main"):
        hooked = run()
    assert all(torch.equal(a, b) for a, b in zip(bare, hooked, strict=True))


def test_an_explicit_probe_call_stands_the_hooks_aside(fake: FakeProbe) -> None:
    net = _net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    loader = _loader(4, 0)
    with auto.phases("main") as hooks:
        assert hooks is not None
        for x, y in loader:
            _train_step(net, opt, x, y)
        probe.metric("loss", 1.0)  # not a mark: the hooks stay
        assert hooks.installed
        probe.phase("forward")  # the workload's own mark: the hooks end what they opened and go
        assert not hooks.installed and probe._active is fake
        marks = len(fake.marks)
        for x, y in loader:
            _train_step(net, opt, x, y)
        assert fake.marks[marks - 1:] == ["forward"]
    assert fake.log[-1] == ("epoch_end", 1)


def _installed() -> tuple[Any, ...]:
    """Everything the hooks would touch: torch's global hook tables and the wrapped functions."""
    from torch.nn.modules import module as nn_module
    from torch.optim import optimizer as optim_module
    return (len(nn_module._global_forward_pre_hooks), len(nn_module._global_forward_hooks),
            len(optim_module._global_optimizer_pre_hooks), len(optim_module._global_optimizer_post_hooks),
            torch.Tensor.backward, torch.autograd.backward, _BaseDataLoaderIter.__next__)


def test_switched_off_or_bare_installs_nothing() -> None:
    before = torch.Tensor.backward
    untouched = _installed()
    assert untouched[:4] == (0, 0, 0, 0)
    with auto.phases("main") as hooks:  # bare: the probe is the null probe
        assert hooks is None and torch.Tensor.backward is before
        assert _installed() == untouched
    fake = FakeProbe()
    probe._active = fake
    try:
        with auto.phases("main", enabled=False) as hooks:
            assert hooks is None and torch.Tensor.backward is before
            assert _installed() == untouched
        with auto.phases("main") as hooks:  # live: every table has one hook more, then none
            installed = _installed()
            assert installed[:4] == (1, 1, 1, 1)
            assert all(now is not was for now, was in zip(installed[4:], untouched[4:], strict=True))
        assert _installed() == untouched
    finally:
        probe._active = probe.NullProbe()


def test_a_workload_without_torch_never_imports_it() -> None:
    code = (
        "import sys\n"
        "from harness import probe\n"
        "from harness.probe import auto\n"
        "class Live:\n"
        "    enabled = True\n"
        "    def phase(self, name): print(name)\n"
        "    def watch(self, model=None, optimizer=None): pass\n"
        "probe._active = Live()\n"
        "with auto.phases('main') as hooks:\n"
        "    assert 'torch' not in sys.modules and not hooks.installed\n"
        "assert 'torch' not in sys.modules\n"
        "with auto.phases('main') as hooks:\n"
        "    import torch\n"
        "    assert hooks.installed and torch.Tensor.backward.__wrapped__\n"
        "    torch.nn.Linear(2, 2)(torch.ones(1, 2))\n"
        "assert not hasattr(torch.Tensor.backward, '__wrapped__')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["forward", "loss"]


# ---- under harness run ----------------------------------------------------------------------


def _run(tmp_path: Path, cli: Any, script: str, stages: list[str], **extra: Any) -> Path:
    s = {"name": "auto", "stages": stages, "workload": {"entry": str(WORKLOADS / script)},
         "memray": {"train_start": 0, "train_steps": 4}, "tensors": {"trace_steps": 3, "trace_every": 0},
         **extra}
    path = tmp_path / "auto.yaml"
    path.write_text(yaml.safe_dump(s), encoding="utf-8")
    code, _, err = cli("run", str(path), "--reports", str(tmp_path / "r"))
    assert code == 0, err
    return latest_run(tmp_path / "r")


def _linear_bytes(*shape: int) -> int:
    return sum(o * i + o for i, o in zip(shape, shape[1:], strict=False)) * 4


@pytest.mark.slow
@pytest.mark.parametrize(("script", "params"), [
    ("auto_tutorial.py", _linear_bytes(32, 48, 4)),
    ("auto_nograd.py", _linear_bytes(16, 24, 3)),
    ("auto_manual_iter.py", _linear_bytes(20, 30, 5)),
])
def test_plain_scripts_get_phases_epochs_and_census(tmp_path: Path, cli: Any, script: str,
                                                    params: int) -> None:
    stages = ["main", "test"] if script == "auto_tutorial.py" else ["main"]
    run = _run(tmp_path, cli, script, stages)
    events = read_events(run / "stages/main")
    kinds = [e["kind"] for e in events]
    assert [e["epoch"] for e in events if e["kind"] == "epoch_end"] == [1, 2]
    assert [e["section"] for e in events if e["kind"] == "section_start"] == ["validate", "validate"]
    assert {e["capture"] for e in events if e["kind"] == "memray_start"} >= {"main-e1-train", "main-e2-train"}
    traced = [e for e in events if e["kind"] == "traced_step"]
    assert traced and all(e["phases"] == STEP for e in traced)
    assert kinds.count("loop_end") == 2
    for n in (1, 2):
        snap = json.loads((run / f"stages/main/snapshots/epoch-{n}.json").read_text())
        census = snap["tensor_bytes"]
        assert (census["parameters"], census["gradients"], census["optimizer_state"]) == (params,) * 3
    # every phase of a step was entered in each epoch (the probe's own counts: exact, where the
    # 25 Hz sampler can miss a phase of a few milliseconds on a short run)
    totals = [e for e in events if e["kind"] == "phase_totals" and e.get("span") == "epoch"]
    assert [e["epoch"] for e in totals] == [1, 2]
    for e in totals:
        assert all(e["transitions"].get(p, 0) > 0 for p in STEP), e["transitions"]
    # and the sampler's rows carry the epochs and the automatic phases
    s = stage_samples(run / "stages/main")
    main = s[s.role == "main"]
    assert set(main.phase.dropna()) & set(STEP)
    assert {1, 2} <= set(main.epoch.dropna())
    if "test" in stages:
        test = read_events(run / "stages/test")
        assert [e["section"] for e in test if e["kind"] == "section_start"] == ["test"]


@pytest.mark.slow
def test_a_script_with_its_own_probe_calls_keeps_only_its_marks(tmp_path: Path, cli: Any) -> None:
    run = _run(tmp_path, cli, "auto_explicit.py", ["main"])
    events = read_events(run / "stages/main")
    assert [e["epoch"] for e in events if e["kind"] == "epoch_end"] == [1, 2, 3]
    assert [e["kind"] for e in events].count("watch") == 1
    assert not [e for e in events if e["kind"] == "section_start"]  # its unmarked validation stays so
    traced = [e for e in events if e["kind"] == "traced_step"]
    assert traced[0]["phases"] == ["data", "forward", "backward", "optimizer"]  # no automatic "loss"


@pytest.mark.slow
def test_switched_off_a_plain_script_stays_in_setup(tmp_path: Path, cli: Any) -> None:
    run = _run(tmp_path, cli, "auto_manual_iter.py", ["main"],
               workload={"entry": str(WORKLOADS / "auto_manual_iter.py"), "auto_phases": False})
    kinds = [e["kind"] for e in read_events(run / "stages/main")]
    assert "epoch_start" not in kinds and "section_start" not in kinds and "watch" not in kinds


def test_the_tutorials_test_of_a_reloaded_net_is_the_test_outside_the_epochs(fake: FakeProbe) -> None:
    # GIVEN the tutorial's shape: two epochs over one loader, no validation, then a fresh net
    # loaded from the trained one's state tested under no_grad over a new loader
    net = _net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    train, test = _loader(6, 0), _loader(4, 1)
    with auto.phases("main"):
        for _ in range(2):
            for x, y in train:
                _train_step(net, opt, x, y)
        state = net.state_dict()
        net = _net()
        net.load_state_dict(state)
        with torch.no_grad():
            for x, _y in test:
                net(x)
    # THEN the last pass is the test, after epoch 2 has ended; no forward is marked in it
    assert fake.log[-4:] == [("loop_end", 3), ("epoch_end", 2), ("section", "test"), ("section_end", "test")]
    assert fake.section_batches == 2  # the section counted both batches of the test loader
    assert fake.marks.count("forward") == 6


@pytest.mark.parametrize("wrapped", [False, True])
def test_validating_the_trained_model_or_its_inner_module_stays_validation(fake: FakeProbe,
                                                                          wrapped: bool) -> None:
    # GIVEN a model trained through a wrapper (as DDP wraps it) or directly, validated each epoch
    # on the same model, or on the wrapper's inner module
    inner = _net()
    net = torch.nn.Sequential(inner) if wrapped else inner
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    train, val = _loader(6, 0), _loader(4, 1)
    with auto.phases("main"):
        for _ in range(2):
            for x, y in train:
                _train_step(net, opt, x, y)
            with torch.no_grad():
                for x, _y in val:
                    inner(x)
    # THEN both evaluation passes are validation, each inside its epoch
    assert fake.log[-9:] == [
        ("section", "validate"), ("section_end", "validate"), ("epoch_end", 1),
        ("epoch", 2), ("train", 0), ("loop_end", 3),
        ("section", "validate"), ("section_end", "validate"), ("epoch_end", 2),
    ]
    assert [e for e in fake.log if e[0] == "section"] == [("section", "validate")] * 2
    assert fake.log[-1] == ("epoch_end", 2)
