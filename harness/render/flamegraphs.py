"""memray flamegraphs, one per captured process group (main; the workers merged), with Python frames.

``memray flamegraph CAPTURE`` resolves every native frame of a native-traced capture, which
costs seconds per capture of a libtorch process (about 9 s for a 1.4 MB capture on a 2-core
machine) and would alone break the report's time budget. memray's own reporter is fed here the
records the analysis already read, with Python frames only, so each capture is read once and
the HTML is memray's. :func:`write_with_cli` runs the memray CLI instead (native frames too,
slow: ``build_report(..., native_flamegraphs=True)``).

memray's scripts (plotly, d3, ...) are 4.5 MB: inlined in every file they would eat the run
directory's size budget, fetched from a CDN they fail offline. They are copied once next to the
flamegraphs and each HTML points at that copy.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.analysis.captures import MAX_FRAMES
from harness.records.atomic import write_atomic

MAX_HTML_BYTES = 20 * 1000 * 1000  # every flamegraph must open in a browser
ASSETS_DIR = "assets"  # next to the flamegraphs: the scripts they share, copied once
_CDN = re.compile(r'https://cdn\.jsdelivr\.net/npm/[^"\s]+/([A-Za-z0-9_.-]+\.(?:js|css))')
# A temporal flamegraph's HTML grows with the capture; past this input size do not try one.
TEMPORAL_MAX_CAPTURE_BYTES = 4 * 1000 * 1000
# memray's reporter walks every frame of every record in Python: a capture full of imports (tens
# of thousands of distinct, 100-frame-deep stacks) takes a minute. Past these, draw the largest.
MAX_RECORDS = 5000  # records in a peak flamegraph (the smallest beyond are left out, and said)
KEEP_BYTES_SHARE = 0.995  # ... once the kept ones hold this share of the peak's bytes
TEMPORAL_MAX_RECORDS = 5000  # peak records past which a temporal flamegraph is declined


@dataclass(frozen=True)
class Flamegraph:
    """A flamegraph written (``path``) or declined (``path`` None, ``note`` says why)."""

    capture: str
    group: str  # main | workers
    temporal: bool
    path: Path | None
    bytes: int
    note: str = ""


class FullStack:
    """A memray record whose ``stack_trace()`` keeps the frames above where tracking started.

    memray trims those on the main thread; for a window opened inside the probe they are the
    workload's own loop, the frames a reader most wants to see.
    """

    __slots__ = ("_record",)

    def __init__(self, record: Any) -> None:
        self._record = record

    def stack_trace(self, max_stacks: int | None = None) -> Any:
        return self._record.stack_trace(MAX_FRAMES if max_stacks is None else max_stacks)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._record, name)


def _vendor_dir() -> Path:
    import memray.reporters

    return Path(memray.reporters.__file__).resolve().parent / "templates" / "assets" / "vendor"


def copy_assets(directory: Path) -> int:
    """Copy memray's vendored scripts (plotly, d3, ...) once into ``directory/assets``.

    memray either inlines them into every HTML (4.5 MB each) or loads them from a CDN (no
    good offline); the flamegraphs here load them from this shared copy instead.
    """
    dest = directory / ASSETS_DIR
    dest.mkdir(parents=True, exist_ok=True)
    total = 0
    for src in _vendor_dir().iterdir():
        if src.suffix in (".js", ".css"):
            write_atomic(dest / src.name, src.read_bytes())
            total += src.stat().st_size
    return total


def localize(page: str, vendor: set[str]) -> str:
    """Point memray's CDN links at the shared local copies (those it has; others stay)."""
    def local(m: re.Match[str]) -> str:
        return f"{ASSETS_DIR}/{m.group(1)}" if m.group(1) in vendor else m.group(0)

    return _CDN.sub(local, page)


def _render(reporter: Any, metadata: Any, out: Path) -> None:
    buf = io.StringIO()
    reporter.render(outfile=buf, metadata=metadata, show_memory_leaks=False, merge_threads=True,
                    inverted=False, no_web=False)
    vendor = {p.name for p in _vendor_dir().iterdir()}
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, localize(buf.getvalue(), vendor))


def _check_size(path: Path, capture: str, group: str, temporal: bool) -> Flamegraph:
    size = path.stat().st_size
    if size > MAX_HTML_BYTES:
        path.unlink()
        return Flamegraph(capture, group, temporal, None, 0,
                          f"declined: {size / 1e6:.0f} MB is over the {MAX_HTML_BYTES / 1e6:.0f} MB limit")
    return Flamegraph(capture, group, temporal, path, size)


