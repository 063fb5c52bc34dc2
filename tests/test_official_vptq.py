"""The official inference package loads our checkpoints and computes the same logits: a layer with every feature,
the 2-, 3- and 4-bit presets' layouts at tiny sizes, per-block shared codebooks, and a distilled checkpoint.

``vptq==0.0.5.post1`` (installed ``--no-deps`` by ``make venv``: its pins would pull a CUDA torch) cannot load its
CUDA library on a CPU machine; it warns and falls back to its own torch dequantization, which is what this test
exercises. Its ``vptq.utils.pack`` imports ``sentence_transformers`` at module level and never uses it, so the test
puts a stand-in module in ``sys.modules`` (through monkeypatch, removed afterwards) instead of installing that
package and its many dependencies. The stand-in raises if anything ever calls it.
"""

from __future__ import annotations

import json
import sys
import types

import pytest
import torch

from vptq_lab import (
    DistillConfig,
    QuantizedLinear,
    VPTQConfig,
    distill_,
    load_quantized,
    quantize_,
    recipe,
    save_quantized,
)
from vptq_lab.testing import tiny_llama


@pytest.fixture
def official_vptq(monkeypatch):
    if "vptq" not in sys.modules:
        outer = types.ModuleType("sentence_transformers")
        inner = types.ModuleType("sentence_transformers.SentenceTransformer")

        class SentenceTransformer:  # imported by vptq.utils.pack, never used by the layers
            def __init__(self, *args, **kwargs):
                raise RuntimeError("sentence_transformers is a stand-in in this test")

        inner.SentenceTransformer = SentenceTransformer
        outer.SentenceTransformer = inner
        monkeypatch.setitem(sys.modules, "sentence_transformers", outer)
        monkeypatch.setitem(sys.modules, "sentence_transformers.SentenceTransformer", inner)
    import vptq
    from vptq.layers.model_base import make_quant_linear

    return vptq.VQuantLinear, make_quant_linear


def _load_with_official_layers(folder, official_vptq):
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    layer_cls, make_quant_linear = official_vptq
    raw = json.loads((folder / "config.json").read_text())
    quant = raw.pop("quantization_config")
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**raw), dtype=torch.float32)
    make_quant_linear(model, quant["config_for_layers"], quant["shared_layer_config"], target_layer=layer_cls)
    result = model.load_state_dict(load_file(str(folder / "model.safetensors")), strict=False)
    assert result.unexpected_keys == [] and result.missing_keys == ["lm_head.weight"]  # tied to the embeddings
    model.tie_weights()
    n_official = sum(isinstance(m, layer_cls) for m in model.modules())
    assert n_official == len(quant["config_for_layers"]) > 0
    return model.eval()


