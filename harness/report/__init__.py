"""Building a report from a finished run directory: plan the capture reads, run them, render."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from harness.report.build import ReportResult, build_report

__all__ = ["ReportResult", "build_report"]


def __getattr__(name: str) -> Any:
    # Imported on first use: the capture-reading processes import harness.report.pool, and with
    # it this package, and need none of what build imports (tables, findings, pages, plots).
    if name in __all__:
        from harness.report import build

        return getattr(build, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
