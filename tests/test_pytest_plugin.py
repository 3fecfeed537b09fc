"""The pytest plugin: a test holds a harness run to budgets or a baseline; a failure says which
limit, in the units it was written in, where it peaked and the top allocation sites, then the
table; a project that never asks for the plugin sees no change.

Each case runs a small test project through ``pytester``. The fast ones load hand-written run
directories or none; the slow ones run workloads under the harness for real.
"""

from __future__ import annotations

import os
import re
import textwrap
from pathlib import Path

import pytest
from _gate import MiB, fake_summary, write_run
from _synthetic import write_capture
from _synthetic import write_run as write_synthetic_run
from conftest import WORKLOADS

# runpytest() runs in this process and afterwards drops the modules the inner run imported;
# numpy's C extension cannot be imported twice, so the gates (and pandas) are imported here first.
import harness.gate.check
import harness.gate.output  # noqa: F401
from harness.analysis.load import load_run
from harness.gate.pytest_plugin import budget_texts, in_unit, stage_pythonpath, written_unit
from harness.report.plan import FLAMEGRAPH_ESTIMATE, plan_jobs

pytest_plugins = ["pytester"]


def test_a_budget_that_holds_passes_and_one_that_does_not_fails_with_the_table(
        pytester: pytest.Pytester, tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", fake_summary(main=400 * MiB, growth=(3 * MiB, 3 * MiB)),
                    budgets={"peak_main_rss": "1 GB"})
    pytester.makepyfile(f"""
        def test_holds(harness_run):
            result = harness_run.load({str(run)!r}).check({{"peak_tree_rss": "2 GB"}})
            assert result.ok and len(result.rows) == 2   # the scenario's budget and this one

        def test_leaks(harness_run):
            harness_run.load({str(run)!r}).check({{"growth_per_epoch": "1 MB",
                                                  "phases": {{"backward": {{"peak_live_tensor_bytes": "1 kB"}}}}}})
    """)
    result = pytester.runpytest()  # the installed pytest11 entry point loads the plugin
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([
        "*FAIL*budget*growth_per_epoch*all*",
        "*FAIL*budget*peak_live_tensor_bytes*backward*",
        "*harness: check FAILED: 2 of 3 limit(s)*",
    ])
    assert "Traceback" not in result.stdout.str()  # the table is the message, not a stack


def test_a_baseline_check_fails_naming_the_phase(pytester: pytest.Pytester, tmp_path: Path) -> None:
    base_run = write_run(tmp_path / "base", fake_summary())
    big = write_run(tmp_path / "big", fake_summary(tensors=300_000 * 64))
    from harness.gate.runs import write_baseline

    write_baseline([base_run], tmp_path / "b.json")
    pytester.makepyfile(f"""
        def test_same(harness_run):
            harness_run.load({str(base_run)!r}).check(baseline={str(tmp_path / "b.json")!r}, tolerance="10%")

        def test_bigger(harness_run):
            harness_run.load({str(big)!r}).check(baseline={str(tmp_path / "b.json")!r}, tolerance="10%")
    """)
    result = pytester.runpytest()  # the installed pytest11 entry point loads the plugin
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*FAIL*baseline*peak_live_tensor_bytes*backward*"])


