"""What the sampler costs: its CPU per tick and the slowdown of the process tree it watches.

A synthetic tree stands in for a DataLoader training run: a main process holding ~800 MB (touched,
so every page is mapped) that maps and unmaps a shared-memory "batch" every step, as the main
process does with each batch its workers send, plus two workers forked from it (sharing its pages
copy-on-write, so walking their page tables costs as much) that compute and map batches too. The
main process times its steps; the sampler in this process watches the tree meanwhile.

Sampler variants, at the default rates (25 Hz RSS, 1 Hz USS/PSS) unless named:

- ``none``: no sampler, the reference;
- ``old``: the tick as it was before (psutil ``memory_info`` of every process every tick,
  ``memory_full_info`` of every process together once a second, a CSV row formatted per row);
- ``new-together``: the new tick (``/proc/<pid>/status``, Parquet parts) with every process's
  ``smaps_rollup`` still read in one tick;
- ``new``: the new tick with ``smaps_rollup`` read for one process a tick in rotation (shipped);
- ``new-fast``: the new tick with USS/PSS off (``full_hz`` 0.001): the fast tick alone.

Order in each round: none, old, new-together, new, new-fast, then the same backwards (ABBA), so a
drift of the machine within a round falls alike on every variant. Each variant's slowdown is its
mean step time over the round's ``none`` mean. Prints a table and writes bench/out/sampler_cost.json.

    python bench/sampler_cost.py [--seconds 8] [--rounds 3] [--main-mb 800]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import mmap
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil
from _common import REPO, machine, table, write_result

sys.path.insert(0, str(REPO))
from harness.control.sampler import TreeSampler  # noqa: E402
from harness.probe.processes import Roles, tree_of  # noqa: E402

BATCH = 64 * 3 * 32 * 32 * 4  # one CIFAR-10 batch of 64 float32 images: 786 KB
VARIANTS = ("none", "old", "new-together", "new", "new-fast")


# ---- the target tree ---------------------------------------------------------------------------


def _batch_step(view: memoryview, i: int, work: int) -> None:
    """One step: map a shared batch, fill it, hash ``work`` batches' worth of the big buffer
    (a few ms, reading pages all over it), unmap."""
    m = mmap.mmap(-1, BATCH)  # MAP_SHARED | MAP_ANONYMOUS: shared memory, as torch's batches are
    m.write(bytes(BATCH))
    span = work * BATCH
    off = (i * span) % (len(view) - span)
    hashlib.sha1(view[off:off + span]).digest()
    m.close()


def target(main_mb: int) -> None:
    """The tree's main process: reads commands on stdin, ``go SECONDS`` -> mean step ms, count."""
    big = bytearray(main_mb << 20)
    for i in range(0, len(big), 4096):
        big[i] = 1
    view = memoryview(big)
    for _ in range(2):
        if os.fork() == 0:  # a worker: its own steps, a little slower, forever
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            j = 0
            while True:  # a worker preparing batches, half its time waiting
                _batch_step(view, j, 4)
                j += 1
                time.sleep(0.01)
    print("ready", flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if not cmd:
            continue
        if cmd[0] == "go":
            end = time.perf_counter() + float(cmd[1])
            steps: list[float] = []
            i = 0
            while (t0 := time.perf_counter()) < end:
                _batch_step(view, i, 16)
                steps.append(time.perf_counter() - t0)
                i += 1
            steps.sort()
            p99 = steps[int(0.99 * (len(steps) - 1))]
            print(f"{1000 * statistics.fmean(steps):.4f} {1000 * p99:.4f} {len(steps)}", flush=True)
        elif cmd[0] == "quit":
            break


# ---- the old tick, as it was (harness/control/sampler.py before the samples folder) -----------------


class OldSampler(threading.Thread):
    """The pre-change tick: psutil objects, all processes' smaps_rollup in one tick, CSV rows."""

    def __init__(self, root: int, path: Path, rss_hz: float, full_hz: float) -> None:
        super().__init__(daemon=True)
        self.root, self.path = root, path
        self.interval, self.full_interval = 1.0 / rss_hz, 1.0 / full_hz
        self.halt = threading.Event()
        self.procs: dict[int, psutil.Process] = {}
        self.roles = Roles(root)
        self.ticks = 0
        self.max_tick_s = 0.0

    def run(self) -> None:
        next_full = time.monotonic()
        with open(self.path, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            last_flush = time.monotonic()
            while True:
                start = time.monotonic()
                full = start >= next_full
                if full:
                    next_full = max(next_full + self.full_interval, start)
                self.tick(writer, full)
                now = time.monotonic()
                self.max_tick_s = max(self.max_tick_s, now - start)
                if now - last_flush > 0.5:
                    fh.flush()
                    last_flush = now
                if self.halt.wait(max(0.0, self.interval - (now - start))):
                    break

    def tick(self, writer: Any, full: bool) -> None:
        t = time.time()
        for pid, ppid in tree_of(self.root):
            proc = self.procs.get(pid)
            if proc is None:
                try:
                    proc = self.procs[pid] = psutil.Process(pid)
                    proc.create_time()
                except psutil.NoSuchProcess:
                    continue
            try:
                mem = proc.memory_info()
                fmem = proc.memory_full_info() if full else None
            except psutil.Error:
                continue
            role = self.roles.role(pid, ppid)
            writer.writerow((
                f"{t:.4f}", pid, ppid, role, mem.rss, mem.vms, mem.shared, mem.text, mem.data,
                fmem.uss if fmem else "", getattr(fmem, "pss", "") if fmem else "",
                getattr(fmem, "swap", "") if fmem else "", "train", "1", "10", "forward", "", "",
            ))
        self.ticks += 1


# ---- one measurement -----------------------------------------------------------------------------


def measure(proc: subprocess.Popen[str], variant: str, seconds: float, workdir: Path) -> dict[str, Any]:
    assert proc.stdin is not None and proc.stdout is not None
    sampler: Any = None
    if variant == "old":
        sampler = OldSampler(proc.pid, workdir / "samples.csv", 25, 1)
    elif variant != "none":
        full_hz = 0.001 if variant == "new-fast" else 1.0
        sampler = TreeSampler(proc.pid, "train", workdir / f"samples-{variant}-{time.time_ns()}",
                              None, 25, full_hz, rotate=variant != "new-together")
    clock = ticks0 = cpu0 = 0
    if sampler is not None:
        sampler.start()
        time.sleep(0.3)  # past the first ticks, which read every new process
        # The sampler thread's own CPU clock, read over the steps alone: not its first look at
        # every process nor its last.
        clock = time.pthread_getcpuclockid(sampler.ident)
        ticks0, cpu0 = _ticks(sampler), time.clock_gettime(clock)
    proc.stdin.write(f"go {seconds}\n")
    proc.stdin.flush()
    mean_ms, p99_ms, steps = proc.stdout.readline().split()
    out: dict[str, Any] = {"variant": variant, "step_ms": float(mean_ms), "p99_ms": float(p99_ms),
                           "steps": int(steps)}
    if sampler is not None:
        cpu_s, ticks = time.clock_gettime(clock) - cpu0, _ticks(sampler) - ticks0
        if isinstance(sampler, TreeSampler):
            sampler.stop()
            sampler.join()
            out.update(max_tick_ms=1000 * sampler.stats.max_tick_s, full_hz=sampler.stats.full_hz())
        else:
            sampler.halt.set()
            sampler.join()
            out.update(max_tick_ms=1000 * sampler.max_tick_s)
        out.update(ticks=ticks, cpu_s=cpu_s, cpu_ms_per_tick=1000 * cpu_s / max(ticks, 1))
    return out


def _ticks(sampler: Any) -> int:
    return int(sampler.stats.ticks if isinstance(sampler, TreeSampler) else sampler.ticks)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=8.0, help="each measurement (default 8)")
    ap.add_argument("--rounds", type=int, default=3, help="ABBA rounds (default 3)")
    ap.add_argument("--main-mb", type=int, default=800, help="the main process's memory (default 800)")
    ap.add_argument("--target", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.target:
        target(args.main_mb)
        return 0
    proc = subprocess.Popen([sys.executable, __file__, "--target", "--main-mb", str(args.main_mb)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    results: list[dict[str, Any]] = []
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            sys.exit("the target tree did not start")
        with tempfile.TemporaryDirectory() as tmp:
            measure(proc, "none", 2.0, Path(tmp))  # warm-up
            order = [*VARIANTS, *reversed(VARIANTS)]
            for r in range(args.rounds):
                for v in order:
                    res = measure(proc, v, args.seconds, Path(tmp))
                    res["round"] = r
                    results.append(res)
                    print(f"round {r} {v:13s} step {res['step_ms']:.3f} ms"
                          + (f", sampler {res['cpu_ms_per_tick']:.3f} ms CPU/tick" if "ticks" in res else ""),
                          flush=True)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    summary = []
    for v in VARIANTS:
        ratios, cpu, max_tick, p99 = [], [], [], []
        for r in range(args.rounds):
            ref = statistics.fmean(x["step_ms"] for x in results if x["round"] == r and x["variant"] == "none")
            mine = [x for x in results if x["round"] == r and x["variant"] == v]
            ratios.append(statistics.fmean(x["step_ms"] for x in mine) / ref)
            cpu += [x["cpu_ms_per_tick"] for x in mine if "cpu_ms_per_tick" in x]
            p99 += [x["p99_ms"] for x in mine]
            max_tick += [x["max_tick_ms"] for x in mine if "max_tick_ms" in x]
        summary.append({
            "variant": v, "slowdown_mean": statistics.fmean(ratios),
            "slowdown_min": min(ratios), "slowdown_max": max(ratios), "runs": 2 * args.rounds,
            "step_p99_ms": statistics.fmean(p99),
            "cpu_ms_per_tick": statistics.fmean(cpu) if cpu else None,
            "max_tick_ms": max(max_tick) if max_tick else None,
        })
    rows = [[s["variant"], f"{s['slowdown_mean']:.3f}", f"{s['slowdown_min']:.3f}-{s['slowdown_max']:.3f}",
             s["runs"], f"{s['step_p99_ms']:.2f}", "" if s["cpu_ms_per_tick"] is None else f"{s['cpu_ms_per_tick']:.3f}",
             "" if s["max_tick_ms"] is None else f"{s['max_tick_ms']:.1f}"] for s in summary]
    print()
    print(table(rows, ["variant", "step slowdown", "range over rounds", "runs", "step p99 ms",
                       "sampler CPU ms/tick", "max tick ms"]))
    path = write_result("sampler_cost", {
        "machine": machine(), "seconds": args.seconds, "rounds": args.rounds, "main_mb": args.main_mb,
        "summary": summary, "runs": results,
    })
    print(f"\nwritten: {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
