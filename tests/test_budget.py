"""The config finder: every bit counted, the paper's configs found, impossible budgets explained."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from vptq_lab.core.bits import bits_per_weight, model_bits
from vptq_lab.core.config import VPTQConfig, layer_plan
from vptq_lab.lab.budget import (
    LLAMA2_7B_BLOCK,
    LLAMA2_13B_BLOCK,
    SMOLLM2_135M_SHAPES,
    SearchSpace,
    candidate_table,
    linear_bits,
    row_config,
    shapes_of,
    suggest,
    vptq_model_bits,
)


def _row(df, v: int, k1: int, k2: int = 0, group_num: int = 1, npercent: float = 0.0):
    hit = df[(df.v == v) & (df.k1 == k1) & (df.k2 == k2) & (df.group_num == group_num) & (df.npercent == npercent)]
    assert len(hit) == 1, f"v{v} k{k1} k2={k2} not in\n{df.drop(columns='config')}"
    return hit.iloc[0]


def test_block_shapes_are_the_papers() -> None:
    assert sum(o * i for o, i in LLAMA2_7B_BLOCK.values()) == 4 * 4096**2 + 3 * 4096 * 11008
    assert LLAMA2_13B_BLOCK["mlp.down_proj"] == (5120, 13824) and LLAMA2_13B_BLOCK["mlp.up_proj"] == (13824, 5120)
    assert len(SMOLLM2_135M_SHAPES) == 30 * 7 and SMOLLM2_135M_SHAPES["model.layers.29.self_attn.k_proj"] == (192, 576)


def test_llama2_7b_lists_v6_k4096_at_2_02() -> None:
    df = suggest(LLAMA2_7B_BLOCK, 2.03)
    row = _row(df, v=6, k1=4096)
    # by hand: 12/6 index bits; a 6x4096 fp16 codebook per linear; a 16-bit perm per input column
    n = 4 * 4096**2 + 3 * 4096 * 11008
    assert row.bits_per_weight == pytest.approx(2 + (7 * 16 * 6 * 4096 + 16 * (6 * 4096 + 11008)) / n)
    assert row.bits_per_weight == pytest.approx(2.02, abs=0.01)
    assert row.runnable and row.codebook_scope == "per-linear"


def test_llama2_13b_lists_v8_k65536_at_2_19() -> None:
    row = _row(suggest(LLAMA2_13B_BLOCK, 2.2), v=8, k1=65536)
    assert row.bits_per_weight == pytest.approx(2.19, abs=0.01)
    assert row.codebook_share == pytest.approx(7 * 16 * 8 * 65536 / (row.bits_per_weight * 317194240))


@pytest.mark.parametrize("target", [2, 3, 4])
def test_default_model_rows_respect_the_budget(target: float) -> None:
    df = suggest(SMOLLM2_135M_SHAPES, target, tolerance=0.25)
    assert 1 <= len(df) <= 20 and list(df.index) == list(range(1, len(df) + 1))
    assert (df.bits_per_weight <= target).all() and (df.bits_per_weight >= target - 0.25).all()
    for _, row in df.head(5).iterrows():  # recount independently: bits.py over all 210 linears
        assert model_bits(row.config, SMOLLM2_135M_SHAPES).bits_per_weight == pytest.approx(row.bits_per_weight)
        assert row.min_linear_bits <= row.bits_per_weight <= row.max_linear_bits
        for shape in set(SMOLLM2_135M_SHAPES.values()):
            _, _, group_size = layer_plan(row.config, shape[1])  # the quantizer's plan accepts it
            assert -(-shape[0] // row.v) * group_size >= row.k1  # enough vectors for k-means


def test_screen_formula_matches_bits_py_for_every_scope() -> None:
    space = SearchSpace(
        vector_lens=(4, 6), k1_bits=(8, 12), k2_bits=(0, 8), npercents=(0.0, 2.0), group_nums=(1, 2), enable_norm=True
    )
    cands = candidate_table(SMOLLM2_135M_SHAPES, space, shared=True)
    assert set(cands.codebook_scope) == {"per-linear", "per-block", "per-model"}
    for _, row in cands.iterrows():
        exact = vptq_model_bits(row_config(row, space), SMOLLM2_135M_SHAPES, row.codebook_scope)
        assert exact.bits_per_weight == pytest.approx(row.bits_per_weight, rel=1e-12)


def test_sharing_counts_one_codebook_per_unit() -> None:
    cfg = VPTQConfig(vector_lens=(-1, 6), num_centroids=(-1, 4096))
    one = bits_per_weight(cfg, (576, 576)).codebook_bits
    per = {s: vptq_model_bits(cfg, SMOLLM2_135M_SHAPES, s) for s in ("per-linear", "per-block", "per-model")}
    assert per["per-linear"] == model_bits(cfg, SMOLLM2_135M_SHAPES)
    assert [per[s].codebook_bits for s in per] == [210 * one, 30 * one, one]
    assert per["per-linear"].index_bits == per["per-model"].index_bits
    shared = linear_bits(cfg, SMOLLM2_135M_SHAPES, "per-block")
    n_block = sum(o * i for o, i in list(SMOLLM2_135M_SHAPES.values())[:7])
    q = shared["model.layers.0.self_attn.q_proj"]
    assert q == pytest.approx(12 / 6 + one / n_block + 16 / 576)  # index + codebook by weight share + perm


def test_runnable_says_what_quantize_runs() -> None:
    df = suggest(SMOLLM2_135M_SHAPES, 2.0, shared=True, max_rows=200)
    assert {"per-linear", "per-block", "per-model"} <= set(df.codebook_scope)
    expected = (df.codebook_scope == "per-linear") | ((df.codebook_scope == "per-block") & (df.k2 == 0))
    assert (df.runnable == expected).all() and df.runnable.any() and not df.runnable.all()
    assert not df[df.codebook_scope == "per-model"].runnable.any()
    runnable = df[df.runnable]
    assert all(cfg.codebook_scope == scope for cfg, scope in zip(runnable.config, runnable.codebook_scope))
    assert (df.bits_per_weight <= 2.0).all()


def test_a_runnable_per_block_row_quantizes_a_model() -> None:
    from vptq_lab import quantize_
    from vptq_lab.testing import tiny_llama

    model = tiny_llama(hidden=64, layers=1)
    space = SearchSpace(vector_lens=(4,), k1_bits=(4,), k2_bits=(0,), npercents=(0.0,), group_nums=(1,))
    df = suggest(model, 8.0, shared="per-block", tolerance=8.0, space=space)
    row = df[df.runnable].iloc[0]
    assert row.codebook_scope == "per-block"
    calib = torch.randint(0, 384, (4, 32), generator=torch.Generator().manual_seed(0))
    report = quantize_(model, row.config.replace(nsamples=4, seqlen=32), calib, progress=False)
    assert len(report.records) == 7
    assert report.total_bits_per_weight() == pytest.approx(row.bits_per_weight, rel=1e-6)


@pytest.mark.parametrize("target", [-1, 0, float("nan")])
def test_non_positive_target_is_rejected(target: float) -> None:
    with pytest.raises(ValueError, match="target_bits=.* must be a positive number of bits"):
        suggest(SMOLLM2_135M_SHAPES, target)


def test_below_the_smallest_budget_says_what_is_possible() -> None:
    with pytest.raises(ValueError, match=r"smallest achievable budget for these shapes is [\d.]+ bits \(v=16") as e:
        suggest(SMOLLM2_135M_SHAPES, 0.5)
    smallest = float(re.search(r"is ([\d.]+) bits", str(e.value)).group(1))
    assert 0.5 < smallest < 1.0
    df = suggest(SMOLLM2_135M_SHAPES, smallest + 1e-4)  # and it is reachable
    assert df.bits_per_weight.min() == pytest.approx(smallest, abs=1e-4)


def test_empty_window_asks_for_more_tolerance() -> None:
    with pytest.raises(ValueError, match="raise tolerance"):
        suggest(LLAMA2_7B_BLOCK, 2.03, tolerance=1e-6)


def test_bad_search_space_and_shapes_are_rejected() -> None:
    with pytest.raises(ValueError, match="vector_lens"):
        SearchSpace(vector_lens=(0, 4))
    with pytest.raises(ValueError, match="k1_bits"):
        SearchSpace(k1_bits=(17,))
    with pytest.raises(ValueError, match="positive"):
        suggest({"x": (0, 4)}, 2.0)
    with pytest.raises(ValueError, match="scope"):
        suggest(LLAMA2_7B_BLOCK, 2.0, shared="per-layer")


def test_shapes_of_a_llama_and_a_generic_module() -> None:
    from transformers.pytorch_utils import Conv1D

    from vptq_lab.testing import tiny_llama

    shapes = shapes_of(tiny_llama(hidden=64, layers=2))  # intermediate 160, 2 KV heads of 16
    assert len(shapes) == 14
    assert shapes["model.layers.1.self_attn.k_proj"] == (32, 64)
    assert shapes["model.layers.0.mlp.down_proj"] == (64, 160)
    generic = nn.Sequential(nn.Linear(8, 16), Conv1D(12, 16))  # Conv1D(nf=out, nx=in)
    generic.lm_head = nn.Linear(12, 100)
    assert shapes_of(generic) == {"0": (16, 8), "1": (12, 16)}


def test_suggest_takes_a_module() -> None:
    model = nn.ModuleDict({f"b{i}": nn.Linear(512, 512) for i in range(4)})
    with torch.no_grad():
        df = suggest(model, 4.0)
    assert df.equals(suggest({f"b{i}": (512, 512) for i in range(4)}, 4.0))
