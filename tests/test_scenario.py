"""Scenario validation: every bad input is one line naming the file and key, exit code 2."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from harness.errors import ScenarioError
from harness.records import scenario as sc

REPO = Path(__file__).resolve().parents[1]


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(text, encoding="utf-8")
    return path


GOOD = """
name: t
data: {source: synthetic, size: 120, num_workers: 0}
"""


@pytest.mark.parametrize(
    ("text", "overrides", "expected"),
    [
        (GOOD + "bogus: 1\n", [], "s.yaml: bogus: unknown key"),
        (GOOD + "train: {epochz: 1}\n", [], "s.yaml: train.epochz: unknown key"),
        (GOOD + "train: {batch_size: 0}\n", [], "s.yaml: train.batch_size: Input should be greater than or equal to 1, got 0"),
        (GOOD + "train: {batch_size: '4'}\n", [], "s.yaml: train.batch_size: Input should be a valid integer, got '4'"),
        (GOOD + "train: {epochs: -1}\n", [], "s.yaml: train.epochs: Input should be greater than or equal to 1, got -1"),
        (GOOD + "train: {lr: fast}\n", [], "s.yaml: train.lr: Input should be a valid number, got 'fast'"),
        (GOOD.replace("num_workers: 0", "num_workers: 0, split: [0.8, 0.1, 0.2]"), [], "s.yaml: data.split: split fractions must add up to 1, they add up to 1.1"),
        (GOOD.replace("num_workers: 0", "num_workers: 0, download: 'yes'"), [], "s.yaml: data.download: Input should be a valid boolean, got 'yes'"),
        (GOOD + "device: tpu\n", [], "s.yaml: device: expected 'cpu', 'cuda' or 'cuda:N'"),
        (GOOD + "memray: {epochs: sometimes}\n", [], "s.yaml: memray.epochs: expected a list of epochs, 'every' or null, got 'sometimes'"),
        (GOOD + "memray: {regrow_mb: -1}\n", [], "s.yaml: memray.regrow_mb: Input should be greater than or equal to 0, got -1"),
        (GOOD + "memray: {eval_batches: all}\n", [], "s.yaml: memray.eval_batches: Input should be a valid integer, got 'all'"),
        (GOOD, ["train.threads=0"], "s.yaml (with --set): train.threads: Input should be greater than or equal to 1, got 0"),
        (GOOD + "stages: [train, deploy]\n", [], "s.yaml: stages: the built-in workload has stages 'train' and 'test', not 'deploy'"),
        ("data: {source: synthetic}\n", [], "s.yaml: name: required key is missing"),
        ("name: t\ndata: [1, 2\n", [], "s.yaml: not valid YAML at line 3"),
        ("- just\n- a list\n", [], "s.yaml: expected a mapping of scenario keys at the top level"),
        (GOOD, ["train.epochz=1"], "s.yaml (with --set): train.epochz: unknown key"),
        (GOOD, ["train.epochs=0"], "s.yaml (with --set): train.epochs: Input should be greater than or equal to 1, got 0"),
        (GOOD, ["train.epochs"], "--set: train.epochs: expected KEY=VALUE"),
        ("name: t\ndata: {source: cifar10, root: nowhere, download: false}\n", [], "s.yaml: data.root: no CIFAR-10 in"),
        ("name: t\ndata: {source: folder, path: missing.tar.gz}\n", [], "s.yaml: data.path: no such directory or archive"),
        ("name: t\ndata: {source: folder}\n", [], "s.yaml: data.path: the folder source needs a directory or .tar.gz archive"),
    ],
)
def test_bad_scenario_is_one_line_with_file_and_key(
    tmp_path: Path, cli, text: str, overrides: list[str], expected: str  # type: ignore[no-untyped-def]
) -> None:
    path = _write(tmp_path, text)
    args = ["train", str(path), "--reports", str(tmp_path / "r")]
    for o in overrides:
        args += ["--set", o]
    code, out, err = cli(*args)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith(f"harness: error: {path}") or lines[0].startswith("harness: error: --set")
    assert expected in lines[0]
    assert not (tmp_path / "r").exists()  # nothing started


def test_missing_scenario_file(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    code, _, err = cli("run", str(tmp_path / "nope.yaml"))
    assert code == 2
    assert err.strip() == f"harness: error: {tmp_path / 'nope.yaml'}: no such scenario file"


def test_shipped_scenarios_load_and_baseline_is_the_tutorial() -> None:
    base = sc.from_dict(yaml.safe_load((REPO / "scenarios/baseline.yaml").read_text()), "baseline.yaml")
    assert base.data.source == "cifar10" and base.data.download is True
    assert (base.train.batch_size, base.train.lr, base.train.momentum) == (4, 0.001, 0.9)
    assert (base.train.epochs, base.data.num_workers, base.train.log_every) == (2, 2, 2000)
    assert base.data.split == (0.8, 0.1, 0.1)
    assert base.stages == ("train", "test")
    jpeg = sc.from_dict(yaml.safe_load((REPO / "scenarios/cifar10-jpeg.yaml").read_text()), "j.yaml")
    assert jpeg.train == base.train and jpeg.data.source == "folder"
    smoke = sc.load(REPO / "scenarios/smoke.yaml")
    assert smoke.data.source == "synthetic"


def test_overrides_are_typed_and_relative_paths_resolve(tmp_path: Path) -> None:
    path = _write(tmp_path, "name: t\ndata: {source: synthetic, root: cache}\n")
    s = sc.load(path, ["train.epochs=1", "train.lr=0.01", "data.num_workers=4", "memray.mode=off"])
    assert (s.train.epochs, s.train.lr, s.data.num_workers, s.memray.mode) == (1, 0.01, 4, "off")
    assert s.data.root == str(tmp_path / "cache")  # relative to the scenario file
    assert sc.load(path).train.epochs == 2


def test_resolved_scenario_round_trips(tmp_path: Path) -> None:
    s = sc.load(_write(tmp_path, GOOD))
    again = sc.from_dict(yaml.safe_load(sc.dump(s)), "dumped")
    assert again == s


def test_error_type_carries_exit_code_2() -> None:
    with pytest.raises(ScenarioError) as err:
        sc.from_dict({"name": "bad name!"}, "x.yaml")
    assert err.value.exit_code == 2
    assert str(err.value).startswith("x.yaml: name: String should match pattern")


@pytest.mark.parametrize(("text", "epochs"), [("every", "every"), ("[1, 4]", (1, 4)), ("null", None)])
def test_memray_epochs_round_trip_through_yaml_and_probe_json(tmp_path: Path, text: str, epochs: object) -> None:
    from harness.records.probe_config import ProbeConfig

    s = sc.load(_write(tmp_path, GOOD), [f"memray.epochs={text}", "train.threads=2", "memray.eval_batches=0"])
    assert (s.memray.epochs, s.train.threads, s.memray.eval_batches) == (epochs, 2, 0)
    assert sc.from_dict(yaml.safe_load(sc.dump(s)), "dumped") == s
    cfg = ProbeConfig.for_stage(s, "train")
    assert ProbeConfig.model_validate_json(cfg.model_dump_json()) == cfg
