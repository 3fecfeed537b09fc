"""The package's layout says where code runs; these tests hold it to that.

Each folder of ``harness/`` (and each top-level module) may import only the ones listed in
:data:`ALLOWED`, so the data flow reads off the folder names: ``records/`` (the run's typed records
and the words both processes use) and the top-level helpers at the bottom; ``probe/`` (the
training process) above them; ``control/`` (the harness process) above the probe it launches;
``analysis/`` beside it, reading finished runs; ``render/`` and ``report/`` above analysis;
``gate/`` and ``cli`` on top. Every import counts, module-level or inside a function, except those
under ``if TYPE_CHECKING:``.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest

import harness
from harness import layout

PACKAGE = Path(harness.__file__).resolve().parent

_BASE = {"errors", "sizes", "layout"}
# unit -> the units it may import. A unit is a folder of harness/ or a top-level module.
ALLOWED: dict[str, set[str]] = {
    "__init__": set(),
    "errors": set(),
    "sizes": set(),
    "layout": {"sizes"},
    "records": _BASE,
    "probe": _BASE | {"records"},
    "control": _BASE | {"records", "probe"},  # the harness launches the stage and reads its cell
    "analysis": _BASE | {"records"},
    "render": _BASE | {"records", "analysis"},
    "report": _BASE | {"records", "analysis", "render"},
    "gate": _BASE | {"records", "analysis", "render", "report", "control"},  # sweep and pytest run stages
    "cli": _BASE | {"__init__", "records", "control", "analysis", "render", "report", "gate"},
    "__main__": {"cli"},
}


def _unit(module: str) -> str:
    """``harness.analysis.load`` -> ``analysis``; ``harness.cli`` -> ``cli``; ``harness`` -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> set[str]:
    """The ``harness`` modules ``path`` imports, by name (``from harness import x`` counts
    ``harness.x``); imports under ``if TYPE_CHECKING:`` do not count."""
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
            if node.module == "harness":
                found.update(f"harness.{a.name}" for a in node.names)
            else:
                found.add(node.module)
    return found


def _module(path: Path, package: Path = PACKAGE) -> str:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 2:
        parts.pop()
    return ".".join(parts) if parts != ["harness", "__init__"] else "harness"


def unit_edges(package: Path = PACKAGE) -> dict[tuple[str, str], str]:
    """(from unit, to unit) -> one module that makes the edge, for every edge between units."""
    edges: dict[tuple[str, str], str] = {}
    for path in sorted(package.rglob("*.py")):
        src = _unit(_module(path, package))
        for target in _imports(path):
            dst = _unit(target)
            if dst == "__version__":
                dst = "__init__"
            if dst != src:
                edges.setdefault((src, dst), str(path.relative_to(package.parent)))
    return edges


def forbidden_edges(edges: dict[tuple[str, str], str]) -> list[str]:
    return [f"{src} -> {dst} ({where})" for (src, dst), where in sorted(edges.items())
            if dst not in ALLOWED.get(src, set())]


def unit_cycles(edges: dict[tuple[str, str], str]) -> list[list[str]]:
    graph: dict[str, set[str]] = {}
    for src, dst in edges:
        graph.setdefault(src, set()).add(dst)
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


def test_every_folder_and_top_level_module_is_named_in_the_allowed_edges() -> None:
    units = {p.stem for p in PACKAGE.glob("*.py")} | {
        p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert units == set(ALLOWED)


def test_the_allowed_edges_form_no_cycle() -> None:
    assert unit_cycles({(s, d): "" for s, ds in ALLOWED.items() for d in ds}) == []


def test_no_import_crosses_folders_except_by_an_allowed_edge() -> None:
    assert forbidden_edges(unit_edges()) == []


def test_the_folders_import_each_other_without_a_cycle() -> None:
    assert unit_cycles(unit_edges()) == []


def test_the_check_fails_on_a_tree_with_a_forbidden_edge(tmp_path: Path) -> None:
    # GIVEN a copy of the package where the probe reaches into control and analysis into probe
    # (as the tree did before harness/records/ held what both sides share)
    import shutil

    copy = tmp_path / "harness"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "probe" / "_bad.py").write_text("from harness.control import runner\n")
    (copy / "analysis" / "_bad.py").write_text("from harness.probe.steps import Steps\n")
    # WHEN the edges are read THEN both are named, with the module that makes them, and a cycle
    edges = unit_edges(copy)
    assert forbidden_edges(edges) == ["analysis -> probe (harness/analysis/_bad.py)",
                                      "probe -> control (harness/probe/_bad.py)"]
    assert ["control", "probe", "control"] in unit_cycles(edges)


def test_the_shared_records_are_light() -> None:
    # both processes import records/: no torch, numpy or pandas at import time
    for path in (PACKAGE / "records").glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        names = {a.name for n in top if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module or "" for n in top if isinstance(n, ast.ImportFrom)}
        assert not {m for m in names if m.split(".")[0] in {"torch", "numpy", "pandas"}}, path.name


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
