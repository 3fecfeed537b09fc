"""Analysis: pure functions of a run directory's files (pandas in, DataFrames and dataclasses out).

``load_run`` reads the files; ``tables``, ``findings`` and ``summary`` compute from what it read;
``captures`` reads memray captures. Nothing here draws or writes: that is ``harness.render``.
"""

from __future__ import annotations

from harness.analysis.load import Capture, Run, Stage, load_run

__all__ = ["Capture", "Run", "Stage", "load_run"]
