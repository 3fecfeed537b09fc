"""Untrusted text made safe to print on a terminal.

A workload's exception message, a phase or metric name it chose, a path or a name read back from a
run directory may hold escape sequences (``\\x1b[31m``, ``\\x1b]0;title\\x07``) that recolour the
terminal, retitle its window or hide the lines before them, and bytes that are not UTF-8 (held by
Python as lone surrogates, which ``print`` cannot encode at all). Every line the harness prints
itself passes its untrusted parts through :func:`printable`; the workload's own output, echoed as
its output, is not the harness's line and is left as it is.
"""

from __future__ import annotations

import re

# C0 controls (tab and newline included: one value is one line), DEL, C1 controls, the
# bidirectional overrides and isolates that reorder what a reader sees ("Trojan source"), the line
# and paragraph separators, and lone surrogates (bytes that were not UTF-8, kept by surrogateescape).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2028\u2029\u2066-\u2069"
                     "\ud800-\udfff]")


def _escape(m: re.Match[str]) -> str:
    c = ord(m.group(0))
    if 0xDC80 <= c <= 0xDCFF:  # a byte that was not UTF-8, shown as that byte
        return f"\\x{c - 0xDC00:02x}"
    return f"\\x{c:02x}" if c <= 0xFF else f"\\u{c:04x}"


def printable(value: object) -> str:
    """``str(value)`` with every control character, bidi override and undecodable byte written
    as its escape (``\\x1b``, ``\\u202e``, ``\\xff``): one line that changes nothing on a terminal."""
    return _UNSAFE.sub(_escape, str(value))


def printable_lines(text: str) -> str:
    """:func:`printable` for each line of a text the harness composed of several lines."""
    return "\n".join(printable(line) for line in text.split("\n"))
