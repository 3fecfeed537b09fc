"""The package's layout says where code runs; these tests hold it to that.

* ``harness/control/`` runs in the harness process, ``harness/probe/`` in the training process,
  ``analysis/``, ``report/``, ``render/`` and ``gate/`` read finished run directories.
* No import cycle inside ``harness/``: every import, module-level or inside a function, counts.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest

import harness
from harness import layout

PACKAGE = Path(harness.__file__).resolve().parent
TOP_LEVEL_MODULES = {"__init__", "__main__", "cli", "errors", "sizes", "layout"}
FOLDERS = {"control", "probe", "analysis", "report", "render", "gate"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The harness modules ``path`` imports (``from harness.x import y`` counts ``harness.x.y`` when
    that is a module, else ``harness.x``); imports under ``if TYPE_CHECKING:`` do not count."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for b in node.body for n in ast.walk(b))
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("harness"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("harness"):
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                found.add(sub if sub in modules else node.module)
    return {m for m in found if m in modules}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, modules) - {name} for name, path in modules.items()}


def test_top_level_holds_at_most_six_modules_besides_the_folders() -> None:
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    folders = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert modules == TOP_LEVEL_MODULES
    assert folders == FOLDERS


def test_no_import_cycle_inside_harness() -> None:
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    # a package's __init__ importing its own submodules is how a package shows its face
    real = [c for c in cycles if not all(m == c[0] or m.startswith(c[0] + ".") for m in c)]
    assert real == []


def test_the_training_process_needs_nothing_from_the_reporting_side() -> None:
    graph = _graph()
    for name, deps in graph.items():
        if name.startswith("harness.probe"):
            bad = {d for d in deps if d.startswith(("harness.report", "harness.render", "harness.gate"))}
            assert not bad, f"{name} imports {bad}"


# What the harness process hands the training process: the shared cell and the probe's settings.
SHARED_WITH_THE_TRAINING_SIDE = {"harness.probe.cell", "harness.probe.config"}


def test_the_harness_process_reaches_into_the_training_side_only_for_what_they_share() -> None:
    graph = _graph()
    for name, deps in graph.items():
        if name.startswith("harness.control"):
            bad = {d for d in deps if d.startswith("harness.probe")} - SHARED_WITH_THE_TRAINING_SIDE
            assert not bad, f"{name} imports {bad}"


def test_the_shared_modules_are_light() -> None:
    # the harness process imports them: no torch, no numpy, no pandas at import time
    graph = _graph()
    for name in SHARED_WITH_THE_TRAINING_SIDE:
        text = (PACKAGE.parent / (name.replace(".", "/") + ".py")).read_text(encoding="utf-8")
        tree = ast.parse(text)
        top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        names = {a.name for n in top if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module or "" for n in top if isinstance(n, ast.ImportFrom)}
        assert not {m for m in names if m.split(".")[0] in {"torch", "numpy", "pandas"}}, name
        assert all(d.startswith(("harness.control", "harness.layout", "harness.errors", "harness.sizes"))
                   or d in SHARED_WITH_THE_TRAINING_SIDE for d in graph[name]), name


@pytest.mark.parametrize(
    ("args", "name", "epoch", "section"),
    [
        (("train",), "train", None, None),  # memray.mode: full
        (("train", 2, "train"), "train-e2-train", 2, None),
        (("train", 0, "train"), "train-e0-train", 0, None),  # a loop outside probe.epoch()
        (("train", 1, "validate"), "train-e1-validate", 1, "validate"),
        (("test", 0, "test"), "test-test", None, "test"),
        (("my-stage", 3, "test"), "my-stage-e3-test", 3, "test"),  # a stage name with a dash
    ],
)
def test_capture_names_are_built_and_read_back_in_one_place(
    args: tuple[Any, ...], name: str, epoch: int | None, section: str | None,
) -> None:
    assert layout.capture_name(*args) == name
    parsed = layout.parse_capture_name(args[0], name)
    assert (parsed.epoch, parsed.section) == (epoch, section)


def test_a_test_capture_is_a_test_section_not_validation() -> None:
    # report/plan.py once labelled every "-test" capture "validate"
    assert layout.parse_capture_name("test", "test-test").section == "test"


@pytest.mark.parametrize(
    ("filename", "parsed"),
    [("train-e1-train.bin", ("train-e1-train", None)), ("train-e1-train.bin.4242", ("train-e1-train", 4242)),
     ("notes.txt", None), ("x.bin.tmp", None)],
)
def test_capture_files(filename: str, parsed: tuple[str, int | None] | None) -> None:
    assert layout.parse_capture_file(filename) == parsed
