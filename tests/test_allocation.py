"""Mixed bit allocation: the knapsack, per-linear configs through quantize_, save and load, sensitivity, the CLI."""

from __future__ import annotations

import itertools
import json

import pandas as pd
import pytest
import torch

from vptq_lab import VPTQConfig, load_quantized, quantize_, save_quantized
from vptq_lab.core.allocate import allocate
from vptq_lab.core.bits import bits_per_weight
from vptq_lab.core.config import MixedConfig
from vptq_lab.errors import VPTQLabError
from vptq_lab.model.layers import QuantizedLinear
from vptq_lab.testing import tiny_llama

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = VPTQConfig(vector_lens=(-1, 4), num_centroids=(-1, 16), nsamples=4, seqlen=32, kmeans_iters=2)
LARGE = SMALL.replace(num_centroids=(-1, 64))  # more index bits
DOWN = "model.layers.0.mlp.down_proj"


def _calib(n: int = 4, seqlen: int = 32) -> torch.Tensor:
    return torch.randint(0, 384, (n, seqlen), generator=torch.Generator().manual_seed(3))


# The knapsack ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_allocate_finds_the_least_cost_within_the_budget(seed):
    """Against every combination of a small random instance (brute force)."""
    gen = torch.Generator().manual_seed(seed)
    names = [f"l{i}" for i in range(4)]
    bits = {n: sorted((torch.rand(3, generator=gen) * 3 + 1).tolist()) for n in names}
    costs = {n: sorted((torch.rand(3, generator=gen) * 10).tolist(), reverse=True) for n in names}
    sizes = {n: int(torch.randint(1, 50, (1,), generator=gen)) for n in names}
    total = sum(sizes.values())
    budget = sum(sizes[n] * (bits[n][0] + bits[n][1]) / 2 for n in names) / total
    feasible = [
        (sum(costs[n][j] for n, j in zip(names, pick)), pick)
        for pick in itertools.product(range(3), repeat=4)
        if sum(sizes[n] * bits[n][j] for n, j in zip(names, pick)) / total <= budget
    ]
    best_cost, _ = min(feasible)
    found = allocate(costs, bits, sizes, budget, resolution=200_000)
    assert found.bits <= budget + 1e-12
    assert found.cost == pytest.approx(best_cost)
    assert found.cost == pytest.approx(sum(costs[n][found.choice[n]] for n in names))


def test_allocate_refuses_a_budget_below_the_cheapest_candidates():
    with pytest.raises(ValueError, match=r"budget 1.0000 bits per weight is below the cheapest candidates' 2.0000"):
        allocate({"a": [1.0, 0.5]}, {"a": [2.0, 3.0]}, {"a": 10}, 1.0)
    with pytest.raises(ValueError, match="must name the same linears"):
        allocate({"a": [1.0]}, {"b": [2.0]}, {"a": 1}, 3.0)


# MixedConfig ----------------------------------------------------------------------------------------------------


def test_mixed_config_json_round_trip_and_partial_layers():
    mixed = MixedConfig(SMALL, {DOWN: LARGE})
    data = json.loads(mixed.to_json())
    assert data["layers"] == {DOWN: {"num_centroids": [-1, 64]}}  # only what differs from the default
    assert MixedConfig.from_json(mixed.to_json()) == mixed
    assert mixed.for_layer(DOWN) == LARGE and mixed.for_layer("model.layers.0.mlp.up_proj") == SMALL
    assert mixed.nsamples == 4 and mixed.replace(seed=3).for_layer(DOWN).seed == 3


def test_mixed_config_refuses_run_wide_settings_per_layer():
    with pytest.raises(ValueError, match=r"changes \['nsamples'\], which the whole run shares"):
        MixedConfig(SMALL, {DOWN: LARGE.replace(nsamples=8)})
    with pytest.raises(ValueError, match='"layers" must map'):
        MixedConfig.from_dict({"default": SMALL.to_dict(), "layers": [1]})


