"""How ``harness check`` and ``harness compare`` speak: failures first, at most 100 columns unless
``--wide``, colour only beyond a metric's noise floor (and only on a terminal), what differs
between the two runs' scenarios and versions said first, a compare page that fits 1,280 px.

Fast tests use hand-written summaries (tests/_gate.py); the ``slow`` ones build two real smoke
runs once (batch 4 and batch 64) and read the commands' output on them.
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from _gate import MiB, fake_model, fake_summary, write_run
from conftest import REPO

from harness.analysis.summary_model import Summary
from harness.gate.check import CheckResult, Row
from harness.gate.compare import ABSENT, Change, Column, changes, compare, versions
from harness.gate.output import WIDTH, check_text, compare_html, compare_text, use_color, wrap_items
from harness.records.manifest import Manifest

ESC = "\x1b["
SMOKE_BASELINE = REPO / "bench" / "baselines" / "smoke.json"
SCREENSHOT = Path("/tmp/compare-1280.png")


def _widest(text: str) -> int:
    return max(len(line) for line in text.splitlines())


def _manifest(**over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "scenario": {"name": "smoke", "train": {"epochs": 2, "batch_size": 4, "lr": 0.001},
                     "data": {"split": [0.8, 0.1, 0.1]}, "sampling": {"rss_hz": 50.0}},
        "python": "3.11.7", "versions": {"torch": "2.14.1", "memray": "1.20.0", "harness": "0.1.0"},
        "git_revision": "f726d353dc9e033b4231e526b408bb0ea4a29601"}
    doc.update(over)
    return doc


def _typed(doc: dict[str, Any]) -> Manifest:
    """The manifest as a run directory's reader hands it out."""
    return Manifest.model_validate({"status": "ok", **doc})


