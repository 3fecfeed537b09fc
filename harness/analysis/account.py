"""The account: what each process's RSS is made of, moment by moment, and the tree's with shared
pages counted once; pure functions of ``composition.jsonl`` (:mod:`harness.records.composition`).

A moment is the stage start (before the first training step), an epoch snapshot, a moment near
the peak, or the stage's end. Every process's parts add up to its RSS (``unexplained`` is the
remainder, always shown). The tree's account (:func:`tree_parts`) counts a shared page once: the
stage's own process (the main process, or a rank's) is counted whole, and every other process
(its DataLoader workers, forked from it) adds only its private pages, its USS. A forked worker
shares its pages with the process it was forked from, and its private ones are the pages it
wrote (copy-on-write copies, its own allocations): anonymous memory. So its USS is given to its
anonymous parts first, and only what is left over (pages of files or shared memory that only it
maps) to its file-backed and shared-memory parts, in proportion. The tree's total is then the
main process's RSS plus the others' USS, which is the footprint (the sum of PSS) when every
shared page is shared with the main process.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import pandas as pd

from harness.analysis.load import Run, Stage
from harness.records.composition import PART_KEYS, PARTS, Moment, Parts, ProcessComposition
from harness.sizes import MiB

TREE_ROLE = "tree (shared pages once)"
PART_LABELS: dict[str, str] = {key: label for key, _, label in PARTS}
PART_GROUPS: dict[str, str] = {key: group for key, group, _ in PARTS}
# Parts a forked worker's private pages can be: its anonymous memory (and what no part names)
_PRIVATE_FIRST = tuple(k for k in PART_KEYS if PART_GROUPS[k] in ("anon", "unexplained"))
_SHARED_LAST = tuple(k for k in PART_KEYS if k not in _PRIVATE_FIRST)
# "Before the first step": the start moment in the words a newcomer asks in, each a sum of parts
START_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("imports and libraries", ("file_torch", "file_cuda", "file_python", "python_objects",
                               "native_heap")),
    ("model (parameters)", ("tensor_parameters",)),
    ("optimizer state", ("tensor_optimizer_state",)),
    ("gradients", ("tensor_gradients",)),
    ("other tensors (batches, buffers)", ("tensor_other",)),
    ("memory-mapped data files", ("file_data",)),
    ("held free by malloc", ("malloc_free",)),
    ("thread stacks", ("stacks",)),
    ("the instrument (memray, the probe)", ("instrument",)),
    ("shared memory", ("shared_memory",)),
    ("unexplained", ("unexplained",)),
)
# A part that moved less than this between two moments is not named as grown
GREW_MIN_BYTES = 1 * MiB
# Words for a part in a growth list (activations are the other tensors of a step)
GROWTH_WORDS: dict[str, str] = {
    "tensor_parameters": "parameters", "tensor_gradients": "gradients",
    "tensor_optimizer_state": "optimizer state", "tensor_other": "activations and other tensors",
    "python_objects": "Python objects", "native_heap": "native heap", "malloc_free": "malloc's free",
    "file_torch": "torch's libraries", "file_cuda": "CUDA libraries",
    "file_python": "other shared objects", "file_data": "mapped data files", "stacks": "stacks",
    "instrument": "the instrument", "shared_memory": "shared memory", "unexplained": "unexplained",
}


def moment_label(m: Moment) -> str:
    """``start``, ``epoch 2``, ``peak e1 s350 backward``, ``end``: a moment in a few words."""
    if m.when == "epoch":
        return f"epoch {m.epoch}"
    if m.when == "peak":
        bits = [f"e{m.epoch}" if m.epoch else "", f"s{m.step}" if m.step is not None else "", m.phase or ""]
        return " ".join(["peak", *(b for b in bits if b)])
    return m.when


def main_process(m: Moment) -> ProcessComposition | None:
    """The stage's own process (the main process, or a rank's): the one read from inside, else
    the first (the record lists it first)."""
    inside = [p for p in m.processes if p.source == "inside"]
    return inside[0] if inside else (m.processes[0] if m.processes else None)


def _private(p: ProcessComposition) -> int:
    """What a process other than the main one adds to the tree: its USS (else PSS, else RSS)."""
    for v in (p.uss, p.pss):
        if v is not None:
            return v
    return p.rss


def private_parts(p: ProcessComposition) -> dict[str, float]:
    """``p``'s parts cut down to its private pages: its USS given to its anonymous parts first,
    what is left to its file-backed and shared-memory parts in proportion (module docstring)."""
    parts = p.parts.model_dump()
    budget = float(min(_private(p), p.rss))
    out = dict.fromkeys(PART_KEYS, 0.0)
    for keys in (_PRIVATE_FIRST, _SHARED_LAST):
        have = sum(max(parts[k], 0) for k in keys)
        if have <= 0 or budget <= 0:
            continue
        share = min(1.0, budget / have)
        for k in keys:
            out[k] = max(parts[k], 0) * share
        budget -= have * share
    return out


def tree_parts(m: Moment) -> dict[str, float]:
    """The moment's tree account: the main process whole, every other process's private pages."""
    main = main_process(m)
    out = dict.fromkeys(PART_KEYS, 0.0)
    for p in m.processes:
        own = {k: float(v) for k, v in p.parts.model_dump().items()} if p is main else private_parts(p)
        for k in PART_KEYS:
            out[k] += own.get(k, 0.0)
    return out


@dataclass(frozen=True)
class Entry:
    """One stage's (or rank's) moment: where it was taken, and the moment."""

    stage: str
    rank: int | None
    moment: Moment

    @property
    def label(self) -> str:
        return moment_label(self.moment)


def entries(run: Run) -> list[Entry]:
    """Every moment of the run, stage by stage (each rank's after its stage's own), in time order."""
    out: list[Entry] = []
    for st in run.stages:
        for s in [st, *st.ranks]:
            out += [Entry(st.name, m.rank if m.rank is not None else s.rank, m) for m in s.composition]
    return out


def _stage_entries(stage: Stage) -> list[Moment]:
    return sorted([*stage.composition, *(m for r in stage.ranks for m in r.composition)],
                  key=lambda m: m.t)


ACCOUNT_COLUMNS = ("stage", "moment", "when", "epoch", "step", "phase", "role", "pid", "source",
                   "rss", "pss", "uss", *PART_KEYS)


def account_table(run: Run) -> pd.DataFrame:
    """One row per process per moment, parts in bytes, and after each moment's processes its
    tree row (role :data:`TREE_ROLE`: the main process whole, the others' private pages; rss:
    their sum). The report's account table and account.csv."""
    rows = []
    for e in entries(run):
        m = e.moment
        where = {"stage": e.stage, "moment": e.label, "when": m.when, "epoch": m.epoch,
                 "step": m.step, "phase": m.phase}
        if e.rank is not None:
            where["rank"] = e.rank
        for p in m.processes:
            rows.append({**where, "role": p.role, "pid": p.pid, "source": p.source, "rss": p.rss,
                         "pss": p.pss, "uss": p.uss, **p.parts.model_dump()})
        if len(m.processes) > 1:
            tree = tree_parts(m)
            rows.append({**where, "role": TREE_ROLE, "pid": None, "source": "",
                         "rss": round(sum(tree.values())),
                         "pss": _sum_or_none(p.pss for p in m.processes), "uss": None,
                         **{k: round(v) for k, v in tree.items()}})
    cols = list(ACCOUNT_COLUMNS)
    if any("rank" in r for r in rows):
        cols.insert(1, "rank")
    return pd.DataFrame(rows, columns=cols)


