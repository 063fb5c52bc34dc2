"""Weighted k-means: determinism, weights, chunking, empty clusters, errors."""

from __future__ import annotations

import pytest
import torch

from vptq_lab.core.kmeans import nearest, weighted_kmeans

pytestmark = pytest.mark.usefixtures("one_thread")


def _blobs(n_per: int = 200, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    X = centres.repeat_interleave(n_per, 0) + 0.1 * torch.randn(4 * n_per, 2, generator=g)
    return X, centres


@pytest.mark.parametrize("init", ["kmeans++", "random"])
def test_same_seed_bit_identical_and_global_rng_untouched(init: str) -> None:
    X = torch.randn(3000, 6, generator=torch.Generator().manual_seed(1))
    w = torch.rand(3000, generator=torch.Generator().manual_seed(2))
    state = torch.random.get_rng_state()
    C1, l1 = weighted_kmeans(X, 64, w, seed=5, iters=5, init=init)
    C2, l2 = weighted_kmeans(X, 64, w, seed=5, iters=5, init=init)
    assert torch.equal(C1, C2) and torch.equal(l1, l2)
    assert torch.equal(state, torch.random.get_rng_state())
    C3, _ = weighted_kmeans(X, 64, w, seed=6, iters=5, init=init)
    assert not torch.equal(C1, C3)
    assert C1.dtype == torch.float32 and l1.dtype == torch.int64 and C1.shape == (64, 6)


def test_finds_separated_blobs_and_labels_are_nearest() -> None:
    X, centres = _blobs()
    C, labels = weighted_kmeans(X, 4, seed=0, iters=20)
    order = torch.cdist(centres, C).argmin(1)  # each true centre -> its found centroid
    assert torch.allclose(C[order], centres, atol=0.05)
    assert torch.equal(labels, torch.cdist(X, C).argmin(1))


def test_chunking_does_not_change_the_result() -> None:
    X = torch.randn(1000, 4, generator=torch.Generator().manual_seed(3))
    a = weighted_kmeans(X, 16, seed=0, iters=5, chunk=7)
    b = weighted_kmeans(X, 16, seed=0, iters=5)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    C = torch.randn(16, 4)
    assert torch.equal(nearest(X, C, chunk=33), torch.cdist(X, C).argmin(1))


def test_weights_pull_the_centroid() -> None:
    X = torch.tensor([[0.0], [1.0], [10.0]])
    w = torch.tensor([1.0, 3.0, 1.0])
    C, labels = weighted_kmeans(X, 2, w, seed=0, iters=10)
    c01 = C[labels[0]]
    assert labels[0] == labels[1] != labels[2]
    assert c01.item() == pytest.approx(0.75)  # weighted mean (0*1 + 1*3) / 4, not 0.5


def test_duplicates_and_empty_clusters_are_handled() -> None:
    X = torch.cat([torch.zeros(50, 3), torch.ones(50, 3), torch.tensor([[5.0, 5, 5]])])
    C, labels = weighted_kmeans(X, 8, seed=0, iters=5, init="random")
    assert torch.isfinite(C).all()
    assert torch.equal(labels, nearest(X, C))
    assert ((X - C[labels]) ** 2).sum() == 0  # the three distinct points are all represented


def test_more_centroids_than_vectors_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"more centroids than vectors: k=8, n=5"):
        weighted_kmeans(torch.randn(5, 2), 8)
    with pytest.raises(ValueError, match="weights"):
        weighted_kmeans(torch.randn(5, 2), 2, torch.ones(4))
