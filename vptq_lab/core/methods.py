"""One registry for every method we compare: RTN, GPTQ, plain VQ and VPTQ.

Every method is ``quantize(W, H, config) -> result`` plus
``bits(config, (out, in)) -> bits per weight including all overhead``, so a
driver can run them side by side and compare them at the *same total budget*
(:data:`METHODS`, :func:`dequantized`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from vptq_lab.core.bits import bits_per_weight, size_weighted_mean
from vptq_lab.core.config import VPTQConfig
from vptq_lab.core.config import preset as vptq_preset
from vptq_lab.core.quantizer import vptq_quantize, vq_no_feedback
from vptq_lab.core.qweight import QuantizedWeight, dequantize
from vptq_lab.core.scalar import GPTQConfig, RTNConfig, ScalarQuantized, gptq_quantize, rtn_quantize, scalar_bits

__all__ = [
    "MethodSpec",
    "METHODS",
    "dequantized",
    "method_preset",
    "model_bits_per_weight",
    "RTN_PRESETS",
    "GPTQ_PRESETS",
    "VQ_PRESETS",
]


def dequantized(result: Any) -> torch.Tensor:
    """The fp32 [out, in] weight of any method's result (ScalarQuantized, QuantizedWeight or a tensor)."""
    if isinstance(result, ScalarQuantized):
        return result.dequantize()
    if isinstance(result, QuantizedWeight):
        return dequantize(result)
    if isinstance(result, torch.Tensor):
        return result.float()
    raise TypeError(f"cannot dequantize a {type(result).__name__}; expected ScalarQuantized or QuantizedWeight")


@dataclass(frozen=True)
class MethodSpec:
    """One method: its config class, ``quantize(W, H, config)``, ``bits(config, (out, in))`` and presets.

    The vector methods' ``quantize`` also takes ``codebooks=`` (fixed, e.g. shared, codebooks)."""

    name: str
    config_cls: type
    quantize: Callable[[torch.Tensor, torch.Tensor | None, Any], Any]
    bits: Callable[[Any, tuple[int, int]], float]
    presets: dict[int, Any]
    description: str


def _vptq_bits(config: VPTQConfig, shape: tuple[int, int]) -> float:
    """Paper accounting (bits.py): packed indices, fp16 codebooks, perm/scale/bias per column."""
    return bits_per_weight(config, shape, mode="paper").bits_per_weight


def _require_h(name: str, H: torch.Tensor | None) -> torch.Tensor:
    if H is None:
        raise ValueError(f"method {name!r} needs a Hessian H [in, in]; collect one or use 'rtn'")
    return H


# Presets for hidden 576 (SmolLM2-135M, 30 blocks). Bits per weight are model
# totals with all overhead (tests/test_baselines.py recomputes them). Group
# size 192 divides both in-dims (576, 1536), so no group is ragged.
RTN_PRESETS: dict[int, RTNConfig] = {  # 2.17, 3.17, 4.17 bits
    b: RTNConfig(bits=b, group_size=192) for b in (2, 3, 4)
}
GPTQ_PRESETS: dict[int, GPTQConfig] = {  # 2.19, 3.19, 4.19 bits (act-order perm: +0.023)
    b: GPTQConfig(bits=b, group_size=192) for b in (2, 3, 4)
}
# Plain VQ uses VPTQ's own presets (same v, k, outliers and bits: 1.985, 2.958, 3.958), so the only
# difference between the two is the column loop's second-order feedback. The perm stays on: the
# outlier columns of the 3- and 4-bit presets must move first, and the perm is charged as stored.
_VPTQ_PRESETS: dict[int, VPTQConfig] = {b: vptq_preset(b) for b in (2, 3, 4)}
VQ_PRESETS: dict[int, VPTQConfig] = dict(_VPTQ_PRESETS)

METHODS: dict[str, MethodSpec] = {
    "rtn": MethodSpec(
        "rtn",
        RTNConfig,
        lambda W, H, c: rtn_quantize(W, c, H),
        lambda c, s: scalar_bits(c, s).bits_per_weight,
        RTN_PRESETS,
        "round-to-nearest on a per-group min/max grid",
    ),
    "gptq": MethodSpec(
        "gptq",
        GPTQConfig,
        lambda W, H, c: gptq_quantize(W, _require_h("gptq", H), c),
        lambda c, s: scalar_bits(c, s).bits_per_weight,
        GPTQ_PRESETS,
        "scalar grid + second-order column loop (GPTQ)",
    ),
    "vq": MethodSpec(
        "vq",
        VPTQConfig,
        lambda W, H, c, **kw: vq_no_feedback(W, _require_h("vq", H), c, **kw),
        _vptq_bits,
        VQ_PRESETS,
        "weighted k-means VQ, nearest centroid, no feedback",
    ),
    "vptq": MethodSpec(
        "vptq",
        VPTQConfig,
        lambda W, H, c, **kw: vptq_quantize(W, _require_h("vptq", H), c, **kw),
        _vptq_bits,
        _VPTQ_PRESETS,
        "VQ + second-order column loop (VPTQ)",
    ),
}


def _spec(method: str) -> MethodSpec:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; known: {sorted(METHODS)}")
    return METHODS[method]


def model_bits_per_weight(method: str, config: Any, shapes: dict[str, tuple[int, int]]) -> float:
    """Bits per weight of ``{name: (out, in)}`` under ``method`` and ``config``, all overhead included."""
    spec = _spec(method)
    return size_weighted_mean((spec.bits(config, shape), shape) for shape in shapes.values())


def method_preset(method: str, bits: int) -> Any:
    """The preset config of ``method`` near ``bits`` (2, 3 or 4) total bits per weight."""
    presets = _spec(method).presets
    if bits not in presets:
        raise ValueError(f"no {method} preset for bits={bits}; available: {sorted(presets)}")
    return presets[bits]
