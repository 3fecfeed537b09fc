"""The tables as CSV files, one per table, written where the report says."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from harness.records.atomic import write_atomic


def write_tables(tables: dict[str, pd.DataFrame], directory: Path,
                 files: Mapping[str, str] | None = None) -> dict[str, Path]:
    """Write each table as ``files[name]`` (default ``<name>.csv``); returns name -> path."""
    directory.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    for name, df in tables.items():
        path = directory / (files or {}).get(name, f"{name}.csv")
        # The epoch table's metric names are its index; the others' index means nothing.
        write_atomic(path, df.to_csv(index=df.index.name is not None, float_format="%.12g"))
        out[name] = path
    return out
