"""Provenance of the user's code apart from the harness's, and the resolved scenario the report
shows: only the keys in effect for the run's workload and device."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from _gate import fake_model, fake_summary, write_run

from harness import cli
from harness.analysis.load import Run, load_run
from harness.control import rundir
from harness.gate.runs import run_provenance
from harness.records.manifest import Manifest
from harness.records.scenario import Scenario
from harness.report.build import _provenance, scenario_in_effect, scenario_text

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")

SCRIPT = "print('hello from a script')\n"


def _git(repo: Path, *args: str) -> str:
    out = subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t",
                          "-c", "commit.gpgsign=false", *args],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git repository holding one committed script, ``train.py``."""
    path = tmp_path / "userrepo"
    path.mkdir()
    _git(path, "init", "-q")
    (path / "train.py").write_text(SCRIPT, encoding="utf-8")
    _git(path, "add", "train.py")
    _git(path, "commit", "-q", "-m", "the script")
    return path


@needs_git
def test_a_committed_script_names_its_repositorys_revision(repo: Path) -> None:
    prov = rundir.workload_provenance(str(repo / "train.py"))
    assert prov["file"] == str((repo / "train.py").resolve())
    assert prov["sha256"] == hashlib.sha256(SCRIPT.encode()).hexdigest()
    assert prov["git_revision"] == _git(repo, "rev-parse", "HEAD")
    assert prov["git_root"] == str(repo.resolve())
    assert prov["dirty"] is False


@needs_git
@pytest.mark.parametrize("change", ["modified", "staged", "untracked"])
def test_a_script_that_differs_from_the_revision_is_dirty(repo: Path, change: str) -> None:
    script = repo / "train.py"
    if change == "untracked":
        script = repo / "other.py"
    script.write_text(SCRIPT + "print('changed')\n", encoding="utf-8")
    if change == "staged":
        _git(repo, "add", "train.py")
    prov = rundir.workload_provenance(str(script))
    assert prov["dirty"] is True and prov["git_revision"] == _git(repo, "rev-parse", "HEAD")


@needs_git
def test_a_change_elsewhere_in_the_repository_leaves_the_script_clean(repo: Path) -> None:
    (repo / "notes.txt").write_text("x", encoding="utf-8")
    assert rundir.workload_provenance(str(repo / "train.py"))["dirty"] is False


