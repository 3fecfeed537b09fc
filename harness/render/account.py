"""The account drawn: one colour per part (the same on every page), and a stacked bar per process
per moment, as data for the template (``report.html.j2``'s account section draws them as SVG)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from harness.analysis import account
from harness.records.composition import PART_KEYS, PARTS
from harness.sizes import MiB

# One colour per part, keyed by the record's part names (PARTS): file-backed pages in blues,
# tensors in reds and oranges, the interpreter's and libraries' heap in greens, what no one
# uses (malloc's free memory) in yellow, unexplained in grey.
COLOURS: dict[str, str] = {
    "file_torch": "#1f4e9c",
    "file_cuda": "#3a78c9",
    "file_python": "#7fa9e0",
    "file_data": "#b9d2f2",
    "tensor_parameters": "#b2182b",
    "tensor_gradients": "#e4572e",
    "tensor_optimizer_state": "#f08a24",
    "tensor_other": "#f6c05c",
    "python_objects": "#2e8b57",
    "native_heap": "#7cc68d",
    "malloc_free": "#f2e35c",
    "stacks": "#8c6bb1",
    "instrument": "#c994c7",
    "shared_memory": "#3fb8af",
    "unexplained": "#b0b0b0",
}
assert tuple(COLOURS) == PART_KEYS, "one colour per part, in PARTS' order"


@dataclass(frozen=True)
class Segment:
    key: str
    label: str
    bytes: int
    x: float  # percent of the widest bar
    width: float
    colour: str


@dataclass(frozen=True)
class Bar:
    label: str
    total: int  # bytes: the process's RSS, or the tree's account
    segments: list[Segment]


@dataclass
class AccountView:
    """The report's account section: the legend, the start moment's breakdown, the bars."""

    legend: list[tuple[str, str]]  # (words, colour), in PARTS' order
    start_title: str = ""
    # (what, bytes, its parts in words) before the first step
    start: list[tuple[str, int, str]] = field(default_factory=list)
    start_total: int = 0
    bars: list[Bar] = field(default_factory=list)


def _bar(label: str, parts: dict[str, float], scale: float) -> Bar:
    segments, x = [], 0.0
    for key in PART_KEYS:
        n = int(round(parts.get(key, 0)))
        if n <= 0:  # unexplained may be negative (two sources overlapping): the table shows it
            continue
        w = 100.0 * n / scale
        segments.append(Segment(key, account.PART_LABELS[key], n, round(x, 3), round(w, 3), COLOURS[key]))
        x += w
    return Bar(label, int(round(sum(parts.values()))), segments)


def view(table: pd.DataFrame) -> AccountView | None:
    """The section from the account table (:func:`harness.analysis.account.account_table`);
    None when the run recorded no composition."""
    if table.empty:
        return None
    out = AccountView(legend=[(label, COLOURS[key]) for key, _, label in PARTS])
    rows = list(table.to_dict("records"))
    scale = max(max(sum(max(float(r[k]), 0.0) for k in PART_KEYS) for r in rows), 1.0)
    for r in rows:
        where = f"{r['stage']}" + (f" rank {r['rank']}" if pd.notna(r.get("rank", None)) else "")
        out.bars.append(_bar(f"{where} · {r['moment']} · {r['role']}",
                             {k: float(r[k]) for k in PART_KEYS}, scale))
    first = next((r for r in rows if r["when"] == "start" and r["role"] != account.TREE_ROLE), None)
    if first is not None:
        parts = {k: int(first[k]) for k in PART_KEYS}
        out.start = [(what, sum(parts[k] for k in keys),
                      ", ".join(f"{account.PART_LABELS[k]} {parts[k] / MiB:,.1f} MiB" for k in keys)
                      if len(keys) > 1 else "")
                     for what, keys in account.START_GROUPS]
        out.start_total = int(first["rss"])
        out.start_title = f"stage {first['stage']}, {first['role']} process (pid {int(first['pid'])})"
    return out
