"""What a DataLoader worker's own memray window costs (memray.workers, harness/probe/workers.py).

One process, the live probe over a stage directory of its own, no sampler: a loader whose
workers decode and augment JPEG-like samples (an in-memory JPEG decoded by torchvision, cropped,
flipped, normalised: the baseline's per-sample work), iterated epoch after epoch, ABBA (off, on,
on, off) for each worker count, in one invocation. Each epoch runs ``--batches`` batches; the
worker window is the main one (``memray.train_start``..+``train_steps``, every epoch), so "on"
tracks those batches in every worker. Printed and written to bench/out/worker_tracking.json:
per worker count, the loader's batches/s inside the window and over the whole epoch, on and off,
their ratio, and each worker capture's size.

    python bench/worker_tracking.py [--workers 1 2 4] [--batches 400] [--batch-size 32]
        [--start 100] [--steps 150] [--sets 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from _common import machine, table, write_result  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

from harness.layout import CELL_FILE, MEMRAY_DIR, PROBE_CONFIG_FILE, STAGE_DIR_ENV  # noqa: E402
from harness.probe import cell as cellmod  # noqa: E402
from harness.probe.live import LiveProbe  # noqa: E402
from harness.records.probe_config import ProbeConfig  # noqa: E402
from harness.records.scenario import CudaConfig, MemrayConfig, TensorsConfig  # noqa: E402


def _jpeg() -> bytes:
    from torchvision.io import encode_jpeg

    g = torch.Generator().manual_seed(0)
    image = (torch.rand(3, 32, 32, generator=g) * 255).to(torch.uint8)
    return bytes(encode_jpeg(image).numpy().tobytes())


class Jpegs(Dataset[torch.Tensor]):
    """Each sample: one 32x32 JPEG decoded, padded-cropped, maybe flipped, normalised."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.data = torch.frombuffer(bytearray(_jpeg()), dtype=torch.uint8)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        from torchvision.io import decode_jpeg

        x = decode_jpeg(self.data).float() / 255.0
        x = torch.nn.functional.pad(x, (4, 4, 4, 4))
        dx, dy = i % 8, (i // 8) % 8
        x = x[:, dy:dy + 32, dx:dx + 32]
        if i % 2:
            x = x.flip(2)
        return (x - 0.5) / 0.25


def _stage(root: Path, on: bool, start: int, steps: int) -> Path:
    cfg = ProbeConfig(stage="train", device="cpu",
                      memray=MemrayConfig(train_start=start, train_steps=steps, epochs="every",
                                          workers=on),
                      tensors=TensorsConfig(trace_steps=0, trace_every=0, snapshots=False),
                      cuda=CudaConfig())
    root.mkdir(parents=True)
    (root / PROBE_CONFIG_FILE).write_text(json.dumps(cfg.model_dump(mode="json")))
    cellmod.create(root / CELL_FILE)
    return root


def one(root: Path, on: bool, workers: int, args: argparse.Namespace) -> dict[str, Any]:
    """One configuration: ``args.epochs`` epochs of ``args.batches`` batches; the last epoch timed."""
    stage = _stage(root, on, args.start, args.steps)
    os.environ[STAGE_DIR_ENV] = str(stage)
    probe = LiveProbe(stage)
    window = (args.start, args.start + args.steps)
    dl = DataLoader(Jpegs(args.batches * args.batch_size), batch_size=args.batch_size,
                    num_workers=workers, persistent_workers=True)
    result: dict[str, Any] = {}
    try:
        for epoch in range(1, args.epochs + 1):
            stamps = []
            with probe.epoch(epoch):
                t0 = time.perf_counter()
                for _ in probe.iterate(dl):
                    stamps.append(time.perf_counter())
            inside = stamps[window[1] - 1] - stamps[window[0] - 1]
            result = {"epoch_s": stamps[-1] - t0, "window_s": inside,
                      "epoch_batches_per_s": len(stamps) / (stamps[-1] - t0),
                      "window_batches_per_s": (window[1] - window[0]) / inside}
        del dl
    finally:
        probe.close()
        os.environ.pop(STAGE_DIR_ENV, None)
    captures = sorted((stage / MEMRAY_DIR).glob("*-w*.bin.*")) if (stage / MEMRAY_DIR).is_dir() else []
    result["worker_captures"] = len(captures)
    result["worker_capture_bytes"] = sum(p.stat().st_size for p in captures)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--batches", type=int, default=400, help="batches an epoch (default 400)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2, help="epochs a configuration; the last is timed")
    parser.add_argument("--start", type=int, default=100, help="memray.train_start (default 100)")
    parser.add_argument("--steps", type=int, default=150, help="memray.train_steps (default 150)")
    parser.add_argument("--sets", type=int, default=1, help="ABBA sets per worker count (default 1)")
    args = parser.parse_args()
    if args.start < 1 or args.start + args.steps > args.batches:
        parser.error("the window must fall inside the epoch, after its first batch")
    runs: dict[int, dict[str, list[dict[str, Any]]]] = {}
    with tempfile.TemporaryDirectory(prefix="worker-tracking-") as tmp:
        n = 0
        for workers in args.workers:
            got: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
            for _ in range(args.sets):
                for on in (False, True, True, False):  # ABBA
                    n += 1
                    r = one(Path(tmp) / str(n), on, workers, args)
                    got["on" if on else "off"].append(r)
                    print(f"workers {workers} {'on ' if on else 'off'}: window "
                          f"{r['window_batches_per_s']:.1f} batches/s, epoch "
                          f"{r['epoch_batches_per_s']:.1f} batches/s", flush=True)
            runs[workers] = got
    rows = []
    summary = {}
    for workers, got in runs.items():
        mean = {k: {m: statistics.mean(r[m] for r in v) for m in ("window_batches_per_s",
                                                                 "epoch_batches_per_s", "window_s",
                                                                 "epoch_s")} for k, v in got.items()}
        window_ratio = mean["off"]["window_batches_per_s"] / mean["on"]["window_batches_per_s"]
        epoch_ratio = mean["on"]["epoch_s"] / mean["off"]["epoch_s"]
        extra = mean["on"]["window_s"] - mean["off"]["window_s"]
        size = statistics.mean(r["worker_capture_bytes"] for r in got["on"])
        summary[workers] = {"mean": mean, "window_slowdown": window_ratio, "epoch_ratio": epoch_ratio,
                            "extra_window_s": extra, "extra_s_per_worker_window": extra / workers,
                            "worker_capture_bytes": size, "runs": got}
        rows.append([workers, f"{mean['off']['window_batches_per_s']:.1f}",
                     f"{mean['on']['window_batches_per_s']:.1f}", f"{window_ratio:.3f}",
                     f"{epoch_ratio:.3f}", f"{extra:.2f}", f"{size / 1e6:.2f}"])
    print(table(rows, ["workers", "window b/s off", "window b/s on", "window slowdown",
                       "epoch on/off", "extra s", "worker MB"]))
    path = write_result("worker_tracking", {"machine": machine(), "args": vars(args),
                                            "results": summary})
    print(f"written {path}")


if __name__ == "__main__":
    main()
