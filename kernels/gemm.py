"""VQ GEMM for prefill (many tokens): two implementations, same contract.

- ``method="dequant"``: Triton :func:`~vptq_lab.kernels.dequant.dequant` into a
  dense ``[out, in]`` weight in x's dtype, then cuBLAS via ``F.linear``. Simple,
  and the dequant cost is amortized over the tokens.
- ``method="fused"``: each program decodes weight tiles in registers and feeds
  them to ``tl.dot``; W is never written. Perm/norm are folded into how x is
  read, exactly as in :mod:`.gemv`.

``benchmarks/kernel_speed.py`` times both; :data:`DEFAULT_METHOD` is what the
dispatcher uses. Anatomy (Triton matmul tutorial): configs, the jitted kernel,
a thin wrapper. Reference: :func:`vptq_lab.kernels.reference.vq_linear_ref`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from vptq_lab.core.qweight import QuantizedWeight

from ._tiles import load_x, main_tile, next_pow2, outlier_tile, weight_args
from ._triton import autotune_do_bench, check_device, interpreter_prune
from .dequant import dequant

__all__ = ["vq_gemm", "DEFAULT_METHOD"]

DEFAULT_METHOD = "dequant"  # not yet measured against "fused" on a GPU


def _configs() -> list[triton.Config]:
    # BLOCK_N = BLOCK_R * VP output rows; the wrapper picks BLOCK_R so that BLOCK_N is ~64.
    # The first config is the one the interpreter uses.
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_S": bs}, num_warps=nw, num_stages=ns)
        for bm, bs, nw, ns in [(32, 32, 4, 1), (64, 32, 4, 3), (64, 64, 4, 3), (128, 32, 8, 3), (128, 64, 8, 2)]
    ]


@triton.autotune(configs=_configs(), key=["M", "R", "S", "G", "O", "V"], do_bench=autotune_do_bench,
                 prune_configs_by={"early_config_prune": interpreter_prune})
@triton.jit
def _vq_gemm_kernel(
    # activations x [M, IN] (original column order), output y [M, OUT], layer bias [OUT]
    x_ptr, stride_xm, y_ptr, stride_ym, bias_ptr,
    # main part: packed codes [G, R, W], codebooks [G, k1*V] and [G, k2*V]
    idx_ptr, stride_ig, stride_ir, cb_ptr, stride_cg, rcb_ptr, stride_rg,
    # outlier part: codes [R0, O] (uint16 bits), codebook [k0*V0]
    oidx_ptr, stride_or, ocb_ptr,
    # column transform: perm [IN] (uint16 bits), weight_scale and weight_bias [IN]
    perm_ptr, scale_ptr, wbias_ptr,
    # sizes: tokens, output rows, vector rows, columns per group, groups, outlier columns
    M, OUT, R, S, G, O,
    # code layout
    V: tl.constexpr, VP: tl.constexpr, B1: tl.constexpr, B2: tl.constexpr, V0: tl.constexpr,
    HAS_RES: tl.constexpr, HAS_PERM: tl.constexpr, HAS_NORM: tl.constexpr, HAS_BIAS: tl.constexpr,
    # tl.dot operand type: fp16/bf16 (tensor cores) or fp32 ("ieee", exact)
    DOT_DTYPE: tl.constexpr,
    # tiles: BLOCK_M tokens x (BLOCK_R vector rows = BLOCK_R*VP outputs), BLOCK_S columns per step
    BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """Grid (cdiv(M, BLOCK_M), cdiv(R, BLOCK_R)): y[BLOCK_M tokens, BLOCK_R*V outputs] per program."""
    m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)  # [BLOCK_M] tokens
    m_mask = m < M
    r = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)  # [BLOCK_R] vector rows
    j = tl.arange(0, VP)  # [VP] vector entries
    o = r[:, None] * V + j[None, :]  # [BLOCK_R, VP] output rows
    o_mask = (j[None, :] < V) & (o < OUT)
    acc = tl.zeros([BLOCK_M, BLOCK_R * VP], dtype=tl.float32)
    xb = tl.zeros([BLOCK_M], dtype=tl.float32)
    for s0 in range(0, O, BLOCK_S):  # outlier columns: stored columns 0 .. O-1
        s = s0 + tl.arange(0, BLOCK_S)
        s_mask = s < O
        w = outlier_tile(oidx_ptr, stride_or, ocb_ptr, o, s, o_mask, s_mask, V0)  # [BLOCK_R, BLOCK_S, VP]
        wt = tl.reshape(tl.permute(w, (1, 0, 2)), (BLOCK_S, BLOCK_R * VP))  # [BLOCK_S, BLOCK_N]
        x, xb = load_x(x_ptr, stride_xm, m, m_mask, s, s_mask, perm_ptr, scale_ptr, wbias_ptr, xb,
                        HAS_PERM, HAS_NORM)  # [BLOCK_M, BLOCK_S]
        acc = tl.dot(x.to(DOT_DTYPE), wt.to(DOT_DTYPE), acc, input_precision="ieee")
    for g in range(G):  # group g: stored columns O + g*S .. O + g*S + S-1
        for s0 in range(0, S, BLOCK_S):
            s = s0 + tl.arange(0, BLOCK_S)
            s_mask = s < S
            w = main_tile(idx_ptr + g * stride_ig, stride_ir, cb_ptr + g * stride_cg, rcb_ptr + g * stride_rg,
                          r, s, j, r < R, s_mask, j < V, V, B1, B2, HAS_RES)  # [BLOCK_R, BLOCK_S, VP]
            wt = tl.reshape(tl.permute(w, (1, 0, 2)), (BLOCK_S, BLOCK_R * VP))  # [BLOCK_S, BLOCK_N]
            x, xb = load_x(x_ptr, stride_xm, m, m_mask, O + g * S + s, s_mask, perm_ptr, scale_ptr, wbias_ptr,
                            xb, HAS_PERM, HAS_NORM)  # [BLOCK_M, BLOCK_S]
            acc = tl.dot(x.to(DOT_DTYPE), wt.to(DOT_DTYPE), acc, input_precision="ieee")
    acc += xb[:, None]
    o_flat = tl.reshape(o, (BLOCK_R * VP,))  # [BLOCK_N]
    on_mask = tl.reshape(o_mask, (BLOCK_R * VP,))
    if HAS_BIAS:
        acc += tl.load(bias_ptr + o_flat, mask=on_mask, other=0.0).to(tl.float32)[None, :]
    out_ptr = y_ptr + m[:, None] * stride_ym + o_flat[None, :]  # [BLOCK_M, BLOCK_N]
    tl.store(out_ptr, acc.to(y_ptr.dtype.element_ty), mask=m_mask[:, None] & on_mask[None, :])


def _fused(x2: torch.Tensor, qw: QuantizedWeight, bias: torch.Tensor | None) -> torch.Tensor:
    """x2 [M, in] -> [M, out] with the fused tl.dot kernel."""
    check_device(x2.device, _vq_gemm_kernel)
    m = x2.shape[0]
    y = torch.empty(m, qw.out_features, dtype=x2.dtype, device=x2.device)  # [M, out]
    vp = next_pow2(qw.vector_len)
    block_r = max(64 // vp, 1)  # BLOCK_N = BLOCK_R * VP >= 16 for tl.dot (VP <= 16)
    dot_dtype = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}.get(x2.dtype, tl.float32)
    grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]), triton.cdiv(qw.num_rows, block_r))  # noqa: E731
    _vq_gemm_kernel[grid](x2, x2.stride(0), y, y.stride(0), bias if bias is not None else y,
                          **weight_args(qw), M=m, HAS_BIAS=bias is not None, DOT_DTYPE=dot_dtype, BLOCK_R=block_r)
    return y


def vq_gemm(x: torch.Tensor, qw: QuantizedWeight, bias: torch.Tensor | None = None,
            method: str = DEFAULT_METHOD) -> torch.Tensor:
    """``x @ W.T + bias`` for many tokens.

    x: ``[..., in]``; bias: ``[out]`` or None; method: "dequant" or "fused"
    (see the module docstring). Returns ``[..., out]`` in ``x.dtype``.
    """
    if x.shape[-1] != qw.in_features:
        raise ValueError(f"x has {x.shape[-1]} features, the weight {qw.in_features}")
    x2 = x.reshape(-1, qw.in_features).contiguous()  # [M, in]
    if method == "dequant":
        y = F.linear(x2, dequant(qw, x2.dtype), bias if bias is None else bias.to(x2.dtype))  # [M, out]
    elif method == "fused":
        y = _fused(x2, qw, bias)
    else:
        raise ValueError(f"method must be 'dequant' or 'fused', got {method!r}")
    return y.reshape(*x.shape[:-1], qw.out_features)  # [..., out]
