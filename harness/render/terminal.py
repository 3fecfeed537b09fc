"""The short summary printed at the end of ``harness run`` and by ``harness report``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from harness.records.text import printable_lines
from harness.sizes import format_size


def _mib(n: Any) -> str:
    return format_size(n, unit="MiB", digits=0)


def _where(p: dict[str, Any] | None) -> str:
    if not p:
        return ""
    bits = [p.get("stage", "")]
    if p.get("epoch"):
        bits.append(f"epoch {p['epoch']}")
    if p.get("phase") and p["phase"] != "none":
        bits.append(p["phase"])
    return " (" + ", ".join(b for b in bits if b) + ")"


def _teardown(peaks: dict[str, Any]) -> str:
    """The main process's peak after stage_end, when above its running peak (the tree's too when
    it differs, i.e. workers still ran); else nothing to say."""
    main, tree = peaks.get("main_rss_teardown"), peaks.get("tree_rss_teardown")
    bits = []
    if main and main["bytes"] > ((peaks.get("main_rss") or {}).get("bytes") or 0):
        bit = f"main {_mib(main['bytes'])}, {main['after_end_s']:.1f} s after {main['stage']}'s stage_end"
        if main.get("rise") and main["rise"] > 0:
            bit += f" (+{_mib(main['rise'])}"
            if main.get("file_backed_rise") is not None:
                bit += f", {_mib(max(main['file_backed_rise'], 0))} of it file-backed"
            bit += ")"
        bits.append(bit)
    if tree and tree["bytes"] > ((peaks.get("tree_rss") or {}).get("bytes") or 0) \
            and (not main or tree["bytes"] != main["bytes"]):
        bits.append(f"tree {_mib(tree['bytes'])}")
    return ", ".join(bits)


def _heap(n: Any) -> str:
    """MiB as the other peaks, unless that would show a small capture's heap as ``0 MiB``."""
    return _mib(n) if isinstance(n, int | float) and n >= 1024 * 1024 else format_size(n)


def summary_text(summary: dict[str, Any], report_html: Path, cut_short: Mapping[str, str] | None = None) -> str:
    """A few lines: status, peaks, metrics, one line per finding, where the report is.
    ``cut_short``: captures still open when their stage stopped (name -> how it ended)."""
    run = summary["run"]
    peaks = summary["peaks"]
    lines = oom_lines(summary.get("oom") or []) + cuda_oom_lines(summary.get("cuda_oom") or [])
    lines.append(f"harness: report for {run['scenario']}: status {run['status']}"
                 + ("" if run["complete"] else " (INCOMPLETE)"))
    for reason in run["incomplete_reasons"]:
        lines.append(f"  incomplete: {reason}")
    foot = peaks.get("footprint")
    if foot:
        lines.append(f"  footprint  {_mib(foot['bytes'])}{_where(foot)}: the process tree, "
                     "shared pages counted once")
    lines.append(f"  peak RSS   main {_mib((peaks['main_rss'] or {}).get('bytes'))}"
                 f"{_where(peaks['main_rss'])}, summed over processes "
                 f"{_mib((peaks['tree_rss'] or {}).get('bytes'))}{_where(peaks['tree_rss'])}")
    teardown = _teardown(peaks)
    if teardown:
        lines.append("  teardown   " + teardown)
    extra = []
    if peaks["workers_uss"]:
        extra.append(f"workers' USS {_mib(peaks['workers_uss']['bytes'])}")
    if peaks["heap"]:
        capture = peaks["heap"]["capture"]
        stopped = (cut_short or {}).get(capture)
        where = "whole stage" if peaks["heap"].get("scope") == "full" else "inside the capture windows"
        extra.append(f"memray heap {where} {'≥ ' if stopped else ''}{_heap(peaks['heap']['bytes'])} ({capture}"
                     + (f", cut short: {stopped})" if stopped else ")"))
    if peaks["live_tensor_bytes"]:
        extra.append(f"live tensors {format_size(peaks['live_tensor_bytes']['bytes'])}")
    if extra:
        lines.append("  peak       " + ", ".join(extra))
    if peaks.get("cuda_allocated"):
        reserved = peaks.get("cuda_reserved") or {}
        lines.append(f"  CUDA       allocated {_mib(peaks['cuda_allocated']['bytes'])}"
                     f"{_where(peaks['cuda_allocated'])}, reserved {_mib(reserved.get('bytes'))}"
                     f"{_where(reserved or None)}")
    room = headroom_text(summary.get("headroom"))
    if room:
        lines.append("  headroom   " + room)
    final = summary["metrics"]["final"]
    if final:
        lines.append("  metrics    " + ", ".join(f"{k} {v:g}" for k, v in final.items()))
    findings = summary["findings"]
    if findings:
        lines.append(f"  findings   {len(findings)}:")
        for f in findings:
            lines.append(f"    - {f['title']}")
    else:
        lines.append("  findings   none")
    lines.append(f"  report     {report_html}")
    return printable_lines("\n".join(lines))  # names, messages and paths come from the run


