"""Every check that can fail, run before a quantization touches the model: the calibration ids, the method and its
config, finite weights, token ids in the vocabulary, each linear's column plan and codebook sizes."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vptq_lab.core.config import MixedConfig, VPTQConfig, config_for, layer_plan
from vptq_lab.core.methods import METHODS
from vptq_lab.errors import VPTQLabError
from vptq_lab.model.arch import ArchSpec, get_blocks, get_module, linear_weight
from vptq_lab.model.layers import QuantizedLinear, is_quantized

__all__ = ["preflight", "check_calibration", "check_method"]


def check_calibration(calibration: torch.Tensor) -> None:
    if (
        not isinstance(calibration, torch.Tensor)
        or calibration.dim() != 2
        or calibration.dtype not in (torch.int64, torch.int32)
    ):
        shape = tuple(getattr(calibration, "shape", ()))
        raise VPTQLabError(
            f"calibration must be integer token ids [nsamples, seqlen], got {shape} "
            f"{getattr(calibration, 'dtype', type(calibration).__name__)}; "
            "build it with vptq_lab.calibration_windows"
        )
    if calibration.numel() == 0:
        raise VPTQLabError(f"calibration is empty {tuple(calibration.shape)}: give at least one window of tokens")


def _check_part(name: str, shape: tuple[int, int], what: str, columns: int, v: int, k: int) -> None:
    vectors = columns * -(-shape[0] // v)  # columns x ceil(out / v)
    if k > vectors:
        raise VPTQLabError(
            f"{name} {list(shape)}: {what}={k} centroids but the layer has only {vectors} vectors of length {v}: "
            f"lower {what} to at most {1 << (vectors.bit_length() - 1)} (or lower v, group_num, npercent)"
        )


def _table_linear(block: nn.Module, leaf: str, name: str, spec: ArchSpec) -> nn.Module:
    """The linear the architecture table names, or an error saying the model does not match the table."""
    try:
        module = get_module(block, leaf)
    except AttributeError:
        module = None
    weight = getattr(module, "weight", None)
    if not isinstance(module, QuantizedLinear) and not (isinstance(weight, torch.Tensor) and weight.dim() == 2):
        raise VPTQLabError(
            f"{name} is not a linear layer ({type(module).__name__}), but the {spec.family!r} row of "
            "vptq_lab.model.arch.ARCHITECTURES expects one: the model does not match its architecture; "
            "load an unmodified model or fix the table row"
        )
    return module


def _check_linear(name: str, module: nn.Module, spec: ArchSpec, config: VPTQConfig) -> None:
    """The config's column plan and codebook sizes fit this linear."""
    shape = tuple(linear_weight(module, spec.transposed).shape)  # (out, in)
    try:
        outliers, _, size = layer_plan(config, shape[1])
    except ValueError as exc:
        raise VPTQLabError(f"{name} {list(shape)}: {exc}") from exc
    _check_part(name, shape, "num_centroids k1", size, config.v, config.k1)
    if config.k2:
        _check_part(name, shape, "num_res_centroids k2", size, config.v, config.k2)
    if outliers:
        _check_part(name, shape, "num_centroids k0", outliers, config.vector_lens[0], config.num_centroids[0])


def preflight(model: nn.Module, spec: ArchSpec, config: Any, calibration: torch.Tensor | None = None) -> None:
    """Every check that can fail, run before the model is touched: finite weights, token ids in the vocabulary,
    a MixedConfig's layer names, column plans and codebook sizes."""
    for name, param in model.named_parameters():
        if param.is_floating_point() and not torch.isfinite(param).all():
            owner = name.removesuffix(".weight")
            raise VPTQLabError(f"{owner} has NaN or inf weights: fix or reload the model before quantizing")
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    vocab = getattr(embeddings, "num_embeddings", None)
    if calibration is not None and vocab is not None:
        lo, hi = int(calibration.min()), int(calibration.max())
        if lo < 0 or hi >= vocab:
            raise VPTQLabError(
                f"calibration token ids span {lo}..{hi}, outside the model's vocabulary of {vocab}: "
                "tokenize the calibration text with this model's tokenizer"
            )
    names = []
    for i, block in enumerate(get_blocks(model, spec)):
        for leaf in (leaf for stage in spec.stages for leaf in stage):
            name = f"{spec.blocks}.{i}.{leaf}"
            names.append(name)
            module = _table_linear(block, leaf, name, spec)
            if isinstance(config, (VPTQConfig, MixedConfig)) and not is_quantized(module):
                _check_linear(name, module, spec, config_for(config, name))
    if isinstance(config, MixedConfig):
        _check_layer_names(config, names)


def _check_layer_names(config: MixedConfig, names: list[str]) -> None:
    unknown = sorted(set(config.layers) - set(names))
    if unknown:
        close = difflib.get_close_matches(unknown[0], names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise VPTQLabError(
            f"the config names {len(unknown)} linear(s) this model does not have, e.g. {unknown[0]!r}{hint}: "
            f"use full names like {names[0]!r}"
        )


def check_method(method: str, config: Any, checkpoint_dir: str | Path | None) -> None:
    if method not in METHODS:
        raise VPTQLabError(f"unknown method {method!r}: choose one of {', '.join(METHODS)}")
    expected = METHODS[method].config_cls
    if not isinstance(config, expected) and not (expected is VPTQConfig and isinstance(config, MixedConfig)):
        raise VPTQLabError(
            f"method {method!r} takes a {expected.__name__}, got a {type(config).__name__}: "
            f"use vptq_lab.core.methods.method_preset({method!r}, bits) or build a {expected.__name__}"
        )
    if checkpoint_dir is not None and expected is not VPTQConfig:
        raise VPTQLabError(
            f"checkpoint_dir/resume support the vector methods (vq, vptq), not {method!r}: "
            "drop checkpoint_dir (scalar baselines take minutes)"
        )
