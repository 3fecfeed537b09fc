"""Run a function once a module has been imported: how the probe patches what a workload imports
later (torch for the automatic phases, torch's DataLoader worker module for the workers' own
captures, Lightning and Accelerate for their adapters) without importing it itself; and the
wrappers it puts there, each undone."""

from __future__ import annotations

import contextlib
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


class Patches:
    """The wrappers the probe put on attributes of code it does not own (``__wrapped__`` names the
    original); :meth:`undo` restores each original, unless someone wrapped ours since."""

    def __init__(self) -> None:
        self._patched: list[tuple[Any, str, Any]] = []  # (owner, name, original)

    def wrap(self, owner: Any, name: str, wrapper: Callable[..., Any], original: Any) -> None:
        wrapper.__wrapped__ = original  # type: ignore[attr-defined]
        for attr in ("__name__", "__qualname__", "__doc__"):
            with contextlib.suppress(AttributeError, TypeError):
                setattr(wrapper, attr, getattr(original, attr))
        setattr(owner, name, wrapper)
        self._patched.append((owner, name, original))

    def undo(self) -> None:
        for owner, name, original in reversed(self._patched):
            if getattr(owner, name).__wrapped__ is original:  # nobody wrapped ours since
                setattr(owner, name, original)
        self._patched = []
