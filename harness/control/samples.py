"""The samples file: the sampler's rows in parts, bounded for long runs and safe against a kill.

Rows go into SAMPLES_DIR (layout.py) as numbered parts of about a minute each. The part being
written is a CSV, ``<N>.csv``, flushed every half second, so killing the harness loses at most
that much. When the part is a minute old it is written again as ``<N>.parquet`` (zstd, about 10
bytes a row instead of the CSV's 100) and its CSV deleted. The last :data:`FULL_RATE_PARTS` parts
stay at the full rate; older ones are decimated (:func:`keep_mask`) into one file per
:data:`GROUP_PARTS` parts, ``<N>-<M>.parquet``, and their full-rate files deleted.

Each step writes its new file under a temporary name and renames it before deleting what it
replaces, so a kill at any point leaves every row readable once at least: a reader takes a
decimated group over the parts it covers and a part's Parquet file over its CSV
(:func:`harness.analysis.load.read_samples`).

Decimation keeps whole ticks (every process's row of a kept tick), so sums over a tick (the
tree's RSS) stay true. Within each second of a part it keeps the ticks that hold

- a reading of USS/PSS (any process);
- each process's highest and lowest RSS of that second, and the tree's highest and lowest RSS;
- a new running maximum of any memory column (rss, uss, pss, swap, rss_anon, rss_file,
  rss_shmem) of any process, over the stage so far: every peak is kept exactly;
- each process's first and last row (its lifetime);
- and in the whole part, for each epoch and phase, the tick of the highest RSS of the main
  process and that of the tree: a phase's peaks stay exact (the maximum over parts of each
  part's maximum).

At 25 Hz with three processes that is about a third of the rows. What it loses is the shape
between those points, a phase's lowest and mean RSS, and the time per phase as the sampler saw
it (a kept tick stands for the dropped ones after it), which the probe's ``phase_totals`` events
give exactly.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from harness.layout import samples_part_name
from harness.records.samples import SAMPLE_COLUMNS, SAMPLE_TEXT_COLUMNS, SampleRow, arrow_schema

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.parquet as pq

PART_S = 60.0  # seconds of rows in one part
FLUSH_S = 0.5  # the CSV part is flushed at least this often: what a kill of the harness can lose
FULL_RATE_PARTS = 5  # the last parts (minutes) kept at the full rate
GROUP_PARTS = 60  # decimated parts written together into one file (an hour)
PEAK_COLUMNS = ("rss", "uss", "pss", "swap", "rss_anon", "rss_file", "rss_shmem")
ZSTD_LEVEL = 9  # 15 % smaller than the default level; a minute of rows takes ~5 ms either way


def to_table(rows: Sequence[Sequence[Any]], columns: Sequence[str] = SAMPLE_COLUMNS) -> pa.Table:
    """Rows (in ``columns`` order, None for empty) as an Arrow table of the samples' schema."""
    import pyarrow as pa

    sch = arrow_schema(columns)
    cols = list(zip(*rows)) if rows else [() for _ in columns]
    return pa.Table.from_arrays([pa.array(col, type=f.type) for col, f in zip(cols, sch)], schema=sch)


# every Parquet file of samples, full-rate part or decimated group, is written with these
PARQUET_OPTIONS: dict[str, Any] = {"compression": "zstd", "compression_level": ZSTD_LEVEL,
                                   "use_dictionary": sorted(SAMPLE_TEXT_COLUMNS), "write_statistics": False}


def _parquet_writer(path: Path, sch: pa.Schema) -> pq.ParquetWriter:
    import pyarrow.parquet as pq

    return pq.ParquetWriter(path, sch, **PARQUET_OPTIONS)


def keep_mask(table: Mapping[str, Sequence[Any]], running: dict[tuple[int, str], float]) -> list[bool]:
    """Which rows decimation keeps (module docstring); ``running`` holds each (pid, column)'s
    maximum so far and is updated, so parts must be passed in order.

    ``table`` maps each column to its values (an Arrow table's ``to_pydict()``). Rows of one tick
    share their ``t`` and are adjacent, as the sampler writes them.
    """
    t, pid, role, rss, epoch, phase = (table[c] for c in ("t", "pid", "role", "rss", "epoch", "phase"))
    n = len(t)
    if n == 0:
        return []
    peaks = [(c, table[c]) for c in PEAK_COLUMNS if c in table]
    # Ticks: runs of rows with the same t.
    tick_of = [0] * n
    starts = [0]
    for i in range(1, n):
        if t[i] != t[i - 1]:
            starts.append(i)
        tick_of[i] = len(starts) - 1
    keep_tick = [False] * len(starts)
    tree = [0] * len(starts)
    main: list[int | None] = [None] * len(starts)
    # (key) -> (value, tick): the best tick of each kind found so far
    best: dict[tuple[Any, ...], tuple[float, int]] = {}

    def note(key: tuple[Any, ...], value: float, tick: int, higher: bool) -> None:
        old = best.get(key)
        if old is None or (value > old[0] if higher else value < old[0]):
            best[key] = (value, tick)

    first: dict[int, int] = {}
    last: dict[int, int] = {}
    uss = table.get("uss")
    for i in range(n):
        k = tick_of[i]
        p = pid[i]
        r = rss[i] or 0
        tree[k] += r
        if role[i] == "main":
            main[k] = r
        first.setdefault(p, k)
        last[p] = k
        sec = int(t[i])
        note(("pmax", sec, p), r, k, True)
        note(("pmin", sec, p), r, k, False)
        if uss is not None and uss[i] is not None:
            keep_tick[k] = True
        for c, col in peaks:
            v = col[i]
            if v is None:
                continue
            if v > running.get((p, c), -1):
                running[(p, c)] = v
                keep_tick[k] = True
    for k, s in enumerate(starts):
        sec, where = int(t[s]), (epoch[s], phase[s])
        note(("tmax", sec), tree[k], k, True)
        note(("tmin", sec), tree[k], k, False)
        note(("phase tree", where), tree[k], k, True)
        m = main[k]
        if m is not None:
            note(("phase main", where), m, k, True)
    for _, k in best.values():
        keep_tick[k] = True
    for k in (*first.values(), *last.values()):
        keep_tick[k] = True
    return [keep_tick[tick_of[i]] for i in range(n)]


