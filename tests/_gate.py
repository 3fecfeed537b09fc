"""Hand-written run directories for the gate tests: a manifest, a scenario, report/summary.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from harness.analysis.summary_model import Summary

MiB = 1024 * 1024
STEP_PHASES = ("data", "forward", "loss", "backward", "optimizer")


def fake_summary(*, main: int = 400 * MiB, tree: int = 900 * MiB, workers_uss: int = 20 * MiB,
                 heap: int | None = 8 * MiB, tensors: int = 300_000, growth: tuple[int, ...] = (200_000,),
                 status: str = "ok", scenario: str = "fake", run_dir: str = "run",
                 scale: dict[str, float] | None = None) -> dict[str, Any]:
    """A summary shaped as harness.analysis.summary writes it; ``scale`` multiplies a phase's tensors."""
    scale = scale or {}
    phases = []
    for epoch in range(1, len(growth) + 2):
        for phase in ("idle",) + STEP_PHASES + ("validate",):
            t = None if phase in ("idle", "validate") else int(tensors * scale.get(phase, 1.0)
                                                                * (1.0 if phase == "backward" else 0.7))
            phases.append({"stage": "train", "epoch": epoch, "phase": phase, "seconds": 1.0,
                           "time_share": 0.1, "main_rss_max": main, "tree_rss_max": tree,
                           "workers_uss_max": workers_uss, "peak_live_tensor_bytes": t})
    peak_t = max(p["peak_live_tensor_bytes"] or 0 for p in phases)
    return {
        "schema": "harness-summary", "schema_version": 1,
        "run": {"dir": run_dir, "scenario": scenario, "kind": "run", "status": status,
                "complete": status == "ok", "incomplete_reasons": [], "started": "2026-01-01T00:00:00Z",
                "ended": "2026-01-01T00:01:00Z", "git_revision": "abc", "harness_version": "0.1.0",
                "host": "test"},
        "stages": [{"name": "train", "status": status, "exit_code": 0, "signal": None, "wall_s": 60.0,
                    "message": "", "peak_main_rss": main, "peak_tree_rss": tree}],
        "peaks": {
            "main_rss": {"bytes": main, "stage": "train", "epoch": 1, "step": 3, "phase": "forward", "t": 1.0},
            "tree_rss": {"bytes": tree, "stage": "train", "epoch": 1, "step": 3, "phase": "forward", "t": 1.0},
            "workers_uss": {"bytes": workers_uss, "stage": "train", "epoch": 1, "step": 3,
                            "phase": "data", "t": 1.0},
            "heap": None if heap is None else {"bytes": heap, "stage": "train", "capture": "train-e1-train",
                                               "process": "main", "pid": 1},
            "live_tensor_bytes": {"bytes": peak_t, "stage": "train", "epoch": 1, "phase": "backward"},
        },
        "phases": phases,
        "growth_per_epoch": [{"stage": "train", "from_epoch": i + 1, "to_epoch": i + 2, "main_rss": g,
                              "main_uss": g, "tensor_count": 0, "tensor_bytes": 0}
                             for i, g in enumerate(growth)],
        "durations": {"wall_s": 60.0, "stages": {"train": 60.0},
                      "epochs": [{"stage": "train", "epoch": e, "seconds": 20.0} for e in range(1, len(growth) + 2)]},
        "metrics": {"final": {}, "series": []}, "findings": [], "captures": [], "problems": [],
    }


def fake_model(**kw: Any) -> Summary:
    """:func:`fake_summary` as the gates read it back (strictly, as from summary.json)."""
    return Summary.model_validate(fake_summary(**kw), strict=True)


def write_run(directory: Path, summary: dict[str, Any], budgets: dict[str, Any] | None = None,
              name: str = "fake") -> Path:
    """A run directory that holds only what the gates read."""
    directory.mkdir(parents=True, exist_ok=True)
    scenario: dict[str, Any] = {"name": name}
    if budgets is not None:
        scenario["budgets"] = budgets
    (directory / "scenario.yaml").write_text(yaml.safe_dump(scenario), encoding="utf-8")
    (directory / "manifest.json").write_text(json.dumps({
        "manifest_version": 1, "kind": "run", "scenario_name": name, "scenario": scenario,
        "status": summary["run"]["status"], "stages": [], "wall_s": 60.0, "cpu_count": 2,
        "command_line": ["harness", "run"], "versions": {"harness": "0.1.0"}}), encoding="utf-8")
    report = directory / "report"
    report.mkdir(exist_ok=True)
    summary = {**summary, "run": {**summary["run"], "dir": str(directory)}}
    (report / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    return directory
