"""The run directory: its layout, its manifest and the provenance every run carries.

::

    reports/<scenario>/<UTC timestamp>-<id>/
        manifest.json          provenance, command line, each stage's status
        scenario.yaml          the resolved scenario
        checkpoint.pt          written by the train stage, read by the test stage
        stages/<stage>/
            log.txt            the stage's stdout and stderr
            events.jsonl       phase, epoch, metric and memray events from the workload
            samples/           the process-tree samples (one row per process per tick, in parts)
            probe.json         the probe's configuration; probe.cell: the shared cell
            snapshots/*.json   epoch-boundary memory snapshots
            memray/*.bin[.pid] memray captures (a .pid suffix: a forked worker)
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.machinery
import importlib.util
import os
import platform
import secrets
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from harness.errors import UsageError
from harness.layout import MANIFEST_FILE, SCENARIO_FILE
from harness.records.atomic import replace_whole
from harness.records.manifest import Manifest

MANIFEST = MANIFEST_FILE
SCENARIO = SCENARIO_FILE


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


def _git(folder: Path, *args: str) -> str | None:
    """``git -C folder ARGS``'s output, stripped; None when git fails or is not there."""
    try:
        out = subprocess.run(["git", "-C", str(folder), *args],
                             capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _git_revision() -> str | None:
    """The harness checkout's revision, ``-dirty`` when a tracked file differs from it."""
    here = Path(__file__).resolve().parent.parent
    revision = _git(here, "rev-parse", "HEAD")
    if revision is None:
        return None
    dirty = _git(here, "status", "--porcelain", "--untracked-files=no")
    return revision + ("-dirty" if dirty else "")


def module_file(name: str) -> Path | None:
    """The file of module ``pkg.module`` as the stage would find it, found without importing.

    The stage runs in this working directory with this environment: it has the directory,
    PYTHONPATH and this interpreter's path on its own, then the interpreter's other finders (an
    editable install's).
    """
    search = [os.getcwd(), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep)),
              *filter(None, sys.path)]
    parts = name.split(".")
    spec = None
    try:
        for i in range(len(parts)):
            if spec is not None:  # the package above: its module lies in the package's folders
                search = list(spec.submodule_search_locations or [])
                if not search:
                    return None
            spec = importlib.machinery.PathFinder.find_spec(".".join(parts[: i + 1]), search)
            if spec is None and i == 0:  # a top-level name imports nothing to be found
                spec = importlib.util.find_spec(parts[0])
            if spec is None:
                return None
    except (ImportError, ValueError):
        return None
    origin = spec.origin if spec is not None else None
    return Path(origin).resolve() if origin and Path(origin).is_file() else None


def workload_provenance(entry: str) -> dict[str, Any]:
    """Which code a workload ran: its file, the file's sha256, the git revision holding it.

    For a script, the script; for ``pkg.module:function`` (the built-in included), the module's
    file. ``git_revision`` is the revision (HEAD) of the repository holding the file, None outside
    one; ``dirty`` says whether the file differs from that revision (modified, staged, untracked
    or ignored). Imports of the file are not followed.
    """
    path = Path(entry).resolve() if entry.endswith(".py") else module_file(entry.partition(":")[0])
    out: dict[str, Any] = {"entry": entry, "file": None, "sha256": None, "git_root": None,
                           "git_revision": None, "dirty": None}
    if path is None or not path.is_file():
        return out
    out["file"] = str(path)
    try:
        out["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        pass
    folder = path.parent
    revision = _git(folder, "rev-parse", "HEAD")
    if revision is None:
        return out
    tracked = _git(folder, "ls-files", "--error-unmatch", "--", path.name) is not None
    status = _git(folder, "status", "--porcelain", "--ignored", "--", path.name)
    out.update(git_root=_git(folder, "rev-parse", "--show-toplevel"), git_revision=revision,
               dirty=None if status is None else not tracked or bool(status))
    return out


def provenance() -> dict[str, Any]:
    """Where and with what the harness runs; ``git_revision`` is the harness checkout's."""
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


def write_record(path: Path, record: BaseModel) -> None:
    """Write ``record`` as JSON to ``path`` whole or not at all, never through a link.

    The run directory's records (manifest.json, manifest-node<K>.json, agent.json) go through the
    harness's one atomic write (:func:`harness.records.atomic.replace_whole`), flushed to disk
    before the rename; a link at ``path`` is refused (UsageError naming it), and a full disk is
    the OSError the runner's disk-full handling reads.
    """
    replace_whole(path, record.model_dump_json(indent=2), sync=True)


def write_manifest(run_dir: Path, manifest: Manifest, name: str = MANIFEST) -> None:
    """Write the run's manifest (``name``: node K > 0 of a distributed job writes
    manifest-node<K>.json) through :func:`write_record`."""
    write_record(run_dir / name, manifest)