def _official_logits_equal_ours(folder, official_vptq) -> None:
    official = _load_with_official_layers(folder, official_vptq)
    ours, _ = load_quantized(folder)
    ids = torch.randint(0, 384, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = ours(ids).logits, official(ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def _layers(folder) -> dict[str, dict]:
    return json.loads((folder / "config.json").read_text())["quantization_config"]["config_for_layers"]


def _quantized(config: VPTQConfig, tmp_path):
    """A tiny model (hidden 64, 2 blocks) quantized with ``config`` and saved; (model, folder)."""
    model = tiny_llama(vocab_size=384, hidden=64, layers=2)
    calib = torch.randint(0, 384, (4, 32), generator=torch.Generator().manual_seed(0))
    quantize_(model, config, calib, progress=False)
    return model, save_quantized(model, None, tmp_path / "ck")


@pytest.mark.parametrize("enable_norm", [False, True])
def test_official_package_gives_our_logits(enable_norm, official_vptq, tmp_path):
    # A residual codebook, outlier columns with their own codebook, 2 groups and the act-order perm.
    config = VPTQConfig(
        vector_lens=(2, 4),
        num_centroids=(16, 32),
        num_res_centroids=(-1, 16),
        npercent=2.0,
        group_num=2,
        enable_perm=True,
        enable_norm=enable_norm,
        kmeans_iters=3,
    )
    _, folder = _quantized(config, tmp_path)
    layer = _layers(folder)["model.layers.0.mlp.down_proj"]
    assert layer["outlier_size"] > 0 and layer["group_num"] == 2 and layer["num_res_centroids"][1] == 16
    assert layer["enable_perm"] and layer["enable_norm"] == enable_norm
    _official_logits_equal_ours(folder, official_vptq)


def _tiny_preset(bits: int) -> VPTQConfig:
    """The ``bits`` preset's layout (vector lengths, outliers, groups, residual, act-order) with codebooks a tiny
    model has enough vectors for: 16 entries for the main and outlier parts, 4 for the residual."""
    config = recipe(bits, finetune="none").quantize
    return config.replace(
        num_centroids=tuple(k if k < 0 else 16 for k in config.num_centroids),
        num_res_centroids=(-1, config.num_res_centroids[1] if config.num_res_centroids[1] < 0 else 4),
        kmeans_iters=3,
        nsamples=4,
        seqlen=32,
    )


LAYOUTS = {
    "2-bit preset": _tiny_preset(2),
    "3-bit preset": _tiny_preset(3),
    "4-bit preset": _tiny_preset(4),
    "per-block codebooks": _tiny_preset(2).replace(codebook_scope="per-block"),
    "per-block codebooks with outliers": _tiny_preset(4).replace(
        num_res_centroids=(-1, -1), codebook_scope="per-block"
    ),
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_official_package_reads_the_presets_layouts(layout, official_vptq, tmp_path):
    config = LAYOUTS[layout]
    model, folder = _quantized(config, tmp_path)
    for name, layer in _layers(folder).items():  # the preset's structure, as the official package reads it
        assert layer["vector_lens"] == list(config.vector_lens) and layer["group_num"] == config.group_num, name
        assert (layer["outlier_size"] > 0) == config.has_outliers, name
        assert layer["num_res_centroids"] == list(config.num_res_centroids) and layer["enable_perm"], name
    if config.codebook_scope == "per-block":  # one codebook per block, stored in every linear of it
        for block in model.model.layers:
            books = [m.centroids for m in block.modules() if isinstance(m, QuantizedLinear)]
            assert len(books) == 7 and all(torch.equal(b, books[0]) for b in books)
    _official_logits_equal_ours(folder, official_vptq)


def test_official_package_reads_a_distilled_checkpoint(official_vptq, tmp_path):
    # A few steps of end-to-end distillation move the codebooks, the column norms and the RMSNorm weights; the file
    # format stays the official one.
    config = _tiny_preset(4).replace(enable_norm=True)
    student = tiny_llama(vocab_size=384, hidden=64, layers=2)
    teacher = tiny_llama(vocab_size=384, hidden=64, layers=2)
    calib = torch.randint(0, 384, (4, 32), generator=torch.Generator().manual_seed(0))
    quantize_(student, config, calib, progress=False)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    # Held out on the training windows: this is about the file, and the kept state must be a trained one.
    report = distill_(
        student, teacher, calib, calib, DistillConfig(steps=4, eval_every=2, lr=1e-4, select="kl"), progress=False
    )
    assert report.best["step"] == 4
    after = student.state_dict()
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    for trained in ("centroids", "weight_scale", "weight_bias", "norm.weight"):
        assert any(k.endswith(trained) for k in moved), trained
    assert not any(k.endswith("indices") for k in moved)
    folder = save_quantized(student, None, tmp_path / "distilled")
    _official_logits_equal_ours(folder, official_vptq)


def test_official_package_reads_a_mixed_checkpoint(official_vptq, tmp_path):
    """A config per linear (mixed allocation): each layer's own sizes land in config_for_layers, which the official
    package reads layer by layer."""
    from vptq_lab.core.config import MixedConfig

    two, four = _tiny_preset(2), _tiny_preset(4)
    layers = {"model.layers.0.mlp.down_proj": four, "model.layers.1.self_attn.v_proj": four}
    model, folder = _quantized(MixedConfig(two, layers), tmp_path)
    found = _layers(folder)
    for name, layer in found.items():
        expected = layers.get(name, two)
        assert layer["vector_lens"] == list(expected.vector_lens), name
        assert layer["num_res_centroids"] == list(expected.num_res_centroids), name
    assert found["model.layers.0.mlp.down_proj"] != found["model.layers.0.mlp.up_proj"]
    _official_logits_equal_ours(folder, official_vptq)
