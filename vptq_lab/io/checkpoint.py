"""Save and load quantized models in the official VPTQ checkpoint layout.

A saved folder is an ordinary Hugging Face folder: ``config.json`` carries
``quantization_config`` (``quant_method: "vptq"``, ``config_for_layers``), the
packed tensors sit in ``model.safetensors`` under their official names
(``<layer>.centroids.weight``, ``<layer>.indices``, ...), plus the tokenizer,
``report.json`` (per-layer records) and ``manifest.json`` (sha256 of every file).

Only safetensors and JSON are ever read. Folders are written to a temporary
sibling and renamed into place, so an interrupted save leaves nothing half-written.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vptq_lab.core.format import qweight_from_tensors
from vptq_lab.errors import VPTQLabError
from vptq_lab.files import safe_member, sha256_file
from vptq_lab.model.arch import set_module
from vptq_lab.model.layers import QuantizedLinear, module_tensors

__all__ = [
    "save_quantized",
    "load_quantized",
    "storage_dtype",
    "FORMAT_VERSION",
    "read_manifest",
    "compare_checkpoints",
]

FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"


_FORMAT_KEYS = (
    "centroids.weight",
    "res_centroids.weight",
    "outlier_centroids.weight",
    "indices",
    "outlier_indices",
    "perm",
    "weight_scale",
    "weight_bias",
)


def storage_dtype(model: nn.Module, dtype: torch.dtype | None = None) -> torch.dtype:
    """The dtype the non-quantized tensors (embeddings, norms, biases, lm_head) are saved in.

    ``dtype`` when given; else the model's own 16-bit dtype (``config.dtype``, what its source checkpoint
    held); else float16, as official VPTQ checkpoints store them. Computation stays fp32 after loading.
    """
    if dtype is not None:
        return dtype
    own = getattr(model.config, "dtype", None) or getattr(model.config, "torch_dtype", None)
    own = getattr(torch, own, None) if isinstance(own, str) else own
    return own if own in (torch.float16, torch.bfloat16) else torch.float16


def _state_tensors(model: nn.Module, dtype: torch.dtype) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, Any]]]:
    """All tensors to store (official names for quantized layers) and ``config_for_layers``.

    The quantized layers' format tensors keep their own dtypes; every other floating tensor is cast to ``dtype``.
    """
    tensors, configs = module_tensors(model)
    if getattr(model.config, "tie_word_embeddings", False):
        tensors.pop("lm_head.weight", None)
    formatted = {f"{layer}.{key}" for layer in configs for key in _FORMAT_KEYS}
    out = {}
    for name, tensor in tensors.items():
        tensor = tensor.detach().contiguous().cpu()
        if name not in formatted and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        out[name] = tensor
    return out, configs


def checkpoint_bytes(model: nn.Module, dtype: torch.dtype | None = None) -> int:
    """The exact size of the ``model.safetensors`` that :func:`save_quantized` writes for ``model`` (serialized in
    memory, nothing written)."""
    from safetensors.torch import save

    tensors, configs = _state_tensors(model, storage_dtype(model, dtype))
    if not configs:
        raise VPTQLabError("the model has no quantized layers: run quantize_ first")
    return len(save(tensors, metadata={"format": "pt"}))


def save_quantized(
    model: nn.Module,
    tokenizer,
    folder: str | Path,
    report: dict[str, Any] | None = None,
    overwrite: bool = False,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write ``model`` (with QuantizedLinear layers) as an official-layout VPTQ folder; returns it.

    The non-quantized tensors (embeddings, norms, biases) are stored in :func:`storage_dtype`: 16 bits, as official
    checkpoints do. A model computed in fp32 whose weights are not 16-bit exact (the default model, dequantized from
    its GGUF) then reloads with those tensors rounded; ``dtype=torch.float32`` keeps a bit-exact copy.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    if folder.exists() and not overwrite:
        raise VPTQLabError(f"{folder} already exists: choose another --out folder or pass overwrite=True")
    dtype = storage_dtype(model, dtype)
    tensors, configs = _state_tensors(model, dtype)
    if not configs:
        raise VPTQLabError("the model has no quantized layers: run quantize_ first")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        config = model.config.to_dict()
        config["dtype"] = str(dtype).removeprefix("torch.")  # what the stored tensors are
        config["quantization_config"] = {
            "quant_method": "vptq",
            "config_for_layers": configs,
            "shared_layer_config": {},
            "vptq_lab_format_version": FORMAT_VERSION,
        }
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        save_file(tensors, str(tmp / WEIGHTS), metadata={"format": "pt"})
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        (tmp / "report.json").write_text(json.dumps(report or {}, indent=2))
        files = sorted(p for p in tmp.iterdir() if p.is_file())
        manifest = {"format_version": FORMAT_VERSION, "files": {p.name: sha256_file(p) for p in files}}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
        _swap_into_place(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _swap_into_place(tmp: Path, folder: Path) -> None:
    if folder.exists():
        old = folder.with_name(f".{folder.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        folder.rename(old)
        tmp.rename(folder)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(folder)


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise VPTQLabError(f"{path} is missing: {what}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VPTQLabError(f"{path} is not valid JSON ({exc}): the file is damaged; re-save the model") from exc


def read_manifest(folder: Path) -> dict[str, str]:
    """Verify every file listed in manifest.json; returns name -> sha256."""
    folder = Path(folder)
    path = folder / "manifest.json"
    if not path.is_file():
        raise VPTQLabError(f"{folder} has no manifest.json: it was not written by vptq_lab (or was cut short)")
    manifest = _read_json(path, "re-save the model")
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise VPTQLabError(
            f"{folder} uses checkpoint format version {version}, newer than this vptq_lab "
            f"understands ({FORMAT_VERSION}): upgrade vptq_lab"
        )
    files = manifest.get("files")
    if not isinstance(files, dict) or not {"config.json", WEIGHTS} <= set(files):
        raise VPTQLabError(
            f"{path} does not list config.json and {WEIGHTS}: it cannot vouch for the checkpoint; re-save the model"
        )
    for name, digest in files.items():
        safe_member(folder, name)
        if not (folder / name).is_file():
            raise VPTQLabError(f"{folder / name} is missing: the checkpoint is incomplete; re-save it")
        if sha256_file(folder / name) != digest:
            raise VPTQLabError(
                f"{folder / name} does not match its sha256 in manifest.json: "
                "the file was modified or truncated; re-save or re-download the checkpoint"
            )
    return files


def _check_slot(model: nn.Module, name: str, folder: Path) -> None:
    """``name`` must be a linear of the freshly built model (its place for a QuantizedLinear)."""
    try:
        weight = getattr(model.get_submodule(name), "weight", None)
    except AttributeError:
        weight = None
    if not (isinstance(weight, torch.Tensor) and weight.dim() == 2):
        raise VPTQLabError(
            f"{folder}/config.json quantizes {name!r}, which is not a linear of this model: "
            "config.json and the weights are from different models; re-save the model"
        )


def load_quantized(folder: str | Path, device: str | torch.device = "cpu", verify: bool = True):
    """Load a VPTQ folder on any device (CPU included). Returns ``(model, tokenizer)``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder = Path(folder)
    if not folder.is_dir():
        raise VPTQLabError(f"{folder} is not a folder: point at a saved VPTQ checkpoint folder")
    has_manifest = (folder / "manifest.json").is_file()
    if verify and has_manifest:
        read_manifest(folder)
    raw = _read_json(folder / "config.json", "point at a saved VPTQ checkpoint folder")
    quant = (raw.pop("quantization_config", None) if isinstance(raw, dict) else None) or {}
    if quant.get("quant_method") != "vptq":
        raise VPTQLabError(f"{folder} is not a VPTQ checkpoint (quant_method {quant.get('quant_method')!r})")
    version = quant.get("vptq_lab_format_version", FORMAT_VERSION)
    if not isinstance(quant.get("config_for_layers"), dict) or not isinstance(version, int):
        raise VPTQLabError(
            f"{folder}/config.json has no valid quantization_config.config_for_layers: "
            "the file is damaged; re-save the model"
        )
    if version > FORMAT_VERSION:
        raise VPTQLabError(
            f"{folder} uses checkpoint format version {version}, newer than this vptq_lab "
            f"understands ({FORMAT_VERSION}): upgrade vptq_lab"
        )
    try:
        tensors = load_file(str(folder / WEIGHTS))
    except (SafetensorError, OSError) as exc:
        raise VPTQLabError(f"cannot read {folder / WEIGHTS} ({exc}): the file is truncated or corrupt") from exc
    try:
        config = AutoConfig.for_model(**raw)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)  # compute in fp32
    except (ValueError, KeyError, TypeError) as exc:
        raise VPTQLabError(
            f"{folder}/config.json does not describe a model transformers can build "
            f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}): re-save the model, "
            "or upgrade transformers"
        ) from exc
    for name, cfg in quant["config_for_layers"].items():
        _check_slot(model, name, folder)
        qw = qweight_from_tensors(cfg, tensors, name)
        bias = tensors.pop(f"{name}.bias", None)
        set_module(model, name, QuantizedLinear(qw, bias))
        for key in qw.tensors():
            tensors.pop(f"{name}.{key}")
    try:
        missing, unexpected = model.load_state_dict(tensors, strict=False)
    except RuntimeError as exc:  # size mismatches
        raise VPTQLabError(
            f"{folder}: a tensor's shape does not match config.json "
            f"({' '.join(str(exc).split())[:300]}); re-save the model"
        ) from exc
    missing = [
        m
        for m in missing
        if not (m == "lm_head.weight" and config.tie_word_embeddings)
        and ".".join(m.split(".")[:-1]) not in quant["config_for_layers"]
    ]
    if missing or unexpected:
        raise VPTQLabError(f"{folder}: tensors missing {missing[:5]} or unexpected {unexpected[:5]}; re-save the model")
    if config.tie_word_embeddings:
        model.tie_weights()
    tokenizer = AutoTokenizer.from_pretrained(folder) if (folder / "tokenizer_config.json").is_file() else None
    return model.to(device).eval(), tokenizer