def oom_lines(post_mortems: list[dict[str, Any]]) -> list[str]:
    """What opens the report of a run the kernel's OOM killer ended: who, where, under which
    limit, how fast it grew, the lines that held the most."""
    lines = []
    for pm in post_mortems:
        r = pm["record"]
        victim = r["victim"]
        where = ", ".join(b for b in (
            f"epoch {r['epoch']}" if r["epoch"] else "",
            f"step {r['step']}" if r["step"] is not None else "",
            f"phase {r['phase']}" if r["phase"] else "") if b)
        pid = f" (pid {victim['pid']})" if victim["pid"] is not None else ""
        lines.append(f"harness: OOM-KILLED: stage {pm['stage']!r}: the kernel's OOM killer killed "
                     f"{victim['role']}{pid}" + (f" at {where}" if where else ""))
        limit = r["limit"]
        if limit is not None:
            lines.append(f"  limit      {_mib(limit['bytes'])} ({limit['source']}"
                         + (f" {limit['cgroup']}" if limit["cgroup"] else "") + ")")
        held = []
        if pm["victim_rss"] is not None:
            held.append(f"{victim['role']} {_mib(pm['victim_rss'])}")
            parts = [f"{k} {_mib(pm['victim_' + k])}" for k in ("anon", "file", "shmem")
                     if pm["victim_" + k]]
            if parts:
                held[-1] += f" ({', '.join(parts)})"
        if pm["tree_rss"] is not None:
            held.append(f"tree {_mib(pm['tree_rss'])} in {pm['processes']} process(es)")
        if held:
            lines.append("  at death   " + ", ".join(held))
        if pm.get("composition"):
            top = sorted(pm["composition"].items(), key=lambda kv: -abs(kv[1]))[:5]
            lines.append(f"  made of    ({pm['composition_when']}, {pm['composition_before_s']:g} s "
                         "before) " + ", ".join(f"{k} {_mib(v)}" for k, v in top))
        if pm["mib_per_s"] is not None:
            rate = f"{pm['mib_per_s']:,.1f} MiB/s"
            if pm["mib_per_step"] is not None:
                rate += f", {pm['mib_per_step']:,.2f} MiB/step"
            lines.append(f"  growing    {rate} over its last {pm['window_s']:g} s")
        for i, line in enumerate(pm["lines"]):
            head = f"  grew most  ({pm['capture']}, {pm['lines_measure']}) " if i == 0 else " " * 13
            lines.append(f"{head}{format_size(line['bytes'])} {line['line']}")
        lines.append(f"  evidence   {r['evidence']}; {r['counter']} rose by {r['oom_kills']}")
    return lines


def headroom_text(room: dict[str, Any] | None) -> str:
    """``tree RSS 540 MiB = 90% of 600 MiB (limits.memory); cuda reserved 2 GiB = 3% of 80 GiB``."""
    if not room:
        return ""
    bits = []
    host = [h for h in room["host"] if h["share"] is not None]
    if host:
        h = max(host, key=lambda h: h["share"])
        main = f", main {h['main_share']:.0%}" if h.get("main_share") is not None else ""
        bits.append(f"{h['measure']} {_mib(h['peak'])} = {h['share']:.0%} of {_mib(h['limit'])} "
                    f"({h['source']}{main})")
    elif room["host"]:
        h = room["host"][0]
        bits.append(f"limit {_mib(h['limit'])} ({h['source']})")
    for d in room["cuda"]:
        if d["share"] is not None:
            bits.append(f"{d['device']} reserved {_mib(d['peak_reserved'])} = {d['share']:.0%} of "
                        f"{_mib(d['total'])}")
        else:
            bits.append(f"{d['device']} total {_mib(d['total'])}")
    return "; ".join(bits)


def cuda_oom_lines(rows: list[dict[str, Any]]) -> list[str]:
    """A failed CUDA allocation: where, what was asked for, the allocator's state then."""
    lines = []
    for r in rows:
        rank = f"rank {r['rank']}, " if r.get("rank") is not None else ""
        where = ", ".join(b for b in (f"epoch {r['epoch']}" if r["epoch"] else "",
                                      f"step {r['step']}", f"phase {r['phase']}") if b)
        lines.append(f"harness: CUDA OUT OF MEMORY: stage {r['stage']!r} ({rank}{where}) asked for "
                     f"{_mib(r['requested'])} on cuda:{r['device']}")
        state = (f"reserved {_mib(r['reserved'])}, allocated {_mib(r['allocated'])} "
                 f"(cached {_mib(r['reserved'] - r['allocated'])})")
        if r["largest_free_block"] is not None:
            state += f", largest free block {_mib(r['largest_free_block'])}"
        if r["device_free"] is not None and r["device_total"]:
            state += f", device free {_mib(r['device_free'])} of {_mib(r['device_total'])}"
        lines.append("  allocator  " + state)
        if r["file"]:
            lines.append(f"  snapshot   {r['file']} (pytorch.org/memory_viz)")
    return lines
