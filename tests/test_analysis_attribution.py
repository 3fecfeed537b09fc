"""Which phase an allocation's stack belongs to: a table of stacks and the answers."""

from __future__ import annotations

from pathlib import Path

import pytest

import harness
from harness.analysis.attribution import describe, phase_of, short_path, site_frame, workload_frame

HARNESS = str(Path(harness.__file__).resolve().parent)  # wherever this checkout is

SP = "/venv/lib/python3.11/site-packages"
SCRIPT = ("<module>", "/work/train.py", 12)


@pytest.mark.parametrize(
    ("frames", "section", "role", "phase"),
    [
        ([("_engine_run_backward", f"{SP}/torch/autograd/graph.py", 1),
          ("backward", f"{SP}/torch/_tensor.py", 2), SCRIPT], None, "main", "backward"),
        ([("_single_tensor_sgd", f"{SP}/torch/optim/sgd.py", 1), SCRIPT], None, "main", "optimizer"),
        ([("zero_grad", f"{SP}/torch/optim/optimizer.py", 1), SCRIPT], None, "main", "forward"),
        ([("cross_entropy", f"{SP}/torch/nn/functional.py", 1),
          ("forward", f"{SP}/torch/nn/modules/loss.py", 2), SCRIPT], None, "main", "loss"),
        ([("_conv_forward", f"{SP}/torch/nn/modules/conv.py", 1), SCRIPT], None, "main", "forward"),
        ([("rebuild_storage_fd", f"{SP}/torch/multiprocessing/reductions.py", 1),
          ("__next__", f"{SP}/torch/utils/data/dataloader.py", 2), SCRIPT], None, "main", "data"),
        ([("take", f"{HARNESS}/snapshot.py", 1)], None, "main", "harness"),
        ([("anything", f"{SP}/PIL/Image.py", 1)], None, "worker", "data"),
        ([("_conv_forward", f"{SP}/torch/nn/modules/conv.py", 1)], "validate", "main", "validate"),
        ([("f", "/work/x.py", 1)], "test", "worker", "test"),
        ([], None, "main", "other"),
    ],
)
def test_phase_of(frames, section, role, phase) -> None:  # type: ignore[no-untyped-def]
    assert phase_of(frames, section=section, role=role) == phase


def test_phase_from_the_workload_line(tmp_path) -> None:  # type: ignore[no-untyped-def]
    script = tmp_path / "loop.py"
    script.write_text("x = 1\nloss.backward()\nopt.step()\n", encoding="utf-8")
    native = [("<native>", "<unknown>", 0)]
    assert phase_of(native + [("<module>", str(script), 2)], section=None, role="main") == "backward"
    assert phase_of(native + [("<module>", str(script), 3)], section=None, role="main") == "optimizer"
    assert phase_of(native + [("<module>", str(script), 1)], section=None, role="main") == "other"


def test_site_skips_dispatch_glue_and_workload_frame_skips_libraries() -> None:
    frames = [("__call__", f"{SP}/torch/_ops.py", 1),
              ("__torch_dispatch__", f"{HARNESS}/tensors.py", 2),
              ("_conv_forward", f"{SP}/torch/nn/modules/conv.py", 3),
              ("_call_impl", f"{SP}/torch/nn/modules/module.py", 4), SCRIPT]
    assert describe(site_frame(frames)) == "_conv_forward (torch/nn/modules/conv.py:3)"
    assert workload_frame(frames) == SCRIPT
    assert short_path(f"{SP}/torch/nn/functional.py") == "torch/nn/functional.py"
