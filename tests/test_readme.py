"""The README's two commands are the ones CI runs, and its scenario table names every key."""

from __future__ import annotations

import re

from conftest import REPO

from harness.records.scenario import Scenario

INSTALL_RUN = "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/harness run scenarios/baseline.yaml"
INSTALL_TEST = "python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && .venv/bin/pytest"


def test_readme_opens_with_the_two_commands_and_ci_runs_the_test_one() -> None:
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)\n```", readme, re.S)
    assert blocks[:2] == [INSTALL_RUN, INSTALL_TEST]
    ci = (REPO / ".ci/run").read_text()
    install, test = INSTALL_TEST.rsplit(" && ", 1)
    assert install.replace("pip install", "pip install -q") in ci
    lines = ci.splitlines()
    # lint and types first, then the README's test command, last
    assert [i for i, ln in enumerate(lines) if "ruff check" in ln or ".venv/bin/mypy" in ln]
    assert lines[-1].endswith(test)


def _keys(model: type, prefix: str = "") -> list[str]:
    out = []
    for name, field in model.model_fields.items():  # type: ignore[attr-defined]
        ann = field.annotation
        if isinstance(ann, type) and hasattr(ann, "model_fields"):
            out += _keys(ann, f"{prefix}{name}.")
        else:
            out.append(f"{prefix}{name}")
    return out


def test_readme_documents_every_scenario_key() -> None:
    readme = (REPO / "README.md").read_text()
    missing = [k for k in _keys(Scenario) if f"`{k}`" not in readme]
    assert not missing, f"README's scenario table lacks {missing}"
