"""The second adversarial pass (issue 23): outputs never written through a link, untrusted text
never printed raw, full disks and odd bytes said in one line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from _gate import MiB, fake_summary, write_run

from harness.errors import UsageError
from harness.records.atomic import write_atomic
from harness.records.manifest import Manifest, StageOutcome
from harness.records.text import printable, printable_lines

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


# -- untrusted text is printed escaped -------------------------------------------------------


@pytest.mark.parametrize(("raw", "shown"), [
    ("bad\x1b[31mRED\x1b]0;TITLE\x07", "bad\\x1b[31mRED\\x1b]0;TITLE\\x07"),
    ("a\nb\rc\td\x00e\x7f\x9b", "a\\x0ab\\x0dc\\x09d\\x00e\\x7f\\x9b"),
    ("evil\u202etxt.py", "evil\\u202etxt.py"),
    (b"caf\xff".decode("utf-8", "surrogateescape"), "caf\\xff"),
    ("plain ünïcode → ok", "plain ünïcode → ok"),
])
def test_printable_escapes_control_characters_bidi_overrides_and_undecodable_bytes(raw: str, shown: str) -> None:
    assert printable(raw) == shown
    assert printable(printable(raw)) == shown  # escaping twice changes nothing
    assert printable_lines(f"x\n{raw}") == "x\n" + "\n".join(printable(p) for p in raw.split("\n"))
    shown.encode("utf-8")  # printable on any terminal


def _harness(*args: str, cwd: Path) -> tuple[int, str, str]:
    import subprocess
    import sys

    from conftest import REPO

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "harness", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, errors="surrogateescape", timeout=300)
    return done.returncode, done.stdout, done.stderr


@pytest.mark.slow
def test_escape_sequences_from_a_workload_are_escaped_in_run_and_report(tmp_path: Path) -> None:
    # GIVEN a workload whose metric name and exception message carry CSI, OSC and BEL
    from conftest import WORKLOADS

    scenario = tmp_path / "esc.yaml"
    scenario.write_text(f"name: esc\nstages: [main]\nworkload: {{entry: {WORKLOADS / 'escapes.py'}}}\n"
                        "memray: {mode: 'off'}\n", encoding="utf-8")
    # WHEN it runs under the harness, the workload's own output echoed
    code, out, err = _harness("run", str(scenario), "--reports", str(tmp_path / "r"), cwd=tmp_path)
    # THEN it fails, and the harness's own lines show the sequences escaped, never raw
    assert code == 1, err
    own = [line for line in (out + err).splitlines() if line.startswith(("harness", "  "))]
    assert any(line.startswith("harness: error:") and "bad\\x1b[31mRED" in line for line in own)
    assert any("incomplete:" in line for line in own) and any("metrics" in line for line in own)
    assert all(_plain(line) for line in own), [line for line in own if not _plain(line)]
    # AND `harness report` prints them escaped again from the run directory
    run_dir = next((tmp_path / "r" / "esc").iterdir())
    code, out, err = _harness("report", str(run_dir), cwd=tmp_path)
    assert code == 0 and _plain(out + err) and "loss\\x1b[31mRED\\x1b]0;TITLE\\x07 1" in out, out


def test_check_and_compare_print_names_from_damaged_run_files_escaped(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    # GIVEN runs whose summaries were edited to hold escape sequences in names and paths
    evil = "x\x1b]0;TITLE\x07\x1b[2J"
    a = write_run(tmp_path / f"a{evil}", fake_summary(scenario=evil, status=f"failed{evil}"))
    b = write_run(tmp_path / "b", fake_summary(main=600 * MiB, scenario=evil))
    # WHEN they are checked and compared
    code, out, err = cli("check", str(a), "--budgets", str(_budgets(tmp_path)))
    # (a status that is not a status is bad input: exit 2, the field named)
    assert code == 2 and _plain(out + err) and "\\x1b]0;TITLE\\x07" in err, out + err
    a = write_run(tmp_path / f"a2{evil}", fake_summary(scenario=evil))
    code, out, err = cli("compare", str(a), str(b), "--html", str(tmp_path / "c.html"))
    # THEN no control character reaches the terminal
    assert code == 0 and _plain(out + err) and "\\x1b[2J" in out, out + err


def _budgets(tmp_path: Path) -> Path:
    path = tmp_path / "budgets.yaml"
    path.write_text("name: b\nbudgets: {peak_main_rss: 1 GiB}\n", encoding="utf-8")
    return path


def test_compare_folds_a_long_scenario_difference_into_100_columns(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    # GIVEN two runs of a script whose argument lists differ, one long path among them
    a, b = _compare_runs(tmp_path)
    args_a = [f"--option-{i}=value-{i}" for i in range(8)]
    args_b = [*args_a, "--data=/" + "very-long-folder-name/" * 6 + "file.bin"]
    for run, args in ((a, args_a), (b, args_b)):
        manifest = json.loads((run / "manifest.json").read_text())
        manifest["scenario"]["workload"] = {"entry": "train.py", "args": args}
        (run / "manifest.json").write_text(json.dumps(manifest))
    # WHEN they are compared
    code, out, err = cli("compare", str(a), str(b), "--html", str(tmp_path / "c.html"))
    # THEN the scenario's difference is there, folded, and no line passes 100 columns
    assert code == 0, err
    lines = out.splitlines()
    assert lines[2].startswith("scenario: workload.args [") and "file.bin" in out
    folded = [line for line in lines if not line.startswith("harness: comparison page ")]  # a path
    assert max(len(line) for line in folded) <= 100, max(folded, key=len)
    assert "".join(line.strip() for line in lines).count("--option-7=value-7") == 2


# -- control characters in scenarios, --set and --vary ---------------------------------------

_SMOKE = str(Path(__file__).resolve().parents[1] / "scenarios" / "smoke.yaml")
_NOT_UTF8 = b"\xff".decode("utf-8", "surrogateescape")  # as Python holds a byte of argv


@pytest.mark.parametrize(("args", "said"), [
    (("run", _SMOKE, "--set", "name=\x1b[31mred"), "--set: name: a character \\x1b that YAML"),
    (("run", _SMOKE, "--set", f"name={_NOT_UTF8}"), "--set: name: a byte 0xff that is not UTF-8"),
    (("train", _SMOKE, "--set", "seed=\x00"), "--set: seed: a character \\x00"),
    (("sweep", _SMOKE, "--vary", "seed=1,\x1b"), "--vary: seed: a character \\x1b"),
    (("sweep", _SMOKE, "--vary", "seed=1,2", "--set", "name=\x07"), "--set: name: a character \\x07"),
])
def test_control_characters_in_set_and_vary_values_are_one_line_exit_2(
        tmp_path: Path, cli, args: tuple[str, ...], said: str) -> None:  # type: ignore[no-untyped-def]
    code, out, err = cli(*args, "--reports", str(tmp_path / "r"))
    assert code == 2 and err.count("\n") == 1 and said in err and _plain(out + err), err
    assert not (tmp_path / "r").exists()


def test_a_control_character_in_a_scenario_file_is_named_with_its_key_and_line(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "bad.yaml"
    path.write_bytes(b"name: a\ntrain:\n  epochs: 1\x1b\n")
    code, _, err = cli("train", str(path))
    assert code == 2 and err == (f"harness: error: {path}: train.epochs: a character \\x1b that YAML "
                                 "does not allow (line 3, column 12)\n")


# -- baselines: of the run's scenario, and failures that say what the limit was made of ---


def test_check_refuses_a_baseline_of_another_scenario_unless_told(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    # GIVEN a baseline recorded from scenario "other" and a run of scenario "fake"
    other = write_run(tmp_path / "other", fake_summary(scenario="other"), name="other")
    base = tmp_path / "other.json"
    assert cli("baseline", str(other), "-o", str(base))[0] == 0
    run = write_run(tmp_path / "run", fake_summary())
    # WHEN the run is checked against it THEN it is refused, naming both scenarios
    code, out, err = cli("check", str(run), "--baseline", str(base))
    assert code == 2 and err.count("\n") == 1 and "'other'" in err and "'fake'" in err, err
    assert "--any-baseline" in err and "limit(s) hold" not in out
    # AND --any-baseline checks it anyway
    code, out, err = cli("check", str(run), "--baseline", str(base), "--any-baseline")
    assert code == 0 and "limit(s) hold" in out, out + err


def test_a_one_run_baseline_forgives_noise_and_a_failure_says_what_its_limit_was_made_of(
        tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    # GIVEN a baseline of one run, workers' USS 38 MiB
    first = write_run(tmp_path / "first", fake_summary(workers_uss=38 * MiB))
    base = tmp_path / "base.json"
    assert cli("baseline", str(first), "-o", str(base))[0] == 0
    # WHEN a run 384 KiB (1 %) above it is checked, with no tolerance at all
    noisy = write_run(tmp_path / "noisy", fake_summary(workers_uss=38 * MiB + 384 * 1024))
    code, out, err = cli("check", str(noisy), "--baseline", str(base), "--tolerance", "0%")
    # THEN the metric's noise floor (8 MiB for workers' USS) holds it, per phase too
    assert code == 0, out + err
    # AND a real regression fails with a line under it saying what the limit was made of
    worse = write_run(tmp_path / "worse", fake_summary(workers_uss=60 * MiB))
    code, out, err = cli("check", str(worse), "--baseline", str(base))
    assert code == 1, out + err
    lines = out.splitlines()
    fail = next(i for i, line in enumerate(lines) if line.startswith("FAIL") and "workers_uss" in line)
    explained = " ".join(line.strip() for line in lines[fail + 1:fail + 3])
    assert explained.startswith("limit = mean 38.0 MiB + noise floor 8.00 MiB (baseline of 1 run, "
                                "spread 0 B; mean + tolerance 10.0%: 41.8 MiB;"), explained
    assert max(len(line) for line in lines[2:]) <= 100  # below the title's paths


# -- a stopped run's notes and heap ------------------------------------------------------------


def _stopped_run(tmp_path: Path, events: list[dict[str, object]], status: str,
                 last: dict[str, int] | None = None):  # type: ignore[no-untyped-def]
    from harness.analysis.load import Run, Stage, empty_samples

    outcome = StageOutcome.model_validate({"name": "main", "status": status, "last": last})
    from harness.records.events import EVENT_ADAPTER

    raw = [{"t": 0.0, "kind": "stage_start", "stage": "main", "pid": 1},
           {"t": 1.0, "kind": "epoch_start", "epoch": 1}, *events]
    stage = Stage("main", tmp_path, outcome, empty_samples(),
                  [EVENT_ADAPTER.validate_python(e) for e in raw], {}, [])
    manifest = {"kind": "run", "status": status,
                "scenario": {"name": "s", "memray": {"mode": "windows", "train_start": 10,
                                                     "train_steps": 100, "epochs": None}}}
    from harness.records.scenario import from_dict

    m = Manifest.model_validate(manifest)
    return Run(tmp_path, m, [stage], scenario=from_dict(manifest["scenario"], "test"))


_TRACED = {"t": 1.2, "kind": "traced_step", "epoch": 1, "step": 0, "phases": [], "tensors": {}}
_OPEN = {"t": 1.5, "kind": "memray_start", "capture": "main-e1-train", "epoch": 1, "step": 10,
         "section": None}


@pytest.mark.parametrize("status", ["interrupted", "terminated", "killed"])
def test_a_run_stopped_inside_its_window_is_not_said_to_lack_a_training_loop(tmp_path: Path, status: str) -> None:
    from harness.analysis.windows import cut_short, cut_short_notes, unopened_windows

    # GIVEN a stage stopped at step 60 of its loop, its training window open, no loop_end written
    run = _stopped_run(tmp_path, [_TRACED, _OPEN], status, {"epoch": 1, "step": 60, "total": 1000, "phase": "forward"})
    # THEN no note says it has no probe.iterate loop; the capture is said to be cut short
    assert unopened_windows(run) == []
    assert cut_short(run) == {"main-e1-train": status}
    (note,) = cut_short_notes(run)
    assert f"main-e1-train was still open when its stage was {status}" in note


def test_a_run_stopped_in_its_loop_before_the_window_says_so(tmp_path: Path) -> None:
    from harness.analysis.windows import unopened_windows

    run = _stopped_run(tmp_path, [_TRACED], "interrupted", {"epoch": 1, "step": 5, "total": 1000, "phase": "forward"})
    (note,) = unopened_windows(run)
    assert "was interrupted in its training loop (epoch 1, step 5) before the window opened" in note
    assert "no training loop through probe.iterate" not in note


def test_the_heap_of_a_capture_cut_short_is_a_lower_bound_not_0_mib() -> None:
    from _gate import fake_summary

    from harness.render.terminal import summary_text

    summary = fake_summary(heap=34_556)
    summary["peaks"]["heap"]["capture"] = "main-e1-train"
    summary["metrics"] = {"final": {}, "series": []}
    text = summary_text(summary, Path("r.html"), {"main-e1-train": "killed"})
    assert "memray heap inside the capture windows ≥ 33.7 KiB (main-e1-train, cut short: killed)" in text
    assert "0 MiB (main-e1-train" not in summary_text(summary, Path("r.html"))


# -- a disk that fills ---------------------------------------------------------------------------


def _outcome(status: str = "ok", message: str = ""):  # type: ignore[no-untyped-def]
    from harness.control.runner import StageOutcome

    return StageOutcome(name="main", status=status, exit_code=0, signal=None,
                        started="2026-01-01T00:00:00.000+00:00", ended="2026-01-01T00:00:09.000+00:00",
                        wall_s=9.0, last=None, message=message, sampling=None, peak_tree_rss=None,
                        peak_main_rss=None)


def test_memray_deactivating_on_a_full_disk_fails_the_stage_with_the_time(tmp_path: Path) -> None:
    from harness.control import diskfull

    # GIVEN a stage whose output said memray could not grow its capture, and stopped
    stage = tmp_path / "stages" / "main"
    watch = diskfull.watch(stage / "log.txt")
    watch.line(b"Memray ERROR: Failed to grow output file /r/stages/main/memray/main.bin by 401408 "
               b"bytes: No space left on device\n")
    watch.line(b"Failed to write output, deactivating tracking\n")
    # WHEN the stage ends with exit code 0 THEN it is failed, naming the file and when memray stopped
    judged = diskfull.judge(_outcome(), stage)
    assert judged.status == "failed" and judged.message == "disk full writing /r/stages/main/memray/main.bin"
    assert judged.disk_full is not None and judged.disk_full.memray_stopped is not None and judged.disk_full.memray_stopped.endswith("+00:00")
    # AND the watch is gone with the stage: the next stage starts clean
    assert diskfull.judge(_outcome(), stage).status == "ok"


def test_a_stage_that_failed_on_enospc_says_disk_full_writing_its_file(tmp_path: Path) -> None:
    from harness.control import diskfull

    message = "OSError: [Errno 28] No space left on device: '/r/stages/main/events.jsonl'"
    judged = diskfull.judge(_outcome("failed", message), tmp_path)
    assert judged.status == "failed" and judged.message == "disk full writing /r/stages/main/events.jsonl"


def test_the_report_marks_a_capture_whose_tracking_stopped_with_the_time(tmp_path: Path) -> None:
    from harness.analysis.load import Run, Stage, empty_samples
    from harness.analysis.windows import tracking_stopped

    outcome = {"name": "main", "status": "failed", "started": "2026-01-01T00:00:00.000+00:00",
               "disk_full": {"path": str(tmp_path / "stages/main/memray/main.bin"),
                             "memray_stopped": "2026-01-01T00:00:02.500+00:00"}}
    stage = Stage("main", tmp_path / "stages/main", StageOutcome.model_validate(outcome), empty_samples(),
                  [], {}, [])
    (note,) = tracking_stopped(Run(tmp_path, Manifest(status="failed"), [stage]))
    assert note.startswith("memray stopped tracking stage main at 00:00:02 UTC, 2.5 s into the stage: "
                           "it could not write stages/main/memray/main.bin (disk full)")


def _fill(path: Path) -> None:
    """Fill the disk ``path`` is on, to its last block."""
    with open(path, "ab", buffering=0) as f:
        for size in (65536, 4096, 512, 1):
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError:
                pass


@pytest.fixture
def small_disk(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A 4 MiB tmpfs (root only); skipped where mounting is not permitted."""
    import subprocess

    mnt = tmp_path / "disk"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_disk_full_at_start_is_one_line_and_leaves_no_run_directory(small_disk: Path, cli) -> None:  # type: ignore[no-untyped-def]
    # GIVEN a disk with no room left
    (small_disk / "reports" / "smoke").mkdir(parents=True)
    _fill(small_disk / "filler")
    # WHEN a run starts there THEN one line, exit 1, and no run directory report would not read
    code, _, err = cli("run", _SMOKE, "--reports", str(small_disk / "reports"))
    assert code == 1 and err.startswith("harness: error: disk full writing ") and err.count("\n") == 1
    assert list((small_disk / "reports" / "smoke").iterdir()) == []


