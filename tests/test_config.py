"""VPTQConfig validation, JSON round trip, presets and layer_plan."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vptq_lab.core.config import PRESETS, VPTQConfig, layer_plan, preset

pow2 = st.integers(1, 16).map(lambda b: 1 << b)
vlen = st.integers(1, 16)


@st.composite
def valid_dicts(draw: st.DrawFn) -> dict:
    outliers = draw(st.booleans())
    d = dict(
        vector_lens=(draw(vlen) if outliers else -1, draw(vlen)),
        num_centroids=(draw(pow2) if outliers else -1, draw(pow2)),
        num_res_centroids=(-1, draw(st.one_of(st.just(-1), pow2))),
        npercent=draw(st.floats(0.001, 99.9)) if outliers else 0.0,
        group_num=draw(st.integers(1, 64)),
        enable_norm=draw(st.booleans()),
        enable_perm=draw(st.booleans()),
        percdamp=draw(st.floats(0, 9.9)),
        blocksize=draw(st.integers(1, 4096)),
        kmeans_iters=draw(st.integers(1, 100)),
        kmeans_init=draw(st.sampled_from(["kmeans++", "random"])),
        seed=draw(st.integers(0, 2**31)),
        nsamples=draw(st.integers(1, 1024)),
        seqlen=draw(st.integers(1, 8192)),
        propagation=draw(st.sampled_from(["quantized", "full_precision"])),
        finetune=draw(st.booleans()),
        finetune_steps=draw(st.integers(1, 1000)),
        finetune_lr=draw(st.floats(1e-8, 1.0)),
        finetune_batch=draw(st.integers(0, 64)),
    )
    return d


@settings(max_examples=60, deadline=None)
@given(valid_dicts())
def test_valid_configs_round_trip_exactly(d: dict) -> None:
    cfg = VPTQConfig(**d)
    again = VPTQConfig.from_json(cfg.to_json())
    assert again == cfg
    assert again.to_dict() == cfg.to_dict()
    assert isinstance(again.vector_lens, tuple) and isinstance(again.num_res_centroids, tuple)
    assert VPTQConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


BAD = [  # (field, bad value, a word the message must contain)
    ("num_centroids", (-1, 300), "power of two"),
    ("num_centroids", (-1, 1), "num_centroids"),
    ("num_centroids", (-1, 1 << 17), "16 bits"),
    ("vector_lens", (-1, 0), "vector_lens"),
    ("vector_lens", (-1, 17), "vector_lens"),
    ("num_res_centroids", (4, 256), "outlier part has no residual"),
    ("num_res_centroids", (-1, 100), "power of two"),
    ("npercent", 100.0, "npercent"),
    ("npercent", -1.0, "npercent"),
    ("group_num", 0, "group_num"),
    ("blocksize", 0, "blocksize"),
    ("kmeans_init", "kmeans||", "kmeans_init"),
    ("propagation", "sideways", "propagation"),
    ("enable_norm", 1, "enable_norm"),
    ("group_num", 2.0, "group_num"),
    ("percdamp", float("nan"), "percdamp"),
    ("vector_lens", (6,), "vector_lens"),
    ("finetune_lr", 0.0, "finetune_lr"),
    ("finetune_batch", -1, "finetune_batch"),
]


@pytest.mark.parametrize("field,value,word", BAD)
def test_invalid_field_raises_naming_it(field: str, value: object, word: str) -> None:
    with pytest.raises(ValueError) as exc:
        VPTQConfig(**{field: value})
    assert word in str(exc.value)


@settings(max_examples=40, deadline=None)
@given(valid_dicts(), st.sampled_from(BAD))
def test_any_valid_config_with_one_bad_field_raises(d: dict, bad: tuple) -> None:
    field, value, _ = bad
    d = {**d, "npercent": 0.0, "vector_lens": (-1, d["vector_lens"][1]), "num_centroids": (-1, d["num_centroids"][1])}
    with pytest.raises(ValueError):
        VPTQConfig(**{**d, field: value})


def test_power_of_two_message_suggests_neighbours() -> None:
    with pytest.raises(ValueError, match=r"k1=300 must be a power of two \(try 256 or 512\)"):
        VPTQConfig(num_centroids=(-1, 300))


def test_outlier_fields_must_agree_with_npercent() -> None:
    with pytest.raises(ValueError, match="npercent=0"):
        VPTQConfig(vector_lens=(4, 6), num_centroids=(256, 1024))
    with pytest.raises(ValueError, match="outlier codebook"):
        VPTQConfig(npercent=1.0)


def test_from_dict_rejects_unknown_keys_by_name() -> None:
    with pytest.raises(ValueError, match="num_centroid"):
        VPTQConfig.from_dict({**VPTQConfig().to_dict(), "num_centroid": 3})


def test_presets_are_valid_and_distinct() -> None:
    cfgs = {b: preset(b) for b in PRESETS}
    assert set(cfgs) == {2, 3, 4}
    assert len({c.to_json() for c in cfgs.values()}) == 3
    with pytest.raises(ValueError, match="bits=5"):
        preset(5)


@pytest.mark.parametrize(
    "npercent,groups,n_in", [(0.0, 1, 576), (1.0, 1, 576), (1.0, 4, 577), (0.0, 3, 576), (10.0, 7, 100)]
)
def test_layer_plan_rounds_outliers_up_to_divide_groups(npercent: float, groups: int, n_in: int) -> None:
    cfg = VPTQConfig(
        npercent=npercent,
        group_num=groups,
        vector_lens=(4 if npercent else -1, 6),
        num_centroids=(256 if npercent else -1, 256),
    )
    o, g, s = layer_plan(cfg, n_in)
    assert g == groups and o + g * s == n_in
    assert o >= math.ceil(npercent / 100 * n_in) and o - math.ceil(npercent / 100 * n_in) < groups


def test_layer_plan_errors() -> None:
    with pytest.raises(ValueError, match="divisible"):
        layer_plan(VPTQConfig(group_num=5), 576)
    cfg = VPTQConfig(npercent=99.0, vector_lens=(4, 6), num_centroids=(256, 256), group_num=8)
    with pytest.raises(ValueError, match="no columns left"):
        layer_plan(cfg, 10)
