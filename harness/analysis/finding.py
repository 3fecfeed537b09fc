"""The Finding: one plain-language diagnosis with the numbers behind it (detectors in findings.py
and, for CUDA, device.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from harness.sizes import format_size


@dataclass(frozen=True)
class Finding:
    """One diagnosis: a kind, a one-line title, a paragraph, and the figures behind it."""

    kind: str  # leak | copy_on_read | rss_heap_gap | peak_phase | cuda_* (analysis/device.py)
    title: str
    text: str
    numbers: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "title": self.title, "text": self.text, "numbers": self.numbers}


def mib(n: float) -> str:
    """Bytes as the findings' texts write them: ``1,234.5 MiB``."""
    return format_size(n, unit="MiB")
