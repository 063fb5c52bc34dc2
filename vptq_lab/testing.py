"""Tiny random models and a tiny tokenizer, for tests and smoke runs (no download, seconds to build).

Also a JupyterLab launcher with its own config folders, for the real-browser test and the new-user walkthrough.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import torch

__all__ = [
    "tiny_tokenizer",
    "tiny_llama",
    "save_tiny_model",
    "tiny_model",
    "TINY_FAMILIES",
    "jupyterlab",
    "CHROMIUM",
    "CHROMIUM_ARGS",
]

# Debian's chromium, driven by playwright (never ``playwright install``), headless and offline.
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_server(url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"jupyter lab exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"jupyter lab did not answer {url} within {timeout}s")


@contextmanager
def jupyterlab(
    root: Path, home: Path, log: IO, env: dict[str, str] | None = None, timeout: float = 90
) -> Iterator[tuple[int, str]]:
    """Run ``jupyter lab`` on ``root`` with its config, settings and runtime under ``home``; yields (port, token).

    ``env`` is the server's (and so the kernels') environment, default ``os.environ``. Extensions and kernels
    come from this interpreter's prefix. The server is stopped on exit.
    """
    port, token = _free_port(), secrets.token_hex(16)
    env = {
        **(os.environ if env is None else env),
        "JUPYTER_CONFIG_DIR": str(home / "config"),
        "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
        "JUPYTER_DATA_DIR": str(home / "data"),
        "IPYTHONDIR": str(home / "ipython"),
    }
    cmd = [
        sys.executable,
        "-m",
        "jupyter",
        "lab",
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
        f"--LabApp.workspaces_dir={home / 'workspaces'}",
        f"--LabApp.user_settings_dir={home / 'settings'}",
        "--LabApp.news_url=",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.extension_manager=readonly",
    ]
    if os.geteuid() == 0:  # CI containers run as root
        cmd.append("--allow-root")
    proc = subprocess.Popen(
        ["nice", "-n", "10", *cmd], cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        _wait_for_server(f"http://127.0.0.1:{port}/api/status?token={token}", proc, timeout)
        yield port, token
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