def test_a_script_outside_a_repository_has_its_hash_and_no_revision(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(SCRIPT, encoding="utf-8")
    ceiling = {"GIT_CEILING_DIRECTORIES": str(tmp_path)}  # tmp_path may itself sit in a repository
    with pytest.MonkeyPatch.context() as mp:
        for k, v in ceiling.items():
            mp.setenv(k, v)
        prov = rundir.workload_provenance(str(script))
    assert prov["sha256"] == hashlib.sha256(SCRIPT.encode()).hexdigest()
    assert (prov["git_revision"], prov["git_root"], prov["dirty"]) == (None, None, None)


@needs_git
def test_a_function_entry_names_its_modules_file(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = repo / "mypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("raise RuntimeError('imported')\n", encoding="utf-8")
    (pkg / "work.py").write_text("def main(ctx):\n    pass\n", encoding="utf-8")
    monkeypatch.chdir(repo)  # the stage finds it in its working directory
    prov = rundir.workload_provenance("mypkg.work:main")  # found without importing the package
    assert prov["file"] == str((pkg / "work.py").resolve())
    assert prov["git_revision"] == _git(repo, "rev-parse", "HEAD")
    assert prov["dirty"] is True  # not committed


def test_a_module_not_found_has_no_file() -> None:
    prov = rundir.workload_provenance("no_such_module_here.sub:main")
    assert prov == {"entry": "no_such_module_here.sub:main", "file": None, "sha256": None,
                    "git_root": None, "git_revision": None, "dirty": None}


def test_the_builtin_workload_is_the_models_stages_file() -> None:
    prov = rundir.workload_provenance("model.stages:run")
    assert prov["file"] is not None and prov["file"].endswith("model/stages.py")


def test_a_baseline_keeps_each_runs_workload_provenance(tmp_path: Path) -> None:
    run_dir = write_run(tmp_path / "a", fake_summary())
    manifest = json.loads((run_dir / "manifest.json").read_text())
    workload = {"entry": "/x/train.py", "file": "/x/train.py", "sha256": "0" * 64, "git_root": "/x",
                "git_revision": "f" * 40, "dirty": False}
    manifest.update(git_revision="abc", workload=workload)
    (run_dir / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    prov = run_provenance(run_dir, fake_model())
    assert prov["git_revision"] == "abc" and prov["workload"] == workload


@needs_git
@pytest.mark.slow
def test_the_manifest_names_the_scripts_revision_and_the_harnesss_apart(tmp_path: Path, repo: Path) -> None:
    scenario = {"name": "prov", "stages": ["main"], "memray": {"mode": "off"},
                "workload": {"entry": str(repo / "train.py")}}
    path = tmp_path / "prov.yaml"
    path.write_text(yaml.safe_dump(scenario), encoding="utf-8")
    reports = tmp_path / "reports"
    assert cli.main(["run", str(path), "--reports", str(reports), "--quiet", "--no-report"]) == 0
    (run_dir,) = (reports / "prov").iterdir()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["workload"]["git_revision"] == _git(repo, "rev-parse", "HEAD")
    assert manifest["workload"]["dirty"] is False
    assert manifest["git_revision"] == rundir.provenance()["git_revision"]  # the harness's own
    assert manifest["git_revision"] != manifest["workload"]["git_revision"]


# -- the resolved scenario in the report ---------------------------------------------------------
def _text(tmp_path: Path, **scenario: Any) -> str:
    resolved = Scenario(name="s", **scenario)
    return scenario_text(Run(tmp_path, Manifest(status="ok", scenario=resolved.to_dict()), [],
                             scenario=resolved))


def test_a_script_workloads_scenario_text_has_no_builtin_sections(tmp_path: Path) -> None:
    text = _text(tmp_path, stages=("main",), workload={"entry": "/x/train.py", "args": ("--fast",)})
    shown = yaml.safe_load(text)
    assert "data" not in shown and "train" not in shown and "seed" not in shown
    assert "\ndata:" not in text and not text.startswith("data:")
    assert shown["workload"] == {"entry": "/x/train.py", "args": ["--fast"], "auto_phases": True}
    assert {"memray", "tensors", "sampling", "limits", "budgets"} <= set(shown)
    assert "cuda" not in shown  # a cpu run
    assert "#   seed, data, train: read by the built-in workload only, not by a script\n" in text


def test_the_builtin_workloads_scenario_text_has_its_data(tmp_path: Path) -> None:
    shown = yaml.safe_load(_text(tmp_path, data={"source": "synthetic", "size": 120}))
    assert shown["data"] == {"source": "synthetic", "size": 120, "split": [0.8, 0.1, 0.1],
                             "num_workers": 2}  # root, path and download: not read for synthetic
    assert shown["train"]["epochs"] == 2 and shown["seed"] == 0
    assert "args" not in shown["workload"]


def test_a_function_entry_and_a_cuda_device(tmp_path: Path) -> None:
    shown = yaml.safe_load(_text(tmp_path, stages=("a",), device="cuda",
                                 workload={"entry": "pkg.mod:main"}))
    assert "data" not in shown and "cuda" in shown and "args" not in shown["workload"]


@pytest.mark.parametrize(("mode", "keys"), [
    ("off", ["mode"]), ("full", ["mode", "native_traces", "follow_fork"]),
    ("windows", list(Scenario(name="s").memray.model_dump())),
])
def test_memray_keys_by_mode(mode: str, keys: list[str]) -> None:
    kept, left = scenario_in_effect(Scenario(name="s", memray={"mode": mode}))
    assert list(kept["memray"]) == keys
    assert any("memray.train_start" in line for line in left) == (mode != "windows")


def test_a_scenario_the_model_cannot_read_is_shown_as_written(tmp_path: Path) -> None:
    # GIVEN a run whose scenario.yaml has a key this harness does not know (a later version's)
    (tmp_path / "scenario.yaml").write_text("name: s\nfuture: 1\n", encoding="utf-8")
    (tmp_path / "manifest.json").write_text('{"status": "ok"}', encoding="utf-8")
    # WHEN it is loaded THEN a problem names the file and the key, and the text is the file's
    run = load_run(tmp_path)
    assert run.scenario is None
    assert any("scenario.yaml: future: unknown key" in p for p in run.problems), run.problems
    assert scenario_text(run) == "name: s\nfuture: 1\n"


def test_a_run_without_scenario_yaml_reads_the_manifests_echo(tmp_path: Path) -> None:
    echo = Scenario(name="s", device="cuda").to_dict()
    (tmp_path / "manifest.json").write_text(json.dumps({"status": "ok", "scenario": echo}))
    run = load_run(tmp_path)
    assert run.scenario is not None and run.scenario.device == "cuda" and run.problems == []


def test_the_reports_provenance_names_the_workloads_revision_beside_the_harnesss(tmp_path: Path) -> None:
    workload = {"entry": "/x/train.py", "file": "/x/train.py", "sha256": "ab" * 32, "git_root": "/x",
                "git_revision": "f" * 40, "dirty": True}
    manifest = Manifest.model_validate({"status": "ok", "git_revision": "abc", "workload": workload})
    rows = dict(_provenance(Run(tmp_path, manifest, [])))
    assert rows["git revision"] == "abc (the harness)"
    assert rows["workload"] == f"/x/train.py, sha256 {'ab' * 6}, git {'f' * 40} (the file differs from it)"
    assert dict(_provenance(Run(tmp_path, Manifest(status="ok"), [])))["workload"] == "not recorded"
