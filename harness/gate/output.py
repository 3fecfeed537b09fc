"""The gate's results drawn: check tables as text, the comparison as text and as an HTML page, the sweep.

``harness.gate`` computes (check, compare, sweep; which change is beyond noise); this module only
lays the results out. Text is at most :data:`WIDTH` columns unless asked ``wide``: a table drops
columns (named under it), never cuts a value. Colour marks failures and changes beyond the noise
floor only, and only where the caller says the stream is a terminal (:func:`use_color`). The HTML
page goes through the one Jinja environment (:func:`harness.render.html.environment`), which
escapes every string that came from a run.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from harness.gate import metrics as m
from harness.gate.compare import SECONDS_RELATIVE, delta, ratio
from harness.gate.sweep import ALLOCATION_COLUMNS, ROLE_COLUMNS
from harness.records.atomic import write_atomic
from harness.records.text import printable
from harness.render.html import environment
from harness.sizes import MiB, format_percent, format_size

if TYPE_CHECKING:
    from matplotlib.lines import Line2D

    from harness.gate.check import CheckResult, Row
    from harness.gate.compare import Change, Column, Comparison, Pair, Section, SiteDelta, Unit
    from harness.gate.fit import FitResult, Line
    from harness.gate.sweep import SweepResult

COMPARE_TEMPLATE = "compare.html.j2"
SITE_HEADER = ("stage", "capture", "process", "phase", "site", "workload line", "A", "B", "Δ")
WIDTH = 100  # columns of the default text: a CI log, an 80-to-100-column terminal, a pytest failure
# ANSI select-graphic-rendition codes
RED, GREEN, BOLD_RED = "31", "32", "1;31"
# Narrow text shows a section's metrics in this order, as many as fit; the rest need --wide.
_NARROW_ORDER = ("footprint_max", "main_rss_max", "peak_live_tensor_bytes", "cuda_peak_allocated", "growth",
                 "peak_rss", "peak_uss", "tree_rss_max", "workers_uss_max", "cuda_peak_reserved",
                 "seconds", "processes", "peak_pss")
_HEX_DIGEST = re.compile(r"^([0-9a-f]{12})[0-9a-f]{28,}(-dirty)?$")  # a git revision, a sha256
# Shown when the runs' versions are the same (all of them are compared).
_KEY_VERSIONS = ("python", "torch", "memray", "harness")


def use_color(stream: TextIO) -> bool:
    """Colour only on a terminal, and never when ``NO_COLOR`` is set (https://no-color.org)."""
    isatty = getattr(stream, "isatty", None)
    return bool(isatty is not None and isatty()) and not os.environ.get("NO_COLOR")


def _paint(text: str, code: str | None, color: bool) -> str:
    return f"\x1b[{code}m{text}\x1b[0m" if color and code and text else text


def _table_lines(header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool] | None = None,
                 *, codes: Sequence[Sequence[str | None]] | None = None, color: bool = False,
                 groups: Sequence[tuple[str, int, int]] = ()) -> list[str]:
    """:func:`text_table` as lines: the group line (if any), header, rule, then one line per row.

    Every cell is shown :func:`printable` (names and paths come from the runs), then coloured."""
    header = [printable(h) for h in header]
    rows = [[printable(c) for c in r] for r in rows]
    groups = [(printable(label), first, n) for label, first, n in groups]
    right = list(right) if right is not None else [False] * len(header)
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]
    for label, first, n in groups:  # a label wider than its columns widens the last of them
        span = sum(widths[first:first + n]) + 2 * (n - 1)
        widths[first + n - 1] += max(0, len(label) - span)

    def line(cells: Sequence[str], cell_codes: Sequence[str | None] | None = None) -> str:
        out = []
        for i, (c, w, r) in enumerate(zip(cells, widths, right)):
            pad = " " * (w - len(c))
            shown = _paint(c, cell_codes[i] if cell_codes else None, color)
            out.append(pad + shown if r else shown + pad)
        return "  ".join(out).rstrip()

    out = []
    if groups:
        top = ""
        for label, first, n in groups:
            start = sum(widths[:first]) + 2 * first
            span = sum(widths[first:first + n]) + 2 * (n - 1)
            top = top.ljust(start) + label.center(span).rstrip()
        out.append(top)
    out += [line(header), line(["-" * w for w in widths])]
    out += [line(r, codes[i] if codes else None) for i, r in enumerate(rows)]
    return out


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool] | None = None,
               *, codes: Sequence[Sequence[str | None]] | None = None, color: bool = False,
               groups: Sequence[tuple[str, int, int]] = ()) -> str:
    """A plain aligned table; ``right`` says which columns align right (numbers), ``codes`` which
    cells to colour (ANSI codes, used when ``color``), ``groups`` the labels of a line above the
    header, each (label, first column, number of columns) centred over its columns."""
    return "\n".join(_table_lines(header, rows, right, codes=codes, color=color, groups=groups))


