"""The progress line: epoch, step/total, phase, RSS now and peak, elapsed."""

from __future__ import annotations

import io

from harness.control.console import Console, progress_text
from harness.control.sampler import TreeTotals
from harness.probe.cell import CellState

MiB = 1024 * 1024


def test_progress_line_names_epoch_step_phase_rss_and_elapsed() -> None:
    totals = TreeTotals(tree_rss=700 * MiB, peak_tree_rss=1536 * MiB,
                        cell=CellState(pid=1, epoch=2, step=1234, total=12000, phase="backward",
                                       heartbeat=0, cuda_allocated=0, cuda_reserved=0))
    text = progress_text("train", totals, 3725.0)
    assert text == "train   epoch 2  step 1234/12000  backward   RSS 700 MiB (peak 1,536 MiB)  1:02:05"


def test_progress_line_before_the_probe_speaks() -> None:
    assert progress_text("main", TreeTotals(tree_rss=10 * MiB, peak_tree_rss=10 * MiB), 5.0) == (
        "main    RSS 10 MiB (peak 10 MiB)  0:05"
    )


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_terminal_keeps_one_live_line_under_the_output() -> None:
    out = _Tty()
    c = Console(out)
    c.status("train  step 1")
    c.line("[1,  2000] loss: 1.978")
    c.status("train  step 2")
    c.end_status()
    assert out.getvalue() == (
        "\r\x1b[2Ktrain  step 1"
        "\r\x1b[2K[1,  2000] loss: 1.978\ntrain  step 1"
        "\r\x1b[2Ktrain  step 2"
        "\r\x1b[2K"
    )


def test_plain_lines_when_not_a_terminal() -> None:
    out = io.StringIO()
    c = Console(out)
    c.status("train  step 1", every_s=3600)
    c.status("train  step 2", every_s=3600)  # within the interval: not repeated
    c.line("done")
    assert out.getvalue() == "train  step 1\ndone\n"


def test_metric_may_name_its_own_epoch(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    from harness.layout import CELL_FILE, PROBE_CONFIG_FILE
    from harness.probe import cell as cellmod
    from harness.probe.live import LiveProbe
    from harness.records.scenario import CudaConfig, MemrayConfig, TensorsConfig

    cfg = {"stage": "s", "device": "cpu", "memray": MemrayConfig(mode="off").model_dump(mode="json"),
           "tensors": TensorsConfig(snapshots=False, composition=False).model_dump(mode="json"),
           "cuda": CudaConfig().model_dump(mode="json")}
    (tmp_path / PROBE_CONFIG_FILE).write_text(json.dumps(cfg))
    cellmod.create(tmp_path / CELL_FILE)
    p = LiveProbe(tmp_path)
    with p.epoch(2):
        p.metric("loss", 1.5)
    p.metric("loss", 1.25, epoch=7)  # as in the README's example
    p.close()
    metrics = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()
               if '"metric"' in line]
    assert [(m["value"], m["epoch"]) for m in metrics] == [(1.5, 2), (1.25, 7)]
