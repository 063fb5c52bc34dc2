"""Weighted k-means in pure torch: seeded, deterministic, memory-bounded.

The contract (shared with any future backend):

    weighted_kmeans(X[n, d], k, weights[n] | None, seed) -> (centroids[k, d] fp32, labels[n] int64)

Distances are ``||c||^2 - 2 x.c`` (``||x||^2`` does not change the argmin), one matmul of ``[x, 1]`` per chunk of
rows, the chunk sized so that its ``[rows, k]`` distances stay in a core's cache (``CHUNK_BYTES``) whatever k is. On the
CPU the argmin of each row runs in numpy, whose reduction is about ten times faster than torch's for rows of a few
hundred (both return the first minimum). All randomness comes from a local ``torch.Generator``; sums are
accumulated in float64 with ``bincount`` (a serial, deterministic reduction), so the same inputs give
bit-identical outputs.
"""

from __future__ import annotations

import logging
from typing import Literal, NamedTuple

import numpy as np
import torch

__all__ = [
    "weighted_kmeans",
    "nearest",
    "kmeans_plusplus",
    "Codebook",
    "codebook",
    "with_ones",
    "nearest_in",
    "CHUNK_BYTES",
]

log = logging.getLogger(__name__)

CHUNK_BYTES = 2**20  # ~1 MB of distances per chunk: bounded memory, and it stays in a core's cache
_PP_SAMPLE_PER_CENTROID = 16  # kmeans++ runs on a weighted subsample of ~16 points per centroid
_PP_MIN_SAMPLE = 16384


