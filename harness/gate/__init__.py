"""Regression gates, comparisons and sweeps built on a run's ``report/summary.json``.

``metrics`` flattens a summary into named numbers; ``check`` holds them to budgets and baselines;
``baseline`` records baselines; ``compare`` lines two runs up; ``sweep`` runs a grid. These are
pure functions of data (the summary as a dict, tables as DataFrames). ``runs`` reads and writes
files; ``harness.gate.output`` turns results into text, HTML and plots.
"""

from __future__ import annotations