def largest(records: Sequence[Any]) -> tuple[list[Any], str]:
    """The records worth drawing: the largest, up to MAX_RECORDS or KEEP_BYTES_SHARE of the bytes."""
    if len(records) <= MAX_RECORDS:
        return list(records), ""
    ordered = sorted(records, key=lambda r: r.size, reverse=True)
    total = sum(r.size for r in ordered) or 1
    kept: list[Any] = []
    acc = 0
    for r in ordered:
        if len(kept) >= MAX_RECORDS or acc >= KEEP_BYTES_SHARE * total:
            break
        kept.append(r)
        acc += r.size
    left = len(ordered) - len(kept)
    return kept, (f"the {left:,} smallest of {len(ordered):,} allocation sites "
                  f"({100 * (total - acc) / total:.1f} % of the peak's bytes) left out")


def write_peak(records: Sequence[Any], memray_samples: Sequence[Any], metadata: Any,
               out: Path, *, capture: str, group: str) -> Flamegraph:
    """The peak-memory flamegraph of ``records`` (memray AllocationRecords, one or more files)."""
    from memray.reporters.flamegraph import FlameGraphReporter

    kept, note = largest(records)
    reporter = FlameGraphReporter.from_snapshot(
        # FullStack stands in for an AllocationRecord: it only changes stack_trace()
        [FullStack(r) for r in kept],  # type: ignore[misc]
        memory_records=memray_samples, native_traces=False,
        merge_threads=True, inverted=False,
    )
    _render(reporter, metadata, out)
    result = _check_size(out, capture, group, temporal=False)
    return result if result.path is None or not note else Flamegraph(
        capture, group, False, result.path, result.bytes, note)


def write_temporal(reader: Any, capture_path: Path, metadata: Any, memray_samples: Sequence[Any],
                   out: Path, *, capture: str, group: str, peak_records: int = 0) -> Flamegraph:
    """The temporal flamegraph of one capture, when the capture is small enough to allow it."""
    if peak_records > TEMPORAL_MAX_RECORDS:
        return Flamegraph(capture, group, True, None, 0,
                          f"declined: {peak_records:,} distinct allocation sites at the peak (over "
                          f"{TEMPORAL_MAX_RECORDS:,}) would take memray minutes to draw over time")
    size = capture_path.stat().st_size
    if size > TEMPORAL_MAX_CAPTURE_BYTES:
        return Flamegraph(capture, group, True, None, 0,
                          f"declined: the capture ({size / 1e6:.1f} MB) is over "
                          f"{TEMPORAL_MAX_CAPTURE_BYTES / 1e6:.0f} MB, its temporal HTML would "
                          "grow past what a browser opens")
    from memray.reporters.flamegraph import FlameGraphReporter

    records, hwms = reader.get_temporal_high_water_mark_allocation_records(merge_threads=True)
    # Not wrapped in FullStack: memray's temporal reporter insists on its own record type, so
    # these stacks start where the capture opened.
    reporter = FlameGraphReporter.from_temporal_snapshot(
        records, memory_records=memray_samples, native_traces=False,
        high_water_mark_by_snapshot=hwms, inverted=False,
    )
    _render(reporter, metadata, out)
    return _check_size(out, capture, group, temporal=True)


def write_with_cli(capture_path: Path, out: Path, *, capture: str, group: str,
                   temporal: bool = False, timeout_s: float = 300.0) -> Flamegraph:
    """``python -m memray flamegraph`` on one capture file: native frames included, slow."""
    cmd = [sys.executable, "-m", "memray", "flamegraph", "--no-web", "-f", "-o", str(out)]
    if temporal:
        cmd.append("--temporal")
    cmd.append(str(capture_path))
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False,
                              env={**os.environ, "PYTHONWARNINGS": "ignore"})
    except subprocess.TimeoutExpired:
        return Flamegraph(capture, group, temporal, None, 0,
                          f"memray flamegraph ran past {timeout_s:.0f} s")
    if proc.returncode != 0 or not out.exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return Flamegraph(capture, group, temporal, None, 0, f"memray flamegraph failed: {tail[0]}")
    return _check_size(out, capture, group, temporal)
