"""The run's record: how a stage's outcome is classified, and manifest.json / agent.json written and
read through the same models (harness.records.manifest), by one atomic writer."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from harness.analysis.load import load_run, read_manifest
from harness.control import distributed, rundir
from harness.control.runner import (
    Classified,
    RssLimitPassed,
    StageError,
    TimeoutPassed,
    classify_outcome,
)
from harness.errors import UsageError
from harness.records.manifest import (
    AgentRecord,
    Failure,
    Manifest,
    RankFailure,
    StageOutcome,
    Where,
)
from harness.records.vocab import Status
from harness.sizes import MiB

_ERROR = StageError("ValueError", "bad batch")
_AGENT = {"node_rank": 0, "nnodes": 1, "nproc_per_node": 2, "backend": "gloo",
          "rdzv_endpoint": "127.0.0.1:0", "pid": 9, "exit_code": 1}
_RANK_KILLED = AgentRecord(**_AGENT, failure=RankFailure(rank=1, local_rank=1, pid=7, exit_code=-9,
                                                          signal="SIGKILL", ranks_failed=[1]))
_RANK_EXITED = AgentRecord(**_AGENT, failure=RankFailure(rank=1, local_rank=1, pid=7, exit_code=1,
                                                          ranks_failed=[1]))
_NEVER_MET = AgentRecord(**_AGENT, rendezvous="rendezvous at h:1 failed (...): 2 nodes expected")


# GIVEN the facts of a stage's end WHEN classified THEN its status, message and error type.
@pytest.mark.parametrize(("facts", "want"), [
    ({"rc": 0}, Classified(Status.OK, "")),
    ({"rc": 1, "stage_error": _ERROR}, Classified(Status.FAILED, "ValueError: bad batch", "ValueError")),
    ({"rc": 1, "stage_error": StageError("DataError", "")}, Classified(Status.FAILED, "DataError", "DataError")),
    ({"rc": 3}, Classified(Status.FAILED, "exit code 3")),
    ({"rc": 3, "last_output": "the last line"},
     Classified(Status.FAILED, "exit code 3 (last output: the last line)")),
    ({"rc": 3, "last_output": "x" * 400}, Classified(Status.FAILED, f"exit code 3 (last output: {'x' * 300})")),
    ({"rc": -9, "stage_error": _ERROR}, Classified(Status.KILLED, "killed by SIGKILL")),
    ({"rc": -9, "limit": RssLimitPassed(600 * MiB, 500)},
     Classified(Status.LIMIT, "tree RSS 600 MiB exceeded limits.max_rss_mb (500 MiB)")),
    ({"rc": -9, "limit": RssLimitPassed(600 * MiB, 500, rank=1, rank_rss=400 * MiB)},
     Classified(Status.LIMIT, "tree RSS 600 MiB exceeded limits.max_rss_mb (500 MiB); rank 1 held "
                              "the most (400 MiB)")),
    ({"rc": -9, "limit": TimeoutPassed(2.5)},
     Classified(Status.TIMEOUT, "stage ran past limits.timeout_s (2.5 s)")),
    ({"rc": -9, "stopped_by": signal.SIGINT, "limit": TimeoutPassed(2)},
     Classified(Status.INTERRUPTED, "interrupted by Ctrl-C")),
    ({"rc": 0, "stopped_by": signal.SIGTERM}, Classified(Status.TERMINATED, "terminated by SIGTERM")),
    ({"rc": -9, "stopped_by": signal.SIGHUP}, Classified(Status.TERMINATED, "terminated by SIGHUP")),
    ({"rc": 1, "agent": _RANK_KILLED},
     Classified(Status.KILLED, "rank 1 (local rank 1, pid 7) was killed by SIGKILL")),
    ({"rc": 1, "agent": _RANK_EXITED, "rank_error": _ERROR},
     Classified(Status.FAILED, "rank 1: ValueError: bad batch", "ValueError")),
    ({"rc": 1, "agent": _RANK_EXITED}, Classified(Status.FAILED, "rank 1 (local rank 1, pid 7) exited with 1")),
    ({"rc": 1, "agent": _NEVER_MET},
     Classified(Status.FAILED, _NEVER_MET.rendezvous or "", "RendezvousError")),
    ({"rc": 0, "agent": _RANK_KILLED}, Classified(Status.OK, "")),  # the agent's record of an end that went well
    ({"rc": -9, "agent": AgentRecord(**_AGENT)}, Classified(Status.KILLED, "killed by SIGKILL")),
], ids=lambda v: "" if isinstance(v, Classified) else ",".join(sorted(v)) + f":{v.get('rc')}")
def test_classify_outcome(facts: dict[str, object], want: Classified) -> None:
    rc = facts.pop("rc")
    assert classify_outcome(rc, **facts) == want  # type: ignore[arg-type]


def test_every_status_a_stage_can_end_with_is_classified() -> None:
    # Status.RUNNING is the run's, before any stage ended
    assert {s for s in Status} - {Status.RUNNING} == {
        Status.OK, Status.FAILED, Status.KILLED, Status.OOM_KILLED, Status.LIMIT, Status.TIMEOUT,
        Status.INTERRUPTED, Status.TERMINATED}  # OOM_KILLED: tests/test_oom.py


# ---- the models, written and read ---------------------------------------------------------------

def _manifest() -> Manifest:
    stage = StageOutcome(name="train", status=Status.LIMIT, exit_code=-9, signal="SIGKILL",
                         message="tree RSS ...", last=Where(epoch=1, step=5, total=10, phase="forward"),
                         killed_descendants=[123], ranks={"0": None})
    return Manifest(manifest_version=1, kind="run", scenario_name="s", status=Status.LIMIT,
                    stages=[stage], python="3.11", command_line=["harness", "run"],
                    failure=Failure(stage="train", status=Status.LIMIT, message="tree RSS ...",
                                    where=stage.last))


def test_a_manifest_written_reads_back_equal(tmp_path: Path) -> None:
    rundir.write_manifest(tmp_path, _manifest())
    doc = json.loads((tmp_path / "manifest.json").read_text())
    assert doc["status"] == "limit" and doc["stages"][0]["status"] == "limit"  # the words, not enum reprs
    assert read_manifest(tmp_path) == _manifest()
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]  # no temporary file left


def test_a_manifest_is_as_readable_as_the_umask_allows(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        rundir.write_manifest(tmp_path, _manifest())
    finally:
        os.umask(old)
    assert (tmp_path / "manifest.json").stat().st_mode & 0o777 == 0o640


def test_the_writer_refuses_a_symlink_at_the_destination(tmp_path: Path) -> None:
    # GIVEN manifest.json is a link to a file elsewhere
    target = tmp_path / "elsewhere.txt"
    target.write_text("keep me", encoding="utf-8")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "manifest.json").symlink_to(target)
    # WHEN the manifest is written THEN it is refused, naming the file, and neither is touched
    with pytest.raises(UsageError, match="manifest.json: is a link"):
        rundir.write_manifest(run_dir, _manifest())
    assert target.read_text(encoding="utf-8") == "keep me"
    assert (run_dir / "manifest.json").is_symlink()
    assert sorted(p.name for p in run_dir.iterdir()) == ["manifest.json"]


def test_a_failed_write_leaves_the_old_manifest_and_no_temporary_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rundir.write_manifest(tmp_path, _manifest())
    before = (tmp_path / "manifest.json").read_text()

    def full(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError):
        rundir.write_manifest(tmp_path, _manifest().model_copy(update={"status": Status.OK}))
    assert (tmp_path / "manifest.json").read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


def test_the_agent_record_is_written_and_read_through_its_model(tmp_path: Path) -> None:
    distributed.write_record(tmp_path, _RANK_KILLED)
    assert distributed.read_record(tmp_path) == _RANK_KILLED
    (tmp_path / "agent.json").write_text('{"pid": "nine"}', encoding="utf-8")
    assert distributed.read_record(tmp_path) is None  # not a record: as if the agent wrote none


def test_readers_get_typed_outcomes(tmp_path: Path) -> None:
    rundir.write_manifest(tmp_path, _manifest())
    (tmp_path / "scenario.yaml").write_text("name: s\nstages: [train]\n", encoding="utf-8")
    (tmp_path / "stages" / "train").mkdir(parents=True)
    run = load_run(tmp_path)
    assert run.status is Status.LIMIT
    outcome = run.stage("train").outcome
    assert outcome is not None and outcome.status is Status.LIMIT and outcome.last is not None
    assert outcome.last.phase == "forward"
    assert run.scenario is not None and run.scenario.memray.train_steps == 150  # the model's default


@pytest.mark.parametrize(("name", "text"), [
    ("manifest-node1.json", '{"status": "done"}'),
    ("manifest-node1.json", "[1]"),
])
def test_a_node_manifest_of_the_wrong_type_is_a_named_problem(tmp_path: Path, name: str, text: str) -> None:
    rundir.write_manifest(tmp_path, _manifest())
    (tmp_path / name).write_text(text, encoding="utf-8")
    run = load_run(tmp_path)
    assert run.node_manifests == {}
    assert any(p.startswith(name) for p in run.problems), run.problems

