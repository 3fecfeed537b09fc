"""What one composition moment costs, for a process of ~800 MB and one of ~4 GB (issue 24).

Each size runs in a fresh process (``--child``) that imports torch, builds a ResNet-18 with Adam
state (so the tensor census has real work), then allocates and touches the rest of the target
RSS in a mix of the process's own kinds of memory: CPU tensors (most of it), small Python
objects, and malloc'd chunks freed into an arena. It then times, ``--repeat`` times each:

- ``smaps``: reading and parsing ``/proc/self/smaps`` in full;
- ``census``: the tensor census (a GC walk; an epoch moment reuses the snapshot's);
- ``inside``: the process's whole split given the census (smaps, pymalloc, mallinfo2, mincore);
- ``moment``: a whole ``start`` moment as the probe takes it (census, inside, its children);
- ``statm``: the per-step peak check (:class:`harness.probe.composition.RssWatch.passed`), in
  microseconds, over 100,000 calls.

Prints a table (median and max seconds) and writes bench/out/composition_cost.json.

    python bench/composition_cost.py [--sizes 800,4000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from _common import REPO, machine, table, write_result

MB = 1_000_000


def child(target_mb: int, repeat: int) -> dict[str, Any]:
    sys.path.insert(0, str(REPO))
    import torch
    import torchvision

    from harness.probe import composition as comp

    model = torchvision.models.resnet18(num_classes=10)
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(8, 3, 32, 32)).sum().backward()
    opt.step()
    watch = comp.RssWatch()
    rss = watch.rss()
    rest = max(target_mb * MB - rss, 0)
    # a tenth as Python objects, a tenth as malloc'd chunks freed into the arena, the rest tensors
    objects = [(i, str(i)) for i in range(rest // 10 // 140)]
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = (ctypes.c_size_t,)
    libc.free.argtypes = (ctypes.c_void_p,)
    chunks = [libc.malloc(64 * 1024) for _ in range(rest // 10 // (64 * 1024) + 1)]
    for p in chunks:
        ctypes.memset(p, 1, 64 * 1024)
    for p in chunks[:-1]:
        libc.free(p)
    tensors = [torch.ones(8 * MB // 4) for _ in range(int(rest * 0.8) // (8 * MB))]
    reached = watch.rss()

    def timeit(fn: Any) -> list[float]:
        out = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
        return out

    census = comp.cpu_storages(model, opt)
    stage_dir = tempfile.mkdtemp(prefix="composition-cost-")
    times = {
        "smaps": timeit(comp.read_smaps),
        "census": timeit(lambda: comp.cpu_storages(model, opt)),
        "inside": timeit(lambda: comp.inside("main", census)),
        "moment": timeit(lambda: comp.take("start", stage="bench", stage_dir=stage_dir,
                                           storages=comp.cpu_storages(model, opt))),
    }
    n = 100_000
    t0 = time.perf_counter()
    for _ in range(n):
        watch.passed()
    statm_us = (time.perf_counter() - t0) / n * 1e6
    got = comp.inside("main", census)
    del objects, tensors
    return {"target_mb": target_mb, "rss_mb": reached / MB, "mappings": len(comp.read_smaps()),
            "times_s": times, "statm_us": statm_us,
            "unexplained_share": got.parts.unexplained / got.rss}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="800,4000", help="target RSS in MB, comma-separated")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.repeat)))
        return 0
    results = []
    for size in (int(s) for s in args.sizes.split(",")):
        proc = subprocess.run([sys.executable, __file__, "--child", str(size), "--repeat",
                               str(args.repeat)], capture_output=True, text=True, check=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    rows = []
    for r in results:
        row: list[Any] = [r["target_mb"], f"{r['rss_mb']:.0f}", r["mappings"]]
        for key in ("smaps", "census", "inside", "moment"):
            t = r["times_s"][key]
            row.append(f"{statistics.median(t):.3f} / {max(t):.3f}")
        row += [f"{r['statm_us']:.2f}", f"{100 * r['unexplained_share']:.1f}%"]
        rows.append(row)
    print(table(rows, ["target MB", "RSS MB", "mappings", "smaps s (med/max)",
                       "census s", "inside s", "moment s", "statm us/step", "unexplained"]))
    path = write_result("composition_cost", {"machine": machine(), "repeat": args.repeat,
                                             "results": results})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
