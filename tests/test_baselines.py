"""Scalar baselines (RTN, GPTQ) and the method registry: fast CPU numerics on tiny layers."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vptq_lab.core.config import VPTQConfig
from vptq_lab.core.hessian_ops import proxy_loss
from vptq_lab.core.methods import METHODS, dequantized, method_preset, model_bits_per_weight
from vptq_lab.core.scalar import GPTQConfig, RTNConfig, ScalarQuantized, gptq_quantize, rtn_quantize, scalar_bits


def _layer(out: int = 24, n_in: int = 64, n: int = 256, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """W [out, in] and a correlated Hessian H = X^T X / n: inputs mixed by a random matrix, uneven scales."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.eye(n_in) + 0.5 * torch.randn(n_in, n_in, generator=g) / n_in**0.5
    X = torch.randn(n, n_in, generator=g) @ mix * (0.5 + torch.rand(n_in, generator=g))  # [n, in]
    return torch.randn(out, n_in, generator=g), X.T @ X / n


# RTN -------------------------------------------------------------------------------------
def test_rtn_two_bits_hand_case() -> None:
    W = torch.tensor([[0.0, 0.9, 2.2, 3.0], [-1.0, 0.2, 0.8, 2.0]])
    q = rtn_quantize(W, RTNConfig(bits=2, group_size=None))
    assert q.codes.tolist() == [[0, 1, 2, 3], [0, 1, 2, 3]]  # range [0, 3] and [-1, 2]: scale 1 each
    assert q.W.tolist() == [[0.0, 1.0, 2.0, 3.0], [-1.0, 0.0, 1.0, 2.0]]
    assert q.scales.float().flatten().tolist() == [1.0, 1.0]
    assert q.zeros.float().flatten().tolist() == [0.0, 1.0]


def test_rtn_error_shrinks_as_bits_grow() -> None:
    W, _ = _layer()
    errors = [float((rtn_quantize(W, RTNConfig(bits=b, group_size=16)).W - W).pow(2).mean()) for b in range(1, 9)]
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 1e-4 * errors[0]


def test_rtn_groups_beat_per_channel() -> None:
    W, _ = _layer()
    per_row = rtn_quantize(W, RTNConfig(bits=3, group_size=None)).W
    grouped = rtn_quantize(W, RTNConfig(bits=3, group_size=8)).W
    assert (grouped - W).pow(2).sum() < (per_row - W).pow(2).sum()


def test_rtn_symmetric_grid_has_fixed_zero() -> None:
    W, _ = _layer()
    q = rtn_quantize(W, RTNConfig(bits=4, group_size=32, symmetric=True))
    assert (q.zeros.float() == 8).all()
    assert torch.equal(q.dequantize(), q.W)


# GPTQ ------------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [2, 3])
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_proxy_loss_below_rtn(bits: int, act_order: bool) -> None:
    W, H = _layer()
    rtn = rtn_quantize(W, RTNConfig(bits=bits, group_size=16), H)
    gptq = gptq_quantize(W, H, GPTQConfig(bits=bits, group_size=16, act_order=act_order, blocksize=16))
    assert gptq.info["proxy_loss_rel"] < 0.9 * rtn.info["proxy_loss_rel"]
    assert gptq.info["proxy_loss_rel"] == pytest.approx(proxy_loss(W, gptq.W, H))


def test_gptq_with_identity_hessian_is_rtn() -> None:
    """No correlation, no feedback: GPTQ must round exactly like RTN (same grid, same groups)."""
    W, _ = _layer()
    rtn = rtn_quantize(W, RTNConfig(bits=3, group_size=16))
    gptq = gptq_quantize(W, torch.eye(W.shape[1]), GPTQConfig(bits=3, group_size=16, blocksize=24))
    assert torch.equal(gptq.codes, rtn.codes) and torch.equal(gptq.W, rtn.W)


