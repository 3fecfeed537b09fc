"""The account (issue 24, items 3 and 4): each process's parts at each moment, the tree's with
shared pages counted once, the "before the first step" breakdown, the RSS-versus-heap finding
written from it, and which parts grew in the phase holding the peak. Known answers on the
synthetic run (tests/_synthetic.py) with a composition.jsonl written here, MiB throughout:

    start    t 1000.2  main 100 = torch 40, python .so 10, Python objects 12, native 8,
                       parameters 5, malloc free 6, stacks 1, instrument 3, unexplained 15
    peak     t 1002.0  e1 s2 backward: main 150 (+gradients 5, +other tensors 30, +malloc free
                       9, +unexplained 6); worker 0 from outside: RSS 110, USS 10 = torch 40,
                       python .so 10, shared memory 4, unexplained 56
    epoch 2  t 1006.5  main 160 (+optimizer state 10, other tensors 40, unexplained 11)
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from _synthetic import MiB, write_run

from harness.analysis import account, findings
from harness.analysis.captures import CaptureData, Window
from harness.analysis.load import Capture, Run, load_run
from harness.analysis.tables import phase_table
from harness.analysis.ticks import ticks
from harness.layout import COMPOSITION_FILE
from harness.records.composition import PART_KEYS, PARTS, Moment
from harness.render import account as account_view

START = {"file_torch": 40, "file_python": 10, "python_objects": 12, "native_heap": 8,
         "tensor_parameters": 5, "malloc_free": 6, "stacks": 1, "instrument": 3, "unexplained": 15}
PEAK = {**START, "tensor_gradients": 5, "tensor_other": 30, "malloc_free": 15, "unexplained": 21}
EPOCH2 = {**PEAK, "tensor_optimizer_state": 10, "tensor_other": 40, "unexplained": 11}
WORKER = {"file_torch": 40, "file_python": 10, "shared_memory": 4, "unexplained": 56}


def _process(pid: int, role: str, source: str, parts: dict[str, int], **extra: int) -> dict[str, Any]:
    return {"pid": pid, "role": role, "source": source, "rss": sum(parts.values()) * MiB,
            "parts": {k: v * MiB for k, v in parts.items()}, **{k: v * MiB for k, v in extra.items()}}


MOMENTS = [
    {"when": "start", "stage": "train", "t": 1000.2, "processes": [_process(100, "main", "inside", START)]},
    {"when": "peak", "stage": "train", "t": 1002.0, "epoch": 1, "step": 2, "phase": "backward",
     "processes": [_process(100, "main", "inside", PEAK),
                   _process(201, "worker 0", "outside", WORKER, uss=10, pss=60)]},
    {"when": "epoch", "stage": "train", "t": 1006.5, "epoch": 2, "phase": "idle",
     "processes": [_process(100, "main", "inside", EPOCH2)]},
]


def write_account(run_dir: Path) -> Path:
    with open(run_dir / "stages" / "train" / COMPOSITION_FILE, "w", encoding="utf-8") as fh:
        for m in MOMENTS:
            fh.write(Moment.model_validate(m).model_dump_json() + "\n")
    return run_dir


@pytest.fixture
def run(tmp_path: Path) -> Run:
    return load_run(write_account(write_run(tmp_path)))


def test_every_process_at_every_moment_adds_up_and_the_tree_counts_shared_pages_once(run: Run) -> None:
    df = account.account_table(run)
    assert list(zip(df["moment"], df["role"])) == [
        ("start", "main"), ("peak e1 s2 backward", "main"), ("peak e1 s2 backward", "worker 0"),
        ("peak e1 s2 backward", account.TREE_ROLE), ("epoch 2", "main")]
    for r in df.to_dict("records"):
        assert sum(r[k] for k in PART_KEYS) == r["rss"]
    # the tree: the main process whole (150) and the worker's 10 MiB of private pages, all of them
    # its anonymous memory (here unexplained: read from outside), none of its libraries' pages
    tree = df[df["role"] == account.TREE_ROLE].iloc[0]
    assert tree["rss"] == 160 * MiB
    assert (tree["file_torch"], tree["shared_memory"], tree["unexplained"]) == (40 * MiB, 0, 31 * MiB)
    assert pd.isna(tree["pss"])  # the main process's PSS was not read at that moment


def test_a_worker_whose_private_pages_outgrow_its_anonymous_memory_gives_the_rest_to_its_files() -> None:
    m = Moment.model_validate({**MOMENTS[1], "processes": [
        MOMENTS[1]["processes"][0], _process(201, "worker 0", "outside", WORKER, uss=66)]})
    got = account.private_parts(m.processes[1])
    # 56 MiB anonymous whole, the 10 left over split over torch 40 : python 10 : shm 4
    assert got["unexplained"] == 56 * MiB
    assert got["file_torch"] == pytest.approx(10 * MiB * 40 / 54)
    assert sum(got.values()) == pytest.approx(66 * MiB)


def test_the_start_moment_is_broken_down_in_a_newcomer_s_words(run: Run) -> None:
    v = account_view.view(account.account_table(run))
    assert v is not None
    assert v.start_total == 100 * MiB
    got = {what: n for what, n, _ in v.start}
    assert v.start[0][2].startswith("torch's libraries 40.0 MiB, CUDA libraries 0.0 MiB, Python and")
    assert got["imports and libraries"] == (40 + 10 + 12 + 8) * MiB
    assert got["model (parameters)"] == 5 * MiB and got["held free by malloc"] == 6 * MiB
    assert got["unexplained"] == 15 * MiB
    assert sum(got.values()) == 100 * MiB
    # one colour per part, the same table for every bar; bars share one scale (the widest 160)
    assert [c for _, c in v.legend] == [account_view.COLOURS[k] for k, _, _ in PARTS]
    tree_bar = v.bars[3]
    assert sum(s.width for s in tree_bar.segments) == pytest.approx(100.0)
    assert sum(s.width for s in v.bars[0].segments) == pytest.approx(100.0 * 100 / 160)


def test_the_rss_heap_gap_is_told_from_the_account(run: Run) -> None:
    # GIVEN a windowed capture of epoch 2 whose largest RSS (160 MiB, t 1006.0) had a 50 MiB heap
    cap = Capture("train", "train-e2-train", Path("x.bin"), None, 1)
    data = CaptureData(cap, Window(2, None, 0, 5, 1005.0, 1006.9), pid=100,
                       memray_samples=[(1005.1, 130 * MiB, 40 * MiB), (1006.0, 160 * MiB, 50 * MiB)])
    f = findings.rss_heap_gap(ticks(run.samples), [data], run)
    assert f is not None
    # THEN the epoch-2 account (0.5 s away) says what the 110 MiB are: the heap taken from the
    # other tensors (40) and Python objects (10 of 12); the rest part by part, largest first
    assert f.text.startswith(
        "110.0 MiB are not in the heap: 40.0 MiB torch's libraries, 20.0 MiB tensors allocated "
        "before the capture (parameters 5.0 MiB, gradients 5.0 MiB, optimizer state 10.0 MiB), "
        "15.0 MiB held free by malloc, 10.0 MiB Python and other shared objects, 8.0 MiB native "
        "heap in use (libraries' malloc) outside the heap, 3.0 MiB the instrument (memray, the "
        "probe), 2.0 MiB Python objects outside the heap, 1.0 MiB thread stacks, 11.0 MiB "
        "unexplained.")
    assert "memray's peak heap inside the capture windows (50.0 MiB)" in f.text
    assert sum(f.numbers["not_in_heap"].values()) == 110 * MiB
    # without an account, the old explanation from the sampler's figures stands
    bare = findings.rss_heap_gap(ticks(run.samples), [data], None)
    assert bare is not None and "of RSS is not live heap" in bare.text


def test_the_phase_holding_the_peak_says_which_parts_grew(run: Run) -> None:
    df = phase_table(run)
    grew = {(r.epoch, r.phase): r.parts_grown for r in df.itertuples() if isinstance(r.parts_grown, str)}
    assert grew == {(1, "backward"): "since start: +activations and other tensors 30.0 MiB, "
                                     "+malloc's free 9.0 MiB, +unexplained 6.0 MiB, +gradients 5.0 MiB",
                    # the main process's peak (160 MiB, epoch 2), where no moment was taken: the
                    # sampler's view from the last tick of the phase before (130 MiB, forward)
                    (2, "backward"): "since forward (sampled, step 1): +30.0 MiB anonymous, "
                                     "+0.0 MiB file-backed and shared"}
    # the peak_phase finding names the main process's peak (160 MiB, epoch 2 backward): no
    # account moment there; with one in that phase it says what grew
    f = findings.peak_phase(ticks(run.samples), run)
    assert f is not None and f.numbers["parts_grown"] is None
    MOMENTS[1].update(epoch=2, t=1006.0)
    try:
        moved = load_run(write_account(run.dir))
    finally:
        MOMENTS[1].update(epoch=1, t=1002.0)
    f = findings.peak_phase(ticks(moved.samples), moved)
    assert f is not None and f.numbers["parts_grown"].startswith("since start: +activations")
    assert "In the account, backward grew since start: +activations and other tensors 30.0 MiB" in f.text


def test_the_report_draws_the_account_and_writes_its_table(run: Run) -> None:
    from harness.report.build import build_report

    res = build_report(run.dir, processes=1, flamegraphs=False)
    page = res.html.read_text(encoding="utf-8")
    assert page.index('id="account"') < page.index("<h2>Findings</h2>")
    assert "Before the first step" in page
    assert page.count('<svg class="stack"') == 5
    assert f'fill="{account_view.COLOURS["tensor_gradients"]}"' in page
    with open(res.tables["account"], newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["rss"]) for r in rows] == [100 * MiB, 150 * MiB, 110 * MiB, 160 * MiB, 160 * MiB]
    summary = res.summary.read_text(encoding="utf-8")
    assert '"footprint"' in summary


def test_a_torchrun_run_s_account_is_per_rank(tmp_path: Path) -> None:
    import _synthetic_ranks

    from harness.analysis import ranks

    # GIVEN two ranks, each with a start and a peak moment in backward (rank 1's gradients grow
    # by 8 MiB, rank 0's by 4)
    run_dir = _synthetic_ranks.write_run(tmp_path)
    for rank in (0, 1):
        with open(run_dir / "stages" / "train" / f"rank{rank}" / COMPOSITION_FILE, "w", encoding="utf-8") as fh:
            for m in (MOMENTS[0], {**MOMENTS[1], "processes": [_process(
                    100 + rank, f"rank {rank}", "inside", {**PEAK, "tensor_gradients": 4 + 4 * rank,
                                                           "tensor_other": 0})]}):
                fh.write(Moment.model_validate({**m, "rank": rank}).model_dump_json() + "\n")
    run = load_run(run_dir)
    # THEN the account table has a rank column, each rank's moments apart ...
    df = account.account_table(run)
    assert list(zip(df["rank"], df["moment"])) == [
        (0, "start"), (0, "peak e1 s2 backward"), (1, "start"), (1, "peak e1 s2 backward")]
    # ... and each rank's phases table says what grew in its own process
    phases = ranks.phase_table(run, ranks.views(run))
    grew = phases[phases["parts_grown"].str.startswith("since start", na=False)]
    assert [(r.rank, r.epoch, r.phase) for r in grew.itertuples()] == [(0, 1, "backward"), (1, 1, "backward")]
    assert "+gradients 8.0 MiB" in grew["parts_grown"].iloc[1]
