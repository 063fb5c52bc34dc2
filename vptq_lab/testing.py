"""Tiny random models and a tiny tokenizer, for tests and the notebooks' smoke runs (no download, seconds to build).

The JupyterLab and chromium launcher of the browser tests lives outside the package, in
``tests/lab_harness.py``.
"""

from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["tiny_tokenizer", "tiny_llama", "save_tiny_model", "tiny_model", "TINY_FAMILIES"]


def tiny_tokenizer(vocab_size: int = 384):
    """A byte-level BPE tokenizer trained on Python's help text (offline, deterministic)."""
    from pydoc_data.topics import topics

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<eos>"],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator((topics[k] for k in sorted(topics)), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")


def tiny_llama(vocab_size: int = 384, hidden: int = 64, layers: int = 2, seed: int = 0, max_positions: int = 512):
    """A random LlamaForCausalLM small enough for unit tests (fp32, eval mode)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden + 32,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def save_tiny_model(folder: str | Path, model=None, tokenizer=None) -> Path:
    """Write a tiny model and tokenizer as an HF folder; returns the folder."""
    folder = Path(folder)
    tokenizer = tokenizer if tokenizer is not None else tiny_tokenizer()
    model = model if model is not None else tiny_llama(vocab_size=len(tokenizer))
    from vptq_lab.io.models import quiet_hf_progress

    with quiet_hf_progress():
        model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def tiny_model(family: str, vocab_size: int = 128, seed: int = 0):
    """A 2-block random model of one supported family (hidden 32), for architecture tests."""
    import transformers as tf

    common = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=256,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    builders = {
        "llama": (tf.LlamaConfig, tf.LlamaForCausalLM),
        "mistral": (tf.MistralConfig, tf.MistralForCausalLM),
        "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM),
        "gemma": (tf.GemmaConfig, tf.GemmaForCausalLM),
        "gemma2": (tf.Gemma2Config, tf.Gemma2ForCausalLM),
        "gemma3": (tf.Gemma3TextConfig, tf.Gemma3ForCausalLM),
        "phi3": (tf.Phi3Config, tf.Phi3ForCausalLM),
    }
    torch.manual_seed(seed)
    if family == "gpt2":
        config = tf.GPT2Config(vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=4, n_positions=256)
        return tf.GPT2LMHeadModel(config).eval()
    config_cls, model_cls = builders[family]
    return model_cls(config_cls(**common)).eval()


TINY_FAMILIES = ("llama", "mistral", "qwen2", "gemma", "gemma2", "gemma3", "phi3", "gpt2")
