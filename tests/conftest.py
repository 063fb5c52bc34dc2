import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# Triton runs on CPU only under its interpreter, chosen before triton is first imported: a test module that
# imported triton before tests/test_kernels.py set this broke every kernel test in the session.
import torch  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext-2-raw"


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module: on 2 shared cores, OpenMP spinning across both is much slower."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def repo_script(monkeypatch):
    """Import a script of this checkout that is not a package module, by its path from the repository root:
    ``repo_script("benchmarks/accuracy.py")``. Its folder goes on ``sys.path`` for the test (a benchmark imports
    its neighbour ``_bench``; a probe in experiments/ imports ``_bench_path``, which adds benchmarks/)."""
    import importlib.util

    root = Path(__file__).resolve().parents[1]

    def load(relative: str):
        path = root / relative
        monkeypatch.syspath_prepend(str(path.parent))
        spec = importlib.util.spec_from_file_location(path.stem.replace("-", "_"), path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture(scope="session")
def wikitext_dir() -> Path:
    """The WikiText-2 raw folder: $VPTQ_LAB_DATA, else ../shared beside the checkout."""
    folder = Path(os.environ.get("VPTQ_LAB_DATA") or SHARED_DATA)
    if not (folder / "wiki.test.raw").is_file():
        pytest.skip(f"WikiText-2 raw files not found in {folder}; set VPTQ_LAB_DATA")
    return folder


@pytest.fixture(scope="session")
def tiny_tok():
    from vptq_lab.testing import tiny_tokenizer

    return tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tok) -> Path:
    from vptq_lab.testing import save_tiny_model, tiny_llama

    return save_tiny_model(tmp_path_factory.mktemp("tiny-llama"), tiny_llama(vocab_size=len(tiny_tok)), tiny_tok)


@pytest.fixture(scope="session")
def subprocess_env() -> dict[str, str]:
    """The environment of a `vptq-lab` child process in tests: offline, one thread, no data folder (the stand-in
    corpus), this checkout on the path, and no torchrun variables inherited from a launcher."""
    drop = {"VPTQ_LAB_DATA", "WORLD_SIZE", "RANK", "LOCAL_RANK"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONPATH=str(Path(__file__).resolve().parents[1]),
    )
    return env


@pytest.fixture(scope="session")
def four_block_model_dir(tmp_path_factory) -> Path:
    """A 4-block tiny LLaMA saved as a model folder, for the tests that run `vptq-lab` in child processes."""
    from vptq_lab.testing import save_tiny_model, tiny_llama

    model = tiny_llama(vocab_size=384, hidden=32, layers=4, seed=2)
    return save_tiny_model(tmp_path_factory.mktemp("tiny-4-blocks"), model)
