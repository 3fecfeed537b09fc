"""The run directory: its layout, its manifest and the provenance every run carries.

::

    reports/<scenario>/<UTC timestamp>-<id>/
        manifest.json          provenance, command line, each stage's status
        scenario.yaml          the resolved scenario
        checkpoint.pt          written by the train stage, read by the test stage
        stages/<stage>/
            log.txt            the stage's stdout and stderr
            events.jsonl       phase, epoch, metric and memray events from the workload
            samples.csv        the process-tree samples (one row per process per tick)
            probe.json         the probe's configuration; probe.cell: the shared cell
            snapshots/*.json   epoch-boundary memory snapshots
            memray/*.bin[.pid] memray captures (a .pid suffix: a forked worker)
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import secrets
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from harness.errors import UsageError
from harness.layout import MANIFEST_FILE, SCENARIO_FILE

MANIFEST = MANIFEST_FILE
SCENARIO = SCENARIO_FILE
MANIFEST_VERSION = 1


def new_run_dir(reports: Path, scenario_name: str, suffix: str = "") -> Path:
    """Create ``reports/<name>/<UTC timestamp>-<id>``; never reuses an existing directory."""
    parent = reports / scenario_name
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # --reports (or a folder in it) is a file, or not writable
        raise UsageError(f"{reports}: cannot make a run directory under it: {exc.strerror}") from None
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    while True:
        path = parent / f"{stamp}-{secrets.token_hex(3)}{suffix}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _git_revision() -> str | None:
    here = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=5, check=False,
        )
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5, check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def provenance() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "versions": {
            name: _version(name)
            for name in ("torch", "torchvision", "memray", "psutil", "pandas", "harness")
        },
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "git_revision": _git_revision(),
        "command_line": sys.argv,
    }


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def write_manifest(run_dir: Path, manifest: dict[str, Any]) -> None:
    """Write atomically, so a crash mid-write never leaves a torn manifest."""
    tmp = run_dir / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, default=str), encoding="utf-8")
    tmp.replace(run_dir / MANIFEST)

