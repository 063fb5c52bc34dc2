"""Install vptq_lab and its dependencies into the running interpreter.

pyproject.toml is the one source of dependencies: this script installs the project with its `dev` extra, then the
packages listed under `[tool.vptq-lab] no-deps`, which must not pull their own dependencies. `--core` installs only
what the `vptq-lab` command needs (no extras; the `no-deps-core` packages): `make demo` starts with that.

By default every version comes from `constraints.txt`, the lock of versions the whole suite passed with (what
`make` and CI install). `--latest` skips the lock and takes the newest versions pyproject.toml allows (what
`pip install vptq-lab` would give, and what `make test-latest` checks). `--freeze FILE` writes the running
environment's versions as a new lock, after a `make test-latest` has passed with them.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "constraints.txt"
LOCK_HEADER = """\
# The lock: versions the whole suite (make test) passed with. `make` and CI install from it (scripts/bootstrap.py);
# `make test-latest` ignores it and takes the newest versions pyproject.toml allows. Rewrite it only from a
# .venv-latest that passed `make test-latest`: `make lock`.
"""


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "install", "--disable-pip-version-check", *args], check=True)


def install(latest: bool, core: bool = False) -> None:
    """The project with its ``dev`` extra and every ``no-deps`` package; ``core``: only what ``vptq-lab`` itself
    needs to run (no extras, and of the ``no-deps`` packages those under ``no-deps-core``), which is what
    ``make demo`` installs first: the tests' and notebooks' packages then follow with ``make test``."""
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["vptq-lab"]
    lock = [] if latest else ["--constraint", str(LOCK)]
    pip("--upgrade", "pip")
    pip(*lock, "-e", str(ROOT) if core else f"{ROOT}[dev]")
    no_deps = meta["no-deps-core"] if core else meta["no-deps"]
    if no_deps:
        pip("--no-deps", *no_deps)


def freeze(out: Path) -> None:
    """The running environment's versions, without the project itself; local labels (``+cpu``) dropped, since
    ``==2.13.0`` matches the CPU build that a CPU machine installs and the index holds no ``+cpu`` name."""
    text = subprocess.run(
        [sys.executable, "-m", "pip", "freeze", "--exclude-editable", "--disable-pip-version-check"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    pins = sorted((line.split("+", 1)[0] for line in text.splitlines() if "==" in line), key=str.lower)
    out.write_text(LOCK_HEADER + "\n".join(pins) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latest", action="store_true", help="ignore constraints.txt: the newest allowed versions")
    parser.add_argument("--core", action="store_true", help="only what vptq-lab needs to run (make demo)")
    parser.add_argument("--freeze", type=Path, metavar="FILE", help="write this environment's versions as a lock")
    args = parser.parse_args(argv)
    if args.freeze:
        freeze(args.freeze)
    else:
        install(args.latest, args.core)


if __name__ == "__main__":
    main()