@pytest.mark.slow
def test_a_disk_that_fills_under_memray_fails_the_run_and_the_report_says_when(
        small_disk: Path, tmp_path: Path) -> None:
    import shutil

    from conftest import WORKLOADS

    # GIVEN a whole-stage memray capture of a workload that allocates, on a 4 MiB disk
    scenario = tmp_path / "alloc.yaml"
    scenario.write_text(f"name: alloc\nstages: [main]\nworkload: {{entry: {WORKLOADS / 'allocates.py'}}}\n"
                        "memray: {mode: full}\n", encoding="utf-8")
    # WHEN it runs THEN no traceback: the run is failed, 'disk full writing' its capture
    code, out, err = _harness("run", str(scenario), "--reports", str(small_disk / "r"), cwd=tmp_path)
    assert code == 1 and "Traceback" not in out + err, out + err
    assert "harness: error: stage 'main' failed" in err and "disk full writing" in err
    run_dir = next((small_disk / "r" / "alloc").iterdir())
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "failed", manifest
    assert manifest["stages"][0]["disk_full"]["memray_stopped"], (manifest, out, err)
    # AND `harness report` on the full disk (whatever memray freed when it gave up) is one line
    _fill(small_disk / "filler")
    code, out, err = _harness("report", str(run_dir), cwd=tmp_path)
    assert code == 1 and err.startswith("harness: error: disk full writing") and err.count("\n") == 1
    # AND with room again, the report marks the capture with the time tracking stopped
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    code, out, err = _harness("report", str(copy), cwd=tmp_path)
    assert code == 0 and "memray stopped tracking stage main at " in out and "s into the stage" in out