def _chunk_rows(k: int, chunk: int | None) -> int:
    return chunk if chunk is not None else max(1, CHUNK_BYTES // (4 * max(k, 1)))


class Codebook(NamedTuple):
    """A codebook C [k, d] in the form the nearest-centroid search uses: ``aug`` = ``[-2c, ||c||^2]`` transposed,
    [d + 1, k], so that a distance row (up to ``||x||^2``, which does not change the argmin) is ``[x, 1] @ aug``."""

    C: torch.Tensor
    aug: torch.Tensor


def codebook(C: torch.Tensor) -> Codebook:
    """C [k, d] fp32 -> :class:`Codebook`, computed once for many searches."""
    C = C.float()
    return Codebook(C, torch.cat([-2.0 * C, (C * C).sum(1, keepdim=True)], 1).T.contiguous())


def with_ones(X: torch.Tensor) -> torch.Tensor:
    """``[X, 1]``: rows X [n, d] -> [n, d + 1], what :func:`nearest_in` multiplies with ``Codebook.aug``."""
    return torch.cat([X, X.new_ones(X.shape[0], 1)], 1)


def _argmin_rows(D: torch.Tensor) -> torch.Tensor:
    """Index of the first minimum of each row of D [m, k] -> int64 [m]."""
    if D.device.type == "cpu" and D.dtype == torch.float32:
        return torch.from_numpy(D.detach().numpy().argmin(1).astype(np.int64, copy=False))
    return D.argmin(1)


def nearest_in(
    X: torch.Tensor, cb: Codebook, chunk: int | None = None, buf: torch.Tensor | None = None, ones: bool = False
) -> torch.Tensor:
    """Nearest centroid of ``cb`` for each row of X [n, d] fp32 (``ones=True``: X is :func:`with_ones` already,
    [n, d + 1]) -> int64 [n], in chunks of rows. ``buf``: float32 scratch for one chunk's distances, reused across
    calls (``CHUNK_BYTES // 4`` elements hold a default chunk); a new one is made when it is missing or too small."""
    n, k = X.shape[0], cb.aug.shape[1]
    rows = min(n, _chunk_rows(k, chunk))
    if buf is None or buf.numel() < rows * k:
        buf = torch.empty(rows * k, dtype=torch.float32, device=X.device)
    dist = buf.view(-1)[: rows * k].view(rows, k)  # one chunk's distances
    out = torch.empty(n, dtype=torch.int64, device=X.device)
    for start in range(0, n, rows):
        x = X[start : start + rows]  # [rows, d (+ 1)]
        x1 = x if ones else with_ones(x)
        out[start : start + x.shape[0]] = _argmin_rows(torch.mm(x1, cb.aug, out=dist[: x.shape[0]]))  # [rows, k]
    return out


def _assign(
    X: torch.Tensor, C: torch.Tensor, chunk: int | None = None, X1: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centroid and its squared distance. X [n, d], C [k, d] -> (labels [n], d2 [n]). ``X1``:
    ``with_ones(X)``, when the caller has it."""
    labels = nearest_in(X if X1 is None else X1, codebook(C), chunk, ones=X1 is not None)  # [n]
    d2 = ((X - C[labels]) ** 2).sum(1)  # [n]
    return labels, d2


def nearest(X: torch.Tensor, C: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """Index of the nearest centroid (Euclidean). X [n, d], C [k, d] -> int64 [n]."""
    return nearest_in(X.float(), codebook(C), chunk)


def _check_inputs(X: torch.Tensor, k: int, weights: torch.Tensor | None) -> torch.Tensor:
    if X.dim() != 2:
        raise ValueError(f"X must be [n, d], got shape {tuple(X.shape)}")
    n = X.shape[0]
    if k < 1:
        raise ValueError(f"k={k} must be >= 1")
    if k > n:
        raise ValueError(f"more centroids than vectors: k={k}, n={n}; lower num_centroids")
    if weights is None:
        return torch.ones(n, dtype=torch.float32, device=X.device)
    if weights.shape != (n,):
        raise ValueError(f"weights must have shape ({n},) to match X, got {tuple(weights.shape)}")
    w = weights.float()
    if not torch.isfinite(w).all() or (w < 0).any():
        raise ValueError("weights must be finite and non-negative")
    return w if w.sum() > 0 else torch.ones_like(w)  # all-zero weights: fall back to plain k-means


def _pick(scores: torch.Tensor, u: float) -> int:
    """Sample an index with probability proportional to ``scores`` [m], given a uniform ``u``."""
    cs = torch.cumsum(scores.double(), 0)  # [m]
    return int(torch.searchsorted(cs, u * cs[-1], right=True).clamp_max(scores.shape[0] - 1))


def kmeans_plusplus(X: torch.Tensor, k: int, weights: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Weighted kmeans++ seeding (probability ~ w * D^2). X [n, d] fp32 -> C [k, d].

    To bound time, it runs on a weighted subsample of at most
    ``max(16 k, 16384)`` points (sampled with probability ~ w). Each draw updates the distances to the nearest
    chosen centre in preallocated buffers, and the sampling reads host numbers rather than making tensors of them.
    """
    n = X.shape[0]
    m = min(n, max(_PP_SAMPLE_PER_CENTROID * k, _PP_MIN_SAMPLE))
    if m < n:
        probs = weights.double() / weights.sum() + 1e-9 / n  # floor: zero weights stay sampleable
        sub = torch.multinomial(probs.cpu(), m, replacement=False, generator=gen).to(X.device)  # [m]
        X, weights = X[sub], torch.ones(m, dtype=weights.dtype, device=X.device)
    u = torch.rand(k, generator=gen, dtype=torch.float64).tolist()  # one uniform per draw
    chosen = [_pick(weights, u[0])]
    diff = torch.empty_like(X)  # [m, d]
    d2 = torch.empty(X.shape[0], dtype=X.dtype, device=X.device)  # [m] squared distance to the nearest chosen centre
    _distance_to(X, chosen[0], diff, out=d2)
    new, score = torch.empty_like(d2), torch.empty_like(d2)  # [m] each
    cumulative = torch.empty(m, dtype=torch.float64, device=X.device)  # [m]
    for i in range(1, k):
        torch.mul(weights, d2, out=score)  # chosen points (and their duplicates) score 0
        torch.cumsum(score, 0, dtype=torch.float64, out=cumulative)
        total = float(cumulative[-1])
        j = _search_right(cumulative, u[i] * total) if total > 0 else _first_unpicked(m, chosen)
        chosen.append(j)
        torch.minimum(d2, _distance_to(X, j, diff, out=new), out=d2)
    return X[chosen].clone()  # [k, d]


def _search_right(cumulative: torch.Tensor, value: float) -> int:
    """The first index whose cumulative sum exceeds ``value`` (the last index at most), as
    ``torch.searchsorted(..., right=True)``; on the CPU through numpy, with no tensor made for one number."""
    if cumulative.device.type == "cpu":
        found = int(np.searchsorted(cumulative.numpy(), value, side="right"))
    else:
        found = int(torch.searchsorted(cumulative, torch.tensor([value], device=cumulative.device), right=True))
    return min(found, cumulative.shape[0] - 1)


def _distance_to(X: torch.Tensor, j: int, diff: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Squared distances of the rows of X [m, d] to row j, ``((X - X[j]) ** 2).sum(1)``, into ``out`` [m] (``diff``:
    [m, d] scratch)."""
    torch.sub(X, X[j], out=diff).pow_(2)
    return torch.sum(diff, 1, out=out)


def _first_unpicked(m: int, chosen: list[int]) -> int:
    taken = set(chosen)
    return next(i for i in range(m) if i not in taken)


def _update(X: torch.Tensor, w: torch.Tensor, labels: torch.Tensor, d2: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """Weighted means per cluster; empty clusters take the points of largest weighted error."""
    k, d = C.shape
    wsum = torch.bincount(labels, weights=w.double(), minlength=k)  # [k]
    count = torch.bincount(labels, minlength=k)  # [k]
    sums = torch.stack(
        [torch.bincount(labels, weights=(X[:, j] * w).double(), minlength=k) for j in range(d)], 1
    )  # [k, d]
    plain = torch.stack(
        [torch.bincount(labels, weights=X[:, j].double(), minlength=k) for j in range(d)], 1
    )  # [k, d] unweighted sums, for zero-weight clusters
    new = torch.where(
        (wsum > 0).unsqueeze(1), sums / wsum.clamp_min(1e-300).unsqueeze(1), plain / count.clamp_min(1).unsqueeze(1)
    ).float()  # [k, d]
    empty = (count == 0).nonzero().flatten()  # [e]
    if empty.numel():
        order = torch.sort(w * d2, descending=True, stable=True).indices  # [n]
        new[empty] = X[order[: empty.numel()]]
        log.debug("k-means: re-seeded %d empty clusters", empty.numel())
    return new


def weighted_kmeans(
    X: torch.Tensor,
    k: int,
    weights: torch.Tensor | None = None,
    seed: int = 0,
    iters: int = 10,
    init: Literal["kmeans++", "random"] = "kmeans++",
    chunk: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted Lloyd k-means minimising ``sum_i w_i ||x_i - c_{l_i}||^2``.

    X: [n, d]; weights: [n] non-negative (None = all ones). Returns
    ``(centroids [k, d] fp32, labels [n] int64)``, labels being the nearest
    centroid under the returned centroids. Stops early when labels settle.
    """
    w = _check_inputs(X, k, weights)
    X = X.float()
    gen = torch.Generator().manual_seed(seed)  # on the CPU whatever X's device: the same draws on a GPU
    if init == "kmeans++":
        C = kmeans_plusplus(X, k, w, gen)
    elif init == "random":
        C = X[torch.randperm(X.shape[0], generator=gen)[:k].to(X.device)].clone()  # [k, d]
    else:
        raise ValueError(f"init={init!r} must be 'kmeans++' or 'random'")
    X1 = with_ones(X)  # [n, d + 1], once for every search
    labels, d2 = _assign(X, C, chunk, X1)
    for _ in range(iters):
        C = _update(X, w, labels, d2, C)
        new_labels, d2 = _assign(X, C, chunk, X1)
        if torch.equal(new_labels, labels):
            break
        labels = new_labels
    return C, labels