# Through quantize_, save and load ---------------------------------------------------------------------------------


def test_quantize_with_a_config_per_linear_saves_and_loads(tmp_path):
    model = tiny_llama(hidden=64, layers=2)
    mixed = MixedConfig(SMALL, {DOWN: LARGE, "model.layers.1.self_attn.q_proj": LARGE})
    report = quantize_(model, mixed, _calib(), progress=False)
    records = {r.name: r for r in report.records}
    for name, record in records.items():
        expected = mixed.for_layer(name)
        layer = model.get_submodule(name)
        assert isinstance(layer, QuantizedLinear) and layer.qweight.num_centroids == expected.k1, name
        shape = (record.out_features, record.in_features)
        assert record.bits_per_weight == pytest.approx(bits_per_weight(expected, shape, mode="paper").bits_per_weight)
    assert records[DOWN].bits_per_weight > records["model.layers.0.mlp.up_proj"].bits_per_weight
    save_quantized(model, None, tmp_path / "q", report.to_dict(), dtype=torch.float32)
    layers = json.loads((tmp_path / "q" / "config.json").read_text())["quantization_config"]["config_for_layers"]
    assert layers[DOWN]["num_centroids"] == [-1, 64] and layers["model.layers.0.mlp.up_proj"]["num_centroids"] == [
        -1,
        16,
    ]
    again, _ = load_quantized(tmp_path / "q")
    ids = _calib(1)
    with torch.no_grad():
        assert torch.equal(again(ids).logits, model(ids).logits)


def test_a_layer_name_the_model_lacks_is_refused_before_any_work():
    model = tiny_llama(hidden=64, layers=2)
    mixed = MixedConfig(SMALL, {"model.layers.0.mlp.down_prj": LARGE})
    with pytest.raises(VPTQLabError, match=r"does not have, e.g. 'model.layers.0.mlp.down_prj' \(did you mean"):
        quantize_(model, mixed, _calib(), progress=False)
    assert not any(isinstance(m, QuantizedLinear) for m in model.modules())


def test_mixed_quantization_resumes_bit_identical(tmp_path, monkeypatch):
    import vptq_lab.model.calibrate as calibrate

    mixed = MixedConfig(SMALL, {DOWN: LARGE})
    whole = tiny_llama(hidden=64, layers=3)
    quantize_(whole, mixed, _calib(), progress=False)
    real = calibrate._quantize_block

    def dies_in_block_1(block, inputs, ctx, *rest):
        if ctx.index == 1:
            raise RuntimeError("killed")
        return real(block, inputs, ctx, *rest)

    monkeypatch.setattr(calibrate, "_quantize_block", dies_in_block_1)
    with pytest.raises(RuntimeError, match="killed"):
        quantize_(tiny_llama(hidden=64, layers=3), mixed, _calib(), progress=False, checkpoint_dir=tmp_path / "c")
    monkeypatch.setattr(calibrate, "_quantize_block", real)
    resumed = tiny_llama(hidden=64, layers=3)
    quantize_(resumed, mixed, _calib(), progress=False, checkpoint_dir=tmp_path / "c", resume=True)
    a, b = whole.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# Sensitivity ------------------------------------------------------------------------------------------------------


