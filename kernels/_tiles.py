"""Jitted building blocks shared by the dequant, GEMV and GEMM kernels.

A *tile* is the fp32 weight block ``[BLOCK_R, BLOCK_S, VP]``: ``BLOCK_R``
vector rows (output rows ``r*V .. r*V+V-1``), ``BLOCK_S`` stored columns, and
the ``V`` entries of each code vector padded to ``VP = next_pow2(V)`` (masked).
Each code is decoded once per tile element ``(r, s)`` and its whole vector is
gathered with one contiguous load, which is what makes the GEMV cheap.

This module imports triton: import it only through the kernel modules.
"""

import triton
import triton.language as tl


@triton.jit
def main_tile(
    # packed merged codes of one group, [R, W] int32 with row stride stride_ir
    idx_ptr, stride_ir,
    # codebooks of the same group, [k1 * V] and [k2 * V]
    cb_ptr, rcb_ptr,
    # tile coordinates: vector rows r [BLOCK_R], columns s [BLOCK_S], vector entries j [VP]
    r, s, j, r_mask, s_mask, j_mask,
    # code layout
    V: tl.constexpr, B1: tl.constexpr, B2: tl.constexpr, HAS_RES: tl.constexpr,
):
    """fp32 [BLOCK_R, BLOCK_S, VP]: codebook vectors (+ residual) of the codes at (r, s)."""
    # Code s of a row occupies stream bits [s*B, s*B + B), LSB first; it may
    # straddle two 32-bit words when s*B % 32 + B > 32.
    bit = s * (B1 + B2)  # [BLOCK_S]
    off = bit & 31
    rs_mask = r_mask[:, None] & s_mask[None, :]  # [BLOCK_R, BLOCK_S]
    word_ptr = idx_ptr + r[:, None] * stride_ir + (bit >> 5)[None, :]  # [BLOCK_R, BLOCK_S]
    lo = tl.load(word_ptr, mask=rs_mask, other=0).to(tl.uint32)
    straddle = (off + (B1 + B2)) > 32  # [BLOCK_S]
    hi = tl.load(word_ptr + 1, mask=rs_mask & straddle[None, :], other=0).to(tl.uint32)
    shift = off.to(tl.uint32)[None, :]  # [1, BLOCK_S]
    # (hi << 1) << (31 - off) is hi << (32 - off) without a 32-bit shift when off == 0.
    code = (lo >> shift) | ((hi << 1) << (31 - shift))  # [BLOCK_R, BLOCK_S], bits above B are junk
    idx = (code & ((1 << B1) - 1)).to(tl.int32)
    mask = rs_mask[:, :, None] & j_mask[None, None, :]  # [BLOCK_R, BLOCK_S, VP]
    w = tl.load(cb_ptr + idx[:, :, None] * V + j[None, None, :], mask=mask, other=0.0).to(tl.float32)
    if HAS_RES:
        ridx = ((code >> B1) & ((1 << B2) - 1)).to(tl.int32)
        w += tl.load(rcb_ptr + ridx[:, :, None] * V + j[None, None, :], mask=mask, other=0.0).to(tl.float32)
    return w


@triton.jit
def outlier_tile(
    # outlier codes [R0, O] (uint16 bits in int16, not packed) and codebook [k0 * V0]
    oidx_ptr, stride_or, ocb_ptr,
    # tile coordinates: output rows o [BLOCK_R, VP] (laid out like the main tile), columns s [BLOCK_S]
    o, s, o_mask, s_mask,
    V0: tl.constexpr,
):
    """fp32 [BLOCK_R, BLOCK_S, VP]: outlier weights at output rows o and outlier columns s.

    Outlier vectors have their own length V0, so each element finds its code
    row ``o // V0`` and entry ``o % V0`` separately; there are few outlier columns.
    """
    mask = o_mask[:, None, :] & s_mask[None, :, None]  # [BLOCK_R, BLOCK_S, VP]
    code_ptr = oidx_ptr + (o // V0)[:, None, :] * stride_or + s[None, :, None]
    code = tl.load(code_ptr, mask=mask, other=0).to(tl.int32) & 0xFFFF
    return tl.load(ocb_ptr + code * V0 + (o % V0)[:, None, :], mask=mask, other=0.0).to(tl.float32)


def next_pow2(n: int) -> int:
    """Smallest power of two >= n."""
    return 1 << max(n - 1, 0).bit_length()


def weight_args(qw) -> dict:
    """Pointers, strides and meta-parameters of ``qw`` shared by every kernel.

    Absent tensors are replaced by the centroids (never read: the matching
    HAS_* flag is off) so every launch has the same signature.
    """
    b1, b2 = qw.index_bits
    dummy = qw.centroids
    has_out = qw.outlier_size > 0
    oidx = qw.outlier_indices[0] if has_out else dummy  # [R0, O]
    return dict(
        idx_ptr=qw.indices, stride_ig=qw.indices.stride(0), stride_ir=qw.indices.stride(1),
        cb_ptr=qw.centroids, stride_cg=qw.centroids.stride(0),
        rcb_ptr=qw.res_centroids if b2 else dummy, stride_rg=qw.res_centroids.stride(0) if b2 else 0,
        oidx_ptr=oidx, stride_or=oidx.stride(0) if has_out else 0,
        ocb_ptr=qw.outlier_centroids if has_out else dummy,
        perm_ptr=qw.perm if qw.perm is not None else dummy,
        scale_ptr=qw.weight_scale if qw.weight_scale is not None else dummy,
        wbias_ptr=qw.weight_bias if qw.weight_scale is not None else dummy,
        OUT=qw.out_features, R=qw.num_rows, S=qw.group_size, G=qw.group_num, O=qw.outlier_size,
        V=qw.vector_len, VP=next_pow2(qw.vector_len), B1=b1, B2=b2, V0=max(qw.outlier_vector_len, 1),
        HAS_RES=bool(b2), HAS_PERM=qw.perm is not None, HAS_NORM=qw.weight_scale is not None,
    )


@triton.jit
def load_x(
    x_ptr, stride_xm, m, m_mask,
    # stored columns col [BLOCK_S] and their mask
    col, s_mask,
    perm_ptr, scale_ptr, wbias_ptr,
    # running sum_i x[i] * wbias[i], [BLOCK_M]
    xb,
    HAS_PERM: tl.constexpr, HAS_NORM: tl.constexpr,
):
    """x at stored columns col, times weight_scale: fp32 [BLOCK_M, BLOCK_S]; and the updated xb."""
    if HAS_PERM:
        col = tl.load(perm_ptr + col, mask=s_mask, other=0).to(tl.int32) & 0xFFFF
    mask = m_mask[:, None] & s_mask[None, :]
    x = tl.load(x_ptr + m[:, None] * stride_xm + col[None, :], mask=mask, other=0.0).to(tl.float32)
    if HAS_NORM:
        wbias = tl.load(wbias_ptr + col, mask=s_mask, other=0.0).to(tl.float32)
        xb += tl.sum(x * wbias[None, :], axis=1)
        x = x * tl.load(scale_ptr + col, mask=s_mask, other=0.0).to(tl.float32)[None, :]
    return x, xb