def _width(lines: Sequence[str]) -> int:
    return max((len(_strip(line)) for line in lines), default=0)


def _strip(text: str) -> str:
    """Without colour codes: what the reader sees, for measuring."""
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def wrap_pieces(prefix: str, pieces: Sequence[str], width: int = WIDTH, indent: int = 2) -> list[str]:
    """``prefix`` then the pieces, space-separated, lines broken between pieces only: a piece (a
    value with its punctuation) is never split, so one longer than the line stands alone."""
    lines = [prefix]
    for piece in pieces:
        if _strip(lines[-1]).strip() and len(_strip(lines[-1])) + 1 + len(_strip(piece)) > width:
            lines.append(" " * indent + piece)
        else:
            lines[-1] = f"{lines[-1]} {piece}" if lines[-1] else piece
    return lines


def wrap_items(prefix: str, items: Sequence[str], width: int = WIDTH, sep: str = ",",
               indent: int = 2) -> list[str]:
    """:func:`wrap_pieces` of a list: ``sep`` after every item but the last."""
    return wrap_pieces(prefix, [it + sep for it in items[:-1]] + list(items[-1:]), width, indent)


# ---- harness check -----------------------------------------------------------------------


def _margin(r: Row, percent: bool) -> str:
    if r.margin is None:
        return "-"
    size = format_size(r.margin, signed=True)
    return f"{size} ({format_percent(r.margin_fraction, signed=True)})" if percent else size


def _verdict(result: CheckResult, color: bool, width: int) -> list[str]:
    if result.ok:
        skipped = sum(r.status == "skipped" for r in result.rows)
        return [f"harness: check {_paint('passed', GREEN, color)}: {len(result.rows) - skipped} limit(s) hold"
                + (f", {skipped} baseline figure(s) not in this run" if skipped else "")]
    failed = result.failures
    names = [printable(f"{key} [{phase}]" if phase else key)
             for phase, key in (m.split_name(r.metric) for r in failed)]
    head = f"harness: check {_paint('FAILED', BOLD_RED, color)}: {len(failed)} of {len(result.rows)} limit(s)"
    items = [n + "," for n in names[:-1]] + [n + (";" if result.problems else "") for n in names[-1:]]
    problems = [printable(p) for p in result.problems]
    items += [p + ";" for p in problems[:-1]] + problems[-1:]
    return wrap_pieces(head + (":" if items else ""), items, width)


