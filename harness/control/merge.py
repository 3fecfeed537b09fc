"""``harness merge``: the run directories of a job's nodes joined into one run directory.

Each node of a several-node job runs its own ``harness run`` (``distributed.node_rank`` K). On
shared storage they all write into one run directory; on each node's own disk each writes its
own, and this joins them: node 0's manifest, scenario and top-level files, every node's
``manifest-node<K>.json``, and every node's ``stages/<stage>/node<K>/`` and ``rank<R>/`` folders
side by side. Files are hard-linked where the file system allows (a capture can be large), else
copied; the inputs are left as they were, their ``report/`` folders are not carried over.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from harness.control import rundir
from harness.errors import UsageError
from harness.layout import (
    MANIFEST_FILE,
    REPORT_DIR,
    STAGES_DIR,
    node_manifest_name,
    parse_node_manifest,
)
from harness.records import jsonio
from harness.records.manifest import Failure, Manifest, parse_manifest
from harness.records.problems import error_line
from harness.records.vocab import Status


@dataclass(frozen=True)
class NodeRun:
    """One node's run directory: its node rank, its manifest and the manifest's file name."""

    dir: Path
    node: int
    manifest: Manifest
    manifest_file: str


def _read_node(run_dir: Path) -> NodeRun:
    if not run_dir.is_dir():
        raise UsageError(f"{run_dir}: no such run directory")
    files = [p for p in [run_dir / MANIFEST_FILE, *sorted(run_dir.glob("manifest-node*.json"))]
             if p.is_file() and (p.name == MANIFEST_FILE or parse_node_manifest(p.name) is not None)]
    if not files:
        raise UsageError(f"{run_dir}: not a run directory (no {MANIFEST_FILE} or manifest-node<K>.json)")
    if len(files) > 1:
        raise UsageError(f"{run_dir}: holds several nodes' manifests already ({', '.join(p.name for p in files)})")
    path = files[0]
    raw = jsonio.read(path)  # bounded: one RecordError line (exit 2) names the field
    if not isinstance(raw, dict):
        raise UsageError(f"{path}: expected a JSON object")
    try:
        manifest = parse_manifest(raw)
    except ValidationError as exc:
        raise UsageError(f"{path}: {error_line(exc)}") from None
    dist = manifest.scenario.as_dict().get("distributed") if manifest.scenario else None
    if not isinstance(dist, dict):
        raise UsageError(f"{run_dir}: not a distributed run (its scenario has no distributed section)")
    node = dist.get("node_rank", 0)
    nnodes = dist.get("nnodes", 1)
    if not isinstance(nnodes, int) or isinstance(nnodes, bool) or nnodes < 1:
        raise UsageError(f"{path}: scenario.distributed.nnodes: expected a whole number, at least 1")
    named = parse_node_manifest(path.name)
    if not isinstance(node, int) or (named is not None and named != node):
        raise UsageError(f"{path}: its node rank is unclear (the file says {named}, the scenario {node!r})")
    return NodeRun(run_dir, node, manifest, path.name)


def _scenario_without_node(manifest: Manifest) -> dict[str, Any]:
    scenario = manifest.scenario.as_dict() if manifest.scenario else {}
    scenario.get("distributed", {}).pop("node_rank", None)
    return scenario


def _first_difference(a: Any, b: Any, where: str = "") -> str:
    """The first key at which ``a`` and ``b`` differ, dotted (``train.epochs``)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in list(a) + [k for k in b if k not in a]:
            if a.get(k) != b.get(k):
                return _first_difference(a.get(k), b.get(k), f"{where}.{k}" if where else str(k))
    return where or "(the whole scenario)"


def check_nodes(nodes: list[NodeRun]) -> None:
    """One node each, of one job: UsageError naming the first thing that does not fit."""
    seen: dict[int, Path] = {}
    for n in nodes:
        if n.node in seen:
            raise UsageError(f"node {n.node} given twice: {seen[n.node]} and {n.dir}")
        seen[n.node] = n.dir
    first = nodes[0]
    base = _scenario_without_node(first.manifest)
    for n in nodes[1:]:
        other = _scenario_without_node(n.manifest)
        if other != base:
            key = _first_difference(base, other)
            raise UsageError(f"{n.dir}: a different scenario from {first.dir}'s (first at {key}): "
                             "not nodes of one job")
    nnodes = (base.get("distributed") or {}).get("nnodes", 1)
    missing = list(islice((k for k in range(int(nnodes)) if k not in seen), 10))
    if missing:
        raise UsageError(f"node(s) {', '.join(map(str, missing))} missing: the job had nnodes {nnodes}, "
                         f"{len(nodes)} run directories were given")
    if 0 not in seen:
        raise UsageError("node 0's run directory is missing")


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _merged_status(nodes: list[NodeRun]) -> tuple[Status, Failure | None]:
    """Node 0's status, unless another node's run did not end well: then the first such node's,
    its failure naming the node."""
    for n in sorted(nodes, key=lambda n: n.node):
        if n.manifest.status != Status.OK:
            failure = n.manifest.failure.model_copy() if n.manifest.failure else Failure()
            if failure.node is None:
                failure.node = n.node
            return n.manifest.status, failure
    return Status.OK, None


def merge(run_dirs: list[Path], out: Path | None = None) -> Path:
    """Join the run directories of a job's nodes into ``out`` (default: node 0's, with
    ``-merged``); UsageError for anything that is not one node each of one job."""
    if len(run_dirs) < 2:
        raise UsageError("merge needs the run directories of at least two nodes")
    nodes = sorted((_read_node(Path(d)) for d in run_dirs), key=lambda n: (n.node, str(n.dir)))
    check_nodes(nodes)
    head = nodes[0]
    out = Path(out) if out is not None else head.dir.with_name(head.dir.name + "-merged")
    if out.exists() or out.is_symlink():
        raise UsageError(f"{out}: already exists")
    for n in nodes:  # a link would make the merged run read (or copy) a file outside the run
        link = next((p for p in n.dir.rglob("*") if p.is_symlink()), None)
        if link is not None:
            raise UsageError(f"{link}: is a link; a run directory to merge holds only its own files")
    placed: dict[Path, Path] = {}  # relative path -> the node directory it came from
    out.mkdir(parents=True)
    try:
        for n in nodes:
            for src in sorted(n.dir.rglob("*")):
                rel = src.relative_to(n.dir)
                if rel.parts[0] == REPORT_DIR or src.is_dir() or rel.name == n.manifest_file:
                    continue
                if n.node != 0 and rel.parts[0] != STAGES_DIR:
                    continue  # node 0's scenario.yaml and top-level files stand for the job's
                if rel in placed:
                    raise UsageError(f"{rel} is in both {placed[rel]} and {n.dir}: not one node's folders each")
                placed[rel] = n.dir
                (out / rel).parent.mkdir(parents=True, exist_ok=True)
                _link_or_copy(str(src), str(out / rel))
        status, failure = _merged_status(nodes)
        manifest = head.manifest.model_copy(update={
            "status": status, "failure": failure if status != Status.OK else head.manifest.failure,
            "merged_from": {str(n.node): str(n.dir) for n in nodes}})
        rundir.write_manifest(out, manifest, MANIFEST_FILE)
        for n in nodes[1:]:
            rundir.write_manifest(out, n.manifest, node_manifest_name(n.node))
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    return out
