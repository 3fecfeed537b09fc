"""Leaks counted per step: real memray captures made in this process through the probe's own
training window (MemrayWindow, which marks each step's end), read back as the report reads them.

Each variant keeps something different, at a known size, in a loop without a DataLoader; each has
a clean twin that does the same work and keeps nothing (or keeps it once, or within a bound).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from _synthetic import write_run

from harness.analysis import findings, trend
from harness.analysis.captures import CaptureData, read_capture, windows
from harness.analysis.load import Capture, load_run
from harness.layout import capture_name
from harness.probe.steps import MemrayWindow
from harness.records.events import EventRecord
from harness.records.scenario import MemrayConfig

STEPS = 16
KiB, MiB = 1024, 1 << 20


class _Events:
    def __init__(self) -> None:
        self.written: list[EventRecord] = []

    def write(self, event: EventRecord) -> None:
        self.written.append(event)


def _captured(tmp_path: Path, step: Callable[[int], None], steps: int = STEPS) -> CaptureData:
    """Run ``step`` for ``steps`` steps inside a real training window of the probe; read it back."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    events = _Events()
    window = MemrayWindow(MemrayConfig(train_start=0, train_steps=steps, epochs="every"),
                          "train", tmp_path, events)
    window.start_loop(1)  # opens at step 0
    for i in range(steps):
        window.begin(i)
        step(i)
        window.end(i)  # marks the step's end; the last closes the window
    window.finish(steps)
    name = capture_name("train", 1, "train")
    path = tmp_path / "memray" / f"{name}.bin"
    stage_events = [e for e in events.written]
    assert [e.kind for e in stage_events] == ["memray_start", "memray_stop"]

    class _Stage:  # what windows() reads: the stage's memray events
        def events_of(self, kind: type) -> list[Any]:
            return [e for e in stage_events if isinstance(e, kind)]

    win = windows(_Stage())[name]  # type: ignore[arg-type]
    data, _ = read_capture(Capture("train", name, path, None, path.stat().st_size), win)
    assert data.error is None
    return data


def _line(marker: str) -> str:
    lines = Path(__file__).read_text(encoding="utf-8").splitlines()
    n = next(i for i, text in enumerate(lines, 1) if text.rstrip().endswith(f"# kept: {marker}"))
    return f"test_step_leaks.py:{n})"


def _found(data: CaptureData, marker: str) -> pd.Series | None:
    hits = trend.step_leaks([data])
    if hits.empty:
        return None
    mine = hits[hits["where"].str.endswith(_line(marker))]
    return mine.iloc[0] if not mine.empty else None


# -- the variants: what one step does ------------------------------------------------------------
torch.manual_seed(0)
NET = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
OPT = torch.optim.SGD(NET.parameters(), lr=0.01)
X, Y = torch.randn(8, 32), torch.randint(0, 4, (8,))


def _train_step() -> torch.Tensor:
    OPT.zero_grad()
    loss = torch.nn.functional.cross_entropy(NET(X), Y)  # kept: graph
    loss.backward()
    OPT.step()
    return loss


def _losses(keep_graph: bool) -> Callable[[int], None]:
    """A running mean of the loss: with the graph (planted) or with .item() (clean)."""
    kept: list[Any] = []

    def step(i: int) -> None:
        watched = torch.nn.functional.cross_entropy(NET(X.flip(0)), Y)  # kept: watched
        _train_step()
        kept.append(watched if keep_graph else watched.item())

    return step


def _small_blocks(keep: bool) -> Callable[[int], None]:
    """9,000 bytes a step, appended to a list (planted) or dropped (clean)."""
    kept: list[bytes] = []

    def step(i: int) -> None:
        block = bytes(9000) + bytes([i % 256])  # kept: blocks
        if keep:
            kept.append(block)

    return step