def test_an_older_run_s_log_line_marks_the_capture_without_a_time(tmp_path: Path) -> None:
    from harness.analysis.load import Run, Stage, empty_samples
    from harness.analysis.windows import tracking_stopped

    # GIVEN a run from before the harness recorded it: memray's line after 3 MiB of training output
    sdir = tmp_path / "stages/main"
    sdir.mkdir(parents=True)
    (sdir / "log.txt").write_bytes(b"[1, 2000] loss: 1.0\n" * 160_000
                                   + b"Failed to write output, deactivating tracking\n")
    stage = Stage("main", sdir, StageOutcome(name="main", status="ok"), empty_samples(), [], {}, [])
    (note,) = tracking_stopped(Run(tmp_path, Manifest(status="ok"), [stage]))
    assert note.startswith("memray stopped tracking stage main partway (this run did not record when)")


def test_a_full_disk_under_the_sampler_stops_its_writing_not_its_sampling(tmp_path: Path) -> None:
    import errno

    from harness.control import diskfull
    from harness.control.sampler import _Guarded

    # GIVEN the samples writer failing on a full disk
    def full(*_: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "samples/000003.csv"))

    guarded = _Guarded(tmp_path / "samples")
    # WHEN it writes THEN no exception ends the sampler's thread, and no further write is tried
    assert guarded.call(full) is None and not guarded.ok
    assert guarded.call(lambda: pytest.fail("written after the disk filled")) is None
    # AND the stage is judged failed, naming the file
    judged = diskfull.judge(_outcome(), tmp_path)
    assert judged.status == "failed" and judged.message == f"disk full writing {tmp_path}/samples/000003.csv"
    # AND another error is not called a full disk, but still fails the stage
    guarded = _Guarded(tmp_path / "samples")
    guarded.call(lambda: (_ for _ in ()).throw(PermissionError(errno.EACCES, "Permission denied", "x")))
    judged = diskfull.judge(_outcome(), tmp_path)
    assert judged.status == "failed" and judged.message == "cannot write x: Permission denied"


