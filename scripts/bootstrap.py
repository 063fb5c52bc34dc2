"""Install vptq_lab and its dependencies into the running interpreter.

pyproject.toml is the one source of dependencies: this script installs the
project with its `dev` extra, then the packages listed under
`[tool.vptq-lab] no-deps`, which must not pull their own dependencies.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "install", "--disable-pip-version-check", *args], check=True)


def main() -> None:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pip("--upgrade", "pip")
    pip("-e", f"{ROOT}[dev]")
    no_deps = meta["tool"]["vptq-lab"]["no-deps"]
    if no_deps:
        pip("--no-deps", *no_deps)


if __name__ == "__main__":
    main()