_TIMINGS = ("seconds", "seconds_before_resume", "timings")


def _without_timings(value: Any) -> Any:
    """value with every wall-clock time removed (``seconds``, ``seconds_before_resume`` and ``timings`` keys), at
    any depth: they differ between equal runs, and a resumed run's also counts the runs before it."""
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if k not in _TIMINGS}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


def _report_without_timings(folder: Path) -> Any:
    return _without_timings(
        _read_json(folder / "report.json", "save_quantized writes one into every folder; re-save the model")
    )


def compare_checkpoints(a: str | Path, b: str | Path) -> dict[str, Any]:
    """Whether two saved folders hold the same quantized model, and where they differ.

    Compares ``model.safetensors`` tensor by tensor (names, dtypes, values) and byte for byte, ``config.json`` as
    text, and ``report.json`` without its wall-clock ``seconds`` fields. ``identical`` is true only when
    all of these agree; ``differing`` lists up to 10 tensor names whose dtype or values differ.
    """
    from safetensors.torch import load_file

    a, b = Path(a), Path(b)
    for folder in (a, b):
        if not (folder / WEIGHTS).is_file():
            raise VPTQLabError(f"{folder} holds no {WEIGHTS}: pass a folder written by save_quantized")
    ta, tb = load_file(str(a / WEIGHTS)), load_file(str(b / WEIGHTS))
    differing = sorted(k for k in ta.keys() & tb.keys() if ta[k].dtype != tb[k].dtype or not torch.equal(ta[k], tb[k]))
    result = {
        "tensors": len(ta),
        "same_names": ta.keys() == tb.keys(),
        "only_in_a": sorted(ta.keys() - tb.keys())[:10],
        "only_in_b": sorted(tb.keys() - ta.keys())[:10],
        "differing": differing[:10],
        "same_tensors": ta.keys() == tb.keys() and not differing,
        "same_file_bytes": (a / WEIGHTS).read_bytes() == (b / WEIGHTS).read_bytes(),
        "same_config_json": (a / "config.json").read_text() == (b / "config.json").read_text(),
        "same_report": _report_without_timings(a) == _report_without_timings(b),
    }
    result["identical"] = all(result[k] for k in ("same_tensors", "same_file_bytes", "same_config_json", "same_report"))
    return result