def _sum_or_none(values: Iterable[int | None]) -> int | None:
    vals = list(values)
    return None if any(v is None for v in vals) else sum(v for v in vals if v is not None)


def start_groups(parts: Parts) -> list[tuple[str, int]]:
    """The start moment in :data:`START_GROUPS`' words: (what, bytes), in that order."""
    d = parts.model_dump()
    return [(name, sum(d[k] for k in keys)) for name, keys in START_GROUPS]


def grown(before: Parts, after: Parts, min_bytes: int = GREW_MIN_BYTES) -> list[tuple[str, int]]:
    """The parts that grew from ``before`` to ``after`` by ``min_bytes`` or more: (part key,
    bytes), largest first."""
    a, b = before.model_dump(), after.model_dump()
    out = [(k, b[k] - a[k]) for k in PART_KEYS if b[k] - a[k] >= min_bytes]
    return sorted(out, key=lambda kv: -kv[1])


def growth_words(items: list[tuple[str, int]]) -> str:
    """``+gradients 42.7 MiB, +activations and other tensors 30.1 MiB``."""
    return ", ".join(f"+{GROWTH_WORDS[k]} {v / MiB:,.1f} MiB" for k, v in items)


def phase_growth(run: Run) -> pd.DataFrame:
    """Per (stage, epoch, phase) holding a peak moment: which of the main process's parts grew
    since the moment before it (the previous moment of the same stage and rank), in words.
    Columns stage, epoch, phase, grew (and rank where the moments have one)."""
    rows = []
    for st in run.stages:
        by_rank: dict[int | None, list[Moment]] = {}
        for m in _stage_entries(st):
            by_rank.setdefault(m.rank, []).append(m)
        for rank, moments in by_rank.items():
            for prev, cur in zip(moments, moments[1:]):
                if cur.when != "peak" or cur.phase is None:
                    continue
                a, b = main_process(prev), main_process(cur)
                if a is None or b is None:
                    continue
                words = growth_words(grown(a.parts, b.parts))
                rows.append({"stage": st.name, "epoch": cur.epoch or 0, "phase": cur.phase,
                             "rank": rank, "grew": f"since {moment_label(prev)}: {words or 'nothing'}"})
    df = pd.DataFrame(rows, columns=["stage", "epoch", "phase", "rank", "grew"])
    # a phase with several peak moments: the last (highest) says it
    return df.drop_duplicates(["stage", "epoch", "phase", "rank"], keep="last")


