"""Tensor census and per-phase allocation tracing, in-process, with known byte counts."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
import torch.nn as nn

from harness.probe.tensors import AllocationTracer, bytes_by_category, census, watched_tensors
from model.net import Net

F32 = 4
I64 = 8


def forward_bytes(batch: int) -> int:
    """Bytes the tutorial net's forward allocates, from its layer shapes."""
    conv1 = batch * 6 * 28 * 28
    pool1 = batch * 6 * 14 * 14
    conv2 = batch * 16 * 10 * 10
    pool2 = batch * 16 * 5 * 5
    lin1 = batch * 10
    return (
        conv1 * F32 * 2  # conv1 output, relu output
        + pool1 * (F32 + I64)  # max-pool values and indices (kept for backward)
        + conv2 * F32 * 2
        + pool2 * (F32 + I64)
        + lin1 * F32  # addmm output; flatten and the weight transpose are views
    )


def _step(net: Net, opt: torch.optim.Optimizer, batch: int, tracer: AllocationTracer | None = None) -> None:
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    crit = nn.CrossEntropyLoss()
    mark = tracer.set_phase if tracer else (lambda p: None)
    mark("forward")
    opt.zero_grad()
    out = net(x)
    mark("loss")
    loss = crit(out, y)
    mark("backward")
    loss.backward()
    mark("optimizer")
    opt.step()


def test_census_parameters_gradients_momentum_27528_bytes_each() -> None:
    torch.manual_seed(0)
    net = Net()
    opt = torch.optim.SGD(net.parameters(), lr=0.001, momentum=0.9)
    by_cat = bytes_by_category(watched_tensors(net, opt))
    assert by_cat == {"parameters": 27_528, "gradients": 0, "optimizer_state": 0, "other": 0}

    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    nn.CrossEntropyLoss()(net(x), y).backward()
    assert bytes_by_category(watched_tensors(net, opt))["gradients"] == 27_528  # after 1st backward

    opt.step()
    records = watched_tensors(net, opt)
    assert bytes_by_category(records)["optimizer_state"] == 27_528  # momentum after 1st step
    names = {r.name for r in records}
    assert {"conv1.weight", "conv1.weight.grad", "conv1.weight.momentum_buffer", "lin1.bias"} <= names
    assert all(r.address != 0 for r in records)


def test_census_finds_other_tensors_by_gc() -> None:
    net = Net()
    keep = torch.zeros(1000)  # 4,000 bytes nobody watches
    records = census(net, None)
    others = [r for r in records if r.category == "other" and r.address == keep.data_ptr()]
    assert len(others) == 1 and others[0].bytes == 4000


@pytest.mark.parametrize("batch", [4, 16])
def test_forward_phase_allocates_what_the_layer_shapes_say(batch: int) -> None:
    torch.manual_seed(0)
    net = Net()
    opt = torch.optim.SGD(net.parameters(), lr=0.001, momentum=0.9)
    _step(net, opt, batch)  # the first step creates momentum buffers; trace the second
    tracer = AllocationTracer()
    tracer.seed(list(net.parameters()) + [p.grad for p in net.parameters()])
    tracer.seed([s["momentum_buffer"] for s in opt.state.values()])
    with tracer:
        _step(net, opt, batch, tracer)
    stats = tracer.take()
    assert stats["forward"]["bytes"] == forward_bytes(batch)
    assert stats["forward"]["count"] == 9
    assert stats["optimizer"]["bytes"] == 0  # SGD with momentum works in place after step 1
    assert tracer.order == ["forward", "loss", "backward", "optimizer"]
    # zero_grad freed the 27,528 gradient bytes; backward made them again (with activation grads)
    assert stats["backward"]["bytes"] > 27_528
    # after the step only parameters, gradients and momentum remain live
    assert tracer.live_bytes == 3 * 27_528


def test_first_step_optimizer_allocates_the_momentum_buffers() -> None:
    net = Net()
    opt = torch.optim.SGD(net.parameters(), lr=0.001, momentum=0.9)
    tracer = AllocationTracer()
    tracer.seed(list(net.parameters()))
    with tracer:
        _step(net, opt, 4, tracer)
    stats = tracer.take()
    assert stats["optimizer"]["bytes"] == 27_528
    assert stats["optimizer"]["count"] == 6


def test_a_finished_tracer_is_not_kept_alive_by_the_storages_it_followed() -> None:
    """Parameters and momentum outlive every traced step; their finalizers must not keep each
    step's tracer alive for the rest of the run (a day-long run traces thousands of steps)."""
    net = Net()
    opt = torch.optim.SGD(net.parameters(), lr=0.001, momentum=0.9)
    _step(net, opt, 4)
    registry = len(weakref.finalize._registry)  # type: ignore[attr-defined]
    gone = []
    for _ in range(3):
        tracer = AllocationTracer()
        tracer.seed(list(net.parameters()) + [s["momentum_buffer"] for s in opt.state.values()])
        with tracer:
            _step(net, opt, 4, tracer)
        assert tracer.live_bytes >= 2 * 27_528  # parameters and momentum, counted while it ran
        gone.append(weakref.ref(tracer))
        del tracer
    gc.collect()
    assert [ref() for ref in gone] == [None, None, None]
    assert len(weakref.finalize._registry) == registry  # type: ignore[attr-defined]
