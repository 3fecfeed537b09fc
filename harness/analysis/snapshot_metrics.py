"""The figures of an epoch snapshot worth comparing from epoch to epoch (the epoch table, the leak
finding and the summary's growth all read them from here)."""

from __future__ import annotations

from typing import Any

from harness.analysis.load import Run


def snapshot_metrics(snap: dict[str, Any]) -> dict[str, float]:
    """The figures of one snapshot that are worth comparing from epoch to epoch."""
    m: dict[str, float] = {}
    tb = snap.get("tensor_bytes") or {}
    for cat in ("parameters", "gradients", "optimizer_state", "other"):
        m[f"tensor_bytes_{cat}"] = float(tb.get(cat, 0) or 0)
    m["tensor_bytes_total"] = sum(float(v or 0) for v in tb.values())
    m["tensor_count"] = float(snap.get("tensor_count") or 0)
    procs = [p for p in snap.get("processes") or [] if not p.get("gone")]
    main: dict[str, Any] = next((p for p in procs if p.get("role") == "main"), {})
    workers = [p for p in procs if p.get("role") != "main"]
    for k in ("rss", "uss", "pss"):
        m[f"main_{k}"] = float(main.get(k) or 0)
    m["workers"] = float(len(workers))
    m["workers_rss"] = float(sum(p.get("rss") or 0 for p in workers))
    m["workers_uss"] = float(sum(p.get("uss") or 0 for p in workers))
    summary = (snap.get("maps") or {}).get("summary") or {}
    for kind in ("heap", "anonymous", "file", "shared-memory"):
        m[f"maps_{kind.replace('-', '_')}_bytes"] = float((summary.get(kind) or {}).get("bytes", 0))
    counts = (snap.get("gc") or {}).get("counts") or []
    for i, c in enumerate(counts[:3]):
        m[f"gc_count_gen{i}"] = float(c)
    cuda = snap.get("cuda") or {}
    for k in ("allocated", "reserved", "max_allocated"):
        if k in cuda:
            m[f"cuda_{k}"] = float(cuda[k])
    return m


def epoch_metrics(run: Run) -> dict[str, list[tuple[int, dict[str, float]]]]:
    """Per stage, the epoch-end snapshots' metrics in epoch order."""
    out: dict[str, list[tuple[int, dict[str, float]]]] = {}
    for st in run.stages:
        rows = [(int(s.get("epoch") or 0), snapshot_metrics(s))
                for label, s in st.snapshots.items() if label.startswith("epoch-")]
        if rows:
            out[st.name] = sorted(rows, key=lambda r: r[0])
    return out
