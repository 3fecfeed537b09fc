"""The README's two commands are the ones CI runs, its scenario table names every key, and its Layout
names every module and what each folder may import."""

from __future__ import annotations

import re
from pathlib import Path

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


def _layout_section() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    return text[text.index("## Layout"):text.index("## Development")]


def test_readme_layout_names_every_module_in_its_folder_row() -> None:
    import harness

    section = _layout_section()
    package = Path(harness.__file__).resolve().parent
    rows = {line.split("|")[1].strip().strip("`"): line for line in section.splitlines()
            if line.startswith("| `harness/")}
    folders = sorted(p.name for p in package.iterdir() if (p / "__init__.py").is_file())
    assert sorted(r.removeprefix("harness/").rstrip("/") for r in rows) == folders
    missing = [f"{folder}/{path.name}" for folder in folders
               for path in sorted((package / folder).glob("*.py"))
               if path.name != "__init__.py" and f"`{path.name}`" not in rows[f"harness/{folder}/"]]
    assert missing == [], f"README's Layout does not name {missing}"
    top = [p.name for p in package.glob("*.py") if p.stem not in {"__init__", "__main__"}]
    assert [name for name in top if f"`{name}`" not in section] == []


def test_readme_layout_says_what_each_folder_may_import() -> None:
    from test_layout import ALLOWED

    for line in _layout_section().splitlines():
        if not line.startswith("| `harness/"):
            continue
        cells = [c.strip() for c in line.split("|")]
        folder, may = cells[1].strip("`").removeprefix("harness/").rstrip("/"), cells[3]
        said = set(re.findall(r"`(\w+)/`", may))
        assert said == ALLOWED[folder] - {"errors", "sizes", "layout"}, (folder, said)
