"""The scenario's ``budgets:`` section: sizes as people write them, one-line errors for the rest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from harness.errors import ScenarioError
from harness.records import scenario as sc


def _load(tmp_path: Path, budgets: Any) -> sc.Scenario:
    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump({"name": "b", "data": {"source": "synthetic"}, "budgets": budgets}), encoding="utf-8")
    return sc.load(path)


def test_budgets_default_to_nothing_checked() -> None:
    s = sc.from_dict({"name": "x"}, "x.yaml")
    assert s.budgets.model_dump(exclude_none=True) == {"phases": {}, "ranks": {}}


def test_budgets_read_sizes_and_phases(tmp_path: Path) -> None:
    s = _load(tmp_path, {"peak_main_rss": "1.2 GB", "peak_tree_rss": "2 GiB", "peak_workers_uss": 5000,
                         "peak_heap": "900 MB", "peak_live_tensor_bytes": "1 MiB",
                         "growth_per_epoch": "5 MB",
                         "phases": {"backward": {"peak_live_tensor_bytes": "1 MB"},
                                    "data": {"peak_workers_uss": "64 MiB", "peak_main_rss": "1 GB"}}})
    b = s.budgets
    assert (b.peak_main_rss, b.peak_tree_rss, b.peak_workers_uss) == (1_200_000_000, 2 * 2**30, 5000)
    assert (b.peak_heap, b.peak_live_tensor_bytes, b.growth_per_epoch) == (900_000_000, 2**20, 5_000_000)
    assert b.phases["backward"].peak_live_tensor_bytes == 1_000_000
    assert b.phases["data"].peak_workers_uss == 64 * 2**20


def test_budgets_survive_the_run_directorys_dump() -> None:
    s = sc.from_dict({"name": "x", "budgets": {"peak_main_rss": "1 GB",
                                                "phases": {"forward": {"peak_tree_rss": "2 GB"}}}}, "x")
    again = sc.from_dict(yaml.safe_load(sc.dump(s)), "dumped")
    assert again.budgets == s.budgets


def test_budgets_with_set_override(tmp_path: Path) -> None:
    path = tmp_path / "b.yaml"
    path.write_text("name: b\ndata: {source: synthetic}\nbudgets: {peak_main_rss: 1 GB}\n", encoding="utf-8")
    s = sc.load(path, ["budgets.growth_per_epoch=5 MB", "budgets.phases.backward.peak_main_rss=2 GB"])
    assert s.budgets.peak_main_rss == 10**9 and s.budgets.growth_per_epoch == 5 * 10**6
    assert s.budgets.phases["backward"].peak_main_rss == 2 * 10**9


@pytest.mark.parametrize(("budgets", "key", "message"), [
    ({"peak_main_rss": "lots"}, "budgets.peak_main_rss", "expected a size like '900 MB'"),
    ({"peak_main_rss": "-5 MB"}, "budgets.peak_main_rss", "0 or more"),
    ({"peak_main_rss": True}, "budgets.peak_main_rss", "expected a size"),
    ({"peak_main_rss": [1]}, "budgets.peak_main_rss", "expected a size"),
    ({"growth_per_epoch": "5 Mbit"}, "budgets.growth_per_epoch", "expected a size"),
    ({"peak_rss": "1 GB"}, "budgets.peak_rss", "unknown key"),
    ({"phases": {"backwards": {}}}, "budgets.phases", "unknown phase 'backwards'"),
    ({"phases": {"backward": {"peak_heap": "1 MB"}}}, "budgets.phases.backward.peak_heap", "unknown key"),
    ({"phases": {"backward": {"growth_per_epoch": "1 MB"}}}, "budgets.phases.backward.growth_per_epoch",
     "unknown key"),
    ({"phases": {"backward": {"peak_main_rss": "x"}}}, "budgets.phases.backward.peak_main_rss",
     "expected a size"),
    ({"phases": ["backward"]}, "budgets.phases", "valid dictionary"),
    ("1 GB", "budgets", "valid dictionary"),
])
def test_bad_budgets_fail_in_one_line_naming_file_and_key(tmp_path: Path, budgets: Any, key: str,
                                                          message: str) -> None:
    with pytest.raises(ScenarioError) as info:
        _load(tmp_path, budgets)
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith(f"{tmp_path / 'b.yaml'}: {key}: "), text
    assert message in text


def test_a_scenario_with_budgets_stays_frozen_and_compares_by_value() -> None:
    def make() -> sc.Scenario:
        return sc.from_dict({"name": "x", "budgets": {"phases": {"backward": {"peak_main_rss": "1 GB"}}}}, "x")

    a, b = make(), make()
    assert a == b and a != sc.from_dict({"name": "x"}, "x")
    with pytest.raises(ValidationError):
        a.budgets.peak_main_rss = 5  # type: ignore[misc]