def check_text(result: CheckResult, title: str, *, wide: bool = False, color: bool = False,
               width: int = WIDTH) -> str:
    """The check as ``harness check`` prints it and a failing test shows it: the run's own problems
    and the failed limits first, then those that hold, then the verdict.

    Narrow (the default) fits ``width`` columns: result, which check, metric, phase, measured,
    limit and margin; ``wide`` adds the baseline's mean, spread and run count.
    """
    rows = result.rows_failures_first
    lines = [printable(line) for line in title.splitlines()]
    lines += [_paint(f"FAIL: {printable(p)}", BOLD_RED, color) for p in result.problems]

    def cells(r: Row, percent: bool) -> list[str]:
        phase, key = m.split_name(r.metric)
        measured = format_size(r.measured) if r.measured is not None else "not measured"
        base = [r.status, r.source, key, phase or "all"]
        if wide:
            return base + [format_size(r.limit), r.reference, measured, _margin(r, True)]
        return base + [measured, format_size(r.limit), _margin(r, percent)]

    if wide:
        header = ["result", "check", "metric", "phase", "limit", "reference", "measured", "margin"]
        right = [False, False, False, False, True, False, True, True]
    else:
        header = ["result", "check", "metric", "phase", "measured", "limit", "margin"]
        right = [False, False, False, False, True, True, True]
    codes = [[BOLD_RED if r.status in ("FAIL", "missing") else None] + [None] * (len(header) - 2)
             + [RED if r.status == "FAIL" else None] for r in rows]
    if rows:
        # the margin's share is the first thing to go where the table would not fit
        percent = wide or _width(_table_lines(header, [cells(r, True) for r in rows], right)) <= width
        table = _table_lines(header, [cells(r, percent) for r in rows], right, codes=codes, color=color)
        lines += table[:2]
        said = ""
        for r, line in zip(rows, table[2:]):
            lines.append(line)
            # what the limit was made of, under the failure (once for a run of the same limit)
            if r.status == "FAIL" and r.basis and r.basis != said:
                lines += wrap_pieces(" " * 5, printable(r.basis).split(" "), width, 6)
                said = r.basis
    lines += _verdict(result, color, width)
    return "\n".join(lines)


# ---- harness compare ---------------------------------------------------------------------


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
    return printable(f"{run.get('scenario', '')} {Path(str(run.get('dir', ''))).name} "
                     f"({run.get('status', '?')})")


def _direction(beyond: bool, d: float | None) -> str:
    """``up`` or ``down`` for a change beyond the noise floor, ``flat`` within it, ``""`` for none."""
    if d is None:
        return ""
    if not beyond:
        return "flat"
    return "up" if d > 0 else "down"


_CODES = {"up": RED, "down": GREEN}


def _code(col: Column, pair: Pair) -> str | None:
    """Red for more, green for less, nothing within the metric's noise floor."""
    return _CODES.get(_direction(col.beyond_noise(pair), delta(pair)))


def _share(col: Column, pair: Pair) -> str:
    """The change as a share of A; a count's, or one from zero, as a number."""
    d, r = delta(pair), ratio(pair)
    if d is None:
        return ""
    if col.unit == "count" or r is None:
        return _fmt(d, col.unit, signed=True)
    return format_percent(r, signed=True)


def _short(value: str) -> str:
    """A git revision or sha256 as its first 12 digits (``-dirty`` kept); anything else as it is."""
    match = _HEX_DIGEST.match(value)
    return match.group(1) + (match.group(2) or "") if match else value


def _change_text(ch: Change) -> str:
    return printable(f"{ch.key} {_short(ch.a)} → {_short(ch.b)}")


def _same_versions(c: Comparison) -> list[str]:
    return [printable(f"{k} {_short(v)}") for k, v in c.versions.items()
            if (k in _KEY_VERSIONS or "git" in k) and v != "null"]


def _fold(text: str, room: int) -> list[str]:
    """``text`` in pieces of at most ``room`` columns, broken between words where it can be and
    inside a word (a path, a digest) only where one word is longer than ``room``."""
    pieces: list[str] = []
    for word in text.split(" "):
        while len(word) > room:
            pieces.append(word[:room])
            word = word[room:]
        if pieces and len(pieces[-1]) + 1 + len(word) <= room:
            pieces[-1] += " " + word
        else:
            pieces.append(word)
    return pieces


def _folded_items(prefix: str, items: Sequence[str], width: int, sep: str, indent: int) -> list[str]:
    """:func:`wrap_items`, with an item wider than a line (a script's argument list) folded onto
    lines of its own, so that no line passes ``width``."""
    room = width - indent
    pieces: list[str] = []
    for i, item in enumerate(items):
        text = item + (sep if i < len(items) - 1 else "")
        pieces += [text] if len(text) <= room else _fold(text, room)
    return wrap_pieces(prefix, pieces, width, indent)


