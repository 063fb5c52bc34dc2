"""`make demo` installs only the core (``scripts/bootstrap.py --core``): the project without its extras. The
``vptq-lab`` command must then run. A child process sees a copy of site-packages without the extras' packages
(links to every other entry, the editable install's hook included; site-packages itself off the path) and
quantizes a model, then evaluates it."""

from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

from vptq_lab.core.config import VPTQConfig

ROOT = Path(__file__).resolve().parents[1]
# Beside pyproject's extras: the notebook stack they pull in, which nothing in the core needs either.
PULLED_BY_EXTRAS = ["ipython", "ipykernel", "jupyter-client", "jupyter-server", "nbformat", "nbclient", "nbconvert"]


def _extras_distributions() -> list[str]:
    """The distributions of pyproject's extras, of the --no-deps packages outside the core, and of
    :data:`PULLED_BY_EXTRAS`."""
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    names = [
        re.split(r"[<>=!~\[ ;]", req, maxsplit=1)[0]
        for group in meta["project"]["optional-dependencies"].values()
        for req in group
        if not req.startswith("vptq-lab")
    ]
    tool = meta["tool"]["vptq-lab"]
    names += [req.split("==")[0] for req in set(tool["no-deps"]) - set(tool["no-deps-core"])]
    return sorted(set(names + PULLED_BY_EXTRAS))


def _top_level_entries(distribution: str) -> set[str]:
    """The names a distribution puts directly in site-packages (packages, modules, its .dist-info)."""
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return set()
    return {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}


def _core_site_packages(folder: Path) -> list[str]:
    """Links in ``folder`` to every site-packages entry but the extras'; returns what was left out."""
    site = Path(sysconfig.get_paths()["purelib"])
    left_out = set().union(*(_top_level_entries(d) for d in _extras_distributions()))
    folder.mkdir()
    for entry in site.iterdir():
        if entry.name not in left_out:
            (folder / entry.name).symlink_to(entry)
    return sorted(left_out)


# The child's path: site-packages off, the linked copy on, its .pth files too (the editable install maps vptq_lab
# and vptq_lab.kernels).
CORE_PATH = """
import site, sys
sys.path[:] = [p for p in sys.path if "site-packages" not in p]
site.addsitedir({site!r})
"""
RUNNER = (
    CORE_PATH
    + """
from vptq_lab.cli import main
sys.exit(main(sys.argv[1:]))
"""
)


def test_the_core_site_packages_lack_the_extras(tmp_path):
    left_out = _core_site_packages(tmp_path / "site")
    assert {"triton", "IPython", "ipywidgets", "jupyterlab", "pytest", "vptq"} <= set(left_out)
    assert (tmp_path / "site" / "torch").exists() and (tmp_path / "site" / "transformers").exists()


def test_vptq_lab_quantizes_and_evaluates_without_the_extras(four_block_model_dir, subprocess_env, tmp_path):
    _core_site_packages(tmp_path / "site")
    runner = tmp_path / "core.py"
    runner.write_text(RUNNER.format(site=str(tmp_path / "site")))
    config = tmp_path / "tiny.json"
    config.write_text(
        VPTQConfig(vector_lens=(-1, 4), num_centroids=(-1, 16), nsamples=4, seqlen=32, kmeans_iters=2).to_json()
    )
    out = tmp_path / "q"
    env = {k: v for k, v in subprocess_env.items() if k != "PYTHONPATH"}

    def run(*args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-S", str(runner), *args, "--no-progress"]  # -S: site-packages off the path
        return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)

    probe = CORE_PATH.format(site=str(tmp_path / "site")) + (
        "import importlib.util as u; print([n for n in ('triton', 'IPython', 'pytest') if u.find_spec(n)])"
    )
    check = subprocess.run([sys.executable, "-S", "-c", probe], env=env, capture_output=True, text=True, timeout=60)
    assert check.stdout.strip() == "[]", check.stderr[-2000:]  # the child really lacks them
    proc = run("quantize", "--model", str(four_block_model_dir), "--config", str(config), "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run("eval", "--model", str(out), "--max-windows", "1", "--seqlen", "32", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["perplexity"] > 1