def test_bad_budget_in_a_test_is_reported_in_one_line(pytester: pytest.Pytester, tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", fake_summary())
    pytester.makepyfile(f"""
        def test_typo(harness_run):
            harness_run.load({str(run)!r}).check({{"peak_main_rss": "lots"}})
    """)
    result = pytester.runpytest()  # the installed pytest11 entry point loads the plugin
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*check(budgets=...): budgets.peak_main_rss: expected a size*"])


def _literal(line: str) -> str:
    """An fnmatch pattern matching ``line`` as it is (its brackets are not a character class)."""
    return re.sub(r"([\[*?])", r"[\1]", line)


SITES_HEADER = ("stage,capture,process,phase,site,workload_line,source,bytes_at_peak,"
                "allocations_at_peak,leaked_bytes,leaked_allocations,processes")


def test_a_failure_echoes_the_limit_as_written_and_names_where_and_the_top_sites(
        pytester: pytest.Pytester, tmp_path: Path) -> None:
    # GIVEN a run whose live tensors peak at 50 MB in backward (epoch 1), with a report's sites
    # table: two captures, the workload's own lines and a library frame below one of them
    run = write_run(tmp_path / "run", fake_summary(tensors=50_000_000, growth=(3 * MiB,)))
    code = pytester.path / "pkg" / "train_fn.py"
    (run / "report" / "tables").mkdir(parents=True)
    (run / "report" / "tables" / "sites.csv").write_text("\n".join([
        SITES_HEADER,
        f"train,train-e1-train,main,backward,_engine_run_backward (torch/autograd/graph.py:1072),"
        f"train ({code}:21),loss.backward(),33554432,83,0,0,1",
        f"train,train-e1-train,main,forward,train ({code}:17),train ({code}:17),out = model(x),16777216,8,0,0,1",
        "train,train-e1-train,workers,data,collate (torch/utils/data/_utils/collate.py:9),,,99999999,8,0,0,2",
        f"train,train-e2-train,main,backward,x (torch/x.py:1),train ({code}:30),other(),77777777,1,0,0,1",
    ]) + "\n", encoding="utf-8")
    pytester.makepyfile(f"""
        def test_budget(harness_run):
            harness_run.load({str(run)!r}).check({{"peak_live_tensor_bytes": "24 MB",
                                                  "phases": {{"forward": {{"peak_main_rss": "0.3 GiB"}}}}}})
    """)
    # WHEN the test runs (from pytester.path, so the workload's file shows relative to it)
    result = pytester.runpytest()
    # THEN the first line names both passed limits in the units they were written in, each then
    # says where it peaked and, from the peak's capture and process, the workload's lines
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    result.stdout.fnmatch_lines([_literal(line) for line in [
        "harness: peak_live_tensor_bytes 50.0 MB > budget 24 MB; "
        "peak_main_rss [forward] 0.39 GiB > budget 0.3 GiB",
        "peak_live_tensor_bytes, all phases: 50.0 MB against the budget 24 MB, 26.0 MB over",
        "  peak: stage train, epoch 1, phase backward",
        "  top allocation sites, bytes live at the capture's peak (memray capture train-e1-train, main process):",
        "    33.6 MB  pkg/train_fn.py:21 in train: loss.backward()  [backward]",
        "               via _engine_run_backward (torch/autograd/graph.py:1072)",
        "    16.8 MB  pkg/train_fn.py:17 in train: out = model(x)  [forward]",
        "peak_main_rss, phase forward: 0.39 GiB against the budget 0.3 GiB, 0.09 GiB over",
        "  peak: stage train, epoch 1, phase forward",
        "  top allocation sites, bytes live at the capture's peak (memray capture train-e1-train, main process):",
        "    0.02 GiB  pkg/train_fn.py:17 in train: out = model(x)",
    ]] + ["*harness: check FAILED: 2 of 2 limit(s)*"])  # and the check's table after it
    assert "collate" not in out and "other()" not in out  # workers' and epoch 2's sites are not these
    assert "Traceback" not in out


def test_a_failure_without_captures_says_why_it_names_no_site(pytester: pytest.Pytester, tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", fake_summary(growth=(5 * MiB, 5 * MiB)))
    pytester.makepyfile(f"""
        def test_growth(harness_run):
            harness_run.load({str(run)!r}).check({{"growth_per_epoch": "4MiB", "peak_heap": 1000}})
    """)
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "harness: peak_heap 8.00 MiB > budget 1000 B; growth_per_epoch 5.00 MiB > budget 4MiB",
        "peak_heap, all phases: 8.00 MiB against the budget 1000 B, 8.00 MiB over",
        "  peak: stage train, memray capture train-e1-train, main process",
        "growth_per_epoch, all phases: 5.00 MiB against the budget 4MiB, 1.00 MiB over",
        "  peak: stage train, from the end of epoch 1 to the end of epoch 2",
        "top allocation sites: none recorded, no memray capture (memray.mode: windows)",
    ])
    # said once, not per limit (pytest repeats the whole message in its summary when CI is set)
    failure = result.stdout.str().split("short test summary info")[0]
    assert failure.count("top allocation sites") == 1


