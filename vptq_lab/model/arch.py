"""Model architecture as data: where the decoder blocks are and which linears run in sequence.

One table, one generic loop (in :mod:`vptq_lab.model.calibrate`). Each stage of a block
is a tuple of linears that read the same input, so they share one Hessian.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vptq_lab.errors import VPTQLabError

__all__ = [
    "ArchSpec",
    "ARCHITECTURES",
    "arch_for",
    "get_blocks",
    "get_module",
    "set_module",
    "linear_weight",
    "linear_role",
]


@dataclass(frozen=True)
class ArchSpec:
    family: str
    model_types: tuple[str, ...]  # config.model_type values
    blocks: str  # dotted path of the ModuleList of decoder blocks
    stages: tuple[tuple[str, ...], ...]  # linears per stage, in the order they run; a stage shares its input
    norms: tuple[str, ...]  # the block's norm modules (trained by layer-wise fine-tuning)
    transposed: bool = False  # GPT-2's Conv1D stores weight as [in, out]


_LLAMA_STAGES = (
    ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    ("self_attn.o_proj",),
    ("mlp.gate_proj", "mlp.up_proj"),
    ("mlp.down_proj",),
)
_LLAMA_NORMS = ("input_layernorm", "post_attention_layernorm")
_GEMMA_NORMS = _LLAMA_NORMS + ("pre_feedforward_layernorm", "post_feedforward_layernorm")

ARCHITECTURES: tuple[ArchSpec, ...] = (
    ArchSpec("llama", ("llama",), "model.layers", _LLAMA_STAGES, _LLAMA_NORMS),
    ArchSpec("mistral", ("mistral",), "model.layers", _LLAMA_STAGES, _LLAMA_NORMS),
    ArchSpec("qwen2", ("qwen2",), "model.layers", _LLAMA_STAGES, _LLAMA_NORMS),
    ArchSpec("gemma", ("gemma",), "model.layers", _LLAMA_STAGES, _LLAMA_NORMS),
    ArchSpec("gemma2", ("gemma2",), "model.layers", _LLAMA_STAGES, _GEMMA_NORMS),
    ArchSpec(
        "gemma3",
        ("gemma3_text",),
        "model.layers",
        _LLAMA_STAGES,
        _GEMMA_NORMS + ("self_attn.q_norm", "self_attn.k_norm"),
    ),
    ArchSpec(
        "phi3",
        ("phi3",),
        "model.layers",
        (("self_attn.qkv_proj",), ("self_attn.o_proj",), ("mlp.gate_up_proj",), ("mlp.down_proj",)),
        _LLAMA_NORMS,
    ),
    ArchSpec(
        "gpt2",
        ("gpt2",),
        "transformer.h",
        (("attn.c_attn",), ("attn.c_proj",), ("mlp.c_fc",), ("mlp.c_proj",)),
        ("ln_1", "ln_2"),
        transposed=True,
    ),
)


def arch_for(model: nn.Module) -> ArchSpec:
    """The table row for ``model``, or an error listing the supported families."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    for spec in ARCHITECTURES:
        if model_type in spec.model_types:
            return spec
    supported = ", ".join(t for spec in ARCHITECTURES for t in spec.model_types)
    raise VPTQLabError(
        f"unsupported architecture {model_type!r}: supported model types are {supported}; "
        "add a row to vptq_lab.model.arch.ARCHITECTURES for a new family"
    )


def get_module(root: nn.Module, dotted: str) -> nn.Module:
    module = root
    for part in dotted.split("."):
        module = getattr(module, part)
    return module


def set_module(root: nn.Module, dotted: str, new: nn.Module) -> None:
    """Put ``new`` at ``root``'s submodule path ``dotted`` (e.g. ``"self_attn.q_proj"``), replacing what is there."""
    parent_name, _, leaf = dotted.rpartition(".")
    setattr(get_module(root, parent_name) if parent_name else root, leaf, new)


def get_blocks(model: nn.Module, spec: ArchSpec | None = None) -> nn.ModuleList:
    spec = spec or arch_for(model)
    blocks = get_module(model, spec.blocks)
    if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
        raise VPTQLabError(f"{type(model).__name__} has no decoder blocks at {spec.blocks!r}: nothing to quantize")
    return blocks


def linear_weight(module: nn.Module, transposed: bool) -> torch.Tensor:
    """The weight as [out, in] fp32 (a copy-free view for Linear, a transpose for Conv1D)."""
    weight = module.weight.detach()
    return (weight.t() if transposed else weight).float()


def linear_role(name: str) -> str:
    """Short role of a linear for plots: q, k, v, qkv, o, gate, up, gate_up, down."""
    leaf = name.rsplit(".", 1)[-1]
    roles = {
        "q_proj": "q",
        "k_proj": "k",
        "v_proj": "v",
        "qkv_proj": "qkv",
        "c_attn": "qkv",
        "o_proj": "o",
        "gate_proj": "gate",
        "up_proj": "up",
        "gate_up_proj": "gate_up",
        "down_proj": "down",
        "c_fc": "up",
    }
    if leaf == "c_proj":
        return "o" if ".attn." in f".{name}" else "down"
    return roles.get(leaf, leaf)