def _procs(rss: int) -> pd.DataFrame:
    return pd.DataFrame({"stage": ["train"] * 2, "pid": [1, 2], "role": ["main", "worker 0"],
                         "peak_rss": [rss, 50 * MiB], "peak_uss": [rss // 2, 5 * MiB],
                         "peak_pss": [rss, 20 * MiB]})


SITE_COLS = ["stage", "capture", "process", "phase", "site", "workload_line", "source",
             "bytes_at_peak", "allocations_at_peak", "leaked_bytes", "leaked_allocations", "processes"]


def _sites(rows: list[tuple[str, int]]) -> pd.DataFrame:
    return pd.DataFrame([("train", "train-e1-train", "main", "backward", site,
                          "train (/home/someone/projects/model/stages.py:63)", "x", b, 1, 0, 0, 1)
                         for site, b in rows], columns=SITE_COLS)


# ---- harness check -----------------------------------------------------------------------


def _rows() -> list[Row]:
    """Limits in metric order with the failures among them, as check() returns them."""
    return [
        Row("baseline", "peak_main_rss", 1100 * MiB, 866 * MiB, "mean 849 MiB ± 713 KiB, n=2"),
        Row("baseline", "peak_live_tensor_bytes", 374_000, 3_690_000, "mean 300 KiB ± 0 B, n=2"),
        Row("baseline", "phases.data.peak_workers_uss", 35 * MiB, None, "mean 27 MiB ± 1 MiB, n=2"),
        Row("baseline", "phases.forward.peak_main_rss", 909 * MiB, 750 * MiB, "mean 727 MiB ± 0 B, n=2"),
        Row("budget", "peak_heap", 8 * MiB, None, "budget"),
        Row("baseline", "phases.backward.peak_live_tensor_bytes", 374_000, 3_690_000,
            "mean 300 KiB ± 0 B, n=2"),
        Row("baseline", "phases.backward.peak_main_rss", 909 * MiB, 750 * MiB, "mean 727 MiB ± 0 B, n=2"),
    ]


def _table_statuses(text: str) -> list[str]:
    return [line.split()[0] for line in text.splitlines()
            if line.split() and line.split()[0] in ("FAIL", "missing", "pass", "skipped")]


def test_check_text_puts_failures_first_then_passes_then_skipped() -> None:
    result = CheckResult(_rows(), ["the run's status is 'failed', not 'ok'"])
    text = check_text(result, "harness: check run")
    lines = text.splitlines()
    # the run's own problem right under the title, then the table with its failures on top
    assert lines[1] == "FAIL: the run's status is 'failed', not 'ok'"
    assert _table_statuses(text) == ["FAIL", "missing", "FAIL", "pass", "pass", "pass", "skipped"]
    first = next(line for line in lines if line.startswith("FAIL "))
    assert first.split()[:4] == ["FAIL", "baseline", "peak_live_tensor_bytes", "all"]
    # the verdict names each failure whole, however it is wrapped
    verdict = text[text.index("harness: check FAILED"):]
    assert verdict.startswith("harness: check FAILED: 3 of 7 limit(s):")
    for name in ("peak_live_tensor_bytes,", "peak_heap,", "peak_live_tensor_bytes [backward];",
                 "the run's status is 'failed', not 'ok'"):
        assert name in verdict.replace("\n  ", " ")
    assert _widest(text) <= WIDTH


def test_check_text_fits_100_columns_and_wide_shows_the_reference() -> None:
    result = CheckResult(_rows())
    narrow = check_text(result, "harness: check run")
    wide = check_text(result, "harness: check run", wide=True)
    assert _widest(narrow) <= WIDTH < _widest(wide)
    assert "mean 849 MiB ± 713 KiB, n=2" in wide and "mean 849" not in narrow
    # narrow: measured, limit, margin (with its share of the limit) after the metric
    row = next(line for line in narrow.splitlines() if line.split()[:4] == ["pass", "baseline", "peak_main_rss", "all"])
    assert row.split()[4:] == ["866", "MiB", "1.07", "GiB", "+234", "MiB", "(+21.3%)"]


def test_check_text_drops_the_margin_share_before_it_overflows() -> None:
    result = CheckResult(_rows())
    full = _widest(check_text(result, "t"))
    text = check_text(result, "t", width=full - 1)
    assert _widest(text) <= full - 1 and "%)" not in text and "+234 MiB" in text


def test_check_colour_marks_failures_only() -> None:
    result = CheckResult(_rows())
    assert ESC not in check_text(result, "t")
    text = check_text(result, "t", color=True)
    for line in text.splitlines():
        plain = re.sub(r"\x1b\[[0-9;]*m", "", line)
        if plain.startswith(("FAIL", "missing")):
            assert line.startswith(f"{ESC}1;31m"), line
        elif plain.startswith(("pass", "skipped")):
            assert ESC not in line, line
    assert f"{ESC}1;31mFAILED{ESC}0m" in text
    # the width is what the reader sees, not the escape codes
    assert _widest(re.sub(r"\x1b\[[0-9;]*m", "", text)) <= WIDTH


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("stream", "no_color", "expected"), [
    (_Tty(), None, True),
    (_Tty(), "1", False),             # https://no-color.org: any non-empty value
    (_Tty(), "", True),
    (io.StringIO(), None, False),     # a pipe, a file, a CI log
])
def test_colour_only_on_a_terminal_without_no_color(monkeypatch: pytest.MonkeyPatch, stream: io.StringIO,
                                                    no_color: str | None, expected: bool) -> None:
    if no_color is None:
        monkeypatch.delenv("NO_COLOR", raising=False)
    else:
        monkeypatch.setenv("NO_COLOR", no_color)
    assert use_color(stream) is expected


def test_wrap_items_breaks_between_items_only() -> None:
    items = [f"item{i}-{'x' * 20}" for i in range(8)]
    lines = wrap_items("prefix:", items, 60, ",", 4)
    assert all(len(line) <= 60 for line in lines) and len(lines) > 2
    assert " ".join(line.strip() for line in lines) == "prefix: " + ", ".join(items)
    long = wrap_items("p:", ["y" * 80, "z"], 40)
    assert long == ["p:", "  " + "y" * 80 + ",", "  z"]  # a value longer than the line stands alone


# ---- harness compare: noise floors, scenario and version differences ---------------------


@pytest.mark.parametrize(("column", "pair", "beyond"), [
    (Column("main_rss_max", "main RSS", "bytes", 16 * MiB), (859 * MiB, 866 * MiB), False),  # +0.8%
    (Column("main_rss_max", "main RSS", "bytes", 16 * MiB), (859 * MiB, 876 * MiB), True),
    (Column("main_rss_max", "main RSS", "bytes", 16 * MiB), (859 * MiB, 842 * MiB), True),
    (Column("t", "live tensors", "bytes", 64 * 1024), (300_000, 3_690_000), True),       # +1130%
    (Column("t", "live tensors", "bytes", 64 * 1024), (300_000, 360_000), False),        # +20%, 59 KiB
    (Column("seconds", "time", "seconds"), (10.0, 10.9), False),                         # 9%
    (Column("seconds", "time", "seconds"), (10.0, 11.5), True),
    (Column("seconds", "time", "seconds"), (0.05, 0.12), False),                         # timer noise
    (Column("processes", "processes", "count"), (4.0, 4.0), False),
    (Column("processes", "processes", "count"), (4.0, 5.0), True),
    (Column("main_rss_max", "main RSS", "bytes", 16 * MiB), (None, 866 * MiB), False),
])
def test_a_change_is_beyond_noise_only_past_the_metrics_floor(column: Column, pair: Any, beyond: bool) -> None:
    assert column.beyond_noise(pair) is beyond


