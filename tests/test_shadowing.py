"""Nothing in the checkout may shadow an installed package.

Every way the project runs puts one of its folders on ``sys.path``: ``python -m`` and ``torchrun -m`` from the
root put the root there, the scripts put their own folder, and the tests put ``benchmarks/``. transformers imports
the PyPI package ``kernels`` while it loads, so a top-level ``kernels`` of ours found first broke every command
(``ImportError: cannot import name 'CUDAProperties' from 'kernels'``).
"""

from __future__ import annotations

import importlib.machinery
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vptq_lab.core.config import VPTQConfig

ROOT = Path(__file__).resolve().parents[1]
# The folders that go on sys.path when the project runs: the root (python -m from it) and each script folder.
PATH_FOLDERS = ("", "benchmarks", "scripts", "tests", "experiments")
# kernels/ installs as vptq_lab.kernels and, imported as a top-level `kernels`, hands over to the PyPI package.
HANDS_OVER = {"kernels"}


def _top_level_names(folder: Path) -> set[str]:
    """What ``import NAME`` finds in ``folder``: modules, packages and namespace folders of Python files."""
    names = {p.stem for p in folder.glob("*.py")}
    names |= {p.name for p in folder.iterdir() if p.is_dir() and any(p.glob("*.py"))}
    return names


def _installed_elsewhere(name: str) -> bool:
    """Whether ``import name`` finds a module or package outside the checkout (site-packages, the stdlib)."""
    ours = {(ROOT / folder).resolve() for folder in PATH_FOLDERS}
    outside = [p for p in sys.path if p and Path(p).resolve() not in ours]
    spec = importlib.machinery.PathFinder.find_spec(name, outside)
    return spec is not None and (spec.origin is not None or spec.loader is not None)


def test_no_checkout_name_shadows_an_installed_package():
    assert _installed_elsewhere("transformers") and _installed_elsewhere("json")  # the search is real
    clashes = {
        f"{folder or '.'}/{name}"
        for folder in PATH_FOLDERS
        if (ROOT / folder).is_dir()
        for name in _top_level_names(ROOT / folder)
        if not (folder == "" and name in HANDS_OVER) and _installed_elsewhere(name)
    }
    assert not clashes, f"these names shadow installed packages when their folder is on sys.path: {sorted(clashes)}"


def _python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSAFEPATH")}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


BUILD_A_MODEL = """
import sys
sys.path[:0] = [{root!r}, {benchmarks!r}]
import kernels
import transformers
from transformers import LlamaConfig, LlamaForCausalLM
config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                     num_attention_heads=2, num_key_value_heads=1)
model = LlamaForCausalLM(config)
import vptq_lab.kernels
print("kernels from", kernels.__file__)
print("vptq_lab.kernels from", vptq_lab.kernels.__file__)
"""


def test_transformers_builds_a_model_with_the_checkout_on_the_path():
    """The failure as users met it: the root and benchmarks/ first on sys.path, then transformers."""
    code = BUILD_A_MODEL.format(root=str(ROOT), benchmarks=str(ROOT / "benchmarks"))
    proc = _python(code, ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = dict(line.split(" from ", 1) for line in proc.stdout.splitlines() if " from " in line)
    assert Path(lines["vptq_lab.kernels"]).parent == ROOT / "kernels"
    if _installed_elsewhere("kernels"):
        assert Path(lines["kernels"]).parent != ROOT / "kernels"  # PyPI's package, not our folder


def test_our_kernels_folder_imported_top_level_without_the_pypi_package_raises_module_not_found(tmp_path):
    """Where PyPI's ``kernels`` is not installed, ``import kernels`` fails as it would without the checkout, so
    ``try: import kernels`` fallbacks (transformers' own) keep working."""
    code = (
        "import sys\n"
        f"sys.path[:] = [{str(ROOT)!r}] + [p for p in sys.path if 'site-packages' not in p and p]\n"
        "try:\n    import kernels\nexcept ModuleNotFoundError as e:\n"
        "    print('missing', e.name, 'kernels' in sys.modules)\n"
    )
    proc = _python(code, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "missing kernels False"


def _from_the_root(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """``python ARGS`` run in the checkout's root, as the README runs it (no PYTHONPATH: ``-m`` adds the root)."""
    env = {k: v for k, v in env.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_python_m_cli_from_the_root_loads_a_model(four_block_model_dir, subprocess_env):
    """``python -m vptq_lab.cli`` from the root (how `make demo` runs), on a command that loads transformers."""
    args = ["eval", "--model", str(four_block_model_dir), "--max-windows", "1", "--seqlen", "32", "--json"]
    proc = _from_the_root(["-m", "vptq_lab.cli", *args, "--no-progress"], subprocess_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["perplexity"] > 1


@pytest.mark.slow
def test_torchrun_m_cli_from_the_root_quantizes(four_block_model_dir, subprocess_env, tmp_path):
    """The README's torchrun command, from the root, on a tiny model: every rank imports transformers."""
    config = tmp_path / "tiny.json"
    config.write_text(
        VPTQConfig(vector_lens=(-1, 4), num_centroids=(-1, 16), nsamples=4, seqlen=32, kmeans_iters=2).to_json()
    )
    launch = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "vptq_lab.cli"]
    args = ["quantize", "--model", str(four_block_model_dir), "--config", str(config), "--out", str(tmp_path / "q")]
    proc = _from_the_root([*launch, *args, "--no-progress", "--json"], subprocess_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "q" / "config.json").is_file()
