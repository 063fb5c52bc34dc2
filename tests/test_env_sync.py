"""environment.yml must mirror pyproject.toml, the one source of dependencies."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _pyproject_requirements() -> set[str]:
    project = _pyproject()["project"]
    reqs = set(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs |= {r for r in extra if not r.startswith("vptq-lab")}
    return {r.replace(" ", "") for r in reqs}


def _environment() -> tuple[list[str], list[str], str]:
    """(conda dependencies, pip entries, comments) of environment.yml, parsed without yaml."""
    text = (ROOT / "environment.yml").read_text()
    conda, pip, in_pip = [], [], False
    for line in text.splitlines():
        item = re.match(r"^(\s*)- (.+)$", line)
        if not item:
            continue
        indent, value = len(item.group(1)), item.group(2).strip()
        if value == "pip:":
            in_pip = True
        elif in_pip and indent > 4:
            pip.append(value.replace(" ", ""))
        elif value != "pip:" and indent <= 4 and not in_pip:
            conda.append(value)
    return conda, pip, text


def test_pip_section_mirrors_pyproject():
    _, pip, _ = _environment()
    assert "-e.[dev]" in pip
    assert {p for p in pip if not p.startswith("-e")} == _pyproject_requirements()


def test_python_version_and_torch_bound():
    conda, _, _ = _environment()
    assert "python=3.11" in conda
    assert "torch>=2.4,<2.14" in _pyproject_requirements()
    assert "triton==3.7.1" in _pyproject_requirements()


def test_no_deps_packages_are_documented():
    _, _, text = _environment()
    for package in _pyproject()["tool"]["vptq-lab"]["no-deps"]:
        assert f"pip install --no-deps {package}" in text
