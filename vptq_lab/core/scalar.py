"""Scalar baselines: round-to-nearest (RTN) and GPTQ, pure functions of ``(W, H, config)``.

The registry that runs them beside plain VQ and VPTQ is :mod:`vptq_lab.core.methods`.

The scalar grid is the reference GPTQ one (its ``Quantizer``, which the GPTQ
paper's RTN baseline uses too): per output row (and group), the range
``[min(x, 0), max(x, 0)]`` is split into ``2**bits - 1`` steps;
``code = clamp(round(x / scale) + zero, 0, maxq)``, ``w = scale * (code - zero)``.
RTN and GPTQ share it, so what separates them is only the second-order feedback.
Scales and zeros are rounded to fp16 first: what is stored is what was used.

Worked example (2 bits, one row ``[0, 0.9, 2.2, 3]``): range [0, 3], scale 1,
zero 0, codes ``[0, 1, 2, 3]``, dequantized ``[0, 1, 2, 3]``.

Bit accounting (:func:`scalar_bits`), per linear ``out x in`` with
``n_groups = ceil(in / group_size)`` (1 when per-channel):

- codes: ``bits`` per weight (ideally packed);
- scale: 16 bits per group per output row;
- zero: 16 bits per group per output row (fp16, as the reference keeps it
  before packing); none when symmetric (the zero is the fixed midpoint);
- perm: 16 bits per input column when GPTQ's act-order puts columns of one
  group out of index order (``act_order`` with more than one group and not
  ``static_groups``): dequantization then needs each column's group. This is
  the same 16 bits per column that VPTQ is charged for its permutation.
  Per-channel or static groups need none (a column's group is ``j // group_size``).

So 2-bit g128 is ``2 + 32/128 = 2.25`` bits per weight, plus ``16/out`` with act-order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from vptq_lab.core.bits import BitCounts
from vptq_lab.core.config import JsonConfig
from vptq_lab.core.hessian_ops import act_order, column_loop, condition_hessian, inverse_cholesky_upper, proxy_loss

__all__ = [
    "RTNConfig",
    "GPTQConfig",
    "ScalarBits",
    "ScalarQuantized",
    "rtn_quantize",
    "gptq_quantize",
    "scalar_bits",
    "scalar_grid",
]


# Configs ------------------------------------------------------------------------
def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_scalar_fields(cfg: Any) -> None:
    """Shared checks of ``bits``, ``group_size`` and ``symmetric``."""
    if not _is_int(cfg.bits) or not 1 <= cfg.bits <= 8:
        raise ValueError(f"bits={cfg.bits!r} must be an int in 1..8 (codes are stored as uint8)")
    if cfg.group_size is not None and (not _is_int(cfg.group_size) or cfg.group_size < 1):
        raise ValueError(f"group_size={cfg.group_size!r} must be a positive int (e.g. 128) or None for per-channel")
    if not isinstance(cfg.symmetric, bool):
        raise ValueError(f"symmetric={cfg.symmetric!r} must be a bool")


@dataclass(frozen=True)
class RTNConfig(JsonConfig):
    """Round-to-nearest: ``bits`` per weight, one fp16 scale (+ zero) per ``group_size`` input columns.

    >>> RTNConfig.from_json(RTNConfig(bits=3).to_json()) == RTNConfig(bits=3)
    True
    """

    bits: int = 4
    group_size: int | None = 128  # None: one scale/zero per output row
    symmetric: bool = False

    def __post_init__(self) -> None:
        _check_scalar_fields(self)


@dataclass(frozen=True)
class GPTQConfig(JsonConfig):
    """GPTQ (Frantar et al. 2022) on the RTN grid, with act-order and groups."""

    bits: int = 4
    group_size: int | None = 128
    act_order: bool = True  # columns by descending diag H
    percdamp: float = 0.01
    blocksize: int = 128
    static_groups: bool = False  # groups from the original column order, fitted before the loop
    symmetric: bool = False

    def __post_init__(self) -> None:
        _check_scalar_fields(self)
        for name in ("act_order", "static_groups"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}={getattr(self, name)!r} must be a bool")
        p = self.percdamp
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not (math.isfinite(p) and 0 <= p < 10):
            raise ValueError(f"percdamp={p!r} must be a number in [0, 10) (fraction of mean diag H, default 0.01)")
        if not _is_int(self.blocksize) or self.blocksize < 1:
            raise ValueError(f"blocksize={self.blocksize!r} must be a positive int (default 128)")


ScalarConfig = RTNConfig | GPTQConfig


# Bits ----------------------------------------------------------------------------
@dataclass(frozen=True)
class ScalarBits(BitCounts):
    """Bits of one scalar-quantized layer (or a sum), by where they go. Same interface as ``BitBreakdown``."""

    code_bits: float = 0.0
    scale_bits: float = 0.0
    zero_bits: float = 0.0
    perm_bits: float = 0.0
    num_weights: int = 0


def _num_groups(config: ScalarConfig, n_in: int) -> int:
    return 1 if config.group_size is None else -(-n_in // config.group_size)


def _needs_perm(config: ScalarConfig, n_in: int) -> bool:
    """Act-order with dynamic groups scatters a group's columns: dequantization needs the order."""
    return (
        isinstance(config, GPTQConfig)
        and config.act_order
        and not config.static_groups
        and _num_groups(config, n_in) > 1
    )