class SamplesWriter:
    """Writes the sampler's rows into ``directory`` (SAMPLES_DIR) as the module docstring says.

    Times come from the rows' ``t``, so tests can drive it with made-up clocks.
    """

    def __init__(self, directory: Path, *, part_s: float = PART_S, flush_s: float = FLUSH_S,
                 full_rate_parts: int = FULL_RATE_PARTS, group_parts: int = GROUP_PARTS) -> None:
        # Imported now, not at the first part's end: a missing or broken pyarrow shows when the
        # sampler starts, and the import's ~0.2 s falls there rather than amid the samples.
        import pyarrow.parquet  # noqa: F401

        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.part_s, self.flush_s = part_s, flush_s
        self.full_rate_parts, self.group_parts = full_rate_parts, group_parts
        self.rows_written = 0
        self._index = 0
        self._rows: list[SampleRow] = []
        self._fh: IO[str] | None = None
        self._csv: Any = None
        self._part_t0: float | None = None
        self._flushed_t = 0.0
        self._sealed: list[int] = []  # full-rate Parquet parts not yet decimated, oldest first
        self._running: dict[tuple[int, str], float] = {}
        self._group: pq.ParquetWriter | None = None
        self._group_parts: list[int] = []
        self._open_part()

    def _path(self, first: int, ext: str, last: int | None = None) -> Path:
        return self.dir / samples_part_name(first, ext, last)

    def _open_part(self) -> None:
        self._index += 1
        self._rows = []
        self._part_t0 = None
        self._fh = open(self._path(self._index, "csv"), "w", newline="", encoding="utf-8")
        self._csv = csv.writer(self._fh)
        self._csv.writerow(SAMPLE_COLUMNS)
        self._fh.flush()

    def write(self, rows: Sequence[SampleRow]) -> None:
        """One tick's rows; the part is flushed and rolled over when due."""
        if not rows:
            return
        t = rows[0].t
        if self._part_t0 is None:
            self._part_t0 = self._flushed_t = t
        elif t - self._part_t0 >= self.part_s:
            self._seal()
            self._open_part()
            self._part_t0 = self._flushed_t = t
        self._csv.writerows(rows)
        self._rows.extend(rows)
        self.rows_written += len(rows)
        if t - self._flushed_t >= self.flush_s:
            self.flush()
            self._flushed_t = t

    def flush(self) -> None:
        if self._fh is not None:
            self._fh.flush()

    def close(self) -> None:
        """Seal the part being written and finish a decimated group begun; the last parts stay
        at the full rate."""
        if self._fh is None:
            return
        self._seal()
        self._fh = None
        if self._group is not None:
            self._close_group()

    def __enter__(self) -> SamplesWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _seal(self) -> None:
        """The current part's CSV becomes Parquet; the oldest full-rate part beyond the last
        few is decimated."""
        import pyarrow.parquet as pq

        assert self._fh is not None
        self._fh.close()
        csv_path = self._path(self._index, "csv")
        if not self._rows:
            csv_path.unlink(missing_ok=True)
            return
        final = self._path(self._index, "parquet")
        tmp = final.with_name(f".{final.name}.tmp")
        pq.write_table(to_table(self._rows), tmp, **PARQUET_OPTIONS)
        os.replace(tmp, final)
        csv_path.unlink(missing_ok=True)
        self._rows = []
        self._sealed.append(self._index)
        while len(self._sealed) > self.full_rate_parts:
            self._decimate(self._sealed.pop(0))

    def _decimate(self, index: int) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pq.read_table(self._path(index, "parquet"))
        kept = table.filter(pa.array(keep_mask(table.to_pydict(), self._running), type=pa.bool_()))
        if self._group is None:
            self._group = _parquet_writer(self._group_tmp(index), table.schema)
        self._group.write_table(kept)
        self._group_parts.append(index)
        if len(self._group_parts) >= self.group_parts:
            self._close_group()

    def _group_tmp(self, first: int) -> Path:
        return self.dir / f".{first:06d}-open.parquet.tmp"

    def _close_group(self) -> None:
        assert self._group is not None
        self._group.close()
        self._group = None
        first, last = self._group_parts[0], self._group_parts[-1]
        # one part alone (the end of a stage) takes its own name back, decimated
        final = self._path(first, "parquet", last if last > first else None)
        os.replace(self._group_tmp(first), final)
        for i in self._group_parts:
            if self._path(i, "parquet") != final:
                self._path(i, "parquet").unlink(missing_ok=True)
        self._group_parts = []
