"""Fused VQ GEMV for decoding: ``y = x W^T`` straight from the packed indices.

Each program owns ``BLOCK_R`` vector rows (``BLOCK_R * v`` outputs) and walks
all input columns in tiles: load the packed words, extract the codes, gather
the code vectors from the codebooks (small enough to stay in L1/L2) and
accumulate in fp32. W is never written to memory, so the traffic is the
packed indices (~2-3 bits per weight) instead of 16 bits per weight.

Perm, norm and outliers are folded into how x is read. With ``Ws`` the stored
weight (outlier columns first, then the groups, before perm and norm) and
``W[o, perm[c]] = Ws[o, c] * scale[perm[c]] + wbias[perm[c]]``:

    y[o] = sum_c x[perm[c]] * scale[perm[c]] * Ws[o, c]  +  sum_i x[i] * wbias[i]

so the kernel gathers x by perm, scales it, and adds the per-token constant
``x . wbias`` (accumulated on the way, as every program visits every column).

Anatomy (Triton matmul tutorial): configs, the jitted kernel, a thin wrapper.
Reference: :func:`vptq_lab.kernels.reference.vq_linear_ref`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from vptq_lab.core.qweight import QuantizedWeight

from ._tiles import load_x, main_tile, next_pow2, outlier_tile, weight_args
from ._triton import autotune_do_bench, check_device, interpreter_enabled

__all__ = ["vq_gemv", "MAX_TOKENS"]

MAX_TOKENS = 8  # the GEMV keeps M x tile products in registers; more tokens go to the GEMM path


def _configs() -> list[triton.Config]:
    # The first config is the one the interpreter uses: large tiles, few programs.
    return [
        triton.Config({"BLOCK_R": br, "BLOCK_S": bs}, num_warps=nw)
        for br, bs, nw in [(16, 64, 4), (2, 128, 4), (2, 256, 4), (4, 64, 4), (4, 128, 4),
                           (8, 32, 4), (8, 64, 4), (16, 32, 4), (4, 256, 8),
                           (2, 32, 4), (2, 64, 4)]  # the last two fit 8 tokens
    ]


def _prune(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """Interpreter: the first config. GPU: tiles whose M x R x S x VP product fits ~64 registers a thread."""
    if interpreter_enabled():
        return configs[:1]
    def size(c: triton.Config) -> int:
        return kwargs["BLOCK_M"] * c.kwargs["BLOCK_R"] * c.kwargs["BLOCK_S"] * kwargs["VP"] // (32 * c.num_warps)
    fitting = [c for c in configs if size(c) <= 64]
    return fitting or [min(configs, key=size)]


@triton.autotune(configs=_configs(), key=["M", "R", "S", "G", "O", "V"], do_bench=autotune_do_bench,
                 prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _vq_gemv_kernel(
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
    # tiles: BLOCK_M = next_pow2(M) tokens, BLOCK_R vector rows, BLOCK_S columns per step
    BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """Grid (cdiv(R, BLOCK_R),): each program computes y[:, BLOCK_R*V rows] over all columns."""
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)  # [BLOCK_R] vector rows
    j = tl.arange(0, VP)  # [VP] vector entries
    o = r[:, None] * V + j[None, :]  # [BLOCK_R, VP] output rows
    o_mask = (j[None, :] < V) & (o < OUT)
    m = tl.arange(0, BLOCK_M)  # [BLOCK_M] tokens
    m_mask = m < M
    acc = tl.zeros([BLOCK_M, BLOCK_R, VP], dtype=tl.float32)
    xb = tl.zeros([BLOCK_M], dtype=tl.float32)
    for s0 in range(0, O, BLOCK_S):  # outlier columns: stored columns 0 .. O-1
        s = s0 + tl.arange(0, BLOCK_S)
        s_mask = s < O
        w = outlier_tile(oidx_ptr, stride_or, ocb_ptr, o, s, o_mask, s_mask, V0)  # [BLOCK_R, BLOCK_S, VP]
        x, xb = load_x(x_ptr, stride_xm, m, m_mask, s, s_mask, perm_ptr, scale_ptr, wbias_ptr, xb,
                        HAS_PERM, HAS_NORM)  # [BLOCK_M, BLOCK_S]
        acc += tl.sum(w[None, :, :, :] * x[:, None, :, None], axis=2)
    for g in range(G):  # group g: stored columns O + g*S .. O + g*S + S-1
        for s0 in range(0, S, BLOCK_S):
            s = s0 + tl.arange(0, BLOCK_S)
            s_mask = s < S
            w = main_tile(idx_ptr + g * stride_ig, stride_ir, cb_ptr + g * stride_cg, rcb_ptr + g * stride_rg,
                          r, s, j, r < R, s_mask, j < V, V, B1, B2, HAS_RES)  # [BLOCK_R, BLOCK_S, VP]
            x, xb = load_x(x_ptr, stride_xm, m, m_mask, O + g * S + s, s_mask, perm_ptr, scale_ptr, wbias_ptr,
                            xb, HAS_PERM, HAS_NORM)  # [BLOCK_M, BLOCK_S]
            acc += tl.sum(w[None, :, :, :] * x[:, None, :, None], axis=2)
    acc += xb[:, None, None]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + o, mask=o_mask, other=0.0).to(tl.float32)[None, :, :]
    out_ptr = y_ptr + m[:, None, None] * stride_ym + o[None, :, :]  # [BLOCK_M, BLOCK_R, VP]
    tl.store(out_ptr, acc.to(y_ptr.dtype.element_ty), mask=m_mask[:, None, None] & o_mask[None, :, :])


def vq_gemv(x: torch.Tensor, qw: QuantizedWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ W.T + bias`` for a few tokens without materializing W.

    x: ``[..., in]`` with at most ``MAX_TOKENS`` rows once flattened; bias:
    ``[out]`` or None. Returns ``[..., out]`` in ``x.dtype`` (fp32 accumulation).
    """
    if x.shape[-1] != qw.in_features:
        raise ValueError(f"x has {x.shape[-1]} features, the weight {qw.in_features}")
    x2 = x.reshape(-1, qw.in_features).contiguous()  # [M, in]
    m = x2.shape[0]
    if not 1 <= m <= MAX_TOKENS:
        raise ValueError(f"vq_gemv takes 1..{MAX_TOKENS} tokens, got {m}: use the GEMM path")
    check_device(x.device, _vq_gemv_kernel)
    y = torch.empty(m, qw.out_features, dtype=x.dtype, device=x.device)  # [M, out]
    grid = lambda meta: (triton.cdiv(qw.num_rows, meta["BLOCK_R"]),)  # noqa: E731
    _vq_gemv_kernel[grid](x2, x2.stride(0), y, y.stride(0), bias if bias is not None else y,
                          **weight_args(qw), M=m, HAS_BIAS=bias is not None, BLOCK_M=next_pow2(m))
    return y.reshape(*x.shape[:-1], qw.out_features)  # [..., out]