def scalar_bits(config: ScalarConfig, shape: tuple[int, int]) -> ScalarBits:
    """Exact bits of one ``(out, in)`` linear, scales, zeros and perm included (module docstring)."""
    n_out, n_in = shape
    if n_out < 1 or n_in < 1:
        raise ValueError(f"shape={shape} must be a positive (out, in) pair")
    params = 16 * n_out * _num_groups(config, n_in)
    return ScalarBits(
        code_bits=config.bits * n_out * n_in,
        scale_bits=params,
        zero_bits=0 if config.symmetric else params,
        perm_bits=16 * n_in if _needs_perm(config, n_in) else 0,
        num_weights=n_out * n_in,
    )


# The grid ------------------------------------------------------------------------
def scalar_grid(x: torch.Tensor, bits: int, symmetric: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference GPTQ grid per row. x [out, g] -> (scale fp16 [out], zero fp16 [out], integer-valued)."""
    maxq = 2**bits - 1
    x = x.float()
    xmin = x.min(1).values.clamp(max=0)  # [out]: the range always holds 0
    xmax = x.max(1).values.clamp(min=0)  # [out]
    if symmetric:
        xmax = torch.maximum(-xmin, xmax)
        xmin = torch.where(xmin < 0, -xmax, xmin)
    empty = (xmin == 0) & (xmax == 0)  # an all-zero row: any grid will do
    xmin, xmax = torch.where(empty, -1.0, xmin), torch.where(empty, 1.0, xmax)
    scale = ((xmax - xmin) / maxq).half()
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # fp16 underflow of a tiny range
    if symmetric:
        zero = torch.full_like(xmin, (maxq + 1) / 2)
    else:
        zero = torch.round(-xmin / scale.float())
    return scale, zero.half()


def _round(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x [out, m] on the grid of scale, zero [out, 1] or [out, m] -> (codes uint8, dequantized fp32)."""
    s, z = scale.float(), zero.float()
    codes = torch.clamp(torch.round(x / s) + z, 0, 2**bits - 1)
    return codes.to(torch.uint8), s * (codes - z)


# Result --------------------------------------------------------------------------
@dataclass
class ScalarQuantized:
    """A scalar-quantized linear, in ORIGINAL column order.

    ``W`` fp32 [out, in] is what the model uses; ``codes`` uint8 [out, in];
    ``scales``, ``zeros`` fp16 [out, n_groups]; ``g_idx`` int64 [in]: the group
    of each column; ``perm`` int64 [in] or None: working column j = original
    column perm[j] (act-order). ``W == scales[:, g_idx] * (codes - zeros[:, g_idx])``.
    """

    W: torch.Tensor
    codes: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    g_idx: torch.Tensor
    perm: torch.Tensor | None  # kept for inspection; charged only when dequantization needs it
    config: ScalarConfig
    bits: ScalarBits
    info: dict[str, Any] = field(default_factory=dict)

    def dequantize(self) -> torch.Tensor:
        """Rebuild W [out, in] fp32 from codes, scales and zeros (the storage is self-sufficient)."""
        s, z = self.scales.float()[:, self.g_idx], self.zeros.float()[:, self.g_idx]  # [out, in]
        return s * (self.codes.float() - z)


def _info(W: torch.Tensor, Wq: torch.Tensor, H: torch.Tensor | None) -> dict[str, Any]:
    return {} if H is None else {"proxy_loss_rel": proxy_loss(W, Wq, H)}


def _check_weight(W: torch.Tensor, H: torch.Tensor | None) -> None:
    if W.dim() != 2:
        raise ValueError(f"W must be [out, in], got shape {tuple(W.shape)}")
    if H is not None and H.shape != (W.shape[1], W.shape[1]):
        raise ValueError(f"H must be [in, in] = {(W.shape[1], W.shape[1])} to match W, got {tuple(H.shape)}")


# RTN -----------------------------------------------------------------------------
def _group_grids(W: torch.Tensor, config: ScalarConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Grid of every group of ``group_size`` columns in index order. W [out, in] -> fp16 [out, n_groups] x2."""
    size = config.group_size or W.shape[1]
    grids = [scalar_grid(W[:, a : a + size], config.bits, config.symmetric) for a in range(0, W.shape[1], size)]
    return torch.stack([s for s, _ in grids], 1), torch.stack([z for _, z in grids], 1)


def rtn_quantize(W: torch.Tensor, config: RTNConfig, H: torch.Tensor | None = None) -> ScalarQuantized:
    """Round-to-nearest per output row, per group of ``group_size`` input columns.

    W [out, in]; H [in, in] optional, only to report ``info["proxy_loss_rel"]``.
    """
    _check_weight(W, H)
    scales, zeros = _group_grids(W.float(), config)  # [out, n_groups] each
    g_idx = torch.arange(W.shape[1], device=W.device) // (config.group_size or W.shape[1])  # [in]
    codes, Wq = _round(W.float(), scales[:, g_idx], zeros[:, g_idx], config.bits)  # [out, in] each
    return ScalarQuantized(
        Wq, codes, scales, zeros, g_idx, None, config, scalar_bits(config, tuple(W.shape)), _info(W, Wq, H)
    )


# GPTQ ----------------------------------------------------------------------------
class _ColumnRounder:
    """Per-column callback for :func:`hessian_ops.column_loop`: round to the scalar grid.

    Works in working (permuted) order. With dynamic groups, a group's scale and
    zero are fitted when the loop reaches the group's first column, on the
    group's weights *as the loop will see them*: ``W0 - E[:, :j0] @ U[:j0, group]``
    (every earlier column's feedback applied). The reference GPTQ reads its
    lazily-updated W there, which is the same thing when groups align with
    blocks (g128, blocksize 128). The callback keeps its own copy of the errors
    for this; it never touches the loop's state.
    """

    def __init__(
        self,
        W0: torch.Tensor,
        U: torch.Tensor,
        config: GPTQConfig,
        col_group: torch.Tensor,
        fixed: tuple[torch.Tensor, torch.Tensor] | None,
    ):
        self.W0, self.U, self.config = W0, U, config  # [out, in], [in, in]
        self.col_group = col_group  # int64 [in]: group of each working column
        n_out, n_in = W0.shape
        n_groups = int(col_group.max()) + 1
        self.scales = torch.ones(n_out, n_groups, dtype=torch.float16, device=W0.device)
        self.zeros = torch.zeros(n_out, n_groups, dtype=torch.float16, device=W0.device)
        if fixed is not None:
            self.scales, self.zeros = fixed
        self.dynamic = fixed is None
        self.E = torch.zeros_like(W0)  # [out, in]
        self.codes = torch.zeros(n_out, n_in, dtype=torch.uint8, device=W0.device)

    def _fit_group(self, j0: int) -> None:
        g = int(self.col_group[j0])
        j1 = j0 + int((self.col_group[j0:] == g).sum())  # dynamic groups are contiguous in working order
        Wg = self.W0[:, j0:j1] - self.E[:, :j0] @ self.U[:j0, j0:j1]  # [out, j1 - j0]
        self.scales[:, g], self.zeros[:, g] = scalar_grid(Wg, self.config.bits, self.config.symmetric)

    def __call__(self, w: torch.Tensor, j: int) -> torch.Tensor:
        g = int(self.col_group[j])
        if self.dynamic and (j == 0 or int(self.col_group[j - 1]) != g):
            self._fit_group(j)
        code, q = _round(w[:, None], self.scales[:, g : g + 1], self.zeros[:, g : g + 1], self.config.bits)
        self.codes[:, j] = code[:, 0]
        self.E[:, j] = (w - q[:, 0]) / self.U[j, j]
        return q[:, 0]  # [out]


def gptq_quantize(W: torch.Tensor, H: torch.Tensor, config: GPTQConfig) -> ScalarQuantized:
    """GPTQ for one linear. W [out, in], H [in, in] -> :class:`ScalarQuantized` (original column order).

    Dead columns and damping (``condition_hessian``), optional act-order, then
    :func:`hessian_ops.column_loop` (the loop VPTQ uses) with a rounding callback.
    Per-channel and static groups fit the grid before the loop; dynamic groups
    follow the working (act-order) column order. Pure; nothing is printed.
    """
    _check_weight(W, H)
    Hc, Wc, dead = condition_hessian(H, W.float(), config.percdamp)
    n_in = W.shape[1]
    perm = act_order(Hc) if config.act_order else torch.arange(n_in, device=W.device)  # [in]
    size = config.group_size or n_in
    static = config.group_size is None or config.static_groups
    orig_group = torch.arange(n_in, device=W.device) // size  # [in]: group of each original column (static)
    col_group = orig_group[perm] if static else torch.arange(n_in, device=W.device) // size  # [in], working order
    Ww, Hw = Wc[:, perm], Hc[perm][:, perm]  # [out, in], [in, in]
    U = inverse_cholesky_upper(Hw)  # [in, in]
    rounder = _ColumnRounder(Ww, U, config, col_group, _group_grids(Wc, config) if static else None)
    Q, _ = column_loop(Ww, U, rounder, config.blocksize)  # [out, in], working order
    inv = torch.argsort(perm)  # original column c sits at working position inv[c]
    Wq, codes, g_idx = Q[:, inv], rounder.codes[:, inv], col_group[inv]
    info = _info(W, Wq, H) | {"dead_columns": int(dead.sum())}
    return ScalarQuantized(
        Wq,
        codes,
        rounder.scales,
        rounder.zeros,
        g_idx,
        perm if config.act_order else None,
        config,
        scalar_bits(config, tuple(W.shape)),
        info,
    )
