"""harness export --tensorboard on hand-written run directories with known answers (tests/_synthetic.py,
tests/_synthetic_ranks.py), read back with TensorBoard's own reader."""

from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path

import pytest
from _synthetic import write_run
from _synthetic_ranks import write_run as write_ranks_run

from harness.analysis import load_run
from harness.cli import main
from harness.errors import UsageError
from harness.render import tensorboard as tb


def _read(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _export(run: Path, logdir: Path) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["export", str(run), "--tensorboard", str(logdir)])
    return code, out.getvalue(), err.getvalue()


def test_series_on_the_training_step_axis(tmp_path: Path) -> None:
    run = write_run(tmp_path)
    code, out, _ = _export(run, tmp_path / "tb")
    assert code == 0 and "series written to" in out
    got = _read(tmp_path / "tb")
    # epoch 1's steps 1, 2, 4 then epoch 2's 1, 2 after them (4 + 1, 4 + 2); setup and teardown out
    assert got["memory/train/main_rss_mib"] == [(1, 120), (2, 150), (4, 130), (5, 130), (6, 160)]
    # the tree: main + worker 0 (110, 110, 112), then main + worker 1 (110, 111)
    assert got["memory/train/tree_rss_mib"] == [(1, 230), (2, 260), (4, 242), (5, 240), (6, 271)]
    # workers' USS where read: worker 0's 10 and 14, then (worker 0 gone) worker 1's 10 and 12
    assert got["memory/train/workers_uss_mib"] == [(1, 10), (4, 14), (5, 10), (6, 12)]
    assert got["memory/train/phase/forward/main_rss_mib"] == [(1, 120), (4, 130), (5, 130)]
    assert got["memory/train/phase/backward/main_rss_mib"] == [(2, 150), (6, 160)]
    assert not any("setup" in t or "teardown" in t or "cuda" in t for t in got)
    # the footprint (shared pages once) where the analysis gives the ticks one
    from harness.analysis.ticks import TICK_COLUMNS

    assert ("memory/train/footprint_mib" in got) == ("tree_footprint" in TICK_COLUMNS)


def test_per_rank(tmp_path: Path) -> None:
    got_points = tb.scalars(load_run(write_ranks_run(tmp_path)))
    tags = {p.tag for p in got_points}
    assert "memory/rank0/train/main_rss_mib" in tags and "memory/rank1/train/main_rss_mib" in tags
    tb.write(got_points, tmp_path / "tb", "ddp")
    got = _read(tmp_path / "tb")
    # one step an epoch: epoch 1's peak is backward's 320 MiB (rank 1: 2 MiB more), epoch 2's 322
    assert got["memory/rank0/train/main_rss_mib"] == [(1, 320), (2, 322)]
    assert got["memory/rank1/train/main_rss_mib"] == [(1, 322), (2, 324)]
    assert got["memory/rank0/train/phase/validate/main_rss_mib"] == [(1, 312), (2, 311)]


def test_export_again_replaces_the_run_s_file_only(tmp_path: Path) -> None:
    run = write_run(tmp_path)
    logdir = tmp_path / "tb"
    logdir.mkdir()
    theirs = logdir / "events.out.tfevents.1.host.loss"
    theirs.write_bytes(b"")
    assert _export(run, logdir)[0] == 0
    assert _export(run, logdir)[0] == 0
    ours = list(logdir.glob("*.harness-run"))
    assert len(ours) == 1 and theirs.exists()
    assert _read(logdir)["memory/train/main_rss_mib"][0] == (1, 120)  # once, not twice


def test_without_tensorboard_one_line_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = write_run(tmp_path)
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard raises ImportError
    monkeypatch.setitem(sys.modules, "tensorboard.compat.proto", None)
    code, _, err = _export(run, tmp_path / "tb")
    assert code == 2
    assert err.strip().splitlines() == [
        "harness: error: harness export --tensorboard needs the tensorboard package, which is not "
        "installed: pip install 'harness[frameworks]' (or pip install tensorboard)"]
    assert not (tmp_path / "tb").exists()


def test_bad_input(tmp_path: Path) -> None:
    code, _, err = _export(tmp_path / "nope", tmp_path / "tb")
    assert code == 2 and "not a run directory" in err
    run = write_run(tmp_path)
    (tmp_path / "file").write_text("")
    with pytest.raises(UsageError, match="a file, not a folder"):
        tb.export(run, tmp_path / "file")
