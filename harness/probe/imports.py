"""Run a function once a module has been imported: how the probe patches what a workload imports
later (torch for the automatic phases, torch's DataLoader worker module for the workers' own
captures, Lightning and Accelerate for their adapters) without importing it itself."""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from importlib.machinery import ModuleSpec


class AfterImport(importlib.abc.MetaPathFinder):
    """Calls ``then(module)`` once module ``name`` has been executed, the first time it is
    imported after :meth:`add`; the module itself is found and loaded by the finders below."""

    def __init__(self, name: str, then: Callable[[Any], None]) -> None:
        self.name = name
        self._then = then

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> ModuleSpec | None:
        if name != self.name:
            return None
        self.remove()  # once; and the finders below find the module itself
        spec = importlib.util.find_spec(name)
        loader = spec.loader if spec is not None else None
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        then = self._then

        def exec_module(module: Any) -> None:
            del loader.exec_module  # the loader's own again
            loader.exec_module(module)
            then(module)

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec

    def add(self) -> None:
        if self not in sys.meta_path:
            sys.meta_path.insert(0, self)

    def remove(self) -> None:
        if self in sys.meta_path:
            sys.meta_path.remove(self)
