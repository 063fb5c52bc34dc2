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
from tqdm.auto import tqdm

from vptq_lab.errors import VPTQLabError
from vptq_lab.io.data import TextDataset, load_wikitext2, tokenize
from vptq_lab.model.logprobs import plain_head, window_nll

__all__ = ["PerplexityRecord", "perplexity", "window_nll"]  # window_nll: from vptq_lab.model.logprobs


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


def perplexity(
    model,
    tokenizer=None,
    dataset: TextDataset | None = None,
    split: str = "test",
    seqlen: int = 2048,
    max_windows: int | None = None,
    data_dir: str | None = None,
    progress: bool = True,
    windows: torch.Tensor | None = None,
) -> PerplexityRecord:
    """WikiText-2 (or ``dataset``) perplexity of ``model``; ``max_windows`` keeps the first N windows.

    ``windows``: token ids [n, seqlen] to score instead of a dataset (held-out windows, say); then ``tokenizer``,
    ``dataset``, ``split`` and ``seqlen`` are not used, and the record names the text ``"windows"``."""
    if windows is not None:
        ids, seqlen, dataset = _given_windows(windows), windows.shape[-1], None
    else:
        if tokenizer is None:
            raise VPTQLabError("perplexity needs a tokenizer to cut the text into windows (or windows= token ids)")
        dataset = dataset if dataset is not None else load_wikitext2(split, data_dir)
        ids = tokenize(tokenizer, dataset)  # [1, n]
    _check_args(model, seqlen, max_windows)
    count = ids.shape[1] // seqlen
    if count == 0:
        raise VPTQLabError(f"the {dataset.split} text has {ids.shape[1]} tokens, fewer than one window of {seqlen}")
    if max_windows is not None:
        count = min(count, max_windows)
    device = next(model.parameters()).device
    chunked = plain_head(model)
    start = time.perf_counter()
    nll = torch.zeros((), dtype=torch.float64)
    desc = f"perplexity {dataset.split if dataset is not None else 'windows'}"
    for i in tqdm(range(count), desc=desc, disable=not progress):
        nll += window_nll(model, ids[:, i * seqlen : (i + 1) * seqlen].to(device), chunked).cpu()
    ppl = math.exp(float(nll) / count)
    return PerplexityRecord(
        dataset.name if dataset is not None else "windows",
        dataset.split if dataset is not None else "given",
        seqlen,
        count,
        count * seqlen,
        ppl,
        round(time.perf_counter() - start, 2),
        dataset.source if dataset is not None else "windows",
        dataset.comparable if dataset is not None else False,
    )


def _given_windows(windows: torch.Tensor) -> torch.Tensor:
    """Token ids [n, seqlen] -> one stream [1, n * seqlen] whose consecutive windows are the rows."""
    if not isinstance(windows, torch.Tensor) or windows.dim() != 2 or windows.dtype not in (torch.int64, torch.int32):
        raise VPTQLabError(
            f"windows must be integer token ids [n, seqlen], got {tuple(getattr(windows, 'shape', ()))}; "
            "build them with vptq_lab.calibration_windows or split_heldout"
        )
    return windows.long().reshape(1, -1)
