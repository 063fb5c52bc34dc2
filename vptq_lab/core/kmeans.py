"""Weighted k-means in pure torch: seeded, deterministic, memory-bounded.

The contract (shared with any future backend):

    weighted_kmeans(X[n, d], k, weights[n] | None, seed) -> (centroids[k, d] fp32, labels[n] int64)

Distances are ``||x||^2 - 2 x.c + ||c||^2`` in fp32, computed in chunks of rows
so that one chunk of the ``[rows, k]`` distance matrix stays under
``CHUNK_BYTES`` whatever k is. All randomness comes from a local
``torch.Generator``; sums are accumulated in float64 with ``bincount`` (a
serial, deterministic reduction), so the same inputs give bit-identical outputs.
"""

from __future__ import annotations

import logging
from typing import Literal

import torch

__all__ = ["weighted_kmeans", "nearest", "kmeans_plusplus", "augment_centroids", "nearest_augmented", "CHUNK_BYTES"]

log = logging.getLogger(__name__)

CHUNK_BYTES = 4 * 2**20  # ~4 MB of distances per chunk: bounded memory, and it stays in cache
_PP_SAMPLE_PER_CENTROID = 16  # kmeans++ runs on a weighted subsample of ~16 points per centroid
_PP_MIN_SAMPLE = 16384


def _chunk_rows(k: int, chunk: int | None) -> int:
    return chunk if chunk is not None else max(1, CHUNK_BYTES // (4 * max(k, 1)))


def augment_centroids(C: torch.Tensor) -> torch.Tensor:
    """``[-2c, ||c||^2]`` transposed: C [k, d] -> [d + 1, k], for :func:`nearest_augmented`."""
    return torch.cat([-2.0 * C, (C * C).sum(1, keepdim=True)], 1).T.contiguous()  # [d + 1, k]


def nearest_augmented(X: torch.Tensor, c_aug: torch.Tensor) -> torch.Tensor:
    """Nearest centroid for a small X [m, d] given ``augment_centroids(C)``; one matmul, no chunking.

    ``||x||^2`` does not change the argmin, so the distance row is ``[x, 1] @ [-2c, ||c||^2]^T``.
    """
    x1 = torch.cat([X, X.new_ones(X.shape[0], 1)], 1)  # [m, d + 1]
    return x1.mm(c_aug).argmin(1)  # [m, k] -> [m]


def _assign(X: torch.Tensor, C: torch.Tensor, chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centroid and its squared distance. X [n, d], C [k, d] -> (labels [n], d2 [n])."""
    c_aug = augment_centroids(C)  # [d + 1, k]
    chunks = X.split(_chunk_rows(C.shape[0], chunk))  # [rows, d] each: a [rows, k] distance chunk
    labels = torch.cat([nearest_augmented(x, c_aug) for x in chunks]) if chunks else X.new_zeros(0).long()
    d2 = ((X - C[labels]) ** 2).sum(1)  # [n]
    return labels, d2


def nearest(X: torch.Tensor, C: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """Index of the nearest centroid (Euclidean). X [n, d], C [k, d] -> int64 [n]."""
    return _assign(X.float(), C.float(), chunk)[0]


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
    ``max(16 k, 16384)`` points (sampled with probability ~ w).
    """
    n = X.shape[0]
    m = min(n, max(_PP_SAMPLE_PER_CENTROID * k, _PP_MIN_SAMPLE))
    if m < n:
        probs = weights.double() / weights.sum() + 1e-9 / n  # floor: zero weights stay sampleable
        sub = torch.multinomial(probs.cpu(), m, replacement=False, generator=gen).to(X.device)  # [m]
        X, weights = X[sub], torch.ones(m, dtype=weights.dtype, device=X.device)
    u = torch.rand(k, generator=gen, dtype=torch.float64)  # [k] one uniform per draw
    chosen = [_pick(weights, float(u[0]))]
    d2 = ((X - X[chosen[0]]) ** 2).sum(1)  # [m] distance to the nearest chosen centre
    for i in range(1, k):
        score = weights * d2  # [m]; chosen points (and their duplicates) score 0
        j = _pick(score, float(u[i])) if score.sum() > 0 else _first_unpicked(m, chosen)
        chosen.append(j)
        d2 = torch.minimum(d2, ((X - X[j]) ** 2).sum(1))
    return X[chosen].clone()  # [k, d]


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
    labels, d2 = _assign(X, C, chunk)
    for _ in range(iters):
        C = _update(X, w, labels, d2, C)
        new_labels, d2 = _assign(X, C, chunk)
        if torch.equal(new_labels, labels):
            break
        labels = new_labels
    return C, labels