def test_output_fisher_and_the_sensitivity_table():
    from vptq_lab.model.sensitivity import linear_names, output_fisher, sensitivity_table

    model = tiny_llama(hidden=64, layers=2)
    names = linear_names(model)
    fisher = output_fisher(model, _calib(2), progress=False)
    assert set(fisher) == set(names) and all(
        g.shape == (model.get_submodule(n).out_features,) for n, g in fisher.items()
    )
    assert all(torch.isfinite(g).all() and (g >= 0).all() and g.sum() > 0 for g in fisher.values())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ladder = [("small", SMALL), ("large", LARGE)]
    rows = sensitivity_table(model, _calib(), fisher, ladder, progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the model is not changed
    table = pd.DataFrame(rows)
    assert len(table) == len(names) * 2 and set(table.rung) == {"small", "large"}
    wide = table.pivot(index="linear", columns="rung", values=["bits", "predicted_kl", "proxy_loss"])
    assert (wide["bits"]["large"] > wide["bits"]["small"]).all()  # more index bits cost more
    assert (wide["proxy_loss"]["large"] < wide["proxy_loss"]["small"]).mean() > 0.8  # and mostly buy accuracy
    # a linear whose output the loss does not depend on predicts no cost, whatever its error
    zero = {**fisher, names[0]: torch.zeros_like(fisher[names[0]])}
    rows = sensitivity_table(model, _calib(), zero, ladder[:1], progress=False)
    assert next(r for r in rows if r["linear"] == names[0])["predicted_kl"] == 0.0


def test_measured_kl_quantizes_one_linear_and_restores_the_model():
    from vptq_lab.model.passes import block_hessians
    from vptq_lab.model.sensitivity import measured_kl

    teacher = tiny_llama(hidden=64, layers=2)
    model = tiny_llama(hidden=64, layers=2)
    H = block_hessians(model, _calib(), 0)["mlp.down_proj"][1]
    ids = _calib(2)
    with torch.no_grad():
        before = model(ids).logits
    kl_small = measured_kl(model, teacher, DOWN, SMALL, H, ids)
    kl_large = measured_kl(model, teacher, DOWN, LARGE, H, ids)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, before)  # restored
    assert 0 < kl_large < kl_small


def test_allocate_mixed_spends_the_budget_where_the_table_says(monkeypatch):
    import vptq_lab.lab.allocation as allocation

    monkeypatch.setattr(allocation, "LADDER", {"small": {"num_centroids": (-1, 256)}, "large": {}})
    rows = []
    for name, sensitive in (("a", True), ("b", False)):
        for rung, bits in (("small", 1.5), ("large", 2.0)):
            cost = (10.0 if rung == "small" else 1.0) if sensitive else (2.0 if rung == "small" else 1.9)
            rows.append({"linear": name, "rung": rung, "bits": bits, "out": 10, "in": 10, "predicted_kl": cost})
    found = allocation.allocate_mixed(pd.DataFrame(rows), budget=1.75)
    assert found.rungs == {"a": "large", "b": "small"} and found.bits == pytest.approx(1.75)
    assert found.config.for_layer("a").k1 == 512 and found.config.for_layer("b").k1 == 256
    with pytest.raises(VPTQLabError, match="below the cheapest candidates"):
        allocation.allocate_mixed(pd.DataFrame(rows), budget=1.4)


def test_role_scale_moves_bits_to_the_role_the_check_finds_fragile(monkeypatch):
    import vptq_lab.lab.allocation as allocation

    table = _synthetic_table(monkeypatch)
    budget = 2.5  # the middle rung on average: bits to move from one linear to another
    plain = allocation.allocate_mixed(table, budget)
    # the check finds v ten times less sensitive than predicted and gate ten times more: bits leave v for gate
    scaled = allocation.allocate_mixed(table, budget, role_scale={"v": 0.1, "gate": 10.0})
    assert scaled.bits <= budget + 1e-9
    bits = table.set_index(["linear", "rung"]).bits

    def role_bits(found, leaf):
        return sum(bits[(n, r)] for n, r in found.rungs.items() if leaf in n)

    assert role_bits(scaled, "v_proj") < role_bits(plain, "v_proj")
    assert role_bits(scaled, "gate_proj") > role_bits(plain, "gate_proj")
    # the reported cost is the scaled one; a factor of 1 everywhere changes nothing
    chosen = table.set_index(["linear", "rung"]).predicted_kl
    factor = {"v": 0.1, "gate": 10.0}
    assert scaled.cost == pytest.approx(
        sum(chosen[(n, r)] * factor.get(table[table.linear == n].role.iloc[0], 1.0) for n, r in scaled.rungs.items())
    )
    assert allocation.allocate_mixed(table, budget, role_scale={"v": 1.0}).rungs == plain.rungs