def provenance_lines(c: Comparison, width: int = WIDTH) -> list[str]:
    """What differs between the two runs' scenarios and versions, said before any figure."""
    if c.scenario_changes is None and not c.versions and not c.version_changes:
        return []  # compared without manifests
    if c.scenario_changes is None:
        lines = ["scenario: not recorded in both runs' manifests"]
    elif not c.scenario_changes:
        lines = ["scenario: the same"]
    else:
        lines = _folded_items("scenario:", [_change_text(ch) for ch in c.scenario_changes], width, ";", 10)
    if c.version_changes:
        lines += _folded_items("versions:", [_change_text(ch) for ch in c.version_changes], width, ";", 10)
    elif c.versions:
        lines += _folded_items("versions: the same:", _same_versions(c), width, ",", 10)
    return lines


def _run_section(sec: Section, color: bool) -> list[str]:
    """The run-wide figures one metric a line: metric, A, B, Δ, Δ%."""
    header = ["metric", "A", "B", "Δ", "Δ%"]
    pairs = sec.rows[0][1] if sec.rows else [(None, None)] * len(sec.columns)
    rows = [[col.label, _fmt(p[0], col.unit), _fmt(p[1], col.unit), _fmt(delta(p), col.unit, signed=True),
             format_percent(ratio(p), signed=True)] for col, p in zip(sec.columns, pairs)]
    codes = [[None, None, None, _code(col, p), _code(col, p)] for col, p in zip(sec.columns, pairs)]
    return _table_lines(header, rows, [False] + [True] * 4, codes=codes, color=color)


def _rank(col: Column) -> int:
    return _NARROW_ORDER.index(col.name) if col.name in _NARROW_ORDER else len(_NARROW_ORDER)


def _grouped(sec: Section, chosen: Sequence[int], color: bool) -> list[str]:
    """Key columns, then A, B and Δ% under each chosen metric's label."""
    cols = [sec.columns[i] for i in chosen]
    header = list(sec.keys)
    groups = []
    for col in cols:
        groups.append((col.label, len(header), 3))
        header += ["A", "B", "Δ" if col.unit == "count" else "Δ%"]
    rows, codes = [], []
    for keys, pairs in sec.rows:
        row: list[str] = list(keys)
        code: list[str | None] = [None] * len(keys)
        for i, col in zip(chosen, cols):
            p = pairs[i]
            row += [_fmt(p[0], col.unit), _fmt(p[1], col.unit), _share(col, p)]
            code += [None, None, _code(col, p)]
        rows.append(row)
        codes.append(code)
    right = [False] * len(sec.keys) + [True] * (3 * len(cols))
    return _table_lines(header, rows, right, codes=codes, color=color, groups=groups)


def _narrow_section(sec: Section, color: bool, width: int) -> list[str]:
    """As many of the section's metrics as fit ``width``, most telling first; the others named."""
    if sec.keys == ["run"]:
        return _run_section(sec, color)
    chosen: list[int] = []
    for i in sorted(range(len(sec.columns)), key=lambda i: _rank(sec.columns[i])):
        if not chosen or _width(_grouped(sec, [*chosen, i], False)) <= width:
            chosen.append(i)
    lines = _grouped(sec, chosen, color)
    left = [col.label for i, col in enumerate(sec.columns) if i not in chosen]
    if left:
        lines += wrap_items("  --wide adds:", left, width, ",", 4)
    return lines


def _wide_section(sec: Section, color: bool) -> list[str]:
    """Each metric one column of ``A → B (Δ, Δ%)`` cells."""
    header = sec.keys + [col.label for col in sec.columns]
    rows, codes = [], []
    for keys, pairs in sec.rows:
        cells = list(keys)
        code: list[str | None] = [None] * len(keys)
        for col, pair in zip(sec.columns, pairs):
            a, b = pair
            d, r = delta(pair), ratio(pair)
            change = "" if d is None else (
                f" ({_fmt(d, col.unit, signed=True)}"
                + (f", {format_percent(r, signed=True)})" if r is not None and d else ")"))
            cells.append(f"{_fmt(a, col.unit)} → {_fmt(b, col.unit)}{change}")
            code.append(_code(col, pair))
        rows.append(cells)
        codes.append(code)
    return _table_lines(header, rows, codes=codes, color=color)


def _site_code(s: SiteDelta) -> str | None:
    return _CODES.get(_direction(s.beyond_noise, s.delta))


