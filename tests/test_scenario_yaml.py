"""Hostile YAML in a scenario: one line naming the file, the key and the line, fast, in bounded memory.

Issue 13: aliases expanded without bound (item 6), duplicate keys accepted silently (item 11),
tracebacks for a file that is not UTF-8 and for a 5000-digit integer (item 7).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from harness.errors import ScenarioError, UsageError
from harness.gate import runs
from harness.gate.sweep import parse_knobs
from harness.records import scenario as sc
from harness.records import yaml_safe

REPO = Path(__file__).resolve().parents[1]

GOOD = "name: t\ndata: {source: synthetic, size: 120, num_workers: 0}\n"


def _bomb(levels: int = 9) -> str:
    """Nested aliases: 9 levels of 9 make 9**9 (387 million) values from about 400 bytes."""
    names = "abcdefghijklmnop"[:levels]
    lines = [f"  a: &a [{','.join('x' * 9)}]"]
    for prev, name in zip(names, names[1:]):
        lines.append(f"  {name}: &{name} [{','.join([f'*{prev}'] * 9)}]")
    return "bogus:\n" + "\n".join(lines) + "\n"


def _flow_bomb(levels: int = 9) -> str:
    """The same bomb on one line, as a ``--set`` value."""
    names = "abcdefghijklmnop"[:levels]
    items = [f"a: &a [{','.join('x' * 9)}]"]
    items += [f"{n}: &{n} [{','.join([f'*{p}'] * 9)}]" for p, n in zip(names, names[1:])]
    return "{" + ", ".join(items) + "}"


# Runs in a child so that the unfixed code (minutes, gigabytes) cannot take the test run down with
# it: address space is capped at 3 GiB, and the time and memory of the load alone are measured.
_CHILD = textwrap.dedent(
    """
    import io, json, resource, sys, time
    from contextlib import redirect_stderr
    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
    from harness.cli import main
    args = json.loads(sys.argv[1])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    err = io.StringIO()
    start = time.perf_counter()
    with redirect_stderr(err):
        code = main(args)
    seconds = time.perf_counter() - start
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    print(json.dumps({"code": code, "err": err.getvalue(), "seconds": seconds, "grown_mb": grown_mb}))
    """
)


def _run_child(args: list[str]) -> dict[str, object]:
    try:
        proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(args)], cwd=REPO,
                              capture_output=True, text=True, timeout=180)
    except subprocess.TimeoutExpired:
        pytest.fail("loading the scenario took more than 180 s")
    assert proc.returncode == 0, proc.stderr[-2000:]
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize("via", ["file", "--set"])
def test_alias_bomb_fails_fast_in_bounded_memory(tmp_path: Path, via: str) -> None:
    # GIVEN the bomb (about 400 bytes) under an unknown key, in the file or as a --set value
    text = GOOD + _bomb()
    assert len(text.encode()) < 500
    path = tmp_path / "s.yaml"
    path.write_text(text if via == "file" else GOOD, encoding="utf-8")
    args = ["run", str(path), "--reports", str(tmp_path / "r")]
    if via == "--set":
        args += ["--set", f"bogus={_flow_bomb()}"]
    # WHEN the harness loads it
    result = _run_child(args)
    # THEN it refuses in one line, within 5 s and 200 MB, before a run directory exists
    err = str(result["err"])
    assert result["code"] == 2, err
    assert len(err.strip().splitlines()) == 1, err
    where = f"{path}: bogus.e:" if via == "file" else "--set: bogus.e:"
    assert err.startswith(f"harness: error: {where} aliases expand it to more than 10000 values"), err
    assert float(str(result["seconds"])) < 5, result
    assert float(str(result["grown_mb"])) < 200, result
    assert not (tmp_path / "r").exists()


def test_alias_bomb_raises_scenario_error(tmp_path: Path) -> None:
    # 7 levels (4.8 million values) keep the unfixed code to seconds and a few hundred MB in-process
    path = tmp_path / "s.yaml"
    path.write_text(GOOD + _bomb(7), encoding="utf-8")
    with pytest.raises(ScenarioError, match=r"s\.yaml: bogus\.e: aliases expand it to more than 10000 "
                                            r"values \(line 8\)$"):
        sc.load(path)


def _write(tmp_path: Path, data: str | bytes) -> Path:
    path = tmp_path / "s.yaml"
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        # duplicate keys (item 11): at the top, nested, in flow style, through --set's YAML too
        (GOOD + "name: u\n", "s.yaml: name: appears twice, on lines 1 and 3"),
        (GOOD + "train:\n  epochs: 1\n  lr: 0.1\n  epochs: 3\n",
         "s.yaml: train.epochs: appears twice, on lines 4 and 6"),
        (GOOD + "budgets: {phases: {forward: {peak_main_rss: 1}, forward: {}}}\n",
         "s.yaml: budgets.phases.forward: appears twice on line 3"),
        (GOOD + "seed: 1\n0x1: a\n1: b\n", "s.yaml: 1: appears twice, on lines 4 and 5"),
        # a file that is not UTF-8 (item 7): the key, the line and the column
        (b"name: caf\xe9\ndata: {source: synthetic}\n",
         "s.yaml: name: not UTF-8: byte 0xe9 at line 1, column 10"),
        (b"# r\xe9sum\xe9\n" + GOOD.encode(), "s.yaml: not UTF-8: byte 0xe9 at line 1, column 4"),
        # integers too large to read or print (item 7)
        (GOOD + "seed: " + "7" * 5000 + "\n",
         "s.yaml: seed: integer too large, more than 4300 digits (line 3)"),
        (GOOD + "seed: -" + "7" * 5000 + "\n",
         "s.yaml: seed: integer too large, more than 4300 digits (line 3)"),
        (GOOD + "seed: 0x" + "f" * 5000 + "\n",
         "s.yaml: seed: integer too large, more than 4300 digits (line 3)"),
        (GOOD + "seed: 1" + ":0" * 2500 + "\n",
         "s.yaml: seed: integer too large, more than 4300 digits (line 3)"),
        (GOOD + "train: {epochs: " + "9" * 4400 + "}\n",
         "s.yaml: train.epochs: integer too large, more than 4300 digits (line 3)"),
        # scalars PyYAML recognises but cannot build raise ValueError, KeyError, AttributeError
        (GOOD + "seed: 2001-13-01\n", "s.yaml: seed: not a valid timestamp: '2001-13-01' (line 3)"),
        (GOOD + "train: {epochs: !!bool maybe}\n", "s.yaml: train.epochs: not a valid bool: 'maybe' (line 3)"),
        # tags SafeLoader cannot build: named with their key, not only their line (issue 22)
        (GOOD + "train: {epochs: !!python/name:os.system }\n",
         "s.yaml: train.epochs: tag 'tag:yaml.org,2002:python/name:os.system' is not allowed: a "
         "scenario holds plain values (line 3)"),
        (GOOD + "bogus: !!python/object/apply:os.system [true]\n",
         "s.yaml: bogus: tag 'tag:yaml.org,2002:python/object/apply:os.system' is not allowed: a "
         "scenario holds plain values (line 3)"),
        # aliases that lead back into themselves, or nest deeper than a scenario could
        (GOOD + "bogus: &a [x, *a]\n",
         "s.yaml: bogus[1]: an alias refers to the list or mapping that holds it (line 3)"),
        (GOOD + "bogus: " + "[" * 30 + "]" * 30 + "\n",
         "s.yaml: bogus" + "[0]" * 19 + ": nested more than 20 levels deep (line 3)"),
        (GOOD + "".join(f"l{i}: &l{i} [*l{i - 1}]\n" if i else "l0: &l0 [x]\n" for i in range(25)),
         "s.yaml: l19: aliases nest it more than 20 levels deep (line 22)"),
        # too many values even without aliases, and a file far larger than any scenario
        (GOOD + "bogus: [" + "x," * 10_001 + "]\n",
         "s.yaml: bogus[9987]: more than 10000 values (line 3)"),
        (GOOD + "#" * (1 << 20) + "\n", "s.yaml: larger than 1 MiB; a scenario is a few KB"),
    ],
)
def test_hostile_yaml_is_one_scenario_error(tmp_path: Path, data: str | bytes, expected: str) -> None:
    path = _write(tmp_path, data)
    with pytest.raises(ScenarioError) as err:
        sc.load(path)
    assert str(err.value) == f"{tmp_path}/{expected}"
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("budgets={peak_heap: 1 MB, peak_heap: 2 MB}", "--set: budgets.peak_heap: appears twice"),
        ("seed=" + "7" * 5000, "--set: seed: integer too large, more than 4300 digits"),
        ("workload.args=&a [x, *a]", "--set: workload.args[1]: an alias refers to the list or mapping"),
    ],
)
def test_set_values_go_through_the_same_loader(tmp_path: Path, override: str, expected: str) -> None:
    path = _write(tmp_path, GOOD)
    with pytest.raises(ScenarioError) as err:
        sc.load(path, [override])
    assert str(err.value).startswith(expected), err.value
    assert "line" not in str(err.value)  # a --set value has no lines to point at


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (GOOD + "train:\n  epochs: 1\n  epochs: 0\n", "s.yaml: train.epochs: appears twice, on lines 4 and 5"),
        (b"name: caf\xe9\n", "s.yaml: name: not UTF-8: byte 0xe9 at line 1, column 10"),
        (GOOD + "seed: " + "7" * 5000 + "\n", "s.yaml: seed: integer too large, more than 4300 digits"),
    ],
)
def test_harness_run_says_one_line_and_exits_2(tmp_path: Path, cli, data: str | bytes,  # type: ignore[no-untyped-def]
                                               expected: str) -> None:
    path = _write(tmp_path, data)
    code, out, err = cli("run", str(path), "--reports", str(tmp_path / "r"))
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"harness: error: {tmp_path}/{expected}"), err
    assert not (tmp_path / "r").exists()


def test_sweep_values_go_through_the_same_loader() -> None:
    with pytest.raises(UsageError, match=r"^--vary: seed: integer too large, more than 4300 digits$"):
        parse_knobs(["seed=1," + "7" * 5000], [])
    with pytest.raises(UsageError, match=r"^--vary: budgets\.peak_heap: appears twice$"):
        parse_knobs(["budgets={peak_heap: 1 MB, peak_heap: 2 MB}"], [])


def test_run_and_budget_readers_use_the_same_loader(tmp_path: Path) -> None:
    # A run directory's scenario.yaml (harness check, report) and a scenario's budgets
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "scenario.yaml").write_bytes(b"name: caf\xe9\n")
    with pytest.raises(UsageError, match=r"scenario\.yaml: name: not UTF-8: byte 0xe9 at line 1"):
        runs.run_scenario(run_dir)
    path = _write(tmp_path, GOOD + "budgets: {peak_heap: 1 MB, peak_heap: 2 MB}\n")
    with pytest.raises(ScenarioError, match=r"s\.yaml: budgets\.peak_heap: appears twice on line 3$"):
        runs.budgets_from(path)


def test_legitimate_yaml_still_loads(tmp_path: Path) -> None:
    # Anchors, aliases and merge keys stay usable; a merged key overridden is not a duplicate.
    data = yaml_safe.load_text("a: &a {x: 1, y: [1, 2]}\nb: {<<: *a, y: 3}\nc: *a\nd: caf\u00e9\n")
    assert data == {"a": {"x": 1, "y": [1, 2]}, "b": {"x": 1, "y": 3}, "c": {"x": 1, "y": [1, 2]},
                    "d": "caf\u00e9"}
    assert yaml_safe.load_text("") is None
    assert yaml_safe.load_text("n: " + "9" * 4300) == {"n": int("9" * 4300)}
    # A long list is fine as long as it stays under the cap.
    assert len(yaml_safe.load_text("l: [" + "x," * 9_900 + "]")["l"]) == 9_900
    path = _write(tmp_path, "\ufeff" + GOOD + "workload: {entry: x.py, args: &args [--a, --b]}\n"
                  + "stages: [main]\n")
    s = sc.load(path)
    assert s.workload.args == ("--a", "--b") and s.name == "t"
