"""harness: memory analysis for PyTorch training, tied to training phases."""

from __future__ import annotations

__version__ = "0.1.0"
