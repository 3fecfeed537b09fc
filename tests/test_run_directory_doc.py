"""docs/run-directory.md against the record models of harness/records: one section per record.

For every (section, model) pair of :data:`RECORDS`, every field the model has (its nested
records' too, where the model owns them) is named in backticks in that section, and every
backticked name in the section that looks like a field (``lower_case``) is a field of the model or
one of the section's :attr:`DocRecord.words`: values and other names the prose uses (a role, a
map kind, a file name). A field added to a model without a word in the docs, or a field the docs
name that no model has, fails here.

Adding a record is one entry in RECORDS (the events: every kind's model, a union).
"""

from __future__ import annotations

import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from harness.layout import Event
from harness.records.composition import Moment
from harness.records.events import HarnessEvent, WorkloadEvent
from harness.records.manifest import Manifest
from harness.records.probe_config import ProbeConfig
from harness.records.samples import SampleRow
from harness.records.snapshots import Snapshot
from harness.records.vocab import PHASES, Status

DOC = Path(__file__).resolve().parents[1] / "docs" / "run-directory.md"


@dataclass(frozen=True)
class DocRecord:
    section: str  # the ``## `` heading, as written
    model: Any  # a pydantic model or a NamedTuple
    nested: bool = True  # the fields of the records it holds count too (not a scenario section's)
    words: frozenset[str] = frozenset()  # backticked names in the section that are not fields


RECORDS: list[DocRecord] = [
    DocRecord("manifest.json", Manifest, words=frozenset({
        *Status, "run", "bare",  # status, kind
        "batch", "normal", "fork", "spawn", "forkserver", "none",  # sampling.policy, start methods
        "smaps_rollup", "null", "true", "machine"})),  # machine: memory_limit.source
    DocRecord("samples/ (and samples.csv)", SampleRow, words=frozenset({
        "main", "forkserver", "child", "statm", "smaps_rollup", "setup", "teardown",
        "phase_totals", "agent"})),
    DocRecord("snapshots/<label>.json", Snapshot, words=frozenset({
        "parameters", "gradients", "optimizer_state", "other", "ddp_buckets",  # tensor_bytes' keys
        "anonymous", "heap", "stack", "file", "special",  # map kinds
        "main", "true", "null", "traced_step"})),
    DocRecord("composition.jsonl", Moment, words=frozenset({
        "start", "epoch", "peak", "end", "inside", "outside",  # when, source
        "uordblks", "hblkhd", "fordblks", "malloc_trim", "memfd", "null"})),
    DocRecord("probe.json", ProbeConfig, nested=False),
    DocRecord("events.jsonl", HarnessEvent | WorkloadEvent, words=frozenset({
        *Event, *PHASES, "zero_grad",  # the kinds, the phases
        "first", "spaced", "regrow", "listed", "every", "replaces", "rest", "null",  # reason, span values
        "loss", "val_accuracy", "test_accuracy", "correct",  # the built-in workload's metrics
        "cuda_allocated", "cuda_reserved"})),  # samples' columns
]


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation holds: ``X``, ``X | None``, ``list[X]``, ``dict[str, X]``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is not None:
        return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]
    return []


def field_names(model: Any, nested: bool = True) -> set[str]:
    """Every field of ``model`` (of each model of a union) and, with ``nested``, of the models its
    fields hold."""
    if isinstance(model, types.UnionType):
        return {name for m in typing.get_args(model) for name in field_names(m, nested)}
    if isinstance(model, type) and issubclass(model, BaseModel):
        names = set(model.model_fields)
        if nested:
            for f in model.model_fields.values():
                for inner in _models_in(f.annotation):
                    names |= field_names(inner)
        return names
    return set(model._fields)  # a NamedTuple


def section(title: str, text: str | None = None) -> str:
    """The text under ``## title`` up to the next ``## `` heading."""
    text = DOC.read_text(encoding="utf-8") if text is None else text
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert m, f"docs/run-directory.md has no section '## {title}'"
    return m.group(1)


def named(text: str) -> set[str]:
    """The field-like names in backticks: ``rss``, ``gone`` of ``gone: true``, not ``a.b()``."""
    out = set()
    for token in re.findall(r"`([^`\n]+)`", text):
        head = token.split(":")[0].strip()
        if re.fullmatch(r"[a-z_][a-z0-9_]*", head):
            out.add(head)
    return out


@pytest.mark.parametrize("record", RECORDS, ids=[r.section for r in RECORDS])
def test_every_field_of_the_record_is_documented(record: DocRecord) -> None:
    missing = field_names(record.model, record.nested) - named(section(record.section))
    assert not missing, f"docs/run-directory.md '## {record.section}' does not name {sorted(missing)}"


@pytest.mark.parametrize("record", RECORDS, ids=[r.section for r in RECORDS])
def test_every_name_the_doc_gives_is_a_field(record: DocRecord) -> None:
    unknown = named(section(record.section)) - field_names(record.model, record.nested) - record.words
    assert not unknown, (f"docs/run-directory.md '## {record.section}' names {sorted(unknown)}, "
                         f"which {getattr(record.model, '__name__', record.model)} does not have "
                         "(a field, or add to words)")


def test_the_check_catches_a_field_the_doc_lacks_and_one_it_invents() -> None:
    # GIVEN a section that forgets `swap` and names a `colour` no model has
    text = "## samples/ (and samples.csv)\n" + ", ".join(
        f"`{c}`" for c in SampleRow._fields if c != "swap") + ", `colour`\n## next\n"
    # WHEN read as the check reads it THEN both are found
    found = named(section("samples/ (and samples.csv)", text))
    assert field_names(SampleRow) - found == {"swap"}
    assert found - field_names(SampleRow) == {"colour"}


def test_every_event_kind_has_its_row() -> None:
    rows = {line.split("|")[1].strip() for line in section("events.jsonl").splitlines()
            if line.startswith("| `")}
    assert {kind for kind in Event if not any(f"`{kind}`" in row for row in rows)} == set()


def test_nested_records_count_with_their_fields() -> None:
    names = field_names(Snapshot)
    assert {"mapping", "holding_tensors", "bucket_sizes", "gone", "counts", "device_total"} <= names
    assert field_names(ProbeConfig, nested=False) == {"stage", "device", "memray", "tensors", "cuda"}