def test_scenario_changes_are_flat_keys_with_both_values() -> None:
    a = _manifest()["scenario"]
    b = {"name": "smoke", "train": {"epochs": 2, "batch_size": 64, "lr": 0.001},
         "data": {"split": [0.5, 0.5]}, "sampling": {"rss_hz": 50}, "seed": 1}
    assert changes(a, b) == [Change("train.batch_size", "4", "64"),
                             Change("data.split", "[0.8, 0.1, 0.1]", "[0.5, 0.5]"),
                             Change("seed", ABSENT, "1")]   # 50.0 and 50 Hz are one rate
    assert changes({"x": True}, {"x": 1}) == [Change("x", "true", "1")]
    assert changes({"x": "4"}, {"x": 4}) == [Change("x", '"4"', "4")]
    assert changes({"x": None}, {"x": "a b"}) == [Change("x", "null", "a b")]


def test_versions_of_a_manifest() -> None:
    got = versions(_typed(_manifest(workload={"entry": "train.py", "sha256": "ab" * 32,
                                              "git_revision": None, "dirty": None, "file": "/x/train.py"})))
    assert got == {"python": "3.11.7", "torch": "2.14.1", "memray": "1.20.0", "harness": "0.1.0",
                   "git_revision": "f726d353dc9e033b4231e526b408bb0ea4a29601",
                   "workload.sha256": "ab" * 32, "workload.git_revision": None, "workload.dirty": None}


def _comparison(ma: dict[str, Any] | None = None, mb: dict[str, Any] | None = None, **kw_b: Any) -> Any:
    sa = fake_model(main=400 * MiB)
    sb = fake_model(**{"main": 401 * MiB + 600 * 1024, "tensors": 3_600_000, **kw_b})
    manifests = None if ma is None else (_typed(ma), _typed(mb if mb is not None else ma))
    return compare(sa, sb, _procs(400 * MiB), _procs(402 * MiB),
                   _sites([("f (a.py:1)", 1 * MiB)]), _sites([("f (a.py:1)", 9 * MiB)]), manifests=manifests)


def test_compare_says_first_what_differs_between_the_scenarios_and_versions() -> None:
    b = _manifest(python="3.12.1", git_revision="0123456789abcdef0123456789abcdef01234567-dirty")
    b["scenario"] = {**b["scenario"], "train": {"epochs": 2, "batch_size": 64, "lr": 0.001}}
    text = compare_text(_comparison(_manifest(), b))
    head = text.split("\n\n")[0].splitlines()
    assert head[2] == "scenario: train.batch_size 4 → 64"
    assert head[3] == "versions: python 3.11.7 → 3.12.1; git_revision f726d353dc9e → 0123456789ab-dirty"
    same = compare_text(_comparison(_manifest()))
    assert same.splitlines()[2:5] == [  # wrapped between items, never inside one
        "scenario: the same",
        "versions: the same: python 3.11.7, torch 2.14.1, memray 1.20.0, harness 0.1.0,",
        "          git_revision f726d353dc9e"]
    # without manifests (an older caller) nothing is claimed
    assert compare_text(_comparison()).splitlines()[2] == ""


def test_compare_colours_a_change_only_beyond_its_noise_floor() -> None:
    c = _comparison(_manifest())
    text = compare_text(c, color=True)
    run = text.split("Run:")[1].split("\n\n")[0]
    main = next(line for line in run.splitlines() if line.startswith("peak RSS, main process"))
    tensors = next(line for line in run.splitlines() if line.startswith("peak live tensor bytes"))
    assert "+0.4%" in main and ESC not in main                 # 1.6 MiB: within 16 MiB
    assert f"{ESC}31m+1100.0%{ESC}0m" in tensors             # 3.3 MB: far beyond 64 KiB
    assert ESC not in compare_text(c)
    page = compare_html(c)
    assert "<td class='n flat'>+1.59 MiB</td>" in page and "<td class='n up'>+3.15 MiB</td>" in page


