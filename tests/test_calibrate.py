import pytest
import torch
from torch import nn

from vptq_lab.core.config import VPTQConfig
from vptq_lab.errors import VPTQLabError
from vptq_lab.io.checkpoint import load_quantized, save_quantized
from vptq_lab.model.arch import ARCHITECTURES, arch_for, get_blocks, get_module
from vptq_lab.model.calibrate import quantize_
from vptq_lab.model.hessian import HessianAccumulator, hessian_hooks
from vptq_lab.model.layers import QuantizedLinear
from vptq_lab.model.passes import capture_block_inputs
from vptq_lab.testing import TINY_FAMILIES, tiny_model

TINY = VPTQConfig(vector_lens=(-1, 4), num_centroids=(-1, 16), kmeans_iters=3, nsamples=4, seqlen=16)
# Fine enough that every family's logits stay close (gemma's extra norms amplify coarse codebooks).
FINE = VPTQConfig(vector_lens=(-1, 2), num_centroids=(-1, 256), kmeans_iters=3, nsamples=4, seqlen=16)


def _calib(vocab=128, n=4, seqlen=16, seed=0):
    return torch.randint(3, vocab, (n, seqlen), generator=torch.Generator().manual_seed(seed))


def _linears(block, spec):
    return [name for stage in spec.stages for name in stage]


def test_hessian_hooks_accumulate_and_always_clean_up():
    lin = nn.Linear(3, 2)
    x = torch.tensor([[1.0, 2.0, 0.0], [0.0, 1.0, 1.0]])
    with hessian_hooks({"lin": lin}) as accs:
        lin(x)
    assert torch.allclose(accs["lin"].hessian(), (x.t() @ x).double() / 2)
    assert accs["lin"].sum.dtype == torch.float64 and accs["lin"].tokens == 2
    lin(x)  # outside the context nothing counts
    assert accs["lin"].tokens == 2 and not lin._forward_hooks
    with pytest.raises(RuntimeError), hessian_hooks({"lin": lin}):
        raise RuntimeError("a failing notebook cell")
    assert not lin._forward_hooks


def test_empty_accumulator_gives_zero_hessian():
    assert torch.count_nonzero(HessianAccumulator(4).hessian()) == 0


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_every_family_quantizes_and_round_trips(family, tmp_path):
    model = tiny_model(family)
    spec = arch_for(model)
    ids = _calib(seed=1)[:1]
    with torch.no_grad():
        ref = model(ids).logits
    report = quantize_(model, FINE, _calib(), progress=False)
    blocks = get_blocks(model, spec)
    for block in blocks:
        assert all(isinstance(get_module(block, n), QuantizedLinear) for n in _linears(block, spec))
    assert len(report.records) == len(blocks) * len(_linears(blocks[0], spec))
    with torch.no_grad():
        out = model(ids).logits
    assert torch.isfinite(out).all()
    rel = float((out - ref).pow(2).mean() / ref.pow(2).mean())
    assert rel < 0.05, f"{family}: quantized logits drifted by {rel:.3f}"
    save_quantized(model, None, tmp_path / "q", report.to_dict(), dtype=torch.float32)  # bit-exact copy
    loaded, _ = load_quantized(tmp_path / "q")
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, out)


def test_gpt2_conv1d_weights_are_transposed():
    model = tiny_model("gpt2")
    conv = model.transformer.h[0].mlp.c_fc  # Conv1D: weight [in, out]
    dense = conv.weight.detach().t().clone()  # [out, in]
    x = torch.randn(2, conv.weight.shape[0])
    quantize_(
        model, VPTQConfig(vector_lens=(-1, 2), num_centroids=(-1, 256), nsamples=4, seqlen=16), _calib(), progress=False
    )
    q = model.transformer.h[0].mlp.c_fc
    assert (q.out_features, q.in_features) == tuple(dense.shape)
    with torch.no_grad():  # a fine codebook reproduces the Conv1D map x W^T (a transposed W would be far off)
        want = x @ dense.t()
        assert float((q(x) - q.bias - want).norm() / want.norm()) < 0.3


def test_unknown_architecture_lists_supported():
    model = tiny_model("llama")
    model.config.model_type = "mamba"
    with pytest.raises(VPTQLabError, match="unsupported architecture 'mamba'.*llama.*gpt2"):
        quantize_(model, TINY, _calib(), progress=False)
    assert len(ARCHITECTURES) >= 7


def test_requantizing_skips_quantized_layers():
    model = tiny_model("llama")
    first = quantize_(model, TINY, _calib(), progress=False)
    codes = model.model.layers[0].self_attn.q_proj.indices.clone()
    second = quantize_(model, TINY.replace(seed=5), _calib(), progress=False)
    assert len(first.records) == 14 and second.records == []
    assert torch.equal(model.model.layers[0].self_attn.q_proj.indices, codes)


def test_nan_weights_are_refused():
    model = tiny_model("llama")
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[0, 0] = float("nan")
    with pytest.raises(VPTQLabError, match="model.layers.1.mlp.up_proj has NaN or inf weights"):
        quantize_(model, TINY, _calib(), progress=False)


def test_calibration_must_be_token_ids():
    with pytest.raises(VPTQLabError, match="integer token ids"):
        quantize_(tiny_model("llama"), TINY, torch.randn(4, 16), progress=False)


def test_propagation_modes_differ_and_are_recorded():
    reports = {}
    for mode in ("quantized", "full_precision"):
        model = tiny_model("llama")
        reports[mode] = quantize_(model, TINY.replace(propagation=mode), _calib(), progress=False)
        assert reports[mode].propagation == mode
    first = {r.name: r.proxy_loss_rel for r in reports["quantized"].records}
    other = {r.name: r.proxy_loss_rel for r in reports["full_precision"].records}
    assert first["model.layers.0.self_attn.q_proj"] == other["model.layers.0.self_attn.q_proj"]  # same input
    assert first["model.layers.1.mlp.down_proj"] != other["model.layers.1.mlp.down_proj"]


