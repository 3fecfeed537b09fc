"""report.html: one self-contained file (inline CSS, the timeline as a base64 PNG, no scripts).

Every string reaches the page through Jinja2 with autoescaping on, so text from the scenario, the
workload or a stack frame (``<script>`` in a function name, say) is shown, never run.
"""

from __future__ import annotations

import base64
import functools
import json
import math
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import jinja2
import pandas as pd

from harness.analysis.finding import Finding
from harness.records.composition import PART_KEYS
from harness.render.account import AccountView
from harness.sizes import KiB, MiB, format_size

TEMPLATE = "report.html.j2"


@dataclass
class HtmlTable:
    """A table ready for the template: a title, a CSV link, header cells, rows of cell text."""

    name: str
    title: str
    note: str
    csv: str
    header: list[str]
    rows: list[list[str]]
    numeric: list[bool]
    truncated: int = 0


@dataclass
class Link:
    label: str
    href: str
    note: str = ""


@dataclass
class ReportPage:
    """Everything report.html shows, already computed."""

    title: str
    summary: dict[str, Any]
    findings: list[Finding]  # each with its severity and doc anchor (harness.analysis.finding)
    timeline_png: bytes | None
    timeline_svg: str | None  # relative link
    tables: list[HtmlTable]
    flamegraphs: list[Link]
    provenance: list[tuple[str, str]]
    scenario_text: str
    problems: list[str] = field(default_factory=list)
    cuda: dict[str, Any] | None = None  # summary.json's ``cuda`` (CUDA runs)
    cuda_history: list[Link] = field(default_factory=list)  # the allocator-history pickles
    account: AccountView | None = None  # what each process's RSS is made of (composition.jsonl)


def fmt_bytes(v: Any) -> str:
    """Bytes in the unit that keeps them readable: MiB, KiB, or bytes."""
    if v is None or (isinstance(v, float) and math.isnan(v)) or pd.isna(v):
        return ""
    n = float(v)
    unit = "MiB" if abs(n) >= MiB else "KiB" if abs(n) >= KiB else "B"
    return format_size(n, unit=unit, digits=0 if unit == "B" else 1)


def fmt_number(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)) or pd.isna(v):
        return ""
    if isinstance(v, float) and not v.is_integer():
        return f"{v:,.3g}" if abs(v) < 100 else f"{v:,.0f}"
    return f"{int(v):,}"


def _formatter(column: str) -> Any:
    if column == "time_share":
        return lambda v: "" if pd.isna(v) else f"{100 * float(v):.1f} %"
    if column.endswith(("_s", "seconds")) or column in ("start_s", "end_s"):
        return lambda v: "" if pd.isna(v) else f"{float(v):,.2f}"
    if column in ("tensor_allocations_per_step",):
        return fmt_number
    if column in PART_KEYS or any(k in column for k in (
            "rss", "uss", "pss", "swap", "bytes", "allocated", "reserved", "inactive_split",
            "footprint")):
        return fmt_bytes
    return lambda v: "" if v is None or (not isinstance(v, str) and pd.isna(v)) else (
        fmt_number(v) if isinstance(v, (int, float)) else str(v))


def html_table(name: str, title: str, note: str, df: pd.DataFrame, csv: str,
               max_rows: int = 200, index: bool = False) -> HtmlTable:
    """Format a DataFrame's cells as text (bytes in MiB, shares in %); escaping is the template's."""
    d = df.reset_index() if index else df
    # CUDA columns are empty on the CPU: leave them out of the page (the CSV keeps them).
    d = d[[c for c in d.columns if not (str(c).startswith("cuda_") and d[c].isna().all())]]
    shown = d.head(max_rows)
    cols = [str(c) for c in shown.columns]
    if index and name == "epochs":
        # Rows are metrics: format each row by its metric's name.
        rows = []
        for rec in shown.itertuples(index=False):
            metric = str(rec[0])
            f = _formatter(metric)
            rows.append([metric] + [f(v) for v in rec[1:]])
        numeric = [False] + [True] * (len(cols) - 1)
    else:
        fmts = [_formatter(c) for c in cols]
        rows = [[f(v) for f, v in zip(fmts, rec)] for rec in shown.itertuples(index=False)]
        numeric = [pd.api.types.is_numeric_dtype(shown[c]) for c in shown.columns]
    return HtmlTable(name, title, note, csv, cols, rows, numeric, max(len(d) - max_rows, 0))


def href(path: str) -> str:
    """A relative link, percent-encoded (Jinja2 still escapes it for the attribute)."""
    return quote(path, safe="/")


@functools.cache
def environment() -> jinja2.Environment:
    """The one page engine: every HTML page the harness writes is a template in render/templates."""
    env = jinja2.Environment(loader=jinja2.PackageLoader("harness.render", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters["mib"] = fmt_bytes
    env.filters["num"] = fmt_number
    return env


def render(page: ReportPage) -> str:
    template = environment().get_template(TEMPLATE)
    png = base64.b64encode(page.timeline_png).decode("ascii") if page.timeline_png else None
    return template.render(page=page, png=png,
                           summary_json=json.dumps(page.summary["peaks"], indent=1, default=str))