@pytest.mark.parametrize(
    ("scale", "match"),
    [({"value": 0.5}, "lacks: its roles are"), ({"v": 0.0}, "positive finite"), ({"v": "x"}, "positive finite")],
)
def test_role_scale_refuses_unknown_roles_and_bad_factors(monkeypatch, scale, match):
    import vptq_lab.lab.allocation as allocation

    with pytest.raises(VPTQLabError, match=match):
        allocation.allocate_mixed(_synthetic_table(monkeypatch), 2.5, role_scale=scale)


def test_role_scale_from_check_is_the_geometric_mean_ratio_per_role(tmp_path):
    from vptq_lab.lab.allocation import read_role_scale, role_scale_from_check

    check = pd.DataFrame(
        {
            "role": ["v", "v", "down", "down"],
            "measured_kl": [1.0, 4.0, 3.0, 0.0],  # a zero measurement is left out, not a log of zero
            "predicted_kl": [4.0, 4.0, 2.0, 1.0],
        }
    )
    assert role_scale_from_check(check) == {"v": 0.5, "down": 1.5}
    with pytest.raises(VPTQLabError, match="needs the columns"):
        role_scale_from_check(check.drop(columns="measured_kl"))
    path = tmp_path / "scale.json"
    with pytest.raises(VPTQLabError, match="does not exist"):
        read_role_scale(path)
    path.write_text("{v: 1}")
    with pytest.raises(VPTQLabError, match="is not JSON"):
        read_role_scale(path)
    path.write_text("[0.5]")
    with pytest.raises(VPTQLabError, match="one JSON object"):
        read_role_scale(path)
    path.write_text('{"v": -1}')
    with pytest.raises(VPTQLabError, match="positive finite"):
        read_role_scale(path)
    path.write_text(json.dumps(role_scale_from_check(check)))
    assert read_role_scale(path) == {"v": 0.5, "down": 1.5}


def test_role_scale_travels_in_the_recipe_and_only_with_allocate():
    from vptq_lab.lab.recipes import recipe

    plain = recipe(2, finetune="none", allocate=True)
    scaled = recipe(2, finetune="none", allocate=True, role_scale={"v": 0.25, "k": 0.5})
    assert "role_scale" not in plain.to_dict()  # the rows measured before the field keep their cache keys
    assert scaled.to_dict()["role_scale"] == {"k": 0.5, "v": 0.25}
    with pytest.raises(VPTQLabError, match="needs allocate=True"):
        recipe(2, finetune="none", role_scale={"v": 0.25})
    with pytest.raises(VPTQLabError, match="baseline"):
        recipe(2, method="rtn", role_scale={"v": 0.25})


# The command line -------------------------------------------------------------------------------------------------


