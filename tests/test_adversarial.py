"""The second adversarial pass (issue 23): outputs never written through a link, untrusted text
never printed raw, full disks and odd bytes said in one line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from harness.errors import DiskFull, UsageError
from harness.records.atomic import write_atomic
from harness.records.text import printable, printable_lines
from _gate import MiB, fake_summary, write_run

ESC_BEL = ("\x1b", "\x07", "\x9b", "\x00")


def _plain(text: str) -> bool:
    return not any(c in text for c in ESC_BEL)


# -- outputs are never written through a link ------------------------------------------------


def test_write_atomic_refuses_a_link_and_leaves_its_target_alone(tmp_path: Path) -> None:
    target = tmp_path / "precious"
    target.write_text("mine")
    link = tmp_path / "out.html"
    link.symlink_to(target)
    with pytest.raises(UsageError, match="is a link"):
        write_atomic(link, "page")
    assert target.read_text() == "mine" and link.is_symlink()
    dangling = tmp_path / "dangling.json"
    dangling.symlink_to(tmp_path / "created-through-link")
    with pytest.raises(UsageError, match="is a link"):
        write_atomic(dangling, b"{}")
    assert not (tmp_path / "created-through-link").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling.json", "out.html", "precious"]


def test_write_atomic_replaces_a_file_whole_and_leaves_no_temporary(tmp_path: Path) -> None:
    out = tmp_path / "f.txt"
    out.write_text("old")
    write_atomic(out, "new")
    assert out.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["f.txt"]
    with pytest.raises(UsageError, match="is a folder"):
        write_atomic(tmp_path, "x")


def _compare_runs(tmp_path: Path) -> tuple[Path, Path]:
    a = write_run(tmp_path / "a", fake_summary())
    b = write_run(tmp_path / "b", fake_summary(main=600 * MiB))
    return a, b


def test_compare_refuses_a_link_at_its_page_and_leaves_the_target(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    a, b = _compare_runs(tmp_path)
    victim = tmp_path / "victim.txt"
    victim.write_text("do not touch")
    page = tmp_path / "reports" / "compare" / "a-vs-b.html"
    page.parent.mkdir(parents=True)
    page.symlink_to(victim)
    code, _, err = cli("compare", str(a), str(b), "--reports", str(tmp_path / "reports"))
    assert code == 2 and err.count("\n") == 1 and "is a link" in err and str(page) in err
    assert victim.read_text() == "do not touch"


def test_baseline_refuses_a_link_at_its_output(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    a, _ = _compare_runs(tmp_path)
    victim = tmp_path / "victim.txt"
    victim.write_text("do not touch")
    out = tmp_path / "base.json"
    out.symlink_to(victim)
    code, _, err = cli("baseline", str(a), "-o", str(out))
    assert code == 2 and "is a link" in err and victim.read_text() == "do not touch"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "base.json", "victim.txt"]


def test_merge_refuses_a_link_among_a_node_s_files(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    import _synthetic_ranks as sr

    n0, n1 = sr.write_node_run(tmp_path, 0), sr.write_node_run(tmp_path, 1)
    secret = tmp_path / "secret"
    secret.write_text("private key")
    planted = next(p for p in sorted((n1 / "stages").rglob("*")) if p.is_dir()) / "log2.txt"
    planted.symlink_to(secret)
    code, _, err = cli("merge", str(n0), str(n1), "-o", str(tmp_path / "out"))
    assert code == 2 and "is a link" in err and str(planted) in err
    assert not (tmp_path / "out").exists()


def test_merge_refuses_an_output_that_is_a_dangling_link(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    import _synthetic_ranks as sr

    n0, n1 = sr.write_node_run(tmp_path, 0), sr.write_node_run(tmp_path, 1)
    out = tmp_path / "out"
    out.symlink_to(tmp_path / "elsewhere")
    code, _, err = cli("merge", str(n0), str(n1), "-o", str(out))
    assert code == 2 and err.count("\n") == 1 and "already exists" in err
    assert not (tmp_path / "elsewhere").exists()
