"""The report's tables, each declared once: its name, CSV file, builder and section on the page.

:func:`harness.report.build.build_report` builds, writes and shows them in this order. Every
builder joins the run's views (:func:`harness.analysis.ranks.views`: one per rank, a plain run
one view of rank None), so a table has its ``rank`` column exactly when the run has ranks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd

from harness.analysis import account, ranks
from harness.analysis.captures import CaptureData
from harness.analysis.load import Run


@dataclass(frozen=True)
class Inputs:
    """What a table is built from: the run, its views and, once read, its memray captures."""

    run: Run
    views: list[ranks.RankView]
    captures: list[CaptureData] = field(default_factory=list)


@dataclass(frozen=True)
class Table:
    """One table of the report: ``tables/<csv>`` and a section of report.html."""

    name: str  # the key in ReportResult.tables and the page's anchor, #table-<name>
    csv: str  # its file under report/tables/
    title: str  # the section's heading on the page
    note: str  # what its columns mean, under the heading
    build: Callable[[Inputs], pd.DataFrame]
    reads_captures: bool = False  # built once the memray captures are read
    when_empty: bool = True  # False: left out of the report (CSV and page) when it has no rows
    index: bool = False  # the frame's index is a column (the epoch table's metric names)


TABLES: tuple[Table, ...] = (
    Table("phases", "phases.csv", "By stage, epoch and phase",
          "Time as the sampler saw it (each tick counts until the next). RSS of the main "
          "process and of the whole tree; workers' USS summed on full ticks; tensor figures "
          "from the traced steps. Epoch 0: before the first epoch, or a stage without epochs.",
          lambda i: ranks.phase_table(i.run, i.views)),
    Table("cuda", "cuda.csv", "Device memory by stage, epoch and phase (CUDA)",
          "From the probe's device steps (every cuda.sample_every-th training step and every "
          "traced one): each phase's own peak (the allocator's peak counter reset when the "
          "phase began), allocated/reserved/inactive-split at the phase's end on the last "
          "device step, and the allocator's running counts of retries and OOMs. A validation "
          "or test section is one reading.",
          lambda i: ranks.device_table(i.run, i.views), when_empty=False),
    Table("epochs", "epochs.csv", "Epoch-boundary snapshots side by side",
          "Each snapshot as a column; a Δ column is the change from the previous snapshot of "
          "the same stage.",
          lambda i: ranks.epoch_table(i.views), index=True),
    Table("account", "account.csv", "The account: what each process's RSS is made of",
          "One row per process per moment (start: before the first step; each epoch; near the "
          "peak; the end), its parts in bytes, adding up to its RSS; unexplained is the "
          "remainder. The tree row counts shared pages once: the main process whole, every "
          "other process's private pages (USS), given to its anonymous parts first.",
          lambda i: account.account_table(i.run), when_empty=False),
    Table("processes", "processes.csv", "By process",
          "Every process the sampler saw; USS is the process's private memory, PSS its "
          "share of the pages it shares (so workers' copies show apart from the parent).",
          lambda i: ranks.process_table(i.run, i.views)),
    Table("sites", "sites.csv", "Top allocation sites (memray)",
          "Per capture and process group (workers merged): bytes live at the capture's peak, "
          "and bytes allocated in the window and still live when it closed (leaked). Phase "
          "from the stack; workload_line is the innermost line in the workload's own code.",
          lambda i: ranks.sites_table(i.run, i.views, i.captures), reads_captures=True),
)


def build(inputs: Inputs, *, reads_captures: bool) -> dict[str, pd.DataFrame]:
    """The tables that read the captures (or those that do not), by name, in report order."""
    return {t.name: t.build(inputs) for t in TABLES if t.reads_captures == reads_captures}


def shown(built: dict[str, pd.DataFrame]) -> list[tuple[Table, pd.DataFrame]]:
    """The tables the report writes and shows, in order: each built one, unless empty and
    ``when_empty`` is False."""
    return [(t, built[t.name]) for t in TABLES
            if t.name in built and (t.when_empty or not built[t.name].empty)]