def test_compare_text_fits_100_columns_and_names_what_only_wide_shows() -> None:
    # GIVEN a CUDA-shaped comparison (every metric present) with long site and workload lines
    sa, sb = fake_summary(main=400 * MiB), fake_summary(main=900 * MiB, tensors=3_600_000)
    for s, k in ((sa, 1), (sb, 3)):
        for p in s["phases"]:
            p["cuda_peak_allocated"], p["cuda_peak_reserved"] = k * 100 * MiB, k * 120 * MiB
    long_site = "rebuild_storage_fd (torch/multiprocessing/reductions.py:543)"
    c = compare(Summary.model_validate(sa), Summary.model_validate(sb), _procs(400 * MiB), _procs(900 * MiB),
                _sites([(long_site, 1 * MiB)]), _sites([(long_site, 9 * MiB)]),
                manifests=(_typed(_manifest()), _typed(_manifest())))
    # WHEN it is printed narrow and wide
    narrow, wide = compare_text(c), compare_text(c, wide=True)
    # THEN narrow fits, every section says which metrics only --wide shows, and wide shows them
    assert _widest(narrow) <= WIDTH < _widest(wide)
    phase = narrow.split("By phase:\n")[1].split("\n\n")[0]
    # as many metrics as fit, the most telling first: a short one (time) where a wide one did not fit
    assert phase.splitlines()[0].split() == ["main", "RSS", "live", "tensors", "time"]
    assert phase.splitlines()[-1] == "  --wide adds: tree RSS, workers' USS, CUDA allocated, CUDA reserved"
    for label in ("CUDA allocated", "tree RSS", "workers' USS", "CUDA reserved", "time"):
        assert label in wide.split("By phase:")[1].splitlines()[1]
    # a site: its figures on one line, the site and the workload's line whole below
    sites = narrow.split("Allocation sites")[1].splitlines()
    assert sites[3].split()[:3] == ["+8.00", "MiB", "1.00"]
    assert sites[4] == f"    {long_site}" and sites[5] == "      ← train (/home/someone/projects/model/stages.py:63)"


