"""Building a report from a finished run directory: plan the capture reads, run them, render."""

from harness.report.build import ReportResult, build_report

__all__ = ["ReportResult", "build_report"]
