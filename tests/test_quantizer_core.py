"""VPTQ quantizer math on tiny random layers (fast CPU numerics)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vptq_lab.core.config import VPTQConfig
from vptq_lab.core.hessian_ops import act_order, column_loop, condition_hessian, inverse_cholesky_upper, proxy_loss
from vptq_lab.core.packing import merge_codes, pack_codes, split_codes, unpack_codes
from vptq_lab.core.quantizer import (
    from_vectors,
    kmeans_only_loss,
    quantize_with_trace,
    to_vectors,
    vptq_quantize,
    vq_no_feedback,
)
from vptq_lab.core.qweight import QuantizedWeight, dequantize

pytestmark = pytest.mark.usefixtures("one_thread")


def _layer(out: int = 64, n_in: int = 96, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """W [out, in] and H = X^T X / n from correlated activations X [n, in] (with a few loud columns)."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.eye(n_in) + 0.8 * torch.randn(n_in, n_in, generator=g) / math.sqrt(n_in)
    loud = torch.ones(n_in)
    loud[torch.randperm(n_in, generator=g)[:4]] = 5.0
    X = torch.randn(1024, n_in, generator=g) @ mix * loud  # [n, in]
    return torch.randn(out, n_in, generator=g), (X.T @ X / X.shape[0]).double()


def _cfg(**kw) -> VPTQConfig:
    return VPTQConfig(**{**dict(vector_lens=(-1, 4), num_centroids=(-1, 64), kmeans_iters=8), **kw})


