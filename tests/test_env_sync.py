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


def _lock() -> dict[str, str]:
    """constraints.txt as {normalised name: version}."""
    from packaging.utils import canonicalize_name

    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version.strip()
    return pins


def test_lock_pins_every_dependency_within_pyproject_bounds():
    """`make` installs from constraints.txt: each of pyproject's requirements (extras and --no-deps packages too)
    must be pinned there, at a version its specifier allows."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = _lock()
    no_deps = _pyproject()["tool"]["vptq-lab"]["no-deps"]
    for text in sorted(_pyproject_requirements() | set(no_deps)):
        req = Requirement(text)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not pinned in constraints.txt (make lock)"
        assert req.specifier.contains(pins[name], prereleases=True), f"constraints.txt pins {name}=={pins[name]}: {req}"


def test_make_installs_from_the_lock_and_test_latest_does_not(repo_script, monkeypatch):
    import subprocess

    def bootstrap_line(*args: str) -> str:
        out = subprocess.run(
            ["make", "-n", "venv", "VENV=/no-such-venv", *args], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout
        return next(line for line in out.splitlines() if "scripts/bootstrap.py" in line).strip()

    assert bootstrap_line() == "/no-such-venv/bin/python scripts/bootstrap.py"
    assert bootstrap_line("LATEST=1") == "/no-such-venv/bin/python scripts/bootstrap.py --latest"
    make_test_latest = subprocess.run(["make", "-n", "test-latest"], cwd=ROOT, capture_output=True, text=True).stdout
    assert "VENV=.venv-latest LATEST=1" in make_test_latest

    bootstrap = repo_script("scripts/bootstrap.py")
    calls: list[tuple[str, ...]] = []
    monkeypatch.setattr(bootstrap, "pip", lambda *args: calls.append(args))
    bootstrap.main([])
    project = next(c for c in calls if "-e" in c)
    assert project[:2] == ("--constraint", str(ROOT / "constraints.txt"))
    calls.clear()
    bootstrap.main(["--latest"])
    assert not any("--constraint" in c for c in calls) and any("-e" in c for c in calls)


def test_make_demo_waits_only_for_the_core_install(repo_script, monkeypatch):
    """`make demo` installs what `vptq-lab` needs (no extras, only the default model of the --no-deps packages), from
    the lock; `make test` installs everything, which counts as the core install too."""
    import subprocess

    def dry_run(target: str) -> str:
        return subprocess.run(
            ["make", "-n", target, "VENV=/no-such-venv"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout

    assert "scripts/bootstrap.py --core" in dry_run("demo")
    assert "--core" not in dry_run("venv") and "/no-such-venv/.installed-core" in dry_run("venv")
    meta = _pyproject()["tool"]["vptq-lab"]
    assert set(meta["no-deps-core"]) < set(meta["no-deps"])

    bootstrap = repo_script("scripts/bootstrap.py")
    calls: list[tuple[str, ...]] = []
    monkeypatch.setattr(bootstrap, "pip", lambda *args: calls.append(args))
    bootstrap.main(["--core"])
    project = next(c for c in calls if "-e" in c)
    assert project == ("--constraint", str(ROOT / "constraints.txt"), "-e", str(ROOT))
    assert next(c for c in calls if "--no-deps" in c) == ("--no-deps", *meta["no-deps-core"])