def test_capture_records_every_batch():
    model = tiny_model("llama")
    captured = capture_block_inputs(model, model.model.layers[0], _calib(n=5), batch_size=2)
    assert [args[0].shape[0] for args, _ in captured] == [2, 2, 1]


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_finetune_sub_batch_is_the_same_rows_of_the_block(family):
    """A fine-tuning step on a few sequences of a captured batch sees exactly those rows' inputs:
    the block's output on the slice equals the same rows of its output on the whole batch."""
    from vptq_lab.model.layerwise import _sub_batch
    from vptq_lab.model.passes import first_output as _first_output

    model = tiny_model(family)
    block = get_blocks(model, arch_for(model))[0]
    ((args, kwargs),) = capture_block_inputs(model, block, _calib(n=4), batch_size=4)
    with torch.no_grad():
        full = _first_output(block(*args, **kwargs))
        gen = torch.Generator().manual_seed(3)
        sub_args, sub_kwargs, target = _sub_batch(args, kwargs, full, 2, gen)
        rows = torch.randperm(4, generator=torch.Generator().manual_seed(3))[:2]
        assert target.shape[0] == 2 and torch.equal(target, full[rows])
        torch.testing.assert_close(_first_output(block(*sub_args, **sub_kwargs)), full[rows])
    assert _sub_batch(args, kwargs, full, 0, gen)[2] is full  # 0: the whole batch


def test_finetune_one_sequence_per_step_still_lowers_block_error():
    cfg = TINY.replace(finetune=True, finetune_steps=30, finetune_lr=1e-3, finetune_batch=1)  # noisier steps: lower lr
    report = quantize_(tiny_model("llama"), cfg, _calib(n=8), progress=False)
    assert [s["sequences_per_step"] for s in report.finetune] == [1, 1]
    assert all(s["mse_after"] < s["mse_before"] for s in report.finetune)


def test_finetune_lowers_block_error_and_changes_only_codebooks_and_norms():
    model = tiny_model("llama")
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    cfg = TINY.replace(finetune=True, finetune_steps=30, finetune_lr=1e-2)
    report = quantize_(model, cfg, _calib(n=8), keep=True, progress=False)
    assert len(report.finetune) == 2
    for stats in report.finetune:
        assert stats["mse_after"] < stats["mse_before"] and stats["sequences_per_step"] == 4
    name = "model.layers.0.self_attn.q_proj"
    layer = model.model.layers[0].self_attn.q_proj
    assert torch.equal(layer.indices, report.store[name].qweight.indices)  # codes untouched
    assert not torch.equal(layer.centroids, report.store[name].qweight.centroids)  # codebook trained
    assert layer.centroids.dtype == torch.float16
    assert all(p.requires_grad == flags[n] for n, p in model.named_parameters() if n in flags)


def test_keep_stores_inputs_for_plots():
    model = tiny_model("llama")
    report = quantize_(model, TINY, _calib(), keep=["model.layers.1.mlp.down_proj"], progress=False)
    stored = report.store["model.layers.1.mlp.down_proj"]
    assert list(report.store) == ["model.layers.1.mlp.down_proj"]
    assert stored.W.shape == (32, 48) and stored.H.shape == (48, 48) and stored.H.dtype == torch.float64
    df = report.to_dataframe()
    assert set(df.role) == {"q", "k", "v", "o", "gate", "up", "down"}
    assert (df.proxy_loss_rel > 0).all() and (df.hessian_tokens == 64).all()


@pytest.mark.parametrize("method", ["rtn", "gptq", "vq"])
def test_baseline_methods_run_through_the_same_driver(method):
    from vptq_lab.core.methods import METHODS, method_preset

    model = tiny_model("llama")
    ids = _calib(seed=1)[:1]
    with torch.no_grad():
        ref = model(ids).logits
    config = method_preset(method, 4)
    if method == "vq":
        config = FINE.replace(enable_perm=False)
    report = quantize_(model, config, _calib(), method=method, progress=False)
    assert report.method == method and len(report.records) == 14
    assert {r.method for r in report.records} == {method}
    rec = report.records[0]
    assert rec.bits_per_weight == pytest.approx(METHODS[method].bits(config, (32, 32)))
    with torch.no_grad():
        rel = float((model(ids).logits - ref).pow(2).mean() / ref.pow(2).mean())
    assert 0 < rel < 0.05
    assert quantize_(model, config, _calib(), method=method, progress=False).records == []  # re-run: no-op


def test_gptq_beats_rtn_on_proxy_loss_through_the_driver():
    from vptq_lab.core.methods import method_preset

    losses = {}
    for method in ("rtn", "gptq"):
        report = quantize_(tiny_model("llama"), method_preset(method, 2), _calib(n=8), method=method, progress=False)
        losses[method] = float(report.to_dataframe().proxy_loss_rel.mean())
    assert losses["gptq"] < losses["rtn"]


def test_method_and_config_must_match():
    from vptq_lab.core.scalar import RTNConfig

    with pytest.raises(VPTQLabError, match="method 'gptq' takes a GPTQConfig, got a RTNConfig"):
        quantize_(tiny_model("llama"), RTNConfig(bits=2), _calib(), method="gptq", progress=False)
    with pytest.raises(VPTQLabError, match="unknown method 'awq'"):
        quantize_(tiny_model("llama"), TINY, _calib(), method="awq", progress=False)
