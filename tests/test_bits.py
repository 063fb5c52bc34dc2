"""Bit accounting: the paper's numbers (docs/algorithm.md, Bit accounting) and the stored file's real size."""

from __future__ import annotations

import pytest
import torch

from vptq_lab.core.bits import BitBreakdown, bits_per_weight, model_bits
from vptq_lab.core.config import VPTQConfig
from vptq_lab.core.quantizer import vptq_quantize


def _block(h: int, ffn: int) -> dict[str, tuple[int, int]]:
    sq = {n: (h, h) for n in ("q", "k", "v", "o")}
    return {**sq, "gate": (ffn, h), "up": (ffn, h), "down": (h, ffn)}


def test_section_2_2_single_layer_v8_k256() -> None:
    cfg = VPTQConfig(vector_lens=(-1, 8), num_centroids=(-1, 256), enable_perm=False, enable_norm=False)
    b = bits_per_weight(cfg, (4096, 4096), mode="paper")
    assert b.bits_per_weight == pytest.approx(1.002, abs=5e-4)
    assert b.compression == pytest.approx(15.97, abs=5e-3)
    assert b.perm_bits == 0 and b.norm_bits == 0


def test_llama2_7b_block_v6_k4096_is_2_02_bits() -> None:
    cfg = VPTQConfig(vector_lens=(-1, 6), num_centroids=(-1, 4096), enable_norm=True, enable_perm=True)
    b = model_bits(cfg, _block(4096, 11008), mode="paper")
    assert b.bits_per_weight == pytest.approx(2.02, abs=0.01)
    assert b.norm_bits == 2 * b.perm_bits > 0


def test_llama2_13b_block_v8_k65536_is_2_19_bits() -> None:
    cfg = VPTQConfig(vector_lens=(-1, 8), num_centroids=(-1, 65536), enable_norm=True, enable_perm=True)
    b = model_bits(cfg, _block(5120, 13824), mode="paper")
    assert b.bits_per_weight == pytest.approx(2.19, abs=0.01)


def test_small_model_codebook_overhead_is_visible() -> None:
    """NOTES §3: on a hidden-576 model a per-linear k=4096, v=6 codebook costs ~0.8 bit/weight."""
    cfg = VPTQConfig(vector_lens=(-1, 6), num_centroids=(-1, 4096), enable_perm=False)
    shapes = {**_block(576, 1536), "k": (192, 576), "v": (192, 576)}  # SmolLM2-135M: 3 KV heads of 64
    b = model_bits(cfg, shapes, mode="paper")
    assert b.codebook_bits / b.num_weights == pytest.approx(0.8, abs=0.05)


def test_paper_mode_outlier_and_residual_terms() -> None:
    cfg = VPTQConfig(
        vector_lens=(4, 8),
        num_centroids=(256, 4096),
        num_res_centroids=(-1, 256),
        npercent=1.0,
        group_num=2,
        enable_perm=False,
    )
    b = bits_per_weight(cfg, (100, 200), mode="paper")
    assert b.outlier_index_bits == pytest.approx(100 * 2 * 8 / 4)
    assert b.index_bits == pytest.approx(100 * 198 * (12 + 8) / 8)
    assert b.codebook_bits == 16 * 8 * (4096 + 256) * 2
    assert b.outlier_codebook_bits == 16 * 4 * 256


def _file_bits(qw) -> int:
    return sum(t.numel() * t.element_size() * 8 for t in qw.tensors().values())


@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(enable_norm=True, num_res_centroids=(-1, 8)),
        dict(npercent=4.0, vector_lens=(3, 5), num_centroids=(8, 32), group_num=2, enable_perm=False),
    ],
)
def test_stored_mode_equals_the_bytes_of_a_real_quantized_layer(kw: dict) -> None:
    g = torch.Generator().manual_seed(0)
    W, X = torch.randn(30, 50, generator=g), torch.randn(200, 50, generator=g)
    cfg = VPTQConfig(**{**dict(vector_lens=(-1, 4), num_centroids=(-1, 32), kmeans_iters=2), **kw})
    qw = vptq_quantize(W, X.T @ X / 200, cfg)
    assert bits_per_weight(cfg, (30, 50), mode="stored").total_bits == _file_bits(qw)


def test_breakdown_adds_and_serialises() -> None:
    a = BitBreakdown(index_bits=10, codebook_bits=6, num_weights=4)
    s = a + a
    assert s.total_bits == 32 and s.bits_per_weight == 4.0
    assert s.to_dict()["bits_per_weight"] == 4.0
    with pytest.raises(ValueError, match="mode"):
        bits_per_weight(VPTQConfig(), (4, 4), mode="exact")