def _sites_narrow(sites: Sequence[SiteDelta], color: bool, width: int) -> list[str]:
    """One line of figures per site, then the site and, after ``←``, the workload's line."""
    header = ["Δ", "A", "B", "capture", "process", "phase"]
    rows = [[format_size(s.delta, signed=True), format_size(s.a), format_size(s.b), s.capture, s.process,
             s.phase] for s in sites]
    codes = [[_site_code(s)] + [None] * 5 for s in sites]
    table = _table_lines(header, rows, [True] * 3 + [False] * 3, codes=codes, color=color)
    lines = table[:2]
    for s, row in zip(sites, table[2:]):
        lines.append(row)
        where, line = f"    {printable(s.site)}", printable(s.workload_line)
        if line and len(where) + 3 + len(line) <= width:
            lines.append(f"{where} ← {line}")
        else:
            lines.append(where)
            if line:
                lines.append(f"      ← {line}")
    return lines


def compare_text(c: Comparison, *, wide: bool = False, color: bool = False, width: int = WIDTH) -> str:
    """The comparison for a terminal or a CI log: which runs, what differs between their scenarios
    and versions, then each section and the sites that grew.

    Narrow (the default) fits ``width`` columns: the run-wide figures one metric a line, the other
    sections with A, B and Δ% under as many metrics as fit (the rest named), each site on two
    lines. ``wide``: every metric, cells ``A → B (Δ, Δ%)``. Colour (``color``) marks a change
    beyond the metric's noise floor only: red for more, green for less.
    """
    lines = [f"A: {_run_title(c.a)}", f"B: {_run_title(c.b)}"]
    lines += provenance_lines(c, width)
    for note in c.notes:
        lines += wrap_pieces("note:", printable(note).split(" "), width, 6)
    for sec in c.sections:
        lines += ["", f"{sec.title}:"]
        lines += _wide_section(sec, color) if wide else _narrow_section(sec, color, width)
    lines += ["", "Allocation sites that grew most (bytes live at the capture's peak, memray"
              + ("):" if wide else "; site ← workload line):")]
    if not c.sites:
        lines.append("  none grew")
    elif wide:
        rows = [[s.stage, s.capture, s.process, s.phase, s.site, s.workload_line,
                 format_size(s.a), format_size(s.b), format_size(s.delta, signed=True)]
                for s in c.sites]
        codes: list[list[str | None]] = [[*[None] * 8, _site_code(s)] for s in c.sites]
        lines += _table_lines(list(SITE_HEADER), rows, [False] * 6 + [True] * 3, codes=codes, color=color)
    else:
        lines += _sites_narrow(c.sites, color, width)
    return "\n".join(lines)


@dataclass
class RunHead:
    dir: str
    title: str


@dataclass
class ChangeRow:
    """One setting or version that differs: where (``scenario``, ``versions``), key, A, B."""

    what: str
    key: str
    a: str
    b: str


@dataclass
class CompareCell:
    """One metric of one row: A, B, the change and its share, as text; ``cls`` is ``up`` or ``down``
    beyond the metric's noise floor, ``flat`` within it, empty where there is no change to show."""

    a: str
    b: str
    delta: str
    percent: str
    cls: str


@dataclass
class RunMetric:
    """A line of the run-wide table: the metric's label and its cell."""

    label: str
    cell: CompareCell


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
    keys: list[str]  # capture, process, phase (the capture's name begins with its stage)
    site: str
    workload_line: str
    a: str
    b: str
    delta: str
    cls: str


@dataclass
class ComparePage:
    """Everything compare.html shows, already formatted; the template only places and escapes it."""

    a: RunHead
    b: RunHead
    notes: list[str]
    run: list[RunMetric]
    sections: list[CompareSection]
    sites: list[SiteRow]
    # what differs between the runs' scenarios and versions; ``same`` says it where nothing does
    changes: list[ChangeRow] = field(default_factory=list)
    same: list[str] = field(default_factory=list)
    site_header: Sequence[str] = ("capture", "process", "phase", "site ← workload line", "A", "B", "Δ")
    seconds_relative: str = f"{SECONDS_RELATIVE:.0%}"


