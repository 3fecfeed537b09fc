"""Checks of a scenario's inputs that are cheap enough to run before the run directory is made.

What a stage would otherwise find only after it started (a missing script, an archive that is not
one, a seed the generators refuse) becomes one :class:`ScenarioError` naming the scenario file and
the key, exit 2, and no run directory is left behind.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
import tarfile
import zlib
from pathlib import Path

from harness.errors import ScenarioError
from harness.records.scenario import Scenario

# torch.Generator().manual_seed takes at most 2**64 - 1; numpy's generators (the synthetic images)
# take no negative seed.
SEED_MAX = 2**64 - 1


def check(scenario: Scenario, source: str) -> None:
    """Raise ScenarioError (naming ``source`` and the key) for input no stage could run with."""
    if not 0 <= scenario.seed <= SEED_MAX:
        raise ScenarioError(f"{source}: seed: expected an integer from 0 to 2**64 - 1, got {scenario.seed}")
    entry = scenario.workload.entry
    if entry.endswith(".py"):
        if not Path(entry).is_file():
            raise ScenarioError(f"{source}: workload.entry: no such script: {entry}")
    elif not _top_package_exists(entry.partition(":")[0].partition(".")[0]):
        raise ScenarioError(f"{source}: workload.entry: no module named {entry.partition(':')[0]!r}")
    data = scenario.data
    if scenario.workload.builtin and data.source == "folder" and data.path is not None:
        _check_folder_data(Path(data.path), source)


def _top_package_exists(name: str) -> bool:
    """Whether the stage could find the top-level package ``name``, looked up without importing
    anything. The stage runs in the harness's working directory and environment: it has that
    directory and PYTHONPATH (as it is now, not as this process started) on its path."""
    if not name or name in sys.modules:
        return True
    try:
        if importlib.util.find_spec(name) is not None:
            return True
    except (ImportError, ValueError):
        return True  # a finder that cannot tell: the stage will say
    paths = [os.getcwd(), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return importlib.machinery.PathFinder.find_spec(name, paths) is not None


def _check_folder_data(path: Path, source: str) -> None:
    if path.is_dir():
        if not os.access(path, os.R_OK | os.X_OK):
            raise ScenarioError(f"{source}: data.path: cannot read the folder {path}")
        return
    if not path.is_file():
        raise ScenarioError(f"{source}: data.path: no such directory or archive: {path}")
    # Open it and read the first member only: enough to tell a gzip'd tar from anything else
    # without unpacking a large archive twice.
    try:
        with tarfile.open(path, "r:gz") as tar:
            first = tar.next()
    except (OSError, EOFError, zlib.error, tarfile.TarError) as exc:
        reason = str(exc) or type(exc).__name__
        raise ScenarioError(f"{source}: data.path: not a readable .tar.gz archive: {path} ({reason})") from None
    if first is None:
        raise ScenarioError(f"{source}: data.path: the archive holds no files: {path}")
