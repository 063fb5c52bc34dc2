"""Triton dequantization: packed VPTQ indices -> dense weight ``[out, in]``.

Anatomy (Triton matmul tutorial): configs, the jitted kernel, a thin wrapper.
The reference is :func:`vptq_lab.kernels.reference.dequant_ref`; the test is
``tests/test_kernels.py``. Importing this module imports triton and defines
the kernel, so set ``TRITON_INTERPRET=1`` first on a machine without a GPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from vptq_lab.core.qweight import QuantizedWeight

from ._tiles import main_tile, outlier_tile, weight_args
from ._triton import autotune_do_bench, check_device, interpreter_prune

__all__ = ["dequant"]


def _configs() -> list[triton.Config]:
    # The first config is the one the interpreter uses: large tiles, few programs.
    return [
        triton.Config({"BLOCK_R": br, "BLOCK_S": bs}, num_warps=nw)
        for br, bs, nw in [(16, 64, 4), (8, 64, 4), (16, 128, 4), (32, 64, 8), (4, 128, 4)]
    ]


@triton.autotune(configs=_configs(), key=["R", "S", "O", "V", "OUTLIERS"], do_bench=autotune_do_bench,
                 prune_configs_by={"early_config_prune": interpreter_prune})
@triton.jit
def _dequant_kernel(
    # output W [OUT, IN] (original column order unless HAS_PERM is off)
    w_ptr, stride_wo,
    # main part: packed codes [G, R, W], codebooks [G, k1*V] and [G, k2*V]
    idx_ptr, stride_ig, stride_ir, cb_ptr, stride_cg, rcb_ptr, stride_rg,
    # outlier part: codes [R0, O] (uint16 bits), codebook [k0*V0]
    oidx_ptr, stride_or, ocb_ptr,
    # column transform: perm [IN] (uint16 bits), weight_scale and weight_bias [IN]
    perm_ptr, scale_ptr, wbias_ptr,
    # sizes: output rows, vector rows, columns per group, outlier columns
    OUT, R, S, O,
    # code layout
    V: tl.constexpr, VP: tl.constexpr, B1: tl.constexpr, B2: tl.constexpr, V0: tl.constexpr,
    HAS_RES: tl.constexpr, HAS_PERM: tl.constexpr, HAS_NORM: tl.constexpr,
    # this launch writes the outlier columns (one "group" of O columns) instead of the groups
    OUTLIERS: tl.constexpr,
    # tiles
    BLOCK_R: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """Grid (cdiv(R, BLOCK_R), cdiv(S or O, BLOCK_S), G or 1): one tile per program."""
    g = tl.program_id(2)
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)  # [BLOCK_R] vector rows
    s = tl.program_id(1) * BLOCK_S + tl.arange(0, BLOCK_S)  # [BLOCK_S] columns in the group
    j = tl.arange(0, VP)  # [VP] vector entries
    o = r[:, None] * V + j[None, :]  # [BLOCK_R, VP] output rows
    o_mask = (j[None, :] < V) & (o < OUT)
    if OUTLIERS:
        s_mask = s < O
        w = outlier_tile(oidx_ptr, stride_or, ocb_ptr, o, s, o_mask, s_mask, V0)
        col = s  # stored column: outliers come first
    else:
        s_mask = s < S
        w = main_tile(idx_ptr + g * stride_ig, stride_ir, cb_ptr + g * stride_cg, rcb_ptr + g * stride_rg,
                      r, s, j, r < R, s_mask, j < V, V, B1, B2, HAS_RES)
        col = O + g * S + s
    if HAS_PERM:  # stored column j is original column perm[j]
        col = tl.load(perm_ptr + col, mask=s_mask, other=0).to(tl.int32) & 0xFFFF
    if HAS_NORM:
        scale = tl.load(scale_ptr + col, mask=s_mask, other=0.0).to(tl.float32)
        shift = tl.load(wbias_ptr + col, mask=s_mask, other=0.0).to(tl.float32)
        w = w * scale[None, :, None] + shift[None, :, None]
    out_ptr = w_ptr + o[:, None, :] * stride_wo + col[None, :, None]  # [BLOCK_R, BLOCK_S, VP]
    tl.store(out_ptr, w.to(w_ptr.dtype.element_ty), mask=o_mask[:, None, :] & s_mask[None, :, None])


def dequant(qw: QuantizedWeight, dtype: torch.dtype = torch.float32, stored_order: bool = False) -> torch.Tensor:
    """Dense weight of ``qw`` computed by Triton: ``[out, in]`` in ``dtype``.

    Matches :func:`~vptq_lab.kernels.reference.dequant_ref`. With
    ``stored_order`` the permutation and weight_scale/bias are *not* applied
    (columns stay in the stored order: outliers first, then the groups).
    """
    if dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"dtype must be fp16, bf16 or fp32, got {dtype}")
    device = qw.indices.device
    check_device(device, _dequant_kernel)
    w = torch.empty(qw.out_features, qw.in_features, dtype=dtype, device=device)  # [out, in]
    args = weight_args(qw)
    del args["G"]  # the grid covers the groups
    if stored_order:
        args.update(HAS_PERM=False, HAS_NORM=False)
    for outliers, cols, groups in [(True, qw.outlier_size, 1), (False, qw.group_size, qw.group_num)]:
        if cols == 0:
            continue

        def grid(meta: dict, cols: int = cols, groups: int = groups) -> tuple[int, int, int]:
            return triton.cdiv(qw.num_rows, meta["BLOCK_R"]), triton.cdiv(cols, meta["BLOCK_S"]), groups

        _dequant_kernel[grid](w, w.stride(0), **args, OUTLIERS=outliers)
    return w
