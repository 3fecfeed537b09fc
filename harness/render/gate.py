"""The gate's results drawn: check tables as text, the comparison as text and as an HTML page, the sweep.

``harness.gate`` computes (check, compare, sweep); this module only lays the results out. The HTML
page goes through the one Jinja environment (:func:`harness.render.html.environment`), which
escapes every string that came from a run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.gate import metrics as m
from harness.gate.compare import delta, ratio
from harness.gate.sweep import ALLOCATION_COLUMNS, ROLE_COLUMNS
from harness.render.html import environment
from harness.sizes import format_percent, format_size

if TYPE_CHECKING:
    from matplotlib.lines import Line2D

    from harness.gate.check import CheckResult
    from harness.gate.compare import Comparison, Unit
    from harness.gate.sweep import SweepResult

COMPARE_TEMPLATE = "compare.html.j2"
SITE_HEADER = ("stage", "capture", "process", "phase", "site", "workload line", "A", "B", "Δ")


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool] | None = None) -> str:
    """A plain aligned table; ``right`` says which columns align right (numbers)."""
    right = list(right) if right is not None else [False] * len(header)
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if r else c.ljust(w)
                         for c, w, r in zip(cells, widths, right)).rstrip()

    out = [line(header), line(["-" * w for w in widths])]
    out += [line(r) for r in rows]
    return "\n".join(out)


def check_text(result: CheckResult, title: str) -> str:
    """The check's table and verdict, as ``harness check`` prints it and a failing test shows it."""
    header = ["result", "check", "metric", "phase", "limit", "reference", "measured", "margin"]
    rows = []
    for r in result.rows:
        phase, key = m.split_name(r.metric)
        margin = ("-" if r.margin is None
                  else f"{format_size(r.margin, signed=True)} ({format_percent(r.margin_fraction, signed=True)})")
        measured = format_size(r.measured) if r.measured is not None else "not measured"
        rows.append([r.status, r.source, key, phase or "all", format_size(r.limit), r.reference,
                     measured, margin])
    lines = [title]
    if rows:
        lines.append(text_table(header, rows, [False, False, False, False, True, False, True, True]))
    for p in result.problems:
        lines.append(f"FAIL: {p}")
    failed = result.failures
    if result.ok:
        skipped = sum(r.status == "skipped" for r in result.rows)
        lines.append(f"harness: check passed: {len(result.rows) - skipped} limit(s) hold"
                     + (f", {skipped} baseline figure(s) not in this run" if skipped else ""))
    else:
        names = ", ".join(f"{m.split_name(r.metric)[1]}"
                          + (f" [{m.split_name(r.metric)[0]}]" if m.split_name(r.metric)[0] else "")
                          for r in failed)
        lines.append(f"harness: check FAILED: {len(failed)} of {len(result.rows)} limit(s)"
                     + (f": {names}" if names else "")
                     + ("" if not result.problems else f"; {'; '.join(result.problems)}"))
    return "\n".join(lines)


def _fmt(v: float | None, unit: Unit, signed: bool = False) -> str:
    """One figure in its unit; bytes through :func:`format_size`, the one byte formatter."""
    if v is None:
        return "-"
    if unit == "bytes":
        return format_size(v, signed=signed)
    if unit == "seconds":
        return f"{v:+.1f} s" if signed else f"{v:.1f} s"
    return f"{v:+.0f}" if signed else f"{v:.0f}"


def _run_title(run: dict[str, Any]) -> str:
    return f"{run.get('scenario', '')} {Path(str(run.get('dir', ''))).name} ({run.get('status', '?')})"


def compare_text(c: Comparison) -> str:
    """Each section as a table whose cells read ``A → B (Δ)``."""
    lines = [f"A: {_run_title(c.a)}", f"B: {_run_title(c.b)}"]
    lines += [f"note: {n}" for n in c.notes]
    for sec in c.sections:
        header = sec.keys + [col.label for col in sec.columns]
        rows = []
        for keys, pairs in sec.rows:
            cells = list(keys)
            for col, pair in zip(sec.columns, pairs):
                a, b = pair
                d, r = delta(pair), ratio(pair)
                change = "" if d is None else (
                    f" ({_fmt(d, col.unit, signed=True)}"
                    + (f", {format_percent(r, signed=True)})" if r is not None and d else ")"))
                cells.append(f"{_fmt(a, col.unit)} → {_fmt(b, col.unit)}{change}")
            rows.append(cells)
        lines += ["", f"{sec.title}:", text_table(header, rows)]
    lines += ["", "Allocation sites that grew most (bytes live at the capture's peak, memray):"]
    if c.sites:
        rows = [[s.stage, s.capture, s.process, s.phase, s.site, s.workload_line,
                 format_size(s.a), format_size(s.b), format_size(s.delta, signed=True)]
                for s in c.sites]
        lines.append(text_table(list(SITE_HEADER), rows, [False] * 6 + [True] * 3))
    else:
        lines.append("  none grew")
    return "\n".join(lines)


@dataclass
class RunHead:
    dir: str
    title: str


@dataclass
class CompareCell:
    """One metric of one row: A, B, the change and its share, as text; ``cls`` colours the change."""

    a: str
    b: str
    delta: str
    percent: str
    cls: str


@dataclass
class CompareRow:
    keys: list[str]
    cells: list[CompareCell]


@dataclass
class CompareSection:
    title: str
    keys: list[str]
    labels: list[str]
    rows: list[CompareRow]


