"""The Finding (one plain-language diagnosis with the numbers behind it) and the registry of the
detectors that make them.

A detector registers itself where it is written, with :func:`finding`: its kind, severity, the
anchor in docs/ that explains it, and what it looks at (its scope)::

    @finding("leak", severity="warning", doc="reports.md#leak", title="...", order=10)
    def leak(run: Run, captures: list[CaptureData]) -> Finding | None: ...

The report runs every registered detector (:func:`harness.analysis.ranks.all_findings`), the
page takes each finding's severity and doc link from here, and summary.json's schema has no list
of kinds to extend, so a new kind touches its detector, its test and its doc.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from harness.sizes import format_size

Severity = Literal["warning", "info"]
# What a detector looks at, which is also the order of the report's findings: what sets the ranks
# apart (once per run), then each rank's host memory (a plain run is one rank), then each rank's
# device memory.
Scope = Literal["ranks", "process", "device"]
SCOPES: tuple[Scope, ...] = ("ranks", "process", "device")
# The arguments a detector may take, by parameter name: run (the rank's Run, or the whole run for
# "ranks"), tk (its ticks), captures (its memray captures, read), device_table (its device table),
# device_total (the device's memory), phases (every rank's phase table, with a rank column).
ARGUMENTS: dict[Scope, frozenset[str]] = {
    "ranks": frozenset({"run", "phases", "captures", "device_total"}),
    "process": frozenset({"run", "tk", "captures", "device_table", "device_total"}),
    "device": frozenset({"run", "device_table", "device_total"}),
}


@dataclass(frozen=True)
class Finding:
    """One diagnosis: a kind, a one-line title, a paragraph, and the figures behind it."""

    kind: str  # a registered kind: DETECTORS
    title: str
    text: str
    numbers: dict[str, Any] = field(default_factory=dict)

    @property
    def severity(self) -> Severity:
        return DETECTORS[self.kind].severity

    @property
    def doc(self) -> str:
        """Where docs/ explains it: ``reports.md#leak``."""
        return DETECTORS[self.kind].doc

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "title": self.title, "text": self.text, "numbers": self.numbers}


@dataclass(frozen=True)
class Detector:
    """One registered detector: what it finds, how serious, where docs/ explains it."""

    kind: str
    severity: Severity
    doc: str  # in docs/: "reports.md#leak"
    title: str  # the kind in a few words, for lists of kinds
    scope: Scope
    order: int  # its place among its scope's detectors in the report (lower first)
    detect: Callable[..., Finding | None]
    reads: tuple[str, ...]  # its parameters, each one of ARGUMENTS[scope]

    def __call__(self, arguments: dict[str, Any]) -> Finding | None:
        return self.detect(**{name: arguments[name] for name in self.reads})


DETECTORS: dict[str, Detector] = {}

D = TypeVar("D", bound=Callable[..., "Finding | None"])


def finding(kind: str, *, severity: Severity, doc: str, title: str, scope: Scope = "process",
            order: int = 100) -> Callable[[D], D]:
    """Register the decorated function as the detector of ``kind`` (returned unchanged).

    Its parameters are given by name from :data:`ARGUMENTS` of its scope (one the scope does not
    offer keeps its default); it returns a :class:`Finding` of ``kind`` or None. A kind registered twice,
    or a parameter the scope does not offer, is an error at import.
    """

    def register(fn: D) -> D:
        if kind in DETECTORS:
            raise ValueError(f"finding kind {kind!r} is registered twice "
                             f"({DETECTORS[kind].detect.__qualname__}, {fn.__qualname__})")
        if not re.fullmatch(r"[\w-]+\.md#[\w-]+", doc):
            raise ValueError(f"finding {kind!r}: doc {doc!r} is not FILE.md#ANCHOR (in docs/)")
        params = inspect.signature(fn).parameters.values()
        reads = tuple(p.name for p in params if p.name in ARGUMENTS[scope])
        unknown = [p.name for p in params
                   if p.name not in ARGUMENTS[scope] and p.default is inspect.Parameter.empty]
        if unknown:
            raise TypeError(f"finding {kind!r}: {fn.__qualname__} takes {', '.join(unknown)}, "
                            f"which a {scope} detector is not given ({', '.join(sorted(ARGUMENTS[scope]))})")
        DETECTORS[kind] = Detector(kind, severity, doc, title, scope, order, fn, reads)
        return fn

    return register


def detectors(scope: Scope) -> list[Detector]:
    """The registered detectors of ``scope`` in report order (equal orders: as registered)."""
    return sorted((d for d in DETECTORS.values() if d.scope == scope), key=lambda d: d.order)


def mib(n: float) -> str:
    """Bytes as the findings' texts write them: ``1,234.5 MiB``."""
    return format_size(n, unit="MiB")
