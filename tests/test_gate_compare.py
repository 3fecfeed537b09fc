"""harness compare: two runs side by side, deltas, the sites that grew, escaped HTML."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from _gate import MiB, fake_model, fake_summary, write_run

from harness.analysis.summary_model import Summary
from harness.gate.compare import compare, delta, ratio, site_deltas
from harness.gate.output import compare_html, compare_text

SITE_COLS = ["stage", "capture", "process", "phase", "site", "workload_line", "source",
             "bytes_at_peak", "allocations_at_peak", "leaked_bytes", "leaked_allocations", "processes"]


def _sites(rows: list[tuple[str, str, int]]) -> pd.DataFrame:
    return pd.DataFrame([("train", "train-e1-train", proc, "backward", site, "train (x.py:3)", "x",
                          b, 1, 0, 0, 1) for proc, site, b in rows], columns=SITE_COLS)


def _procs(rss: int) -> pd.DataFrame:
    return pd.DataFrame({"stage": ["train", "train", "train"], "pid": [1, 2, 3],
                         "role": ["main", "worker 0", "worker 0"], "peak_rss": [rss, 50 * MiB, 60 * MiB],
                         "peak_uss": [rss // 2, 5 * MiB, 6 * MiB], "peak_pss": [rss, 20 * MiB, 21 * MiB]})


def test_delta_and_ratio() -> None:
    assert delta((100.0, 150.0)) == 50 and ratio((100.0, 150.0)) == 0.5
    assert delta((None, 1.0)) is None and ratio((0.0, 1.0)) is None


def test_site_deltas_largest_growth_first() -> None:
    a = _sites([("main", "f (a.py:1)", 100), ("main", "g (a.py:2)", 500), ("worker", "h (a.py:3)", 10)])
    b = _sites([("main", "f (a.py:1)", 900), ("main", "g (a.py:2)", 400), ("main", "new (b.py:9)", 300)])
    got = site_deltas(a, b, top=5)
    assert [(s.site, s.delta) for s in got] == [("f (a.py:1)", 800), ("new (b.py:9)", 300)]


def test_comparison_by_phase_epoch_and_process() -> None:
    sa = fake_model(main=400 * MiB, growth=(1 * MiB,))
    sb = fake_model(main=500 * MiB, tensors=600_000, growth=(5 * MiB,))
    c = compare(sa, sb, _procs(400 * MiB), _procs(500 * MiB), _sites([]), _sites([]))
    titles = [s.title for s in c.sections]
    assert titles == ["Run", "By phase", "By epoch", "By process"]
    phase = c.sections[1]
    backward = dict(phase.rows)[("train", "1", "backward")]
    cols = [col.name for col in phase.columns]
    assert backward[cols.index("main_rss_max")] == (400 * MiB, 500 * MiB)
    assert backward[cols.index("peak_live_tensor_bytes")] == (300_000, 600_000)
    epoch = dict(c.sections[2].rows)
    assert epoch[("train", "2")][[col.name for col in c.sections[2].columns].index("growth")] == (1 * MiB, 5 * MiB)
    procs = dict(c.sections[3].rows)
    assert procs[("train", "worker 0")][0] == (2, 2)  # two worker-0 processes in each run
    assert procs[("train", "worker 0")][1] == (60 * MiB, 60 * MiB)
    wide = compare_text(c, wide=True)
    assert "By phase:" in wide and "400 MiB → 500 MiB (+100 MiB, +25.0%)" in wide
    # narrow (the default): A, B and the share under each metric
    text = compare_text(c)
    row = next(line for line in text.split("By phase:")[1].splitlines() if " backward " in line)
    assert row.split()[:7] == ["train", "1", "backward", "400", "MiB", "500", "MiB"] and "+25.0%" in row


def test_compare_html_escapes_everything_from_the_runs() -> None:
    evil = "<script>alert(1)</script>"
    sa, sb = fake_summary(scenario=evil), fake_summary(scenario=evil)
    for s in (sa, sb):
        s["phases"][0]["phase"] = evil
    c = compare(Summary.model_validate(sa), Summary.model_validate(sb), _procs(1), _procs(2),
                _sites([("main", evil, 1)]), _sites([("main", evil, 9)]))
    page = compare_html(c)
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_compare_html_escapes_a_run_name_with_a_script_tag() -> None:
    evil = "<script>alert('run')</script>"
    sa = fake_model(run_dir="reports/fake/" + evil.replace("/", ""), main=400 * MiB)
    sb = fake_model(run_dir="reports/fake/ok", main=500 * MiB)
    page = compare_html(compare(sa, sb, _procs(1), _procs(2), _sites([]), _sites([])))
    assert "<script>" not in page
    shown = "&lt;script&gt;alert(&#39;run&#39;)&lt;script&gt;"
    assert f"<code>reports/fake/{shown}</code>" in page  # the run directory
    assert f"<title>Compare: fake {shown} (ok) vs fake ok (ok)</title>" in page  # its name
    # the page around the names is markup, not escaped text
    assert "<h2>By phase</h2><table><tr>" in page and "<td class='n up'>+100 MiB</td>" in page
    assert "<p class='note'>None grew.</p>" in page and page.endswith("</body></html>")


def test_compare_command_writes_the_page(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    a = write_run(tmp_path / "a", fake_summary())
    b = write_run(tmp_path / "b", fake_summary(main=600 * MiB))
    for run, rss in ((a, 400 * MiB), (b, 600 * MiB)):
        (run / "report/tables").mkdir(parents=True)
        _procs(rss).to_csv(run / "report/tables/processes.csv", index=False)
    _sites([("main", "f (a.py:1)", 1)]).to_csv(a / "report/tables/sites.csv", index=False)
    _sites([("main", "f (a.py:1)", 5 * MiB)]).to_csv(b / "report/tables/sites.csv", index=False)
    out = tmp_path / "c.html"
    code, text, err = cli("compare", str(a), str(b), "--html", str(out))
    assert code == 0, err
    assert "f (a.py:1)" in text and "+5.00 MiB" in text
    assert out.is_file() and "<h2>By process</h2>" in out.read_text()


def test_compare_of_a_missing_run_is_bad_input(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    a = write_run(tmp_path / "a", fake_summary())
    code, text, err = cli("compare", str(a), str(tmp_path / "nope"))
    assert code == 2 and "not a run directory" in err
