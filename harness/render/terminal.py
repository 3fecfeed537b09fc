"""The short summary printed at the end of ``harness run`` and by ``harness report``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from harness.records.text import printable_lines
from harness.sizes import format_size


def _mib(n: Any) -> str:
    return format_size(n, unit="MiB", digits=0)


def _where(p: dict[str, Any] | None) -> str:
    if not p:
        return ""
    bits = [p.get("stage", "")]
    if p.get("epoch"):
        bits.append(f"epoch {p['epoch']}")
    if p.get("phase") and p["phase"] != "none":
        bits.append(p["phase"])
    return " (" + ", ".join(b for b in bits if b) + ")"


def _teardown(peaks: dict[str, Any]) -> str:
    """The main process's peak after stage_end, when above its running peak (the tree's too when
    it differs, i.e. workers still ran); else nothing to say."""
    main, tree = peaks.get("main_rss_teardown"), peaks.get("tree_rss_teardown")
    bits = []
    if main and main["bytes"] > ((peaks.get("main_rss") or {}).get("bytes") or 0):
        bit = f"main {_mib(main['bytes'])}, {main['after_end_s']:.1f} s after {main['stage']}'s stage_end"
        if main.get("rise") and main["rise"] > 0:
            bit += f" (+{_mib(main['rise'])}"
            if main.get("file_backed_rise") is not None:
                bit += f", {_mib(max(main['file_backed_rise'], 0))} of it file-backed"
            bit += ")"
        bits.append(bit)
    if tree and tree["bytes"] > ((peaks.get("tree_rss") or {}).get("bytes") or 0) \
            and (not main or tree["bytes"] != main["bytes"]):
        bits.append(f"tree {_mib(tree['bytes'])}")
    return ", ".join(bits)


def _heap(n: Any) -> str:
    """MiB as the other peaks, unless that would show a small capture's heap as ``0 MiB``."""
    return _mib(n) if isinstance(n, int | float) and n >= 1024 * 1024 else format_size(n)


def summary_text(summary: dict[str, Any], report_html: Path, cut_short: Mapping[str, str] | None = None) -> str:
    """A few lines: status, peaks, metrics, one line per finding, where the report is.
    ``cut_short``: captures still open when their stage stopped (name -> how it ended)."""
    run = summary["run"]
    peaks = summary["peaks"]
    lines = [f"harness: report for {run['scenario']}: status {run['status']}"
             + ("" if run["complete"] else " (INCOMPLETE)")]
    for reason in run["incomplete_reasons"]:
        lines.append(f"  incomplete: {reason}")
    lines.append(f"  peak RSS   main {_mib((peaks['main_rss'] or {}).get('bytes'))}"
                 f"{_where(peaks['main_rss'])}, tree {_mib((peaks['tree_rss'] or {}).get('bytes'))}"
                 f"{_where(peaks['tree_rss'])}")
    teardown = _teardown(peaks)
    if teardown:
        lines.append("  teardown   " + teardown)
    extra = []
    if peaks["workers_uss"]:
        extra.append(f"workers' USS {_mib(peaks['workers_uss']['bytes'])}")
    if peaks["heap"]:
        capture = peaks["heap"]["capture"]
        stopped = (cut_short or {}).get(capture)
        extra.append(f"memray heap {'≥ ' if stopped else ''}{_heap(peaks['heap']['bytes'])} ({capture}"
                     + (f", cut short: {stopped})" if stopped else ")"))
    if peaks["live_tensor_bytes"]:
        extra.append(f"live tensors {format_size(peaks['live_tensor_bytes']['bytes'])}")
    if extra:
        lines.append("  peak       " + ", ".join(extra))
    if peaks.get("cuda_allocated"):
        reserved = peaks.get("cuda_reserved") or {}
        lines.append(f"  CUDA       allocated {_mib(peaks['cuda_allocated']['bytes'])}"
                     f"{_where(peaks['cuda_allocated'])}, reserved {_mib(reserved.get('bytes'))}"
                     f"{_where(reserved or None)}")
    final = summary["metrics"]["final"]
    if final:
        lines.append("  metrics    " + ", ".join(f"{k} {v:g}" for k, v in final.items()))
    findings = summary["findings"]
    if findings:
        lines.append(f"  findings   {len(findings)}:")
        for f in findings:
            lines.append(f"    - {f['title']}")
    else:
        lines.append("  findings   none")
    lines.append(f"  report     {report_html}")
    return printable_lines("\n".join(lines))  # names, messages and paths come from the run