@pytest.mark.parametrize(("written", "unit", "n", "shown"), [
    ("24 MB", "MB", 50_696_232, "50.7 MB"),
    ("24mb", "MB", 50_696_232, "50.7 MB"),
    ("1.2 GB", "GB", 853_000_000, "0.85 GB"),
    ("1 GiB", "GiB", 3 * 1024**3, "3.00 GiB"),
    ("512 KiB", "KiB", 123_456_789, "120,563 KiB"),
    ("4M", "MB", 4_200_000, "4.20 MB"),
    ("1000", "B", 1234567, "1,234,567 B"),
    ("lots", None, 1536, "1.50 KiB"),  # not a size: bytes as format_size writes them
])
def test_a_figure_is_shown_in_the_unit_its_limit_was_written_in(
        written: str, unit: str | None, n: int, shown: str) -> None:
    assert written_unit(written) == unit
    assert in_unit(n, written_unit(written)) == shown


def test_the_limits_written_as_text_are_kept_by_metric_name() -> None:
    texts = budget_texts({"peak_main_rss": " 1.2 GB ", "peak_heap": 1000, "growth_per_epoch": None,
                          "phases": {"backward": {"peak_live_tensor_bytes": "24 MB", "peak_main_rss": 5}}})
    assert texts == {"peak_main_rss": "1.2 GB", "phases.backward.peak_live_tensor_bytes": "24 MB"}


def test_a_stage_gets_the_import_paths_a_fresh_interpreter_would_lack(tmp_path: Path) -> None:
    # GIVEN this process's path: the working directory (""), two directories pytest inserted, one
    # of them twice, a directory that no longer exists and the environment's own site-packages
    rootdir, tests, site, env_dir = (tmp_path / n for n in ("proj", "proj/tests", "site", "env"))
    for d in (rootdir, tests, site, env_dir):
        d.mkdir(parents=True, exist_ok=True)
    search = ["", str(tests), str(site), str(rootdir), str(tmp_path / "gone"), str(tests)]
    # WHEN the stage's PYTHONPATH is made, with the rootdir as an extra and a PYTHONPATH set now
    value = stage_pythonpath(search, [rootdir, tests / ".." / "tests"], str(env_dir),
                             frozenset({os.path.realpath(site)}))
    # THEN it holds the inserted ones in their order, then what PYTHONPATH had, each once
    assert value.split(os.pathsep) == [str(tests), str(rootdir), str(env_dir)]
    assert stage_pythonpath([""], [], "", frozenset()) == ""


def test_the_plugins_reports_read_every_capture_and_draw_no_flamegraph(tmp_path: Path) -> None:
    run_dir = write_synthetic_run(tmp_path)
    write_capture(run_dir, "train-e1-train")
    write_capture(run_dir, "train-e2-train")
    jobs, declined = plan_jobs(load_run(run_dir), tmp_path / "out", budget=10 * FLAMEGRAPH_ESTIMATE, draw=False)
    assert len(jobs) == 2  # the sites and heap peaks still come from every capture
    assert all(j.peak_out is None and j.temporal_out is None for j in jobs)
    assert [d.note for d in declined] == ["not drawn: the report was built without flamegraphs"] * 2


@pytest.mark.slow
def test_a_real_run_of_a_leaking_workload_fails_its_growth_budget(pytester: pytest.Pytester) -> None:
    script = WORKLOADS / "leaky.py"
    pytester.makepyfile(f"""
        def test_leak(harness_run):
            run = harness_run.run_workload({str(script)!r}, args=["--leak-mb", "12", "--steps", "10"],
                                           memray={{"mode": "off"}})
            run.check({{"growth_per_epoch": "4 MiB"}})
    """)
    result = pytester.runpytest_subprocess()  # the installed entry point loads the plugin
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "harness: growth_per_epoch * MiB > budget 4 MiB",
        "  peak: stage main, from the end of epoch * to the end of epoch *",
        "top allocation sites: none recorded, memray.mode is off",
        "*FAIL*budget*growth_per_epoch*all*4.00 MiB*",
    ])


