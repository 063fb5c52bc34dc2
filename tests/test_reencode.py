"""Re-encoding (PV-tuning's code step): codes chosen towards a target weight, codebooks fixed."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from vptq_lab import VPTQConfig, dequantize, vptq_quantize
from vptq_lab.core.packing import as_int16_bits, merge_codes, pack_codes
from vptq_lab.core.reencode import reencode


def _layer(norm: bool, residual: bool, out: int = 23):
    """A quantized [out, 40] layer with outliers, perm and two groups; out=23 leaves a partial last vector row."""
    gen = torch.Generator().manual_seed(1)
    W, X = torch.randn(out, 40, generator=gen), torch.randn(200, 40, generator=gen)
    cfg = VPTQConfig(
        vector_lens=(3, 4),
        num_centroids=(8, 16),
        num_res_centroids=(-1, 8 if residual else -1),
        npercent=10.0,
        group_num=2,
        enable_norm=norm,
        kmeans_iters=3,
    )
    return vptq_quantize(W, X.T @ X / 200, cfg), W


def _with_codes(qw, idx, res_idx, outlier_idx):
    b1, b2 = qw.index_bits
    return replace(
        qw,
        indices=pack_codes(merge_codes(idx, res_idx, b1), b1 + b2),
        outlier_indices=as_int16_bits(outlier_idx) if outlier_idx is not None else None,
    )


@pytest.mark.parametrize("norm,residual", [(False, False), (False, True), (True, True)])
def test_reported_errors_are_the_squared_errors_of_the_dequantized_weights(norm, residual):
    qw, W = _layer(norm, residual)
    target = W + 0.3 * torch.randn(W.shape, generator=torch.Generator().manual_seed(2))
    found = reencode(qw, qw.codes(), target, max_fraction=1.0)
    new = _with_codes(qw, found.idx, found.res_idx, found.outlier_idx)
    before = float((dequantize(qw) - target).square().sum())
    after = float((dequantize(new) - target).square().sum())
    assert found.error_before == pytest.approx(before, rel=1e-4)
    assert found.error_after == pytest.approx(after, rel=1e-4)
    assert found.changed > 0 and after < before  # the target moved: codes follow it, and the error falls


def test_the_weight_itself_as_target_changes_nothing():
    qw, _ = _layer(norm=True, residual=True)
    found = reencode(qw, qw.codes(), dequantize(qw), max_fraction=1.0)
    assert found.changed == 0
    assert torch.equal(found.idx, qw.codes()[0]) and torch.equal(found.res_idx, qw.codes()[1])
    assert found.error_after == pytest.approx(0.0, abs=1e-6)


def test_codes_of_another_point_of_the_grid_are_found_again():
    """Without a residual the nearest code is the exact one: a target made of other codes is recovered."""
    qw, _ = _layer(norm=False, residual=False)
    idx, _ = qw.codes()
    gen = torch.Generator().manual_seed(3)
    other = torch.randint(0, qw.num_centroids, idx.shape, generator=gen)
    oidx = torch.randint(0, qw.outlier_num_centroids, qw.outlier_indices.shape, generator=gen)
    target = dequantize(_with_codes(qw, other, None, oidx))
    found = reencode(qw, qw.codes(), target, max_fraction=1.0)
    assert found.error_after == pytest.approx(0.0, abs=1e-5)
    assert torch.equal(dequantize(_with_codes(qw, found.idx, None, found.outlier_idx)), target)


def test_at_most_the_given_fraction_of_vectors_changes_and_those_gain_most():
    qw, W = _layer(norm=False, residual=True)
    target = W + torch.randn(W.shape, generator=torch.Generator().manual_seed(4))
    full = reencode(qw, qw.codes(), target, max_fraction=1.0)
    part = reencode(qw, qw.codes(), target, max_fraction=0.1)
    idx = qw.codes()[0]
    main_vectors, outlier_vectors = idx.numel(), qw.outlier_indices.numel()
    assert part.changed <= int(0.1 * main_vectors) + int(0.1 * outlier_vectors)
    assert 0 < part.changed < full.changed
    # the best tenth of the gain, not any tenth: it removes more than a tenth of what the full update removes
    assert part.error_before - part.error_after > 0.1 * (full.error_before - full.error_after)


def test_bad_arguments_are_refused():
    qw, W = _layer(norm=False, residual=False)
    with pytest.raises(ValueError, match="max_fraction=0 must be in"):
        reencode(qw, qw.codes(), W, max_fraction=0)
    with pytest.raises(ValueError, match=r"target has shape \(40, 23\)"):
        reencode(qw, qw.codes(), W.T, max_fraction=0.5)