@pytest.mark.parametrize(
    "kw",
    [
        dict(act_order=True),
        dict(act_order=False),
        dict(act_order=True, static_groups=True),
        dict(group_size=None),
        dict(symmetric=True, blocksize=10),
    ],
)
def test_gptq_storage_rebuilds_the_weight(kw: dict) -> None:
    W, H = _layer(seed=1)
    q = gptq_quantize(W, H, GPTQConfig(**{**dict(bits=3, group_size=16, blocksize=32), **kw}))
    assert torch.equal(q.dequantize(), q.W)  # codes, scales, zeros and g_idx say everything
    assert int(q.codes.max()) <= 7
    groups_per_row = 1 if q.config.group_size is None else 4
    assert q.scales.shape == (24, groups_per_row) and q.scales.dtype == torch.float16
    if kw.get("act_order") and not kw.get("static_groups"):
        assert not torch.equal(q.g_idx, torch.arange(64) // 16)  # groups follow the act-order
        assert q.perm is not None


def test_gptq_does_not_mutate_inputs_and_handles_dead_columns() -> None:
    W, H = _layer()
    H[3, :] = H[:, 3] = 0  # input 3 is always zero
    W0, H0 = W.clone(), H.clone()
    q = gptq_quantize(W, H, GPTQConfig(bits=4, group_size=16))
    assert torch.equal(W, W0) and torch.equal(H, H0)
    assert q.info["dead_columns"] == 1 and (q.W[:, 3] == 0).all()


# Bits -------------------------------------------------------------------------------------
def test_two_bit_g128_is_2_25_bits() -> None:
    shape = (256, 1024)
    assert scalar_bits(RTNConfig(bits=2, group_size=128), shape).bits_per_weight == 2.25
    assert scalar_bits(GPTQConfig(bits=2, group_size=128, act_order=False), shape).bits_per_weight == 2.25
    assert scalar_bits(GPTQConfig(bits=2, group_size=128, static_groups=True), shape).bits_per_weight == 2.25
    assert scalar_bits(GPTQConfig(bits=2, group_size=128), shape).bits_per_weight == 2.25 + 16 / 256  # perm
    assert scalar_bits(RTNConfig(bits=2, group_size=128, symmetric=True), shape).bits_per_weight == 2.125
    assert scalar_bits(RTNConfig(bits=4, group_size=None), (64, 576)).bits_per_weight == 4 + 32 / 576
    assert scalar_bits(RTNConfig(bits=3, group_size=128), (10, 576)).scale_bits == 16 * 10 * 5  # ragged group


@pytest.mark.parametrize(
    "config",
    [
        RTNConfig(bits=3, group_size=16),
        GPTQConfig(bits=2, group_size=16),
        GPTQConfig(bits=4, group_size=None),
        RTNConfig(bits=5, symmetric=True),
    ],
)
def test_bits_count_the_stored_tensors(config) -> None:
    W, H = _layer()
    q = rtn_quantize(W, config) if isinstance(config, RTNConfig) else gptq_quantize(W, H, config)
    stored = config.bits * q.codes.numel() + 16 * q.scales.numel()
    stored += 0 if config.symmetric else 16 * q.zeros.numel()
    stored += 16 * q.perm.numel() if q.perm is not None and config.group_size else 0
    assert q.bits.total_bits == stored


# Configs ----------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(
    bits=st.integers(1, 8),
    group=st.one_of(st.none(), st.integers(1, 4096)),
    sym=st.booleans(),
    act=st.booleans(),
    static=st.booleans(),
    damp=st.floats(0, 9.99),
    block=st.integers(1, 512),
)
def test_configs_round_trip_json(bits, group, sym, act, static, damp, block) -> None:
    rtn = RTNConfig(bits=bits, group_size=group, symmetric=sym)
    gptq = GPTQConfig(
        bits=bits, group_size=group, act_order=act, percdamp=damp, blocksize=block, static_groups=static, symmetric=sym
    )
    for cfg in (rtn, gptq):
        assert type(cfg).from_json(cfg.to_json()) == cfg
        assert json.loads(cfg.to_json()) == cfg.to_dict()


@pytest.mark.parametrize(
    "cls, kw, field",
    [
        (RTNConfig, dict(bits=0), "bits"),
        (RTNConfig, dict(bits=9), "bits"),
        (RTNConfig, dict(bits=True), "bits"),
        (RTNConfig, dict(bits=2.0), "bits"),
        (RTNConfig, dict(group_size=0), "group_size"),
        (RTNConfig, dict(group_size=64.0), "group_size"),
        (RTNConfig, dict(symmetric=1), "symmetric"),
        (GPTQConfig, dict(percdamp=-0.1), "percdamp"),
        (GPTQConfig, dict(percdamp=float("nan")), "percdamp"),
        (GPTQConfig, dict(blocksize=0), "blocksize"),
        (GPTQConfig, dict(act_order="yes"), "act_order"),
    ],
)
def test_configs_reject_bad_values(cls, kw, field) -> None:
    with pytest.raises(ValueError, match=field):
        cls(**kw)


def test_from_dict_rejects_unknown_keys() -> None:
    with pytest.raises(ValueError, match="unknown GPTQConfig keys.*groupsize"):
        GPTQConfig.from_dict({"bits": 2, "groupsize": 128})


