"""Next-token log-probabilities, NLL and KL of whole windows, the logits a chunk of positions at a time.

One place for what evaluation (perplexity), distillation (held-out figures, the training loss) and the scripts
compute from a causal LM's outputs. A [positions, vocab] fp32 tensor of SmolLM2's 49k vocabulary takes 200 KB per
position: a 2048-token window's logits are 400 MB. Where the model's logits are exactly
``get_output_embeddings()(base_model(ids).last_hidden_state)`` (:func:`plain_head`: Llama, GPT-2 and most causal
LMs), they are made :data:`CHUNK` positions at a time from the last hidden states; elsewhere (scaled or capped
logits) from the model's own output at once. Both give the same values.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CHUNK", "plain_head", "chunk_log_probs", "window_nll", "window_nll_kl", "position_terms"]

CHUNK = 64  # positions per chunk of logits: 64 x 49k vocabulary x 4 bytes = 12.6 MB per [chunk, vocab] tensor


@torch.no_grad()
def plain_head(model: nn.Module, train: bool = False) -> bool:
    """Whether ``model``'s logits are exactly ``get_output_embeddings()(base_model(ids).last_hidden_state)`` with an
    ``nn.Linear`` head (checked on a few tokens). ``train``: the head's weight may train, but a trained bias would not
    get its gradient from the chunked KL, so a bias that requires grad answers False."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(head, nn.Linear) or getattr(model, "base_model", model) is model:
        return False
    if train and head.bias is not None and head.bias.requires_grad:
        return False
    ids = torch.arange(min(8, head.out_features), device=head.weight.device)[None] % head.out_features  # [1, 8]
    try:
        split = head(model.base_model(ids).last_hidden_state)
    except (AttributeError, TypeError):
        return False
    return torch.equal(split, model(ids).logits.to(split.dtype))


def chunk_log_probs(
    hidden: torch.Tensor, head: nn.Module, temperature: float = 1.0, chunk: int | None = None
) -> Iterator[tuple[slice, torch.Tensor, torch.Tensor]]:
    """``(rows, logits, log-probs)`` for ``chunk`` (default :data:`CHUNK`) rows at a time of the last hidden states
    ``hidden`` [rows, d] through the output ``head``: [chunk, vocab] each, fp32, the log-probs at ``temperature``."""
    chunk = CHUNK if chunk is None else chunk
    for start in range(0, hidden.shape[0], chunk):
        rows = slice(start, start + chunk)
        logits = head(hidden[rows]).float()  # [chunk, vocab]
        yield rows, logits, F.log_softmax(logits / temperature, dim=-1)


def _last_hidden(model: nn.Module, window: torch.Tensor) -> torch.Tensor:
    return model.base_model(window[None]).last_hidden_state[0]  # [seqlen, d]


def _targets(window: torch.Tensor, rows: slice) -> torch.Tensor:
    return window[rows.start + 1 : rows.stop + 1]  # the next tokens; the window's last position has none


@torch.no_grad()
def window_nll(model: nn.Module, window: torch.Tensor, chunked: bool | None = None) -> torch.Tensor:
    """Mean next-token NLL (float64 scalar) of one window of ids, [seqlen] or [1, seqlen]. ``chunked`` (default:
    :func:`plain_head` decides): the logits a chunk of positions at a time."""
    window = window.reshape(-1)
    chunked = plain_head(model) if chunked is None else chunked
    if not chunked:
        logits = model(window[None]).logits[0]  # [seqlen, vocab]
        return F.cross_entropy(logits[:-1].float(), window[1:], reduction="mean").double()
    total = torch.zeros((), dtype=torch.float64, device=window.device)
    for rows, logits, _ in chunk_log_probs(_last_hidden(model, window), model.get_output_embeddings()):
        targets = _targets(window, rows)
        total += F.cross_entropy(logits[: targets.numel()], targets, reduction="sum").double()
    return total / (window.numel() - 1)


@torch.no_grad()
def window_nll_kl(
    student: nn.Module, teacher: nn.Module, window: torch.Tensor, temperature: float = 1.0, chunked: bool | None = None
) -> tuple[float, float]:
    """One window's mean next-token NLL under ``student`` and mean per-position KL(teacher || student) at
    ``temperature``. ``chunked`` (default: both heads plain): the logits a chunk of positions at a time."""
    window = window.reshape(-1)
    chunked = plain_head(student) and plain_head(teacher) if chunked is None else chunked
    if not chunked:
        logits = student(window[None]).logits[0].float()  # [seqlen, vocab]
        nll = float(F.cross_entropy(logits[:-1], window[1:], reduction="mean"))
        target = F.log_softmax(teacher(window[None]).logits[0].float() / temperature, dim=-1)
        logp = F.log_softmax(logits / temperature, dim=-1)
        return nll, float(F.kl_div(logp, target, log_target=True, reduction="batchmean"))
    h_s, h_t = _last_hidden(student, window), _last_hidden(teacher, window)
    head_t = teacher.get_output_embeddings()
    nll = kl = 0.0
    for rows, logits, logp in chunk_log_probs(h_s, student.get_output_embeddings(), temperature):
        targets = _targets(window, rows)
        nll += float(F.cross_entropy(logits[: targets.numel()], targets, reduction="sum"))
        target = F.log_softmax(head_t(h_t[rows]).float() / temperature, dim=-1)  # [chunk, vocab]
        kl += float(F.kl_div(logp, target, log_target=True, reduction="sum"))
    return nll / (window.numel() - 1), kl / window.numel()


@torch.no_grad()
def position_terms(
    student: nn.Module, teacher: nn.Module, window: torch.Tensor, temperature: float = 1.0
) -> dict[str, torch.Tensor]:
    """Per position of one window (both heads plain), float64: the student's next-token NLL ``nll`` [seqlen - 1],
    the teacher's ``teacher_nll`` [seqlen - 1], and ``kl``, KL(teacher || student) at ``temperature`` [seqlen]."""
    window = window.reshape(-1)
    h_s, h_t = _last_hidden(student, window), _last_hidden(teacher, window)
    head_t = teacher.get_output_embeddings()
    out = {
        "nll": torch.empty(window.numel() - 1, dtype=torch.float64, device=window.device),
        "teacher_nll": torch.empty(window.numel() - 1, dtype=torch.float64, device=window.device),
        "kl": torch.empty(window.numel(), dtype=torch.float64, device=window.device),
    }
    for rows, logits, logp in chunk_log_probs(h_s, student.get_output_embeddings(), temperature):
        logits_t = head_t(h_t[rows]).float()  # [chunk, vocab]
        target = F.log_softmax(logits_t / temperature, dim=-1)
        out["kl"][rows] = F.kl_div(logp, target, log_target=True, reduction="none").sum(-1).double()
        targets = _targets(window, rows)
        n, first = targets.numel(), rows.start
        out["nll"][first : first + n] = F.cross_entropy(logits[:n], targets, reduction="none").double()
        out["teacher_nll"][first : first + n] = F.cross_entropy(logits_t[:n], targets, reduction="none").double()
    return out
