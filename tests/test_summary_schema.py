"""summary.json has one definition: the models in harness/analysis/summary_model.py.

The committed JSON Schema must be what the models generate; a built summary must meet it and read
back through the model unchanged; a summary of the wrong shape is one UsageError naming the field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from _gate import fake_summary, write_run
from _synthetic import write_capture
from _synthetic import write_run as write_synthetic_run

from harness.analysis import summary_model
from harness.analysis.summary_model import SCHEMA_FILE, SCHEMA_ID, SCHEMA_VERSION, Summary
from harness.errors import UsageError
from harness.gate import runs
from harness.report import build_report


def test_the_committed_schema_is_the_one_the_models_generate() -> None:
    committed = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    assert committed == summary_model.json_schema(), (
        f"{SCHEMA_FILE} is out of date: run python -m harness.analysis.summary_model")
    assert SCHEMA_FILE.read_text(encoding="utf-8") == summary_model.schema_text()
    assert summary_model.main(["--check"]) == 0


def test_the_schema_pins_the_id_and_version_the_gates_check() -> None:
    schema = summary_model.json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["properties"]["schema"]["const"] == SCHEMA_ID
    assert schema["properties"]["schema_version"]["const"] == SCHEMA_VERSION
    assert schema["$id"].endswith(f"/{SCHEMA_VERSION}")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = write_synthetic_run(tmp_path_factory.mktemp("summary"))
    write_capture(run_dir)
    build_report(run_dir, processes=1)
    return run_dir / "report" / "summary.json"


def test_a_built_summary_meets_the_committed_schema(built: Path) -> None:
    doc = json.loads(built.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator(json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))).validate(doc)
    assert doc["captures"] and doc["findings"]  # the sections with rows were exercised
    assert "cuda" not in doc  # a CPU run leaves the device out rather than writing null


def test_a_built_summary_reads_back_through_the_model_unchanged(built: Path) -> None:
    text = built.read_text(encoding="utf-8")
    model = Summary.model_validate(json.loads(text), strict=True)
    assert json.dumps(model.to_dict(), indent=1) == text
    assert runs.summary(built.parents[1]).to_dict() == model.to_dict()


def test_a_summary_with_teardown_peaks_meets_the_schema_and_reads_back(tmp_path: Path) -> None:
    # GIVEN the synthetic run with two ticks after its stage_end (t 1007): the teardown peaks
    from _synthetic import MiB, samples_rows

    after = [[f"{t:.4f}", 100, 0, "main", rss * MiB, 0, 40 * MiB, 0, 0, "", "", "", "train", 2, 3, "idle"]
             for t, rss in ((1007.5, 300), (1008.0, 340))]
    run_dir = write_synthetic_run(tmp_path, rows=samples_rows() + after)
    build_report(run_dir, processes=1)
    path = run_dir / "report" / "summary.json"
    doc = json.loads(path.read_text(encoding="utf-8"))
    # THEN the optional sections are filled, the version unchanged, the schema met, the read exact
    assert doc["schema_version"] == 1
    assert doc["peaks"]["main_rss_teardown"]["bytes"] == 340 * MiB
    assert doc["peaks"]["tree_rss_teardown"]["file_backed_rise"] is None
    jsonschema.Draft202012Validator(json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))).validate(doc)
    text = path.read_text(encoding="utf-8")
    assert json.dumps(Summary.model_validate(json.loads(text), strict=True).to_dict(), indent=1) == text


def test_a_summary_written_before_the_teardown_peaks_still_reads() -> None:
    # summary_version 1 gained optional fields only: an older summary.json lacks them
    doc = fake_summary()
    for key in ("main_rss_teardown", "tree_rss_teardown"):
        doc["peaks"].pop(key, None)
    s = Summary.model_validate(doc, strict=True)
    assert s.peaks.main_rss_teardown is None and s.peaks.tree_rss_teardown is None


@pytest.mark.parametrize(("value", "written"), [(7, "7"), (7.0, "7.0"), (None, "null")])
def test_numbers_keep_the_type_they_were_written_with(value: Any, written: str) -> None:
    doc = fake_summary()
    doc["durations"]["wall_s"] = value
    out = Summary.model_validate(doc, strict=True).to_dict()
    assert json.dumps(out["durations"]["wall_s"]) == written


def _break(doc: dict[str, Any], where: str, value: Any) -> dict[str, Any]:
    *path, last = where.split(".")
    node: Any = doc
    for key in path:
        node = node[int(key)] if isinstance(node, list) else node[key]
    node[last] = value
    return doc


@pytest.mark.parametrize(("where", "value", "message"), [
    ("peaks.main_rss.bytes", "12", "peaks.main_rss.bytes: Input should be a valid integer"),
    ("peaks.main_rss.bytes", -1, "peaks.main_rss.bytes: Input should be greater than or equal to 0"),
    ("run.complete", "yes", "run.complete: Input should be a valid boolean"),
    ("phases.2.phase", None, "phases.2.phase: Input should be a valid string"),
    ("durations.wall_s", "60", "durations.wall_s: Input should be a valid number"),
    ("stages.0.surprise", 1, "stages.0.surprise: Extra inputs are not permitted"),
    ("cuda", None, "cuda: leave cuda out on the CPU rather than null"),
])
def test_a_summary_of_the_wrong_shape_is_one_usage_error_naming_the_field(
        tmp_path: Path, where: str, value: Any, message: str) -> None:
    run = write_run(tmp_path / "r", _break(fake_summary(), where, value))
    with pytest.raises(UsageError) as info:
        runs.summary(run)
    assert str(info.value) == f"{run / 'report' / 'summary.json'}: {message}"


def test_the_check_command_reports_a_wrong_type_in_one_line(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    run = write_run(tmp_path / "r", _break(fake_summary(), "peaks.heap.pid", "one"))
    code, _out, err = cli("check", str(run))
    assert code == 2 and err.count("\n") == 1
    assert "summary.json: peaks.heap.pid: Input should be a valid integer" in err


def test_several_problems_are_counted_after_the_first(tmp_path: Path) -> None:
    doc = _break(_break(fake_summary(), "run.host", 1), "problems", [2])
    run = write_run(tmp_path / "r", doc)
    with pytest.raises(UsageError, match=r"summary.json: run.host: Input should be a valid string \(and 1 more\)$"):
        runs.summary(run)