@dataclass
class SiteRow:
    keys: list[str]  # stage, capture, process, phase, site, workload line
    a: str
    b: str
    delta: str


@dataclass
class ComparePage:
    """Everything compare.html shows, already formatted; the template only places and escapes it."""

    a: RunHead
    b: RunHead
    notes: list[str]
    sections: list[CompareSection]
    sites: list[SiteRow]
    site_header: Sequence[str] = SITE_HEADER


def compare_page(c: Comparison) -> ComparePage:
    """The comparison's figures as the text the page shows."""
    sections = []
    for sec in c.sections:
        rows = []
        for keys, pairs in sec.rows:
            cells = []
            for col, pair in zip(sec.columns, pairs):
                d, r = delta(pair), ratio(pair)
                cls = "n" + (" up" if d and d > 0 else " down" if d and d < 0 else "")
                cells.append(CompareCell(_fmt(pair[0], col.unit), _fmt(pair[1], col.unit),
                                         _fmt(d, col.unit, signed=True), format_percent(r, signed=True), cls))
            rows.append(CompareRow([str(k) for k in keys], cells))
        sections.append(CompareSection(sec.title, list(sec.keys), [col.label for col in sec.columns], rows))
    sites = [SiteRow([s.stage, s.capture, s.process, s.phase, s.site, s.workload_line],
                     format_size(s.a), format_size(s.b), format_size(s.delta, signed=True))
             for s in c.sites]
    return ComparePage(RunHead(str(c.a.get("dir", "")), _run_title(c.a)),
                       RunHead(str(c.b.get("dir", "")), _run_title(c.b)),
                       list(c.notes), sections, sites)


def compare_html(c: Comparison) -> str:
    """A self-contained page; every string that came from a run is escaped (by the environment)."""
    return environment().get_template(COMPARE_TEMPLATE).render(page=compare_page(c))


def _x_positions(values: list[Any]) -> tuple[list[float], list[str], bool]:
    """Numbers stay numbers (log-2 axis when they span 8x or more); anything else is a category."""
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        nums = [float(v) for v in values]
        log = min(nums) > 0 and max(nums) / min(nums) >= 8
        return nums, [str(v) for v in values], log
    cats = list(dict.fromkeys(str(v) for v in values))
    return [float(cats.index(str(v))) for v in values], [str(v) for v in values], False


def sweep_plot(result: SweepResult, out: Path, title: str) -> Path:
    """One column per knob: peak memory by process role (top), allocations in a step (bottom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    df = result.table
    knobs = [k.key for k in result.knobs]
    fig, axes = plt.subplots(2, len(knobs), figsize=(6.5 * len(knobs), 8), squeeze=False)
    # colour: what is measured; line style and marker: the other knobs' values
    styles: list[tuple[Any, str]] = [("-", "o"), ("--", "s"), (":", "^"), ("-.", "D"), ((0, (5, 1, 1, 1)), "v")]
    for col, knob in enumerate(knobs):
        others = [k for k in knobs if k != knob]
        groups = list(df.groupby(others, sort=False)) if others else [((), df)]
        for row_i, metrics in enumerate((ROLE_COLUMNS, ALLOCATION_COLUMNS)):
            ax = axes[row_i][col]
            shown: list[Line2D] = []
            for gi, (_gkey, gdf) in enumerate(groups):
                style, marker = styles[gi % len(styles)]
                gdf = gdf.sort_values(knob, key=lambda s: s.map(lambda v: (str(type(v)), v)))
                xs, labels, log = _x_positions(list(gdf[knob]))
                for ci, (name, label_text) in enumerate(metrics):
                    ys = pd_float(gdf[name]) / (1024 * 1024)
                    if ys.isna().all():
                        continue
                    ax.plot(xs, ys, linestyle=style, marker=marker, color=f"C{ci}")
                    if gi == 0 or not any(h.get_label() == label_text for h in shown):
                        shown.append(Line2D([], [], color=f"C{ci}", marker="o", label=label_text))
                if log:
                    ax.set_xscale("log", base=2)
                ax.set_xticks(xs, labels)
            if len(groups) > 1:
                for gi, (gkey, _) in enumerate(groups):
                    gkey = gkey if isinstance(gkey, tuple) else (gkey,)
                    style, marker = styles[gi % len(styles)]
                    shown.append(Line2D([], [], color="black", linestyle=style, marker=marker,
                                        label=", ".join(f"{k}={v}" for k, v in zip(others, gkey))))
            ax.set_xlabel(knob)
            ax.set_ylabel("MiB")
            ax.set_title("peak memory by process role" if row_i == 0
                         else "allocations (traced steps; memray windows)")
            ax.grid(True, alpha=0.3)
            if shown:
                ax.legend(handles=shown, fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def pd_float(series: Any) -> Any:
    import pandas as pd

    return pd.to_numeric(series, errors="coerce").astype(float)


def sweep_text(result: SweepResult) -> str:
    """The sweep's table with sizes for people."""
    keys = [k.key for k in result.knobs]
    cols = [c for c, _ in ROLE_COLUMNS + ALLOCATION_COLUMNS]
    rows = [[str(r[k]) for k in keys] + [str(r["status"])]
            + [format_size(None if r[c] is None or r[c] != r[c] else float(r[c])) for c in cols]
            for r in result.table.to_dict("records")]
    return text_table(keys + ["status"] + cols, rows, [False] * (len(keys) + 1) + [True] * len(cols))
