"""What `harness run` prints while stages run: the workload's output and one progress line."""

from __future__ import annotations

import threading
import time
from typing import TextIO

from harness.control.sampler import TreeTotals
from harness.records.text import printable
from harness.sizes import format_size


class Console:
    """Child output and progress lines; one live status line on a terminal, plain lines otherwise."""

    def __init__(self, stream: TextIO, quiet: bool = False) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.quiet = quiet
        self._lock = threading.Lock()
        self._status = ""
        self._last_plain = float("-inf")  # the first status line always prints

    def line(self, text: str) -> None:
        """One line of the harness's own: untrusted parts (names, paths) are shown escaped."""
        self.output(printable(text))

    def output(self, text: str) -> None:
        """One line of the workload's own output, echoed as it is."""
        if self.quiet:
            return
        with self._lock:
            if self.tty and self._status:
                self.stream.write("\r\x1b[2K")
            self.stream.write(text + "\n")
            if self.tty and self._status:
                self.stream.write(self._status)
            self.stream.flush()

    def status(self, text: str, every_s: float = 15.0) -> None:
        if self.quiet:
            return
        if self.tty:
            text = printable(text)  # the phase is the workload's word
            with self._lock:
                self._status = text
                self.stream.write("\r\x1b[2K" + text)
                self.stream.flush()
        elif time.monotonic() - self._last_plain >= every_s:
            self._last_plain = time.monotonic()
            self.line(text)

    def end_status(self) -> None:
        if self.tty and self._status and not self.quiet:
            with self._lock:
                self.stream.write("\r\x1b[2K")
                self.stream.flush()
        self._status = ""


def _fmt_elapsed(s: float) -> str:
    m, sec = divmod(int(s), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def progress_text(stage: str, totals: TreeTotals, elapsed: float) -> str:
    parts = [f"{stage:<6}"]
    c = totals.cell
    if c is not None:
        if c.epoch:
            parts.append(f"epoch {c.epoch}")
        total = f"/{c.total}" if c.total > 0 else ""
        parts.append(f"step {c.step}{total}")
        parts.append(f"{c.phase:<9}")
    now, peak = (format_size(n, unit="MiB", digits=0) for n in (totals.tree_rss, totals.peak_tree_rss))
    parts.append(f"RSS {now} (peak {peak})")
    parts.append(_fmt_elapsed(elapsed))
    return "  ".join(parts)
