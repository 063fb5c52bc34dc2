"""The README's commands on a user's machine: a checkout with no project data folder beside it.

CI has ``../shared`` beside its clone; a user does not. These tests copy the Makefile into folders with and
without that data folder, ask make which data folder its recipes (`make demo`, `make test`, `make lab`) would get,
and run the library's data resolution with no source at all.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
WIKITEXT = ("wiki.test.raw", "wiki.valid.raw")


def _make_data(checkout: Path, env: dict[str, str]) -> str:
    """The VPTQ_LAB_DATA that the Makefile exports to its recipes (`make demo`, `test`, `lab`), asked of make."""
    (checkout / "probe.mk").write_text('probe:\n\t@echo "[$$VPTQ_LAB_DATA]"\n')
    out = subprocess.run(
        ["make", "-s", "-C", str(checkout), "-f", "Makefile", "-f", "probe.mk", "probe"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return out[1:-1]


def _checkout(root: Path, with_data: bool) -> Path:
    checkout = root / "clone"
    checkout.mkdir(parents=True)
    shutil.copy(REPO / "Makefile", checkout / "Makefile")
    if with_data:
        data = root / "shared" / "data" / "wikitext-2-raw"
        data.mkdir(parents=True)
        for name in WIKITEXT:
            (data / name).write_text("x")
    return checkout


def _user_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("VPTQ_LAB_DATA", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_makefile_names_no_missing_data_folder(tmp_path):
    # Before the fix, the Makefile exported ../shared/... unconditionally and `make demo` failed on a user's
    # machine with "data folder .../shared/data/wikitext-2-raw does not exist".
    assert _make_data(_checkout(tmp_path, with_data=False), _user_env()) == ""


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_makefile_uses_the_project_data_folder_only_where_it_exists(tmp_path):
    checkout = _checkout(tmp_path, with_data=True)
    assert _make_data(checkout, _user_env()) == str((tmp_path / "shared" / "data" / "wikitext-2-raw").resolve())
    mine = {**_user_env(), "VPTQ_LAB_DATA": "/my/own/copy"}  # a user's own setting always wins
    assert _make_data(checkout, mine) == "/my/own/copy"


def test_data_resolution_without_any_source_uses_the_labelled_stand_in(tmp_path):
    # What `make demo` does on a machine with no data folder and no hub: one warning line, then the stand-in.
    env = {**_user_env(), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    code = "from vptq_lab import load_wikitext2; d = load_wikitext2('test'); print(d.comparable, len(d.rows) > 100)"
    run = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["False", "True"]
    warnings = [line for line in run.stderr.splitlines() if "stand-in" in line]
    assert len(warnings) == 1 and "VPTQ_LAB_DATA" in warnings[0]