TRAIN_FN = """
    \"\"\"A function workload: its forward pass and backward each hold about 17 MB of tensors.\"\"\"

    import torch

    from harness import probe


    def train():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(64, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 4))
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        probe.watch(model=model, optimizer=opt)
        with probe.epoch(1):
            for x in probe.iterate([torch.randn(4096, 64) for _ in range(4)]):
                probe.phase("forward")
                opt.zero_grad()
                out = model(x)  # the forward's activations
                probe.phase("loss")
                loss = out.square().mean()
                probe.phase("backward")
                loss.backward()  # the gradients
                probe.phase("optimizer")
                opt.step()
"""
BUDGET_TEST = """
    def test_budget(harness_run):
        run = harness_run.run_workload("pkg.train_fn:train", memray={"train_start": 0, "train_steps": 3})
        assert not (run.run_dir / "report" / "flamegraphs").exists()  # a check reads none
        run.check({"peak_main_rss": "8 GB"})  # holds
        run.check({"peak_live_tensor_bytes": "24 MB"})
"""


@pytest.mark.slow
def test_a_function_workload_imports_and_fails_naming_its_site_from_any_directory(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a project (its rootdir marked by pyproject.toml) with a package and a test of it that
    # names the workload as module:function, with no conftest.py and no pythonpath setting
    proj = pytester.path / "proj"
    (proj / "pkg").mkdir(parents=True)
    (proj / "tests").mkdir()
    (proj / "pyproject.toml").write_text("[tool.pytest.ini_options]\n", encoding="utf-8")
    (proj / "pkg" / "__init__.py").write_text("", encoding="utf-8")
    (proj / "pkg" / "train_fn.py").write_text(textwrap.dedent(TRAIN_FN).lstrip(), encoding="utf-8")
    (proj / "tests" / "test_budget.py").write_text(textwrap.dedent(BUDGET_TEST), encoding="utf-8")
    code = textwrap.dedent(TRAIN_FN).lstrip().splitlines()
    allocating = {str(i) for i, line in enumerate(code, 1) if "# the" in line}  # model(x), backward()
    assert len(allocating) == 2
    # WHEN pytest runs it from the project's parent directory and from the project itself
    runs = {"parent": pytester.runpytest_subprocess("proj/tests/test_budget.py")}
    monkeypatch.chdir(proj)
    runs["project"] = pytester.runpytest_subprocess("tests/test_budget.py")
    # THEN the stage imports the workload both times, and the budget fails naming the workload's
    # lines (relative to where pytest ran) and the limit as written
    prefix = {"parent": "proj/", "project": ""}
    for where, result in runs.items():
        out = result.stdout.str()
        assert "cannot import" not in out and "no module named" not in out, where
        result.assert_outcomes(failed=1)
        result.stdout.fnmatch_lines([
            "harness: peak_live_tensor_bytes * MB > budget 24 MB",
            "peak_live_tensor_bytes, all phases: * MB against the budget 24 MB, * MB over",
            "  peak: stage main, epoch 1, step *, phase *",
            f"*MB  {prefix[where]}pkg/train_fn.py:*:*",
        ])
        named = set(re.findall(r"pkg/train_fn\.py:(\d+) in train", out))
        assert named & allocating, (where, named)


def test_the_plugin_is_registered_as_an_entry_point_named_harness(pytester: pytest.Pytester) -> None:
    from importlib.metadata import entry_points

    import harness.gate.pytest_plugin as plugin

    (ep,) = [ep for ep in entry_points(group="pytest11") if ep.name == "harness"]
    assert ep.load() is plugin
    # pytest loads it by that name without -p, and -p no:harness (the documented opt-out) unloads it
    assert pytester.parseconfig().pluginmanager.get_plugin("harness") is plugin
    assert pytester.parseconfig("-p", "no:harness").pluginmanager.get_plugin("harness") is None


PLAIN = """
    import pytest

    def test_ok():
        assert 1 + 1 == 2

    def test_broken():
        assert [1, 2] == [1, 3]

    @pytest.mark.skip(reason="not today")
    def test_skipped():
        pass
"""


def _comparable(result: pytest.RunResult) -> list[str]:
    """The run's output without what differs between two runs anyway: pytest's own list of the
    installed plugins and the durations."""
    return [re.sub(r"in [\d.]+s", "in Ns", line).strip("= ") for line in result.outlines
            if not line.startswith("plugins:")]


def test_a_project_that_never_names_the_harness_runs_exactly_as_without_the_plugin(
        pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_plain=PLAIN)
    with_plugin = pytester.runpytest("-ra")
    without = pytester.runpytest("-ra", "-p", "no:harness")
    assert re.search(r"^plugins:.*\bharness-", with_plugin.stdout.str(), re.MULTILINE)  # it was loaded
    with_plugin.assert_outcomes(passed=1, failed=1, skipped=1)
    without.assert_outcomes(passed=1, failed=1, skipped=1)
    assert _comparable(with_plugin) == _comparable(without)  # no header line, no other output
    pytester.runpytest("-m", "harness").assert_outcomes(deselected=3)  # its tests carry no marker


def test_a_project_that_never_names_the_harness_has_no_fixture_called_harness(
        pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_plain=PLAIN)
    result = pytester.runpytest("--fixtures")
    assert result.ret == 0
    names = [line.split()[0] for line in result.outlines if re.match(r"\w+( \[\w+ scope\])? -- ", line)]
    assert "tmp_path" in names and "harness_run" in names  # the listing is what this reads
    assert "harness" not in names
    pytester.makepyfile(test_old="def test_old_name(harness):\n    pass\n")
    old = pytester.runpytest("test_old.py")
    old.assert_outcomes(errors=1)
    old.stdout.fnmatch_lines(["*fixture 'harness' not found*", "*available fixtures:*harness_run*"])


def test_a_run_of_the_project_imports_nothing_heavy_for_the_plugin(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_modules="""
        import sys

        def test_nothing_heavy_is_imported():
            heavy = {"torch", "pandas", "numpy", "yaml", "harness.gate.check", "harness.control.runner"}
            assert "harness.gate.pytest_plugin" in sys.modules
            assert not heavy & set(sys.modules)
    """)
    pytester.runpytest_subprocess().assert_outcomes(passed=1)  # a fresh interpreter: this one has all


def test_tests_using_the_fixture_carry_the_harness_marker(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_mixed="""
        def test_memory(harness_run):
            pass

        def test_plain():
            pass
    """)
    only = pytester.runpytest("-v", "--strict-markers", "-m", "harness")
    only.assert_outcomes(passed=1, deselected=1)
    only.stdout.fnmatch_lines(["*::test_memory PASSED*"])
    rest = pytester.runpytest("-v", "-m", "not harness")
    rest.assert_outcomes(passed=1, deselected=1)
    rest.stdout.fnmatch_lines(["*::test_plain PASSED*"])
    pytester.runpytest("--markers").stdout.fnmatch_lines(["@pytest.mark.harness: *harness_run*"])
    pytester.runpytest("--help").stdout.fnmatch_lines([
        "*--harness-reports=DIR*", "*harness_reports (string):*"])


def test_harness_reports_keeps_each_tests_runs_under_its_own_folder(
        pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makepyfile(test_keep="""
        import os
        from pathlib import Path

        def test_where(harness_run, tmp_path):
            assert harness_run.reports == Path(os.environ["EXPECTED"])
    """)
    monkeypatch.setenv("EXPECTED", str(pytester.path / "kept" / "test_keep.py__test_where"))
    given = pytester.runpytest("--harness-reports", "kept")  # relative to where pytest starts
    given.assert_outcomes(passed=1)
    given.stdout.fnmatch_lines([f"harness: harness_run runs kept under {pytester.path / 'kept'}"])

    pytester.makeini("[pytest]\nharness_reports = from-ini\n")
    monkeypatch.setenv("EXPECTED", str(pytester.path / "from-ini" / "test_keep.py__test_where"))
    pytester.runpytest().assert_outcomes(passed=1)
    monkeypatch.setenv("EXPECTED", str(tmp_path / "cli" / "test_keep.py__test_where"))
    pytester.runpytest("--harness-reports", str(tmp_path / "cli")).assert_outcomes(passed=1)  # over the ini

    pytester.makeini("[pytest]\n")
    pytester.makepyfile(test_keep="""
        def test_where(harness_run, tmp_path):
            assert harness_run.reports == tmp_path / "reports"
    """)
    default = pytester.runpytest()
    default.assert_outcomes(passed=1)
    assert "harness:" not in default.stdout.str()  # no header line unless asked
