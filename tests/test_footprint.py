"""The process tree's footprint counts a shared page once (issue 24, item 2): every process's
private pages (USS, its last reading carried forward by its RSS change since: USS is read one
process a tick in rotation) and the largest shared set (RSS − USS) of any one of them. Known
answers on the synthetic run (tests/_synthetic.py) and on a real tree of forked processes sharing
most of their pages with their parent."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pandas as pd
from _synthetic import MiB, write_run

from harness.analysis import findings
from harness.analysis.load import load_run
from harness.analysis.summary import build_summary
from harness.analysis.tables import phase_table
from harness.analysis.ticks import footprint, ticks
from harness.control.sampler import read_rollup, read_status
from harness.gate import metrics as m
from harness.gate.check import check
from harness.records.scenario import BudgetsConfig
from harness.render.terminal import summary_text


def test_footprint_of_the_synthetic_ticks_carries_each_uss_forward_by_rss(tmp_path: Path) -> None:
    # GIVEN the synthetic run, where at t 1002 no process was read (main last read at 1001: USS
    # 70, RSS 120, now RSS 150; worker 0: USS 10 of RSS 110)
    run = load_run(write_run(tmp_path))
    tk = ticks(run.samples)
    got = dict(zip(tk["t"], tk["tree_footprint"] / MiB))
    # THEN the footprint is the private pages summed plus the main process's shared set: at 1002
    # main 70 + 30 private and 50 shared, worker 0 its last 10 private (its shared pages nest in
    # the main's): the main RSS plus the workers' USS; at 1005 worker 0 leaving (RSS 0) counts
    # nothing, not a negative share
    assert got == {1000.0: 100, 1001.0: 130, 1002.0: 160, 1004.0: 144, 1005.0: 140,
                   1006.0: 172, 1007.0: 140}
    assert list(tk["tree_rss"] / MiB) == [100, 230, 260, 242, 240, 271, 140]
    # AND the summary's peak is the running one (172 MiB in backward), under the RSS sum's 271
    s = build_summary(run, tk, phase_table(run, tk), [], findings.all_findings(run, tk, []))
    assert s.peaks.footprint is not None and s.peaks.tree_rss is not None
    assert (s.peaks.footprint.bytes, s.peaks.footprint.phase, s.peaks.footprint.epoch) == (
        172 * MiB, "backward", 2)
    assert s.peaks.tree_rss.bytes == 271 * MiB  # peak_tree_rss keeps its meaning
    assert {(p.epoch, p.phase): p.footprint_max for p in s.phases}[(1, "forward")] == 144 * MiB
    # AND budgets and baselines carry it, run-wide and per phase
    got_m = m.from_summary(s)
    assert got_m["peak_footprint"] == 172 * MiB
    assert got_m["phases.backward.peak_footprint"] == 172 * MiB
    assert "peak_footprint" in m.for_baseline(got_m)
    res = check(got_m, budgets=BudgetsConfig.model_validate(
        {"peak_footprint": "170 MiB", "phases": {"forward": {"peak_footprint": "200 MiB"}}}))
    assert [(r.metric, r.status) for r in res.rows] == [
        ("peak_footprint", "FAIL"), ("phases.forward.peak_footprint", "pass")]
    # AND the terminal names each so they cannot be confused
    text = summary_text(s.to_dict(), Path("report.html"))
    assert ("  footprint  172 MiB (train, epoch 2, backward): the process tree, shared pages "
            "counted once\n") in text
    assert "summed over processes 271 MiB (train, epoch 2, backward)" in text


def test_a_tick_waits_until_every_process_is_read_since_the_tree_last_changed() -> None:
    # GIVEN a process holding 100 MiB, all private, that forks a child at t 2: from then on its
    # pages are shared, but its last reading (t 1) still says private until it is read again
    rows = pd.DataFrame([
        {"stage": "s", "t": 1.0, "pid": 1, "rss": 100, "uss": 100},
        {"stage": "s", "t": 2.0, "pid": 1, "rss": 100, "uss": None},
        {"stage": "s", "t": 2.0, "pid": 2, "rss": 90, "uss": None},
        {"stage": "s", "t": 3.0, "pid": 1, "rss": 100, "uss": None},
        {"stage": "s", "t": 3.0, "pid": 2, "rss": 90, "uss": 10},
        {"stage": "s", "t": 4.0, "pid": 1, "rss": 110, "uss": 20},
        {"stage": "s", "t": 4.0, "pid": 2, "rss": 90, "uss": None},
        {"stage": "s", "t": 5.0, "pid": 1, "rss": 110, "uss": None},
    ])
    got = footprint(rows)
    # THEN t 2 (the child unread) and t 3 (the parent's reading from before the fork, which would
    # count its 100 MiB as private and again as the child's shared 80) are left empty; at t 4:
    # private 20 + 10, shared max(90, 80); at t 5 the child has gone, the parent's reading is
    # from before: empty again
    assert got.isna().tolist() == [False, True, True, False, True]
    assert got.dropna().tolist() == [100, 120]


def test_each_rank_s_anonymous_pages_shared_with_its_workers_count_once_per_rank() -> None:
    # GIVEN two torchrun ranks (exec'd: they share libraries, not anonymous memory), each 500 MiB
    # RSS: 100 private, 200 anonymous shared with its one forked worker, 200 of libraries; each
    # worker 250 RSS, 20 of it its own
    rows = pd.DataFrame([
        {"stage": "s", "t": 1.0, "pid": pid, "role": role, "rss": rss, "uss": uss, "rss_anon": anon}
        for pid, role, rss, uss, anon in [(1, "main", 500, 100, 300), (2, "worker 0", 250, 20, 220),
                                          (3, "main", 500, 100, 300), (4, "worker 0", 250, 20, 220)]])
    # THEN private 240, each rank's anonymous shared 200 (both), the libraries once: 840
    assert footprint(rows).tolist() == [840]
    # (without the anonymous part known, every shared set nests in the largest: 640)
    assert footprint(rows.drop(columns="rss_anon")).tolist() == [640]


def _touched(nbytes: int) -> bytearray:
    buf = bytearray(nbytes)
    for i in range(0, nbytes, 4096):
        buf[i] = 1  # each page written: anonymous, private until a fork shares it
    return buf


def test_forked_children_sharing_the_parent_s_pages_add_little_to_the_footprint() -> None:
    # GIVEN a parent holding 64 MiB of written pages and three forked children that only sleep:
    # every page of theirs is one of the parent's, shared copy-on-write
    held = _touched(64 * MiB)
    children = []
    for _ in range(3):
        pid = os.fork()
        if pid == 0:  # the child: share, write nothing, wait to be ended
            signal.pthread_sigmask(signal.SIG_BLOCK, [])
            time.sleep(30)
            os._exit(0)
        children.append(pid)
    try:
        time.sleep(0.2)
        rows = []
        for pid in [os.getpid(), *children]:
            status, rollup = read_status(pid), read_rollup(pid)
            assert status is not None and rollup is not None
            rows.append({"stage": "s", "t": 1.0, "pid": pid, "rss": status[b"VmRSS"], "uss": rollup[0],
                         "pss": rollup[1]})
        df = pd.DataFrame(rows)
        rss_sum = int(df["rss"].sum())
        foot = int(footprint(df).iloc[0])
        pss_sum = int(df["pss"].sum())
        parent_rss = int(df["rss"].iloc[0])
    finally:
        for pid in children:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    del held
    # THEN the RSS sum counts the 64 MiB four times; the footprint once: the parent's RSS and the
    # children's few private pages (the pages the fork and the sleep wrote: < 4 MiB each)
    assert rss_sum >= 4 * 64 * MiB
    assert parent_rss <= foot <= parent_rss + 3 * 4 * MiB
    assert rss_sum - foot >= 3 * 64 * MiB
    # the sum of PSS would also count the 64 MiB once, but it divides the parent's library pages
    # with every other process on the machine that maps them: never above the footprint
    assert pss_sum <= foot


def test_a_worker_mapping_its_parents_pages_after_its_reading_adds_nothing() -> None:
    # GIVEN a main process (RSS 700, USS 500 MiB) and a forked worker read once at RSS 100 MiB,
    # USS 10 MiB, whose RSS then rises to 400 MiB by reading memory it inherited (shared pages)
    import pandas as pd

    from harness.analysis.ticks import footprint

    rows = [("train", 1.0, 1, "main", 700, 500), ("train", 1.0, 2, "worker 0", 100, 10),
            ("train", 2.0, 1, "main", 700, None), ("train", 2.0, 2, "worker 0", 400, None),
            ("train", 3.0, 1, "main", 720, None), ("train", 3.0, 2, "worker 0", 400, None)]
    s = pd.DataFrame(rows, columns=["stage", "t", "pid", "role", "rss", "uss"])
    s[["rss", "uss"]] = s[["rss", "uss"]].astype("float64") * MiB
    got = footprint(s) / MiB
    # THEN the worker counts its 10 private MiB, not the 300 it mapped since; the main process's
    # own growth (+20) is private until another process maps it
    assert list(got) == [710, 710, 730]