def _rtn(W: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-output-row asymmetric min-max round to nearest."""
    lo, hi = W.min(1, keepdim=True).values, W.max(1, keepdim=True).values
    step = (hi - lo) / (2**bits - 1)
    return torch.round((W - lo) / step).clamp(0, 2**bits - 1) * step + lo


# --- the quantizer --------------------------------------------------------------------
def test_vptq_beats_no_feedback_vq_and_rtn_at_equal_index_bits() -> None:
    W, H = _layer()
    cfg = _cfg(vector_lens=(-1, 2), num_centroids=(-1, 16))  # 2 index bits per weight
    qw = vptq_quantize(W, H, cfg)
    Wq = dequantize(qw)
    assert Wq.shape == W.shape and Wq.dtype == torch.float32
    loss = proxy_loss(W, Wq, H)
    assert loss == pytest.approx(qw.info["proxy_loss_rel"], rel=1e-9)
    base = vq_no_feedback(W, H, cfg)
    assert loss < proxy_loss(W, dequantize(base), H)
    assert loss < proxy_loss(W, _rtn(W, 2), H)


def test_column_loop_beats_kmeans_only() -> None:
    W, H = _layer()
    qw, trace = quantize_with_trace(W, H, _cfg())
    assert qw.info["proxy_loss_rel"] < qw.info["proxy_loss_rel_kmeans_only"]
    assert qw.info["proxy_loss_rel_kmeans_only"] == pytest.approx(proxy_loss(W, trace.kmeans_only, H))
    assert 0 < qw.info["codebook_utilisation"] <= 1


def test_residual_lowers_the_loss() -> None:
    W, H = _layer()
    plain = vptq_quantize(W, H, _cfg())
    res = vptq_quantize(W, H, _cfg(num_res_centroids=(-1, 16)))
    assert res.info["proxy_loss_rel"] < 0.8 * plain.info["proxy_loss_rel"]
    assert res.info["proxy_loss_rel_first_pass"] == pytest.approx(plain.info["proxy_loss_rel"])
    assert res.res_centroids.shape == (1, 16 * 4)


COMBOS = [
    dict(),
    dict(enable_norm=True),
    dict(enable_perm=False),
    dict(group_num=3),
    dict(num_res_centroids=(-1, 8), group_num=2, enable_norm=True),
    dict(npercent=5.0, vector_lens=(3, 4), num_centroids=(16, 64)),
    dict(
        npercent=5.0,
        vector_lens=(3, 4),
        num_centroids=(16, 64),
        enable_perm=False,
        group_num=2,
        num_res_centroids=(-1, 8),
        enable_norm=True,
    ),
    dict(vector_lens=(-1, 5), num_centroids=(-1, 32), num_res_centroids=(-1, 4)),  # 62 rows: padding
]


@pytest.mark.parametrize("kw", COMBOS)
def test_dequantize_matches_the_quantizers_own_reconstruction(kw: dict) -> None:
    W, H = _layer(out=62 if kw.get("vector_lens", (0, 4))[1] == 5 else 64)
    cfg = _cfg(**kw)
    qw, trace = quantize_with_trace(W, H, cfg)
    Wq = dequantize(qw)
    tol = 1e-3 * W.abs().max()  # fp16-level
    assert torch.allclose(Wq, trace.reconstruction, atol=tol, rtol=0)
    assert qw.info["proxy_loss_rel"] < 1.0
    _check_official_layout(qw, cfg, W.shape)


def _check_official_layout(qw: QuantizedWeight, cfg: VPTQConfig, shape: tuple[int, int]) -> None:
    out, n_in = shape
    G, S, O = qw.group_num, qw.group_size, qw.outlier_size
    R, B = -(-out // cfg.v), qw.index_bits[0] + qw.index_bits[1]
    assert O + G * S == n_in
    assert qw.indices.dtype == torch.int32 and qw.indices.shape == (G, R, -(-S * B // 32))
    assert qw.centroids.dtype == torch.float16 and qw.centroids.shape == (G, cfg.k1 * cfg.v)
    if O:
        v0 = cfg.vector_lens[0]
        assert qw.outlier_indices.dtype == torch.int16 and qw.outlier_indices.shape == (1, -(-out // v0), O)
    if qw.perm is not None:
        perm = qw.perm.long() & 0xFFFF
        assert qw.perm.dtype == torch.int16 and torch.equal(perm.sort().values, torch.arange(n_in))
    assert (qw.perm is not None) == (cfg.enable_perm or O > 0)
    assert (qw.weight_scale is not None) == cfg.enable_norm


def test_perm_without_act_order_only_moves_the_outliers() -> None:
    W, H = _layer()
    qw = vptq_quantize(W, H, _cfg(npercent=5.0, vector_lens=(3, 4), num_centroids=(16, 64), enable_perm=False))
    perm = qw.perm.long()
    loudest = torch.sort(torch.diag(H), descending=True).indices[: qw.outlier_size]
    assert set(perm[: qw.outlier_size].tolist()) == set(loudest.tolist())
    rest = perm[qw.outlier_size :]
    assert torch.equal(rest, rest.sort().values)  # the others keep their order


def test_same_seed_gives_bit_identical_codes_and_codebooks() -> None:
    W, H = _layer()
    cfg = _cfg(num_res_centroids=(-1, 8), npercent=5.0, vector_lens=(3, 4), num_centroids=(16, 64))
    a, b = vptq_quantize(W, H, cfg), vptq_quantize(W, H, cfg)
    for name, t in a.tensors().items():
        assert torch.equal(t, b.tensors()[name]), name
    c = vptq_quantize(W, H, cfg.replace(seed=1))
    assert not torch.equal(a.centroids, c.centroids)


def test_inputs_are_not_mutated() -> None:
    W, H = _layer()
    W0, H0 = W.clone(), H.clone()
    H[:, 3] = H[3, :] = 0  # a dead column too
    H0 = H.clone()
    vptq_quantize(W, H, _cfg(enable_norm=True, num_res_centroids=(-1, 8)))
    assert torch.equal(W, W0) and torch.equal(H, H0)


def test_dead_columns_and_all_zero_hessian_do_not_crash() -> None:
    W, H = _layer()
    H = H.clone()
    H[:, :5] = 0
    H[:5, :] = 0
    qw = vptq_quantize(W, H, _cfg())
    assert qw.info["dead_columns"] == 5 and not qw.info["hessian_all_zero"]
    zero = vptq_quantize(W, torch.zeros_like(H), _cfg())
    assert zero.info["hessian_all_zero"] and dequantize(zero).shape == W.shape


def test_centroids_are_fp16_and_error_when_k_exceeds_vectors() -> None:
    W, H = _layer(out=8, n_in=8)  # 8 * 8 / 4 = 16 vectors
    with pytest.raises(ValueError, match="more centroids than vectors"):
        vptq_quantize(W, H, _cfg(num_centroids=(-1, 32)))


# --- Hessian ops -------------------------------------------------------------------------
def test_condition_hessian_is_pure_and_damps() -> None:
    H = torch.tensor([[2.0, 1.0, 0.0], [1.0, 4.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    W = torch.ones(2, 3)
    Hc, Wc, dead = condition_hessian(H, W, percdamp=0.1)
    assert dead.tolist() == [False, False, True]
    assert torch.equal(W, torch.ones(2, 3)) and H[2, 2] == 0
    assert Wc[:, 2].abs().sum() == 0
    damp = 0.1 * (2 + 4 + 1) / 3
    assert torch.allclose(torch.diag(Hc), torch.tensor([2 + damp, 4 + damp, 1 + damp], dtype=torch.float64))


def test_act_order_is_descending_and_stable() -> None:
    H = torch.diag(torch.tensor([1.0, 3.0, 1.0, 3.0, 2.0]))
    assert act_order(H).tolist() == [1, 3, 4, 0, 2]


def test_inverse_cholesky_upper_factorises_the_inverse() -> None:
    _, H = _layer(n_in=16)
    U = inverse_cholesky_upper(H)
    assert torch.equal(U, torch.triu(U))
    assert torch.allclose(U.double().T @ U.double(), torch.linalg.inv(H), rtol=1e-4, atol=1e-6)
    singular = torch.ones(4, 4, dtype=torch.float64)  # rank 1: needs the retry damping
    U = inverse_cholesky_upper(singular)
    assert torch.isfinite(U).all()
    with pytest.raises(ValueError, match="not positive definite"):
        inverse_cholesky_upper(-torch.eye(3, dtype=torch.float64))


def test_column_loop_without_correlation_is_plain_rounding() -> None:
    W = torch.randn(8, 10, generator=torch.Generator().manual_seed(0))
    H = torch.diag(torch.rand(10, dtype=torch.float64) + 0.5)
    Q, E = column_loop(W, inverse_cholesky_upper(H), lambda w, j: torch.round(w * 2) / 2, blocksize=3)
    assert torch.equal(Q, torch.round(W * 2) / 2)


def test_column_loop_gives_scalar_gptq_that_beats_rtn() -> None:
    W, H = _layer()
    Hc, Wc, _ = condition_hessian(H, W, 0.01)
    perm = act_order(Hc)
    lo, hi = W.min(1).values, W.max(1).values
    step = (hi - lo) / 3  # 2-bit grid per output row, same as _rtn

    def round_col(w: torch.Tensor, j: int) -> torch.Tensor:
        return torch.round((w - lo) / step).clamp(0, 3) * step + lo

    for bs in (5, 128):  # lazy blocks must not change the result
        Q, _ = column_loop(Wc[:, perm], inverse_cholesky_upper(Hc[perm][:, perm]), round_col, blocksize=bs)
        if bs == 5:
            Q5 = Q
    assert torch.allclose(Q, Q5, atol=1e-5)
    gptq = Q[:, torch.argsort(perm)]
    assert proxy_loss(W, gptq, H) < 0.7 * proxy_loss(W, _rtn(W, 2), H)


def test_proxy_loss_definition() -> None:
    W = torch.tensor([[1.0, 2.0]])
    Wq = torch.tensor([[0.0, 2.0]])
    H = torch.tensor([[2.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
    assert proxy_loss(W, Wq, H, relative=False) == pytest.approx(2.0)  # dW = [1, 0]
    assert proxy_loss(W, Wq, H) == pytest.approx(2.0 / (2 + 2 * 2 + 3 * 4))
    assert proxy_loss(W, W, H) == 0.0


# --- layout and packing ---------------------------------------------------------------------
def test_vectors_are_v_consecutive_rows_of_one_column() -> None:
    W = torch.arange(5 * 3, dtype=torch.float32).reshape(5, 3)  # out=5, S=3, v=2 -> R=3, one padded row
    X = to_vectors(W, 2)
    assert X.shape == (9, 2)
    assert X[0].tolist() == [W[0, 0], W[1, 0]] and X[2].tolist() == [W[4, 0], 0.0]
    assert X[3].tolist() == [W[0, 1], W[1, 1]]
    assert torch.equal(from_vectors(X, 5, 3), W)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 16), st.integers(0, 16), st.integers(1, 40), st.integers(1, 3), st.integers(0, 2**31))
def test_pack_unpack_round_trip_every_width(b1: int, b2: int, S: int, rows: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, 1 << b1, (2, rows, S), generator=g)
    res = torch.randint(0, 1 << b2, (2, rows, S), generator=g) if b2 else None
    words = pack_codes(merge_codes(idx, res, b1), b1 + b2)
    assert words.dtype == torch.int32 and words.shape == (2, rows, -(-S * (b1 + b2) // 32))
    back, back_res = split_codes(unpack_codes(words, b1 + b2, S), b1, b2)
    assert torch.equal(back, idx)
    assert (back_res is None) if res is None else torch.equal(back_res, res)
    stream = sum(int(c) << (i * (b1 + b2)) for i, c in enumerate(merge_codes(idx, res, b1)[0, 0].tolist()))
    words0 = [int(w) & 0xFFFFFFFF for w in words[0, 0]]  # LSB-first word stream, checked independently
    assert sum(w << (32 * i) for i, w in enumerate(words0)) == stream


def _naive_dequantize(qw: QuantizedWeight) -> torch.Tensor:
    """docs/algorithm.md section 4, written as plain loops (independent of qweight.gather_columns)."""
    idx, res = qw.codes()
    v, out = qw.vector_len, qw.out_features
    body = torch.zeros(qw.num_rows * v, qw.group_num * qw.group_size)
    for g in range(qw.group_num):
        cb = qw.centroids[g].float().reshape(-1, v)
        rcb = qw.res_centroids[g].float().reshape(-1, v) if res is not None else None
        for r in range(qw.num_rows):
            for s in range(qw.group_size):
                vec = cb[idx[g, r, s]] + (rcb[res[g, r, s]] if rcb is not None else 0)
                body[r * v : (r + 1) * v, g * qw.group_size + s] = vec
    W = body[:out]
    if qw.outlier_size:
        v0 = qw.outlier_vector_len
        ocb = qw.outlier_centroids[0].float().reshape(-1, v0)
        o = torch.zeros(-(-out // v0) * v0, qw.outlier_size)
        for r in range(o.shape[0] // v0):
            for s in range(qw.outlier_size):
                o[r * v0 : (r + 1) * v0, s] = ocb[int(qw.outlier_indices[0, r, s]) & 0xFFFF]
        W = torch.cat([o[:out], W], 1)
    if qw.perm is not None:
        orig = torch.empty_like(W)
        orig[:, qw.perm.long() & 0xFFFF] = W  # stored column j is original column perm[j]
        W = orig
    if qw.weight_scale is not None:
        W = W * qw.weight_scale.float() + qw.weight_bias.float()
    return W


@pytest.mark.parametrize("kw", COMBOS[4:])
def test_reference_dequantize_matches_a_naive_reading_of_the_format(kw: dict) -> None:
    W, H = _layer(out=62 if kw.get("vector_lens", (0, 4))[1] == 5 else 64)
    qw = vptq_quantize(W, H, _cfg(kmeans_iters=2, **kw))
    assert torch.allclose(dequantize(qw), _naive_dequantize(qw), atol=1e-6)


def test_column_loop_errors_are_scaled_residuals_of_the_updated_columns() -> None:
    """E[:, j] * U_jj is what the quantizer left of the column it saw: the residual VQ trains on it."""
    W, H = _layer(out=8, n_in=12)
    U = inverse_cholesky_upper(condition_hessian(H, W, 0.01)[0])
    seen = {}

    def coarse(w: torch.Tensor, j: int) -> torch.Tensor:
        seen[j] = w.clone()
        return torch.round(w)

    Q, E = column_loop(W, U, coarse, blocksize=5)
    updated = torch.stack([seen[j] for j in range(12)], 1)  # [out, in]
    assert torch.allclose(E * torch.diag(U), updated - Q, atol=1e-5)
    assert not torch.allclose(updated, W)  # the feedback did move later columns


@pytest.mark.parametrize("kw", COMBOS)
def test_the_kmeans_only_loss_computed_elsewhere_is_the_same_bits(kw: dict) -> None:
    W, H = _layer(out=62 if kw.get("vector_lens", (0, 4))[1] == 5 else 64)
    cfg = _cfg(**kw)
    whole = vptq_quantize(W, H, cfg)
    elsewhere = kmeans_only_loss(W, H, cfg)
    assert elsewhere == whole.info["proxy_loss_rel_kmeans_only"]
    handed = vptq_quantize(W, H, cfg, kmeans_only_loss=lambda: elsewhere)  # the k-means-only pass skipped
    assert torch.equal(handed.indices, whole.indices) and handed.info == {
        **whole.info,
        "seconds": handed.info["seconds"],
    }
    assert "kmeans_only_assign" not in handed.info["seconds"] and "kmeans_only_assign" in whole.info["seconds"]
    with pytest.raises(ValueError, match="kmeans_only_loss= needs feedback=True"):
        vptq_quantize(W, H, cfg, feedback=False, kmeans_only_loss=lambda: elsewhere)