def test_compare_command_takes_reports_and_wide(tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    a = write_run(tmp_path / "a", fake_summary())
    b = write_run(tmp_path / "b", fake_summary(main=600 * MiB))
    monkeypatch.chdir(tmp_path)
    code, out, err = cli("compare", str(a), str(b), "--reports", "out")
    assert code == 0, err
    page = Path("out/compare/a-vs-b.html")
    assert page.is_file() and out.splitlines()[-1] == f"harness: comparison page {page}"
    assert _widest(out) <= WIDTH and ESC not in out
    code, wide, err = cli("compare", str(a), str(b), "--reports", "out", "--wide")
    assert code == 0 and "400 MiB → 600 MiB (+200 MiB, +50.0%)" in wide
    assert "scenario: the same" in out and "versions: the same: harness 0.1.0" in out


def test_check_command_wide(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    run = write_run(tmp_path / "r", fake_summary(), budgets={"peak_main_rss": "100 MB", "peak_tree_rss": "2 GB"})
    code, out, err = cli("check", str(run))
    assert code == 1 and _table_statuses(out) == ["FAIL", "pass"] and "budget  " in out
    code, out, err = cli("check", str(run), "--wide")
    assert code == 1 and "reference" in out.splitlines()[1]


# ---- the compare page in headless Chromium ------------------------------------------------

# Written into the page's title once it is laid out; read back from --dump-dom.
_PROBE = ("<script>addEventListener('load', () => { const e = document.documentElement;"
          " document.title = 'scroll=' + e.scrollWidth + ' client=' + e.clientWidth; });</script>")


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def page_widths(html: Path, width: int = 1280, screenshot: Path | None = None) -> tuple[int, int]:
    """The page's (scrollWidth, clientWidth) in headless Chromium in a ``width`` px window; the
    first larger than the second is a horizontal scrollbar. ``screenshot``: also save one there."""
    browser = _chromium()
    assert browser is not None
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "probe.html"
        probe.write_text(html.read_text(encoding="utf-8").replace("</body>", _PROBE + "</body>"),
                         encoding="utf-8")
        common = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  f"--user-data-dir={tmp}/profile", f"--window-size={width},2000",
                  "--virtual-time-budget=5000"]
        dom = subprocess.run([*common, "--dump-dom", probe.as_uri()], capture_output=True, text=True,
                             timeout=120, check=False).stdout
        if screenshot is not None:
            subprocess.run([*common, f"--screenshot={screenshot}", html.resolve().as_uri()],
                           capture_output=True, timeout=120, check=False)
    found = re.search(r"<title>scroll=(\d+) client=(\d+)</title>", dom)
    assert found, f"the page did not report its width: {dom[:300]!r}"
    return int(found.group(1)), int(found.group(2))


needs_chromium = pytest.mark.skipif(_chromium() is None, reason="no chromium on PATH (apt-get install chromium)")


@needs_chromium
def test_a_cuda_shaped_compare_page_has_no_horizontal_overflow_at_1280px(tmp_path: Path) -> None:
    # GIVEN every metric in every section, a long site and a long run directory
    sa, sb = fake_summary(main=400 * MiB), fake_summary(main=900 * MiB, tensors=3_600_000,
                                                       run_dir="/very/long/" + "reports/" * 12 + "run")
    for s, k in ((sa, 1), (sb, 3)):
        for p in s["phases"]:
            p["cuda_peak_allocated"], p["cuda_peak_reserved"] = k * 1000 * MiB, k * 1200 * MiB
    site = "a_function_with_a_long_name (" + "some/deep/package/" * 8 + "module.py:1234)"
    c = compare(Summary.model_validate(sa), Summary.model_validate(sb), _procs(400 * MiB), _procs(900 * MiB),
                _sites([(site, 1 * MiB)]), _sites([(site, 9 * MiB)]), manifests=(_typed(_manifest()), _typed(_manifest())))
    page = tmp_path / "c.html"
    page.write_text(compare_html(c), encoding="utf-8")
    scroll, client = page_widths(page)
    assert scroll <= client, f"{scroll} px of page in a {client} px window"


# ---- on two real smoke runs ---------------------------------------------------------------


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(folder, run at batch 4, run at batch 64) of scenarios/smoke.yaml, built once."""
    from conftest import latest_run

    from harness.cli import main

    root = tmp_path_factory.mktemp("gate-output")
    made: list[Path] = []
    for extra in ([], ["--set", "train.batch_size=64"]):
        reports = root / f"reports{len(made)}"
        code = main(["run", str(REPO / "scenarios" / "smoke.yaml"), *extra, "--reports", str(reports),
                     "--quiet"])
        assert code == 0
        made.append(latest_run(reports))
    return root, made[0], made[1]


@pytest.mark.slow
def test_check_on_the_batch_64_smoke_run_fits_100_columns_failures_first(  # type: ignore[no-untyped-def]
        smoke_runs: tuple[Path, Path, Path], cli, monkeypatch: pytest.MonkeyPatch) -> None:
    root, _, b = smoke_runs
    monkeypatch.chdir(root)
    # 16x the batch: the traced tensor bytes (exact) pass the batch-4 baseline's limits
    code, out, err = cli("check", str(b.relative_to(root)), "--baseline", str(SMOKE_BASELINE),
                         "--tolerance", "25%")
    assert code == 1, out + err
    assert _widest(out) <= WIDTH, out
    statuses = _table_statuses(out)
    assert statuses[0] == "FAIL" and "FAIL" not in statuses[statuses.index("pass"):], out
    assert "peak_live_tensor_bytes [backward]" in out[out.index("harness: check FAILED"):]


@pytest.mark.slow
def test_compare_of_the_smoke_runs_fits_100_columns_and_names_the_batch_size(  # type: ignore[no-untyped-def]
        smoke_runs: tuple[Path, Path, Path], cli, monkeypatch: pytest.MonkeyPatch) -> None:
    root, a, b = smoke_runs
    monkeypatch.chdir(root)
    code, out, err = cli("compare", str(a), str(b), "--reports", "reports")
    assert code == 0, err
    assert _widest(out) <= WIDTH, out
    head = out.split("\n\n")[0].splitlines()
    assert head[2] == "scenario: train.batch_size 4 → 64", out
    assert head[3].startswith("versions: the same: python ")
    # the live tensor bytes grew far beyond their floor; the main RSS within its own
    page = (root / "reports" / "compare" / f"{a.name}-vs-{b.name}.html").read_text(encoding="utf-8")
    assert "<td>train.batch_size</td><td class='text'>4</td><td class='text'>64</td>" in page


@pytest.mark.slow
@needs_chromium
def test_the_smoke_compare_page_has_no_horizontal_overflow_at_1280px(  # type: ignore[no-untyped-def]
        smoke_runs: tuple[Path, Path, Path], cli, monkeypatch: pytest.MonkeyPatch) -> None:
    root, a, b = smoke_runs
    monkeypatch.chdir(root)
    html = root / "smoke-compare.html"
    code, out, err = cli("compare", str(a), str(b), "--html", str(html))
    assert code == 0, err
    scroll, client = page_widths(html, 1280, SCREENSHOT)
    assert scroll <= client, f"{scroll} px of page in a {client} px window"
    assert SCREENSHOT.read_bytes()[:4] == b"\x89PNG"
