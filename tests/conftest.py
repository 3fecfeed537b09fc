"""Shared helpers: small scenarios written into tmp_path, and the CLI run in-process."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
WORKLOADS = Path(__file__).resolve().parent / "workloads"
sys.path.insert(0, str(Path(__file__).resolve().parent))


# A suite started in the background by a shell without job control inherits SIGINT ignored, and an
# ignored signal stays ignored across exec: the harness processes the tests start would then never
# see the Ctrl-C the signal tests send them. A handler is reset to the default at exec instead.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def write_scenario(path: Path, **sections: Any) -> Path:
    """A small synthetic scenario (1 epoch, 120 images, no workers) with ``sections`` merged in."""
    scenario: dict[str, Any] = {
        "name": "t",
        "seed": 0,
        "stages": ["train", "test"],
        "data": {"source": "synthetic", "size": 120, "num_workers": 0},
        "train": {"epochs": 1, "batch_size": 4, "log_every": 10},
        "memray": {"train_start": 0, "train_steps": 5},
        "tensors": {"trace_steps": 3, "trace_every": 0},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(scenario.get(key), dict):
            scenario[key] = {**scenario[key], **value}
        else:
            scenario[key] = value
    path.write_text(yaml.safe_dump(scenario, sort_keys=False), encoding="utf-8")
    return path


def latest_run(reports: Path) -> Path:
    runs = sorted(p for p in reports.glob("*/*") if (p / "manifest.json").exists())
    assert runs, f"no run directory under {reports}"
    return runs[-1]


def stage_samples(stage_dir: Path) -> pd.DataFrame:
    """A stage's samples (its samples/ folder) as pd.read_csv read samples.csv: empty text missing."""
    from harness.analysis.load import read_samples
    from harness.layout import SAMPLES_DIR
    from harness.records.samples import SAMPLE_TEXT_COLUMNS

    problems: list[str] = []
    df = read_samples(stage_dir / SAMPLES_DIR, problems)
    assert not problems, problems
    return df.replace({c: {"": None} for c in SAMPLE_TEXT_COLUMNS})


def read_events(stage_dir: Path) -> list[dict[str, Any]]:
    lines = (stage_dir / "events.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]):  # type: ignore[no-untyped-def]
    """Run ``harness ARGS`` in-process; returns (exit code, stdout, stderr)."""
    from harness.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        code = main(list(args))
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


def assert_gone(pids: set[int], what: str = "processes left behind", within_s: float = 5.0) -> None:
    """Every process of ``pids`` ends (a zombie counts as ended) within ``within_s`` seconds."""
    import time

    import psutil

    deadline = time.time() + within_s
    alive = pids
    while time.time() < deadline:
        alive = set()
        for pid in pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.add(pid)
            except psutil.NoSuchProcess:
                pass
        if not alive:
            return
        time.sleep(0.2)
    raise AssertionError(f"{what}: {sorted(alive)}")