def _cell(col: Column, pair: Pair) -> CompareCell:
    d = delta(pair)
    return CompareCell(_fmt(pair[0], col.unit), _fmt(pair[1], col.unit), _fmt(d, col.unit, signed=True),
                       _share(col, pair) if col.unit == "count" else format_percent(ratio(pair), signed=True),
                       _direction(col.beyond_noise(pair), d))


def _provenance_rows(c: Comparison) -> tuple[list[ChangeRow], list[str]]:
    if c.scenario_changes is None and not c.versions and not c.version_changes:
        return [], []
    rows = [ChangeRow("scenario", ch.key, ch.a, ch.b) for ch in c.scenario_changes or []]
    rows += [ChangeRow("versions", ch.key, _short(ch.a), _short(ch.b)) for ch in c.version_changes]
    same = []
    if c.scenario_changes is None:
        same.append("Scenario: not recorded in both runs' manifests.")
    elif not c.scenario_changes:
        same.append("Scenario: the same.")
    if not c.version_changes and c.versions:
        same.append("Versions: the same: " + ", ".join(_same_versions(c)) + ".")
    return rows, same


def compare_page(c: Comparison) -> ComparePage:
    """The comparison's figures as the text the page shows."""
    run: list[RunMetric] = []
    sections = []
    for sec in c.sections:
        if sec.keys == ["run"]:
            pairs = sec.rows[0][1] if sec.rows else []
            run = [RunMetric(col.label, _cell(col, p)) for col, p in zip(sec.columns, pairs)]
            continue
        rows = [CompareRow([str(k) for k in keys], [_cell(col, p) for col, p in zip(sec.columns, pairs)])
                for keys, pairs in sec.rows]
        sections.append(CompareSection(sec.title, list(sec.keys), [col.label for col in sec.columns], rows))
    sites = [SiteRow([s.capture, s.process, s.phase], s.site, s.workload_line, format_size(s.a),
                     format_size(s.b), format_size(s.delta, signed=True), _direction(s.beyond_noise, s.delta))
             for s in c.sites]
    changes, same = _provenance_rows(c)
    return ComparePage(RunHead(str(c.a.get("dir", "")), _run_title(c.a)),
                       RunHead(str(c.b.get("dir", "")), _run_title(c.b)),
                       list(c.notes), run, sections, sites, changes, same)


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
    # knob values and names are the user's text: a `$` in them is not mathtext
    with matplotlib.rc_context({"text.parse_math": False}):
        return _sweep_plot(result, out, title)


def _sweep_plot(result: SweepResult, out: Path, title: str) -> Path:
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
                    ys = pd_float(gdf[name]) / MiB
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
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    out.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(out, buf.getvalue())


def pd_float(series: Any) -> Any:
    import pandas as pd

    return pd.to_numeric(series, errors="coerce").astype(float)


def sweep_text(result: SweepResult) -> str:
    """The sweep's table with sizes for people."""
    keys = [k.key for k in result.knobs]
    # a figure no run recorded (the footprint by an older harness, the heap with memray off) is left out
    cols = [c for c, _ in ROLE_COLUMNS + ALLOCATION_COLUMNS
            if c in result.table.columns and result.table[c].notna().any()]
    rows = [[str(r[k]) for k in keys] + [str(r["status"])]
            + [format_size(None if r[c] is None or r[c] != r[c] else float(r[c])) for c in cols]
            for r in result.table.to_dict("records")]
    return text_table(keys + ["status"] + cols, rows, [False] * (len(keys) + 1) + [True] * len(cols))


FIT_TEMPLATE = "fit.html.j2"


@dataclass
class FitPage:
    """Everything fit.html shows, already formatted; the template only places and escapes it."""

    title: str
    headline: str
    reason: str
    ok: bool
    runs_header: list[str]
    runs: list[list[str]]
    lines_header: list[str]
    lines: list[list[str]]
    notes: list[str]
    links: list[str]  # each run's report.html, relative to the page ("" where it has none)


