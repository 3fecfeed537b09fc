"""Shared by the benchmark scripts: timing a command, machine facts, a printed table."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from harness.records.manifest import Manifest

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out"


def machine() -> dict[str, Any]:
    return {
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": metadata.version("torch"),
        "torchvision": metadata.version("torchvision"),
        "memray": metadata.version("memray"),
        "psutil": metadata.version("psutil"),
        "load_avg_at_start": os.getloadavg(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
    }


def timed(cmd: list[str], cwd: Path = REPO, log: Path | None = None) -> tuple[float, str]:
    """Run ``cmd``; return its wall time and its output. Fails loudly on a non-zero exit."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    out = proc.stdout + proc.stderr
    if log is not None:
        log.write_text(out, encoding="utf-8")
    if proc.returncode != 0:
        sys.exit(f"benchmark command failed ({proc.returncode}): {' '.join(cmd)}\n{out[-2000:]}")
    return wall, out


def timed_lines(cmd: list[str], cwd: Path = REPO) -> tuple[float, str, list[tuple[float, str]]]:
    """Like ``timed``, and when each output line arrived (seconds from the start): the stages'
    own lines come through ``harness`` live, so their times split a run into segments."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            bufsize=1)
    assert proc.stdout is not None
    lines = [(time.perf_counter() - t0, line.rstrip("\n")) for line in proc.stdout]
    proc.wait()
    wall = time.perf_counter() - t0
    out = "\n".join(line for _, line in lines)
    if proc.returncode != 0:
        sys.exit(f"benchmark command failed ({proc.returncode}): {' '.join(cmd)}\n{out[-2000:]}")
    return wall, out, lines


def table(rows: list[list[Any]], header: list[str]) -> str:
    cells = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_result(name: str, result: dict[str, Any]) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.json"
    path.write_text(json.dumps(result, indent=2, default=str), encoding="utf-8")
    return path


def harness_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "harness", *args]


def read_manifest(run_dir: Path) -> Manifest:
    """A run's manifest, typed (harness.analysis.load reads it as the report does)."""
    from harness.analysis.load import read_manifest as read

    return read(run_dir)


def stage_seconds(run_dir: Path) -> float:
    """The stages' wall time of a run, from its manifest (the report written after is not in it)."""
    return float(sum(s.wall_s or 0.0 for s in read_manifest(run_dir).stages))


def run_dir_from(output: str) -> Path:
    for line in output.splitlines():
        for prefix in ("harness: run directory ", "harness: run finished: ",
                       "harness: bare run finished: "):
            if line.startswith(prefix):
                return REPO / line.removeprefix(prefix).strip()
    raise RuntimeError("no run directory in the harness output")