def nearest(run: Run, stage: str, t: float, rank: int | None = None) -> Moment | None:
    """The stage's moment closest in time to ``t`` (of ``rank`` where given)."""
    found = [m for st in run.stages if st.name == stage for m in _stage_entries(st)
             if rank is None or m.rank == rank]
    return min(found, key=lambda m: abs(m.t - t)) if found else None


def sampled_growth(tk: pd.DataFrame) -> pd.DataFrame:
    """Per stage, for the phase holding the main process's largest RSS (the teardown aside),
    what the sampler saw grow from the last tick before that phase began to the peak tick: the
    anonymous and the file-backed and shared parts of RSS (``/proc/<pid>/status``). What the
    phases table says where no account moment was taken near the peak. Columns stage, epoch,
    phase, grew."""
    rows = []
    for stage, g in tk[tk["phase"] != "teardown"].dropna(subset=["main_rss"]).groupby("stage", sort=False):
        g = g.sort_values("t", kind="stable").reset_index(drop=True)
        i = int(g["main_rss"].idxmax())
        j = i
        while j > 0 and g.at[j - 1, "phase"] == g.at[i, "phase"]:
            j -= 1
        if j == 0:
            continue  # the stage began in that phase: nothing before it to compare with
        a, b = g.loc[j - 1], g.loc[i]
        if pd.isna(a["main_shared"]) or pd.isna(b["main_shared"]):
            continue
        shared = float(b["main_shared"] - a["main_shared"])
        anon = float(b["main_rss"] - a["main_rss"]) - shared
        words = ", ".join(f"{v / MiB:+,.1f} MiB {what}" for what, v in
                          (("anonymous", anon), ("file-backed and shared", shared)))
        if abs(anon) < GREW_MIN_BYTES and abs(shared) < GREW_MIN_BYTES:
            words = "level (the peak is a plateau reached before this phase)"
        rows.append({"stage": stage, "epoch": int(b["epoch"]), "phase": str(b["phase"]),
                     "grew": f"since {a['phase']} (sampled, step {int(a['step'])}): {words}"})
    return pd.DataFrame(rows, columns=["stage", "epoch", "phase", "grew"])
