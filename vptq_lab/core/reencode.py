"""Re-encoding: new codes for a quantized weight that bring it closer to a target weight, codebooks fixed.

This is the discrete half of PV-tuning (Malinovskii et al., 2024): end-to-end training moves a continuous copy of
each weight (the straight-through target), and the codes follow it. For every vector of the layer the nearest
main code is chosen against the target less the vector's residual, then the nearest residual code against what
the new main code leaves (one alternating pass; outlier vectors have a single code). Only vectors whose squared
error to the target falls take a new code, and at most ``max_fraction`` of a part's vectors, those that gain most:
a trust region, so that a noisy target cannot rewrite the whole layer at once. To keep this cheap, only the
vectors with the largest error to the target (8 per vector allowed to change) are searched: a vector cannot gain
more than its error.

The error is measured where the weight is used: per original column, times ``weight_scale**2`` when the layer
normalises its columns, and never on the padding rows of a last partial vector row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vptq_lab.core.kmeans import nearest
from vptq_lab.core.qweight import QuantizedWeight

__all__ = ["ReencodeResult", "reencode"]

_SEARCHED = 8  # vectors searched per vector allowed to change: those with the largest error (see _encode_part)


@dataclass
class ReencodeResult:
    idx: torch.Tensor  # int64 [G, R, S]: main codes
    res_idx: torch.Tensor | None  # int64 [G, R, S]: residual codes, or None
    outlier_idx: torch.Tensor | None  # int64 [1, R0, O]: outlier codes, or None
    changed: int  # vectors (main and outlier) whose code changed
    vectors: int  # vectors in all
    error_before: float  # weighted squared error to the target, summed, with the old codes
    error_after: float  # the same with the new codes


def reencode(
    qw: QuantizedWeight, codes: tuple[torch.Tensor, torch.Tensor | None], target: torch.Tensor, max_fraction: float
) -> ReencodeResult:
    """New codes for ``qw`` (its codebooks, perm and column norm as they are) towards ``target`` [out, in] fp32 in
    the original column order. ``codes``: ``qw.codes()`` (the current main and residual codes, [G, R, S] each).
    At most ``max_fraction`` (in (0, 1]) of the main vectors, and of the outlier vectors, change code."""
    if not 0.0 < max_fraction <= 1.0:
        raise ValueError(f"max_fraction={max_fraction} must be in (0, 1]")
    if tuple(target.shape) != (qw.out_features, qw.in_features):
        raise ValueError(f"target has shape {tuple(target.shape)}; the layer is [{qw.out_features}, {qw.in_features}]")
    t = target.detach().float()  # [out, in]
    col_weight = torch.ones(qw.in_features, dtype=torch.float32, device=t.device)  # [in]
    if qw.weight_scale is not None:
        scale = qw.weight_scale.float()  # [in]
        safe = torch.where(scale.abs() > 1e-12, scale, torch.ones_like(scale))
        t = (t - qw.weight_bias.float()) / safe  # the stored (normalised) weight the codes encode
        col_weight = scale.square()
    if qw.perm is not None:
        perm = qw.perm.to(torch.int64) & 0xFFFF  # [in]: stored column j is original column perm[j]
        t, col_weight = t[:, perm], col_weight[perm]
    o = qw.outlier_size
    idx, res_idx = codes
    main = _encode_part(
        t[:, o:],
        col_weight[o:],
        qw.centroids,
        qw.res_centroids if res_idx is not None else None,
        idx,
        res_idx,
        qw.vector_len,
        max_fraction,
    )
    out_idx, before, after, changed, vectors = None, main[2], main[3], main[4], idx.numel()
    if o:
        oidx = qw.outlier_indices.to(torch.int64) & 0xFFFF  # [1, R0, O]
        part = _encode_part(
            t[:, :o], col_weight[:o], qw.outlier_centroids, None, oidx, None, qw.outlier_vector_len, max_fraction
        )
        out_idx = part[0]
        before, after, changed, vectors = before + part[2], after + part[3], changed + part[4], vectors + oidx.numel()
    return ReencodeResult(main[0], main[1], out_idx, changed, vectors, before, after)


def _vectors(t: torch.Tensor, col_weight: torch.Tensor, groups: int, v: int) -> tuple:
    """Target columns [out, G*S] as vectors [G, R*S, v] in the codes' order, their validity mask (0 on padding
    rows) and their column weights [G, R*S]."""
    out, cols = t.shape
    s = cols // groups
    r = -(-out // v)
    pad = r * v - out
    mask = torch.ones(out, cols, dtype=t.dtype, device=t.device)
    if pad:
        t = torch.nn.functional.pad(t, (0, 0, 0, pad))  # [R*v, G*S]
        mask = torch.nn.functional.pad(mask, (0, 0, 0, pad))
    as_vec = lambda x: x.reshape(r, v, groups, s).permute(2, 0, 3, 1).reshape(groups, r * s, v)  # noqa: E731
    weight = col_weight.reshape(groups, 1, s).expand(groups, r, s).reshape(groups, r * s)
    return as_vec(t), as_vec(mask), weight


def _nearest(x: torch.Tensor, m: torch.Tensor, cb: torch.Tensor) -> torch.Tensor:
    """Index of the nearest codeword of ``cb`` [k, v] to each row of ``x`` [n, v], counting only the dimensions
    where the mask ``m`` [n, v] is 1 (ties: the lowest index)."""
    best = torch.empty(x.shape[0], dtype=torch.int64, device=x.device)
    full = m.all(dim=1)  # [n]: vectors with no padding, the common case
    best[full] = nearest(x[full], cb)
    part = (~full).nonzero().squeeze(1)  # the padded last vector row: masked distances
    if part.numel():
        dist = m[part] @ cb.square().T - 2.0 * ((x[part] * m[part]) @ cb.T)  # [p, k]
        best[part] = dist.argmin(dim=1)
    return best


def _encode_part(t, col_weight, codebook, res_codebook, idx, res_idx, v: int, max_fraction: float) -> tuple:
    """One part (the grouped main columns, or the outlier columns as one group): ``(idx, res_idx, error before,
    error after, changed)``.

    Only the ``_SEARCHED`` x budget vectors with the largest weighted error are searched: a vector cannot gain more
    than its error, so the others could only displace these where the search of these gains little."""
    g, r, s = idx.shape
    x, m, w = _vectors(t, col_weight, g, v)  # [G, N, v], [G, N, v], [G, N] with N = R*S
    cb = codebook.float().reshape(g, -1, v)  # [G, k1, v]
    rcb = None if res_codebook is None else res_codebook.float().reshape(g, -1, v)  # [G, k2, v]
    old = idx.reshape(g, r * s)
    old_res = None if res_idx is None else res_idx.reshape(g, r * s)
    rec_res = torch.zeros_like(x) if rcb is None else torch.stack([rcb[i][old_res[i]] for i in range(g)])
    rec_old = torch.stack([cb[i][old[i]] for i in range(g)]) + rec_res  # [G, N, v]
    err_old = ((x - rec_old).square() * m).sum(2)  # [G, N]
    budget = int(max_fraction * err_old.numel())
    flat_err = (err_old * w).reshape(-1)
    searched = torch.sort(flat_err, descending=True, stable=True).indices[: min(flat_err.numel(), _SEARCHED * budget)]
    new, new_res = old.clone(), None if old_res is None else old_res.clone()
    err_new = err_old.clone()
    group_of, pos_of = searched // (r * s), searched % (r * s)
    for gi in range(g):
        pos = pos_of[group_of == gi]  # this group's searched vectors
        if not pos.numel():
            continue
        xs, ms = x[gi, pos], m[gi, pos]  # [p, v]
        cand = _nearest(xs - rec_res[gi, pos], ms, cb[gi])
        rec = cb[gi][cand]  # [p, v]
        if rcb is not None:
            cand_res = _nearest(xs - rec, ms, rcb[gi])
            rec = rec + rcb[gi][cand_res]
            new_res[gi, pos] = cand_res
        new[gi, pos] = cand
        err_new[gi, pos] = ((xs - rec).square() * ms).sum(1)
    gain = ((err_old - err_new) * w).reshape(-1)  # [G*N]; 0 where not searched
    moved = (new != old).reshape(-1)
    if old_res is not None:
        moved |= (new_res != old_res).reshape(-1)
    gain = torch.where(moved & (gain > 0), gain, torch.zeros_like(gain))
    order = torch.sort(gain, descending=True, stable=True).indices  # ties: the earlier vector first
    keep = torch.zeros_like(moved)
    top = order[:budget]
    keep[top] = gain[top] > 0
    keep = keep.reshape(g, r * s)
    idx_out = torch.where(keep, new, old).reshape(g, r, s)
    res_out = None if old_res is None else torch.where(keep, new_res, old_res).reshape(g, r, s)
    before = float((err_old * w).sum())
    after = float((torch.where(keep, err_new, err_old) * w).sum())
    return idx_out, res_out, before, after, int(keep.sum())