def test_argparse_errors_quote_arguments_escaped_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    from harness.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["run", "x.yaml", "--bo\x1b[2Jgus"])
    err = capsys.readouterr().err
    assert stop.value.code == 2
    assert "unrecognized arguments: --bo\\x1b[2Jgus" in err and _plain(err)


def test_a_sweep_folder_is_made_new_never_one_planted_at_its_name(tmp_path: Path) -> None:
    from harness.gate.runs import new_dir

    # GIVEN a link planted where the next sweep's folder will be, to a folder holding a sweep.csv
    victim = tmp_path / "project"
    victim.mkdir()
    (victim / "sweep.csv").write_text("mine")
    planned = tmp_path / "reports" / "smoke" / "sweep-20270101T000000Z"
    planned.parent.mkdir(parents=True)
    planned.symlink_to(victim)
    # WHEN the sweep makes its folder THEN it is a new one beside it
    made = new_dir(planned, "the sweep's table")
    assert made != planned and made.is_dir() and not made.is_symlink()
    assert made.name.startswith("sweep-20270101T000000Z-") and list(made.iterdir()) == []
    assert (victim / "sweep.csv").read_text() == "mine"


def test_a_dollar_sign_in_a_run_s_names_is_drawn_as_text(tmp_path: Path) -> None:
    import _synthetic

    from harness.report import build_report

    # GIVEN a run whose manifest names the scenario with an unbalanced mathtext expression
    run = _synthetic.write_run(tmp_path)
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["scenario_name"] = "a$\\frac{$"
    (run / "manifest.json").write_text(json.dumps(manifest))
    # WHEN it is reported THEN the timeline is drawn, its title as written
    result = build_report(run, processes=1, flamegraphs=False)
    assert result.timeline_svg is not None and "a$\\frac{$" in result.timeline_svg.read_text()