def test_bits_counts_a_mixed_config_exactly(tmp_path, capsys):
    from vptq_lab.cli import main
    from vptq_lab.lab.budget import SMOLLM2_135M_SHAPES

    path = tmp_path / "mixed.json"
    base = VPTQConfig(vector_lens=(-1, 5), num_centroids=(-1, 512), group_num=2)
    path.write_text(MixedConfig(base, {DOWN: base.replace(num_centroids=(-1, 1024))}).to_json())
    assert main(["bits", "--config", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    layers = {r["layer"]: r["bits_per_weight"] for r in out["layers"]}
    assert layers[DOWN] == pytest.approx(
        bits_per_weight(base.replace(num_centroids=(-1, 1024)), (576, 1536)).bits_per_weight
    )
    sizes = {n: o * i for n, (o, i) in SMOLLM2_135M_SHAPES.items()}
    expected = sum(layers[n] * s for n, s in sizes.items()) / sum(sizes.values())
    assert out["total"]["bits_per_weight"] == pytest.approx(expected)
    assert layers[DOWN] > layers["model.layers.1.mlp.down_proj"]


def test_allocate_command_writes_a_config_that_quantize_runs(tiny_model_dir, tmp_path, capsys, monkeypatch):
    import vptq_lab.lab.allocation as allocation
    from vptq_lab.cli import main
    from vptq_lab.core import config as config_module

    monkeypatch.delenv("VPTQ_LAB_DATA", raising=False)  # the offline stand-in text
    monkeypatch.setenv("VPTQ_LAB_CACHE", str(tmp_path / "cache"))
    small = {"vector_lens": (-1, 4), "num_centroids": (-1, 16), "group_num": 1, "kmeans_iters": 2}
    monkeypatch.setattr(allocation, "LADDER", {"small": small, "large": {**small, "num_centroids": (-1, 64)}})
    monkeypatch.setitem(config_module.PRESETS, 2, {**config_module.PRESETS[2], "nsamples": 8, "seqlen": 64})
    monkeypatch.setattr(allocation, "FISHER_WINDOWS", 2)
    out = tmp_path / "mixed.json"
    argv = ["allocate", "--model", str(tiny_model_dir), "--budget", "1.6", "--out", str(out), "--json", "--no-progress"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["bits_per_weight"] <= 1.6 and set(summary["rungs"]) <= {"small", "large"}
    mixed = MixedConfig.from_json(out.read_text())
    assert main(argv) == 2  # --out exists: refused, the file kept
    assert MixedConfig.from_json(out.read_text()) == mixed
    capsys.readouterr()
    scale = tmp_path / "scale.json"
    scale.write_text('{"v": 0.5}')
    scaled_out = tmp_path / "scaled.json"
    argv_scaled = [*argv[:6], str(scaled_out), "--role-scale", str(scale), "--json", "--no-progress"]
    assert main(argv_scaled) == 0  # the cached table, its costs scaled
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["role_scale"] == {"v": 0.5}
    q = tmp_path / "q"
    assert (
        main(
            [
                "quantize",
                "--model",
                str(tiny_model_dir),
                "--config",
                str(out),
                "--out",
                str(q),
                "--json",
                "--no-progress",
            ]
        )
        == 0
    )
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["bits_per_weight"] == pytest.approx(summary["bits_per_weight"], abs=1e-4)


def test_role_scale_flag_is_refused_where_nothing_allocates(tmp_path, capsys):
    from vptq_lab.cli import main

    scale = tmp_path / "scale.json"
    scale.write_text('{"v": 0.5}')
    config = tmp_path / "config.json"
    config.write_text(SMALL.to_json())
    for extra, message in (
        (["--bits", "2"], "add --allocate"),
        (["--config", str(config)], "not --config"),
        (["--bits", "2", "--allocate", "--role-scale", str(tmp_path / "none.json")], "does not exist"),
    ):
        flags = extra if "--role-scale" in extra else [*extra, "--role-scale", str(scale)]
        assert main(["quantize", *flags, "--out", str(tmp_path / "q"), "--no-progress"]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "q").exists()


def _synthetic_table(monkeypatch) -> pd.DataFrame:
    """A sensitivity table of 2 blocks x 7 roles x 3 rungs, the last block twice as sensitive."""
    import vptq_lab.lab.allocation as allocation

    ladder = {"low": {"num_centroids": (-1, 256)}, "mid": {}, "high": {"vector_lens": (-1, 4)}}
    monkeypatch.setattr(allocation, "LADDER", ladder)
    roles = {"self_attn.q_proj": "q", "self_attn.k_proj": "k", "self_attn.v_proj": "v", "self_attn.o_proj": "o"}
    roles |= {"mlp.gate_proj": "gate", "mlp.up_proj": "up", "mlp.down_proj": "down"}
    rows = []
    for block in (0, 1):
        for leaf, role in roles.items():
            for j, rung in enumerate(ladder):
                rows.append(
                    {
                        "linear": f"model.layers.{block}.{leaf}",
                        "block": block,
                        "role": role,
                        "rung": rung,
                        "out": 64,
                        "in": 64,
                        "bits": 1.5 + j,
                        "predicted_kl": (block + 1) * 10.0**-j,
                    }
                )
    return pd.DataFrame(rows)


def test_sensitivity_plots_and_explorer(monkeypatch):
    from vptq_lab.lab import plots
    from vptq_lab.lab.widgets import build_sensitivity_explorer

    table = _synthetic_table(monkeypatch)
    fig = plots.sensitivity_heatmap(table, "mid")
    image = fig.axes[0].images[0].get_array()
    assert image.shape == (2, 7) and image[1, 0] == 2 * image[0, 0]  # block 1 twice block 0, q column first
    widget = build_sensitivity_explorer(table)
    explorer = widget.explorer
    assert explorer.rung.options == ("low", "mid", "high") and explorer.heatmap.value
    explorer.budget.value = 2.0  # half a bit above the cheapest rung: the sensitive block gets the extra bits
    assert explorer.found.bits <= 2.0 + 1e-9
    assert set(explorer.found.rungs[f"model.layers.1.{leaf}"] for leaf in ("mlp.down_proj", "self_attn.q_proj")) == {
        "mid"
    }
    assert explorer.found.rungs["model.layers.0.mlp.down_proj"] == "low"
    assert "linears" in explorer.summary.value and explorer.allocation.value
    check = table[table.rung != "high"].assign(measured_kl=lambda d: d.predicted_kl * 1.5)
    assert "Spearman rank correlation 1.00" in plots.predicted_vs_measured(check).axes[0].get_title()


def test_input_energies_are_the_diagonals_of_the_blocks_hessians():
    from vptq_lab.model.arch import arch_for, get_blocks
    from vptq_lab.model.passes import block_hessians, capture_block_inputs, input_energies

    model = tiny_llama(hidden=64, layers=3)
    blocks = get_blocks(model, arch_for(model))
    inputs = capture_block_inputs(model, blocks[0], _calib())
    names = ["self_attn.q_proj", "mlp.down_proj"]
    diags, kept = input_energies(blocks, inputs, names, keep=[2])
    assert set(diags) == {(b, n) for b in range(3) for n in names} and set(kept) == {2}
    for b in range(3):
        H = block_hessians(model, _calib(), b)
        for n in names:
            assert torch.allclose(diags[b, n].float(), torch.diagonal(H[n][1]), rtol=1e-4, atol=1e-7), (b, n)
    assert len(kept[2]) == len(inputs)  # block 2's inputs, one entry per captured batch


def test_model_sensitivity_reads_its_cache_file_without_loading_a_model(tmp_path, monkeypatch):
    # benchmarks/sensitivity.py used to record a cache read's 0.1 s as the table's build time; it now asks
    # sensitivity_cache_file whether the table will be read.
    from vptq_lab.io import models
    from vptq_lab.lab import allocation

    monkeypatch.setenv("VPTQ_LAB_CACHE", str(tmp_path))
    where = allocation.sensitivity_cache_file("default")
    assert where.parent == tmp_path / "sensitivity" and not where.exists()
    assert allocation.sensitivity_cache_file("some/other-model") != where
    rows = [{"linear": "model.layers.0.mlp.down_proj", "rung": "r", "predicted_kl": 0.5}]
    where.parent.mkdir(parents=True)
    where.write_text(json.dumps(rows))

    def no_model(*_a, **_k):
        raise AssertionError("a cached table must not load the model")

    monkeypatch.setattr(models, "load_model", no_model)
    assert allocation.model_sensitivity("default").to_dict("records") == rows