def _fit_line_cells(ln: Line, knob: str, judged: bool = True) -> list[str]:
    from harness.gate import fit as fit_mod

    where = ln.phase or "run"
    r2 = "—" if ln.r2 is None else f"{ln.r2:.4f}"
    verdict = ("holds" if ln.holds else "does not hold") if ln.checked else "not checked (2 values)"
    if not judged:  # the run's peak is the largest phase's: a kink where another phase leads is no fault
        verdict = "(the phases are judged)"
    return [where, format_size(ln.fixed), f"{format_size(ln.per_unit)} × {knob}", r2,
            format_size(ln.residual), format_size(ln.tolerance), verdict,
            ", ".join(fit_mod.fmt_value(x) for x in ln.xs)]


def fit_rows(result: FitResult) -> tuple[list[str], list[list[str]], list[str], list[list[str]]]:
    """The fit's two tables: its runs (with each one's prediction once the model is known), and
    its lines, each phase's fixed part, part per unit of the knob and fit quality."""
    from harness.gate import fit as fit_mod

    runs_header = [result.knob, "purpose", "status", f"measured {result.metric}", "predicted", "run"]
    runs = []
    model = result.model
    probes = [(p, "fit") for p in result.probes]
    if result.verification is not None:
        probes.append((result.verification, "verify"))
    for p, what in probes:
        pred = model.predict(p.value)[0] if model is not None else None
        runs.append([fit_mod.fmt_value(p.value), what, p.status, format_size(p.metrics.get(result.metric)),
                     format_size(pred), p.run_dir])
    lines_header = ["phase", "fixed", "per unit", "R²", "largest residual", "noise allowed", "line",
                    "fitted at"]
    lines = [] if model is None else [_fit_line_cells(model.run, result.knob, judged=not model.phases)]
    lines += [] if model is None else [_fit_line_cells(ln, result.knob) for ln in model.phases]
    return runs_header, runs, lines_header, lines


def fit_headline(result: FitResult) -> str:
    from harness.gate import fit as fit_mod

    budget = format_size(result.budget)
    if result.chosen is None:
        return f"{result.knob}: no value chosen for {result.metric} under {budget}"
    at_max = (f" (the largest considered: {result.hi_why}; the budget allows more)"
              if result.unbounded else "")
    return (f"largest {result.knob} under {budget} of {result.metric}: "
            f"{fit_mod.fmt_value(result.chosen)}{at_max}, predicted {format_size(result.predicted)}"
            + (f", measured {format_size(result.measured)} ({result.error:+.1%})"
               if result.error is not None else ""))


def fit_text(result: FitResult) -> str:
    """The terminal's account of a fit: runs, lines, the choice, predicted against measured."""
    runs_header, runs, lines_header, lines = fit_rows(result)
    out = [text_table(runs_header[:-1], [r[:-1] for r in runs], [False, False, False, True, True])]
    if lines:
        out += ["", f"the model: peak = fixed + per unit × {result.knob} (least squares), per phase",
                text_table(lines_header[:-1], [r[:-1] for r in lines],
                           [False, True, True, True, True, True, False])]
    out += ["", fit_headline(result), f"{'ok' if result.ok else 'not verified'}: {result.reason}"]
    return "\n".join(out)


def fit_html(result: FitResult) -> str:
    """fit.html: a self-contained page; every string that came from a run is escaped."""
    from harness.gate import fit as fit_mod

    runs_header, runs, lines_header, lines = fit_rows(result)
    notes = [f"Each run: one epoch, memray off, with the scenario's other settings; the model is "
             f"checked against the runs (a residual beyond {fit_mod.RESIDUAL_SHARE:.0%} of the peak "
             f"or the metric's noise floor) and the chosen value verified by one more run "
             f"(within ±{fit_mod.VERIFY_TOLERANCE:.0%}).",
             "A short run's peak can be below a whole run's: growth over many epochs is not in it "
             "(harness check holds a whole run to its budget)."]
    links = []
    for row in runs:
        report = Path(row[-1]) / "report" / "report.html"
        links.append(os.path.relpath(report, result.out_dir) if row[-1] and result.out_dir
                     and report.is_file() else "")
    page = FitPage(f"fit: {result.scenario}, {result.knob}", fit_headline(result), result.reason,
                   result.ok, runs_header, runs, lines_header, lines, notes, links)
    return environment().get_template(FIT_TEMPLATE).render(page=page)