# Registry ---------------------------------------------------------------------------------
_TINY = {
    "rtn": RTNConfig(bits=2, group_size=16),
    "gptq": GPTQConfig(bits=2, group_size=16),
    "vq": VPTQConfig(vector_lens=(-1, 4), num_centroids=(-1, 16), kmeans_iters=3, enable_perm=False),
    "vptq": VPTQConfig(vector_lens=(-1, 4), num_centroids=(-1, 16), kmeans_iters=3),
}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_runs_through_one_interface(name: str) -> None:
    W, H = _layer()
    spec = METHODS[name]
    config = _TINY[name]
    assert isinstance(config, spec.config_cls)
    result = spec.quantize(W, H, config)
    Wq = dequantized(result)
    assert Wq.shape == W.shape and Wq.dtype == torch.float32
    assert result.info["proxy_loss_rel"] == pytest.approx(proxy_loss(W, Wq, H), rel=1e-6)
    assert 0 < spec.bits(config, tuple(W.shape)) < 16


def test_vptq_feedback_beats_plain_vq() -> None:
    W, H = _layer()
    vq = METHODS["vq"].quantize(W, H, _TINY["vq"])
    vptq = METHODS["vptq"].quantize(W, H, _TINY["vptq"])
    assert vptq.info["proxy_loss_rel"] < vq.info["proxy_loss_rel"]


def test_dequantized_rejects_unknown_results() -> None:
    with pytest.raises(TypeError, match="ScalarQuantized or QuantizedWeight"):
        dequantized([1, 2])
    assert isinstance(rtn_quantize(torch.ones(2, 4), RTNConfig(bits=2)), ScalarQuantized)


def test_presets_land_near_their_targets_on_the_default_model() -> None:
    from vptq_lab.lab.budget import SMOLLM2_135M_SHAPES

    for name in METHODS:
        for target in (2, 3, 4):
            bits = model_bits_per_weight(name, method_preset(name, target), SMOLLM2_135M_SHAPES)
            assert abs(bits - target) < 0.25, (name, target, bits)
    with pytest.raises(ValueError, match="known"):
        method_preset("awq", 2)


def _reference_gptq(W: torch.Tensor, H: torch.Tensor, bits: int, group: int, block: int, act: bool) -> torch.Tensor:
    """The reference GPTQ loop (gptq.py ``fasterquant``), written out: eager in-block updates, lazy
    updates between blocks, a group's grid fitted from the lazily-updated W at its first column."""
    from vptq_lab.core.hessian_ops import act_order, condition_hessian, inverse_cholesky_upper
    from vptq_lab.core.scalar import scalar_grid

    Hc, W, _ = condition_hessian(H, W.clone(), 0.01)
    perm = act_order(Hc) if act else torch.arange(W.shape[1])
    W, U = W[:, perm].clone(), inverse_cholesky_upper(Hc[perm][:, perm])
    Q = torch.zeros_like(W)
    for i1 in range(0, W.shape[1], block):
        i2 = min(i1 + block, W.shape[1])
        W1, E1 = W[:, i1:i2].clone(), torch.zeros(W.shape[0], i2 - i1)
        for i in range(i2 - i1):
            if (i1 + i) % group == 0:
                s, z = (t.float()[:, None] for t in scalar_grid(W[:, i1 + i : i1 + i + group], bits))
            q = s * (torch.clamp(torch.round(W1[:, i : i + 1] / s) + z, 0, 2**bits - 1) - z)
            E1[:, i] = (W1[:, i] - q[:, 0]) / U[i1 + i, i1 + i]
            W1[:, i:] -= E1[:, i : i + 1] @ U[i1 + i : i1 + i + 1, i1:i2][:, i:]
            Q[:, i1 + i] = q[:, 0]
        W[:, i2:] -= E1 @ U[i1:i2, i2:]
    return Q[:, torch.argsort(perm)]


@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_matches_the_reference_loop_when_groups_align_with_blocks(act_order: bool) -> None:
    W, H = _layer(seed=2)
    ours = gptq_quantize(W, H, GPTQConfig(bits=3, group_size=16, blocksize=16, act_order=act_order)).W
    ref = _reference_gptq(W, H, bits=3, group=16, block=16, act=act_order)
    assert (ours == ref).float().mean() > 0.99  # float order differs; a rounding tie may flip
    assert proxy_loss(W, ours, H) == pytest.approx(proxy_loss(W, ref, H), rel=0.02)