def _numpy_cache(bound: int | None) -> Callable[[int], None]:
    """A per-step cache of 1 MiB numpy copies, without a DataLoader: unbounded (planted) or the
    last ``bound`` steps only (clean)."""
    source = np.ones(MiB // 8)
    cache: dict[int, np.ndarray] | deque[np.ndarray] = {} if bound is None else deque(maxlen=bound)

    def step(i: int) -> None:
        copy = source.copy()  # kept: numpy
        if isinstance(cache, dict):
            cache[i] = copy
        else:
            cache.append(copy)

    return step


def _every_fourth(keep: bool) -> Callable[[int], None]:
    """Logits of a monitoring forward every 4th step, 3 MiB each (planted: kept; clean: no_grad,
    dropped): 12 MiB an epoch of 16 steps."""
    kept: list[torch.Tensor] = []
    big = torch.nn.Linear(32, 3 * MiB // (4 * 64))

    def step(i: int) -> None:
        _train_step()
        if i % 4 == 1:
            x = X.repeat(8, 1)
            if keep:
                kept.append(big(x))  # kept: monitor
            else:
                with torch.no_grad():
                    big(x)

    return step


def _warm_up_cache(i: int, _cache: dict[str, torch.Tensor] = {}) -> None:  # noqa: B006 - the cache
    """A cache filled once, at the first step (clean: warm-up keeps memory once)."""
    if "w" not in _cache:
        _cache["w"] = torch.zeros(MiB)  # kept: warmup
    _train_step()


# -- the tests: one capture of every planted variant at once, one of every clean twin -------------
def _all(steps: list[Callable[[int], None]]) -> Callable[[int], None]:
    def step(i: int) -> None:
        for one in steps:
            one(i)

    return step


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> CaptureData:
    return _captured(tmp_path_factory.mktemp("planted"), _all(
        [_small_blocks(keep=True), _losses(keep_graph=True), _numpy_cache(bound=None),
         _every_fourth(keep=True)]))


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> CaptureData:
    return _captured(tmp_path_factory.mktemp("clean"), _all(
        [_small_blocks(keep=False), _losses(keep_graph=False), _numpy_cache(bound=2),
         _every_fourth(keep=False), _warm_up_cache]))


def test_every_step_of_the_window_is_marked(planted: CaptureData, clean: CaptureData) -> None:
    assert planted.marked_steps == clean.marked_steps == STEPS


def test_a_small_block_kept_each_step_is_counted_by_the_byte(planted: CaptureData) -> None:
    hit = _found(planted, "blocks")
    assert hit is not None
    # bytes(9000) + one byte: a 9,001-byte object, with its header; the first step left out
    assert (hit["kept_steps"], hit["window_steps"]) == (STEPS - 1, STEPS - 1)
    assert 9001 <= hit["bytes_per_step"] <= 9001 + 64
    assert hit["allocations_per_step"] == 1.0


def test_a_loss_kept_with_its_graph_is_found(planted: CaptureData) -> None:
    hit = _found(planted, "watched")
    assert hit is not None, trend.step_leaks([planted])
    assert (hit["kept_steps"], hit["window_steps"]) == (STEPS - 1, STEPS - 1)
    # the activations of an 8x32 -> 8x64 -> 8x4 forward, the loss, the graph's nodes: ~10.8 KB
    assert 4 * KiB <= hit["bytes_per_step"] <= 32 * KiB


def test_a_numpy_copy_cache_without_a_dataloader_keeps_a_mib_a_step(planted: CaptureData) -> None:
    hit = _found(planted, "numpy")
    assert hit is not None
    assert (hit["kept_steps"], hit["window_steps"]) == (STEPS - 1, STEPS - 1)
    assert MiB <= hit["bytes_per_step"] <= MiB + KiB


def test_logits_kept_every_fourth_step_are_growth_too(planted: CaptureData) -> None:
    hit = _found(planted, "monitor")
    assert hit is not None
    assert (hit["kept_steps"], hit["window_steps"]) == (STEPS // 4, STEPS - 1)
    # 3 MiB of logits every 4th step, with what their graph holds: at least 0.8 MiB a step
    assert 4 * 3 * MiB / (STEPS - 1) <= hit["bytes_per_step"] <= 4 * 6 * MiB / (STEPS - 1)


def test_the_clean_twins_keep_nothing_step_after_step(clean: CaptureData) -> None:
    assert trend.step_leaks([clean]).empty, trend.step_leaks([clean])
    # what they do keep: the bounded cache's last 2 copies, the warm-up cache's one fill
    s = clean.step_sites
    numpy = s[s["workload_line"].str.endswith(_line("numpy"))]
    assert sorted(numpy["step"]) == [STEPS - 2, STEPS - 1]
    warm = s[s["workload_line"].str.endswith(_line("warmup"))]
    assert list(warm["step"]) == [0] and 4 * MiB <= int(warm["bytes"].sum()) <= 4 * MiB + 4 * KiB


def test_the_leak_finding_says_bytes_a_step_and_in_how_many_steps(
        tmp_path: Path, planted: CaptureData, clean: CaptureData) -> None:
    # GIVEN a run whose epoch-end snapshots show no growth
    from test_analysis_findings import _epochs

    run = load_run(write_run(tmp_path, snapshots=_epochs([5, 5, 5], [300, 300, 300])))
    f = findings.leak(run, [planted])
    assert f is not None
    assert f"{_line('blocks')} `block = bytes(9000) + bytes([i % 256])  # kept: blocks`" in f.text
    assert f"a step ({STEPS - 1} of {STEPS - 1} steps of capture train-e1-train)" in f.text
    lines = {row["where"].rsplit(":", 1)[1] for row in f.numbers["step_sites"]}
    assert {_line(m).rsplit(":", 1)[1] for m in ("blocks", "watched", "numpy", "monitor")} <= lines
    # the same run with the clean twins: nothing
    assert findings.leak(run, [clean]) is None


# -- on small synthetic step tables ---------------------------------------------------------------
def _window(epoch: int, rows: list[tuple[str, str, int, int, int]], steps: int = STEPS) -> CaptureData:
    """A marked training window of ``steps`` steps whose kept allocations are ``rows``:
    (site, workload line, step, bytes, allocations)."""
    from harness.analysis.captures import STEP_COLUMNS, Window

    name = capture_name("train", epoch, "train")
    table = pd.DataFrame([(site, where, "", "data", step, size, count)
                          for site, where, step, size, count in rows], columns=STEP_COLUMNS)
    return CaptureData(Capture("train", name, Path("x.bin"), None, 1),
                       Window(epoch, None, 0, steps, None, None), pid=1, marked_steps=steps,
                       step_sites=table)


LOOP = "train (/work/train.py:12)"
RECEIVE = "rebuild_storage_fd (torch/multiprocessing/reductions.py:543)"


def test_a_line_must_keep_memory_so_in_every_window_of_its_stage() -> None:
    every = [("append (x.py:3)", LOOP, i, 2048, 1) for i in range(STEPS)]
    assert not trend.step_leaks([_window(1, every), _window(2, every)]).empty
    # a cache bounded above a window's steps: fills through one window, not the next
    assert trend.step_leaks([_window(1, every), _window(2, every[:3])]).empty
    assert not trend.step_leaks([_window(1, every)]).empty  # one window: it alone decides


def test_torchs_shared_cache_of_received_batches_is_no_leak_but_kept_batches_are() -> None:
    # GIVEN a window keeping, at each step, two 96-byte entries of torch's SharedCache (clean) and
    # another keeping a received batch's pages with them (a script holding on to its batches)
    bookkeeping = [(RECEIVE, LOOP, i, 2 * 96, 2) for i in range(STEPS)]
    batches = [(RECEIVE, LOOP, i, 49152 + 2 * 96, 3) for i in range(STEPS)]
    assert trend.step_leaks([_window(1, bookkeeping)]).empty
    (hit,) = trend.step_leaks([_window(1, batches)]).itertuples()
    assert (hit.where, hit.kept_steps, hit.bytes_per_step) == (LOOP, STEPS - 1, 49152 + 2 * 96)
