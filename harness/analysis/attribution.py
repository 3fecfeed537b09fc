"""Which phase an allocation belongs to, read from its Python stack.

memray records where memory was allocated, not when, so a site's phase comes from the frames that
lead to it: frames under ``torch/autograd`` (what ``loss.backward()`` runs) belong to backward,
``torch/optim`` to optimizer, ``torch/nn/modules/loss.py`` to loss, other ``torch/nn/modules`` to
forward, ``torch/utils/data`` to data. A stack that names none of those falls back to the text of
the workload's own line (``.backward(``, ``.step(``, ...). Pure functions, no I/O but linecache.
"""

from __future__ import annotations

import linecache
import sysconfig
from collections.abc import Sequence
from pathlib import Path

Frame = tuple[str, str, int]  # (function, file, line), as memray's stack_trace() gives them

_HARNESS_DIR = str(Path(__file__).resolve().parent.parent) + "/"
_LIBRARY_DIRS = tuple(
    sorted({str(Path(p)) + "/" for key in ("stdlib", "platstdlib", "purelib", "platlib")
            if (p := sysconfig.get_paths().get(key))}, key=len, reverse=True)
)

# Library markers, checked innermost frame first: the first frame that matches decides.
_LIBRARY_RULES: tuple[tuple[str, str], ...] = (
    ("/torch/autograd/", "backward"),
    # Lightning runs training_step inside optimizer.step(closure): its closure is the forward
    ("/lightning/pytorch/loops/optimization/", "forward"),
    ("/pytorch_lightning/loops/optimization/", "forward"),
    ("/torch/optim/", "optimizer"),
    ("/torch/nn/modules/loss.py", "loss"),
    ("/torch/utils/data/", "data"),
    ("/torch/multiprocessing/", "data"),
    ("/torch/nn/modules/", "forward"),
)
# The workload's own line, checked outermost first when no library frame decided.
_LINE_RULES: tuple[tuple[str, str], ...] = (
    (".backward(", "backward"),
    ("zero_grad(", "forward"),
    (".step(", "optimizer"),
    ("criterion(", "loss"),
)


def is_library(path: str) -> bool:
    """Installed packages, the standard library, interpreter internals."""
    if path.startswith("<") or "/site-packages/" in path or "/dist-packages/" in path:
        return True
    return path.startswith(_LIBRARY_DIRS)


def is_harness(path: str) -> bool:
    return path.startswith(_HARNESS_DIR)


def is_workload(path: str) -> bool:
    """The code being measured: anything that is neither a library nor the harness itself."""
    return not is_library(path) and not is_harness(path)


# Dispatch glue that sits innermost on most torch stacks and says nothing about the caller.
_GLUE = ("/torch/_ops.py", "/torch/nn/modules/module.py", "/torch/utils/_python_dispatch.py",
         "/torch/_tensor.py", "/torch/overrides.py", "/torch/_dynamo/eval_frame.py",
         "/torch/_compile.py", "/torch/_jit_internal.py")


def site_frame(frames: Sequence[Frame]) -> Frame | None:
    """The innermost frame that is not dispatch glue or the harness's tensor tracer."""
    for frame in frames:
        path = frame[1]
        if path.endswith(_GLUE) or (is_harness(path) and frame[0] == "__torch_dispatch__"):
            continue
        return frame
    return frames[0] if frames else None


def workload_frame(frames: Sequence[Frame]) -> Frame | None:
    """The innermost frame in the workload's own code: the line a person would edit."""
    for frame in frames:
        if is_workload(frame[1]):
            return frame
    return None


def source_line(frame: Frame) -> str:
    return linecache.getline(frame[1], frame[2]).strip()


def phase_of(frames: Sequence[Frame], *, section: str | None, role: str) -> str:
    """The phase of an allocation with these frames (innermost first).

    ``section`` is the capture's section (``validate``/``test``): everything in such a window
    belongs to it. A worker outside a section only loads data.
    """
    if section:
        return section
    if role == "worker":
        return "data"
    for func, path, _line in frames:
        if func == "zero_grad":
            return "forward"  # the probe counts zero_grad in forward
        if is_harness(path) and path.endswith(("snapshot.py", "tensors.py")) and func != "__torch_dispatch__":
            return "harness"  # the instrument's own snapshots
        for marker, phase in _LIBRARY_RULES:
            if marker in path:
                return phase
    for frame in reversed(frames):
        if not is_workload(frame[1]):
            continue
        text = source_line(frame)
        for marker, phase in _LINE_RULES:
            if marker in text:
                return phase
    return "other"


def short_path(path: str) -> str:
    """A library path from its package down (``torch/nn/functional.py``); others unchanged."""
    for marker in ("/site-packages/", "/dist-packages/"):
        if marker in path:
            return path.split(marker, 1)[1]
    for lib in _LIBRARY_DIRS:
        if path.startswith(lib):
            return path[len(lib):]
    if path.startswith(_HARNESS_DIR):
        return "harness/" + path[len(_HARNESS_DIR):]
    return path


def describe(frame: Frame | None) -> str:
    """``function (file:line)``, the way the tables name a frame."""
    if frame is None:
        return ""
    func, path, line = frame
    return f"{func} ({short_path(path)}:{line})"
