"""The official inference package loads our checkpoints and computes the same logits.

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

from vptq_lab import VPTQConfig, load_quantized, quantize_, save_quantized
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
    model = tiny_llama(vocab_size=384, hidden=64, layers=2)
    calib = torch.randint(0, 384, (4, 32), generator=torch.Generator().manual_seed(0))
    quantize_(model, config, calib, progress=False)
    folder = save_quantized(model, None, tmp_path / "ck")
    layer = json.loads((folder / "config.json").read_text())["quantization_config"]["config_for_layers"][
        "model.layers.0.mlp.down_proj"
    ]
    assert layer["outlier_size"] > 0 and layer["group_num"] == 2 and layer["num_res_centroids"][1] == 16
    assert layer["enable_perm"] and layer["enable_norm"] == enable_norm

    official = _load_with_official_layers(folder, official_vptq)
    ours, _ = load_quantized(folder)
    ids = torch.randint(0, 384, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = ours(ids).logits, official(ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
