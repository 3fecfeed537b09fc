"""The sampler's rows (``samples/``): the columns, their types and the row type, defined once.

:class:`SampleRow` IS the column list: :data:`SAMPLE_COLUMNS` is its fields in order, the text
columns are those typed ``str``, the CSV header and the Parquet schema are built from it. Adding a
column is one edit here (at the end: an older file lacks it, and readers fill it in empty). The
sampler (:mod:`harness.control.sampler`) builds one :class:`SampleRow` a process a tick, by
keyword, so a missing or misnamed field fails where it is made (and under mypy); no validation
runs on that path, 25 times a second. :mod:`harness.control.samples` writes the rows,
:func:`harness.analysis.load.read_samples` reads them into a DataFrame of these columns and
:func:`harness.analysis.load.sample_rows` back into rows. docs/run-directory.md describes each
column (tests/test_run_directory_doc.py holds the two together).
"""

from __future__ import annotations

import types
import typing
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    import pyarrow as pa


class SampleRow(NamedTuple):
    """One process at one sampler tick; None where not read (the file's empty field)."""

    t: float  # wall clock, seconds since the epoch
    pid: int
    ppid: int
    role: str  # main, worker N, forkserver, child; agent, rank R, rank R worker N
    rss: int  # bytes, every tick from /proc/<pid>/status
    vms: int | None
    shared: int | None
    text: int | None
    data: int | None
    uss: int | None  # bytes, from smaps_rollup: one process a tick in rotation
    pss: int | None
    swap: int | None
    stage: str
    epoch: int | None  # epoch, step and phase: the probe cell at the tick
    step: int | None
    phase: str | None
    cuda_allocated: int | None  # CUDA only, on the main process's rows
    cuda_reserved: int | None
    rss_anon: int | None  # every tick; empty in older run directories
    rss_file: int | None
    rss_shmem: int | None
    rank: int | None  # distributed: the global rank a process belongs to (a worker: its rank's)


def _kind(annotation: object) -> type:
    """``str``, ``float`` or ``int``: what a column holds, None aside."""
    args = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    [kind] = [a for a in args if a is not type(None)]
    assert isinstance(kind, type)
    return kind


COLUMN_TYPES: dict[str, type] = {c: _kind(t) for c, t in typing.get_type_hints(SampleRow).items()}
SAMPLE_COLUMNS: tuple[str, ...] = SampleRow._fields
# Text columns; every other is a number: ``t`` seconds, the rest integers (bytes, counts).
SAMPLE_TEXT_COLUMNS = frozenset(c for c, k in COLUMN_TYPES.items() if k is str)


def arrow_schema(columns: Sequence[str] = SAMPLE_COLUMNS) -> pa.Schema:
    """The Parquet parts' schema: text as string, ``t`` as float64, every other column int64."""
    import pyarrow as pa

    kinds = {str: pa.string(), float: pa.float64(), int: pa.int64()}
    return pa.schema([(c, kinds[COLUMN_TYPES[c]]) for c in columns])
