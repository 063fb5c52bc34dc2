"""Codebooks shared by the linears of a block: one weighted k-means over all their vectors, the official layout."""

from __future__ import annotations

import pytest
import torch

from vptq_lab import VPTQConfig, load_quantized, quantize_, save_quantized, vptq_quantize
from vptq_lab.core.quantizer import shared_codebooks
from vptq_lab.lab.budget import shapes_of, vptq_model_bits
from vptq_lab.model.layers import QuantizedLinear
from vptq_lab.testing import tiny_llama

SHARED = VPTQConfig(vector_lens=(-1, 4), num_centroids=(-1, 32), kmeans_iters=3, codebook_scope="per-block")


def _layer(out: int, n_in: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(512, n_in, generator=gen) * torch.rand(n_in, generator=gen)  # [tokens, in], uneven columns
    return torch.randn(out, n_in, generator=gen), X.T @ X / X.shape[0]  # W [out, in], H [in, in]


def test_layers_quantized_against_one_shared_codebook():
    layers = [_layer(24, 32, 0), _layer(40, 64, 1)]
    (C,) = shared_codebooks(layers, SHARED)  # one part: no outliers, one group
    assert C.shape == (32, 4) and torch.equal(C, C.half().float())  # stored values, fp16
    owns = [vptq_quantize(W, H, SHARED.replace(codebook_scope="per-linear")) for W, H in layers]
    for (W, H), own, theirs in zip(layers, owns, owns[::-1]):
        qw = vptq_quantize(W, H, SHARED, codebooks=[C])
        assert torch.equal(qw.centroids.float().reshape(32, 4), C)
        other = vptq_quantize(W, H, SHARED, codebooks=[theirs.centroids.float().reshape(32, 4)])
        # Sharing costs some accuracy: the layer's own codebook is as good or better (up to k-means' noise, 1%);
        # not all: the shared one, fitted on this layer's vectors too, beats the other layer's own codebook.
        shared = qw.info["proxy_loss_rel"]
        assert own.info["proxy_loss_rel"] <= shared * 1.01 and shared < other.info["proxy_loss_rel"]
    with pytest.raises(ValueError, match="do not fit this layer's parts"):
        vptq_quantize(*layers[0], SHARED, codebooks=[C[:16]])


def test_a_residual_codebook_cannot_be_shared():
    with pytest.raises(ValueError, match="residual codebook is trained per linear"):
        SHARED.replace(num_res_centroids=(-1, 16))


@pytest.mark.parametrize("propagation", ["quantized", "full_precision"])
def test_whole_model_per_block_sharing_round_trips_and_counts_its_bits(propagation, tmp_path):
    model = tiny_llama(vocab_size=128, hidden=64, layers=2, seed=1)
    shapes = shapes_of(model)
    calib = torch.randint(0, 128, (4, 32), generator=torch.Generator().manual_seed(0))
    report = quantize_(model, SHARED.replace(propagation=propagation), calib, progress=False)
    assert report.propagation == propagation
    blocks = model.model.layers
    books = [[m.centroids for m in b.modules() if isinstance(m, QuantizedLinear)] for b in blocks]
    assert all(torch.equal(c, books[i][0]) for i in range(2) for c in books[i])  # one codebook per block
    assert not torch.equal(books[0][0], books[1][0])  # and each block its own
    # Two figures: codebooks counted once per block (the report) and as stored (one copy per layer).
    counted_once = vptq_model_bits(SHARED, shapes, scope="per-block").bits_per_weight
    assert report.total_bits_per_weight() == pytest.approx(counted_once, rel=1e-9)
    per_linear = vptq_model_bits(SHARED, shapes, scope="per-linear").bits_per_weight
    assert report.total_bits_per_weight() < per_linear <= report.total_bits_per_weight(stored=True)
    folder = save_quantized(model, None, tmp_path / "q", dtype=torch.float32)
    ids = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(load_quantized(folder)[0](ids).logits, model(ids).logits)
