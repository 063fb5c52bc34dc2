"""Perplexity by the GPTQ/VPTQ papers' protocol.

Join the split's rows with blank lines, tokenize once, cut non-overlapping
windows of ``seqlen`` tokens (the tail shorter than a window is dropped),
average the next-token NLL over every window, exponentiate.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from vptq_lab.errors import VPTQLabError
from vptq_lab.io.data import TextDataset, load_wikitext2, tokenize

__all__ = ["PerplexityRecord", "perplexity", "window_nll"]


@dataclass(frozen=True)
class PerplexityRecord:
    dataset: str
    split: str
    seqlen: int
    windows: int
    tokens: int  # tokens fed: windows * seqlen (each window predicts seqlen - 1 of them)
    perplexity: float
    seconds: float
    source: str
    comparable: bool  # False when the text is the offline stand-in, not WikiText-2

    def to_dict(self) -> dict:
        return asdict(self)


def _context_limit(model) -> int | None:
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _check_args(model, seqlen: int, max_windows: int | None) -> None:
    if seqlen < 2:
        raise VPTQLabError(f"seqlen must be at least 2, got {seqlen}")
    limit = _context_limit(model)
    if limit is not None and seqlen > limit:
        raise VPTQLabError(
            f"seqlen {seqlen} exceeds the model's context of {limit} tokens: use --seqlen {limit} or less"
        )
    if max_windows is not None and max_windows < 1:
        raise VPTQLabError(f"max_windows must be at least 1, got {max_windows}; omit it to use every window")


@torch.inference_mode()
def window_nll(model, window: torch.Tensor) -> torch.Tensor:
    """Mean next-token NLL (float64 scalar) of one window, ids [1, seqlen]."""
    logits = model(window).logits  # [1, seqlen, vocab]
    return F.cross_entropy(logits[0, :-1].float(), window[0, 1:], reduction="mean").double()


def perplexity(
    model,
    tokenizer,
    dataset: TextDataset | None = None,
    split: str = "test",
    seqlen: int = 2048,
    max_windows: int | None = None,
    data_dir: str | None = None,
    progress: bool = True,
) -> PerplexityRecord:
    """WikiText-2 (or ``dataset``) perplexity of ``model``; ``max_windows`` keeps the first N windows."""
    _check_args(model, seqlen, max_windows)
    dataset = dataset if dataset is not None else load_wikitext2(split, data_dir)
    ids = tokenize(tokenizer, dataset)  # [1, n]
    windows = ids.shape[1] // seqlen
    if windows == 0:
        raise VPTQLabError(f"the {dataset.split} text has {ids.shape[1]} tokens, fewer than one window of {seqlen}")
    if max_windows is not None:
        windows = min(windows, max_windows)
    device = next(model.parameters()).device
    start = time.perf_counter()
    nll = torch.zeros((), dtype=torch.float64)
    for i in tqdm(range(windows), desc=f"perplexity {dataset.split}", disable=not progress):
        nll += window_nll(model, ids[:, i * seqlen : (i + 1) * seqlen].to(device)).cpu()
    ppl = math.exp(float(nll) / windows)
    return PerplexityRecord(
        dataset.name,
        dataset.split,
        seqlen,
        windows,
        windows * seqlen,
        ppl,
        round(time.perf_counter() - start, 2),
        dataset.source,
        dataset.comparable,
    )
